//! The life of a run: command line, first-run setup, configuration from ThreatQ, secrets, lock, cron, report.

pub mod cli;
pub mod config;
pub mod cron;
pub mod docs;
pub mod doctor;
pub mod local;
pub mod lock;
pub mod logging;
pub mod progress;
pub mod run;
pub mod secrets;
pub mod setup;
pub mod sync;
