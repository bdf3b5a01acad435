//! The keyed, deterministic, format-shaped hash behind the `hash` operator.
//!
//! HMAC-SHA256(key, value) is expanded into a keystream (the MAC itself, then SHA-256 of the
//! MAC and a block counter: a value with at most 32 letters and digits costs one HMAC) that
//! rewrites each ASCII digit to a digit, lowercase letter to a lowercase letter
//! and uppercase letter to an uppercase letter; every other byte (separators, `@`, non-ASCII)
//! is kept.  Equal values under one key give equal outputs (joins and GROUP BY still work) and
//! the output has the value's shape and length.

use std::cell::RefCell;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// An HMAC key, keyed once; cloning the prepared state per value is cheap.
#[derive(Clone)]
pub struct HashKey {
    mac: HmacSha256,
    /// Identifies the key in the per-thread cache of results (clones share it).
    id: u64,
}

impl HashKey {
    pub fn new(key: &[u8]) -> HashKey {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        HashKey {
            mac: HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length"),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Appends the format-shaped hash of `value` to `out` (same length as `value`).
    ///
    /// Values repeat in result sets (a customer's email on each of their orders), so results
    /// for short values are kept in a small per-thread cache (see [`ShapeCache`]): a repeated
    /// value costs two SipHash passes instead of an HMAC.
    pub fn shape(&self, value: &[u8], out: &mut Vec<u8>) {
        if value.len() > ShapeCache::MAX_VALUE {
            return self.shape_uncached(value, out);
        }
        SHAPES.with(|cache| match cache.try_borrow_mut() {
            Ok(mut cache) => cache.shape(self, value, out),
            // Re-entered (never today): compute without the cache.
            Err(_) => self.shape_uncached(value, out),
        });
    }

    fn shape_uncached(&self, value: &[u8], out: &mut Vec<u8>) {
        let mut mac = self.mac.clone();
        mac.update(value);
        let seed: [u8; 32] = mac.finalize().into_bytes().into();
        let mut stream = KeyStream::new(&seed);
        out.reserve(value.len());
        for &b in value {
            let r = match b {
                b'0'..=b'9' => b'0' + stream.next_byte() % 10,
                b'a'..=b'z' => b'a' + stream.next_byte() % 26,
                b'A'..=b'Z' => b'A' + stream.next_byte() % 26,
                _ => b,
            };
            out.push(r);
        }
    }
}

impl HashKey {
    /// Fills `out` with keyed bytes derived from `value` (the canonical bytes of a typed value:
    /// an address, a uuid, a day number...) under `domain` (the type family, so that equal
    /// bytes of different types hash apart).  Deterministic; uniform for an unknown key.
    pub fn fill(&self, domain: &[u8], value: &[u8], out: &mut [u8]) {
        let mut mac = self.mac.clone();
        mac.update(domain);
        mac.update(&[0]);
        mac.update(value);
        let seed: [u8; 32] = mac.finalize().into_bytes().into();
        let mut stream = KeyStream::new(&seed);
        for b in out {
            *b = stream.next_byte();
        }
    }

    /// A keyed number below `n` (`n` > 0) derived from `value` under `domain`.
    pub fn below(&self, domain: &[u8], value: &[u8], n: u64) -> u64 {
        let mut bytes = [0u8; 16];
        self.fill(domain, value, &mut bytes);
        // 128 random bits reduced modulo n < 2^64: the bias is below 2^-64.
        let wide = u128::from_le_bytes(bytes) % u128::from(n);
        u64::try_from(wide).expect("below n, which is a u64")
    }
}

thread_local! {
    static SHAPES: RefCell<ShapeCache> = RefCell::new(ShapeCache::new());
}

/// Recent results of [`HashKey::shape`] on one thread: a two-way set-associative table of
/// [`ShapeCache::SLOTS`] entries of at most [`ShapeCache::MAX_VALUE`] bytes (about 400 KiB per
/// thread, allocated on first use), no allocation after that.  Outputs are stored inline in
/// their slot: a lookup touches one slot pair, not a heap buffer per entry.
///
/// An entry holds the key's id, a 128-bit fingerprint of the value (two SipHash-1-3 passes
/// under this thread's random keys) and the masked output; never the value itself, so the
/// cache keeps no unmasked data.  A lookup compares id, fingerprint and length: two values that
/// differ but share a 128-bit keyed fingerprint are not a practical concern.
struct ShapeCache {
    fingerprint: (RandomState, RandomState),
    /// Pairs of ways; the first of a pair is the more recently used.
    slots: Vec<Slot>,
}

#[derive(Clone, Copy)]
struct Slot {
    key: u64,
    fingerprint: u128,
    len: u8,
    output: [u8; ShapeCache::MAX_VALUE],
}

impl Slot {
    const EMPTY: Slot = Slot {
        key: 0, // no key has id 0
        fingerprint: 0,
        len: 0,
        output: [0; ShapeCache::MAX_VALUE],
    };

    fn holds(&self, key: u64, fingerprint: u128, len: usize) -> bool {
        self.key == key && self.fingerprint == fingerprint && usize::from(self.len) == len
    }

    fn output(&self) -> &[u8] {
        &self.output[..usize::from(self.len)]
    }
}

impl ShapeCache {
    const SLOTS: usize = 4096;
    const MAX_VALUE: usize = 64;

    fn new() -> ShapeCache {
        ShapeCache {
            fingerprint: (RandomState::new(), RandomState::new()),
            slots: Vec::new(),
        }
    }

    fn shape(&mut self, key: &HashKey, value: &[u8], out: &mut Vec<u8>) {
        debug_assert!(value.len() <= Self::MAX_VALUE);
        let (a, b) = &self.fingerprint;
        let fingerprint = u128::from(a.hash_one(value)) << 64 | u128::from(b.hash_one(value));
        if self.slots.is_empty() {
            self.slots = vec![Slot::EMPTY; Self::SLOTS];
        }
        // The low bits of a SipHash output are as good as any.
        #[allow(clippy::cast_possible_truncation)]
        let set = fingerprint as usize % (Self::SLOTS / 2) * 2;
        let ways = &mut self.slots[set..set + 2];
        if ways[0].holds(key.id, fingerprint, value.len()) {
            out.extend_from_slice(ways[0].output());
            return;
        }
        // The second way becomes the first: a hit there, or the slot a miss reuses (the
        // least recently used of the two).
        ways.swap(0, 1);
        if ways[0].holds(key.id, fingerprint, value.len()) {
            out.extend_from_slice(ways[0].output());
            return;
        }
        let at = out.len();
        key.shape_uncached(value, out);
        let shaped = &out[at..];
        let slot = &mut ways[0];
        // The output has the value's length (at most MAX_VALUE bytes): it fits inline.
        let Ok(len) = u8::try_from(shaped.len()) else {
            slot.key = 0;
            return;
        };
        if shaped.len() > Self::MAX_VALUE {
            slot.key = 0;
            return;
        }
        slot.key = key.id;
        slot.fingerprint = fingerprint;
        slot.len = len;
        slot.output[..shaped.len()].copy_from_slice(shaped);
    }
}

impl fmt::Debug for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HashKey(..)") // never the key
    }
}

/// The seed (a MAC, uniformly random for an unknown key) and then SHA-256(seed || counter)
/// blocks, consumed a byte at a time.
struct KeyStream<'a> {
    seed: &'a [u8],
    counter: u64,
    block: [u8; 32],
    pos: usize,
}

impl<'a> KeyStream<'a> {
    fn new(seed: &'a [u8; 32]) -> Self {
        KeyStream {
            seed,
            counter: 0,
            block: *seed,
            pos: 0,
        }
    }

    fn next_byte(&mut self) -> u8 {
        if self.pos == self.block.len() {
            let mut h = Sha256::new();
            h.update(self.seed);
            h.update(self.counter.to_le_bytes());
            self.block = h.finalize().into();
            self.counter += 1;
            self.pos = 0;
        }
        self.pos += 1;
        self.block[self.pos - 1]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_results_equal_computed_ones() {
        let k1 = HashKey::new(b"k1");
        let k2 = HashKey::new(b"k2");
        let values: Vec<Vec<u8>> = (0..3000)
            .map(|i| format!("user{}@example.com", i % 700).into_bytes())
            .chain([vec![b'7'; 64], vec![b'7'; 65], Vec::new(), b"x".to_vec()])
            .collect();
        for round in 0..2 {
            for v in &values {
                for k in [&k1, &k2, &k1.clone()] {
                    let (mut cached, mut direct) = (b"prefix".to_vec(), b"prefix".to_vec());
                    k.shape(v, &mut cached);
                    k.shape_uncached(v, &mut direct);
                    assert_eq!(cached, direct, "round {round}");
                }
            }
        }
        // Two keys never share an entry: the same value under each gives each key's result.
        let (mut a, mut b) = (Vec::new(), Vec::new());
        k1.shape(b"same value", &mut a);
        k2.shape(b"same value", &mut b);
        assert_ne!(a, b);
    }

    fn shaped(key: &[u8], v: &str) -> String {
        let mut out = Vec::new();
        HashKey::new(key).shape(v.as_bytes(), &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn deterministic_shaped_keyed() {
        let a = shaped(b"k1", "John.Doe@example.com");
        assert_eq!(a, shaped(b"k1", "John.Doe@example.com"));
        assert_ne!(a, shaped(b"k2", "John.Doe@example.com"));
        assert_ne!(a, "John.Doe@example.com");
        assert_eq!(a.len(), 20);
        let cls = |c: char| {
            (
                c.is_ascii_digit(),
                c.is_ascii_lowercase(),
                c.is_ascii_uppercase(),
            )
        };
        for (x, y) in a.chars().zip("John.Doe@example.com".chars()) {
            assert_eq!(cls(x), cls(y));
            if !x.is_ascii_alphanumeric() {
                assert_eq!(x, y);
            }
        }
        let long = "9".repeat(100);
        assert!(shaped(b"k", &long).bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(shaped(b"k", "Zürich-1"), shaped(b"k", "Zürich-1"));
        assert!(shaped(b"k", "Zürich-1").contains('ü'));
    }
}
