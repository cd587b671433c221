//! The ThreatQ password: in the OS keyring when one answers, otherwise in an owner-only file beside the local
//! configuration (a headless ThreatQ host has no secret service). `TQ_SECRETS_BACKEND=file|keyring` forces one.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};

use super::local::{Env, write_atomically};
use crate::Error;

/// The keyring service name; the keyring user is the instance name.
pub const KEYRING_SERVICE: &str = "tq-conn-devo-ioc-exporter";

/// How long a keyring call may take before the keyring counts as unusable (a locked or absent secret service
/// can block instead of failing).
const KEYRING_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the password is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Keyring,
    File,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Keyring => "keyring",
            Backend::File => "file",
        })
    }
}

/// The secrets file of an instance.
pub fn file_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.secrets.json"))
}

/// What the secrets file holds.
#[derive(Deserialize)]
struct SecretsFile {
    threatq_password: SecretString,
}

/// The backend to store a new password in: the one `TQ_SECRETS_BACKEND` names, else the keyring if a set-and-get
/// round trip succeeds within a few seconds, else the file.
pub fn choose(name: &str, env: Env) -> Result<Backend, Error> {
    match env("TQ_SECRETS_BACKEND").map(|v| v.to_ascii_lowercase()).as_deref() {
        Some("file") => Ok(Backend::File),
        Some("keyring") => Ok(Backend::Keyring),
        Some(other) => Err(Error::LocalConfig(format!("TQ_SECRETS_BACKEND is {other:?}; set it to file or keyring"))),
        None => Ok(match keyring_probe(name) {
            Ok(()) => Backend::Keyring,
            Err(reason) => {
                tracing::info!(%reason, "no usable OS keyring; the password goes to an owner-only file");
                Backend::File
            }
        }),
    }
}

/// Stores the ThreatQ password of an instance.
pub fn store(dir: &Path, name: &str, backend: Backend, password: &SecretString) -> Result<(), Error> {
    match backend {
        Backend::File => {
            // Built by hand: `SecretString` refuses to serialise, so the clear text exists only in this buffer.
            let json = serde_json::json!({ "threatq_password": password.expose_secret() }).to_string();
            write_atomically(&file_path(dir, name), json.as_bytes(), 0o600)
        }
        Backend::Keyring => {
            let password = password.clone();
            with_keyring(name, move |entry| entry.set_password(password.expose_secret())).map_err(|reason| {
                Error::Other(format!("cannot store the ThreatQ password in the OS keyring: {reason}"))
            })
        }
    }
}

/// The stored ThreatQ password of an instance.
pub fn load(dir: &Path, name: &str, backend: Backend) -> Result<SecretString, Error> {
    let missing = |where_: String| {
        Error::LocalConfig(format!(
            "the ThreatQ password of {name:?} is not in {where_}; set THREATQ_PASSWORD, or remove {} and run again \
             to answer the setup prompts",
            super::local::path(dir, name).display()
        ))
    };
    match backend {
        Backend::File => {
            let path = file_path(dir, name);
            let text = match std::fs::read_to_string(&path) {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(missing(path.display().to_string())),
                Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
            };
            // The parser's message could quote the file, so it is not passed on.
            let file: SecretsFile = serde_json::from_str(&text).map_err(|_| missing(path.display().to_string()))?;
            Ok(file.threatq_password)
        }
        Backend::Keyring => match with_keyring(name, |entry| entry.get_password()) {
            Ok(password) => Ok(SecretString::from(password)),
            Err(KeyringFailure::Keyring(keyring::Error::NoEntry)) => {
                Err(missing(format!("the OS keyring (service {KEYRING_SERVICE})")))
            }
            Err(reason) => Err(Error::Other(format!("cannot read the ThreatQ password from the OS keyring: {reason}"))),
        },
    }
}

/// The password for this run: `THREATQ_PASSWORD` when set, else the stored one.
pub fn password(dir: &Path, name: &str, backend: Backend, env: Env) -> Result<SecretString, Error> {
    match env("THREATQ_PASSWORD") {
        Some(password) => Ok(SecretString::from(password)),
        None => load(dir, name, backend),
    }
}

#[derive(Debug, thiserror::Error)]
enum KeyringFailure {
    #[error("{0}")]
    Keyring(keyring::Error),
    #[error("the keyring did not answer within {} s", KEYRING_TIMEOUT.as_secs())]
    Timeout,
}

/// Runs one keyring call on its own thread with a deadline; a blocked secret service leaves that thread behind
/// rather than the run.
fn with_keyring<T: Send + 'static>(
    user: &str,
    call: impl FnOnce(&keyring::Entry) -> keyring::Result<T> + Send + 'static,
) -> Result<T, KeyringFailure> {
    let (tx, rx) = mpsc::channel();
    let user = user.to_owned();
    std::thread::spawn(move || {
        let _ = tx.send(keyring::Entry::new(KEYRING_SERVICE, &user).and_then(|entry| call(&entry)));
    });
    rx.recv_timeout(KEYRING_TIMEOUT).map_err(|_| KeyringFailure::Timeout)?.map_err(KeyringFailure::Keyring)
}

/// A set, get and delete of a throw-away entry: only a keyring that does all three is used.
fn keyring_probe(name: &str) -> Result<(), KeyringFailure> {
    let probe = format!("{name}.probe-{}", std::process::id());
    with_keyring(&probe, |entry| {
        entry.set_password("probe")?;
        let back = entry.get_password()?;
        entry.delete_credential()?;
        if back == "probe" { Ok(()) } else { Err(keyring::Error::Invalid("probe".into(), "read back differs".into())) }
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::connector::local::tests::env_of;

    #[test]
    fn the_file_backend_is_owner_only_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let secret = SecretString::from("p@ss \"quoted\" wörd".to_owned());
        store(dir.path(), "inst", Backend::File, &secret).unwrap();
        let path = file_path(dir.path(), "inst");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let back = load(dir.path(), "inst", Backend::File).unwrap();
        assert_eq!(back.expose_secret(), secret.expose_secret());
        assert!(!format!("{back:?}").contains("wörd"), "a loaded secret does not print");
    }

    #[test]
    fn a_missing_password_says_how_to_fix_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = load(dir.path(), "inst", Backend::File).unwrap_err();
        assert_eq!(err.code(), 3);
        assert!(err.to_string().contains("THREATQ_PASSWORD"), "{err}");
    }

    #[test]
    fn the_environment_password_wins() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path(), "inst", Backend::File, &SecretString::from("stored".to_owned())).unwrap();
        let env = env_of(&[("THREATQ_PASSWORD", "from-env")]);
        assert_eq!(password(dir.path(), "inst", Backend::File, &env).unwrap().expose_secret(), "from-env");
        assert_eq!(password(dir.path(), "inst", Backend::File, &env_of(&[])).unwrap().expose_secret(), "stored");
    }

    #[test]
    fn the_backend_can_be_forced() {
        assert_eq!(choose("inst", &env_of(&[("TQ_SECRETS_BACKEND", "file")])).unwrap(), Backend::File);
        assert_eq!(choose("inst", &env_of(&[("TQ_SECRETS_BACKEND", "KEYRING")])).unwrap(), Backend::Keyring);
        let err = choose("inst", &env_of(&[("TQ_SECRETS_BACKEND", "vault")])).unwrap_err();
        assert!(err.to_string().contains("TQ_SECRETS_BACKEND"), "{err}");
    }

    /// On a host without a secret service (CI, a headless ThreatQ box) the probe fails in bounded time and the
    /// file is chosen; where a keyring answers, the keyring is chosen and holds the password.
    #[test]
    fn without_a_forced_backend_the_probe_decides() {
        let dir = tempfile::tempdir().unwrap();
        let backend = choose("tqdevo-test", &env_of(&[])).unwrap();
        let keyring_answers = keyring_probe("tqdevo-test").is_ok();
        assert_eq!(backend == Backend::Keyring, keyring_answers);
        let secret = SecretString::from("round-trip".to_owned());
        store(dir.path(), "tqdevo-test", backend, &secret).unwrap();
        assert_eq!(load(dir.path(), "tqdevo-test", backend).unwrap().expose_secret(), "round-trip");
        if backend == Backend::Keyring {
            with_keyring("tqdevo-test", |entry| entry.delete_credential()).unwrap();
        }
    }
}
