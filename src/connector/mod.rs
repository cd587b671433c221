//! The life of a run: command line, first-run setup, configuration from ThreatQ, secrets, lock, cron, report.

pub mod config;
pub mod sync;
