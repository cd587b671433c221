//! The one TLS client setup of the ThreatQ client, the Lookups API uploader and the relay (in the spirit of
//! Vector's `TlsConfig`): whom to trust (the system's roots, plus or instead of a CA bundle, or nobody checked
//! at all), an optional client identity, and the one PEM certificate reader. Each caller names its own source
//! (`THREATQ_CA_FILE`, `DEVO_CA_FILE`, a UI field) in its errors.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use x509_parser::prelude::{FromDer, X509Certificate};

/// The system's trust anchors; a store that cannot be read is skipped with a debug line.
pub fn system_roots() -> RootCertStore {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::debug!("skipping a system root certificate store: {e}");
    }
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    roots
}

/// Whom a client trusts.
pub enum Trust {
    /// The system's roots and these (a `ca_file` that adds to them).
    SystemAnd(RootCertStore),
    /// Only these (a `ca_file` that replaces the system roots).
    Only(RootCertStore),
    /// Nobody is checked: an explicit opt-out, logged as a warning (this text) when the client is set up.
    Unverified { warning: String },
}

/// The client side of mutual TLS: the certificate (with any intermediates after it) and its key.
pub struct ClientIdentity {
    pub certificates: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity").field("certificates", &self.certificates.len()).finish_non_exhaustive()
    }
}

/// Why a TLS client could not be set up; the caller names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("no trust anchors: the system has no root certificates and no CA bundle was given")]
    NoRoots,
    #[error("the client identity cannot be used for TLS ({0})")]
    Identity(rustls::Error),
}

/// The client configuration of `trust` and `identity`, on the ring provider (named here rather than taken from
/// the process default, so it works even when nobody called `init_tls`).
pub fn client_config(trust: Trust, identity: Option<ClientIdentity>) -> Result<ClientConfig, SetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3");
    let builder = match trust {
        Trust::Unverified { warning } => {
            tracing::warn!("{warning}");
            let verifier = NoVerification(provider.signature_verification_algorithms);
            builder.dangerous().with_custom_certificate_verifier(Arc::new(verifier))
        }
        Trust::SystemAnd(extra) => {
            let mut roots = system_roots();
            roots.roots.extend(extra.roots);
            if roots.is_empty() {
                return Err(SetupError::NoRoots);
            }
            builder.with_root_certificates(roots)
        }
        Trust::Only(roots) if roots.is_empty() => return Err(SetupError::NoRoots),
        Trust::Only(roots) => builder.with_root_certificates(roots),
    };
    match identity {
        Some(identity) => {
            builder.with_client_auth_cert(identity.certificates, identity.key).map_err(SetupError::Identity)
        }
        None => Ok(builder.with_no_client_auth()),
    }
}

/// Accepts any certificate but still checks handshake signatures, for an explicit "verify off".
#[derive(Debug)]
struct NoVerification(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for NoVerification {
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
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// The one PEM certificate reader: every certificate of a PEM text (a UI field, a CA file), each checked to be
/// X.509. The error says, for the user, what is wrong with the text; the caller names the field or file.
pub fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("is not valid PEM ({e})"))?;
    if certs.is_empty() {
        return Err(if pem.windows(10).any(|w| w == b"-----BEGIN") {
            "holds no certificate (a block starting -----BEGIN CERTIFICATE-----)"
        } else {
            "is not PEM text (no PEM certificate: a block starting -----BEGIN CERTIFICATE-----)"
        }
        .into());
    }
    for (i, cert) in certs.iter().enumerate() {
        X509Certificate::from_der(cert).map_err(|e| format!("certificate {} is not valid X.509 ({e})", i + 1))?;
    }
    Ok(certs)
}

/// Adds every certificate of a PEM bundle to `roots`; the error says, for the user, what is wrong with the text.
pub fn add_pem_roots(roots: &mut RootCertStore, pem: &[u8]) -> Result<(), String> {
    for cert in certificates(pem)? {
        roots.add(cert).map_err(|e| format!("a certificate cannot be used as a trust anchor ({e})"))?;
    }
    Ok(())
}

/// The rustls error under a reqwest error, if any. `io::Error::source` skips the error it wraps (and rustls
/// errors come wrapped in two), so each `io::Error` is opened by hand.
pub fn rustls_cause<'e>(error: &'e (dyn std::error::Error + 'static)) -> Option<&'e rustls::Error> {
    if let Some(tls) = error.downcast_ref::<rustls::Error>() {
        return Some(tls);
    }
    if let Some(inner) = error.downcast_ref::<std::io::Error>().and_then(std::io::Error::get_ref)
        && let Some(tls) = rustls_cause(inner)
    {
        return Some(tls);
    }
    error.source().and_then(rustls_cause)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::certs::TestCa;

    #[test]
    fn pem_bundles_add_every_certificate_and_say_what_is_wrong() {
        let (a, b) = (TestCa::new("A"), TestCa::new("B"));
        let mut roots = RootCertStore::empty();
        add_pem_roots(&mut roots, format!("{}{}", a.cert_pem(), b.cert_pem()).as_bytes()).unwrap();
        assert_eq!(roots.len(), 2);
        assert!(add_pem_roots(&mut roots, b"just text").unwrap_err().contains("no PEM certificate"));
        let broken = a.cert_pem().replace("MII", "M!I");
        assert!(add_pem_roots(&mut roots, broken.as_bytes()).is_err());
    }

    #[test]
    fn a_ca_file_that_replaces_the_system_roots_must_hold_one() {
        assert!(matches!(client_config(Trust::Only(RootCertStore::empty()), None), Err(SetupError::NoRoots)));
        let mut roots = RootCertStore::empty();
        add_pem_roots(&mut roots, TestCa::new("A").cert_pem().as_bytes()).unwrap();
        assert!(client_config(Trust::Only(roots), None).is_ok());
    }
}
