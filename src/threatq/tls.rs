//! The TLS configuration for ThreatQ: system roots, or the PEM bundle of `THREATQ_CA_FILE`, or (explicit, logged
//! opt-out) no verification at all.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::Error;

pub(super) fn client_config(ca_file: Option<&Path>, verify: bool) -> Result<ClientConfig, Error> {
    // The provider is named here rather than taken from the process default, so the client works even when
    // nobody called `init_tls`.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?;
    if !verify {
        tracing::warn!(
            "THREATQ_TLS_VERIFY=false: the ThreatQ certificate is NOT verified; anyone on the path can read the \
             password and the IOCs"
        );
        let verifier = NoVerification(provider.signature_verification_algorithms);
        return Ok(builder.dangerous().with_custom_certificate_verifier(Arc::new(verifier)).with_no_client_auth());
    }
    let roots = match ca_file {
        Some(path) => roots_from_file(path)?,
        None => system_roots()?,
    };
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

fn roots_from_file(path: &Path) -> Result<RootCertStore, Error> {
    let problem = |detail: String| Error::Tls(format!("THREATQ_CA_FILE {}: {detail}", path.display()));
    let pem = std::fs::read(path).map_err(|e| problem(e.to_string()))?;
    let mut roots = RootCertStore::empty();
    crate::tls::add_pem_roots(&mut roots, &pem).map_err(problem)?;
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, Error> {
    let roots = crate::tls::system_roots();
    if roots.is_empty() {
        return Err(Error::Tls(
            "no system root certificates found; set THREATQ_CA_FILE to the PEM bundle that signs ThreatQ's \
             certificate"
                .into(),
        ));
    }
    Ok(roots)
}

/// Accepts any certificate but still checks handshake signatures, for `THREATQ_TLS_VERIFY=false`.
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
