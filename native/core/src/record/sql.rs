//! Statement text for the session record: a bounded excerpt with credentials redacted, and a
//! fingerprint that ignores constants, comments, white space and keyword case.
//!
//! One pass of a small PostgreSQL lexer (strings with `''` and backslash escapes, `E''` / `B''` /
//! `X''` / `U&''` prefixes, dollar quotes, nested comments, numbers, `$n` parameters, quoted
//! identifiers).  It never fails: an unterminated literal or comment runs to the end of the text.
//!
//! What is redacted (the excerpt is what an auditor reads, so it must never hold a secret):
//!
//! * always: a string literal right after the word `PASSWORD` (`CREATE ROLE ... PASSWORD 'x'`,
//!   `OPTIONS (password 'x')`), and any string literal that looks like a credential carrier (a
//!   connection string with `password=`, a URI with `user:secret@`);
//! * with `redact_literals`: every string and numeric constant, replaced by `$n` parameters
//!   numbered after the statement's own (the `pg_stat_statements` form).
//!
//! Backslashes always escape inside strings here (as if `standard_conforming_strings` were off):
//! when unsure where a literal ends, the lexer errs towards a longer literal, so redaction errs
//! towards hiding more, never less.

use sha2::{Digest, Sha256};

/// The replacement of a redacted credential literal.
pub const REDACTED: &str = "'***'";

/// At most this many bytes of a statement feed its fingerprint (longer statements are told apart
/// by their length too).
pub const FINGERPRINT_SCAN_MAX: usize = 64 * 1024;

/// The recorded form of one statement text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementText {
    /// The excerpt (UTF-8, lossy for other encodings), at most the requested bytes.
    pub excerpt: String,
    /// Whether the excerpt stops before the end of the statement.
    pub truncated: bool,
    /// Length of the whole statement, in bytes as sent.
    pub len: usize,
    /// 64 bits of SHA-256 over the normalised token stream.
    pub fingerprint: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Space,
    Comment,
    Str,
    Number,
    Ident,
    QuotedIdent,
    Param,
    Other,
}

/// Lexes `text` into `(kind, start, end)` tokens.
struct Lexer<'a> {
    s: &'a [u8],
    i: usize,
}

fn ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn ident_cont(b: u8) -> bool {
    ident_start(b) || b.is_ascii_digit() || b == b'$'
}

impl Lexer<'_> {
    fn at(&self, k: usize) -> Option<u8> {
        self.s.get(self.i + k).copied()
    }

    /// A `'...'` literal starting at the quote (`''` and backslash escapes).
    fn string(&mut self) {
        self.i += 1;
        while let Some(b) = self.at(0) {
            self.i += 1;
            match b {
                b'\\' => self.i = (self.i + 1).min(self.s.len()),
                b'\'' if self.at(0) == Some(b'\'') => self.i += 1,
                b'\'' => return,
                _ => {}
            }
        }
    }

    /// The delimiter length of a dollar quote opening at `self.i` (`$$`, `$tag$`), if any.
    fn dollar_delim(&self) -> Option<usize> {
        let rest = &self.s[self.i + 1..];
        let mut k = 0;
        if let Some(&b) = rest.first() {
            if !(ident_start(b) || b == b'$') {
                return None;
            }
        }
        while let Some(&b) = rest.get(k) {
            if b == b'$' {
                return Some(k + 2);
            }
            if !(ident_start(b) || b.is_ascii_digit()) {
                return None;
            }
            k += 1;
        }
        None
    }

    fn next_token(&mut self) -> Option<(Kind, usize, usize)> {
        let start = self.i;
        let b = self.at(0)?;
        let kind = match b {
            b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => {
                while matches!(self.at(0), Some(b' ' | b'\t' | b'\n' | b'\r' | b'\x0c')) {
                    self.i += 1;
                }
                Kind::Space
            }
            b'-' if self.at(1) == Some(b'-') => {
                while !matches!(self.at(0), None | Some(b'\n')) {
                    self.i += 1;
                }
                Kind::Comment
            }
            b'/' if self.at(1) == Some(b'*') => {
                self.i += 2;
                let mut depth = 1usize;
                while depth > 0 && self.i < self.s.len() {
                    if self.at(0) == Some(b'/') && self.at(1) == Some(b'*') {
                        depth += 1;
                        self.i += 2;
                    } else if self.at(0) == Some(b'*') && self.at(1) == Some(b'/') {
                        depth -= 1;
                        self.i += 2;
                    } else {
                        self.i += 1;
                    }
                }
                self.i = self.i.min(self.s.len());
                Kind::Comment
            }
            b'\'' => {
                self.string();
                Kind::Str
            }
            b'"' => {
                self.i += 1;
                while let Some(c) = self.at(0) {
                    self.i += 1;
                    if c == b'"' {
                        if self.at(0) == Some(b'"') {
                            self.i += 1;
                        } else {
                            break;
                        }
                    }
                }
                Kind::QuotedIdent
            }
            b'$' if self.at(1).is_some_and(|c| c.is_ascii_digit()) => {
                self.i += 1;
                while self.at(0).is_some_and(|c| c.is_ascii_digit()) {
                    self.i += 1;
                }
                Kind::Param
            }
            b'$' => match self.dollar_delim() {
                Some(n) => {
                    let delim = &self.s[self.i..self.i + n];
                    let body = self.i + n;
                    self.i = match find(&self.s[body..], delim) {
                        Some(at) => body + at + n,
                        None => self.s.len(),
                    };
                    Kind::Str
                }
                None => {
                    self.i += 1;
                    Kind::Other
                }
            },
            b'0'..=b'9' => {
                self.number();
                Kind::Number
            }
            b'.' if self.at(1).is_some_and(|c| c.is_ascii_digit()) => {
                self.number();
                Kind::Number
            }
            c if ident_start(c) => {
                while self.at(0).is_some_and(ident_cont) {
                    self.i += 1;
                }
                let word = &self.s[start..self.i];
                if word.len() == 1
                    && matches!(word[0].to_ascii_lowercase(), b'e' | b'b' | b'x' | b'n')
                    && self.at(0) == Some(b'\'')
                {
                    // E'...', B'...', X'...', N'...': one literal with its prefix
                    self.string();
                    Kind::Str
                } else if word.len() == 1
                    && word[0].eq_ignore_ascii_case(&b'u')
                    && self.at(0) == Some(b'&')
                    && self.at(1) == Some(b'\'')
                {
                    self.i += 1;
                    self.string();
                    Kind::Str
                } else {
                    Kind::Ident
                }
            }
            _ => {
                self.i += 1;
                Kind::Other
            }
        };
        Some((kind, start, self.i))
    }

    fn number(&mut self) {
        while let Some(c) = self.at(0) {
            if c.is_ascii_alphanumeric() || c == b'_' || c == b'.' {
                self.i += 1;
                if matches!(c, b'e' | b'E')
                    && matches!(self.at(0), Some(b'+' | b'-'))
                    && self.at(1).is_some_and(|d| d.is_ascii_digit())
                {
                    self.i += 1;
                }
            } else {
                break;
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

fn lower_eq(word: &[u8], lower: &[u8]) -> bool {
    word.len() == lower.len()
        && word
            .iter()
            .zip(lower)
            .all(|(a, b)| a.to_ascii_lowercase() == *b)
}

/// Whether a string literal's bytes look like they carry a credential.  No copy: the literal
/// is searched case-insensitively where it is.
fn credential_like(lit: &[u8]) -> bool {
    // `password` (any case) followed, after white space, by `=`: any occurrence
    let mut from = 0;
    while let Some(p) = memchr::memchr2(b'p', b'P', &lit[from..]) {
        let at = from + p;
        if lit.len() - at >= 8 && lower_eq(&lit[at..at + 8], b"password") {
            let rest = lit[at + 8..].iter().skip_while(|b| b.is_ascii_whitespace());
            if rest.clone().next() == Some(&b'=') {
                return true;
            }
        }
        from = at + 1;
    }
    // scheme://user:secret@host
    if let Some(at) = find(lit, b"://") {
        let auth = &lit[at + 3..];
        let end = auth
            .iter()
            .position(|b| matches!(b, b'/' | b'?' | b'#' | b' ' | b'\''))
            .unwrap_or(auth.len());
        let auth = &auth[..end];
        if let Some(atsign) = auth.iter().rposition(|&b| b == b'@') {
            return auth[..atsign].contains(&b':');
        }
    }
    false
}

/// The highest `$n` parameter number in `text` (0 when none).
fn max_param(text: &[u8]) -> u64 {
    let mut lx = Lexer { s: text, i: 0 };
    let mut max = 0u64;
    while let Some((kind, a, b)) = lx.next_token() {
        if kind == Kind::Param {
            let n = std::str::from_utf8(&text[a + 1..b])
                .ok()
                .and_then(|d| d.parse::<u64>().ok())
                .unwrap_or(0);
            max = max.max(n);
        }
    }
    max
}

/// Builds the recorded form of `text`: an excerpt of at most `max_excerpt` bytes.
///
/// The fingerprint is SHA-256 over the normalised token stream, built in a reusable per-thread
/// buffer and hashed once (the same bytes as hashing token by token: recordings of every
/// version agree on it).
pub fn statement_text(text: &[u8], max_excerpt: usize, redact_literals: bool) -> StatementText {
    NORMALISED.with(|cell| {
        let mut norm = cell.take();
        norm.clear();
        let t = statement_text_with(text, max_excerpt, redact_literals, &mut norm);
        if norm.capacity() <= NORMALISED_KEPT {
            cell.set(norm);
        }
        t
    })
}

/// The per-thread buffer of [`statement_text`]'s normalised token stream is kept up to this
/// capacity (a longer statement's is freed after use).
const NORMALISED_KEPT: usize = 16 * 1024;

thread_local! {
    static NORMALISED: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

fn statement_text_with(
    text: &[u8],
    max_excerpt: usize,
    redact_literals: bool,
    norm: &mut Vec<u8>,
) -> StatementText {
    // Until a token is replaced, the excerpt is the text itself up to `plain` (tokens are
    // contiguous): nothing is copied token by token in the common case.
    let mut out: Option<Vec<u8>> = None;
    let mut plain = 0usize;
    let scan = &text[..text.len().min(FINGERPRINT_SCAN_MAX)];
    let mut lx = Lexer { s: scan, i: 0 };
    let mut param = if redact_literals { max_param(scan) } else { 0 };
    let mut after_password = false;
    let mut excerpt_done = false;
    let mut truncated = false;
    let mut buf = String::new();
    while let Some((kind, a, b)) = lx.next_token() {
        let tok = &scan[a..b];
        // the fingerprint: normalised tokens, each followed by a separator (so white space
        // and comments between tokens do not count)
        match kind {
            Kind::Space | Kind::Comment => {}
            Kind::Str | Kind::Number | Kind::Param => norm.extend_from_slice(b"?\x1f"),
            Kind::Ident => {
                norm.extend(tok.iter().map(u8::to_ascii_lowercase));
                norm.push(0x1f);
            }
            _ => {
                norm.extend_from_slice(tok);
                norm.push(0x1f);
            }
        }
        if excerpt_done {
            continue;
        }
        let replacement: Option<&str> = match kind {
            Kind::Str if after_password || credential_like(tok) => Some(REDACTED),
            Kind::Str | Kind::Number if redact_literals => {
                param += 1;
                buf.clear();
                buf.push('$');
                buf.push_str(&param.to_string());
                Some(buf.as_str())
            }
            _ => None,
        };
        let piece: &[u8] = replacement.map_or(tok, str::as_bytes);
        let so_far = out.as_ref().map_or(plain, Vec::len);
        if so_far + piece.len() > max_excerpt {
            let room = max_excerpt - so_far;
            if replacement.is_none() {
                match out.as_mut() {
                    Some(o) => o.extend_from_slice(&piece[..room]),
                    None => plain += room,
                }
            }
            excerpt_done = true;
            truncated = true;
        } else {
            match (out.as_mut(), replacement) {
                (Some(o), _) => o.extend_from_slice(piece),
                (None, None) => plain += piece.len(),
                (None, Some(_)) => {
                    let mut o = Vec::with_capacity(text.len().min(max_excerpt) + 8);
                    o.extend_from_slice(&scan[..plain]);
                    o.extend_from_slice(piece);
                    out = Some(o);
                }
            }
        }
        match kind {
            Kind::Space | Kind::Comment => {}
            Kind::Ident => after_password = lower_eq(tok, b"password"),
            _ => after_password = false,
        }
    }
    if !excerpt_done && scan.len() < text.len() {
        // beyond the scanned prefix: not lexed, so not copied (it could hold a credential)
        truncated = true;
    }
    if scan.len() < text.len() {
        norm.extend_from_slice(&(text.len() as u64).to_le_bytes());
    }
    let digest = Sha256::digest(&norm[..]);
    let mut eight = [0u8; 8];
    eight.copy_from_slice(&digest[..8]);
    StatementText {
        excerpt: utf8_prefix(out.as_deref().unwrap_or(&scan[..plain]), max_excerpt),
        truncated,
        len: text.len(),
        fingerprint: u64::from_be_bytes(eight),
    }
}

/// `bytes` as UTF-8 of at most `max` bytes: invalid sequences replaced (a replacement
/// character is 3 bytes: what does not fit is dropped), a character cut at the end dropped.
fn utf8_prefix(bytes: &[u8], max: usize) -> String {
    let mut s = match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(e) if e.error_len().is_none() => {
            String::from_utf8_lossy(&bytes[..e.valid_up_to()]).into_owned()
        }
        Err(_) => {
            let mut s = String::from_utf8_lossy(bytes).into_owned();
            // a cut character at the very end shows as one replacement character: drop it
            if bytes.last().is_some_and(|b| *b >= 0x80) && s.ends_with('\u{fffd}') {
                s.pop();
            }
            s
        }
    };
    while s.len() > max {
        s.pop();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(s: &str) -> String {
        statement_text(s.as_bytes(), 4096, false).excerpt
    }

    fn fp(s: &str) -> u64 {
        statement_text(s.as_bytes(), 4096, false).fingerprint
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            ex("ALTER ROLE bob WITH PASSWORD 'hunter2'"),
            "ALTER ROLE bob WITH PASSWORD '***'"
        );
        assert_eq!(
            ex("create user x encrypted password /* c */ 'p''w'"),
            "create user x encrypted password /* c */ '***'"
        );
        assert_eq!(
            ex("CREATE ROLE r PASSWORD $q$se'cret$q$ LOGIN"),
            "CREATE ROLE r PASSWORD '***' LOGIN"
        );
        assert_eq!(
            ex("select dblink_connect('host=h password=s3cret dbname=d')"),
            "select dblink_connect('***')"
        );
        assert_eq!(ex("select 'postgresql://u:s3cret@h/db'"), "select '***'");
        assert_eq!(
            ex("select 'user@example.com', 'a:b'"),
            "select 'user@example.com', 'a:b'"
        );
        // backslash escapes keep the literal going: the secret stays inside it
        assert_eq!(
            ex("alter role r password 'a\\'; x'"),
            "alter role r password '***'"
        );
        // unterminated: redacted to the end
        assert_eq!(
            ex("alter role r password 'abc"),
            "alter role r password '***'"
        );
    }

    #[test]
    fn literals_redacted_on_request() {
        let t = statement_text(
            b"select * from t where a = $1 and b = 'x' and c = 4.5e-3",
            4096,
            true,
        );
        assert_eq!(
            t.excerpt,
            "select * from t where a = $1 and b = $2 and c = $3"
        );
        let t = statement_text(b"select E'a\\'b', $$x$$, 0x1F", 4096, true);
        assert_eq!(t.excerpt, "select $1, $2, $3");
    }

    #[test]
    fn fingerprints_ignore_constants_case_space_and_comments() {
        let a = fp("SELECT abalance FROM pgbench_accounts WHERE aid = 4711;");
        assert_eq!(
            a,
            fp("select  abalance\nfrom pgbench_accounts -- c\n where aid = 17;")
        );
        assert_eq!(
            a,
            fp("SELECT abalance FROM pgbench_accounts WHERE aid = /* x */ 99;")
        );
        assert_ne!(
            a,
            fp("SELECT abalance FROM pgbench_accounts WHERE bid = 4711;")
        );
        assert_ne!(fp("select \"A\" from t"), fp("select \"a\" from t"));
        assert_eq!(fp("select 'a'"), fp("select $1"));
    }

    /// The fingerprint as the first version computed it (token by token into the hasher):
    /// recordings of every version must agree.
    fn fingerprint_v1(text: &[u8]) -> u64 {
        let mut fp = Sha256::new();
        let scan = &text[..text.len().min(FINGERPRINT_SCAN_MAX)];
        let mut lx = Lexer { s: scan, i: 0 };
        while let Some((kind, a, b)) = lx.next_token() {
            let tok = &scan[a..b];
            match kind {
                Kind::Space | Kind::Comment => {}
                Kind::Str | Kind::Number | Kind::Param => fp.update(b"?\x1f"),
                Kind::Ident => {
                    let lower: Vec<u8> = tok.iter().map(u8::to_ascii_lowercase).collect();
                    fp.update(&lower);
                    fp.update(b"\x1f");
                }
                _ => {
                    fp.update(tok);
                    fp.update(b"\x1f");
                }
            }
        }
        if scan.len() < text.len() {
            fp.update((text.len() as u64).to_le_bytes());
        }
        let digest = fp.finalize();
        let mut eight = [0u8; 8];
        eight.copy_from_slice(&digest[..8]);
        u64::from_be_bytes(eight)
    }

    /// The excerpt as the first version built it (token by token into a buffer).
    fn excerpt_v1(text: &[u8], max_excerpt: usize, redact_literals: bool) -> (String, bool) {
        let mut out: Vec<u8> = Vec::new();
        let scan = &text[..text.len().min(FINGERPRINT_SCAN_MAX)];
        let mut lx = Lexer { s: scan, i: 0 };
        let mut param = if redact_literals { max_param(scan) } else { 0 };
        let mut after_password = false;
        let mut excerpt_done = false;
        let mut truncated = false;
        while let Some((kind, a, b)) = lx.next_token() {
            let tok = &scan[a..b];
            if excerpt_done {
                continue;
            }
            let owned;
            let replacement: Option<&str> = match kind {
                Kind::Str if after_password || credential_like(tok) => Some(REDACTED),
                Kind::Str | Kind::Number if redact_literals => {
                    param += 1;
                    owned = format!("${param}");
                    Some(owned.as_str())
                }
                _ => None,
            };
            let piece: &[u8] = replacement.map_or(tok, str::as_bytes);
            if out.len() + piece.len() > max_excerpt {
                let room = max_excerpt - out.len();
                if replacement.is_none() {
                    out.extend_from_slice(&piece[..room]);
                }
                excerpt_done = true;
                truncated = true;
            } else {
                out.extend_from_slice(piece);
            }
            match kind {
                Kind::Space | Kind::Comment => {}
                Kind::Ident => after_password = lower_eq(tok, b"password"),
                _ => after_password = false,
            }
        }
        if !excerpt_done && scan.len() < text.len() {
            truncated = true;
        }
        (utf8_prefix(&out, max_excerpt), truncated)
    }

    #[test]
    fn fingerprints_are_those_of_the_first_version() {
        let long = format!("select '{}' || x from t", "y".repeat(FINGERPRINT_SCAN_MAX));
        for s in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 4711;",
            "",
            "select $1, 'a''b', E'\\x', $$d$$ from \"T\" -- c",
            long.as_str(),
        ] {
            assert_eq!(fp(s), fingerprint_v1(s.as_bytes()), "{:.80}", s);
        }
        // the per-thread buffer is reused: a short statement after a long one is unaffected
        assert_eq!(fp("select 1"), fingerprint_v1(b"select 1"));
    }

    #[test]
    fn credential_literals_in_any_case_and_position() {
        for lit in [
            "'PassWord = x'",
            "'user=a passwordless=1 password=s'",
            "'postgres://u:pw@h/db'",
        ] {
            assert_eq!(ex(&format!("select {lit}")), "select '***'", "{lit}");
        }
        assert_eq!(ex("select 'password'"), "select 'password'");
        assert_eq!(ex("select 'http://host/x@y'"), "select 'http://host/x@y'");
    }

    #[test]
    fn excerpt_is_bounded_on_a_char_boundary() {
        let t = statement_text("select 'ééééé'".as_bytes(), 10, false);
        assert!(t.truncated && t.excerpt.len() <= 10, "{t:?}");
        assert_eq!(t.excerpt, "select 'é");
        let t = statement_text(b"select 1", 100, false);
        assert!(!t.truncated);
        assert_eq!(t.len, 8);
        // a redacted literal is never cut into the excerpt
        let t = statement_text(b"alter role r password 'abcdef'", 25, false);
        assert_eq!(t.excerpt, "alter role r password ");
    }

    proptest::proptest! {
        #[test]
        fn excerpts_are_bounded_utf8_for_any_bytes(
            text in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
            max in 0usize..200,
            redact in proptest::bool::ANY,
        ) {
            let t = statement_text(&text, max, redact);
            proptest::prop_assert!(t.excerpt.len() <= max);
            proptest::prop_assert_eq!(t.len, text.len());
        }

        #[test]
        fn fingerprints_agree_with_the_first_version(
            text in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
        ) {
            let t = statement_text(&text, 64, false);
            proptest::prop_assert_eq!(t.fingerprint, fingerprint_v1(&text));
        }

        #[test]
        fn excerpts_are_those_of_the_first_version(
            parts in proptest::collection::vec(proptest::sample::select(vec![
                "select ", "password ", "PASSWORD", " 'x'", "'a''b'", "$$d$$", "E'\\''", "42",
                "1.5e+3", "$1", " -- c\n", "/* c */", "\"Q\"", "'host=h password=p'",
                "'pg://u:s@h'", "é", "\u{fffd}", ";", "\n", "$q$", "'",
            ]), 0..24),
            max in 0usize..120,
            redact in proptest::bool::ANY,
        ) {
            let text = parts.concat();
            let t = statement_text(text.as_bytes(), max, redact);
            let (excerpt, truncated) = excerpt_v1(text.as_bytes(), max, redact);
            proptest::prop_assert_eq!(&t.excerpt, &excerpt);
            proptest::prop_assert_eq!(t.truncated, truncated);
        }

        #[test]
        fn excerpts_of_any_bytes_are_those_of_the_first_version(
            text in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
            max in 0usize..200,
            redact in proptest::bool::ANY,
        ) {
            let t = statement_text(&text, max, redact);
            let (excerpt, truncated) = excerpt_v1(&text, max, redact);
            proptest::prop_assert_eq!(&t.excerpt, &excerpt);
            proptest::prop_assert_eq!(t.truncated, truncated);
        }

        #[test]
        fn a_password_literal_never_reaches_the_excerpt(
            before in "[a-z0-9 ,()=.]{0,40}",
            secret in "[A-Za-z0-9!#%&*+-]{1,24}",
            quote in proptest::sample::select(vec!["'", "$$", "$q$", "E'"]),
            after in "[a-z0-9 ,()=.]{0,40}",
        ) {
            let close = if quote == "E'" { "'" } else { quote };
            let sql = format!("{before} password {quote}secret-{secret}{close} {after}");
            for max in [8, 64, 4096] {
                let t = statement_text(sql.as_bytes(), max, false);
                proptest::prop_assert!(!t.excerpt.contains("secret-"), "{:?}", t.excerpt);
            }
        }
    }

    #[test]
    fn never_panics_on_arbitrary_bytes() {
        for s in [
            &b"$"[..],
            b"$$",
            b"$a",
            b"$a$",
            b"'",
            b"\"",
            b"/*",
            b"/* /* */",
            b"--",
            b"E'\\",
            b"\xff\xfe'",
            b".5",
            b"1e+",
        ] {
            for max in [0, 1, 3, 100] {
                let _ = statement_text(s, max, false);
                let _ = statement_text(s, max, true);
            }
        }
    }
}
