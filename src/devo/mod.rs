//! Writing to Devo: one [`Uploader`] trait, two upload methods (the Lookups REST API and the legacy mTLS relay).

use std::io;

use async_trait::async_trait;

pub mod api;

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
        "Devo at {endpoint}: lookup {lookup:?} does not exist in domain {domain:?}, so changes cannot be applied; \
         a full upload creates it"
    )]
    LookupMissing { endpoint: String, domain: String, lookup: String },
    /// The trust settings for Devo's HTTPS endpoint (`DEVO_CA_FILE`, an untrusted certificate).
    #[error("Devo TLS: {0}")]
    Tls(String),
}
