//! The command line, in two steps: raw flags as clap parses them ([`RawArgs`]), then the validated
//! [`Invocation`] the rest of the program works from. The seed connector's flags are kept exactly, including the
//! two-letter single-dash `-ll` that users have in their crontabs.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};

use super::config::{self, CONNECTOR_NAME};
use super::cron::{self, Schedule};
use super::docs;

use super::logging::{self, LogGuard, LogTarget, Verbosity};

use crate::Error;

/// `--version`: the version, the commit and the target the binary was built for (see build.rs).
const VERSION: &str =
    concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("TQ_BUILD_COMMIT"), ", ", env!("TQ_BUILD_TARGET"), ")");

const ABOUT: &str = "Keeps a Devo Lookup List equal to the IOCs of a ThreatQ Data Collection.";

const LONG_ABOUT: &str = "\
Keeps a Devo Lookup List equal to the IOCs of a ThreatQ Data Collection.

The first run asks for the ThreatQ host, Client ID, username, password and status, signs in, registers the \
connector with ThreatQ (integrations, category Labs) and stores what later runs need in the -c directory. Fill in \
the connector's Configuration tab in ThreatQ and switch it on; from then on every run (by hand or from cron) reads \
that configuration from ThreatQ and exports the collection to Devo.";

const AFTER_HELP: &str = "\
Examples:
  First run (setup), then every run:
    tq-conn-devo-ioc-exporter -c /etc/tq_labs/ -ll /var/log/tq_labs/ -v3
  Run every two hours from cron:
    tq-conn-devo-ioc-exporter -c /etc/tq_labs/ -ll /var/log/tq_labs/ -v3 --cron \"0 */2 * * *\"

See --help for the exit codes and environment variables.";

const AFTER_LONG_HELP_EXAMPLES: &str = "\
Examples:
  First run, then every run (same command):
    tq-conn-devo-ioc-exporter -c /etc/tq_labs/ -ll /var/log/tq_labs/ -v3
  Run every two hours from cron (ThreatQ v6; writes /etc/cron.d/tq-conn-devo-ioc-exporter holding
  \"#0 */2 * * * root <this program> -c /etc/tq_labs -ll /var/log/tq_labs -v3\", commented out until a run
  finds the connector configured in ThreatQ):
    tq-conn-devo-ioc-exporter -c /etc/tq_labs/ -ll /var/log/tq_labs/ -v3 --cron \"0 */2 * * *\"
  Show the plan without uploading:
    tq-conn-devo-ioc-exporter -c /etc/tq_labs/ -ll stdout -v2 --dry-run
  Preflight before switching the connector on, and for monitoring (--json); changes nothing:
    tq-conn-devo-ioc-exporter -c /etc/tq_labs/ doctor
  It checks the local setup, ThreatQ (sign-in, clock, record, toggle, UI values) and Devo
  (Lookups API: token, domain, the lookup's columns and last job; relay: certificate expiry,
  key, chain CA, a TLS handshake that sends no data), one line each:
    ThreatQ sign-in:         ok (signed in to threatq.example.com as analyst@example.com)
    Toggle:                  ok (off: runs do nothing until it is switched on in ThreatQ)
    Devo API token:          ok (accepted by https://api-us.devo.com/lookup-api)
    Devo lookup:             ok (tq_iocs is absent: the next run creates it)
    Devo certificate:        FAILED: UI field \"Devo X.509 Certificate\": expired on
                             2026-01-31: download a new one from Devo
  It exits 0 only when every check passes, else with the first failing area's code (3, 4, 5).
";

/// The end of `--help`, after the exit codes (which come from [`crate::Exit`]).
const AFTER_LONG_HELP_ENV: &str = "\
Environment:
  THREATQ_HOST, THREATQ_CLIENT_ID, THREATQ_USERNAME, THREATQ_PASSWORD, THREATQ_STATUS
      answer the setup prompts without asking. A blank host at setup means THREATQ_HOST is read at every
      run (ThreatQ v6); THREATQ_PASSWORD, when set, is used instead of the stored password.
  THREATQ_CA_FILE      PEM file of extra CAs to trust for ThreatQ (default: the system roots)
  THREATQ_TLS_VERIFY   false: do not verify ThreatQ's certificate (logged as a warning)
  DEVO_CA_FILE         PEM file of extra CAs to trust for the Devo Lookups API
  DEVO_RELAY_DELAY_SECONDS  the relay's pause after START and before END (default 5, as devo-sdk)
  DEVO_JOB_POLL_SECONDS     the longest pause between polls of a Lookups API job (default 5; polls start
                            at 0.01 s and double up to it)
  HTTPS_PROXY, NO_PROXY
  TQ_SECRETS_BACKEND   file or keyring: where the ThreatQ password is stored (default: the OS keyring when one
                       answers, else an owner-only file in the -c directory)";

fn after_long_help() -> String {
    format!("{AFTER_LONG_HELP_EXAMPLES}\n\nExit codes:\n{}\n{AFTER_LONG_HELP_ENV}", crate::Exit::help())
}

/// The flags as typed (after `-ll` became `--loglocation`).
#[derive(Debug, Parser)]
#[command(
    name = "tq-conn-devo-ioc-exporter",
    version = VERSION,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = AFTER_HELP,
    after_long_help = after_long_help(),
)]
pub struct RawArgs {
    /// Write the log to DIR (one file per instance and day) or to stdout. Short form: -ll DIR
    #[arg(long = "loglocation", value_name = "DIR|stdout", global = true)]
    pub loglocation: Option<String>,

    /// The configuration directory: setup answers, password file, run lock and state
    #[arg(short = 'c', long = "config", value_name = "DIR", default_value = ".", global = true)]
    pub config: PathBuf,

    /// 1 warnings and errors, 2 progress, 3 details (-v3 and -v 3 both work)
    #[arg(
        short = 'v',
        long = "verbosity",
        value_name = "1|2|3",
        default_value_t = 1,
        value_parser = clap::value_parser!(u8).range(1..=3),
        global = true
    )]
    pub verbosity: u8,

    /// Instance name, for several connectors on one host: its own ThreatQ record, config, lock and log
    #[arg(short = 'n', long = "name", value_name = "NAME", global = true)]
    pub name: Option<String>,

    /// Write the cron file that runs this command on SCHEDULE (five cron fields), then exit
    #[arg(long, value_name = "SCHEDULE")]
    pub cron: Option<Schedule>,

    /// Where --cron writes its file
    #[arg(long, value_name = "DIR", default_value = "/etc/cron.d", global = true)]
    pub cron_dir: PathBuf,

    /// Read from ThreatQ and print the plan (rows to add, change, delete); upload nothing
    #[arg(long, global = true)]
    pub dry_run: bool,

    /// Let this run delete more of the lookup than the "Mass-Delete Guard (%)", or empty it
    #[arg(long, global = true)]
    pub allow_mass_delete: bool,

    #[command(subcommand)]
    pub command: Option<RawCommand>,
}

#[derive(Debug, Subcommand)]
pub enum RawCommand {
    /// Run against the built-in ThreatQ and Devo stand-ins on this machine: see the whole flow without accounts
    Demo,
    /// The preflight: check, changing nothing, the local setup, ThreatQ and Devo (exit 0 only if all pass)
    Doctor {
        /// Print the checks as one JSON object, for monitoring
        #[arg(long)]
        json: bool,
    },
    /// Print the JSON Schema of the connector's Configuration tab
    Schema,
    /// Print the connector definition registered with ThreatQ
    Manifest,
    /// Start the ThreatQ and Devo stand-ins and keep them running, for trying the connector by hand
    Sandbox(SandboxArgs),
    /// Print the shell completion script for SHELL (the packages install them)
    Completions {
        #[arg(value_name = "SHELL")]
        shell: docs::Shell,
    },
    /// Print the manual page (roff): tq-conn-devo-ioc-exporter man | man -l -
    Man,
}

/// What `sandbox` serves. (The command runs in `sandbox::demo`, above the connector: the command line only parses.)
#[derive(Clone, Debug, PartialEq, Eq, clap::Args)]
pub struct SandboxArgs {
    /// IOCs the ThreatQ stand-in holds (about two in five are in its "Devo Export" collection)
    #[arg(long, value_name = "N", default_value_t = SandboxArgs::DEFAULT_IOCS)]
    pub iocs: u64,
    /// Seed of the generated IOCs: the same seed gives the same IOCs
    #[arg(long, value_name = "S", default_value_t = 1)]
    pub seed: u64,
    /// How long ThreatQ takes to answer a page of indicators: MS, or MS plus US_PER_IOC for each IOC on it
    #[arg(long, value_name = "MS[+US_PER_IOC]", default_value = "0")]
    pub page_latency: PageLatency,
}

impl SandboxArgs {
    /// IOCs the stand-in holds unless `--iocs` says otherwise; `demo` serves as many.
    pub const DEFAULT_IOCS: u64 = 3_000;
}

impl Default for SandboxArgs {
    fn default() -> Self {
        SandboxArgs { iocs: Self::DEFAULT_IOCS, seed: 1, page_latency: PageLatency::default() }
    }
}

/// The time a page takes the ThreatQ stand-in: `base` plus `per_ioc` for each indicator on it. Written `MS` or
/// `MS+US_PER_IOC` (`sandbox --page-latency` and its `latency` command).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageLatency {
    pub base: Duration,
    pub per_ioc: Duration,
}

impl PageLatency {
    pub fn of_page(self, iocs: usize) -> Duration {
        self.base + self.per_ioc * u32::try_from(iocs).unwrap_or(u32::MAX)
    }
}

impl std::str::FromStr for PageLatency {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let number = |part: &str| {
            part.trim().parse::<u64>().map_err(|_| format!("{text:?} is not MS or MS+US_PER_IOC (whole numbers)"))
        };
        let (base, per_ioc) = text.split_once('+').unwrap_or((text, "0"));
        Ok(PageLatency { base: Duration::from_millis(number(base)?), per_ioc: Duration::from_micros(number(per_ioc)?) })
    }
}

impl std::fmt::Display for PageLatency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.base.as_millis())?;
        if !self.per_ioc.is_zero() {
            write!(f, "+{}", self.per_ioc.as_micros())?;
        }
        Ok(())
    }
}

/// What to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// The connector's run: the first-run setup when this instance has none, else an export.
    Run,
    /// `--cron`: write the cron file.
    Cron(Schedule),
    Demo,
    /// `doctor`, its checks as lines or (`json`) one JSON object.
    Doctor {
        json: bool,
    },
    Schema,
    Manifest,
    Sandbox(SandboxArgs),
    Completions(docs::Shell),
    Man,
}

/// A validated command line.
#[derive(Clone, Debug)]
pub struct Invocation {
    /// The instance (`-n`), [`CONNECTOR_NAME`] by default; it names the ThreatQ record and every local file.
    pub name: String,
    /// Whether the instance is not the default one (`-n` names another): the cron line repeats `-n` only then.
    pub custom_instance: bool,
    pub config_dir: PathBuf,
    pub log: LogTarget,
    pub verbosity: Verbosity,
    pub cron_dir: PathBuf,
    pub dry_run: bool,
    pub allow_mass_delete: bool,
    pub command: Command,
}

/// Parses `argv` (program name first). The error prints help, version or a usage error and exits with clap's
/// code (0 or 2) through [`clap::Error::exit`].
pub fn parse<I, T>(argv: I) -> Result<Invocation, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let mut command = RawArgs::command();
    let matches = command.try_get_matches_from_mut(rewrite_ll(argv))?;
    let raw = RawArgs::from_arg_matches(&matches).map_err(|e| e.format(&mut command))?;
    raw.validate().map_err(|message| command.error(clap::error::ErrorKind::ValueValidation, message))
}

/// `-ll X`, `-ll=X` and `-llX` (the seed's Python argparse forms) become `--loglocation`; clap has no
/// two-letter short flags. Nothing after `--` is touched.
fn rewrite_ll<I, T>(argv: I) -> Vec<OsString>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let mut rest_is_positional = false;
    argv.into_iter()
        .map(Into::into)
        .map(|arg| {
            if rest_is_positional {
                return arg;
            }
            rest_is_positional = arg == "--";
            match arg.to_str().and_then(|a| a.strip_prefix("-ll")) {
                Some("") => "--loglocation".into(),
                Some(value) => format!("--loglocation={}", value.strip_prefix('=').unwrap_or(value)).into(),
                None => arg,
            }
        })
        .collect()
}

impl RawArgs {
    fn validate(self) -> Result<Invocation, String> {
        let name = match self.name {
            // The name is part of file names, and cron skips /etc/cron.d files whose names hold a dot.
            Some(name) if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "_-".contains(c)) => {
                return Err(format!(
                    "-n/--name {name:?}: use letters, digits, '_' and '-' only (it names files and the cron job)"
                ));
            }
            Some(name) => name,
            None => CONNECTOR_NAME.to_owned(),
        };
        let log = match self.loglocation.as_deref() {
            None => LogTarget::Stdout,
            Some("") => return Err("-ll/--loglocation needs a directory or `stdout`".into()),
            Some(value) => LogTarget::parse(value),
        };
        let command = match (self.cron, self.command) {
            (Some(_), Some(_)) => return Err("--cron cannot be combined with a subcommand".into()),
            (Some(schedule), None) => Command::Cron(schedule),
            (None, None) => Command::Run,
            (None, Some(RawCommand::Demo)) => Command::Demo,
            (None, Some(RawCommand::Doctor { json })) => Command::Doctor { json },
            (None, Some(RawCommand::Schema)) => Command::Schema,
            (None, Some(RawCommand::Manifest)) => Command::Manifest,
            (None, Some(RawCommand::Sandbox(args))) => Command::Sandbox(args),
            (None, Some(RawCommand::Completions { shell })) => Command::Completions(shell),
            (None, Some(RawCommand::Man)) => Command::Man,
        };
        Ok(Invocation {
            custom_instance: name != CONNECTOR_NAME,
            name,
            config_dir: self.config,
            log,
            verbosity: Verbosity::new(self.verbosity),
            cron_dir: self.cron_dir,
            dry_run: self.dry_run,
            allow_mass_delete: self.allow_mass_delete,
            command,
        })
    }
}

impl Invocation {
    /// Starts logging to `-ll` at `-v` and notes the start; keep the guard until the command ends.
    pub fn start_logging(&self) -> Result<LogGuard, Error> {
        let guard = logging::init(&self.log, self.verbosity, &self.name)?;
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            instance = %self.name,
            command = ?self.command,
            config = %self.config_dir.display(),
            "tq-conn-devo-ioc-exporter started"
        );
        Ok(guard)
    }

    /// Runs the commands that need neither ThreatQ nor Devo: `schema`, `manifest`, `completions`, `man` and
    /// `--cron`. `None` for the others, which the run orchestration owns.
    pub fn run_local(&self, out: &mut dyn Write) -> Option<Result<(), Error>> {
        let text = match &self.command {
            Command::Schema => Ok(config::pretty_json(config::schema())),
            Command::Manifest => Ok(config::pretty_json(&config::definition(Some(&self.name)))),
            Command::Cron(schedule) => self.install_cron(schedule),
            Command::Completions(shell) => Ok(docs::completions(*shell)),
            Command::Man => Ok(docs::man_page()),
            Command::Run | Command::Demo | Command::Sandbox(_) | Command::Doctor { .. } => return None,
        };
        Some(text.and_then(|text| out.write_all(text.as_bytes()).map_err(|e| Error::io("writing to stdout", e))))
    }

    fn install_cron(&self, schedule: &Schedule) -> Result<String, Error> {
        let executable = std::env::current_exe().map_err(|e| Error::io("finding this program's path", e))?;
        let log = match &self.log {
            LogTarget::Stdout => "stdout".to_owned(),
            LogTarget::Dir(dir) => absolute(dir)?.display().to_string(),
        };
        let job = cron::Job {
            schedule: schedule.clone(),
            executable,
            config_dir: absolute(&self.config_dir)?,
            log,
            verbosity: self.verbosity.level(),
            name: self.custom_instance.then(|| self.name.clone()),
        };
        let path = cron::path(&self.cron_dir, &self.name);
        Ok(match cron::install(&self.cron_dir, &self.name, &job)? {
            cron::Outcome::Written => {
                let mut text = format!(
                    "Wrote {} (commented out until a run finds the connector configured in ThreatQ):\n#{}\n",
                    path.display(),
                    job.line()
                );
                if self.log == LogTarget::Stdout {
                    text.push_str("Note: without -ll DIR the job logs to stdout, which cron mails to root.\n");
                }
                text
            }
            cron::Outcome::Unchanged => format!("{} already holds this job; left unchanged\n", path.display()),
        })
    }
}

/// Cron runs from `/`, so every path in the line must be absolute; `..` and symlinks are resolved when the
/// path exists.
fn absolute(path: &Path) -> Result<PathBuf, Error> {
    path.canonicalize()
        .or_else(|_| std::path::absolute(path))
        .map_err(|e| Error::io(format!("resolving {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(args: &[&str]) -> Invocation {
        parse(std::iter::once("tq-conn-devo-ioc-exporter").chain(args.iter().copied())).unwrap()
    }

    fn parse_err(args: &[&str]) -> clap::Error {
        parse(std::iter::once("tq-conn-devo-ioc-exporter").chain(args.iter().copied())).unwrap_err()
    }

    #[test]
    fn the_seed_command_line_parses() {
        let inv = parse_ok(&["-c", "/etc/tq_labs/", "-ll", "/var/log/tq_labs/", "-v3"]);
        assert_eq!(inv.config_dir, Path::new("/etc/tq_labs/"));
        assert_eq!(inv.log, LogTarget::Dir("/var/log/tq_labs/".into()));
        assert_eq!(inv.verbosity.level(), 3);
        assert_eq!(inv.name, CONNECTOR_NAME);
        assert_eq!(inv.command, Command::Run);
    }

    #[test]
    fn every_form_of_ll_and_v_is_accepted() {
        for args in [
            &["-ll", "/var/log/x", "-v", "2"][..],
            &["-ll=/var/log/x", "-v2"],
            &["-ll/var/log/x", "--verbosity", "2"],
            &["--loglocation", "/var/log/x", "-v=2"],
            &["doctor", "-ll", "/var/log/x", "-v2"],
        ] {
            let inv = parse_ok(args);
            assert_eq!(inv.log, LogTarget::Dir("/var/log/x".into()), "{args:?}");
            assert_eq!(inv.verbosity.level(), 2, "{args:?}");
        }
        assert_eq!(parse_ok(&["-ll", "stdout"]).log, LogTarget::Stdout);
        assert_eq!(parse_ok(&[]).log, LogTarget::Stdout);
        assert_eq!(parse_ok(&[]).verbosity.level(), 1);
    }

    #[test]
    fn arguments_after_a_double_dash_are_not_rewritten() {
        assert_eq!(rewrite_ll(["x", "-ll", "--", "-ll"]), ["x", "--loglocation", "--", "-ll"]);
    }

    #[test]
    fn usage_errors_exit_2() {
        for args in [
            &["-v", "4"][..],
            &["-v0"],
            &["-n", "a.b"],
            &["-n", ""],
            &["--cron", "0 */2 * *"],
            &["--cron", "@daily", "doctor"],
            &["--unknown"],
        ] {
            assert_eq!(parse_err(args).exit_code(), 2, "{args:?}");
        }
        assert!(parse_err(&["-n", "a.b"]).to_string().contains("-n/--name"));
        assert!(parse_err(&["--cron", "0 */2 * *"]).to_string().contains("4 fields"));
    }

    #[test]
    fn subcommands_and_run_flags() {
        let inv = parse_ok(&["--dry-run", "--allow-mass-delete", "-n", "second"]);
        assert!(inv.dry_run && inv.allow_mass_delete && inv.custom_instance);
        assert_eq!(inv.name, "second");
        assert_eq!(parse_ok(&["demo"]).command, Command::Demo);
        assert_eq!(parse_ok(&["sandbox"]).command, Command::Sandbox(SandboxArgs::default()));
        let sized = parse_ok(&["sandbox", "--iocs", "1000000", "--seed", "7", "--page-latency", "250+20"]).command;
        let Command::Sandbox(args) = sized else { panic!("{sized:?}") };
        assert_eq!((args.iocs, args.seed, args.page_latency.to_string()), (1_000_000, 7, "250+20".to_owned()));
        assert_eq!(parse_ok(&["--cron", "0 */2 * * *"]).command, Command::Cron("0 */2 * * *".parse().unwrap()));
        assert_eq!(parse_ok(&["--cron-dir", "/tmp/c"]).cron_dir, Path::new("/tmp/c"));
    }

    #[test]
    fn manifest_uses_the_instance_name() {
        let mut out = Vec::new();
        parse_ok(&["-n", "second", "manifest"]).run_local(&mut out).unwrap().unwrap();
        let manifest: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(manifest["name"], "second");
        assert!(parse_ok(&[]).run_local(&mut out).is_none(), "the run is not a local command");
    }
}
