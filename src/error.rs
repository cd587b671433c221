//! The one error type the binary turns into an exit code and a message.

use crate::{connector::config::ConfigError, devo, export, threatq};

/// Every way a run can end other than success, with the documented exit code of each.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("invalid configuration: {0}")]
    LocalConfig(String),
    #[error(transparent)]
    ThreatQ(#[from] threatq::Error),
    #[error(transparent)]
    Devo(#[from] devo::Error),
    #[error("another run holds the lock (pid {pid}, running for {age_seconds} s); try again later")]
    Locked { pid: u32, age_seconds: u64 },
    #[error(transparent)]
    Refused(#[from] export::Refusal),
    #[error("the run lock {} is held by pid {pid}, which {reason}; stop that process, then run again", .path.display())]
    LockHeld { path: std::path::PathBuf, pid: u32, reason: String },
    #[error("stopped by {0} before the run finished; Devo and the state are as before")]
    Stopped(&'static str),
    #[error("{0}")]
    Other(String),
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
}

impl Error {
    /// The documented exit code (README, "Exit codes").
    pub fn code(&self) -> u8 {
        match self {
            Error::Usage(_) => 2,
            Error::Config(_) | Error::LocalConfig(_) | Error::Devo(devo::Error::Config(_)) => 3,
            Error::ThreatQ(_) => 4,
            Error::Devo(_) => 5,
            Error::Locked { .. } | Error::LockHeld { .. } => 6,
            Error::Refused(_) => 7,
            Error::Other(_) | Error::Io { .. } | Error::Stopped(_) => 1,
        }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { context: context.into(), source }
    }
}
