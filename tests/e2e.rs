//! End to end: the built binary, run as a user and cron would run it, against the three stand-ins (ThreatQ, the
//! Devo Lookups API, the Devo relay) over real HTTPS and mutual TLS on loopback.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use futures::TryStreamExt as _;
use serde_json::{Value, json};
use tempfile::TempDir;
use tqdevo::connector::config::{CONNECTOR_NAME, definition};
use tqdevo::connector::{cron, local, lock, run, secrets};
use tqdevo::devo::UploadMethod;
use tqdevo::export::map_indicator;
use tqdevo::sandbox::devo_api::DEFAULT_TOKEN;
use tqdevo::sandbox::stage::{self, Ports, Stage};
use tqdevo::sandbox::threatq as tq;
use tqdevo::threatq::{Client, ClientOptions, Indicator};

use crate::binary::{Output, TIMEOUT as COMMAND_TIMEOUT, Test, has, snapshot};

/// Generated IOCs per test: several pages at the UI's Batch Size of 250, a run well under a second.
const IOCS: u64 = 400;
/// What [`Stage::ui_fields`] sets as the UI's "ThreatQ Hostname".
const UI_HOSTNAME: &str = "threatq.example.com";

/// The stand-ins on their own runtime, and the directories one installation of the connector uses (the `doctor`
/// tests use it too).
pub(crate) struct World {
    pub(crate) stage: Stage,
    /// The `-c` directory.
    dir: TempDir,
    cron_dir: TempDir,
    _files: TempDir,
    /// Dropped last: the stand-ins' tasks run on it.
    pub(crate) runtime: tokio::runtime::Runtime,
}

impl World {
    /// The stand-ins with [`IOCS`] generated IOCs plus three pairs of same-value IOCs that exercise the
    /// duplicate rule.
    fn new() -> World {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let files = tempfile::tempdir().unwrap();
        let stage = runtime.block_on(Stage::start(IOCS, Ports::default(), files.path())).unwrap();
        let world = World {
            stage,
            dir: tempfile::tempdir().unwrap(),
            cron_dir: tempfile::tempdir().unwrap(),
            _files: files,
            runtime,
        };
        world.add_duplicates();
        world
    }

    /// The stand-ins, the connector set up from the environment, its UI filled for `method` and the toggle on.
    pub(crate) fn configured(method: UploadMethod) -> World {
        let world = World::new();
        world.run().run();
        world.configure(CONNECTOR_NAME, method, "tq_iocs");
        world
    }

    fn add_duplicates(&self) {
        let ioc = |value: &str, ty: &str, score: u32, updated: &str| {
            self.stage.threatq.upsert_indicator(json!({
                "value": value, "type": {"name": ty}, "status": {"name": "Active"}, "score": score,
                "sources": [{"name": "E2E Feed"}], "created_at": "2024-01-01 00:00:00", "updated_at": updated,
            }));
        };
        // The higher score wins even though it is older.
        ioc("dup-score.example.net", "FQDN", 3, "2024-06-01 00:00:00");
        ioc("dup-score.example.net", "URL", 8, "2024-01-01 00:00:00");
        // Same score: the newer update wins.
        ioc("dup-time.example.net", "FQDN", 5, "2024-01-01 00:00:00");
        ioc("dup-time.example.net", "Filename", 5, "2024-06-01 00:00:00");
        // A full tie: the first seen (lowest id) stays.
        ioc("dup-tie.example.net", "FQDN", 5, "2024-01-01 00:00:00");
        ioc("dup-tie.example.net", "Mutex", 5, "2024-01-01 00:00:00");
    }

    /// The stage's variables (setup answers, CA files, file secrets, no relay pause) with a short job poll.
    pub(crate) fn env(&self) -> HashMap<String, String> {
        let mut env = self.stage.env();
        env.insert("DEVO_JOB_POLL_SECONDS".into(), "0.05".into());
        env
    }

    /// The binary with only `env` (plus PATH and HOME) as its environment: `-c <dir> -ll stdout --cron-dir <tmp>`.
    pub(crate) fn command_with(&self, env: &HashMap<String, String>) -> Test {
        self.command_logging_to(env, Path::new("stdout"))
    }

    /// [`World::command_with`] with `-ll log`.
    fn command_logging_to(&self, env: &HashMap<String, String>, log: &Path) -> Test {
        Test::with_only_env(env, self.dir.path())
            .arg("-c")
            .arg(self.dir.path())
            .arg("-ll")
            .arg(log)
            .arg("--cron-dir")
            .arg(self.cron_dir.path())
    }

    pub(crate) fn run(&self) -> Test {
        self.command_with(&self.env())
    }

    /// What a user does in the integration page: fill the Configuration tab and turn the toggle on.
    fn configure(&self, name: &str, method: UploadMethod, lookup: &str) {
        assert!(self.stage.threatq.set_custom_fields(name, self.stage.ui_fields(method, lookup)));
        assert!(self.stage.threatq.set_active(name, true));
    }

    /// Changes one field of the Configuration tab.
    pub(crate) fn set_field(&self, field: &str, value: &str) {
        let mut fields = self.ui_fields();
        fields.insert(field.into(), value.into());
        assert!(self.stage.threatq.set_custom_fields(CONNECTOR_NAME, fields));
    }

    fn ui_fields(&self) -> BTreeMap<String, String> {
        let record = self.stage.threatq.connector(CONNECTOR_NAME).expect("registered");
        serde_json::from_value(record["custom_fields"].clone()).unwrap()
    }

    fn lookup(&self, method: UploadMethod) -> Option<Vec<Vec<String>>> {
        self.stage.lookup(method, "tq_iocs")
    }

    /// The IOCs of the data collection named `collection`, read from the ThreatQ stand-in in one page.
    fn collection(&self, collection: &str) -> Vec<Indicator> {
        let options = ClientOptions {
            host: self.stage.threatq.host(),
            client_id: tq::DEFAULT_CLIENT_ID.into(),
            username: tq::DEFAULT_EMAIL.into(),
            password: tq::DEFAULT_PASSWORD.into(),
            ca_file: Some(self.stage.threatq_ca_file()),
            tls_verify: true,
        };
        let read = async {
            let client = Client::new(options).unwrap();
            let collection = client.find_collection(collection).await.unwrap();
            client.indicators(&collection, 10_000).try_concat().await.unwrap()
        };
        self.runtime
            .block_on(async { tokio::time::timeout(COMMAND_TIMEOUT, read).await })
            .expect("ThreatQ answered in time")
    }

    /// The lookup the collection should become: one mapped row per IOC value, sorted by value.
    fn expected_rows(&self, collection: &str) -> Vec<Vec<String>> {
        expected_lookup(self.collection(collection))
    }

    fn state_bytes(&self) -> Option<Vec<u8>> {
        std::fs::read(run::state_path(self.dir.path(), CONNECTOR_NAME)).ok()
    }

    fn last_run(&self) -> Value {
        let path = run::last_run_path(self.dir.path(), CONNECTOR_NAME);
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }
}

/// The duplicate rule written out plainly (highest score, then newest `updated_at`, then the first seen by id),
/// on rows made by the exporter's own mapping.
fn expected_lookup(mut iocs: Vec<Indicator>) -> Vec<Vec<String>> {
    iocs.sort_by_key(|i| i.id);
    let score = |i: &Indicator| i.score.as_deref().and_then(|s| s.trim().parse::<f64>().ok()).unwrap_or(f64::MIN);
    let mut best: BTreeMap<String, Indicator> = BTreeMap::new();
    for ioc in iocs {
        let wins = best.get(&ioc.value).is_none_or(|kept| {
            score(&ioc) > score(kept) || (score(&ioc) == score(kept) && ioc.updated_at > kept.updated_at)
        });
        if wins {
            best.insert(ioc.value.clone(), ioc);
        }
    }
    best.values().map(|ioc| map_indicator(ioc, UI_HOSTNAME)).collect()
}

/// The numbers of the run's one-line summary, by name.
fn summary_counts(stdout: &str) -> HashMap<String, u64> {
    let line = stdout.lines().find(|l| l.contains("sync: fetched")).unwrap_or_else(|| panic!("no summary in {stdout}"));
    line.split(", ")
        .filter_map(|part| {
            let mut words = part.rsplit(' ');
            let number = words.next()?.parse().ok()?;
            Some((words.next()?.to_owned(), number))
        })
        .collect()
}

fn output_of(output: &Output) -> String {
    format!("{}{}", output.stdout, output.stderr)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn setup_from_the_environment_registers_the_connector_and_keeps_the_password_private() {
    let world = World::new();
    world.run().stdout(has("Connector configured. Set information in UI")).run();

    let record = world.stage.threatq.connector(CONNECTOR_NAME).expect("the connector registered itself");
    assert_eq!(record["category"]["name"], "Labs");
    assert_eq!(record["is_active"], false, "a new connector waits for the user's toggle");
    assert_eq!(record["user_fields"], serde_json::to_value(definition(None).user_fields).unwrap());

    let config = local::path(world.dir.path(), CONNECTOR_NAME);
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains(&world.stage.threatq.host()) && text.contains(tq::DEFAULT_EMAIL), "{text}");
    assert!(!text.contains(tq::DEFAULT_PASSWORD), "the local config holds no password: {text}");
    assert_eq!(mode(&config), 0o600);
    let secrets = secrets::file_path(world.dir.path(), CONNECTOR_NAME);
    assert!(std::fs::read_to_string(&secrets).unwrap().contains(tq::DEFAULT_PASSWORD));
    assert_eq!(mode(&secrets), 0o600);
    assert_eq!(world.last_run()["status"], "configured");
}

/// A private D-Bus session bus with an unlocked gnome-keyring on it: the secret service of a desktop, here
/// without one. Both daemons are stopped when it is dropped.
struct SecretService {
    bus_address: String,
    pids: Vec<i32>,
}

impl SecretService {
    fn start(home: &Path) -> SecretService {
        let missing = "dbus-daemon and gnome-keyring-daemon are needed: run scripts/setup-test-deps";
        let bus = std::process::Command::new("dbus-daemon")
            .args(["--session", "--fork", "--print-address=1", "--print-pid=1"])
            .output()
            .expect(missing);
        let printed = String::from_utf8_lossy(&bus.stdout).into_owned();
        let mut lines = printed.lines();
        let (Some(bus_address), Some(pid)) = (lines.next(), lines.next()) else {
            panic!("dbus-daemon said {printed:?}")
        };
        let mut service =
            SecretService { bus_address: bus_address.to_owned(), pids: vec![pid.trim().parse().unwrap()] };
        let mut keyring = std::process::Command::new("gnome-keyring-daemon")
            .args(["--unlock", "--components=secrets", "--daemonize"])
            .env("DBUS_SESSION_BUS_ADDRESS", &service.bus_address)
            .env("HOME", home)
            .env("XDG_DATA_HOME", home.join("data"))
            .env("XDG_RUNTIME_DIR", home)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect(missing);
        // The login keyring's password, on stdin; the daemon prints its environment and forks.
        std::io::Write::write_all(&mut keyring.stdin.take().unwrap(), b"e2e-unlock").unwrap();
        let output = keyring.wait_with_output().unwrap();
        let printed = String::from_utf8_lossy(&output.stdout);
        service.pids.extend(printed.lines().filter_map(|l| l.strip_prefix("GNOME_KEYRING_PID=")?.parse::<i32>().ok()));
        // The daemon forks before it owns its bus name; a run that asked earlier would find no keyring (seen on a
        // loaded machine), so wait, at most 20 s, until the name has an owner.
        let owned = || {
            std::process::Command::new("dbus-send")
                .args(["--session", "--print-reply", "--dest=org.freedesktop.DBus", "/org/freedesktop/DBus"])
                .args(["org.freedesktop.DBus.NameHasOwner", "string:org.freedesktop.secrets"])
                .env("DBUS_SESSION_BUS_ADDRESS", &service.bus_address)
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("boolean true"))
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !owned() {
            assert!(std::time::Instant::now() < deadline, "gnome-keyring-daemon never owned org.freedesktop.secrets");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        service
    }
}

impl Drop for SecretService {
    fn drop(&mut self) {
        for pid in &self.pids {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), nix::sys::signal::Signal::SIGTERM);
        }
    }
}

/// Where a secret service answers, the password goes to the OS keyring, not to a file, and a later run signs in
/// with it (no THREATQ_PASSWORD, no secrets file).
#[test]
fn with_a_secret_service_the_password_lives_in_the_os_keyring() {
    let world = World::new();
    let service = SecretService::start(world.dir.path());
    let mut env = world.env();
    env.remove("TQ_SECRETS_BACKEND");
    env.insert("DBUS_SESSION_BUS_ADDRESS".into(), service.bus_address.clone());
    world.command_with(&env).stdout(has("Connector configured. Set information in UI")).run();
    assert!(!secrets::file_path(world.dir.path(), CONNECTOR_NAME).exists(), "no secrets file beside a keyring");
    let config = std::fs::read_to_string(local::path(world.dir.path(), CONNECTOR_NAME)).unwrap();
    assert!(config.contains("\"keyring\""), "{config}");

    world.configure(CONNECTOR_NAME, UploadMethod::LookupsApi, "tq_iocs");
    env.remove("THREATQ_PASSWORD");
    world.command_with(&env).stdout(has("full sync")).run();
    world.command_with(&env).arg("doctor").stdout(has("keyring")).run();
}

#[test]
fn setup_from_piped_answers_hides_the_password_and_later_runs_use_the_stored_one() {
    let world = World::new();
    let only_trust: HashMap<String, String> =
        world.env().into_iter().filter(|(k, _)| !k.starts_with("THREATQ_") || k == "THREATQ_CA_FILE").collect();
    let answers = format!(
        "{}\n{}\n{}\n{}\nReview\n",
        world.stage.threatq.host(),
        tq::DEFAULT_CLIENT_ID,
        tq::DEFAULT_EMAIL,
        tq::DEFAULT_PASSWORD
    );
    let setup = world.command_with(&only_trust).stdin(answers).run();
    let stdout = &setup.stdout;
    for prompt in ["ThreatQ Host:", "ThreatQ Client ID:", "ThreatQ Username:", "ThreatQ Password:", "Status:"] {
        assert!(stdout.contains(prompt), "{prompt} missing from {stdout}");
    }
    assert!(stdout.contains("Connector configured. Set information in UI"), "{stdout}");
    assert!(!output_of(&setup).contains(tq::DEFAULT_PASSWORD), "the password was echoed: {stdout}");

    world.configure(CONNECTOR_NAME, UploadMethod::LookupsApi, "tq_iocs");
    world.command_with(&only_trust).stdin("").stdout(has("full sync")).run();
    assert_eq!(world.lookup(UploadMethod::LookupsApi), Some(world.expected_rows(stage::COLLECTION)));
}

#[test]
fn a_run_while_disabled_says_so_and_leaves_devo_untouched() {
    let world = World::new();
    world.run().run();
    world.stage.threatq.set_custom_fields(CONNECTOR_NAME, world.stage.ui_fields(UploadMethod::LookupsApi, "tq_iocs"));
    world.run().stdout(has("disabled in ThreatQ")).run();
    assert!(world.stage.devo_api.requests().is_empty(), "{:?}", world.stage.devo_api.requests());
    assert_eq!(world.lookup(UploadMethod::LookupsApi), None);
    assert_eq!(world.state_bytes(), None);
    assert_eq!(world.last_run()["status"], "disabled");
}

/// A configured run makes the lookup equal to the collection and reports it locally and to ThreatQ.
fn a_run_exports_the_collection(method: UploadMethod) {
    let world = World::configured(method);
    // ThreatQ keeps whole seconds, so a second of slack.
    let before = (chrono::Utc::now() - chrono::Duration::seconds(1)).naive_utc();
    let stdout = world.run().run().stdout;

    let expected = world.expected_rows(stage::COLLECTION);
    for value in ["dup-score.example.net", "dup-time.example.net", "dup-tie.example.net"] {
        assert!(expected.iter().any(|row| row[0] == value), "{value} is in the collection");
    }
    let lookup = world.lookup(method).expect("the lookup was created");
    assert_eq!(lookup.len(), expected.len());
    assert_eq!(lookup, expected);
    let winner = |value: &str| lookup.iter().find(|row| row[0] == value).map(|row| row[1].clone());
    assert_eq!(winner("dup-score.example.net").as_deref(), Some("URL"));
    assert_eq!(winner("dup-time.example.net").as_deref(), Some("Filename"));
    assert_eq!(winner("dup-tie.example.net").as_deref(), Some("FQDN"));

    let counts = summary_counts(&stdout);
    assert_eq!(counts["unique"], expected.len() as u64);
    assert_eq!(counts["added"], expected.len() as u64);
    assert_eq!(counts["duplicates"], 3);
    assert_eq!(counts["fetched"], expected.len() as u64 + 3);

    let report = world.last_run();
    assert_eq!(report["status"], "ok");
    assert_eq!(report["instance"], CONNECTOR_NAME);
    assert_eq!(report["summary"]["action"], "full");
    assert_eq!(report["summary"]["unique"], expected.len() as u64);
    assert_eq!(report["summary"]["sent"], expected.len() as u64);

    let record = world.stage.threatq.connector(CONNECTOR_NAME).unwrap();
    assert_eq!(record["last_import_count"], expected.len() as u64);
    let at = record["last_import_at"].as_str().expect("last_import_at set");
    let at = chrono::NaiveDateTime::parse_from_str(at, "%Y-%m-%d %H:%M:%S")
        .or_else(|_| chrono::DateTime::parse_from_rfc3339(at).map(|t| t.naive_utc()))
        .unwrap_or_else(|e| panic!("last_import_at {at:?}: {e}"));
    assert!(at >= before, "last_import_at {at} is from this run");

    // Nothing changed in ThreatQ: the next run sends nothing and the lookup stays.
    let again = summary_counts(&world.run().run().stdout);
    assert_eq!((again["added"], again["changed"], again["deleted"]), (0, 0, 0));
    assert_eq!(world.lookup(method), Some(expected));
}

#[test]
fn a_run_exports_the_collection_by_the_lookups_api() {
    a_run_exports_the_collection(UploadMethod::LookupsApi);
}

#[test]
fn a_run_exports_the_collection_by_the_relay() {
    a_run_exports_the_collection(UploadMethod::Relay);
}

#[test]
fn an_invalid_ui_value_exits_3_naming_its_label() {
    let world = World::configured(UploadMethod::LookupsApi);
    for (field, value, label) in
        [("batch_size", "0", "Batch Size"), ("lookup_table_name", "bad-name", "Lookup Table Name")]
    {
        let fields = world.stage.ui_fields(UploadMethod::LookupsApi, "tq_iocs");
        world.stage.threatq.set_custom_fields(CONNECTOR_NAME, fields);
        world.set_field(field, value);
        world.run().status(3).stderr(has(label)).run();
        assert_eq!(world.last_run()["exit_code"], 3);
    }
    assert!(world.stage.devo_api.requests().is_empty(), "Devo is not called with a bad configuration");
}

#[test]
fn a_held_lock_exits_6_naming_the_holder() {
    let world = World::configured(UploadMethod::LookupsApi);
    let guard = lock::acquire(world.dir.path(), CONNECTOR_NAME, Duration::from_secs(3600)).unwrap();
    world.run().status(6).stderr(has(format!("pid {}", std::process::id()))).run();
    assert_eq!(world.lookup(UploadMethod::LookupsApi), None, "the refused run sent nothing");
    drop(guard);
    world.run().run();
}

#[test]
fn a_lock_left_by_a_dead_run_is_taken_over() {
    let world = World::configured(UploadMethod::LookupsApi);
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = gone.id();
    gone.wait().unwrap();
    let lock_file = lock::path(world.dir.path(), CONNECTOR_NAME);
    let started_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    std::fs::write(&lock_file, json!({"pid": dead_pid, "started_at": started_at}).to_string()).unwrap();

    world.run().stdout(has("full sync")).run();
    assert!(world.lookup(UploadMethod::LookupsApi).is_some());
    let holder: Value = serde_json::from_str(&std::fs::read_to_string(&lock_file).unwrap()).unwrap();
    assert_ne!(holder["pid"], dead_pid, "the run wrote itself into the lock file");
}

#[test]
fn the_cron_line_is_written_commented_out_and_the_first_configured_run_enables_it() {
    let world = World::new();
    world.run().args(["--cron", "0 */2 * * *"]).stdout(has("commented out")).run();
    let file = cron::path(world.cron_dir.path(), CONNECTOR_NAME);
    let written = std::fs::read_to_string(&file).unwrap();
    let config_dir = world.dir.path().canonicalize().unwrap();
    assert!(written.starts_with("#0 */2 * * * root "), "{written}");
    assert!(written.contains(&format!(" -c {} -ll stdout", config_dir.display())), "{written}");

    world.run().stdout(has("Connector configured")).run();
    world.run().stdout(has("disabled in ThreatQ")).run();
    assert_eq!(std::fs::read_to_string(&file).unwrap(), written, "still commented out while disabled");

    world.configure(CONNECTOR_NAME, UploadMethod::LookupsApi, "tq_iocs");
    world.run().run();
    assert_eq!(std::fs::read_to_string(&file).unwrap(), written.trim_start_matches('#'));
}

#[test]
fn threatq_failures_exit_4() {
    let world = World::configured(UploadMethod::LookupsApi);
    let mut wrong_password = world.env();
    wrong_password.insert("THREATQ_PASSWORD".into(), "not-the-password".into());
    world.command_with(&wrong_password).status(4).stderr(has("refused the sign-in")).run();

    world.set_field("data_collection_name", "Devo Exprot");
    world
        .run()
        .status(4)
        .stderr(has("no ThreatQ data collection is named \"Devo Exprot\""))
        .stderr(has(stage::COLLECTION))
        .run();
    assert_eq!(world.lookup(UploadMethod::LookupsApi), None);
    assert_eq!(world.last_run()["exit_code"], 4);
}

#[test]
fn a_failed_devo_job_exits_5_keeps_no_state_and_the_next_run_converges() {
    let world = World::configured(UploadMethod::LookupsApi);
    world.stage.devo_api.fail_next_job("the lookup quota is exhausted");
    world.run().status(5).stderr(has("the lookup quota is exhausted")).run();
    assert_eq!(world.state_bytes(), None, "no state without Devo's acceptance");
    assert_eq!(world.last_run()["exit_code"], 5);

    world.run().run();
    assert_eq!(world.lookup(UploadMethod::LookupsApi), Some(world.expected_rows(stage::COLLECTION)));
}

#[test]
fn a_relay_that_drops_every_connection_exits_5() {
    let world = World::configured(UploadMethod::Relay);
    world.stage.relay.set_faults(tqdevo::sandbox::relay::Faults { refuse_handshake: true, ..Default::default() });
    world.run().status(5).stderr(has("Devo at 127.0.0.1:")).run();
    assert_eq!(world.lookup(UploadMethod::Relay), None);
    assert_eq!(world.state_bytes(), None);
}

/// A token Devo refuses is a value the user must fix in the UI, so it is a configuration error that names the field.
#[test]
fn a_refused_devo_token_exits_3_naming_the_field() {
    let world = World::configured(UploadMethod::LookupsApi);
    world.stage.devo_api.set_token("a-rotated-token");
    world.run().status(3).stderr(has("\"Devo API Token\"")).stderr(has("401")).run();
    assert_eq!(world.lookup(UploadMethod::LookupsApi), None);
    assert_eq!(world.state_bytes(), None);
}

#[test]
fn the_mass_delete_guard_exits_7_until_allowed() {
    let world = World::configured(UploadMethod::Relay);
    world.run().run();
    let full = world.lookup(UploadMethod::Relay).unwrap();
    world.stage.threatq.set_generated(IOCS / 4);

    world.run().status(7).stderr(has("Mass-Delete Guard")).stderr(has("--allow-mass-delete")).run();
    assert_eq!(world.lookup(UploadMethod::Relay), Some(full.clone()), "the refused run sent nothing");
    assert_eq!(world.last_run()["exit_code"], 7);

    let stdout = world.run().arg("--allow-mass-delete").run().stdout;
    let expected = world.expected_rows(stage::COLLECTION);
    assert_eq!(summary_counts(&stdout)["deleted"], (full.len() - expected.len()) as u64);
    assert_eq!(world.lookup(UploadMethod::Relay), Some(expected));
}

#[test]
fn a_dry_run_sends_nothing_and_keeps_the_state() {
    let world = World::configured(UploadMethod::LookupsApi);
    world.run().run();
    let (lookup, state, report) = (world.lookup(UploadMethod::LookupsApi), world.state_bytes(), world.last_run());
    let requests = world.stage.devo_api.requests().len();
    world.stage.threatq.upsert_indicator(json!({
        "value": "dry-run.example.net", "type": {"name": "FQDN"}, "status": {"name": "Active"}, "score": 4,
        "created_at": "2024-01-01 00:00:00", "updated_at": "2024-01-01 00:00:00",
    }));

    let stdout = world.run().arg("--dry-run").run().stdout;
    assert!(stdout.contains("dry run of an incremental sync"), "{stdout}");
    assert!(stdout.lines().any(|l| l.trim_start().starts_with("add") && l.contains("dry-run.example.net")), "{stdout}");
    assert!(stdout.contains("nothing was sent to Devo"), "{stdout}");
    assert_eq!(summary_counts(&stdout)["added"], 1);
    assert_eq!(world.stage.devo_api.requests().len(), requests, "a dry run makes no Devo request");
    assert_eq!(world.lookup(UploadMethod::LookupsApi), lookup);
    assert_eq!(world.state_bytes(), state);
    assert_eq!(world.last_run(), report, "a dry run leaves the last-run report");
}

#[test]
fn secrets_stay_out_of_the_output_at_v3() {
    let world = World::new();
    let relay = "e2e-relay";
    let mut outputs = vec![output_of(&world.run().arg("-v3").run())];
    outputs.push(output_of(&world.run().args(["-v3", "-n", relay]).run()));
    world.configure(CONNECTOR_NAME, UploadMethod::LookupsApi, "tq_iocs");
    world.configure(relay, UploadMethod::Relay, "tq_iocs_relay");
    outputs.push(output_of(&world.run().arg("-v3").run()));
    outputs.push(output_of(&world.run().args(["-v3", "-n", relay]).run()));
    assert!(world.stage.lookup(UploadMethod::Relay, "tq_iocs_relay").is_some_and(|rows| !rows.is_empty()));
    assert!(outputs.iter().any(|o| o.contains("DEBUG")), "-v3 logs debug lines");

    let private_key = world.stage.relay.client_cert().key_pem;
    let key_lines = private_key.lines().filter(|l| !l.starts_with("-----") && l.len() > 16);
    let mut secrets: Vec<String> = vec![tq::DEFAULT_PASSWORD.into(), DEFAULT_TOKEN.into()];
    secrets.extend(key_lines.map(str::to_owned));
    secrets.extend(world.stage.threatq.live_tokens());
    for output in &outputs {
        for secret in &secrets {
            assert!(!output.contains(secret.as_str()), "a secret reached the output: {output}");
        }
    }
}

#[test]
fn demo_output() {
    let home = tempfile::tempdir().unwrap();
    Test::with_only_env(&HashMap::new(), home.path()).arg("demo").stdout(snapshot("demo")).stderr("").run();
}

/// What a run added to the daily log files in `dir`, and the log text before it.
struct LogFiles(std::path::PathBuf);

impl LogFiles {
    fn text(&self) -> String {
        let mut files: Vec<_> = std::fs::read_dir(&self.0).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        files.iter().map(|f| std::fs::read_to_string(f).unwrap()).collect()
    }
}

/// Runs `test`, which logs to `log`; returns what it added to the log, and stderr.
fn recorded(test: Test, log: &LogFiles) -> (String, String) {
    let before = log.text();
    let output = test.run();
    let after = log.text();
    assert!(after.starts_with(&before), "the log only grows");
    (after[before.len()..].to_owned(), output.stderr)
}

/// Issue 10, point 1: each outcome is in the log file (`-ll DIR`, at the default -v1), in `last-run.json`, and
/// for failures on stderr, which cron mails.
#[test]
fn every_outcome_is_recorded_in_the_log_file_last_run_json_and_stderr() {
    let world = World::new();
    let logs = tempfile::tempdir().unwrap();
    let log = LogFiles(logs.path().to_owned());
    let run_env = |env: &HashMap<String, String>| world.command_logging_to(env, logs.path());
    let run = || run_env(&world.env());
    // The stderr of each failing exit code, and the stdout of the two quiet successes, are snapshots too.
    let check_ok = |test: Test, status: &str, says: &str| {
        let (logged, _) = recorded(test.stderr(""), &log);
        assert!(logged.lines().any(|l| l.contains(" INFO ") && l.contains(says)), "{status}: {logged}");
        assert!(!logged.contains("ERROR"), "{logged}");
        assert_eq!(world.last_run()["status"], status);
    };
    let check_failed = |test: Test, expected: u8, says: &str, name: &str| {
        let test = test.status(expected.into()).stderr(has(says)).stderr(snapshot(&format!("exit_{expected}_{name}")));
        let (logged, _) = recorded(test, &log);
        let line = logged.lines().find(|l| l.contains(" ERROR ")).unwrap_or_else(|| panic!("no ERROR line: {logged}"));
        assert!(line.contains(says) && line.contains(&format!("exit_code={expected}")), "{line}");
        let report = world.last_run();
        assert_eq!((report["status"].as_str(), report["exit_code"].as_u64()), (Some("failed"), Some(expected.into())));
        assert!(report["error"].as_str().unwrap().contains(says), "{report}");
    };

    check_ok(run().stdout(snapshot("exit_0_configured")), "configured", "Connector configured");
    check_ok(run().stdout(""), "disabled", "disabled in ThreatQ");
    world.configure(CONNECTOR_NAME, UploadMethod::LookupsApi, "tq_iocs");
    check_ok(run(), "ok", "sync: fetched");

    world.set_field("batch_size", "0");
    check_failed(run(), 3, "Batch Size", "invalid_configuration");
    world.set_field("batch_size", "250");
    let mut wrong_password = world.env();
    wrong_password.insert("THREATQ_PASSWORD".into(), "not-the-password".into());
    check_failed(run_env(&wrong_password), 4, "refused the sign-in", "threatq");
    world.stage.threatq.upsert_indicator(json!({"value": "record.example.net", "type": "FQDN", "status": "Active"}));
    world.stage.devo_api.fail_next_job("the lookup quota is exhausted");
    check_failed(run(), 5, "the lookup quota is exhausted", "devo");
    let guard = lock::acquire(world.dir.path(), CONNECTOR_NAME, Duration::from_secs(3600)).unwrap();
    check_failed(run(), 6, "holds the lock", "lock_held");
    drop(guard);
    // A state that cannot be replaced (a directory in its place) is neither side's fault: exit 1.
    let state = run::state_path(world.dir.path(), CONNECTOR_NAME);
    std::fs::remove_file(&state).ok();
    std::fs::create_dir_all(state.join("in-the-way")).unwrap();
    check_failed(run(), 1, ".state", "other");
    std::fs::remove_dir_all(&state).unwrap();
    check_ok(run(), "ok", "sync: fetched");
    world.stage.threatq.set_generated(IOCS / 4);
    check_failed(run(), 7, "Mass-Delete Guard", "mass_delete_guard");

    // A usage error happens before the log or the config directory are known: stderr only, nothing else moves.
    let report = world.last_run();
    let usage = run().arg("--no-such-flag").status(2).stdout("").stderr(has("--no-such-flag"));
    let (logged, _) = recorded(usage.stderr(snapshot("exit_2_usage_unknown_flag")), &log);
    assert_eq!(logged, "");
    assert_eq!(world.last_run(), report);
}

/// Issue 10, point 1: a run stopped by SIGTERM says so in the log, in `last-run.json` (`"status": "stopped"`,
/// the signal) and on stderr.
#[test]
fn a_stopped_run_is_recorded_as_stopped() {
    let world = World::configured(UploadMethod::Relay);
    let logs = tempfile::tempdir().unwrap();
    let log = LogFiles(logs.path().to_owned());
    let mut env = world.env();
    // A long pause after START keeps the run inside its upload until the signal comes.
    env.insert("DEVO_RELAY_DELAY_SECONDS".into(), "60".into());
    let mut cmd = world.command_logging_to(&env, logs.path()).command();
    cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
    // The run is in its upload once ThreatQ served the last page (of the stage's 250).
    let last_page = format!("offset={}&", (world.collection(stage::COLLECTION).len() - 1) / 250 * 250);
    world.stage.threatq.clear_requests();
    let child = cmd.spawn().unwrap();
    let deadline = std::time::Instant::now() + COMMAND_TIMEOUT;
    let served = || {
        world.stage.threatq.requests().iter().any(|r| r.path.contains("/indicators") && r.query.contains(&last_page))
    };
    while !served() {
        assert!(std::time::Instant::now() < deadline, "the run never read the last page");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(500));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("stopped by SIGTERM"), "{stderr}");
    let logged = log.text();
    assert!(logged.lines().any(|l| l.contains(" ERROR ") && l.contains("stopped by SIGTERM")), "{logged}");
    let report = world.last_run();
    assert_eq!((report["status"].as_str(), report["signal"].as_str()), (Some("stopped"), Some("SIGTERM")), "{report}");
    assert_eq!(world.lookup(UploadMethod::Relay), None, "the stopped upload applied nothing");
}

/// `sandbox` runs until stopped: Ctrl-C or SIGTERM ends it with exit 0 and no error (it used to race two handlers,
/// one of which reported a stopped run). It needs ports 8443 and 8444; where they are taken the test says so and
/// skips.
#[test]
fn sandbox_ends_cleanly_when_stopped() {
    use nix::sys::signal::Signal;
    use std::io::BufRead as _;
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        if [8443, 8444].iter().any(|port| std::net::TcpListener::bind(("127.0.0.1", *port)).is_err()) {
            eprintln!("skipped: port 8443 or 8444 is taken on this machine");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new(crate::binary::path())
            .args(["sandbox", "--iocs", "50"])
            .env("TMPDIR", tmp.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Bounded by the sandbox's own output: it ends with this line once the stand-ins listen.
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = stdout.by_ref().map_while(Result::ok).any(|line| line.starts_with("The UI form is filled"));
        assert!(ready, "the sandbox never said it was ready");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
        let deadline = std::time::Instant::now() + COMMAND_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(std::time::Instant::now() < deadline, "the sandbox did not stop on {signal}");
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert_eq!(status.code(), Some(0), "{signal}: {stderr}");
        assert!(!stderr.contains("error"), "{signal}: {stderr}");
    }
}

/// Issue 10, point 7: a config directory or secrets file others may write is refused (exit 3, with the `chmod`),
/// and symbolic links planted for the lock, the state and the pending mark are never written through.
#[test]
fn local_files_hold_their_ground() {
    let world = World::configured(UploadMethod::LookupsApi);
    let dir = world.dir.path();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o775)).unwrap();
    world.run().status(3).stderr(has(format!("chmod go-w {}", dir.display()))).run();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let secrets = secrets::file_path(dir, CONNECTOR_NAME);
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o666)).unwrap();
    world.run().status(3).stderr(has(format!("chmod go-w {}", secrets.display()))).run();
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(world.lookup(UploadMethod::LookupsApi), None, "the refused runs sent nothing");

    let victim = world._files.path().join("victim");
    std::fs::write(&victim, "not the connector's").unwrap();
    let lock_file = lock::path(dir, CONNECTOR_NAME);
    std::fs::remove_file(&lock_file).ok();
    std::os::unix::fs::symlink(&victim, &lock_file).unwrap();
    world.run().status(3).stderr(has("is a symbolic link")).run();
    std::fs::remove_file(&lock_file).unwrap();

    let state = run::state_path(dir, CONNECTOR_NAME);
    std::os::unix::fs::symlink(&victim, &state).unwrap();
    world.run().run();
    assert!(!std::fs::symlink_metadata(&state).unwrap().file_type().is_symlink(), "the state replaced the link");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "not the connector's");
    assert_eq!(world.lookup(UploadMethod::LookupsApi), Some(world.expected_rows(stage::COLLECTION)));
}

/// Issue 10, point 3: a cron file that cannot be enabled (here edited by hand) is an ERROR in the log and a FAILED
/// line in `doctor`, and the run still exports; the file is left as the admin wrote it.
#[test]
fn a_cron_file_that_cannot_be_enabled_is_logged_and_shown_by_doctor_and_the_run_still_exports() {
    let world = World::new();
    world.run().args(["--cron", "0 */2 * * *"]).run();
    world.run().stdout(has("Connector configured")).run();
    let file = cron::path(world.cron_dir.path(), CONNECTOR_NAME);
    let edited = format!("{}# kept off until the change window -- admin\n", std::fs::read_to_string(&file).unwrap());
    std::fs::write(&file, &edited).unwrap();
    world.configure(CONNECTOR_NAME, UploadMethod::LookupsApi, "tq_iocs");

    let stdout = world.run().run().stdout;
    let error = stdout.lines().find(|l| l.contains("ERROR")).unwrap_or_else(|| panic!("no ERROR line: {stdout}"));
    assert!(error.contains("cron") && error.contains("edited by hand"), "{error}");
    assert_eq!(world.lookup(UploadMethod::LookupsApi), Some(world.expected_rows(stage::COLLECTION)));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), edited);

    let doctor = world.run().arg("doctor").status(1).run().stdout;
    let line = doctor.lines().find(|l| l.starts_with("Cron activation")).unwrap_or_else(|| panic!("{doctor}"));
    assert!(line.contains("FAILED:") && line.contains("edited by hand"), "{line}");
    std::fs::write(&file, edited.lines().next().unwrap().to_owned() + "\n").unwrap();
    let doctor = world.run().arg("doctor").run().stdout;
    assert!(doctor.lines().any(|l| l.starts_with("Cron activation") && l.ends_with("ok")), "{doctor}");
}
