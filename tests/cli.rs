//! The real binary's command line: help, flag forms, usage errors, generated files, `--cron`, `doctor`, logs.

use std::path::Path;

use assert_cmd::Command;
use predicates::prelude::*;
use predicates::str::contains;

const BIN: &str = "tq-conn-devo-ioc-exporter";

/// The binary, run in `dir` with none of the setup variables of the machine running the tests.
fn bin(dir: &Path) -> Command {
    let mut cmd = assert_cmd::cargo::cargo_bin_cmd!("tq-conn-devo-ioc-exporter");
    cmd.current_dir(dir).timeout(std::time::Duration::from_secs(60));
    for var in ["THREATQ_HOST", "THREATQ_CLIENT_ID", "THREATQ_USERNAME", "THREATQ_PASSWORD", "THREATQ_STATUS"] {
        cmd.env_remove(var);
    }
    cmd.env("TQ_SECRETS_BACKEND", "file");
    cmd
}

fn repo_file(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

#[test]
fn help_names_every_flag_the_exit_codes_and_the_cron_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut help = contains("-ll").and(contains("cron.d")).boxed();
    for flag in ["--loglocation", "--config", "--verbosity", "--name", "--cron ", "--cron-dir", "--dry-run"] {
        help = help.and(contains(flag)).boxed();
    }
    for text in ["--allow-mass-delete", "demo", "doctor", "Preflight", "schema", "manifest", "sandbox", "Exit codes:"] {
        help = help.and(contains(text)).boxed();
    }
    for code in ["0  done", "2  usage", "3  invalid configuration", "4  ThreatQ", "5  Devo", "6  another run", "7  "] {
        help = help.and(contains(code)).boxed();
    }
    let help = help.and(contains("TQ_SECRETS_BACKEND")).and(contains("0 */2 * * *"));
    bin(dir.path()).arg("--help").assert().success().stdout(help);
    bin(dir.path()).arg("-h").assert().success().stdout(contains("-ll DIR").and(contains("Examples:")));
}

#[test]
fn the_seed_verbosity_and_log_forms_parse() {
    let dir = tempfile::tempdir().unwrap();
    for args in [&["-ll", "stdout", "-v3", "doctor"][..], &["-v", "3", "doctor"], &["doctor", "-c", ".", "-v", "2"]] {
        // Parsed: doctor ran (and failed, nothing being set up).
        bin(dir.path()).args(args).assert().code(3).stdout(contains("Local config:"));
    }
}

#[test]
fn a_bad_verbosity_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    bin(dir.path()).args(["-v", "4", "doctor"]).assert().code(2).stderr(contains("--verbosity"));
    bin(dir.path()).args(["-v9"]).assert().code(2);
    bin(dir.path()).args(["-n", "bad.name", "doctor"]).assert().code(2).stderr(contains("-n/--name"));
}

#[test]
fn schema_and_manifest_print_the_committed_files() {
    let dir = tempfile::tempdir().unwrap();
    bin(dir.path()).arg("schema").assert().success().stdout(repo_file("ui-schema/devo-ioc-exporter.schema.json"));
    bin(dir.path()).arg("manifest").assert().success().stdout(repo_file("manifest/tq-conn-devo-ioc-exporter.json"));
}

#[test]
fn a_bad_cron_schedule_says_why_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cron_dir = tempfile::tempdir().unwrap();
    bin(dir.path())
        .args(["--cron", "0 */2 * *", "--cron-dir"])
        .arg(cron_dir.path())
        .assert()
        .code(2)
        .stderr(contains("4 fields").and(contains("five fields")));
    bin(dir.path()).args(["--cron", "0 25 * * *", "--cron-dir"]).arg(cron_dir.path()).assert().code(2);
    assert_eq!(std::fs::read_dir(cron_dir.path()).unwrap().count(), 0);
}

#[test]
fn cron_writes_the_seed_line_commented_out_once() {
    let config = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let cron_dir = tempfile::tempdir().unwrap();
    let install = || {
        let mut cmd = bin(config.path());
        cmd.args(["-c", ".", "-ll"]).arg(logs.path()).args(["-v3", "--cron", "0 */2 * * *", "--cron-dir"]);
        cmd.arg(cron_dir.path());
        cmd
    };
    install().assert().success().stdout(contains("commented out"));
    let file = cron_dir.path().join(BIN);
    let expected = format!(
        "#0 */2 * * * root {} -c {} -ll {} -v3\n",
        assert_cmd::cargo::cargo_bin!("tq-conn-devo-ioc-exporter").canonicalize().unwrap().display(),
        config.path().canonicalize().unwrap().display(),
        logs.path().canonicalize().unwrap().display()
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), expected);
    let written = std::fs::metadata(&file).unwrap().modified().unwrap();

    install().assert().success().stdout(contains("left unchanged"));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), expected);
    assert_eq!(std::fs::metadata(&file).unwrap().modified().unwrap(), written, "an unchanged file is not rewritten");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o644);
}

#[test]
fn cron_needs_an_existing_cron_dir() {
    let dir = tempfile::tempdir().unwrap();
    bin(dir.path())
        .args(["--cron", "@hourly", "--cron-dir", "no-such-dir"])
        .assert()
        .code(2)
        .stderr(contains("no-such-dir"));
}

#[test]
fn doctor_before_setup_says_how_to_set_up_and_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    bin(dir.path())
        .args(["-n", "second", "doctor", "--cron-dir"])
        .arg(dir.path())
        .assert()
        .code(3)
        .stdout(contains("second").and(contains("FAILED: ")).and(contains("absent: run without a subcommand")))
        .stdout(contains("Run lock:"));
}

#[test]
fn logs_go_to_a_daily_file_per_instance() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    // doctor fails here (nothing is set up) but logs like any command.
    bin(dir.path()).args(["-n", "second", "-ll"]).arg(&logs).args(["-v2", "doctor"]).assert().code(3);
    let files: Vec<String> =
        std::fs::read_dir(&logs).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].starts_with("second.") && files[0].ends_with(".log"), "{files:?}");
    let text = std::fs::read_to_string(logs.join(&files[0])).unwrap();
    assert!(text.contains("started") && text.contains("second"), "{text}");

    // -v1 logs warnings only, so the start line stays out.
    let quiet = dir.path().join("quiet");
    std::fs::create_dir(&quiet).unwrap();
    bin(dir.path()).args(["-ll"]).arg(&quiet).args(["-v1", "doctor"]).assert().code(3);
    let quiet_text: String =
        std::fs::read_dir(&quiet).unwrap().map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap()).collect();
    assert!(!quiet_text.contains("started"), "{quiet_text}");
}

/// `--help` and the README's table say what [`Exit`] says, code for code.
#[test]
fn help_and_readme_give_the_exit_codes_of_the_one_definition() {
    use tqdevo::Exit;
    let dir = tempfile::tempdir().unwrap();
    let help = bin(dir.path()).arg("--help").assert().success();
    let help = String::from_utf8_lossy(&help.get_output().stdout).into_owned();
    // clap may wrap long lines; compare with whitespace collapsed.
    let flat = |text: &str| text.split_whitespace().collect::<Vec<_>>().join(" ");
    let readme = repo_file("README.md");
    let table = readme.split("### Exit codes").nth(1).expect("README has an Exit codes section");
    let rows: Vec<(u8, String)> = table
        .lines()
        .skip_while(|l| !l.starts_with("| code"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            (cells[0].parse().unwrap(), cells[1].replace('`', ""))
        })
        .collect();
    assert_eq!(rows.len(), Exit::ALL.len(), "{rows:?}");
    for exit in Exit::ALL {
        assert!(flat(&help).contains(&flat(&format!("{}  {}", exit.code(), exit.meaning()))), "{exit:?} in --help");
        let row = rows.iter().find(|(code, _)| *code == exit.code()).unwrap_or_else(|| panic!("{exit:?} in README"));
        assert_eq!(row.1, exit.meaning().replace('`', ""), "README row for {exit:?}");
    }
}
