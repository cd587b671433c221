//! The real binary's command line: help, flag forms, usage errors, generated files, `--cron`, `doctor`, logs.

use std::path::Path;

use crate::binary::{BIN, Test, has, snapshot};

fn repo_file(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

#[test]
fn help_names_every_flag_the_exit_codes_and_the_cron_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut help = Test::in_dir(dir.path()).arg("--help").stdout(has("-ll")).stdout(has("cron.d"));
    for flag in ["--loglocation", "--config", "--verbosity", "--name", "--cron ", "--cron-dir", "--dry-run"] {
        help = help.stdout(has(flag));
    }
    for text in ["--allow-mass-delete", "demo", "doctor", "Preflight", "schema", "manifest", "sandbox", "Exit codes:"] {
        help = help.stdout(has(text));
    }
    for code in ["0  done", "2  usage", "3  invalid configuration", "4  ThreatQ", "5  Devo", "6  another run", "7  "] {
        help = help.stdout(has(code));
    }
    help.stdout(has("TQ_SECRETS_BACKEND")).stdout(has("0 */2 * * *")).stdout(snapshot("help")).stderr("").run();
    Test::in_dir(dir.path())
        .arg("-h")
        .stdout(has("-ll DIR"))
        .stdout(has("Examples:"))
        .stdout(snapshot("short_help"))
        .run();
}

#[test]
fn the_seed_verbosity_and_log_forms_parse() {
    let dir = tempfile::tempdir().unwrap();
    for args in [&["-ll", "stdout", "-v3", "doctor"][..], &["-v", "3", "doctor"], &["doctor", "-c", ".", "-v", "2"]] {
        // Parsed: doctor ran (and failed, nothing being set up).
        Test::in_dir(dir.path()).args(args).status(3).stdout(has("Local config:")).run();
    }
}

#[test]
fn a_bad_verbosity_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    Test::in_dir(dir.path()).args(["-v", "4", "doctor"]).status(2).stderr(has("--verbosity")).run();
    Test::in_dir(dir.path()).args(["-v9"]).status(2).stdout("").stderr(snapshot("exit_2_usage")).run();
    Test::in_dir(dir.path()).args(["-n", "bad.name", "doctor"]).status(2).stderr(has("-n/--name")).run();
}

#[test]
fn schema_and_manifest_print_the_committed_files() {
    let dir = tempfile::tempdir().unwrap();
    Test::in_dir(dir.path()).arg("schema").stdout(repo_file("ui-schema/devo-ioc-exporter.schema.json")).run();
    Test::in_dir(dir.path()).arg("manifest").stdout(repo_file("manifest/tq-conn-devo-ioc-exporter.json")).run();
}

#[test]
fn a_bad_cron_schedule_says_why_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cron_dir = tempfile::tempdir().unwrap();
    Test::in_dir(dir.path())
        .args(["--cron", "0 */2 * *", "--cron-dir"])
        .arg(cron_dir.path())
        .status(2)
        .stderr(has("4 fields"))
        .stderr(has("five fields"))
        .run();
    Test::in_dir(dir.path()).args(["--cron", "0 25 * * *", "--cron-dir"]).arg(cron_dir.path()).status(2).run();
    assert_eq!(std::fs::read_dir(cron_dir.path()).unwrap().count(), 0);
}

#[test]
fn cron_writes_the_seed_line_commented_out_once() {
    let config = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let cron_dir = tempfile::tempdir().unwrap();
    let file = cron_dir.path().join(BIN);
    let expected = format!(
        "#0 */2 * * * root {} -c {} -ll {} -v3\n",
        crate::binary::path().canonicalize().unwrap().display(),
        config.path().canonicalize().unwrap().display(),
        logs.path().canonicalize().unwrap().display()
    );
    let install = || {
        Test::in_dir(config.path())
            .args(["-c", ".", "-ll"])
            .arg(logs.path())
            .args(["-v3", "--cron", "0 */2 * * *", "--cron-dir"])
            .arg(cron_dir.path())
            .file(&file, expected.as_str())
    };
    install().stdout(has("commented out")).run();
    let written = std::fs::metadata(&file).unwrap().modified().unwrap();

    install().stdout(has("left unchanged")).run();
    assert_eq!(std::fs::metadata(&file).unwrap().modified().unwrap(), written, "an unchanged file is not rewritten");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o644);
}

#[test]
fn cron_needs_an_existing_cron_dir() {
    let dir = tempfile::tempdir().unwrap();
    Test::in_dir(dir.path())
        .args(["--cron", "@hourly", "--cron-dir", "no-such-dir"])
        .status(2)
        .stderr(has("no-such-dir"))
        .run();
}

#[test]
fn doctor_before_setup_says_how_to_set_up_and_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    Test::in_dir(dir.path())
        .args(["-n", "second", "doctor", "--cron-dir"])
        .arg(dir.path())
        .status(3)
        .stdout(has("second"))
        .stdout(has("FAILED: "))
        .stdout(has("absent: run without a subcommand"))
        .stdout(has("Run lock:"))
        .stdout(snapshot("doctor_before_setup"))
        .run();
}

#[test]
fn logs_go_to_a_daily_file_per_instance() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    // doctor fails here (nothing is set up) but logs like any command.
    Test::in_dir(dir.path()).args(["-n", "second", "-ll"]).arg(&logs).args(["-v2", "doctor"]).status(3).run();
    let files: Vec<String> =
        std::fs::read_dir(&logs).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].starts_with("second.") && files[0].ends_with(".log"), "{files:?}");
    let text = std::fs::read_to_string(logs.join(&files[0])).unwrap();
    assert!(text.contains("started") && text.contains("second"), "{text}");

    // -v1 logs warnings only, so the start line stays out.
    let quiet = dir.path().join("quiet");
    std::fs::create_dir(&quiet).unwrap();
    Test::in_dir(dir.path()).args(["-ll"]).arg(&quiet).args(["-v1", "doctor"]).status(3).run();
    let quiet_text: String =
        std::fs::read_dir(&quiet).unwrap().map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap()).collect();
    assert!(!quiet_text.contains("started"), "{quiet_text}");
}

/// `--help` and the README's table say what [`Exit`] says, code for code.
#[test]
fn help_and_readme_give_the_exit_codes_of_the_one_definition() {
    use tqdevo::Exit;
    let dir = tempfile::tempdir().unwrap();
    let help = Test::in_dir(dir.path()).arg("--help").run().stdout;
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
