//! inet and cidr.  Binary: family (2 IPv4, 3 IPv6), prefix bits, is-cidr flag, address length
//! (4 or 16), address bytes; text: the address (IPv6 as the server writes it, IPv4 in an IPv6
//! address dotted) and `/bits` unless an inet's prefix is the whole address.
//!
//! A content scan reads the address (as text, without the prefix); if it finds anything, the first finding's operator
//! masks the address, which stays an address of the same family and prefix:
//!
//! | operator | address |
//! |---|---|
//! | `replace`, `redact` | all zero (`0.0.0.0`, `::`) |
//! | `partial` | the first `keep_first` and last `keep_last` address bytes kept, the others zero |
//! | `hash` | keyed bytes from the family, prefix and address |
//! | `null` | NULL |
//!
//! A cidr keeps its host bits zero.

use std::io::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

use super::{findings, invalid, Cx, Format};
use crate::mask::{Operator, Outcome};

const FAMILY_V4: u8 = 2;
const FAMILY_V6: u8 = 3;

/// A decoded inet / cidr value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Inet {
    v6: bool,
    bits: u8,
    /// The binary flag as sent (kept as it came).
    cidr_flag: u8,
    addr: [u8; 16],
}

impl Inet {
    fn len(&self) -> usize {
        if self.v6 {
            16
        } else {
            4
        }
    }

    fn bytes(&self) -> &[u8] {
        &self.addr[..self.len()]
    }

    /// Zeroes the bits after the prefix (a cidr's host part).
    fn zero_host(&mut self) {
        let bits = usize::from(self.bits);
        let n = self.len();
        for (i, b) in self.addr[..n].iter_mut().enumerate() {
            let keep = bits.saturating_sub(i * 8).min(8);
            *b &= if keep == 0 { 0 } else { 0xffu8 << (8 - keep) };
        }
    }
}

pub(super) fn mask(
    cidr: bool,
    fmt: Format,
    value: &[u8],
    cx: &mut Cx<'_>,
    out: &mut Vec<u8>,
) -> Outcome {
    let Some(v) = decode(cidr, fmt, value) else {
        return invalid(cx);
    };
    // The scan reads the address as the server writes it, without the prefix length.
    let mut text = cx.scratch.take();
    render_addr(&v, &mut text);
    let mut found = Vec::new();
    findings(cx, &text, &mut found);
    cx.scratch.put(text);
    let Some(first) = found.first() else {
        return Outcome::Unchanged;
    };
    for f in &found {
        cx.tally.add(f.entity, 1);
    }
    let mut m = v;
    match first.operator {
        Operator::Null => return Outcome::Null,
        Operator::Replace(_) | Operator::Redact => m.addr = [0; 16],
        Operator::Partial {
            keep_first,
            keep_last,
            ..
        } => {
            let n = m.len();
            let tail_from = n.saturating_sub(*keep_last);
            for (i, b) in m.addr[..n].iter_mut().enumerate() {
                if i >= *keep_first && i < tail_from {
                    *b = 0;
                }
            }
        }
        Operator::Hash(key) => {
            let mut canon = [0u8; 18];
            canon[0] = u8::from(v.v6);
            canon[1] = v.bits;
            canon[2..2 + v.len()].copy_from_slice(v.bytes());
            let n = v.len();
            key.fill(b"inet", &canon[..2 + n], &mut m.addr[..n]);
        }
    }
    if cidr {
        m.zero_host();
    }
    encode(&m, cidr, fmt, out);
    Outcome::Written
}

pub(super) fn transcode(cidr: bool, from: Format, value: &[u8], out: &mut Vec<u8>) -> bool {
    let Some(v) = decode(cidr, from, value) else {
        return false;
    };
    encode(&v, cidr, from.other(), out);
    true
}

fn decode(cidr: bool, fmt: Format, value: &[u8]) -> Option<Inet> {
    match fmt {
        Format::Binary => {
            let [family, bits, flag, n, rest @ ..] = value else {
                return None;
            };
            let v6 = match (*family, *n, rest.len()) {
                (FAMILY_V4, 4, 4) => false,
                (FAMILY_V6, 16, 16) => true,
                _ => return None,
            };
            if usize::from(*bits) > rest.len() * 8 || *flag > 1 {
                return None;
            }
            let mut addr = [0; 16];
            addr[..rest.len()].copy_from_slice(rest);
            Some(Inet {
                v6,
                bits: *bits,
                cidr_flag: *flag,
                addr,
            })
        }
        Format::Text => {
            let text = std::str::from_utf8(value).ok()?;
            let (addr, bits) = match text.split_once('/') {
                Some((a, b)) => {
                    if b.is_empty() || b.len() > 3 || !b.bytes().all(|c| c.is_ascii_digit()) {
                        return None;
                    }
                    (a, Some(b.parse::<u8>().ok()?))
                }
                None => (text, None),
            };
            let mut out = [0u8; 16];
            let v6 = if let Ok(a) = addr.parse::<Ipv4Addr>() {
                out[..4].copy_from_slice(&a.octets());
                false
            } else {
                out = addr.parse::<Ipv6Addr>().ok()?.octets();
                true
            };
            let max = if v6 { 128 } else { 32 };
            let bits = bits.unwrap_or(max);
            if bits > max {
                return None;
            }
            Some(Inet {
                v6,
                bits,
                cidr_flag: u8::from(cidr),
                addr: out,
            })
        }
    }
}

fn encode(v: &Inet, cidr: bool, fmt: Format, out: &mut Vec<u8>) {
    match fmt {
        Format::Binary => {
            out.push(if v.v6 { FAMILY_V6 } else { FAMILY_V4 });
            out.push(v.bits);
            out.push(v.cidr_flag);
            out.push(if v.v6 { 16 } else { 4 });
            out.extend_from_slice(v.bytes());
        }
        Format::Text => render(v, cidr, out),
    }
}

/// The text the server writes for `v` (`inet_out` / `cidr_out`).
fn render(v: &Inet, cidr: bool, out: &mut Vec<u8>) {
    render_addr(v, out);
    let max = if v.v6 { 128 } else { 32 };
    if cidr || v.bits != max {
        let _ = write!(out, "/{}", v.bits);
    }
}

/// The address part of [`render`].
fn render_addr(v: &Inet, out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail.
    if v.v6 {
        render_v6(&v.addr, out);
    } else {
        let a = &v.addr;
        let _ = write!(out, "{}.{}.{}.{}", a[0], a[1], a[2], a[3]);
    }
}

/// IPv6 as PostgreSQL's `inet_net_ntop` writes it: the longest run (at least two) of zero
/// words as `::`, and the last 32 bits dotted when the address is IPv4-compatible
/// (`::a.b.c.d`) or IPv4-mapped (`::ffff:a.b.c.d`).
fn render_v6(addr: &[u8; 16], s: &mut Vec<u8>) {
    let words: [u16; 8] =
        std::array::from_fn(|i| u16::from_be_bytes([addr[2 * i], addr[2 * i + 1]]));
    let (mut best, mut best_len) = (usize::MAX, 0);
    let mut i = 0;
    while i < 8 {
        if words[i] == 0 {
            let start = i;
            while i < 8 && words[i] == 0 {
                i += 1;
            }
            if i - start > best_len {
                (best, best_len) = (start, i - start);
            }
        } else {
            i += 1;
        }
    }
    if best_len < 2 {
        best = usize::MAX;
    }
    for i in 0..8 {
        if best != usize::MAX && i >= best && i < best + best_len {
            if i == best {
                s.push(b':');
            }
            continue;
        }
        if i != 0 {
            s.push(b':');
        }
        if i == 6 && best == 0 && (best_len == 6 || (best_len == 5 && words[5] == 0xffff)) {
            let _ = write!(s, "{}.{}.{}.{}", addr[12], addr[13], addr[14], addr[15]);
            return;
        }
        let _ = write!(s, "{:x}", words[i]);
    }
    if best != usize::MAX && best + best_len == 8 {
        s.push(b':');
    }
}
