//! The TLS record layer's entry point (`Tls::feed`) on arbitrary bytes, cut into two reads:
//! into a fresh server end (the handshake parser), a fresh client end after its ClientHello,
//! and the server end of an established connection (the record layer).  Must never panic;
//! forged records never yield plaintext, and after an error nothing more is decrypted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use veilgate_core::tls::{client_config, established_pair, server_config, Tls, Verify};

const CERT: &[u8] = include_bytes!("../../core/tests/data/test-only.crt");
const KEY: &[u8] = include_bytes!("../../core/tests/data/test-only.key");

fn feed_all(tls: &mut Tls, data: &[u8], cut: usize, established: bool) {
    let mut sink = Vec::new();
    let cut = cut.min(data.len());
    let r = tls
        .feed(&data[..cut], &mut sink)
        .and_then(|()| tls.feed(&data[cut..], &mut sink));
    if established {
        assert!(sink.is_empty(), "a forged record decrypted");
    }
    let mut out = Vec::new();
    let _ = tls.encrypt(b"after", &mut out);
    if r.is_err() {
        assert!(tls.feed(b"\x17\x03\x03\x00\x01x", &mut sink).is_err());
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&cut, data)) = input.split_first() else {
        return;
    };
    let cut = usize::from(cut);
    let server_cfg = server_config(CERT, KEY).expect("test certificate");
    let mut fresh = Tls::server(&server_cfg).expect("server");
    feed_all(&mut fresh, data, cut, false);

    let client_cfg = client_config(Verify::None, None, None).expect("client config");
    let mut client = Tls::client(&client_cfg, "localhost").expect("client");
    let mut hello = Vec::new();
    client.take_ciphertext(&mut hello);
    feed_all(&mut client, data, cut, false);

    let (mut server, _client) = established_pair(CERT, KEY).expect("pair");
    feed_all(&mut server, data, cut, true);
});
