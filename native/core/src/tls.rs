//! The TLS record layer of both connection sides (rustls, ring backend), sans-IO.
//!
//! A [`Tls`] is one TLS connection: the gateway's server end of a client's connection
//! ([`Tls::server`]) or its client end of an upstream connection ([`Tls::client`]).  Ciphertext
//! read from the socket goes in with [`Tls::feed`], which decrypts it into a [`PlainSink`] (the
//! receive buffer the framer reads); plaintext to send goes in with [`Tls::encrypt`], which
//! appends the records to write to the socket.  The handshake runs through the same two calls:
//! `feed` what the peer sent, write what [`Tls::take_ciphertext`] hands out, until
//! [`Tls::is_handshaking`] is false.
//!
//! Promises kept here, as PostgreSQL and libpq keep them:
//! - TLS 1.2 and 1.3 only; ALPN `postgresql` offered (client) and required when the client
//!   offers ALPN at all (server: a client offering only other protocols is refused, as
//!   PostgreSQL 17 refuses it);
//! - records carry at most [`RECORD_PLAINTEXT_MAX`] bytes of plaintext (PostgreSQL's send buffer;
//!   libpq's asynchronous API hangs on larger records, see `tests/integration/test_tls_records.py`);
//! - `verify-full` checks the chain against the CA and the host name, `verify-ca` the chain
//!   only, `require` nothing (PostgreSQL's `sslmode`s);
//! - a malformed or forged record is an error ([`TlsError::Protocol`]) after which the
//!   connection only hands out the alert it owes the peer: never a panic, never plaintext.

use std::io::{self, Read};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, ClientConnection, Connection, DigitallySignedStruct,
    RootCertStore, ServerConfig, ServerConnection, SignatureScheme,
};

/// The ALPN protocol name of PostgreSQL.
pub const ALPN: &[u8] = b"postgresql";

/// Plaintext per TLS record at most: PostgreSQL hands OpenSSL 8 KiB at a time.
pub const RECORD_PLAINTEXT_MAX: usize = 8192;

/// How the upstream server's certificate is checked (PostgreSQL's `sslmode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// `require`: encryption only, any certificate.
    None,
    /// `verify-ca`: the chain must lead to the CA; any host name.
    Chain,
    /// `verify-full`: the chain and the host name.
    Full,
}

/// Why a TLS configuration or connection failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsError {
    /// A certificate, key or CA file that cannot be used (the message names what).
    Config(String),
    /// The peer broke TLS (a bad record, a failed handshake, a certificate refused).
    Protocol(String),
}

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsError::Config(m) | TlsError::Protocol(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for TlsError {}

/// The ring backend (it builds everywhere with a C compiler; aws-lc-rs would add
/// post-quantum key exchange, which is what rustls' deprecation note is about).
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

fn config_err(what: &str, e: impl std::fmt::Display) -> TlsError {
    TlsError::Config(format!("{what}: {e}"))
}

/// The certificates of a PEM chain, leaf first.
pub fn load_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| config_err("certificate file", e))?;
    if certs.is_empty() {
        return Err(TlsError::Config(
            "certificate file: no PEM certificate in it".into(),
        ));
    }
    Ok(certs)
}

/// The first private key of a PEM file (PKCS#8, PKCS#1 RSA or SEC1 EC).
pub fn load_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    // the parser's error could quote key material: say only what is wrong
    PrivateKeyDer::from_pem_slice(pem)
        .map_err(|_| TlsError::Config("key file: no usable PEM private key in it".into()))
}

/// The gateway's client-facing TLS configuration (ALPN `postgresql`, TLS 1.2 and 1.3,
/// 8 KiB records).
pub fn server_config(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_certs(cert_pem)?;
    let key = load_key(key_pem)?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| config_err("tls", e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| config_err("certificate and key", e))?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    cfg.max_fragment_size = Some(fragment_size());
    Ok(Arc::new(cfg))
}

/// rustls' `max_fragment_size` counts the 5-byte record header.
fn fragment_size() -> usize {
    RECORD_PLAINTEXT_MAX + 5
}

/// An upstream TLS configuration: `verify` with the CA certificates of `ca_pem` (required
/// unless `Verify::None`), and a client certificate when `client_cert` gives (cert, key) PEM.
pub fn client_config(
    verify: Verify,
    ca_pem: Option<&[u8]>,
    client_cert: Option<(&[u8], &[u8])>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(VERSIONS)
        .map_err(|e| config_err("tls", e))?;
    let verifier: Arc<dyn ServerCertVerifier> = match verify {
        Verify::None => Arc::new(AnyCertificate(Arc::clone(&provider))),
        Verify::Chain | Verify::Full => {
            let Some(ca_pem) = ca_pem else {
                return Err(TlsError::Config(
                    "verifying the server needs CA certificates".into(),
                ));
            };
            let mut roots = RootCertStore::empty();
            for cert in load_certs(ca_pem).map_err(|e| config_err("CA file", e))? {
                roots.add(cert).map_err(|e| config_err("CA file", e))?;
            }
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                    .build()
                    .map_err(|e| config_err("CA file", e))?;
            if verify == Verify::Full {
                webpki
            } else {
                Arc::new(ChainOnly(webpki))
            }
        }
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut cfg = match client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(|e| config_err("client certificate and key", e))?,
    };
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    cfg.max_fragment_size = Some(fragment_size());
    Ok(Arc::new(cfg))
}

/// `verify-ca`: the webpki verdict, except that a certificate for another host name is fine
/// (webpki checks the chain before the name, so this error means the chain was good).
#[derive(Debug)]
struct ChainOnly(Arc<dyn ServerCertVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `require`: any certificate (the handshake's signatures are still checked against it).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Where decrypted plaintext goes (the receive buffer the framer reads).
pub trait PlainSink {
    /// Reads at most `n` bytes from `src` into free room at the end of the sink (making room
    /// for `n`), keeps what was read, and returns its length.
    fn fill_from(&mut self, n: usize, src: &mut dyn Read) -> io::Result<usize>;
}

impl PlainSink for Vec<u8> {
    fn fill_from(&mut self, n: usize, src: &mut dyn Read) -> io::Result<usize> {
        let len = self.len();
        self.resize(len + n, 0);
        let r = src.read(&mut self[len..]);
        self.truncate(len + r.as_ref().map_or(0, |k| *k));
        r
    }
}

/// One TLS connection (either end).
pub struct Tls {
    conn: Connection,
    /// Set by the first error: from then on nothing is decrypted or encrypted.
    failed: Option<TlsError>,
    /// The peer sent close_notify.
    peer_closed: bool,
}

impl Tls {
    /// The gateway's end of a client connection.
    pub fn server(config: &Arc<ServerConfig>) -> Result<Tls, TlsError> {
        let conn = ServerConnection::new(Arc::clone(config)).map_err(|e| config_err("tls", e))?;
        Ok(Tls::new(Connection::Server(conn)))
    }

    /// The gateway's end of an upstream connection to `server_name` (a DNS name or an IP
    /// address: the name verified under `verify-full`).
    pub fn client(config: &Arc<ClientConfig>, server_name: &str) -> Result<Tls, TlsError> {
        let name = ServerName::try_from(server_name.to_owned())
            .map_err(|e| config_err("server name", e))?;
        let conn =
            ClientConnection::new(Arc::clone(config), name).map_err(|e| config_err("tls", e))?;
        Ok(Tls::new(Connection::Client(conn)))
    }

    fn new(mut conn: Connection) -> Tls {
        // what is written is drained to the caller at once: no limit needed (or wanted: a
        // partial write would reorder nothing but would have to be retried)
        conn.set_buffer_limit(None);
        Tls {
            conn,
            failed: None,
            peer_closed: false,
        }
    }

    /// Ciphertext from the peer: decrypts every complete record into `sink` (handshake
    /// records advance the handshake; their answers wait in [`Tls::take_ciphertext`]).  A
    /// partial record stays inside until the rest arrives.
    pub fn feed(&mut self, mut data: &[u8], sink: &mut impl PlainSink) -> Result<(), TlsError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        loop {
            if !data.is_empty() {
                // never with an empty reader: rustls reads 0 bytes as the end of the stream
                if let Err(e) = self.conn.read_tls(&mut data) {
                    return Err(self.fail(format!("tls read: {e}")));
                }
            }
            let state = match self.conn.process_new_packets() {
                Ok(s) => s,
                Err(e) => return Err(self.fail(e.to_string())),
            };
            let mut pending = state.plaintext_bytes_to_read();
            while pending > 0 {
                match sink.fill_from(pending, &mut self.conn.reader()) {
                    Ok(0) => break,
                    Ok(n) => pending -= n.min(pending),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(self.fail(format!("tls read: {e}"))),
                }
            }
            if state.peer_has_closed() {
                self.peer_closed = true;
            }
            if data.is_empty() {
                return Ok(());
            }
        }
    }

    fn fail(&mut self, message: String) -> TlsError {
        let e = TlsError::Protocol(message);
        self.failed = Some(e.clone());
        e
    }

    /// Queues `plaintext` to be sent (records of at most 8 KiB; encrypted at once after the
    /// handshake, held until it completes before).  After an error nothing is queued.
    pub fn write(&mut self, plaintext: &[u8]) -> Result<(), TlsError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if plaintext.is_empty() {
            return Ok(());
        }
        let mut w = self.conn.writer();
        io::Write::write_all(&mut w, plaintext).map_err(|e| self.fail(format!("tls write: {e}")))
    }

    /// [`Tls::write`], then every record waiting to be sent appended to `out`.  After an error
    /// only the alert owed to the peer is appended; the plaintext is dropped.
    pub fn encrypt(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), TlsError> {
        let written = self.write(plaintext);
        self.take_ciphertext(out);
        written
    }

    /// Appends the records waiting to be sent to `out` (handshake messages, alerts).
    pub fn take_ciphertext(&mut self, out: &mut Vec<u8>) {
        while self.conn.wants_write() {
            match self.conn.write_tls(out) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }

    /// Queues close_notify (then [`Tls::take_ciphertext`]).
    pub fn close_notify(&mut self) {
        self.conn.send_close_notify();
    }

    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// The first error, if any.
    pub fn failed(&self) -> Option<&TlsError> {
        self.failed.as_ref()
    }

    /// The peer sent close_notify.
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    pub fn alpn(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// `TLSv1.2` / `TLSv1.3` (the names Python's `ssl` uses), once negotiated.
    pub fn version(&self) -> Option<&'static str> {
        match self.conn.protocol_version()? {
            rustls::ProtocolVersion::TLSv1_2 => Some("TLSv1.2"),
            rustls::ProtocolVersion::TLSv1_3 => Some("TLSv1.3"),
            _ => Some("unknown"),
        }
    }

    /// The negotiated cipher suite's IANA name.
    pub fn cipher(&self) -> Option<&'static str> {
        self.conn
            .negotiated_cipher_suite()
            .and_then(|s| s.suite().as_str())
    }

    /// The peer's certificate (DER), when it sent one.
    pub fn peer_certificate(&self) -> Option<&[u8]> {
        self.conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.as_ref())
    }
}

/// An established in-memory pair (client verifying nothing, as `require`) over the given
/// certificate: the server end and the client end.  For tests and the fuzz target.
pub fn established_pair(cert_pem: &[u8], key_pem: &[u8]) -> Result<(Tls, Tls), TlsError> {
    let mut server = Tls::server(&server_config(cert_pem, key_pem)?)?;
    let mut client = Tls::client(&client_config(Verify::None, None, None)?, "localhost")?;
    let mut sink = Vec::new();
    for _ in 0..8 {
        let mut wire = Vec::new();
        client.take_ciphertext(&mut wire);
        server.feed(&wire, &mut sink)?;
        wire.clear();
        server.take_ciphertext(&mut wire);
        client.feed(&wire, &mut sink)?;
        if !client.is_handshaking() && !server.is_handshaking() {
            return Ok((server, client));
        }
    }
    Err(TlsError::Protocol("handshake did not finish".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT: &[u8] = include_bytes!("../tests/data/test-only.crt");
    const KEY: &[u8] = include_bytes!("../tests/data/test-only.key");

    fn record_lengths(mut wire: &[u8]) -> Vec<usize> {
        let mut out = Vec::new();
        while wire.len() >= 5 {
            let len = usize::from(u16::from_be_bytes([wire[3], wire[4]]));
            out.push(len);
            wire = &wire[5 + len..];
        }
        assert!(wire.is_empty());
        out
    }

    #[test]
    fn pair_round_trip_in_records_of_8k() {
        let (mut server, mut client) = established_pair(CERT, KEY).expect("pair");
        let payload: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let mut wire = Vec::new();
        server.encrypt(&payload, &mut wire).expect("encrypt");
        let lens = record_lengths(&wire);
        // tickets may precede; the data records carry at most 8 KiB each
        assert!(
            lens.iter().filter(|&&l| l > 8192 + 256).count() == 0,
            "{lens:?}"
        );
        let mut got = Vec::new();
        // byte by byte: partial records wait inside
        for b in wire.chunks(1) {
            client.feed(b, &mut got).expect("feed");
        }
        assert_eq!(got, payload);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        #[test]
        fn arbitrary_bytes_after_the_handshake(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048), cut in 0usize..64) {
            let (mut server, _client) = established_pair(CERT, KEY).expect("pair");
            let cut = cut.min(data.len());
            let mut sink = Vec::new();
            let first = server.feed(&data[..cut], &mut sink);
            let r = first.and_then(|()| server.feed(&data[cut..], &mut sink));
            // forged records never decrypt: no plaintext, whatever the bytes
            proptest::prop_assert!(sink.is_empty());
            if r.is_err() {
                let mut out = Vec::new();
                proptest::prop_assert!(server.encrypt(b"x", &mut out).is_err());
                proptest::prop_assert!(server.feed(b"\x17\x03\x03\x00\x01x", &mut sink).is_err());
            }
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        // a self-contained check needs a certificate: the Python tests drive real peers; here
        // only the client end, fed garbage after its ClientHello
        let cfg = client_config(Verify::None, None, None).expect("config");
        let mut tls = Tls::client(&cfg, "localhost").expect("conn");
        let mut hello = Vec::new();
        tls.take_ciphertext(&mut hello);
        assert_eq!(hello.first(), Some(&0x16));
        let mut sink = Vec::new();
        let err = tls.feed(b"\x17\x03\x03\x00\x05hello", &mut sink);
        assert!(matches!(err, Err(TlsError::Protocol(_))), "{err:?}");
        assert!(sink.is_empty());
        // and stays failed: nothing more is decrypted or encrypted
        assert!(tls.feed(b"\x16\x03\x03", &mut sink).is_err());
        let mut out = Vec::new();
        assert!(tls.encrypt(b"SELECT 1", &mut out).is_err());
    }
}
