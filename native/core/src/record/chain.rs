//! The tamper-evident form of the record: JSON lines, hash-chained per session, sealed per batch.
//!
//! Every line is one JSON object; its hash is SHA-256 of its bytes (without the newline).
//!
//! * **Segment header** (first line of each file): `{"segment":N,"format":"veilgate-audit/1",
//!   "node":..,"created":..,"first_seq":S,"first_batch":B,"prev_seal":"<hex>","kid":..,"mac":..}`.
//! * **Record**: `{"seq":S,"sid":..,"n":K,"ts":..,"kind":..,<members>,"prev":"<hex>"}`.  `seq`
//!   numbers every record of the gateway (contiguous across batches and segments), `n` every
//!   record of one session (0 = its start), `prev` is the hash of the session's record `n-1`
//!   (empty for `n = 0`).  The session's last record (`session_end`) is a *terminator*: it is
//!   signed (`"kid"`, `"mac"` members).
//! * **Seal** (after each batch): `{"seal":B,"first_seq":..,"last_seq":..,"count":..,
//!   "hashes":"<16 hex digits per record>","digest":"<hex>","prev_seal":"<hex>","ts":..,"kid":..,
//!   "mac":..}`.  `digest` is SHA-256 over the batch's record hashes (32 bytes each, in order);
//!   `hashes` (their first 8 bytes) lets a verifier name the record that changed; `prev_seal` is
//!   the hash of the previous seal line (across segments), so batches form a chain too.
//! * **Trailer** (when a segment is closed): `{"closed":N,"last_seq":..,"last_batch":..,
//!   "reason":"rotate|shutdown","ts":..,"prev_seal":..,"kid":..,"mac":..}`.
//!
//! Signed lines end with `,"mac":"<64 hex>"}`; the MAC is HMAC-SHA256 with the key named by `kid`
//! over the same line without that member (its bytes up to the comma, then `}`).  No JSON
//! canonicalisation is needed: verifiers hash and MAC the bytes as written.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::item::{Body, Slot, StatementRecord};
use super::json::{self, TimeCache};
use super::queue::Taken;

type HmacSha256 = Hmac<Sha256>;

/// Hashes session ids (random hex the gateway made, or `-`) with a multiply per 8 bytes: no
/// SipHash per record.  Nobody outside picks the keys.
#[derive(Debug, Default, Clone, Copy)]
struct SidHasher(u64);

impl std::hash::Hasher for SidHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut h = self.0;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
        for &b in chunks.remainder() {
            h = (h.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
        self.0 = h;
    }
}

type SidMap<V> = HashMap<Arc<str>, V, std::hash::BuildHasherDefault<SidHasher>>;

pub const FORMAT: &str = "veilgate-audit/1";

/// A 32-byte SHA-256.
pub type Hash = [u8; 32];

fn sha256(bytes: &[u8]) -> Hash {
    Sha256::digest(bytes).into()
}

#[derive(Debug, Clone, Copy)]
struct Link {
    n: u64,
    prev: Option<Hash>,
}

/// One sealed batch, ready to append to the current segment.
#[derive(Debug, Clone)]
pub struct Batch {
    pub bytes: Vec<u8>,
    pub batch: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub records: usize,
    /// Queue items it holds (records minus the gap records the chain added).
    pub items: usize,
    /// The hash of this batch's seal line.
    pub seal: Hash,
    /// The hash of the seal before it (what a new segment's header links to).
    pub prev_seal: Option<Hash>,
    /// Sessions whose terminator is in this batch.
    pub ended: Vec<Arc<str>>,
}

/// The writer's chain state: numbering, the per-session links, the signing key.
pub struct Chain {
    node: String,
    kid: String,
    mac: HmacSha256,
    next_seq: u64,
    next_batch: u64,
    prev_seal: Option<Hash>,
    sessions: SidMap<Link>,
    time: TimeCache,
    /// Bytes per record of the last batch (sizes the next batch's buffer).
    record_bytes: usize,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chain")
            .field("node", &self.node)
            .field("kid", &self.kid)
            .field("next_seq", &self.next_seq)
            .field("next_batch", &self.next_batch)
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

impl Chain {
    /// A chain starting at seq 1, batch 1 (see [`Chain::resume`] to continue an old one).
    pub fn new(node: &str, kid: &str, key: &[u8]) -> Chain {
        Chain {
            node: node.to_owned(),
            kid: kid.to_owned(),
            mac: HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length"),
            next_seq: 1,
            next_batch: 1,
            prev_seal: None,
            sessions: SidMap::default(),
            time: TimeCache::default(),
            record_bytes: 320,
        }
    }

    /// Continues after a previous run's last seal.
    pub fn resume(&mut self, next_seq: u64, next_batch: u64, prev_seal: Option<Hash>) {
        self.next_seq = next_seq.max(1);
        self.next_batch = next_batch.max(1);
        self.prev_seal = prev_seal;
    }

    /// Signs from now on with another key (rotation).
    pub fn set_key(&mut self, kid: &str, key: &[u8]) {
        self.kid = kid.to_owned();
        self.mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn next_batch(&self) -> u64 {
        self.next_batch
    }

    pub fn prev_seal(&self) -> Option<Hash> {
        self.prev_seal
    }

    /// Sessions with records and no terminator yet.
    pub fn open_sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Appends `,"kid":..,"mac":..}` to `line` (an object without its closing brace).
    fn sign(&self, mut line: Vec<u8>) -> Vec<u8> {
        self.sign_from(&mut line, 0);
        line
    }

    /// Signs the object that starts at `out[start]` (its closing brace not yet written).
    fn sign_from(&self, out: &mut Vec<u8>, start: usize) {
        json::member_str(out, "kid", &self.kid);
        let mut mac = self.mac.clone();
        mac.update(&out[start..]);
        mac.update(b"}");
        let tag = mac.finalize().into_bytes();
        json::member_hex(out, "mac", Some(&tag));
        out.push(b'}');
    }

    /// The header line of a new segment (with its newline).  `first_seq`, `first_batch` and
    /// `prev_seal` describe what will be written next: a batch already sealed but not yet
    /// written goes first into the new segment.
    pub fn header(
        &self,
        segment: u64,
        first_seq: u64,
        first_batch: u64,
        prev_seal: Option<Hash>,
        created: SystemTime,
    ) -> Vec<u8> {
        let mut l = Vec::with_capacity(256);
        l.extend_from_slice(b"{\"segment\":");
        json::uint(&mut l, segment);
        json::member_str(&mut l, "format", FORMAT);
        json::member_str(&mut l, "node", &self.node);
        json::member_str(&mut l, "created", &json::timestamp(created));
        json::member_u64(&mut l, "first_seq", first_seq);
        json::member_u64(&mut l, "first_batch", first_batch);
        json::member_str(
            &mut l,
            "prev_seal",
            &prev_seal.map(|h| json::hex(&h)).unwrap_or_default(),
        );
        let mut out = self.sign(l);
        out.push(b'\n');
        out
    }

    /// The trailer line that closes a segment (with its newline).  `last_seq` / `last_batch` /
    /// `prev_seal` describe the last batch written to it.
    pub fn trailer(
        &self,
        segment: u64,
        last_seq: u64,
        last_batch: u64,
        prev_seal: Option<Hash>,
        reason: &str,
        at: SystemTime,
    ) -> Vec<u8> {
        let mut l = Vec::with_capacity(256);
        l.extend_from_slice(b"{\"closed\":");
        json::uint(&mut l, segment);
        json::member_u64(&mut l, "last_seq", last_seq);
        json::member_u64(&mut l, "last_batch", last_batch);
        json::member_str(&mut l, "reason", reason);
        json::member_str(&mut l, "ts", &json::timestamp(at));
        json::member_str(
            &mut l,
            "prev_seal",
            &prev_seal.map(|h| json::hex(&h)).unwrap_or_default(),
        );
        let mut out = self.sign(l);
        out.push(b'\n');
        out
    }

    /// Serialises, chains and seals what `take` returned; None when there is nothing to write.
    pub fn seal(&mut self, taken: Taken, now: SystemTime) -> Option<Batch> {
        let Taken { items, mut dropped } = taken;
        if items.is_empty() && dropped.is_empty() {
            return None;
        }
        let first_seq = self.next_seq;
        let item_count = items.len();
        let mut out: Vec<u8> =
            Vec::with_capacity((items.len() + dropped.len()) * (self.record_bytes + 64) + 512);
        let mut hashes: Vec<Hash> = Vec::with_capacity(items.len() + dropped.len());
        let mut ended = Vec::new();
        for item in items {
            if let Some(n) = if dropped.is_empty() {
                None
            } else {
                dropped.remove(&item.sid)
            } {
                self.record(&mut out, &mut hashes, &item.sid, now, false, |m, _| {
                    gap_members(m, n);
                });
            }
            let terminator = match &item.body {
                Body::Statement(r) => {
                    self.record(&mut out, &mut hashes, &item.sid, item.ts, false, |m, t| {
                        statement_members(m, r, t);
                    });
                    false
                }
                Body::Fragment {
                    members,
                    terminator,
                } => {
                    self.record(
                        &mut out,
                        &mut hashes,
                        &item.sid,
                        item.ts,
                        *terminator,
                        |m, _| {
                            m.extend_from_slice(members.as_bytes());
                        },
                    );
                    *terminator
                }
            };
            if terminator {
                self.sessions.remove(&item.sid);
                ended.push(item.sid);
            }
        }
        // sessions with drops and nothing written after them in this batch
        let mut rest: Vec<(Arc<str>, u64)> = dropped.into_iter().collect();
        rest.sort();
        for (sid, n) in rest {
            self.record(&mut out, &mut hashes, &sid, now, false, |m, _| {
                gap_members(m, n)
            });
        }
        if !hashes.is_empty() {
            self.record_bytes = out.len() / hashes.len();
        }
        let batch = self.next_batch;
        self.next_batch += 1;
        let last_seq = self.next_seq - 1;
        let prev_seal = self.prev_seal;
        let seal = self.seal_line(batch, first_seq, last_seq, &hashes, now);
        let seal_hash = sha256(&seal);
        out.extend_from_slice(&seal);
        out.push(b'\n');
        self.prev_seal = Some(seal_hash);
        Some(Batch {
            bytes: out,
            batch,
            first_seq,
            last_seq,
            records: hashes.len(),
            items: item_count,
            seal: seal_hash,
            prev_seal,
            ended,
        })
    }

    /// Appends one record (its members written by `members`) and its newline to `out`.
    fn record(
        &mut self,
        out: &mut Vec<u8>,
        hashes: &mut Vec<Hash>,
        sid: &Arc<str>,
        ts: SystemTime,
        terminator: bool,
        members: impl FnOnce(&mut Vec<u8>, &mut TimeCache),
    ) {
        let link = match self.sessions.get_mut(sid) {
            Some(l) => l,
            None => self
                .sessions
                .entry(Arc::clone(sid))
                .or_insert(Link { n: 0, prev: None }),
        };
        let Link { n, prev } = *link;
        let start = out.len();
        out.extend_from_slice(b"{\"seq\":");
        json::uint(out, self.next_seq);
        json::member_str(out, "sid", sid);
        json::member_u64(out, "n", n);
        out.extend_from_slice(b",\"ts\":");
        self.time.append_quoted(out, ts);
        out.extend_from_slice(b",\"kind\":");
        members(out, &mut self.time);
        json::member_hex(out, "prev", prev.as_ref().map(|h| &h[..]));
        if terminator {
            self.sign_from(out, start);
        } else {
            out.push(b'}');
        }
        let h = sha256(&out[start..]);
        out.push(b'\n');
        if let Some(l) = self.sessions.get_mut(sid) {
            l.n = n + 1;
            l.prev = Some(h);
        }
        self.next_seq += 1;
        hashes.push(h);
    }

    fn seal_line(
        &self,
        batch: u64,
        first_seq: u64,
        last_seq: u64,
        hashes: &[Hash],
        now: SystemTime,
    ) -> Vec<u8> {
        let mut digest = Sha256::new();
        for h in hashes {
            digest.update(h);
        }
        let digest: Hash = digest.finalize().into();
        let mut l = Vec::with_capacity(hashes.len() * 16 + 300);
        l.extend_from_slice(b"{\"seal\":");
        json::uint(&mut l, batch);
        json::member_u64(&mut l, "first_seq", first_seq);
        json::member_u64(&mut l, "last_seq", last_seq);
        json::member_u64(&mut l, "count", hashes.len() as u64);
        // the first 8 bytes of each record's hash, in hex (no escaping needed)
        l.extend_from_slice(b",\"hashes\":\"");
        for h in hashes {
            json::hex_into(&mut l, &h[..8]);
        }
        l.push(b'"');
        json::member_str(&mut l, "digest", &json::hex(&digest));
        json::member_str(
            &mut l,
            "prev_seal",
            &self.prev_seal.map(|h| json::hex(&h)).unwrap_or_default(),
        );
        json::member_str(&mut l, "ts", &json::timestamp(now));
        self.sign(l)
    }
}

fn gap_members(m: &mut Vec<u8>, dropped: u64) {
    m.extend_from_slice(b"\"gap\"");
    json::member_u64(m, "dropped", dropped);
}

/// A statement record's members that depend on its text alone (the same for every execution
/// of a prepared statement).
fn slot_members(slot: &Slot, m: &mut Vec<u8>) {
    match &slot.text {
        Some(t) => {
            json::member_str(m, "sql", &t.excerpt);
            json::member_u64(m, "sql_len", t.len as u64);
            if t.truncated {
                m.extend_from_slice(b",\"sql_truncated\":true");
            }
            json::member_hex(m, "fp", Some(&t.fingerprint.to_be_bytes()));
        }
        None => m.extend_from_slice(b",\"sql\":null"),
    }
    if let Some(name) = &slot.name {
        json::member_str(m, "stmt_name", name);
    }
}

/// The members of a statement record, after `"kind":`.
///
/// The record's own `ts` is when the statement ended; it started `duration_us` before.
pub fn statement_members(m: &mut Vec<u8>, r: &StatementRecord, _time: &mut TimeCache) {
    m.extend_from_slice(b"\"statement\"");
    json::member_u64(m, "stmt", r.stmt);
    json::member_str(m, "path", r.path.as_str());
    r.slot.write_json(m, slot_members);
    if let Some(d) = &r.decision {
        m.extend_from_slice(b",\"decision\":{");
        json::key(m, "action");
        json::string(m, &d.action);
        json::member_str(m, "rule", &d.rule);
        if !d.fingerprint.is_empty() {
            json::member_str(m, "fingerprint", &d.fingerprint);
        }
        if let Some(a) = &d.approval {
            json::member_str(m, "approval", a);
        }
        m.push(b'}');
    }
    json::member_u64(m, "duration_us", r.duration_us);
    json::member_str(m, "status", r.status.as_str());
    if let Some(tag) = &r.tag {
        json::member_str(m, "tag", &tag.text());
    }
    if r.commands > 1 {
        json::member_u64(m, "commands", u64::from(r.commands));
    }
    json::member_u64(m, "rows", r.rows);
    json::member_u64(m, "bytes", r.bytes);
    if let Some(s) = &r.sqlstate {
        json::member_str(m, "sqlstate", &String::from_utf8_lossy(s));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::item::{Item, Path, Slot, Status};
    use crate::record::sql::statement_text;
    use std::time::{Duration, UNIX_EPOCH};

    fn frag(sid: &str, members: &str, terminator: bool) -> Item {
        Item {
            sid: Arc::from(sid),
            ts: UNIX_EPOCH + Duration::from_secs(1),
            body: Body::Fragment {
                members: members.into(),
                terminator,
            },
        }
    }

    fn stmt(sid: &str) -> Item {
        let slot = Slot::new(Some(statement_text(b"select \"x\"\n", 100, false)), None);
        Item {
            sid: Arc::from(sid),
            ts: UNIX_EPOCH,
            body: Body::Statement(Box::new(StatementRecord {
                stmt: 1,
                path: Path::Simple,
                slot,
                decision: None,
                started: UNIX_EPOCH,
                duration_us: 5,
                status: Status::Ok,
                tag: Some(crate::record::item::Tag::new(b"SELECT 1")),
                commands: 1,
                rows: 1,
                bytes: 42,
                sqlstate: None,
            })),
        }
    }

    fn lines(b: &[u8]) -> Vec<&[u8]> {
        b.split(|&c| c == b'\n').filter(|l| !l.is_empty()).collect()
    }

    fn verify_signed(line: &[u8], key: &[u8]) -> bool {
        let s = std::str::from_utf8(line).unwrap();
        let cut = s.rfind(",\"mac\":\"").unwrap();
        let mac_hex = &s[cut + 8..s.len() - 2];
        let mut m = HmacSha256::new_from_slice(key).unwrap();
        m.update(&line[..cut]);
        m.update(b"}");
        json::hex(&m.finalize().into_bytes()) == mac_hex
    }

    #[test]
    fn records_chain_per_session_and_batches_seal() {
        let mut c = Chain::new("node1", "k1", b"secret");
        let taken = Taken {
            items: vec![
                frag("a", "\"session_start\"", false),
                frag("b", "\"session_start\"", false),
                stmt("a"),
                frag("a", "\"session_end\"", true),
            ],
            dropped: HashMap::new(),
        };
        let b = c.seal(taken, UNIX_EPOCH).unwrap();
        assert_eq!((b.first_seq, b.last_seq, b.batch, b.records), (1, 4, 1, 4));
        assert_eq!(b.ended, vec![Arc::<str>::from("a")]);
        let ls = lines(&b.bytes);
        assert_eq!(ls.len(), 5);
        let a0 = std::str::from_utf8(ls[0]).unwrap();
        assert!(a0.starts_with("{\"seq\":1,\"sid\":\"a\",\"n\":0,"), "{a0}");
        assert!(a0.ends_with(",\"prev\":\"\"}"), "{a0}");
        let a1 = std::str::from_utf8(ls[2]).unwrap();
        assert!(
            a1.contains(&format!("\"prev\":\"{}\"", json::hex(&sha256(ls[0])))),
            "{a1}"
        );
        assert!(a1.contains("\"sql\":\"select \\\"x\\\"\\n\""), "{a1}");
        assert!(verify_signed(ls[3], b"secret"));
        assert!(!verify_signed(ls[3], b"other"));
        assert!(verify_signed(ls[4], b"secret"));
        assert_eq!(c.open_sessions(), 1);
        // the next batch continues seq, batch and the seal chain
        let b2 = c
            .seal(
                Taken {
                    items: vec![frag("b", "\"x\"", false)],
                    dropped: HashMap::new(),
                },
                UNIX_EPOCH,
            )
            .unwrap();
        assert_eq!((b2.first_seq, b2.batch), (5, 2));
        assert_eq!(b2.prev_seal, Some(b.seal));
        let l = std::str::from_utf8(lines(&b2.bytes)[0]).unwrap();
        assert!(l.contains("\"n\":1"), "{l}");
    }

    #[test]
    fn drops_become_gap_records() {
        let mut c = Chain::new("n", "k", b"k");
        let mut dropped = HashMap::new();
        dropped.insert(Arc::<str>::from("a"), 3);
        dropped.insert(Arc::<str>::from("z"), 1);
        let b = c
            .seal(
                Taken {
                    items: vec![frag("a", "\"x\"", false)],
                    dropped,
                },
                UNIX_EPOCH,
            )
            .unwrap();
        let ls = lines(&b.bytes);
        let s: Vec<&str> = ls.iter().map(|l| std::str::from_utf8(l).unwrap()).collect();
        assert!(s[0].contains("\"kind\":\"gap\",\"dropped\":3"), "{s:?}");
        assert!(s[1].contains("\"kind\":\"x\""), "{s:?}");
        assert!(
            s[2].contains("\"sid\":\"z\"") && s[2].contains("\"dropped\":1"),
            "{s:?}"
        );
        assert!(c.seal(Taken::default(), UNIX_EPOCH).is_none());
    }

    #[test]
    fn header_and_trailer_are_signed() {
        let c = Chain::new("n\"1", "k", b"key");
        let h = c.header(3, 10, 4, Some([7; 32]), UNIX_EPOCH);
        assert!(h.ends_with(b"}\n"));
        assert!(verify_signed(&h[..h.len() - 1], b"key"));
        let t = c.trailer(3, 12, 5, None, "rotate", UNIX_EPOCH);
        assert!(verify_signed(&t[..t.len() - 1], b"key"));
    }
}
