//! The fault catalogue: each fault a test that checks the exit code, a message naming the cause, the lookup as it
//! was, the local files intact (state unchanged, no leftover), and convergence on the next run. Runs go through the
//! library against the loopback stand-ins, so the catalogue and the soak stay fast.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tqdevo::connector::run::Outcome;
use tqdevo::devo::UploadMethod;
use tqdevo::export::State;
use tqdevo::sandbox::threatq::{Fault, Rewrite};

use crate::sync::{World, expected_rows};

const IOCS: u64 = 400;
const QUERY: &str = "/api/indicators/query";
const NAME: &str = "faults";
const LOOKUP: &str = "faults";

/// Files a run leaves behind in the config directory when it should have removed them: its row spool and the
/// temporary files of atomic writes.
fn leftovers(dir: &Path) -> Vec<String> {
    let names = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned());
    names.filter(|n| [".spool-", ".tmp-"].iter().any(|p| n.starts_with(p))).collect()
}

/// Rescores every `every`-th indicator among `ids` to a score it did not have, so the next clean run uploads.
fn change(world: &World, ids: std::ops::RangeInclusive<u64>, every: usize) {
    static ROUND: AtomicU64 = AtomicU64::new(0);
    let round = ROUND.fetch_add(1, Ordering::Relaxed);
    for id in ids.step_by(every) {
        world.stage.threatq.modify_indicator(id, |i| i["score"] = json!(format!("{}.5", (round + id) % 10)));
    }
}

/// The stand-ins and instance [`NAME`] configured for the Lookups API and synced once.
async fn synced_world() -> World {
    let world = World::start(IOCS).await;
    world.configure(NAME, UploadMethod::LookupsApi, LOOKUP, &[]).await;
    world.synced(NAME).await;
    world
}

/// The catalogue's check of one fault: after a change in ThreatQ (so a clean run would upload), `arm` injects the
/// fault; the run fails with `code` and a message holding `cause`, and leaves the lookup, the state and the config
/// directory as they were. With the fault gone (`disarm`), the next run makes the lookup equal to the collection.
async fn survives(world: &World, code: u8, cause: &str, arm: impl FnOnce(&World), disarm: impl FnOnce(&World)) {
    change(world, 1..=IOCS, 9);
    let (lookup, state) = (world.lookup(UploadMethod::LookupsApi, LOOKUP), world.state_bytes(NAME));
    arm(world);
    let (result, out) = world.run(NAME, false).await;
    disarm(world);
    match result {
        Err(e) => {
            assert_eq!(e.code(), code, "{cause}: {e}");
            assert!(e.to_string().contains(cause), "the message names the cause ({cause}): {e}");
        }
        Ok(outcome) => panic!("{cause}: the run succeeded: {outcome:?} {out}"),
    }
    assert_eq!(world.lookup(UploadMethod::LookupsApi, LOOKUP), lookup, "{cause}: the lookup is as it was");
    assert_eq!(world.state_bytes(NAME), state, "{cause}: the state is as it was");
    assert_eq!(leftovers(&world.config_dir()), Vec::<String>::new(), "{cause}");
    world.synced(NAME).await;
    let expected = expected_rows(&world.collection().await);
    assert_eq!(world.lookup(UploadMethod::LookupsApi, LOOKUP), expected, "{cause}: the next run converges");
}

/// Puts `bytes` that are not UTF-8 into the first indicator value of an answer.
fn break_utf8(body: &[u8]) -> Vec<u8> {
    let marker = b"\"value\":\"";
    let Some(at) = body.windows(marker.len()).position(|w| w == marker) else { return body.to_vec() };
    let at = at + marker.len();
    [&body[..at], &[0xff, 0xfe][..], &body[at..]].concat()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threatq_answers_that_are_not_the_collection_fail_the_run_and_change_nothing() {
    let world = synced_world().await;
    let clear = |w: &World| w.stage.threatq.clear_faults();
    for (kind, cause) in [
        ("html", "an HTML page"),
        ("redirect", "redirected to /login"),
        // The second page starts with an id of the first: the collection shifted under the offsets.
        ("repeated id", "came again after id"),
        ("total changed", "total went from"),
        ("5 MB value", "has a value of 5242880 bytes"),
        ("invalid UTF-8", "not the expected JSON"),
    ] {
        survives(&world, 4, cause, |w| assert_eq!(arm(w, kind), 4), clear).await;
    }
}

/// A tmpfs mounted over a directory for one test (root only), unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// `None`, with the reason printed, where the test cannot mount (not root, no mount permission).
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        // The directory was made by this process, so its owner is the effective user.
        if std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(dir).unwrap()) != 0 {
            eprintln!("skipped: mounting a small tmpfs needs root (CI runs as root)");
            return None;
        }
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(dir)
            .status();
        match status {
            Ok(s) if s.success() => Some(Tmpfs(dir.to_owned())),
            other => {
                eprintln!("skipped: mount -t tmpfs failed here ({other:?})");
                None
            }
        }
    }

    fn remount(&self, option: &str) {
        let status =
            std::process::Command::new("mount").args(["-o", &format!("remount,{option}")]).arg(&self.0).status();
        assert!(status.unwrap().success(), "remount {option}");
    }

    /// Lets `more` files be created beyond those there now (`u64::MAX`: no limit to speak of).
    fn limit_files(&self, more: u64) {
        let stat = nix::sys::statvfs::statvfs(&self.0).unwrap();
        let used = stat.files() as u64 - stat.files_free() as u64;
        self.remount(&format!("nr_inodes={}", used.saturating_add(more).min(1 << 20)));
    }

    fn free_bytes(&self) -> u64 {
        let stat = nix::sys::statvfs::statvfs(&self.0).unwrap();
        stat.blocks_available() as u64 * stat.fragment_size() as u64
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The disk fills at every point of a run in turn. First bytes: the room left grows 4 KiB a run while the rows are
/// spooled and merged (a run needs most room while merging). Then files: with room enough, the run may create k
/// more files, k = 0, 1, 2, ..., so it runs out at each file it creates in turn: the spool, the sorted runs, the
/// winners, the note of a pending upload, the next state (written while Devo takes the upload, so it fails after
/// Devo accepted) and the run record. Each failed run exits 1 naming "No space left", leaves the lookup as it was or
/// (the state write failed after Devo accepted) equal to the collection, never partial, keeps the old state and
/// leaves no file behind; the next run with room converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_while_spooling_or_writing_the_state_fails_the_run_and_the_next_converges() {
    let world = World::start(IOCS).await;
    let Some(disk) = Tmpfs::mount(&world.config_dir(), "2m") else { return };
    world.configure(NAME, UploadMethod::LookupsApi, LOOKUP, &[]).await;
    world.synced(NAME).await;
    let filler = world.config_dir().join("filler");
    let mut failed_at: BTreeMap<&str, u32> = BTreeMap::new();
    let mut short_of_files = false;
    let mut step = 0;
    loop {
        assert!(step < 200, "the run never fitted");
        change(&world, 1..=IOCS, 7);
        let (lookup, state) = (world.lookup(UploadMethod::LookupsApi, LOOKUP), world.state_bytes(NAME));
        let result = if short_of_files {
            disk.limit_files(step);
            let result = world.run(NAME, false).await.0;
            disk.limit_files(u64::MAX);
            result
        } else {
            let free = disk.free_bytes();
            std::fs::write(&filler, vec![0u8; free.saturating_sub(step * 4096) as usize]).ok();
            let result = world.run(NAME, false).await.0;
            std::fs::remove_file(&filler).ok();
            result
        };
        step += 1;
        let expected = expected_rows(&world.collection().await);
        let Err(e) = result else {
            if short_of_files {
                break;
            }
            // The run fits in bytes now. Next, with room enough: files.
            (short_of_files, step) = (true, 0);
            continue;
        };
        let message = e.to_string();
        assert_eq!(e.code(), 1, "{message}");
        assert!(message.contains("No space left"), "{message}");
        let now = world.lookup(UploadMethod::LookupsApi, LOOKUP);
        let at = match () {
            _ if message.contains("row spool") => "spool",
            _ if message.contains("delivered state") && now == lookup => "state, before the upload",
            _ if message.contains("delivered state") => "state, after Devo accepted",
            _ => "elsewhere",
        };
        *failed_at.entry(at).or_default() += 1;
        assert!(now == lookup || now == expected, "step {step}: a partial lookup");
        assert_eq!(world.state_bytes(NAME), state, "step {step}: the state is as it was");
        assert_eq!(leftovers(&world.config_dir()), Vec::<String>::new(), "step {step}");
        world.synced(NAME).await;
        assert_eq!(world.lookup(UploadMethod::LookupsApi, LOOKUP), expected, "step {step}: converged");
    }
    eprintln!("disk full: failed runs by where the disk filled: {failed_at:?}");
    for at in ["spool", "state, after Devo accepted"] {
        assert!(failed_at.contains_key(at), "no run failed at the {at}: {failed_at:?}");
    }
}

/// A config directory that cannot be written (a read-only mount as root, else mode 0500): exit 1 naming the run
/// lock it could not open, nothing sent; writable again, the next run converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_config_directory_fails_the_run_and_changes_nothing() {
    use std::os::unix::fs::PermissionsExt as _;
    let world = World::start(IOCS).await;
    let disk = Tmpfs::mount(&world.config_dir(), "4m");
    world.configure(NAME, UploadMethod::LookupsApi, LOOKUP, &[]).await;
    world.synced(NAME).await;
    let read_only = |on: bool| match &disk {
        Some(disk) => disk.remount(if on { "ro" } else { "rw" }),
        None => {
            let mode = if on { 0o500 } else { 0o700 };
            std::fs::set_permissions(world.config_dir(), std::fs::Permissions::from_mode(mode)).unwrap();
        }
    };
    let cause = if disk.is_some() { "Read-only file system" } else { "Permission denied" };
    survives(&world, 1, cause, |_| read_only(true), |_| read_only(false)).await;
}

/// Two instances (`-n a`, `-n b`) run at once, three times, against one ThreatQ and one Devo: each has its own
/// lock, state and lookup, and both converge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_at_once_both_converge() {
    let world = World::start(IOCS).await;
    world.configure("a", UploadMethod::LookupsApi, "inst_a", &[]).await;
    world.configure("b", UploadMethod::LookupsApi, "inst_b", &[]).await;
    for round in 0..3u64 {
        change(&world, (round * 100 + 1)..=IOCS, 5);
        let ((a, _), (b, _)) = tokio::join!(world.run("a", false), world.run("b", false));
        assert!(matches!(a, Ok(Outcome::Synced(_))), "a: {a:?}");
        assert!(matches!(b, Ok(Outcome::Synced(_))), "b: {b:?}");
    }
    let expected = expected_rows(&world.collection().await);
    assert_eq!(world.lookup(UploadMethod::LookupsApi, "inst_a"), expected);
    assert_eq!(world.lookup(UploadMethod::LookupsApi, "inst_b"), expected);
    assert_ne!(world.state_bytes("a"), None);
    assert_ne!(world.state_bytes("a"), world.state_bytes("b"), "each instance keeps its own state");
}

/// The faults the soak draws from, by name.
const SOAK_FAULTS: [&str; 9] =
    ["none", "html", "redirect", "repeated id", "total changed", "5 MB value", "invalid UTF-8", "Devo job", "none"];

/// A rewrite of the pages whose `offset` is not 0.
fn later_pages(edit: impl Fn(&mut serde_json::Value) + Send + Sync + 'static) -> Fault {
    Fault::Rewrite(Rewrite::json(move |p| {
        if p["offset"].as_u64().is_some_and(|offset| offset > 0) {
            edit(p);
        }
    }))
}

/// Arms fault `kind`; returns the exit code the run must end with.
fn arm(world: &World, kind: &str) -> u8 {
    let tq = &world.stage.threatq;
    // Each fault stays armed for every page request of the run: with several pages in flight, a request of the
    // run before may still reach the stand-in after the fault is armed and would take a fault armed once.
    match kind {
        "html" => tq.inject(QUERY, u32::MAX, Fault::Html),
        "redirect" => tq.inject(QUERY, u32::MAX, Fault::RedirectToLogin),
        // The pages after the first, told by the page's own offset: requests in flight arrive in any order.
        "repeated id" => tq.inject(QUERY, u32::MAX, later_pages(|p| p["data"][0]["id"] = json!(1))),
        "total changed" => {
            tq.inject(QUERY, u32::MAX, later_pages(|p| p["total"] = json!(p["total"].as_u64().unwrap_or_default() + 1)))
        }
        "5 MB value" => tq.inject(
            QUERY,
            u32::MAX,
            Fault::Rewrite(Rewrite::json(|p| p["data"][0]["value"] = json!("x".repeat(5 << 20)))),
        ),
        "invalid UTF-8" => tq.inject(QUERY, u32::MAX, Fault::Rewrite(Rewrite(Arc::new(break_utf8)))),
        "Devo job" => {
            world.stage.devo_api.fail_next_job("soak: the job failed");
            return 5;
        }
        _ => return 0,
    }
    4
}

/// The soak: 200 consecutive runs (fewer only if they take over a minute), the collection changing before each
/// and a random fault from the catalogue armed in most. Every run ends as its fault says; afterwards no file is
/// left over in the config directory, the state holds no more keys than the collection, and the lookup equals the
/// collection. Prints its figures (runs, faults by kind, failures, time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_200_runs_with_random_faults_leaves_nothing_behind_and_converges() {
    use rand::{RngExt as _, SeedableRng as _};
    const RUNS: u32 = 200;
    const BUDGET: Duration = Duration::from_secs(60);
    let seed: u64 = rand::random();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let world = World::start(300).await;
    // Pages of 100, so the faults of a later page have one to land on.
    world.configure(NAME, UploadMethod::LookupsApi, LOOKUP, &[("batch_size", "100")]).await;
    let started = Instant::now();
    let (mut runs, mut failures, mut unexpected) = (0u32, 0u32, Vec::new());
    let mut by_kind: BTreeMap<&str, u32> = BTreeMap::new();
    while runs < RUNS && started.elapsed() < BUDGET {
        let from = rng.random_range(1..=300u64);
        change(&world, from..=(from + 20).min(300), 3);
        // At least one row to upload, so a Devo fault always has an upload to fail.
        world
            .stage
            .threatq
            .upsert_indicator(json!({"value": format!("soak-{runs}.example"), "type": "FQDN", "status": "Active"}));
        if rng.random_bool(0.2) {
            let id = rng.random_range(1..=300u64);
            world.stage.threatq.modify_indicator(id, |i| i["status"] = json!({"id": 2, "name": "Expired"}));
        }
        let kind = SOAK_FAULTS[rng.random_range(0..SOAK_FAULTS.len())];
        let code = arm(&world, kind);
        let (result, _) = world.run(NAME, false).await;
        world.stage.threatq.clear_faults();
        runs += 1;
        *by_kind.entry(kind).or_default() += 1;
        let got = result.as_ref().map_or_else(|e| e.code(), |_| 0);
        failures += u32::from(got != 0);
        if got != code {
            unexpected.push(format!("run {runs}, fault {kind}: exit {got}, expected {code}: {result:?}"));
        }
    }
    let elapsed = started.elapsed();
    // A clean last run; then everything must add up.
    world.synced(NAME).await;
    let expected = expected_rows(&world.collection().await);
    eprintln!(
        "soak (seed {seed}): {runs} runs in {:.1} s, faults by kind {by_kind:?}, {failures} failed runs (all \
         injected), {} unexpected outcomes",
        elapsed.as_secs_f64(),
        unexpected.len()
    );
    assert!(unexpected.is_empty(), "seed {seed}: {unexpected:#?}");
    assert!(runs >= RUNS / 2, "only {runs} runs in {BUDGET:?}");
    assert_eq!(world.lookup(UploadMethod::LookupsApi, LOOKUP), expected, "seed {seed}");
    let state = State::load(&world.state_path(NAME)).unwrap();
    assert_eq!(state.len(), expected.len() as u64, "the state holds exactly the collection's keys");
    assert_eq!(leftovers(&world.config_dir()), Vec::<String>::new());
    let mut files: Vec<String> =
        std::fs::read_dir(world.config_dir()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    files.sort();
    let allowed = [".json", ".secrets.json", ".state", ".lock", ".last-run.json"].map(|ext| format!("{NAME}{ext}"));
    assert!(files.iter().all(|f| allowed.contains(f)), "only the instance's own files remain: {files:?}");
}
