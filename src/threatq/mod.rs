//! Reading from ThreatQ: sign-in, the connector record, data collections and their indicators.

mod model;

pub use model::*;

/// Everything that can go wrong talking to ThreatQ. Messages name the host, path or setting to fix, never a
/// secret.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("ThreatQ at {host} refused the sign-in: {message} (check the Client ID, username and password)")]
    SignIn { host: String, message: String },
    #[error("ThreatQ {path}: HTTP {status}: {message}")]
    Http { path: String, status: u16, message: String },
    #[error("ThreatQ {path} answered something that is not the expected JSON: {detail}")]
    Garbage { path: String, detail: String },
    #[error("no ThreatQ data collection is named {name:?}{}", closest_hint(.closest))]
    CollectionNotFound { name: String, closest: Vec<String> },
    #[error("cannot reach ThreatQ at {host}: {detail}")]
    Transport { host: String, detail: String },
    #[error("ThreatQ TLS setting: {0}")]
    Tls(String),
}

fn closest_hint(closest: &[String]) -> String {
    if closest.is_empty() { String::new() } else { format!("; did you mean: {}?", closest.join(", ")) }
}
