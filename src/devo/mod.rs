//! Writing to Devo: one [`Uploader`] trait, two upload methods (the Lookups REST API and the legacy mTLS relay).

use std::io;
use std::time::Duration;

use async_trait::async_trait;

use crate::connector::config::{ConfigError, DevoSettings, UploadMethod};

/// A column's type as Devo's lookups know it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ColumnType {
    Str,
    Int,
    Int4,
    Int8,
    Float,
    Bool,
    Ip4,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Column {
    pub name: String,
    pub ty: ColumnType,
}

/// A lookup's name and columns; the first column is the key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Table {
    pub name: String,
    pub columns: Vec<Column>,
}

/// One lookup row: a value per column, in column order, key first.
pub type Row = Vec<String>;

/// Rows that can be read more than once, so a failed upload can be redone whole from the start.
pub trait RowSource: Send + Sync {
    /// The rows, in delivery order. Each call starts over.
    fn rows(&self) -> Box<dyn Iterator<Item = io::Result<Row>> + Send + '_>;
    /// How many rows `rows` yields.
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl RowSource for Vec<Row> {
    fn rows(&self) -> Box<dyn Iterator<Item = io::Result<Row>> + Send + '_> {
        Box::new(self.iter().cloned().map(Ok))
    }
    fn len(&self) -> u64 {
        self.len() as u64
    }
}

/// What one upload does to the lookup.
#[derive(Clone, Copy)]
pub enum Delivery<'a> {
    /// Replace the whole lookup with these rows.
    Full(&'a dyn RowSource),
    /// Upsert `upserts` by key and delete the rows whose keys are in `deletes` (only the key column counts).
    Changes { upserts: &'a dyn RowSource, deletes: &'a dyn RowSource },
}

/// What Devo acknowledged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// Rows sent (upserts plus deletes, or the full table).
    pub rows_sent: u64,
    /// How many attempts the upload took (1 when nothing failed).
    pub attempts: u32,
    /// The Lookups API job id, or the relay run id.
    pub reference: String,
}

/// Delivers lookups to Devo. `deliver` returns only once Devo has accepted the whole upload; on error the lookup
/// is as it was before the call (never a truncated FULL).
#[async_trait]
pub trait Uploader: Send + Sync {
    async fn deliver(&self, table: &Table, delivery: Delivery<'_>) -> Result<Receipt, Error>;
    /// Where the uploads go, for logs (no secrets).
    fn describe(&self) -> String;
}

/// Everything that can go wrong on the Devo side. Messages name the UI field or host to fix, never a secret.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A UI value (PEM, endpoint, lookup or column name) that cannot be used.
    #[error(transparent)]
    Config(#[from] crate::connector::config::ConfigError),
    #[error("Devo at {endpoint}: {message}")]
    Remote { endpoint: String, message: String },
    #[error("Devo at {endpoint}: {source}")]
    Io { endpoint: String, source: io::Error },
    #[error("reading the rows to upload: {0}")]
    Rows(io::Error),
    /// Changes cannot be applied to a lookup that is gone: the caller answers with a full upload.
    #[error(
        "Devo at {endpoint}: lookup {lookup:?} does not exist in domain {domain:?}, so changes cannot be applied; a full upload creates it"
    )]
    LookupMissing { endpoint: String, domain: String, lookup: String },
    /// The trust settings for Devo's HTTPS endpoint (`DEVO_CA_FILE`, an untrusted certificate).
    #[error("Devo TLS: {0}")]
    Tls(String),
}

pub mod api;
pub mod pem;
pub mod relay;

/// Settings of the upload methods that come from the host rather than the UI.
#[derive(Clone, Debug)]
pub struct DevoOptions {
    /// Extra trust anchors for the Lookups API (PEM), from `DEVO_CA_FILE`.
    pub extra_ca_pem: Option<String>,
    /// The relay's pause after START and before END, from `DEVO_RELAY_DELAY_SECONDS` (devo-sdk's 5 s by default).
    pub relay_delay: Duration,
    /// How often the Lookups API uploader polls a job, from `DEVO_JOB_POLL_SECONDS` (the uploader's 2 s when unset).
    pub job_poll_interval: Option<Duration>,
}

impl Default for DevoOptions {
    fn default() -> Self {
        Self { extra_ca_pem: None, relay_delay: Duration::from_secs(5), job_poll_interval: None }
    }
}

/// A number of seconds from an environment variable, within `0..=max`; a bad value names the variable.
fn seconds_from_env(
    env: &dyn Fn(&str) -> Option<String>,
    name: &str,
    max: f64,
) -> Result<Option<Duration>, crate::Error> {
    let Some(v) = env(name) else { return Ok(None) };
    let seconds = v.trim().parse::<f64>().ok().filter(|s| (0.0..=max).contains(s));
    seconds
        .map(|s| Some(Duration::from_secs_f64(s)))
        .ok_or_else(|| crate::Error::LocalConfig(format!("{name}={v:?}: give seconds from 0 to {max}")))
}

impl DevoOptions {
    /// Reads `DEVO_CA_FILE`, `DEVO_RELAY_DELAY_SECONDS` and `DEVO_JOB_POLL_SECONDS`; a bad value names the
    /// variable.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Self, crate::Error> {
        let extra_ca_pem = match env("DEVO_CA_FILE") {
            Some(path) => Some(std::fs::read_to_string(&path).map_err(|e| {
                crate::Error::LocalConfig(format!("DEVO_CA_FILE={path}: cannot read the CA file ({e})"))
            })?),
            None => None,
        };
        let relay_delay =
            seconds_from_env(env, "DEVO_RELAY_DELAY_SECONDS", 600.0)?.unwrap_or(Self::default().relay_delay);
        let job_poll_interval = seconds_from_env(env, "DEVO_JOB_POLL_SECONDS", 60.0)?;
        Ok(Self { extra_ca_pem, relay_delay, job_poll_interval })
    }
}

/// The uploader the UI chose, with every PEM, endpoint and name checked before anything connects.
pub fn uploader(settings: &DevoSettings, options: &DevoOptions) -> Result<Box<dyn Uploader>, Error> {
    match settings.method {
        UploadMethod::Relay => {
            let config = relay::RelayConfig::from_settings(settings)?.start_end_delay(options.relay_delay);
            Ok(Box::new(relay::RelayUploader::new(config)))
        }
        UploadMethod::LookupsApi => {
            let domain = match (&settings.domain, &settings.certificate) {
                (Some(domain), _) => domain.clone(),
                (None, Some(cert)) => pem::domain_from_certificate(cert).ok_or_else(|| {
                    ConfigError::invalid("devo_domain", "is empty and the certificate's subject names no domain")
                })?,
                (None, None) => return Err(ConfigError::missing("devo_domain").into()),
            };
            let mut config = api::ApiConfig::from_settings(settings, domain)?;
            config.extra_ca_pem = options.extra_ca_pem.clone();
            if let Some(every) = options.job_poll_interval {
                config.poll_interval = every;
            }
            Ok(Box::new(api::LookupsApiUploader::new(config)?))
        }
    }
}
