//! Log lines to `-ll DIR` (one daily-rotated file per instance) or to stdout, at the `-v` verbosity.

use std::path::PathBuf;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_appender::rolling::{Builder, Rotation};
use tracing_subscriber::EnvFilter;

use crate::Error;

/// The target of the line that records how a run ended (its summary, or its error and exit code): logged at every
/// verbosity, so the log file always says how each run ended.
pub const RECORD: &str = "tqdevo::record";

/// Where log lines go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogTarget {
    Stdout,
    Dir(PathBuf),
}

impl LogTarget {
    /// `-ll stdout` (any case) or a directory.
    pub fn parse(value: &str) -> Self {
        if value.eq_ignore_ascii_case("stdout") { LogTarget::Stdout } else { LogTarget::Dir(value.into()) }
    }
}

/// `-v`: 1 warnings and errors, 2 progress (info), 3 details (debug).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verbosity(u8);

impl Verbosity {
    /// `level` is 1, 2 or 3 (the command line checks the range).
    pub fn new(level: u8) -> Self {
        Verbosity(level.clamp(1, 3))
    }
    pub fn level(self) -> u8 {
        self.0
    }
    fn filter(self) -> EnvFilter {
        let level = match self.0 {
            1 => "warn",
            2 => "info",
            _ => "debug",
        };
        // Libraries below us are chatty at debug; their warnings still show.
        EnvFilter::new(format!(
            "{level},{RECORD}=info,hyper=warn,hyper_util=warn,h2=warn,rustls=warn,reqwest=warn,zbus=warn"
        ))
    }
}

/// Keeps the background file writer alive; dropping it flushes the last lines.
#[must_use = "logging stops when the guard is dropped"]
pub struct LogGuard {
    _writer: Option<WorkerGuard>,
}

/// Installs the process-wide subscriber. A subscriber already installed (tests) is left in place.
pub fn init(target: &LogTarget, verbosity: Verbosity, instance: &str) -> Result<LogGuard, Error> {
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(verbosity.filter())
        .with_ansi(false)
        .with_target(verbosity.level() == 3);
    match target {
        // Written in place, so log lines and the command's own output on stdout keep their order.
        LogTarget::Stdout => {
            let _already_set = subscriber.with_writer(std::io::stdout).try_init();
            Ok(LogGuard { _writer: None })
        }
        LogTarget::Dir(dir) => {
            let appender = Builder::new()
                .rotation(Rotation::DAILY)
                .filename_prefix(instance)
                .filename_suffix("log")
                .build(dir)
                .map_err(|e| Error::Usage(format!("-ll {}: cannot write a log file there: {e}", dir.display())))?;
            let (writer, guard) = tracing_appender::non_blocking(appender);
            let _already_set = subscriber.with_writer(writer).try_init();
            Ok(LogGuard { _writer: Some(guard) })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdout_is_a_word_and_anything_else_a_directory() {
        assert_eq!(LogTarget::parse("stdout"), LogTarget::Stdout);
        assert_eq!(LogTarget::parse("STDOUT"), LogTarget::Stdout);
        assert_eq!(LogTarget::parse("/var/log/tq_labs/"), LogTarget::Dir("/var/log/tq_labs/".into()));
    }

    #[test]
    fn verbosity_maps_to_levels_and_the_record_passes_at_every_level() {
        use crate::test_log::Captured;
        for (level, shown) in [(1, ["WARN", "record"].as_slice()), (2, &["WARN", "record", "INFO"]), (3, &["DEBUG"])] {
            let written = Captured::default();
            let sink = written.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_env_filter(Verbosity::new(level).filter())
                .with_writer(move || sink.clone())
                .finish();
            tracing::subscriber::with_default(subscriber, || {
                tracing::debug!("DEBUG line");
                tracing::info!("INFO line");
                tracing::warn!("WARN line");
                tracing::info!(target: RECORD, "record line");
            });
            let text = String::from_utf8(written.0.lock().unwrap().clone()).unwrap();
            for line in ["DEBUG", "INFO", "WARN", "record"] {
                let expected = shown.contains(&line) || level == 3;
                assert_eq!(text.contains(&format!("{line} line")), expected, "-v{level}: {text}");
            }
        }
    }
}
