//! Tells `--version` which commit and target the binary was built from. The commit comes from
//! `TQ_BUILD_COMMIT` when set, else from the `.cargo_vcs_info.json` that `cargo package` puts in a source
//! tarball, else from git when this directory is the top of a clone, else it is "unknown".

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=TQ_BUILD_COMMIT");
    let commit = std::env::var("TQ_BUILD_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(vcs_info_commit)
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=TQ_BUILD_COMMIT={commit}");
    println!("cargo:rustc-env=TQ_BUILD_TARGET={}", std::env::var("TARGET").expect("cargo sets TARGET"));
}

/// The commit `cargo package` recorded (`{"git": {"sha1": "..."}}`); the file exists only in a packaged tarball.
fn vcs_info_commit() -> Option<String> {
    let text = std::fs::read_to_string(".cargo_vcs_info.json").ok()?;
    println!("cargo:rerun-if-changed=.cargo_vcs_info.json");
    let sha1 = text.split("\"sha1\"").nth(1)?.split('"').nth(1)?;
    Some(sha1.chars().take(12).collect())
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// HEAD's commit, when this directory is the top of a git clone (not a tarball unpacked inside some other
/// repository); the script reruns when HEAD or the branch it names moves.
fn git_commit() -> Option<String> {
    let top = git(&["rev-parse", "--show-toplevel"])?;
    let here = std::env::current_dir().ok()?;
    if Path::new(&top).canonicalize().ok()? != here.canonicalize().ok()? {
        return None;
    }
    let mut watched = vec![git(&["rev-parse", "--git-path", "HEAD"])?];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.extend(git(&["rev-parse", "--git-path", &branch]));
    }
    watched.extend(git(&["rev-parse", "--git-path", "packed-refs"]));
    for path in watched.iter().filter(|p| Path::new(p).exists()) {
        println!("cargo:rerun-if-changed={path}");
    }
    git(&["rev-parse", "--short=12", "HEAD"])
}
