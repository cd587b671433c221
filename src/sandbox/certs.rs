//! Throwaway certificates for the loopback stand-ins: one CA, a server certificate for `localhost` and
//! `127.0.0.1`, and client certificates for mutual TLS.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// A PEM certificate with its PEM private key.
#[derive(Clone)]
pub struct CertPair {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CertPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertPair").field("cert_pem", &self.cert_pem).finish_non_exhaustive()
    }
}

/// A certificate authority that signs server and client certificates.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new(common_name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("empty SAN list is valid");
        params.distinguished_name = dn(common_name, None);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().expect("key generation");
        Self { issuer: CertifiedIssuer::self_signed(params, key).expect("self-signed CA") }
    }

    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for `localhost` and `127.0.0.1` (plus `extra_names`).
    pub fn server(&self, extra_names: &[&str]) -> CertPair {
        let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        names.extend(extra_names.iter().map(|n| (*n).to_owned()));
        let mut params = CertificateParams::new(names).expect("valid SANs");
        params.distinguished_name = dn("localhost", None);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A client certificate like Devo's X.509 credentials: CN = `common_name`, O = the Devo domain.
    pub fn client(&self, common_name: &str, domain: &str) -> CertPair {
        self.client_valid_for(common_name, domain, time::Duration::days(365))
    }

    /// A client certificate that expires `valid_for` from now (negative: already expired).
    pub fn client_valid_for(&self, common_name: &str, domain: &str, valid_for: time::Duration) -> CertPair {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("empty SAN list is valid");
        params.distinguished_name = dn(common_name, Some(domain));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now.min(now + valid_for) - time::Duration::days(1);
        params.not_after = now + valid_for;
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> CertPair {
        let key = KeyPair::generate().expect("key generation");
        let cert = params.signed_by(&key, &self.issuer).expect("signing");
        CertPair { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }
}

fn dn(common_name: &str, organization: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    if let Some(o) = organization {
        dn.push(DnType::OrganizationName, o);
    }
    dn
}
