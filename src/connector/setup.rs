//! The first run (prompts, sign-in, registration with ThreatQ, storing what later runs need).

use std::io::{BufRead, IsTerminal as _, Write};
use std::ops::Deref;
use std::path::Path;

use secrecy::SecretString;

use super::config;
use super::local::{self, Env, LocalConfig};
use super::secrets::{self, Backend};
use crate::Error;
use crate::threatq::{ClientOptions, ConnectorRegistry};

/// The last line of a successful first run, as the seed connector printed it.
pub const CONFIGURED: &str = "Connector configured. Set information in UI";

/// Asks the setup questions and shows the outcome.
pub trait Prompter {
    /// One answer without its line end; `None` when the input has ended. `hidden` answers are not echoed.
    fn ask(&mut self, prompt: &str, hidden: bool) -> std::io::Result<Option<String>>;
    fn tell(&mut self, line: &str) -> std::io::Result<()>;
}

/// Prompts on `output`, answers from `input` line by line: the terminal, or answers piped in by a script.
pub struct LinePrompter<R, W> {
    input: R,
    output: W,
    /// Hidden answers come from the terminal itself, unechoed, when the input is one.
    terminal: bool,
}

impl LinePrompter<std::io::StdinLock<'static>, std::io::Stdout> {
    pub fn stdio() -> Self {
        let stdin = std::io::stdin();
        let terminal = stdin.is_terminal();
        LinePrompter { input: stdin.lock(), output: std::io::stdout(), terminal }
    }
}

impl<R: BufRead, W: Write> LinePrompter<R, W> {
    /// Answers from a script (never a terminal).
    pub fn new(input: R, output: W) -> Self {
        LinePrompter { input, output, terminal: false }
    }
}

impl<R: BufRead, W: Write> Prompter for LinePrompter<R, W> {
    fn ask(&mut self, prompt: &str, hidden: bool) -> std::io::Result<Option<String>> {
        if hidden && self.terminal {
            return rpassword::prompt_password(format!("{prompt} ")).map(Some);
        }
        write!(self.output, "{prompt} ")?;
        self.output.flush()?;
        let mut line = String::new();
        if self.input.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        if !self.terminal {
            // The answer was not typed, so the prompt's line was never ended.
            writeln!(self.output)?;
        }
        Ok(Some(line.trim_end_matches(['\r', '\n']).to_owned()))
    }

    fn tell(&mut self, line: &str) -> std::io::Result<()> {
        writeln!(self.output, "{line}")
    }
}

/// One setup question, answered by its environment variable when that is set.
struct Question {
    prompt: &'static str,
    env: &'static str,
    hidden: bool,
    /// What a blank answer means; `None`: an answer is required.
    blank: Option<&'static str>,
}

const HOST: Question = Question {
    prompt: "ThreatQ Host:",
    env: "THREATQ_HOST",
    hidden: false,
    blank: Some("take THREATQ_HOST from the environment at every run"),
};
const CLIENT_ID: Question =
    Question { prompt: "ThreatQ Client ID:", env: "THREATQ_CLIENT_ID", hidden: false, blank: None };
const USERNAME: Question =
    Question { prompt: "ThreatQ Username:", env: "THREATQ_USERNAME", hidden: false, blank: None };
const PASSWORD: Question = Question { prompt: "ThreatQ Password:", env: "THREATQ_PASSWORD", hidden: true, blank: None };
const STATUS: Question = Question { prompt: "Status:", env: "THREATQ_STATUS", hidden: false, blank: Some("no status") };

impl Question {
    fn answer(&self, prompter: &mut dyn Prompter, env: Env) -> Result<String, Error> {
        if let Some(value) = env(self.env) {
            return Ok(value.trim().to_owned());
        }
        let label = self.prompt.trim_end_matches(':');
        let answer = prompter
            .ask(self.prompt, self.hidden)
            .map_err(|e| Error::io(format!("reading the answer to {label:?}"), e))?
            .ok_or_else(|| {
                Error::LocalConfig(format!(
                    "no answer to {label:?}: the input has ended; answer the prompt, or set {} to run the setup \
                     without prompts",
                    self.env
                ))
            })?;
        let answer = answer.trim().to_owned();
        if answer.is_empty() && self.blank.is_none() {
            return Err(Error::LocalConfig(format!("{label} is required (or set {})", self.env)));
        }
        Ok(answer)
    }
}

/// The first run of an instance: asks the five questions (each skipped when its environment variable is set),
/// signs in through `connect`, registers the connector with ThreatQ, stores the local configuration and the
/// password, and ends with [`CONFIGURED`]. Nothing is stored unless ThreatQ accepted the sign-in and the
/// registration.
pub async fn first_run<C, Fut, R, E>(
    dir: &Path,
    name: &str,
    prompter: &mut dyn Prompter,
    env: Env<'_>,
    connect: C,
) -> Result<LocalConfig, Error>
where
    C: FnOnce(ClientOptions) -> Fut,
    Fut: Future<Output = Result<R, E>>,
    R: Deref<Target: ConnectorRegistry>,
    E: Into<Error>,
{
    let host = HOST.answer(prompter, env)?;
    let client_id = CLIENT_ID.answer(prompter, env)?;
    let username = USERNAME.answer(prompter, env)?;
    let password = SecretString::from(PASSWORD.answer(prompter, env)?);
    let status = STATUS.answer(prompter, env)?;

    let mut local = LocalConfig {
        instance: name.to_owned(),
        host: Some(host).filter(|h| !h.is_empty()),
        client_id,
        username,
        status,
        // Decided below, once ThreatQ has accepted the password.
        secrets: Backend::File,
    };
    let registry = connect(local.client_options(password.clone(), env)?).await.map_err(Into::into)?;
    let record = registry.ensure_registered(&config::definition(Some(name))).await?;
    tracing::info!(id = record.id, name = %record.name, "registered with ThreatQ");

    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating the config directory {}", dir.display()), e))?;
    local.secrets = secrets::choose(name, env)?;
    secrets::store(dir, name, local.secrets, &password)?;
    local.save(dir)?;
    tracing::info!(config = %local::path(dir, name).display(), secrets = %local.secrets, "setup stored");
    prompter.tell(CONFIGURED).map_err(|e| Error::io("writing to stdout", e))?;
    Ok(local)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::{Arc, Mutex};

    use chrono::{DateTime, Utc};
    use secrecy::ExposeSecret as _;

    use super::*;
    use crate::connector::local::tests::env_of;
    use crate::threatq::{self, ConnectorDefinition, ConnectorRecord};

    /// A registry that records what the setup asked of it.
    #[derive(Default)]
    struct FakeRegistry {
        registered: Mutex<Vec<ConnectorDefinition>>,
    }

    #[async_trait::async_trait]
    impl ConnectorRegistry for FakeRegistry {
        async fn find_connector(&self, _: &str) -> Result<Option<ConnectorRecord>, threatq::Error> {
            Ok(None)
        }
        async fn ensure_registered(&self, definition: &ConnectorDefinition) -> Result<ConnectorRecord, threatq::Error> {
            self.registered.lock().unwrap().push(definition.clone());
            Ok(ConnectorRecord {
                id: 7,
                name: definition.name.clone(),
                display_name: definition.display_name.clone(),
                version: definition.version.clone(),
                is_active: false,
                custom_fields: Default::default(),
                user_fields: definition.user_fields.clone(),
                last_import_at: None,
                last_import_count: None,
            })
        }
        async fn report_run(&self, _: u64, _: DateTime<Utc>, _: u64) -> Result<(), threatq::Error> {
            Ok(())
        }
    }

    /// Runs the setup with `answers` piped in; returns the outcome, what was printed and the sign-in options.
    fn setup(
        dir: &Path,
        answers: &str,
        env: &[(&str, &str)],
        registry: Arc<FakeRegistry>,
    ) -> (Result<LocalConfig, Error>, String, Option<ClientOptions>) {
        let mut output = Vec::new();
        let mut prompter = LinePrompter::new(answers.as_bytes(), &mut output);
        let env = env_of(env);
        let mut seen = None;
        let result = tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(first_run(
            dir,
            "tq-conn-devo-ioc-exporter",
            &mut prompter,
            &env,
            |options| {
                seen = Some(options);
                async { Ok::<_, Error>(registry) }
            },
        ));
        (result, String::from_utf8(output).unwrap(), seen)
    }

    #[test]
    fn piped_answers_sign_in_register_and_store() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Arc::new(FakeRegistry::default());
        let answers = "tq.example.com\ncid-1\nanalyst@example.com\nhunter2\nReview\n";
        let (result, printed, options) =
            setup(dir.path(), answers, &[("TQ_SECRETS_BACKEND", "file")], registry.clone());
        let local = result.unwrap();

        let prompts: Vec<&str> = printed.lines().collect();
        assert_eq!(
            prompts,
            [
                "ThreatQ Host: ",
                "ThreatQ Client ID: ",
                "ThreatQ Username: ",
                "ThreatQ Password: ",
                "Status: ",
                CONFIGURED
            ]
        );
        let options = options.unwrap();
        assert_eq!((options.host.as_str(), options.client_id.as_str()), ("tq.example.com", "cid-1"));
        assert_eq!(options.password.expose_secret(), "hunter2");
        assert_eq!(registry.registered.lock().unwrap().as_slice(), [config::definition(None)]);

        assert_eq!(LocalConfig::load(dir.path(), "tq-conn-devo-ioc-exporter").unwrap(), Some(local.clone()));
        assert_eq!(local.status, "Review");
        let stored = std::fs::read_to_string(local::path(dir.path(), "tq-conn-devo-ioc-exporter")).unwrap();
        assert!(!stored.contains("hunter2"), "the local config holds no secret");
        let password = secrets::load(dir.path(), "tq-conn-devo-ioc-exporter", local.secrets).unwrap();
        assert_eq!(password.expose_secret(), "hunter2");
    }

    #[test]
    fn the_password_never_reaches_the_log() {
        use crate::test_log::Captured;
        let dir = tempfile::tempdir().unwrap();
        let logs = Captured::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .finish();
        let answers = "tq.example.com\ncid\nu\nhunter2-secret\n\n";
        let env = [("TQ_SECRETS_BACKEND", "file"), ("THREATQ_TLS_VERIFY", "false")];
        let (result, printed, _) =
            tracing::subscriber::with_default(subscriber, || setup(dir.path(), answers, &env, Arc::default()));
        result.unwrap();
        let logged = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        assert!(logged.contains("registered with ThreatQ"), "the log was captured: {logged}");
        assert!(!logged.contains("hunter2-secret") && !printed.contains("hunter2-secret"));
    }

    #[test]
    fn environment_variables_answer_without_prompts_and_a_blank_host_means_from_env() {
        let dir = tempfile::tempdir().unwrap();
        let env = [
            ("THREATQ_HOST", "tq.v6.internal"),
            ("THREATQ_CLIENT_ID", "cid"),
            ("THREATQ_USERNAME", "u"),
            ("THREATQ_PASSWORD", "pw"),
            ("THREATQ_STATUS", "Active"),
            ("TQ_SECRETS_BACKEND", "file"),
        ];
        let (result, printed, options) = setup(dir.path(), "", &env, Arc::default());
        let local = result.unwrap();
        assert_eq!(printed, format!("{CONFIGURED}\n"), "no prompt was shown");
        assert_eq!(options.unwrap().host, "tq.v6.internal");
        assert_eq!(local.host.as_deref(), Some("tq.v6.internal"));

        // A blank answer to the host prompt: the host comes from THREATQ_HOST at every run.
        let dir = tempfile::tempdir().unwrap();
        let env = [("THREATQ_PASSWORD", "pw"), ("TQ_SECRETS_BACKEND", "file")];
        let (result, _, options) = setup(dir.path(), "\ncid\nu\n\n", &env, Arc::default());
        assert!(result.unwrap_err().to_string().contains("THREATQ_HOST"), "blank host needs THREATQ_HOST now");
        assert!(options.is_none(), "no sign-in was tried");
        assert_eq!(LocalConfig::load(dir.path(), "tq-conn-devo-ioc-exporter").unwrap(), None);
    }

    #[test]
    fn ended_input_names_the_variable_to_set() {
        let dir = tempfile::tempdir().unwrap();
        let (result, _, _) = setup(dir.path(), "tq.example.com\ncid\n", &[], Arc::default());
        let err = result.unwrap_err();
        assert_eq!(err.code(), 3);
        assert!(err.to_string().contains("THREATQ_USERNAME"), "{err}");
        assert_eq!(LocalConfig::load(dir.path(), "tq-conn-devo-ioc-exporter").unwrap(), None);
    }

    #[test]
    fn a_refused_sign_in_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut prompter = LinePrompter::new("tq\ncid\nu\nwrong\n\n".as_bytes(), Vec::new());
        let env = env_of(&[]);
        let refused = |options: ClientOptions| async move {
            Err::<Arc<FakeRegistry>, _>(threatq::Error::SignIn { host: options.host, message: "bad password".into() })
        };
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let err = rt.block_on(first_run(dir.path(), "inst", &mut prompter, &env, refused)).unwrap_err();
        assert_eq!(err.code(), 4);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
