//! One run at a time per instance: an OS advisory lock (flock) on `<name>.lock` in the config directory, so a
//! crashed run cannot leave it held, and the holder's pid and start time in the file, so a run stuck for longer
//! than "Kill Previous Runs After X Seconds" can be stopped.

use std::fs::File;
use std::io::{Read as _, Seek as _, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::Error;

/// How long a stopped run gets to exit after SIGTERM, then after SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(10);
const KILL_GRACE: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(50);

/// The lock file of an instance.
pub fn path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.lock"))
}

/// Who holds the lock, as written into the lock file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Holder {
    pid: u32,
    /// Unix seconds.
    started_at: u64,
}

impl Holder {
    fn age_seconds(&self) -> u64 {
        now_unix().saturating_sub(self.started_at)
    }
}

/// Held while a run works; dropping it releases the lock.
#[derive(Debug)]
pub struct LockGuard {
    path: PathBuf,
    _lock: Flock<File>,
}

impl LockGuard {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Whether a run holds the lock right now (for `doctor`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockState {
    Free,
    Held { pid: u32, age_seconds: u64 },
}

/// Takes the instance's run lock. A holder younger than `kill_after` makes this fail with
/// [`Error::RunInProgress`]; an older one is stopped (SIGTERM, then SIGKILL) if it is this program, and refused with
/// [`Error::LockHolderUnstoppable`] if it is anything else.
pub fn acquire(dir: &Path, name: &str, kill_after: Duration) -> Result<LockGuard, Error> {
    let path = path(dir, name);
    let file = match try_lock(&path)? {
        Ok(lock) => return claim(path, lock),
        Err(file) => file,
    };
    let holder = read_holder(file)?;
    // Never signal ourselves, a process group (pid 0 or a negative pid) or init.
    let signallable = i32::try_from(holder.pid).is_ok_and(|pid| pid > 1) && holder.pid != std::process::id();
    if holder.age_seconds() < kill_after.as_secs() || !signallable {
        return Err(Error::RunInProgress { pid: holder.pid, age_seconds: holder.age_seconds() });
    }
    let refuse = |reason: String| Error::LockHolderUnstoppable { path: path.clone(), pid: holder.pid, reason };
    let ours = our_program();
    match program_of(holder.pid) {
        Some(program) if Some(&program) == ours.as_ref() => {}
        Some(program) => return Err(refuse(format!("is not {} (it is {program})", display(&ours)))),
        // Gone between the lock attempt and now: the lock is free or about to be.
        None => {}
    }
    tracing::warn!(
        pid = holder.pid,
        age_seconds = holder.age_seconds(),
        "a previous run has held the lock longer than \"Kill Previous Runs After X Seconds\"; stopping it"
    );
    for (signal, grace) in [(Signal::SIGTERM, TERM_GRACE), (Signal::SIGKILL, KILL_GRACE)] {
        match kill(Pid::from_raw(holder.pid as i32), signal) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => return Err(refuse(format!("could not be sent {signal}: {e}"))),
        }
        if let Some(lock) = wait_for_lock(&path, grace)? {
            return claim(path, lock);
        }
    }
    Err(refuse(format!("still holds it {} s after SIGKILL", KILL_GRACE.as_secs())))
}

/// Who holds the lock, without taking it for longer than the look.
pub fn state(dir: &Path, name: &str) -> Result<LockState, Error> {
    let path = path(dir, name);
    if !path.exists() {
        return Ok(LockState::Free);
    }
    Ok(match try_lock(&path)? {
        Ok(_released_on_drop) => LockState::Free,
        Err(file) => {
            let holder = read_holder(file)?;
            LockState::Held { pid: holder.pid, age_seconds: holder.age_seconds() }
        }
    })
}

/// `Ok(Ok(lock))` when taken, `Ok(Err(file))` when another process holds it.
fn try_lock(path: &Path) -> Result<Result<Flock<File>, File>, Error> {
    let io = |e| Error::io(format!("opening the run lock {}", path.display()), e);
    let mut options = File::options();
    options.read(true).write(true).create(true).truncate(false).mode(0o644);
    let file = super::local::open_no_follow(&mut options, path, "the run lock")?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Ok(lock)),
        Err((file, Errno::EWOULDBLOCK)) => Ok(Err(file)),
        Err((_, errno)) => Err(io(errno.into())),
    }
}

fn wait_for_lock(path: &Path, grace: Duration) -> Result<Option<Flock<File>>, Error> {
    let deadline = Instant::now() + grace;
    loop {
        if let Ok(lock) = try_lock(path)? {
            return Ok(Some(lock));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(POLL);
    }
}

/// Writes this process into the lock file it now holds.
fn claim(path: PathBuf, mut lock: Flock<File>) -> Result<LockGuard, Error> {
    let holder = Holder { pid: std::process::id(), started_at: now_unix() };
    let json = serde_json::to_string(&holder).expect("serialisable");
    lock.set_len(0)
        .and_then(|()| lock.rewind())
        .and_then(|()| lock.write_all(json.as_bytes()))
        .and_then(|()| lock.sync_data())
        .map_err(|e| Error::io(format!("writing the run lock {}", path.display()), e))?;
    Ok(LockGuard { path, _lock: lock })
}

/// The holder as written in the file; a holder that has locked but not yet written gets a moment to do so.
fn read_holder(mut file: File) -> Result<Holder, Error> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let mut text = String::new();
        file.rewind().and_then(|_| file.read_to_string(&mut text)).map_err(|e| Error::io("reading the run lock", e))?;
        if let Ok(holder) = serde_json::from_str::<Holder>(&text) {
            return Ok(holder);
        }
        if Instant::now() >= deadline {
            // Held, but by something that does not write our format: treat it as a fresh run.
            return Ok(Holder { pid: 0, started_at: now_unix() });
        }
        std::thread::sleep(POLL);
    }
}

/// The executable name of a process: `/proc/<pid>/exe` (an upgraded binary shows " (deleted)"), else argv[0].
fn program_of(pid: u32) -> Option<String> {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let exe = std::fs::read_link(proc.join("exe")).ok().map(|p| p.to_string_lossy().into_owned());
    let exe = exe.or_else(|| {
        let cmdline = std::fs::read(proc.join("cmdline")).ok()?;
        let argv0 = cmdline.split(|b| *b == 0).next()?;
        Some(String::from_utf8_lossy(argv0).into_owned())
    })?;
    let exe = exe.strip_suffix(" (deleted)").unwrap_or(&exe);
    Path::new(exe).file_name().map(|n| n.to_string_lossy().into_owned())
}

fn our_program() -> Option<String> {
    program_of(std::process::id())
}

fn display(program: &Option<String>) -> &str {
    program.as_deref().unwrap_or("this program")
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::process::{Child, Command, Stdio};

    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    /// Overwrites the holder's start time, as if its run had started `age` ago.
    fn backdate(dir: &Path, name: &str, pid: u32, age: Duration) {
        let holder = Holder { pid, started_at: now_unix() - age.as_secs() };
        std::fs::write(path(dir, name), serde_json::to_string(&holder).unwrap()).unwrap();
    }

    /// Waits (bounded) until someone else holds the lock.
    fn wait_until_held(dir: &Path, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(state(dir, name).unwrap(), LockState::Held { pid, .. } if pid != 0) {
            assert!(Instant::now() < deadline, "the helper never took the lock");
            std::thread::sleep(POLL);
        }
    }

    fn wait_exit(child: &mut Child) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(POLL);
        }
        None
    }

    #[test]
    fn a_second_run_is_refused_with_exit_code_6_until_the_first_ends() {
        let dir = tempfile::tempdir().unwrap();
        let guard = acquire(dir.path(), "inst", HOUR).unwrap();
        let err = acquire(dir.path(), "inst", HOUR).unwrap_err();
        assert!(matches!(err, Error::RunInProgress { pid, .. } if pid == std::process::id()), "{err}");
        assert_eq!(err.code(), 6);
        assert!(matches!(state(dir.path(), "inst").unwrap(), LockState::Held { .. }));
        drop(guard);
        assert_eq!(state(dir.path(), "inst").unwrap(), LockState::Free);
        acquire(dir.path(), "inst", HOUR).unwrap();
    }

    #[test]
    fn instances_lock_separately() {
        let dir = tempfile::tempdir().unwrap();
        let _a = acquire(dir.path(), "a", HOUR).unwrap();
        let _b = acquire(dir.path(), "b", HOUR).unwrap();
    }

    #[test]
    fn the_lock_of_a_dead_run_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let mut dead = Command::new("true").spawn().unwrap();
        dead.wait().unwrap();
        backdate(dir.path(), "inst", dead.id(), Duration::from_secs(5));
        let guard = acquire(dir.path(), "inst", HOUR).unwrap();
        let written: Holder = serde_json::from_str(&std::fs::read_to_string(guard.path()).unwrap()).unwrap();
        assert_eq!(written.pid, std::process::id());
    }

    /// Not a test: the lock holder the tests below start (a copy of this test binary, so "this program").
    #[test]
    #[ignore = "helper process for the lock tests"]
    fn lock_holder_helper() {
        if let Some(dir) = std::env::var_os("TQDEVO_LOCK_HELPER_DIR") {
            let _guard = acquire(Path::new(&dir), "inst", HOUR).unwrap();
            std::thread::sleep(Duration::from_secs(60));
        }
    }

    #[test]
    fn an_old_run_of_this_program_is_stopped_and_its_lock_taken() {
        let dir = tempfile::tempdir().unwrap();
        let mut helper = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "connector::lock::tests::lock_holder_helper", "--ignored", "--test-threads=1"])
            .env("TQDEVO_LOCK_HELPER_DIR", dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_until_held(dir.path(), "inst");
        assert!(
            matches!(acquire(dir.path(), "inst", HOUR), Err(Error::RunInProgress { pid, .. }) if pid == helper.id())
        );

        backdate(dir.path(), "inst", helper.id(), 2 * HOUR);
        let guard = acquire(dir.path(), "inst", HOUR);
        let status = wait_exit(&mut helper);
        if status.is_none() {
            let _ = helper.kill();
        }
        assert!(guard.is_ok(), "{:?}", guard.err());
        assert!(status.is_some(), "the old run was stopped");
    }

    #[test]
    fn an_old_holder_that_is_another_program_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let lock_path = path(dir.path(), "inst");
        // util-linux flock(1) holds the lock on the file and is not this program; `-o` keeps sleep out of it.
        let mut stranger = Command::new("flock").arg("-o").arg(&lock_path).args(["sleep", "30"]).spawn().unwrap();
        wait_until_held_by_anyone(&lock_path);
        backdate(dir.path(), "inst", stranger.id(), 2 * HOUR);
        let err = acquire(dir.path(), "inst", HOUR).unwrap_err();
        let still_running = stranger.try_wait().unwrap().is_none();
        let _ = stranger.kill();
        let _ = stranger.wait();
        assert!(still_running, "a process that is not this program is never signalled");
        assert_eq!(err.code(), 6);
        let message = err.to_string();
        assert!(message.contains("flock") && message.contains(&stranger.id().to_string()), "{message}");
    }

    /// flock(1) writes nothing into the file, so only the lock itself tells it is held.
    fn wait_until_held_by_anyone(lock_path: &Path) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !lock_path.exists() || try_lock(lock_path).unwrap().is_ok() {
            assert!(Instant::now() < deadline, "flock never took the lock");
            std::thread::sleep(POLL);
        }
    }
}
