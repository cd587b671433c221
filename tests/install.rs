//! Getting the connector onto a host: `scripts/install.sh`, the completions a shell offers, and what
//! `scripts/package` leaves in `target/package/` (the static binary alone in a chroot: demo, setup, export; the
//! .deb installed, upgraded and removed; the RPM's files and scripts).
//!
//! The package tests use what `scripts/package` built (run it first; `.ci/run` does). Without it, or without
//! root for chroot and dpkg, they print why they are skipped and pass, unless `TQDEVO_REQUIRE_PACKAGES=1` (set
//! by `.ci/run`) makes a missing package or tool a failure.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tqdevo::devo::UploadMethod;
use tqdevo::sandbox::stage::{Ports, Stage};

use crate::binary::{BIN, Test};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `command`, failing the test with its output when it does not succeed.
fn run(command: &mut Command) -> String {
    let output: Output = command.output().unwrap_or_else(|e| panic!("{command:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{command:?} failed ({}):\n{text}", output.status);
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o7777
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn has_program(name: &str) -> bool {
    Command::new(name).arg("--version").output().is_ok()
}

/// `Some(path)` of a `target/package/` artifact this test can use, or `None` after saying why it is skipped.
fn package_artifact(test: &str, suffix: &str, needs_root: bool, tools: &[&str]) -> Option<PathBuf> {
    let found = std::fs::read_dir(repo().join("target/package")).ok().and_then(|entries| {
        entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.file_name().unwrap().to_string_lossy().ends_with(suffix))
    });
    let missing_tool = tools.iter().find(|t| !has_program(t));
    let reason = match (&found, missing_tool) {
        _ if needs_root && !is_root() => "it needs root".to_owned(),
        (None, _) => format!("target/package/*{suffix} is missing: run scripts/package first"),
        (_, Some(tool)) => format!("{tool} is not installed"),
        (Some(_), None) => return found,
    };
    assert!(std::env::var_os("TQDEVO_REQUIRE_PACKAGES").is_none(), "{test}: {reason} (TQDEVO_REQUIRE_PACKAGES is set)");
    eprintln!("{test}: SKIPPED: {reason}");
    None
}

#[test]
fn install_sh_installs_the_binary_man_page_and_completions_and_uninstall_keeps_the_configuration() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let binary = crate::binary::path();
    let install = || {
        let mut cmd = Command::new(repo().join("scripts/install.sh"));
        cmd.arg("--root").arg(root).arg("--binary").arg(binary);
        cmd
    };
    let out = run(&mut install());
    assert!(out.contains("next: tq-conn-devo-ioc-exporter -c /etc/tq_labs/"), "{out}");
    let files = [
        format!("usr/local/bin/{BIN}"),
        format!("usr/local/share/man/man1/{BIN}.1"),
        format!("usr/local/share/bash-completion/completions/{BIN}"),
        format!("usr/local/share/zsh/site-functions/_{BIN}"),
        format!("usr/local/share/fish/vendor_completions.d/{BIN}.fish"),
    ];
    assert_eq!(mode(&root.join(&files[0])), 0o755);
    assert_eq!(std::fs::read(root.join(&files[0])).unwrap(), std::fs::read(binary).unwrap());
    let printed = |args: &[&str]| Test::in_dir(root).args(args).stderr("").run().stdout;
    assert_eq!(std::fs::read_to_string(root.join(&files[1])).unwrap(), printed(&["man"]));
    for (file, shell) in files[2..].iter().zip(["bash", "zsh", "fish"]) {
        assert_eq!(std::fs::read_to_string(root.join(file)).unwrap(), printed(&["completions", shell]), "{file}");
        assert_eq!(mode(&root.join(file)), 0o644, "{file}");
    }
    assert_eq!(mode(&root.join("etc/tq_labs")), 0o700);
    assert!(root.join("var/log/tq_labs").is_dir());

    // A second install (an upgrade by hand) keeps the configuration directory as the user left it.
    let config = root.join("etc/tq_labs/tq-conn-devo-ioc-exporter.json");
    std::fs::write(&config, "{\"kept\": true}").unwrap();
    std::fs::set_permissions(root.join("etc/tq_labs"), std::fs::Permissions::from_mode(0o750)).unwrap();
    run(&mut install());
    assert_eq!(mode(&root.join("etc/tq_labs")), 0o750, "an existing directory keeps its mode");

    let out = run(install().arg("--uninstall"));
    assert!(out.contains("kept"), "{out}");
    for file in &files {
        assert!(!root.join(file).exists(), "{file} is left after --uninstall");
    }
    assert_eq!(std::fs::read_to_string(&config).unwrap(), "{\"kept\": true}");
    assert!(root.join("var/log/tq_labs").is_dir());
}

/// What bash offers after `words` (the last one is being completed), with the script the binary prints.
fn bash_completes(dir: &Path, words: &[&str]) -> Vec<String> {
    let script = dir.join("completion.bash");
    std::fs::write(&script, Test::in_dir(dir).args(["completions", "bash"]).stderr("").run().stdout).unwrap();
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let line = format!(
        "source {}; COMP_WORDS=({BIN} {}); COMP_CWORD={}; _tq__conn__devo__ioc__exporter {BIN} '{}' '{}' 2>/dev/null; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display(),
        quoted.join(" "),
        words.len(),
        words.last().unwrap(),
        if words.len() > 1 { words[words.len() - 2] } else { BIN },
    );
    run(Command::new("bash").arg("--norc").arg("-c").arg(line).current_dir(dir)).lines().map(str::to_owned).collect()
}

#[test]
fn bash_completes_ll_and_then_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("logs-here")).unwrap();
    assert_eq!(bash_completes(dir.path(), &["-l"]), ["-ll"]);
    assert_eq!(bash_completes(dir.path(), &["--logl"]), ["--loglocation"]);
    let offered = bash_completes(dir.path(), &["-ll", "logs"]);
    assert!(offered.iter().any(|o| o.starts_with("logs-here")), "{offered:?}");
    let offered = bash_completes(dir.path(), &["com"]);
    assert_eq!(offered, ["completions"]);
}

#[test]
fn the_static_binary_runs_alone_in_a_chroot() {
    let Some(binary) = package_artifact("chroot test", BIN, true, &["chroot"]) else { return };
    let jail = tempfile::tempdir().unwrap();
    let jail = jail.path();
    std::fs::copy(&binary, jail.join(BIN)).unwrap();
    // Nothing else: no libc, no /etc (no hosts, resolv.conf, CA store, passwd), no /dev, no /proc; only the
    // sticky /tmp every host has, where the demo keeps its files.
    std::fs::create_dir(jail.join("tmp")).unwrap();
    std::fs::set_permissions(jail.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let chrooted = |args: &[&str]| {
        let mut cmd = Command::new("chroot");
        // PATH only to find chroot itself: nothing it names exists inside the jail.
        cmd.arg(jail).arg(format!("/{BIN}")).args(args).env_clear().env("HOME", "/tmp");
        cmd.env("PATH", std::env::var_os("PATH").unwrap_or_default());
        run(&mut cmd)
    };
    let version = chrooted(&["--version"]);
    assert!(version.starts_with(&format!("{BIN} {} (commit ", env!("CARGO_PKG_VERSION"))), "{version}");
    assert!(version.contains("x86_64-unknown-linux-musl"), "{version}");
    let schema = std::fs::read_to_string(repo().join("ui-schema/devo-ioc-exporter.schema.json")).unwrap();
    assert_eq!(chrooted(&["schema"]), schema);
    let demo = chrooted(&["demo"]);
    assert!(demo.contains("Connector configured. Set information in UI"), "{demo}");
    assert!(demo.contains("=== Upload method: X.509 relay (legacy) ===") && demo.contains("Demo finished."), "{demo}");
    assert_eq!(std::fs::read_dir(jail.join("tmp")).unwrap().count(), 0, "the demo leaves nothing behind");

    // A real first run and export there, against stand-ins outside: no secret service, so the password goes to
    // the 0600 file; no system CA store, so only the CA files the user names are trusted.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let files = tempfile::tempdir().unwrap();
    let stage = runtime.block_on(Stage::start(50, Ports::default(), files.path())).unwrap();
    std::fs::create_dir(jail.join("etc")).unwrap();
    std::fs::copy(stage.threatq_ca_file(), jail.join("etc/threatq-ca.pem")).unwrap();
    std::fs::copy(stage.devo_ca_file(), jail.join("etc/devo-ca.pem")).unwrap();
    let cron_run = || {
        let mut cmd = Command::new("chroot");
        cmd.arg(jail).arg(format!("/{BIN}")).args(["-c", "/etc", "-ll", "stdout", "-v2"]).env_clear();
        cmd.env("PATH", std::env::var_os("PATH").unwrap_or_default());
        for (key, value) in stage.env().into_iter().filter(|(k, _)| k != "TQ_SECRETS_BACKEND") {
            cmd.env(&key, value.replace(files.path().to_str().unwrap(), "/etc"));
        }
        run(&mut cmd)
    };
    assert!(cron_run().contains("Connector configured. Set information in UI"));
    assert_eq!(mode(&jail.join(format!("etc/{BIN}.secrets.json"))), 0o600, "the password is in the owner-only file");
    stage.threatq.set_custom_fields(BIN, stage.ui_fields(UploadMethod::LookupsApi, "tq_iocs"));
    stage.threatq.set_active(BIN, true);
    cron_run();
    let rows = stage.lookup(UploadMethod::LookupsApi, "tq_iocs").expect("the lookup was uploaded");
    assert!(!rows.is_empty());
}

/// dpkg on a private root and database: the test never touches the machine's packages, and tests may run at
/// once. Maintainer scripts run outside that root with `DPKG_ROOT` set (as they would on a real root).
struct Dpkg {
    root: tempfile::TempDir,
}

impl Dpkg {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        let admin = root.path().join("var/lib/dpkg");
        for dir in ["info", "updates", "triggers"] {
            std::fs::create_dir_all(admin.join(dir)).unwrap();
        }
        std::fs::write(admin.join("status"), "").unwrap();
        Dpkg { root }
    }

    fn path(&self, path: &str) -> PathBuf {
        self.root.path().join(path.trim_start_matches('/'))
    }

    fn dpkg(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("dpkg");
        cmd.arg(format!("--root={}", self.root.path().display()))
            .args(["--force-script-chrootless", "--force-not-root", "--log=/dev/null"])
            .args(args);
        run(&mut cmd)
    }

    fn installed_version(&self) -> Option<String> {
        let out = Command::new("dpkg-query")
            .arg(format!("--admindir={}", self.path("var/lib/dpkg").display()))
            .args(["-W", "-f", "${db:Status-Status} ${Version}", BIN])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.strip_prefix("installed ").map(str::to_owned)
    }
}

/// The same package with another version, as the next release would be.
fn rebuilt_with_version(deb: &Path, version: &str, work: &Path) -> PathBuf {
    let tree = work.join("tree");
    run(Command::new("dpkg-deb").arg("-R").arg(deb).arg(&tree));
    let control = tree.join("DEBIAN/control");
    let text = std::fs::read_to_string(&control).unwrap();
    let bumped: Vec<String> = text
        .lines()
        .map(|l| if l.starts_with("Version: ") { format!("Version: {version}") } else { l.to_owned() })
        .collect();
    std::fs::write(&control, bumped.join("\n") + "\n").unwrap();
    let out = work.join("bumped.deb");
    run(Command::new("dpkg-deb").args(["--root-owner-group", "-b"]).arg(&tree).arg(&out));
    out
}

#[test]
fn the_deb_installs_upgrades_and_removes_keeping_configuration_state_and_cron() {
    let Some(deb) = package_artifact("dpkg test", ".deb", true, &["dpkg", "dpkg-deb", "dpkg-query"]) else { return };
    let sys = Dpkg::new();
    sys.dpkg(&["-i", deb.to_str().unwrap()]);
    let installed = sys.path(&format!("/usr/bin/{BIN}"));
    assert_eq!(mode(&installed), 0o755);
    let version = run(Command::new(&installed).arg("--version"));
    assert!(version.contains(env!("CARGO_PKG_VERSION")) && version.contains("linux-musl"), "{version}");
    assert_eq!(mode(&sys.path("/etc/tq_labs")), 0o700);
    assert!(sys.path("/var/log/tq_labs").is_dir());
    for file in [
        format!("/usr/share/man/man1/{BIN}.1.gz"),
        format!("/usr/share/bash-completion/completions/{BIN}"),
        format!("/usr/share/zsh/vendor-completions/_{BIN}"),
        format!("/usr/share/fish/vendor_completions.d/{BIN}.fish"),
    ] {
        assert!(sys.path(&file).is_file(), "{file} is not installed");
    }
    let first = sys.installed_version().expect("installed");

    // What a configured host holds: the setup, the password file, the state, a log and the cron file (written
    // by the installed binary itself).
    let config_dir = sys.path("/etc/tq_labs");
    let user_files = [
        (config_dir.join(format!("{BIN}.json")), "{\"threatq_host\": \"tq.example.com\"}"),
        (config_dir.join(format!("{BIN}.secrets.json")), "{\"threatq_password\": \"pw\"}"),
        (config_dir.join(format!("{BIN}.state")), "state: what Devo holds"),
        (sys.path("/var/log/tq_labs/tq-conn-devo-ioc-exporter.2026-01-01.log"), "a log line"),
    ];
    for (path, text) in &user_files {
        std::fs::write(path, text).unwrap();
    }
    std::fs::create_dir_all(sys.path("/etc/cron.d")).unwrap();
    run(Command::new(&installed)
        .arg("-c")
        .arg(&config_dir)
        .args(["--cron", "0 */2 * * *", "--cron-dir"])
        .arg(sys.path("/etc/cron.d")));
    let cron = sys.path(&format!("/etc/cron.d/{BIN}"));
    let cron_text = std::fs::read_to_string(&cron).unwrap();
    std::fs::set_permissions(&config_dir, std::fs::Permissions::from_mode(0o750)).unwrap();

    let work = tempfile::tempdir().unwrap();
    let bumped = rebuilt_with_version(&deb, &format!("{first}+upgrade1"), work.path());
    sys.dpkg(&["-i", bumped.to_str().unwrap()]);
    assert_eq!(sys.installed_version(), Some(format!("{first}+upgrade1")));
    run(Command::new(&installed).arg("--version"));
    let unchanged = |when: &str| {
        for (path, text) in &user_files {
            assert_eq!(&std::fs::read_to_string(path).unwrap(), text, "{} after {when}", path.display());
        }
        assert_eq!(std::fs::read_to_string(&cron).unwrap(), cron_text, "the cron file after {when}");
        assert_eq!(mode(&config_dir), 0o750, "{when} keeps the configuration directory's mode");
    };
    unchanged("the upgrade");

    sys.dpkg(&["-r", BIN]);
    assert_eq!(sys.installed_version(), None);
    assert!(!installed.exists() && !sys.path(&format!("/usr/share/man/man1/{BIN}.1.gz")).exists());
    unchanged("the removal");
}

#[test]
fn the_rpm_installs_the_binary_man_page_and_completions_and_only_creates_directories() {
    let Some(rpm) = package_artifact("rpm test", ".rpm", false, &["rpm"]) else { return };
    let query = |args: &[&str]| run(Command::new("rpm").args(args).arg(&rpm));
    let mut files: Vec<String> = query(&["-qlp"]).lines().map(str::to_owned).collect();
    files.sort();
    assert_eq!(
        files,
        [
            format!("/usr/bin/{BIN}"),
            format!("/usr/share/bash-completion/completions/{BIN}"),
            format!("/usr/share/doc/{BIN}/README.md"),
            format!("/usr/share/fish/vendor_completions.d/{BIN}.fish"),
            format!("/usr/share/man/man1/{BIN}.1.gz"),
            format!("/usr/share/zsh/site-functions/_{BIN}"),
        ],
        "nothing in /etc or /var: configuration, state and cron are never the package's"
    );
    let scripts = query(&["-qp", "--scripts"]);
    assert!(scripts.contains("postinstall scriptlet"), "{scripts}");
    assert!(scripts.contains("install -d -m 0700 \"$root/etc/tq_labs\""), "{scripts}");
    assert!(!scripts.contains("preuninstall") && !scripts.contains("postuninstall"), "removal runs nothing: {scripts}");
    let requires = query(&["-qp", "--requires"]);
    assert!(!requires.contains("libc.so"), "a static binary needs no libc: {requires}");
    // rpm 4.11 (RHEL/CentOS 7) reads xz payloads, not zstd ones.
    assert_eq!(query(&["-qp", "--qf", "%{PAYLOADCOMPRESSOR}"]), "xz");
}
