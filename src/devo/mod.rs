//! Writing to Devo: one [`Uploader`] trait, two upload methods (the Lookups REST API and the legacy mTLS relay).

use std::io;
use std::time::Duration;

use async_trait::async_trait;

use crate::field::ConfigError;

pub use settings::{DevoSettings, Region, RegionHosts, UploadMethod, label};

/// A column's type as Devo's lookups know it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum ColumnType {
    Str,
    Int,
    Int4,
    Int8,
    Float,
    Bool,
    Ip4,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
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

/// Devo's rule for lookup and column names, `^[A-Za-z0-9_]+$`: they go unescaped into syslog tags, the headers
/// JSON and URLs.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Table {
    /// Lookup and column names go unescaped into syslog tags, the headers JSON and URLs: `^[A-Za-z0-9_]+$`,
    /// columns unique. Errors name "Lookup Table Name", the only name a user chooses.
    pub fn check(&self) -> Result<(), ConfigError> {
        let invalid = |problem: String| ConfigError::invalid(label::LOOKUP_TABLE_NAME, problem);
        if !is_valid_name(&self.name) {
            return Err(invalid(format!("{:?} may hold only letters A-Z a-z, digits and underscores", self.name)));
        }
        if self.columns.is_empty() {
            return Err(invalid("the lookup has no columns".into()));
        }
        for (i, column) in self.columns.iter().enumerate() {
            if !is_valid_name(&column.name) {
                return Err(invalid(format!(
                    "column {:?} may hold only letters A-Z a-z, digits and underscores",
                    column.name
                )));
            }
            if self.columns[..i].iter().any(|c| c.name == column.name) {
                return Err(invalid(format!("column {:?} appears twice", column.name)));
            }
        }
        Ok(())
    }
}

/// One lookup row: a value per column, in column order, key first.
pub type Row = Vec<String>;

/// Rows that can be read more than once, so a failed upload can be redone whole from the start.
pub trait RowSource: Send + Sync {
    /// The rows, in delivery order. Each call starts over.
    fn rows(&self) -> Box<dyn Iterator<Item = io::Result<Row>> + Send + '_>;
    /// The same rows one at a time in a record the cursor reuses: what the uploaders read, so that a large
    /// upload does not allocate a string per value. By default, [`RowSource::rows`] copied into the record.
    fn cursor(&self) -> Box<dyn RowCursor + '_> {
        Box::new(RowsCursor { rows: self.rows(), record: csv::StringRecord::new() })
    }
    /// How many rows `rows` yields.
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Reads rows into a record it reuses ([`RowSource::cursor`]).
pub trait RowCursor: Send {
    /// The next row, valid until the next call; `None` after the last.
    fn next_row(&mut self) -> Option<io::Result<&csv::StringRecord>>;
}

struct RowsCursor<'a> {
    rows: Box<dyn Iterator<Item = io::Result<Row>> + Send + 'a>,
    record: csv::StringRecord,
}

impl RowCursor for RowsCursor<'_> {
    fn next_row(&mut self) -> Option<io::Result<&csv::StringRecord>> {
        match self.rows.next()? {
            Ok(row) => {
                self.record.clear();
                for value in &row {
                    self.record.push_field(value);
                }
                Some(Ok(&self.record))
            }
            Err(e) => Some(Err(e)),
        }
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

/// Where an uploader's rows land. With the lookup's name and columns it is the identity of a delivered state
/// (`export::target_digest`): when any part changes, the state says nothing about what Devo holds.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Target {
    pub method: UploadMethod,
    /// The Lookups API root URL, or the relay's `host:port`.
    pub endpoint: String,
    /// The Devo domain that owns the lookup (the relay's: its certificate's subject).
    pub domain: String,
}

/// Delivers lookups to Devo. `deliver` returns only once Devo has accepted the whole upload; on error the lookup
/// is as it was before the call (never a truncated FULL).
#[async_trait]
pub trait Uploader: Send + Sync {
    async fn deliver(&self, table: &Table, delivery: Delivery<'_>) -> Result<Receipt, Error>;
    /// What Devo says of the lookup, as far as the upload method can ask. Reads only.
    async fn inspect(&self, table: &Table) -> Result<Inspection, Error>;
    /// Where the uploads go, for logs (no secrets).
    fn describe(&self) -> String;
    /// Where the uploads go, as data (what the state's identity is made of; log wording stays free to change).
    fn target(&self) -> Target;
}

/// What Devo says of a lookup before an upload; the default is "cannot tell" (the relay).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inspection {
    /// How many rows it holds (0 when it does not exist).
    pub rows: Option<u64>,
    /// How its columns or key differ from the table's, when they do.
    pub differs: Option<String>,
}

/// One read-only check of the Devo side, for `doctor`: what was found, or why it failed and what to do.
#[derive(Debug)]
pub struct Probe {
    pub check: &'static str,
    pub outcome: Result<String, Error>,
}

impl Probe {
    fn new(check: &'static str, outcome: Result<String, Error>) -> Self {
        Self { check, outcome }
    }
}

/// Everything that can go wrong on the Devo side. Messages name the UI field or host to fix, never a secret.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A UI value (PEM, endpoint, lookup or column name) that cannot be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("Devo at {endpoint}: {message}")]
    Remote { endpoint: String, message: String },
    #[error("Devo at {endpoint}: {source}")]
    Io { endpoint: String, source: io::Error },
    #[error("reading the rows to upload: {0}")]
    Rows(io::Error),
    /// Changes cannot be applied to a lookup that is gone: the caller answers with a full upload.
    #[error(
        "Devo at {endpoint}: lookup {lookup:?} does not exist in domain {domain:?}, so changes cannot be applied; \
         a full upload creates it"
    )]
    LookupMissing { endpoint: String, domain: String, lookup: String },
    /// The lookup in Devo has other columns than the exporter's: changes would not fit it, so the caller answers
    /// with a full upload, which redefines it.
    #[error("Devo at {endpoint}: lookup {lookup:?} {differs}")]
    LookupRedefined { endpoint: String, lookup: String, differs: String },
    /// The trust settings for Devo's HTTPS endpoint (`DEVO_CA_FILE`, an untrusted certificate).
    #[error("Devo TLS: {0}")]
    Tls(String),
    /// A `DEVO_*` environment variable that cannot be used; the message names it.
    #[error("invalid configuration: {0}")]
    Environment(String),
}

pub mod api;
pub mod pem;
pub mod relay;
pub mod settings;

/// Settings of the upload methods that come from the host rather than the UI.
#[derive(Clone, Debug)]
pub struct DevoOptions {
    /// Extra trust anchors for the Lookups API (PEM), from `DEVO_CA_FILE`.
    pub extra_ca_pem: Option<String>,
    /// The relay's pause after START and before END, from `DEVO_RELAY_DELAY_SECONDS` (devo-sdk's 5 s by default).
    pub relay_delay: Duration,
    /// The longest pause between two questions of the Lookups API uploader whether its job finished, from
    /// `DEVO_JOB_POLL_SECONDS` (5 s by default; polls start at 0.01 s and double up to it).
    pub job_poll_interval: Duration,
}

impl Default for DevoOptions {
    fn default() -> Self {
        Self { extra_ca_pem: None, relay_delay: Duration::from_secs(5), job_poll_interval: Duration::from_secs(5) }
    }
}

/// Reads a duration in seconds from `var`; a bad value names the variable and the accepted range.
fn seconds_from_env(
    env: &dyn Fn(&str) -> Option<String>,
    var: &str,
    range: std::ops::RangeInclusive<f64>,
    default: Duration,
) -> Result<Duration, Error> {
    let Some(v) = env(var) else { return Ok(default) };
    let seconds = v.trim().parse::<f64>().ok().filter(|s| range.contains(s)).ok_or_else(|| {
        Error::Environment(format!("{var}={v:?}: give seconds from {} to {}", range.start(), range.end()))
    })?;
    Ok(Duration::from_secs_f64(seconds))
}

impl DevoOptions {
    /// Reads `DEVO_CA_FILE`, `DEVO_RELAY_DELAY_SECONDS` and `DEVO_JOB_POLL_SECONDS`; a bad value names the
    /// variable.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let extra_ca_pem = match env("DEVO_CA_FILE") {
            Some(path) => Some(
                std::fs::read_to_string(&path)
                    .map_err(|e| Error::Environment(format!("DEVO_CA_FILE={path}: cannot read the CA file ({e})")))?,
            ),
            None => None,
        };
        let defaults = Self::default();
        let relay_delay = seconds_from_env(env, "DEVO_RELAY_DELAY_SECONDS", 0.0..=600.0, defaults.relay_delay)?;
        // Not 0: a real Devo would be asked in a busy loop.
        let job_poll_interval =
            seconds_from_env(env, "DEVO_JOB_POLL_SECONDS", 0.05..=60.0, defaults.job_poll_interval)?;
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
        UploadMethod::LookupsApi => Ok(Box::new(api_uploader(settings, options)?)),
    }
}

fn api_uploader(settings: &DevoSettings, options: &DevoOptions) -> Result<api::LookupsApiUploader, Error> {
    let domain = match (&settings.domain, &settings.certificate) {
        (Some(domain), _) => domain.clone(),
        (None, Some(cert)) => pem::domain_from_certificate(cert).ok_or_else(|| {
            ConfigError::invalid(label::DOMAIN, "is empty and the certificate's subject names no domain")
        })?,
        (None, None) => return Err(ConfigError::missing(label::DOMAIN).into()),
    };
    let mut config = api::ApiConfig::from_settings(settings, domain)?;
    config.extra_ca_pem = options.extra_ca_pem.clone();
    config.poll_interval = options.job_poll_interval;
    api::LookupsApiUploader::new(config)
}

/// `doctor`'s checks of the upload method the UI chose, in order; a check whose premise failed is left out.
/// Nothing is uploaded: the Lookups API is only read, and the relay gets a TLS handshake and no line.
pub async fn preflight(settings: &DevoSettings, options: &DevoOptions, table: &Table) -> Vec<Probe> {
    match settings.method {
        UploadMethod::Relay => relay::preflight(settings).await,
        UploadMethod::LookupsApi => match api_uploader(settings, options) {
            Ok(uploader) => uploader.preflight(table).await,
            Err(e) => vec![Probe::new("Devo settings", Err(e))],
        },
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_must_fit_syslog_tags_json_and_urls() {
        let table = |name: &str, cols: &[&str]| Table {
            name: name.into(),
            columns: cols.iter().map(|c| Column { name: (*c).into(), ty: ColumnType::Str }).collect(),
        };
        assert!(table("iocs_1", &["ioc", "type"]).check().is_ok());
        for bad in [table("io cs", &["ioc"]), table("iocs", &["i\"oc"]), table("iocs", &[]), table("iocs", &["a", "a"])]
        {
            let err = bad.check().unwrap_err().to_string();
            assert!(err.contains("Lookup Table Name"), "{err}");
        }
    }

    use super::*;

    fn options(vars: &[(&str, &str)]) -> Result<DevoOptions, Error> {
        DevoOptions::from_env(&|name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned()))
    }

    #[test]
    fn timings_come_from_the_environment_or_default() {
        let defaults = options(&[]).unwrap();
        assert_eq!(
            (defaults.relay_delay, defaults.job_poll_interval),
            (Duration::from_secs(5), Duration::from_secs(5))
        );
        let set = options(&[("DEVO_RELAY_DELAY_SECONDS", "0"), ("DEVO_JOB_POLL_SECONDS", "0.1")]).unwrap();
        assert_eq!((set.relay_delay, set.job_poll_interval), (Duration::ZERO, Duration::from_millis(100)));
    }

    #[test]
    fn a_bad_timing_names_its_variable() {
        for (var, value) in
            [("DEVO_JOB_POLL_SECONDS", "0"), ("DEVO_JOB_POLL_SECONDS", "soon"), ("DEVO_RELAY_DELAY_SECONDS", "-1")]
        {
            let message = options(&[(var, value)]).unwrap_err().to_string();
            assert!(message.contains(var) && message.contains("give seconds"), "{message}");
        }
    }
}
