//! The keyed, deterministic, format-shaped hash behind the `hash` operator.
//!
//! HMAC-SHA256(key, value) is expanded into a keystream (the MAC itself, then SHA-256 of the
//! MAC and a block counter: a value with at most 32 letters and digits costs one HMAC) that
//! rewrites each ASCII digit to a digit, lowercase letter to a lowercase letter
//! and uppercase letter to an uppercase letter; every other byte (separators, `@`, non-ASCII)
//! is kept.  Equal values under one key give equal outputs (joins and GROUP BY still work) and
//! the output has the value's shape and length.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// An HMAC key, keyed once; cloning the prepared state per value is cheap.
#[derive(Clone)]
pub struct HashKey {
    mac: HmacSha256,
}

impl HashKey {
    pub fn new(key: &[u8]) -> HashKey {
        HashKey {
            mac: HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length"),
        }
    }

    /// Appends the format-shaped hash of `value` to `out` (same length as `value`).
    pub fn shape(&self, value: &[u8], out: &mut Vec<u8>) {
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
