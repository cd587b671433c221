//! Reading from ThreatQ: sign-in, the connector record, data collections and their indicators.

mod client;
mod model;
mod pages;
mod parse;
mod registry;
mod tls;

pub use client::{Client, Policy};
pub use model::*;
pub use pages::{Batch, Window};
pub use parse::{indicator_from_json, parse_is_active};

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
    #[error("ThreatQ Host {host:?}: {problem}")]
    Host { host: String, problem: String },
    #[error("ThreatQ {path} answered with an error: {message}")]
    Refused { path: String, message: String },
    #[error(
        "ThreatQ data collection {name:?} changed while it was read ({detail}); nothing was sent, the next run reads it again"
    )]
    Changed { name: String, detail: String },
    #[error(
        "ThreatQ indicator {id} has a value of {bytes} bytes, more than the {limit} a lookup row carries; nothing was \
         sent: correct or remove that indicator in ThreatQ"
    )]
    Oversized { id: u64, bytes: usize, limit: usize },
    #[error("ThreatQ has no connector category named {category:?} (it has: {})", .available.join(", "))]
    CategoryNotFound { category: String, available: Vec<String> },
    #[error(
        "ThreatQ at {host} has no connector named {name:?}: run once without a subcommand, which registers it, \
         then fill its Configuration tab"
    )]
    NotRegistered { host: String, name: String },
    #[error(
        "this host's clock is {seconds} s off ThreatQ's at {host}; sign-in tokens and certificate dates depend on \
         it: set the clock right (NTP)"
    )]
    ClockSkew { host: String, seconds: i64 },
}

fn closest_hint(closest: &[String]) -> String {
    if closest.is_empty() { String::new() } else { format!("; did you mean: {}?", closest.join(", ")) }
}

/// How to reach and sign in to ThreatQ.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// `host`, `host:port` or `https://host[:port]`.
    pub host: String,
    /// The per-user API credentials id from the user's ThreatQ profile.
    pub client_id: String,
    pub username: String,
    pub password: secrecy::SecretString,
    /// Extra trust anchors (PEM), from `THREATQ_CA_FILE`; system roots otherwise.
    pub ca_file: Option<std::path::PathBuf>,
    /// `false` only through the explicit, logged `THREATQ_TLS_VERIFY=false` opt-out.
    pub tls_verify: bool,
}

/// The connector-record calls, most of them this project's own contract ([OURS] in `docs/threatq.md`),
/// behind one trait so they can be swapped when a real instance shows otherwise.
#[async_trait::async_trait]
pub trait ConnectorRegistry: Send + Sync {
    /// The record with exactly this name, if any.
    async fn find_connector(&self, name: &str) -> Result<Option<ConnectorRecord>, Error>;
    /// Finds the record, registering it (category resolved by name, inactive) when absent, and updating its
    /// `user_fields` and `version` when this binary's differ; the user's `custom_fields` are kept.
    async fn ensure_registered(&self, definition: &ConnectorDefinition) -> Result<ConnectorRecord, Error>;
    /// Reports a finished run: `last_import_at` (UTC) and `last_import_count`.
    async fn report_run(&self, id: u64, at: chrono::DateTime<chrono::Utc>, count: u64) -> Result<(), Error>;
}
