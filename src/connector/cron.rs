//! `--cron SCHEDULE`: the `/etc/cron.d/<connector>` file that runs the connector, written commented out until
//! a run finds the connector configured in ThreatQ, then enabled by that run ([`activate`]).

use std::fmt;
use std::path::{Path, PathBuf};

use croner::parser::{CronParser, Seconds, Year};

use super::local::write_atomically;
use crate::Error;

/// A five-field schedule (or `@hourly`-style nickname) that system cron understands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule(String);

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for Schedule {
    type Err = String;

    /// Checks the schedule with croner, limited to what Vixie cron and cronie accept.
    fn from_str(schedule: &str) -> Result<Self, String> {
        let fields: Vec<&str> = schedule.split_whitespace().collect();
        let hint = "expected five fields (minute hour day-of-month month day-of-week), e.g. \"0 */2 * * *\"";
        let nickname = fields.len() == 1 && fields[0].starts_with('@');
        if fields.len() != 5 && !nickname {
            return Err(format!("{schedule:?} has {} fields; {hint}", fields.len()));
        }
        // croner also knows Quartz extensions (L, W, #, ?, +) that system cron would reject.
        if let Some(field) = fields.iter().find(|f| !nickname && !system_cron_field(f)) {
            return Err(format!("{schedule:?}: {field:?} uses syntax system cron does not understand; {hint}"));
        }
        let parser = CronParser::builder().seconds(Seconds::Disallowed).year(Year::Disallowed).build();
        parser.parse(schedule).map_err(|e| format!("{schedule:?} is not a valid schedule: {e}; {hint}"))?;
        Ok(Schedule(fields.join(" ")))
    }
}

/// Digits, `* , - /` and month or weekday names: the field syntax Vixie cron and cronie share.
fn system_cron_field(field: &str) -> bool {
    const NAMES: [&str; 19] = [
        "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC", "SUN", "MON", "TUE", "WED",
        "THU", "FRI", "SAT",
    ];
    let rest = NAMES.iter().fold(field.to_ascii_uppercase(), |f, name| f.replace(name, ""));
    rest.chars().all(|c| c.is_ascii_digit() || matches!(c, '*' | ',' | '-' | '/'))
}

/// What `--cron` puts in the crontab line besides the schedule: the same command as this invocation.
#[derive(Clone, Debug)]
pub struct Job {
    pub schedule: Schedule,
    pub executable: PathBuf,
    pub config_dir: PathBuf,
    /// A directory, or `stdout`.
    pub log: String,
    pub verbosity: u8,
    /// Only a non-default instance name is written, so the line stays the seed's.
    pub name: Option<String>,
}

impl Job {
    /// The enabled crontab line (no leading `#`).
    pub fn line(&self) -> String {
        let mut line = format!(
            "{} root {} -c {} -ll {} -v{}",
            self.schedule,
            self.executable.display(),
            self.config_dir.display(),
            self.log,
            self.verbosity
        );
        if let Some(name) = &self.name {
            line.push_str(&format!(" -n {name}"));
        }
        line
    }
}

/// What [`install`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Written,
    Unchanged,
}

/// The cron file of an instance.
pub fn path(cron_dir: &Path, name: &str) -> PathBuf {
    cron_dir.join(name)
}

fn content(enabled: bool, job: &Job) -> String {
    format!("{}{}\n", if enabled { "" } else { "#" }, job.line())
}

/// Writes the (commented-out) cron file; a file already holding this job, enabled or not, is left untouched.
pub fn install(cron_dir: &Path, name: &str, job: &Job) -> Result<Outcome, Error> {
    let path = path(cron_dir, name);
    if !cron_dir.is_dir() {
        return Err(Error::Usage(format!("--cron-dir {} is not a directory", cron_dir.display())));
    }
    let existing = read(&path)?;
    if existing.as_deref().is_some_and(|e| e == content(false, job) || e == content(true, job)) {
        return Ok(Outcome::Unchanged);
    }
    write_atomically(&path, content(false, job).as_bytes(), 0o644)?;
    Ok(Outcome::Written)
}

/// Enables the commented-out line written by [`install`]; `false` if there is no such file or it was already on.
/// A file that is not the one line [`install`] wrote, or that cannot be rewritten, is an error: the job would
/// never run, and the caller logs that (the run itself goes on).
pub fn activate(cron_dir: &Path, name: &str) -> Result<bool, Error> {
    let Some(enabled) = activation_check(cron_dir, name)? else { return Ok(false) };
    write_atomically(&path(cron_dir, name), enabled.as_bytes(), 0o644)?;
    Ok(true)
}

/// Whether [`activate`] can enable the cron file, without changing it (for `doctor`): `Some(enabled text)` when
/// the file holds the commented-out line and its directory is writable, `None` when there is nothing to do.
pub fn activation_check(cron_dir: &Path, name: &str) -> Result<Option<String>, Error> {
    let path = path(cron_dir, name);
    let Some(existing) = read(&path)? else { return Ok(None) };
    let Some(enabled) = existing.strip_prefix('#') else { return Ok(None) };
    let edited = |why: &str| {
        Error::Other(format!(
            "the cron file {} {why}, so the job cannot be enabled; write it again with --cron SCHEDULE, or remove \
             the # in front of the job line yourself",
            path.display()
        ))
    };
    if enabled.lines().count() != 1 || !enabled.ends_with('\n') {
        return Err(edited("holds more than the one line --cron wrote (edited by hand?)"));
    }
    let fields: Vec<&str> = enabled.split_whitespace().collect();
    let root_at = fields.iter().position(|f| *f == "root");
    let schedule_ok = root_at.is_some_and(|at| fields[..at].join(" ").parse::<Schedule>().is_ok());
    if !schedule_ok || !fields.windows(2).any(|w| w[0] == "-c") {
        return Err(edited("is not the line --cron wrote (edited by hand?)"));
    }
    nix::unistd::access(cron_dir, nix::unistd::AccessFlags::W_OK).map_err(|e| {
        Error::Other(format!(
            "the cron file {} cannot be enabled: its directory is not writable ({e}); remove the # in front of \
             the job line yourself",
            path.display()
        ))
    })?;
    Ok(Some(enabled.to_owned()))
}

/// The cron file as `doctor` shows it.
pub fn describe(cron_dir: &Path, name: &str) -> String {
    let path = path(cron_dir, name);
    match read(&path) {
        Ok(None) => format!("{} absent (write it with --cron SCHEDULE)", path.display()),
        Ok(Some(text)) if text.starts_with('#') => {
            format!("{} written, commented out until a run finds the connector configured", path.display())
        }
        Ok(Some(text)) => format!("{}: {}", path.display(), text.trim_end()),
        Err(e) => e.to_string(),
    }
}

fn read(path: &Path) -> Result<Option<String>, Error> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn job(schedule: &str) -> Job {
        Job {
            schedule: schedule.parse().unwrap(),
            executable: "/usr/local/bin/tq-conn-devo-ioc-exporter".into(),
            config_dir: "/etc/tq_labs".into(),
            log: "/var/log/tq_labs".into(),
            verbosity: 3,
            name: None,
        }
    }

    #[test]
    fn schedules_system_cron_understands_are_accepted() {
        for ok in ["0 */2 * * *", "*/15 * * * 1-5", "30 4 1 jan *", "@hourly", "@daily", "0  3 * * sun"] {
            assert!(ok.parse::<Schedule>().is_ok(), "{ok}");
        }
        assert_eq!("0  */2 *   * *".parse::<Schedule>().unwrap().to_string(), "0 */2 * * *");
    }

    #[test]
    fn bad_schedules_say_why() {
        for (bad, why) in [
            ("0 */2 * *", "4 fields"),
            ("0 0 */2 * * *", "6 fields"),
            ("61 * * * *", "not a valid schedule"),
            ("0 0 L * *", "system cron does not understand"),
            ("0 0 * * 5#2", "system cron does not understand"),
            ("@reboot", "not a valid schedule"),
            ("0 * * * *\n* * * * *", "10 fields"),
            ("", "0 fields"),
        ] {
            let err = bad.parse::<Schedule>().unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn the_line_is_the_seed_command() {
        assert_eq!(
            job("0 */2 * * *").line(),
            "0 */2 * * * root /usr/local/bin/tq-conn-devo-ioc-exporter -c /etc/tq_labs -ll /var/log/tq_labs -v3"
        );
        let named = Job { name: Some("second".into()), ..job("@daily") };
        assert!(named.line().ends_with("-v3 -n second"), "{}", named.line());
    }

    #[test]
    fn install_is_commented_idempotent_and_activation_survives_a_reinstall() {
        let dir = tempfile::tempdir().unwrap();
        let file = path(dir.path(), "tq-conn-devo-ioc-exporter");
        let job = job("0 */2 * * *");
        assert_eq!(install(dir.path(), "tq-conn-devo-ioc-exporter", &job).unwrap(), Outcome::Written);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), format!("#{}\n", job.line()));
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o644);
        assert_eq!(install(dir.path(), "tq-conn-devo-ioc-exporter", &job).unwrap(), Outcome::Unchanged);

        assert!(activate(dir.path(), "tq-conn-devo-ioc-exporter").unwrap());
        assert!(!activate(dir.path(), "tq-conn-devo-ioc-exporter").unwrap());
        assert_eq!(std::fs::read_to_string(&file).unwrap(), format!("{}\n", job.line()));
        assert_eq!(install(dir.path(), "tq-conn-devo-ioc-exporter", &job).unwrap(), Outcome::Unchanged);
        assert!(describe(dir.path(), "tq-conn-devo-ioc-exporter").contains("0 */2 * * * root"));

        let other = super::tests::job("@daily");
        assert_eq!(install(dir.path(), "tq-conn-devo-ioc-exporter", &other).unwrap(), Outcome::Written);
        assert!(std::fs::read_to_string(&file).unwrap().starts_with("#@daily root"));
    }

    #[test]
    fn a_hand_edited_file_is_an_error_and_stays_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let file = path(dir.path(), "x");
        let line = job("@daily").line();
        for edited in [format!("#{line}\n#another line\n"), "# a note by the admin\n".to_owned(), format!("#{line}")] {
            std::fs::write(&file, &edited).unwrap();
            assert!(activation_check(dir.path(), "x").is_err(), "{edited:?}");
            let err = activate(dir.path(), "x").unwrap_err().to_string();
            assert!(err.contains("edited by hand") && err.contains("--cron"), "{err}");
            assert_eq!(std::fs::read_to_string(&file).unwrap(), edited);
        }
        std::fs::write(&file, format!("#{line}\n")).unwrap();
        assert_eq!(activation_check(dir.path(), "x").unwrap(), Some(format!("{line}\n")));
    }

    #[test]
    fn a_missing_cron_dir_is_named() {
        let err = install(Path::new("/nonexistent/cron.d"), "x", &job("@daily")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/cron.d"), "{err}");
    }
}
