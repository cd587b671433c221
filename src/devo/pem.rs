//! The PEM fields of the UI (certificate, private key, chain CA), checked before any connection so that every
//! mistake names the field to fix. Key material never reaches an error or a log.

use rustls::RootCertStore;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::x509::AttributeTypeAndValue;

use crate::devo::settings::label;
use crate::field::{ConfigError, SecretText};
use crate::tls::ClientIdentity;

/// A certificate closer than this to its end is reported as a warning.
pub const EXPIRY_WARNING_DAYS: i64 = 30;

/// Every certificate in a PEM field, each checked to be X.509 ([`crate::tls::certificates`]).
pub fn certificates(field: &str, pem: &str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    crate::tls::certificates(pem.as_bytes()).map_err(|problem| ConfigError::invalid(field, problem))
}

/// The certificate, its key and their agreement; an expired certificate is an error, one that expires within 30 days
/// a warning.
pub fn client_identity(certificate_pem: &str, key_pem: &SecretText) -> Result<ClientIdentity, ConfigError> {
    let certificates = certificates(label::CERTIFICATE, certificate_pem)?;
    let (day, left_days) = expiry(&certificates[0])?;
    if left_days < EXPIRY_WARNING_DAYS {
        tracing::warn!("\"Devo X.509 Certificate\" expires on {day}, in {left_days} days: renew it in Devo");
    }
    identity(certificates, key_pem)
}

/// The certificate paired with its key, checked to match; the certificate's dates are not looked at.
pub fn identity(
    certificates: Vec<CertificateDer<'static>>,
    key_pem: &SecretText,
) -> Result<ClientIdentity, ConfigError> {
    // The pki-types error could quote the text around a fault: say only what kind of block is expected.
    let key = PrivateKeyDer::from_pem_slice(key_pem.expose().as_bytes()).map_err(|_| {
        ConfigError::invalid(
            label::PRIVATE_KEY,
            "holds no readable PEM private key (a block starting -----BEGIN PRIVATE KEY-----, -----BEGIN RSA \
             PRIVATE KEY----- or -----BEGIN EC PRIVATE KEY-----)",
        )
    })?;
    let provider = rustls::crypto::ring::default_provider();
    match CertifiedKey::from_der(certificates.clone(), key.clone_key(), &provider) {
        Ok(_) => Ok(ClientIdentity { certificates, key }),
        Err(rustls::Error::InconsistentKeys(_)) => Err(ConfigError::invalid(
            label::PRIVATE_KEY,
            "does not match \"Devo X.509 Certificate\" (paste the key that was downloaded with that certificate)",
        )),
        Err(_) => Err(ConfigError::invalid(
            label::PRIVATE_KEY,
            "is not a usable key (RSA, ECDSA P-256/P-384 or Ed25519 expected)",
        )),
    }
}

/// The day a certificate (one from [`certificates`]) expires and the whole days left until then; an expired
/// certificate is an error naming the field.
pub fn expiry(cert: &CertificateDer<'_>) -> Result<(time::Date, i64), ConfigError> {
    let (_, parsed) = X509Certificate::from_der(cert).expect("checked by `certificates`");
    let not_after = parsed.validity().not_after;
    let day = not_after.to_datetime().date();
    let left_days = (not_after.timestamp() - time::OffsetDateTime::now_utc().unix_timestamp()).div_euclid(86_400);
    if left_days < 0 {
        return Err(ConfigError::invalid(
            label::CERTIFICATE,
            format!("expired on {day}: download a new one from Devo (Administration → Credentials → X.509)"),
        ));
    }
    Ok((day, left_days))
}

/// The chain CA as the only trust store for the relay's certificate.
pub fn trust_roots(chain_pem: &str) -> Result<RootCertStore, ConfigError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(label::CHAIN_CA, chain_pem)? {
        roots.add(cert).map_err(|e| {
            ConfigError::invalid(label::CHAIN_CA, format!("holds a certificate that cannot be a CA ({e})"))
        })?;
    }
    Ok(roots)
}

/// The Devo domain a certificate was issued for: its subject O, else its CN.
pub fn domain_from_certificate(pem: &str) -> Option<String> {
    let der = crate::tls::certificates(pem.as_bytes()).ok()?.into_iter().next()?;
    let (_, cert) = X509Certificate::from_der(&der).ok()?;
    let subject = cert.subject();
    first_text(subject.iter_organization()).or_else(|| first_text(subject.iter_common_name()))
}

fn first_text<'a, 'b: 'a>(mut attributes: impl Iterator<Item = &'a AttributeTypeAndValue<'b>>) -> Option<String> {
    attributes.find_map(|a| a.as_str().ok().map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::certs::TestCa;

    #[test]
    fn domain_is_the_subject_organization() {
        let ca = TestCa::new("Devo Test CA");
        assert_eq!(domain_from_certificate(&ca.client("user", "acme_corp").cert_pem).as_deref(), Some("acme_corp"));
        // The CA has no O: its CN stands in.
        assert_eq!(domain_from_certificate(&ca.cert_pem()).as_deref(), Some("Devo Test CA"));
        assert_eq!(domain_from_certificate("not pem"), None);
    }
}
