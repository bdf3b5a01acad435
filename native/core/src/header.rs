//! The five-byte header of a tagged message: Byte1 tag, Int32 length (counting itself, not the
//! tag).  The postgres-protocol design: `Ok(None)` means "need more bytes", `Err` means malformed.

use crate::error::FrameError;

/// Bytes in a tagged message header (tag + Int32 length).
pub const HEADER_LEN: usize = 5;

/// Largest body any message can have: the Int32 length counts itself.
// i32::MAX is non-negative, so the cast cannot lose anything.
#[allow(clippy::cast_sign_loss)]
pub const MAX_BODY: usize = i32::MAX as usize - 4;

/// A parsed message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    tag: u8,
    len: i32,
}

impl Header {
    /// Parses a header at the start of `buf` with no size limit beyond the wire format's.
    #[inline]
    pub fn parse(buf: &[u8]) -> Result<Option<Header>, FrameError> {
        Self::parse_limited(buf, MAX_BODY)
    }

    /// Parses a header at the start of `buf`; a body longer than `max_body` is an error.
    ///
    /// `Ok(None)` when fewer than five bytes are available (never an error: a short read).
    #[inline]
    pub fn parse_limited(buf: &[u8], max_body: usize) -> Result<Option<Header>, FrameError> {
        let Some(head) = buf.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let tag = head[0];
        let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]);
        let Ok(ulen) = usize::try_from(len) else {
            return Err(FrameError::LengthTooSmall { tag, len });
        };
        if ulen < 4 {
            return Err(FrameError::LengthTooSmall { tag, len });
        }
        if ulen - 4 > max_body {
            return Err(FrameError::MessageTooLarge { tag, len, max_body });
        }
        Ok(Some(Header { tag, len }))
    }

    /// The message type byte.
    #[inline]
    pub fn tag(self) -> u8 {
        self.tag
    }

    /// The Int32 length field as sent (counts itself, not the tag).
    #[inline]
    pub fn len(self) -> i32 {
        self.len
    }

    /// Always false: a valid length counts at least itself.  (Pairs with [`Header::len`].)
    #[inline]
    pub fn is_empty(self) -> bool {
        false
    }

    /// Bytes of body after the header.
    #[inline]
    pub fn body_len(self) -> usize {
        self.frame_len() - HEADER_LEN
    }

    /// Bytes of the whole message: tag, length and body.
    #[inline]
    pub fn frame_len(self) -> usize {
        // `parse_limited` only builds headers with 4 <= len <= i32::MAX.
        #[allow(clippy::cast_sign_loss)]
        let len = self.len as usize;
        len + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(tag: u8, len: i32) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&len.to_be_bytes());
        v
    }

    #[test]
    fn short_reads_need_more() {
        for n in 0..HEADER_LEN {
            assert_eq!(Header::parse(&head(b'Q', 9)[..n]), Ok(None));
        }
    }

    #[test]
    fn parses_tag_and_length() {
        let h = Header::parse(&head(b'Z', 5)).unwrap().unwrap();
        assert_eq!(
            (h.tag(), h.len(), h.body_len(), h.frame_len()),
            (b'Z', 5, 1, 6)
        );
        assert!(!h.is_empty());
        let h = Header::parse(&head(b'S', 4)).unwrap().unwrap();
        assert_eq!((h.body_len(), h.frame_len()), (0, 5));
    }

    #[test]
    fn rejects_lengths_below_four() {
        for len in [3, 0, -1, i32::MIN] {
            assert_eq!(
                Header::parse(&head(b'D', len)),
                Err(FrameError::LengthTooSmall { tag: b'D', len })
            );
        }
    }

    #[test]
    fn enforces_the_body_limit() {
        assert!(Header::parse_limited(&head(b'D', 14), 10)
            .unwrap()
            .is_some());
        assert_eq!(
            Header::parse_limited(&head(b'D', 15), 10),
            Err(FrameError::MessageTooLarge {
                tag: b'D',
                len: 15,
                max_body: 10
            })
        );
        let h = Header::parse(&head(b'D', i32::MAX)).unwrap().unwrap();
        assert_eq!(h.body_len(), MAX_BODY);
    }
}
