//! Whom the ThreatQ client trusts: the system roots, or only the PEM bundle of `THREATQ_CA_FILE`, or (explicit,
//! logged opt-out) nobody checked at all. The setup itself is the crate's one ([`crate::tls::client_config`]).

use std::path::Path;

use rustls::{ClientConfig, RootCertStore};

use super::Error;
use crate::tls::{SetupError, Trust};

pub(super) fn client_config(host: &str, ca_file: Option<&Path>, verify: bool) -> Result<ClientConfig, Error> {
    let trust = match ca_file {
        _ if !verify => Trust::Unverified {
            warning: format!(
                "THREATQ_TLS_VERIFY=false: the certificate of ThreatQ at {host} is NOT verified; anyone on the path \
                 can read the password and the IOCs"
            ),
        },
        Some(path) => Trust::Only(roots_from_file(path)?),
        None => Trust::SystemAnd(RootCertStore::empty()),
    };
    crate::tls::client_config(trust, None).map_err(|e| match e {
        SetupError::NoRoots => Error::Tls(
            "no system root certificates found; set THREATQ_CA_FILE to the PEM bundle that signs ThreatQ's \
             certificate"
                .into(),
        ),
        other => Error::Tls(other.to_string()),
    })
}

fn roots_from_file(path: &Path) -> Result<RootCertStore, Error> {
    let problem = |detail: String| Error::Tls(format!("THREATQ_CA_FILE {}: {detail}", path.display()));
    let pem = std::fs::read(path).map_err(|e| problem(e.to_string()))?;
    let mut roots = RootCertStore::empty();
    crate::tls::add_pem_roots(&mut roots, &pem).map_err(problem)?;
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use crate::test_log::Captured;

    /// The opt-out is said once, naming the host, at the one place that builds the client's TLS.
    #[test]
    fn verify_off_is_logged_once_naming_the_host() {
        crate::init_tls();
        let logs = Captured::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_max_level(tracing::Level::TRACE)
            .finish();
        tracing::subscriber::with_default(subscriber, || super::client_config("tq.example.com", None, false)).unwrap();
        let logged = logs.text();
        assert_eq!(logged.matches("NOT verified").count(), 1, "{logged}");
        assert!(logged.contains("THREATQ_TLS_VERIFY=false") && logged.contains("tq.example.com"), "{logged}");
    }
}
