//! `TlsServerConfig`, `TlsClientConfig` and `TlsConnection`: the TLS record layer
//! (`veilgate_core::tls`, rustls) for Python.
//!
//! The handshake is driven from Python (`feed` what the socket gave, write what
//! `take_ciphertext` returns, until `handshaking` is false).  After it, the connection is
//! attached to the side's `RecvBuffer` (`RecvBuffer.attach_tls`), which decrypts what the loop
//! reads straight into its framing buffer, and to the peer buffer's output
//! (`RecvBuffer.set_output_tls`), which encrypts what it forwards: no Python call per record.
//! `encrypt` serves the control plane's own writes.  Every call that produces ciphertext takes
//! the same lock, and its result is written before the next call: records leave in order.

use std::sync::{Arc, Mutex, MutexGuard};

use pyo3::buffer::PyBuffer;
use pyo3::create_exception;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use veilgate_core::tls::{self, Tls, TlsError as CoreError, Verify};

use crate::errors::FramingError;

create_exception!(
    veilgate_native,
    TlsError,
    FramingError,
    "The peer broke TLS (a bad record, a failed handshake, a refused certificate).  The \
     connection then only hands out the alert it owes the peer."
);

fn py_err(e: &CoreError) -> PyErr {
    match e {
        CoreError::Config(m) => PyValueError::new_err(m.clone()),
        CoreError::Protocol(m) => TlsError::new_err(m.clone()),
    }
}

/// The TLS state shared by a side's receive buffer (decrypting) and the peer buffer's output
/// (encrypting): one rustls connection does both directions.
pub struct TlsCore {
    pub tls: Tls,
    /// Plaintext decrypted before a receive buffer took over (during and right after the
    /// handshake: a client's first message often travels with its Finished).
    pub plain: Vec<u8>,
}

pub type SharedTls = Arc<Mutex<TlsCore>>;

/// Locks `core`; a panic while locked cannot have left rustls half-updated in a way we could
/// repair, but the error state it would have set is what we read next, so poison is ignored.
pub fn lock(core: &SharedTls) -> MutexGuard<'_, TlsCore> {
    core.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[pyclass(module = "veilgate_native", frozen)]
pub struct TlsServerConfig {
    inner: Arc<rustls::ServerConfig>,
    certificate: Vec<u8>,
}

#[pymethods]
impl TlsServerConfig {
    #[new]
    fn new(cert_pem: &[u8], key_pem: &[u8]) -> PyResult<Self> {
        let inner = tls::server_config(cert_pem, key_pem).map_err(|e| py_err(&e))?;
        let certificate = tls::load_certs(cert_pem)
            .map_err(|e| py_err(&e))?
            .swap_remove(0)
            .as_ref()
            .to_vec();
        Ok(TlsServerConfig { inner, certificate })
    }

    /// The gateway's certificate (DER): its hash is the `tls-server-end-point` binding.
    #[getter]
    fn certificate<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.certificate)
    }
}

#[pyclass(module = "veilgate_native", frozen)]
pub struct TlsClientConfig {
    inner: Arc<rustls::ClientConfig>,
}

#[pymethods]
impl TlsClientConfig {
    #[new]
    #[pyo3(signature = (mode, ca_pem=None, *, cert_pem=None, key_pem=None))]
    fn new(
        mode: &str,
        ca_pem: Option<&[u8]>,
        cert_pem: Option<&[u8]>,
        key_pem: Option<&[u8]>,
    ) -> PyResult<Self> {
        let verify = match mode {
            "require" => Verify::None,
            "verify-ca" => Verify::Chain,
            "verify-full" => Verify::Full,
            other => {
                return Err(PyValueError::new_err(format!(
                    "mode must be require, verify-ca or verify-full, not {other:?}"
                )))
            }
        };
        let client_cert = match (cert_pem, key_pem) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                return Err(PyValueError::new_err(
                    "a client certificate needs both cert_pem and key_pem",
                ))
            }
        };
        let inner = tls::client_config(verify, ca_pem, client_cert).map_err(|e| py_err(&e))?;
        Ok(TlsClientConfig { inner })
    }
}

#[pyclass(module = "veilgate_native", frozen)]
pub struct TlsConnection {
    pub core: SharedTls,
    /// The gateway's own certificate (server side).
    certificate: Option<Vec<u8>>,
    server_side: bool,
}

impl TlsConnection {
    fn with<T>(&self, f: impl FnOnce(&mut TlsCore) -> T) -> T {
        f(&mut lock(&self.core))
    }

    fn wrap(tls: Tls, certificate: Option<Vec<u8>>, server_side: bool) -> Self {
        TlsConnection {
            core: Arc::new(Mutex::new(TlsCore {
                tls,
                plain: Vec::new(),
            })),
            certificate,
            server_side,
        }
    }
}

#[pymethods]
impl TlsConnection {
    /// The gateway's end of a client's connection.
    #[staticmethod]
    fn server(config: &TlsServerConfig) -> PyResult<Self> {
        let tls = Tls::server(&config.inner).map_err(|e| py_err(&e))?;
        Ok(Self::wrap(tls, Some(config.certificate.clone()), true))
    }

    /// The gateway's end of an upstream connection; `server_name` is what `verify-full`
    /// checks (a DNS name or an IP address).
    #[staticmethod]
    fn client(config: &TlsClientConfig, server_name: &str) -> PyResult<Self> {
        let tls = Tls::client(&config.inner, server_name).map_err(|e| py_err(&e))?;
        Ok(Self::wrap(tls, None, false))
    }

    /// Ciphertext from the peer; returns the plaintext now waiting for `take_plaintext`.
    /// Raises `TlsError` on a bad record or a failed handshake (then `take_ciphertext` has
    /// the alert for the peer).
    fn feed(&self, data: &[u8]) -> PyResult<usize> {
        self.with(|c| {
            c.tls.feed(data, &mut c.plain).map_err(|e| py_err(&e))?;
            Ok(c.plain.len())
        })
    }

    fn take_plaintext<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        let plain = self.with(|c| std::mem::take(&mut c.plain));
        PyBytes::new(py, &plain)
    }

    /// Queues plaintext to send (encrypted at once after the handshake).
    fn write_plaintext(&self, data: &[u8]) -> PyResult<()> {
        self.with(|c| c.tls.write(data).map_err(|e| py_err(&e)))
    }

    /// The records waiting to be sent (handshake messages, alerts, application data).
    fn take_ciphertext<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        let mut out = Vec::new();
        self.with(|c| c.tls.take_ciphertext(&mut out));
        PyBytes::new(py, &out)
    }

    /// `write_plaintext` then `take_ciphertext`, in one call.  After an error: the alert
    /// owed to the peer (possibly empty), the plaintext dropped, no exception.
    fn encrypt<'py>(
        &self,
        py: Python<'py>,
        data: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let mut out = Vec::new();
        let mut encrypt = |plain: &[u8]| {
            self.with(|c| {
                // an error was already reported by whoever met it; a write on a broken
                // connection only flushes the alert
                let _ = c.tls.encrypt(plain, &mut out);
            });
        };
        if let Ok(b) = data.cast::<PyBytes>() {
            encrypt(b.as_bytes());
        } else {
            // bytearray, memoryview: whatever a transport's write() takes
            let buf = PyBuffer::<u8>::get(data)?;
            encrypt(&buf.to_vec(py)?);
        }
        Ok(PyBytes::new(py, &out))
    }

    /// close_notify and whatever was waiting, to write before closing the socket.
    fn close_notify<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        let mut out = Vec::new();
        self.with(|c| {
            if c.tls.failed().is_none() {
                c.tls.close_notify();
            }
            c.tls.take_ciphertext(&mut out);
        });
        PyBytes::new(py, &out)
    }

    #[getter]
    fn handshaking(&self) -> bool {
        self.with(|c| c.tls.is_handshaking())
    }

    #[getter]
    fn peer_closed(&self) -> bool {
        self.with(|c| c.tls.peer_closed())
    }

    /// The first error met, if any.
    #[getter]
    fn failed(&self) -> Option<String> {
        self.with(|c| c.tls.failed().map(ToString::to_string))
    }

    #[getter]
    fn server_side(&self) -> bool {
        self.server_side
    }

    /// The gateway's own certificate (DER), on the server side.
    #[getter]
    fn certificate<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.certificate.as_deref().map(|c| PyBytes::new(py, c))
    }

    // --- the part of ssl.SSLObject the gateway reads (get_extra_info("ssl_object")) ----------

    fn selected_alpn_protocol(&self) -> Option<String> {
        self.with(|c| {
            c.tls
                .alpn()
                .map(|a| String::from_utf8_lossy(a).into_owned())
        })
    }

    fn version(&self) -> Option<&'static str> {
        self.with(|c| c.tls.version())
    }

    /// (name, protocol version, secret bits) as `ssl.SSLObject.cipher()`.
    fn cipher(&self) -> Option<(&'static str, &'static str, u32)> {
        self.with(|c| {
            let name = c.tls.cipher()?;
            let bits = if name.contains("AES_128") { 128 } else { 256 };
            Some((name, c.tls.version()?, bits))
        })
    }

    /// The peer's certificate in DER; only the binary form exists here (scramp reads it for
    /// the `tls-server-end-point` channel binding).
    #[pyo3(signature = (binary_form=false))]
    fn getpeercert<'py>(
        &self,
        py: Python<'py>,
        binary_form: bool,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        if !binary_form {
            return Err(PyValueError::new_err(
                "only getpeercert(binary_form=True) is available",
            ));
        }
        Ok(self.with(|c| c.tls.peer_certificate().map(|d| PyBytes::new(py, d))))
    }

    fn __repr__(&self) -> String {
        self.with(|c| {
            format!(
                "<TlsConnection {} {}{}>",
                if self.server_side { "server" } else { "client" },
                c.tls.version().unwrap_or("handshaking"),
                if c.tls.failed().is_some() {
                    " failed"
                } else {
                    ""
                },
            )
        })
    }
}
