//! The one error type the binary turns into an exit code and a message, and the one definition of the exit codes.

use crate::{devo, export, field::ConfigError, threatq};

/// The documented exit codes. `Error::code`, the `--help` text and the README table come from (or are tested
/// against) this list, so they cannot drift apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    Done = 0,
    Other = 1,
    Usage = 2,
    Config = 3,
    ThreatQ = 4,
    Devo = 5,
    Locked = 6,
    MassDelete = 7,
}

impl Exit {
    pub const ALL: [Exit; 8] =
        [Exit::Done, Exit::Other, Exit::Usage, Exit::Config, Exit::ThreatQ, Exit::Devo, Exit::Locked, Exit::MassDelete];

    pub fn code(self) -> u8 {
        self as u8
    }

    /// What the code means, as `--help` and the README's table say it.
    pub fn meaning(self) -> &'static str {
        match self {
            Exit::Done => "done, or the connector is switched off in ThreatQ",
            Exit::Other => "anything else (a file that cannot be written, a stopped run, ...)",
            Exit::Usage => "usage: a flag or value on the command line is wrong",
            Exit::Config => {
                "invalid configuration: a UI field (a Devo token Devo refuses too), a local file or an environment \
                 variable, CA bundles, certificates, keys and endpoints included; the message names it"
            }
            Exit::ThreatQ => "ThreatQ failed (unreachable, API error, unusable answer)",
            Exit::Devo => "Devo failed (unreachable, upload refused)",
            Exit::Locked => "another run holds the run lock",
            Exit::MassDelete => "the mass-delete guard stopped the run (see --allow-mass-delete)",
        }
    }

    /// The `Exit codes:` block of `--help`, one `  <code>  <meaning>` line each, in code order.
    pub fn help() -> String {
        let mut codes = Exit::ALL;
        codes.sort_by_key(|e| e.code());
        codes.iter().map(|e| format!("  {}  {}\n", e.code(), e.meaning())).collect()
    }
}

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
    /// Another run holds the run lock and is younger than "Kill Previous Runs After X Seconds": wait for it.
    #[error("another run holds the lock (pid {pid}, running for {age_seconds} s); try again later")]
    RunInProgress { pid: u32, age_seconds: u64 },
    /// The mass-delete guard (or the empty-collection check) refused the plan; nothing was sent.
    #[error(transparent)]
    DeleteGuard(#[from] export::Refusal),
    /// The lock's holder is past the time limit but cannot be stopped (another program, a failed signal, a
    /// process that outlives SIGKILL): a person must stop it.
    #[error("the run lock {} is held by pid {pid}, which {reason}; stop that process, then run again", .path.display())]
    LockHolderUnstoppable { path: std::path::PathBuf, pid: u32, reason: String },
    #[error("stopped by {0} before the run finished; Devo and the state are as before")]
    Stopped(&'static str),
    #[error("{0}")]
    Other(String),
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
}

impl Error {
    /// Which documented exit code this error ends the run with. A value the user fixes (UI field, file,
    /// variable: CA bundles, certificates, keys, endpoints) is [`Exit::Config`] whichever side found it.
    pub fn exit(&self) -> Exit {
        match self {
            Error::Usage(_) => Exit::Usage,
            Error::Config(_)
            | Error::LocalConfig(_)
            | Error::Devo(devo::Error::Config(_) | devo::Error::Tls(_) | devo::Error::Environment(_))
            | Error::ThreatQ(threatq::Error::Tls(_) | threatq::Error::Host { .. }) => Exit::Config,
            Error::ThreatQ(_) => Exit::ThreatQ,
            Error::Devo(_) => Exit::Devo,
            Error::RunInProgress { .. } | Error::LockHolderUnstoppable { .. } => Exit::Locked,
            Error::DeleteGuard(_) => Exit::MassDelete,
            Error::Other(_) | Error::Io { .. } | Error::Stopped(_) => Exit::Other,
        }
    }

    /// The documented exit code (README, "Exit codes").
    pub fn code(&self) -> u8 {
        self.exit().code()
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { context: context.into(), source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_codes_are_distinct_and_cover_0_to_7() {
        let mut codes: Vec<u8> = Exit::ALL.iter().map(|e| e.code()).collect();
        codes.sort_unstable();
        assert_eq!(codes, (0..=7).collect::<Vec<_>>());
    }

    #[test]
    fn trust_and_endpoint_mistakes_are_configuration_on_both_sides() {
        let errors = [
            Error::ThreatQ(threatq::Error::Tls("THREATQ_CA_FILE /x: no certificates".into())),
            Error::ThreatQ(threatq::Error::Host { host: "[::1]8443".into(), problem: "bad".into() }),
            Error::Devo(devo::Error::Tls("DEVO_CA_FILE: no certificates".into())),
            Error::Devo(devo::Error::Config(ConfigError::invalid(devo::label::CUSTOM_ENDPOINT, "bad"))),
            Error::Devo(devo::Error::Environment("DEVO_CA_FILE=/x: cannot read the CA file".into())),
            Error::LocalConfig("THREATQ_CA_FILE names /x, which is not a file".into()),
        ];
        for error in errors {
            assert_eq!(error.code(), 3, "{error}");
        }
    }
}
