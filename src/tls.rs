//! Trust anchors shared by the ThreatQ client and the Lookups API uploader: the system's roots and PEM bundles.
//! Each caller names its own source (`THREATQ_CA_FILE`, `DEVO_CA_FILE`) in its errors.

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
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
}
