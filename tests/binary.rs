//! The one way tests run the built binary, after just's `Test`: say the arguments, environment, stdin and
//! directory, then what must come out (exit code, exact text, the text it must hold, a snapshot, files written);
//! [`Test::run`] checks all of it and returns the output for anything more.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub(crate) const BIN: &str = "tq-conn-devo-ioc-exporter";
/// The longest any one run may take before the test fails instead of hanging.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(60);

/// What [`Test::in_dir`] takes away from the machine running the tests: the setup answers, the trust and timing
/// settings doctor reports, and COLUMNS, which would change where clap wraps the help.
const MACHINE_VARIABLES: [&str; 11] = [
    "THREATQ_HOST",
    "THREATQ_CLIENT_ID",
    "THREATQ_USERNAME",
    "THREATQ_PASSWORD",
    "THREATQ_STATUS",
    "THREATQ_CA_FILE",
    "THREATQ_TLS_VERIFY",
    "DEVO_CA_FILE",
    "DEVO_RELAY_DELAY_SECONDS",
    "DEVO_JOB_POLL_SECONDS",
    "COLUMNS",
];

/// The built binary's path.
pub(crate) fn path() -> &'static Path {
    assert_cmd::cargo::cargo_bin!("tq-conn-devo-ioc-exporter")
}

/// What an output stream must be; a text alone means exactly that text.
pub(crate) enum Expect {
    Exact(String),
    Has(String),
    Snapshot(String),
}

impl From<String> for Expect {
    fn from(text: String) -> Expect {
        Expect::Exact(text)
    }
}

impl From<&str> for Expect {
    fn from(text: &str) -> Expect {
        Expect::Exact(text.into())
    }
}

/// The stream must hold `text`.
pub(crate) fn has(text: impl Into<String>) -> Expect {
    Expect::Has(text.into())
}

/// The stream, redacted by [`FILTERS`], must equal the snapshot `tests/snapshots/lib__binary__<name>.snap`.
pub(crate) fn snapshot(name: &str) -> Expect {
    Expect::Snapshot(name.into())
}

pub(crate) struct Test {
    command: Command,
    stdin: Vec<u8>,
    status: i32,
    stdout: Vec<Expect>,
    stderr: Vec<Expect>,
    files: Vec<(PathBuf, String)>,
}

/// What a run printed.
pub(crate) struct Output {
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Test {
    fn of(command: Command) -> Test {
        Test { command, stdin: Vec::new(), status: 0, stdout: Vec::new(), stderr: Vec::new(), files: Vec::new() }
    }

    /// The binary run in `dir` without [`MACHINE_VARIABLES`], secrets in files.
    pub(crate) fn in_dir(dir: &Path) -> Test {
        let mut command = Command::new(path());
        command.current_dir(dir).env("TQ_SECRETS_BACKEND", "file");
        for var in MACHINE_VARIABLES {
            command.env_remove(var);
        }
        Test::of(command)
    }

    /// The binary run in `home` (also its `HOME`) with only `env` and `PATH` as its environment.
    pub(crate) fn with_only_env(env: &HashMap<String, String>, home: &Path) -> Test {
        let mut command = Command::new(path());
        command.env_clear().envs(env).env("PATH", std::env::var_os("PATH").unwrap_or_default());
        command.env("HOME", home).current_dir(home);
        Test::of(command)
    }

    pub(crate) fn arg(mut self, arg: impl AsRef<std::ffi::OsStr>) -> Test {
        self.command.arg(arg);
        self
    }

    pub(crate) fn args<S: AsRef<std::ffi::OsStr>>(mut self, args: impl IntoIterator<Item = S>) -> Test {
        self.command.args(args);
        self
    }

    pub(crate) fn stdin(mut self, stdin: impl Into<Vec<u8>>) -> Test {
        self.stdin = stdin.into();
        self
    }

    /// The exit code the run must end with (0 unless said).
    pub(crate) fn status(mut self, code: i32) -> Test {
        self.status = code;
        self
    }

    /// What stdout must be: exactly a text, or [`has`] or [`snapshot`].
    pub(crate) fn stdout(mut self, expect: impl Into<Expect>) -> Test {
        self.stdout.push(expect.into());
        self
    }

    /// What stderr must be: exactly a text, or [`has`] or [`snapshot`].
    pub(crate) fn stderr(mut self, expect: impl Into<Expect>) -> Test {
        self.stderr.push(expect.into());
        self
    }

    /// After the run, `path` must hold exactly `contents`.
    pub(crate) fn file(mut self, path: impl Into<PathBuf>, contents: impl Into<String>) -> Test {
        self.files.push((path.into(), contents.into()));
        self
    }

    /// The command without the checks, for a run the test signals or kills.
    pub(crate) fn command(self) -> Command {
        self.command
    }

    /// Runs the binary (at most [`TIMEOUT`]) and checks everything said; a failed check shows both streams.
    pub(crate) fn run(self) -> Output {
        let mut command = assert_cmd::Command::from_std(self.command);
        let output = command.timeout(TIMEOUT).write_stdin(self.stdin).output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let shown = format!("{command:?}\n--- stdout:\n{stdout}--- stderr:\n{stderr}---");
        assert_eq!(output.status.code(), Some(self.status), "exit code of {shown}");
        for (stream, text, expected) in [("stdout", &stdout, &self.stdout), ("stderr", &stderr, &self.stderr)] {
            for expect in expected {
                match expect {
                    Expect::Exact(want) => assert_eq!(text, want, "{stream} of {shown}"),
                    Expect::Has(want) => assert!(text.contains(want.as_str()), "{stream} lacks {want:?}: {shown}"),
                    Expect::Snapshot(name) => assert_snapshot(name, text),
                }
            }
        }
        for (path, want) in &self.files {
            let found = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}\n{shown}", path.display()));
            assert_eq!(&found, want, "{} after {shown}", path.display());
        }
        Output { stdout, stderr }
    }
}

/// What changes from run to run in user-visible text, and what stands for it in snapshots.
const FILTERS: &[(&str, &str)] = &[
    (r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:?\d\d| UTC)?", "[TIME]"),
    (r"\d{4}-\d\d-\d\d", "[DATE]"),
    (r"(127\.0\.0\.1|localhost):\d+", "$1:[PORT]"),
    // tempfile's directories, wherever TMPDIR points.
    (r"(/[^\s/:]+)*/\.tmp[A-Za-z0-9]{6}", "[TMP]"),
    (r"pid \d+", "pid [PID]"),
    (r"-?\b\d+(\.\d+)? ?(ms|s)\b", "[DURATION]"),
    (r"in \d+ days", "in [DAYS] days"),
    (r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "[UUID]"),
    (r"version \d+\.\d+\.\d+[^\s)]*", "version [VERSION]"),
];

/// Checks `text` against the snapshot `name` with [`FILTERS`] applied.
pub(crate) fn assert_snapshot(name: &str, text: &str) {
    let filters: Vec<(&str, &str)> = FILTERS.to_vec();
    insta::with_settings!({filters => filters}, {
        insta::assert_snapshot!(name.to_owned(), text);
    });
}
