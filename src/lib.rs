//! tq-conn-devo-ioc-exporter: keeps a Devo Lookup List equal to the IOCs of a ThreatQ Data Collection.
//!
//! The data flows `threatq` (read) → `export` (map, dedup, plan, state) → `devo` (write), orchestrated by
//! `connector`; `sandbox` holds the loopback stand-ins for both APIs.

pub mod connector;
pub mod devo;
mod error;
pub mod export;
pub mod field;
pub mod file;
pub mod retry;
pub mod sandbox;
pub mod threatq;
mod tls;

pub use error::{Error, Exit};

/// Installs the process-wide TLS crypto provider (ring); every TLS user calls this first.
pub fn init_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
