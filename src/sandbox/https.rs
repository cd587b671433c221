//! The HTTPS front the ThreatQ and Lookups API stand-ins share: a throwaway CA, a certificate for `localhost` and
//! `127.0.0.1`, and an axum router behind rustls on a loopback port. It stops when dropped.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum_server::accept::NoDelayAcceptor;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::certs::TestCa;

pub struct HttpsServer {
    addr: SocketAddr,
    ca_pem: String,
    handle: axum_server::Handle<SocketAddr>,
}

impl HttpsServer {
    /// Serves `app` on 127.0.0.1:`port` (0: a free port); `name` appears in the CA and in errors.
    pub async fn start(name: &str, port: u16, app: Router) -> io::Result<Self> {
        let ca = TestCa::new(&format!("{name} CA"));
        let server = ca.server(&[]);
        let certs = CertificateDer::pem_slice_iter(server.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(io::Error::other)?;
        let key = PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes()).map_err(io::Error::other)?;
        // The provider is named so the stand-ins work whether or not `init_tls` ran.
        let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(io::Error::other)?;
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];

        let listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let handle = axum_server::Handle::new();
        // TCP_NODELAY, as web servers set it: without it a response written in two segments can wait for the
        // client's delayed ACK (40 ms on Linux), a stall of the stand-in's that would count as the exporter's.
        let acceptor = RustlsAcceptor::new(RustlsConfig::from_config(Arc::new(tls))).acceptor(NoDelayAcceptor::new());
        let server = axum_server::from_tcp(listener)?.acceptor(acceptor).handle(handle.clone());
        let name = name.to_owned();
        tokio::spawn(async move {
            if let Err(e) = server.serve(app.into_make_service()).await {
                tracing::error!("the {name} stopped: {e}");
            }
        });
        Ok(Self { addr, ca_pem: ca.cert_pem(), handle })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The CA that signed the server's certificate, to trust it.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}
