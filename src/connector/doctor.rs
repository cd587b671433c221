//! `doctor`, the preflight a user runs before switching the connector on, and that monitoring can run: checks of
//! the local setup, ThreatQ and Devo that change nothing. One line per check, `ok` or `FAILED: <why, what to do>`;
//! the command fails with the first failing check's error, so its exit code is that area's (3 configuration,
//! 4 ThreatQ, 5 Devo).

use std::io::Write;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use serde_json::{Value, json};

use super::cli::Invocation;
use super::local::{self, Env, LocalConfig};
use super::lock::{self, LockState};
use super::secrets::{self, Backend};
use super::{config, cron};
use crate::Error;
use crate::devo::{self, DevoOptions};
use crate::export;
use crate::threatq::{self, Client, ConnectorRegistry as _};

/// A clock further than this from ThreatQ's fails the check: token lifetimes and certificate dates depend on it.
const MAX_CLOCK_SKEW_SECONDS: i64 = 300;

/// Which part of the setup a check looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Area {
    Local,
    ThreatQ,
    Devo,
}

/// One check: what it found, or the error that makes it fail.
#[derive(Debug)]
pub struct Check {
    pub area: Area,
    pub name: String,
    pub outcome: Result<String, Error>,
}

impl Check {
    fn new(area: Area, name: impl Into<String>, outcome: Result<String, Error>) -> Self {
        Self { area, name: name.into(), outcome }
    }

    /// `Name:  ok (detail)` or `Name:  FAILED: why, what to do`.
    pub fn line(&self) -> String {
        let result = match &self.outcome {
            Ok(detail) if detail.is_empty() => "ok".to_owned(),
            Ok(detail) => format!("ok ({detail})"),
            Err(e) => format!("FAILED: {e}"),
        };
        format!("{:<24} {result}", format!("{}:", self.name))
    }

    fn json(&self) -> Value {
        match &self.outcome {
            Ok(detail) => json!({"area": self.area, "check": self.name, "ok": true, "detail": detail}),
            Err(e) => {
                json!({"area": self.area, "check": self.name, "ok": false, "error": e.to_string(), "exit_code": e.code()})
            }
        }
    }
}

/// Every check, in order; a check whose premise failed is left out (no ThreatQ checks without a sign-in, no Devo
/// checks without valid UI values).
#[derive(Debug)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    pub fn lines(&self) -> String {
        self.checks.iter().map(Check::line).collect::<Vec<_>>().join("\n")
    }

    /// `{"ok": bool, "exit_code": n, "checks": [{"area", "check", "ok", "detail" | "error" and "exit_code"}]}`.
    pub fn json(&self) -> Value {
        let exit_code = self.checks.iter().find_map(|c| c.outcome.as_ref().err()).map_or(0, Error::code);
        json!({
            "ok": exit_code == 0,
            "exit_code": exit_code,
            "checks": self.checks.iter().map(Check::json).collect::<Vec<_>>(),
        })
    }

    /// The first failing check's error, which decides the exit code.
    pub fn into_result(self) -> Result<(), Error> {
        self.checks.into_iter().find_map(|c| c.outcome.err()).map_or(Ok(()), Err)
    }
}

/// `doctor`: runs the checks, prints them (as lines, or one JSON object), and fails with the first failure.
pub async fn doctor(invocation: &Invocation, json: bool, out: &mut dyn Write) -> Result<(), Error> {
    let dir = std::path::absolute(&invocation.config_dir)
        .map_err(|e| Error::io(format!("resolving {}", invocation.config_dir.display()), e))?;
    let report = checks(&dir, &invocation.name, &invocation.cron_dir, &local::process_env).await;
    let text = if json { config::pretty_json(&report.json()) } else { report.lines() + "\n" };
    out.write_all(text.as_bytes()).map_err(|e| Error::io("writing to stdout", e))?;
    report.into_result()
}

/// Every check of the instance `name` configured in `dir`.
pub async fn checks(dir: &Path, name: &str, cron_dir: &Path, env: Env<'_>) -> Report {
    let mut checks = Vec::new();
    let local = local_checks(dir, name, cron_dir, env, &mut checks);
    if let Some(local) = local {
        remote_checks(dir, name, &local, env, &mut checks).await;
    }
    Report { checks }
}

/// The stored configuration, the password (where, never what), `DEVO_*` variables, the run lock and the cron
/// file. Returns the configuration when there is one to go on with.
fn local_checks(dir: &Path, name: &str, cron_dir: &Path, env: Env, checks: &mut Vec<Check>) -> Option<LocalConfig> {
    let mut check = |name: &str, outcome| checks.push(Check::new(Area::Local, name, outcome));
    let config_path = local::path(dir, name);
    let loaded = match LocalConfig::load(dir, name) {
        Ok(Some(local)) => {
            check("Local config", Ok(format!("{}, instance {name}", config_path.display())));
            Some(local)
        }
        Ok(None) => {
            let absent = format!("{} is absent: run without a subcommand to set up", config_path.display());
            check("Local config", Err(Error::LocalConfig(absent)));
            None
        }
        Err(e) => {
            check("Local config", Err(e));
            None
        }
    };
    if let Some(local) = &loaded {
        let host = local.effective_host(env).map(|host| match &local.host {
            Some(_) => host,
            None => format!("{host} (from THREATQ_HOST)"),
        });
        check("ThreatQ host", host);
        check(
            "ThreatQ account",
            Ok(format!("Client ID {}, user {}, status {}", local.client_id, local.username, local.status)),
        );
        check("Password", password_whereabouts(dir, local, env));
    }
    check("Devo environment", DevoOptions::from_env(env).map_err(Into::into).map(|o| describe_options(&o)));
    let lock = lock::state(dir, name).map(|state| match state {
        LockState::Free => "free".to_owned(),
        LockState::Held { pid, age_seconds } => format!("held by pid {pid} for {age_seconds} s: a run is going on"),
    });
    check("Run lock", lock);
    check("Cron file", Ok(cron::describe(cron_dir, name)));
    check("Cron activation", cron::activation_check(cron_dir, name).map(|_| String::new()));
    loaded
}

fn describe_options(options: &DevoOptions) -> String {
    format!(
        "{}relay pause {} s, job polls at most {} s apart",
        if options.extra_ca_pem.is_some() { "DEVO_CA_FILE read, " } else { "" },
        options.relay_delay.as_secs_f64(),
        options.job_poll_interval.as_secs_f64()
    )
}

/// Where the password is and whether it is there; never the password. A file others can read fails.
fn password_whereabouts(dir: &Path, local: &LocalConfig, env: Env) -> Result<String, Error> {
    let place = match local.secrets {
        Backend::Keyring => format!("OS keyring (service {}, user {})", secrets::KEYRING_SERVICE, local.instance),
        Backend::File => {
            let path = secrets::file_path(dir, &local.instance);
            let mode = std::fs::metadata(&path).map(|m| m.permissions().mode() & 0o777).unwrap_or(0o600);
            if mode & 0o077 != 0 {
                return Err(Error::LocalConfig(format!(
                    "{} has mode {mode:o}, so others can read the password: chmod 600 it",
                    path.display()
                )));
            }
            path.display().to_string()
        }
    };
    secrets::load(dir, &local.instance, local.secrets)?;
    let overridden = if env("THREATQ_PASSWORD").is_some() { "; THREATQ_PASSWORD is set and overrides it" } else { "" };
    Ok(format!("stored in {place}{overridden}"))
}

/// ThreatQ (sign-in, clock, record, toggle, UI values, data collection), then Devo by the UI's upload method.
async fn remote_checks(dir: &Path, name: &str, local: &LocalConfig, env: Env<'_>, checks: &mut Vec<Check>) {
    let mut check = |area, name: &str, outcome| checks.push(Check::new(area, name, outcome));
    let client = match local.options_for_run(dir, env) {
        Ok(options) => super::run::connect(options).await.map_err(Error::from),
        Err(e) => Err(e),
    };
    let client = match client {
        Ok(client) => {
            check(
                Area::ThreatQ,
                "ThreatQ sign-in",
                Ok(format!("signed in to {} as {}", host(&client), local.username)),
            );
            client
        }
        Err(e) => return check(Area::ThreatQ, "ThreatQ sign-in", Err(e)),
    };
    check(Area::ThreatQ, "ThreatQ clock", clock_skew(&client).await.map_err(Error::from));
    let record = match client.find_connector(name).await {
        Ok(Some(record)) => record,
        Ok(None) => {
            let absent = threatq::Error::NotRegistered { host: host(&client), name: name.to_owned() };
            return check(Area::ThreatQ, "ThreatQ record", Err(absent.into()));
        }
        Err(e) => return check(Area::ThreatQ, "ThreatQ record", Err(e.into())),
    };
    check(Area::ThreatQ, "ThreatQ record", Ok(format!("id {}, version {}", record.id, record.version)));
    let toggle = if record.is_active { "on" } else { "off: runs do nothing until it is switched on in ThreatQ" };
    check(Area::ThreatQ, "Toggle", Ok(toggle.into()));
    let settings = match config::parse_custom_fields(&record.custom_fields) {
        Ok(settings) => settings,
        Err(e) => return check(Area::ThreatQ, "UI configuration", Err(e.into())),
    };
    check(
        Area::ThreatQ,
        "UI configuration",
        Ok(format!("valid: collection {:?} to lookup {}", settings.data_collection_name, settings.lookup_table_name)),
    );
    let collection = client.find_collection(&settings.data_collection_name).await;
    check(Area::ThreatQ, "ThreatQ data collection", collection.map(|c| c.name).map_err(Error::from));
    let Ok(options) = DevoOptions::from_env(env) else { return };
    let table = export::table(&settings.lookup_table_name);
    for probe in devo::preflight(&settings.devo, &options, &table).await {
        check(Area::Devo, probe.check, probe.outcome.map_err(Error::from));
    }
}

fn host(client: &Client) -> String {
    client.base_url().host_str().unwrap_or_default().to_owned()
}

/// How far this host's clock is from ThreatQ's `Date`, which has whole seconds (so 1 s is no skew).
async fn clock_skew(client: &Client) -> Result<String, threatq::Error> {
    let Some(theirs) = client.server_time().await? else {
        return Ok("ThreatQ sent no Date header to compare with".into());
    };
    let seconds = (chrono::Utc::now() - theirs).num_seconds();
    if seconds.abs() > MAX_CLOCK_SKEW_SECONDS {
        return Err(threatq::Error::ClockSkew { host: host(client), seconds });
    }
    Ok(format!("{seconds} s off ThreatQ's"))
}

#[cfg(test)]
mod tests {
    use secrecy::SecretString;

    use super::*;
    use crate::connector::local::tests::env_of;

    fn lines(dir: &Path, cron_dir: &Path, env: Env) -> (String, Option<LocalConfig>) {
        let mut checks = Vec::new();
        let local = local_checks(dir, "inst", cron_dir, env, &mut checks);
        (Report { checks }.lines(), local)
    }

    #[test]
    fn the_local_checks_show_where_things_are_but_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        let cron_dir = tempfile::tempdir().unwrap();
        let none = env_of(&[]);
        let (before, local) = lines(dir.path(), cron_dir.path(), &none);
        assert!(before.contains("FAILED:") && before.contains("absent: run without a subcommand"), "{before}");
        assert_eq!(local, None);
        std::fs::write(local::path(dir.path(), "inst"), "{").unwrap();
        let (damaged, _) = lines(dir.path(), cron_dir.path(), &none);
        assert!(damaged.contains("is damaged") && damaged.contains("Run lock:"), "{damaged}");

        let local = LocalConfig {
            instance: "inst".into(),
            host: None,
            client_id: "cid".into(),
            username: "u".into(),
            status: "Review".into(),
            secrets: Backend::File,
        };
        secrets::store(dir.path(), "inst", Backend::File, &SecretString::from("hunter2".to_owned())).unwrap();
        local.save(dir.path()).unwrap();
        let _guard = lock::acquire(dir.path(), "inst", std::time::Duration::from_secs(60)).unwrap();
        let env = env_of(&[("THREATQ_HOST", "tq.v6")]);
        let (after, found) = lines(dir.path(), cron_dir.path(), &env);
        assert_eq!(found, Some(local));
        assert!(!after.contains("FAILED"), "{after}");
        assert!(after.contains("tq.v6 (from THREATQ_HOST)"), "{after}");
        assert!(after.contains("stored in") && after.contains("inst.secrets.json"), "{after}");
        assert!(after.contains(&format!("held by pid {}", std::process::id())), "{after}");
        assert!(after.contains("absent (write it with --cron"), "{after}");
        assert!(!after.contains("hunter2"));

        let secrets_file = secrets::file_path(dir.path(), "inst");
        std::fs::set_permissions(&secrets_file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (exposed, _) = lines(dir.path(), cron_dir.path(), &env);
        assert!(exposed.contains("mode 644") && exposed.contains("chmod 600"), "{exposed}");
        let (unset, _) = lines(dir.path(), cron_dir.path(), &none);
        assert!(unset.contains("THREATQ_HOST is not set"), "{unset}");
    }

    #[test]
    fn the_first_failure_decides_the_exit_code_and_the_json_says_the_same() {
        let report = || Report {
            checks: vec![
                Check::new(Area::Local, "Local config", Ok("here".into())),
                Check::new(
                    Area::Devo,
                    "Devo lookup",
                    Err(devo::Error::Remote { endpoint: "e".into(), message: "gone".into() }.into()),
                ),
                Check::new(
                    Area::ThreatQ,
                    "UI configuration",
                    Err(crate::field::ConfigError::missing(crate::devo::label::DOMAIN).into()),
                ),
            ],
        };
        let json = report().json();
        assert_eq!((json["ok"].clone(), json["exit_code"].clone()), (json!(false), json!(5)));
        assert_eq!(json["checks"][0], json!({"area": "local", "check": "Local config", "ok": true, "detail": "here"}));
        assert_eq!(json["checks"][2]["exit_code"], 3);
        assert_eq!(report().into_result().unwrap_err().code(), 5);
        let text = report().lines();
        assert!(text.lines().nth(1).unwrap().starts_with("Devo lookup:"), "{text}");
        assert!(text.contains("FAILED: Devo at e: gone"), "{text}");
    }
}
