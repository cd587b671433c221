//! What the first run stores on this host (one file per instance in the `-c` directory), and how a run turns it
//! into ThreatQ client options. Nothing secret lives here: the password is kept by [`super::secrets`].

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use super::secrets::Backend;
use crate::Error;
use crate::field::parse_bool;
use crate::file::NO_FOLLOW;
use crate::threatq::ClientOptions;

/// Reads an environment variable; tests pass a map instead of touching the process environment.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment, with empty values counted as unset.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The connection to ThreatQ as answered at the first run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalConfig {
    /// The instance (`-n`), also the connector's name in ThreatQ.
    pub instance: String,
    /// `None`: the host was left blank, so `THREATQ_HOST` is read at every run (ThreatQ v6 containers).
    pub host: Option<String>,
    pub client_id: String,
    pub username: String,
    /// The seed's default status for created objects; this exporter creates none, so it is only shown.
    pub status: String,
    /// Where the ThreatQ password is kept.
    pub secrets: Backend,
}

/// The local configuration file of an instance.
pub fn path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.json"))
}

impl LocalConfig {
    /// The instance's stored configuration; `None` before the first run.
    pub fn load(dir: &Path, name: &str) -> Result<Option<LocalConfig>, Error> {
        let path = path(dir, name);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        };
        serde_json::from_str(&text).map(Some).map_err(|e| {
            Error::LocalConfig(format!(
                "{} is damaged ({e}); remove it and run again to answer the setup prompts",
                path.display()
            ))
        })
    }

    /// Writes the file atomically, readable by its owner only.
    pub fn save(&self, dir: &Path) -> Result<(), Error> {
        let json = serde_json::to_string_pretty(self).expect("serialisable") + "\n";
        write_atomically(&path(dir, &self.instance), json.as_bytes(), 0o600)
    }

    /// The host this run signs in to: the stored one, or `THREATQ_HOST` when it was left blank.
    pub fn effective_host(&self, env: Env) -> Result<String, Error> {
        match &self.host {
            Some(host) => Ok(host.clone()),
            None => env("THREATQ_HOST").map(|h| h.trim().to_owned()).ok_or_else(|| {
                Error::LocalConfig(
                    "the ThreatQ host was left blank at setup, so it is read from THREATQ_HOST at every run, but \
                     THREATQ_HOST is not set"
                        .into(),
                )
            }),
        }
    }

    /// Client options for a configured run: [`Self::client_options`] with the password from `THREATQ_PASSWORD`
    /// or the store.
    pub fn options_for_run(&self, dir: &Path, env: Env) -> Result<ClientOptions, Error> {
        self.client_options(super::secrets::password(dir, &self.instance, self.secrets, env)?, env)
    }

    /// Client options for this run: the host (see [`Self::effective_host`]), `THREATQ_CA_FILE` and the explicit
    /// `THREATQ_TLS_VERIFY=false` opt-out, which is logged.
    pub fn client_options(&self, password: SecretString, env: Env) -> Result<ClientOptions, Error> {
        let ca_file = env("THREATQ_CA_FILE").map(PathBuf::from);
        if let Some(ca) = &ca_file
            && !ca.is_file()
        {
            return Err(Error::LocalConfig(format!("THREATQ_CA_FILE names {}, which is not a file", ca.display())));
        }
        let tls_verify = match env("THREATQ_TLS_VERIFY") {
            None => true,
            Some(v) => parse_bool(&v)
                .ok_or_else(|| Error::LocalConfig(format!("THREATQ_TLS_VERIFY is {v:?}; set it to true or false")))?,
        };
        // Verify off is logged once, where the TLS setup takes it (`threatq::tls`).
        let host = self.effective_host(env)?;
        Ok(ClientOptions {
            host,
            client_id: self.client_id.clone(),
            username: self.username.clone(),
            password,
            ca_file,
            tls_verify,
        })
    }
}

/// Opens `path` (what: "the run lock", ...) with [`NO_FOLLOW`]; a symbolic link there is a mistake to fix (exit 3).
pub(crate) fn open_no_follow(
    options: &mut std::fs::OpenOptions,
    path: &Path,
    what: &str,
) -> Result<std::fs::File, Error> {
    use std::os::unix::fs::OpenOptionsExt as _;
    options.custom_flags(NO_FOLLOW).open(path).map_err(|e| {
        if e.raw_os_error() == Some(nix::libc::ELOOP) {
            Error::LocalConfig(format!(
                "{what} {} is a symbolic link, which a run never follows; remove it: rm {}",
                path.display(),
                path.display()
            ))
        } else {
            Error::io(format!("opening {what} {}", path.display()), e)
        }
    })
}

/// Refuses, as ssh does, a config directory or secrets file that others may write (exit 3, with the `chmod`
/// that fixes it): whoever can write there can swap the setup, the state or the password file.
pub fn check_not_writable_by_others(path: &Path) -> Result<(), Error> {
    let Ok(metadata) = std::fs::metadata(path) else { return Ok(()) };
    let mode = metadata.permissions().mode();
    if mode & 0o022 == 0 {
        return Ok(());
    }
    Err(Error::LocalConfig(format!(
        "{} is writable by {} (mode {:o}); run: chmod go-w {}",
        path.display(),
        if mode & 0o002 != 0 { "everyone" } else { "its group" },
        mode & 0o7777,
        path.display()
    )))
}

/// Replaces `path` with `bytes` in one durable step ([`crate::file::replace`]); the file has `mode` from its
/// creation on.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    crate::file::replace(path, mode, |file| file.write_all(bytes))
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashMap;

    use secrecy::ExposeSecret as _;

    use super::*;

    /// An environment made of the given pairs.
    pub(crate) fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        move |name| map.get(name).cloned()
    }

    fn sample(host: Option<&str>) -> LocalConfig {
        LocalConfig {
            instance: "tq-conn-devo-ioc-exporter".into(),
            host: host.map(Into::into),
            client_id: "cid".into(),
            username: "analyst@example.com".into(),
            status: "Review".into(),
            secrets: Backend::File,
        }
    }

    #[test]
    fn files_others_may_write_are_refused_with_the_chmod_to_run() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_not_writable_by_others(dir.path()).is_ok());
        assert!(check_not_writable_by_others(&dir.path().join("absent")).is_ok());
        for (mode, who) in [(0o770, "its group"), (0o757, "everyone")] {
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode)).unwrap();
            let err = check_not_writable_by_others(dir.path()).unwrap_err();
            assert_eq!(err.code(), 3);
            let message = err.to_string();
            assert!(
                message.contains(who) && message.contains(&format!("chmod go-w {}", dir.path().display())),
                "{message}"
            );
        }
    }

    #[test]
    fn a_planted_symbolic_link_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep me").unwrap();
        let planted = dir.path().join("x.lock");
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        let mut options = std::fs::File::options();
        options.read(true).write(true).create(true).truncate(true);
        let err = open_no_follow(&mut options, &planted, "the run lock").unwrap_err();
        assert_eq!(err.code(), 3);
        assert!(err.to_string().contains("is a symbolic link") && err.to_string().contains("rm "), "{err}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
    }

    #[test]
    fn saves_owner_only_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(LocalConfig::load(dir.path(), "tq-conn-devo-ioc-exporter").unwrap(), None);
        let config = sample(Some("tq.example.com"));
        config.save(dir.path()).unwrap();
        let mode = std::fs::metadata(path(dir.path(), &config.instance)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(LocalConfig::load(dir.path(), &config.instance).unwrap(), Some(config));
    }

    #[test]
    fn a_damaged_file_names_itself() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(path(dir.path(), "x"), "{not json").unwrap();
        let err = LocalConfig::load(dir.path(), "x").unwrap_err();
        assert_eq!(err.code(), 3);
        assert!(err.to_string().contains("x.json"), "{err}");
    }

    #[test]
    fn a_blank_host_comes_from_the_environment_at_every_run() {
        let config = sample(None);
        let err = config.client_options("pw".to_owned().into(), &env_of(&[])).unwrap_err();
        assert!(err.to_string().contains("THREATQ_HOST"), "{err}");
        let options =
            config.client_options("pw".to_owned().into(), &env_of(&[("THREATQ_HOST", "tq.internal:8443")])).unwrap();
        assert_eq!(options.host, "tq.internal:8443");
        assert_eq!(options.password.expose_secret(), "pw");
        assert!(options.tls_verify);
        assert_eq!(options.ca_file, None);
    }

    #[test]
    fn a_configured_run_signs_in_with_the_stored_password() {
        let dir = tempfile::tempdir().unwrap();
        let config = sample(Some("tq.example.com"));
        super::super::secrets::store(dir.path(), &config.instance, Backend::File, &"stored".to_owned().into()).unwrap();
        let options = config.options_for_run(dir.path(), &env_of(&[])).unwrap();
        assert_eq!((options.host.as_str(), options.username.as_str()), ("tq.example.com", "analyst@example.com"));
        assert_eq!(options.password.expose_secret(), "stored");
        assert!(!format!("{options:?}").contains("stored"), "options never print the password");
    }

    #[test]
    fn tls_settings_come_from_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "pem").unwrap();
        let config = sample(Some("tq"));
        let ca_text = ca.to_str().unwrap();
        let env = env_of(&[("THREATQ_CA_FILE", ca_text), ("THREATQ_TLS_VERIFY", "FALSE")]);
        let options = config.client_options("pw".to_owned().into(), &env).unwrap();
        assert_eq!(options.ca_file.as_deref(), Some(ca.as_path()));
        assert!(!options.tls_verify);
        // The same words as the UI's checkboxes.
        let off = env_of(&[("THREATQ_TLS_VERIFY", "off")]);
        assert!(!config.client_options("pw".to_owned().into(), &off).unwrap().tls_verify);

        let missing = env_of(&[("THREATQ_CA_FILE", "/nonexistent/ca.pem")]);
        let err = config.client_options("pw".to_owned().into(), &missing).unwrap_err();
        assert!(err.to_string().contains("THREATQ_CA_FILE"), "{err}");
        let garbled = env_of(&[("THREATQ_TLS_VERIFY", "nope")]);
        let err = config.client_options("pw".to_owned().into(), &garbled).unwrap_err();
        assert!(err.to_string().contains("THREATQ_TLS_VERIFY"), "{err}");
    }

    #[test]
    fn atomic_writes_replace_and_keep_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        write_atomically(&file, b"one", 0o644).unwrap();
        write_atomically(&file, b"two", 0o644).unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"two");
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o644);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file is left behind");
    }
}
