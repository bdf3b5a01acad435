//! A set of message tags as a 256-bit bitmap: one load, shift and mask per lookup.

/// A set of message type bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TagSet([u64; 4]);

impl TagSet {
    /// The empty set.
    pub const EMPTY: TagSet = TagSet([0; 4]);
    /// Every byte.
    pub const ALL: TagSet = TagSet([u64::MAX; 4]);

    /// The set of the given tags.
    #[inline]
    pub const fn from_tags(tags: &[u8]) -> TagSet {
        let mut bits = [0u64; 4];
        let mut i = 0;
        while i < tags.len() {
            let t = tags[i];
            bits[(t >> 6) as usize] |= 1u64 << (t & 63);
            i += 1;
        }
        TagSet(bits)
    }

    #[inline]
    pub fn insert(&mut self, tag: u8) {
        self.0[usize::from(tag >> 6)] |= 1u64 << (tag & 63);
    }

    #[inline]
    pub fn remove(&mut self, tag: u8) {
        self.0[usize::from(tag >> 6)] &= !(1u64 << (tag & 63));
    }

    #[inline]
    pub fn contains(&self, tag: u8) -> bool {
        (self.0[usize::from(tag >> 6)] >> (tag & 63)) & 1 != 0
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.0 == [0; 4]
    }

    /// The union of two sets.
    #[inline]
    #[must_use]
    pub fn union(self, other: TagSet) -> TagSet {
        let (a, b) = (self.0, other.0);
        TagSet([a[0] | b[0], a[1] | b[1], a[2] | b[2], a[3] | b[3]])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn membership_for_every_byte() {
        for t in 0..=255u8 {
            let s = TagSet::from_tags(&[t]);
            for u in 0..=255u8 {
                assert_eq!(s.contains(u), t == u);
                assert!(TagSet::ALL.contains(u));
                assert!(!TagSet::EMPTY.contains(u));
            }
        }
    }

    #[test]
    fn insert_remove_union() {
        let mut s = TagSet::from_tags(b"QPF");
        assert!(s.contains(b'Q') && s.contains(b'P') && s.contains(b'F'));
        s.remove(b'P');
        assert!(!s.contains(b'P'));
        let u = s.union(TagSet::from_tags(&[0, 255]));
        assert!(u.contains(0) && u.contains(255) && u.contains(b'Q'));
        assert!(!u.is_empty());
        assert!(TagSet::default().is_empty());
    }
}
