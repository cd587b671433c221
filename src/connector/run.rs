//! A run of the connector: the first-run setup when this instance has none; otherwise sign in, pull the live
//! configuration and the toggle from ThreatQ, export the collection to Devo, and report back.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use std::io::IsTerminal as _;

use futures::TryStreamExt as _;
use serde_json::json;

use super::config::{self, Settings};
use super::local::{Env, LocalConfig};
use super::logging::RECORD;
use super::progress::Progress;
use super::setup::{self, Prompter};
use super::sync::{self, Summary, SyncOptions};
use super::{cron, lock};
use crate::Error;
use crate::devo::{self, DevoOptions};
use crate::export::{PackedRows, RowMapper};
use crate::threatq::{Client, ConnectorRegistry, IndicatorRef};

/// What one run needs besides the ThreatQ record.
pub struct RunContext<'a> {
    /// The `-c` directory, absolute.
    pub dir: PathBuf,
    /// The instance (`-n`): the ThreatQ record's name and the prefix of every local file.
    pub name: String,
    pub cron_dir: PathBuf,
    pub dry_run: bool,
    pub allow_mass_delete: bool,
    /// The environment (`THREATQ_*`, `DEVO_CA_FILE`, `DEVO_RELAY_DELAY_SECONDS`); tests and `demo` pass a map.
    pub env: Env<'a>,
    /// Asks the first-run questions.
    pub prompter: &'a mut dyn Prompter,
    /// Where the summary and a dry run's plan go.
    pub out: &'a mut dyn std::io::Write,
    /// Whether the logs go to `out` too (`-ll stdout`). Otherwise the summary goes to the log, and to `out` only
    /// when it is a terminal, so that cron, which mails whatever a job prints, stays quiet.
    pub logs_to_out: bool,
}

/// How a run ended, when it did not fail.
#[derive(Debug)]
pub enum Outcome {
    /// The first run registered the connector; the user fills the UI next.
    Configured,
    /// The toggle is off in ThreatQ.
    Disabled,
    Synced(Summary),
}

/// The delivered state of an instance.
pub fn state_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.state"))
}

/// The report of the last run (`last-run.json` for the default instance, `<name>.last-run.json` for others).
pub fn last_run_path(dir: &Path, name: &str) -> PathBuf {
    if name == config::CONNECTOR_NAME { dir.join("last-run.json") } else { dir.join(format!("{name}.last-run.json")) }
}

/// Runs once. Every outcome, failures too, is written to the last-run report and logged (see [`record`]).
pub async fn run(ctx: RunContext<'_>) -> Result<Outcome, Error> {
    let started = Utc::now();
    let (dir, name, logs_to_out) = (ctx.dir.clone(), ctx.name.clone(), ctx.logs_to_out);
    let result = run_inner(ctx, started).await;
    if matches!(result, Ok(Outcome::Configured)) && !logs_to_out {
        tracing::info!(target: RECORD, "{}", setup::CONFIGURED);
    }
    if !matches!(result, Ok(Outcome::Synced(Summary { dry_run: true, .. }))) {
        record(&dir, &name, started, result.as_ref());
    }
    result
}

/// Writes the last-run report of the instance `name` in `dir`: `ok` with the summary, `disabled`, `configured`,
/// `stopped` with the signal, or `failed` with the exit code and the message. A directory that is gone or cannot
/// be written costs the report, not the run (the log and stderr still have the outcome).
pub fn record(dir: &Path, name: &str, started: DateTime<Utc>, result: Result<&Outcome, &Error>) {
    if !dir.is_dir() {
        return;
    }
    let mut report = match result {
        Ok(Outcome::Synced(summary)) => json!({"status": "ok", "summary": summary}),
        Ok(Outcome::Disabled) => json!({"status": "disabled"}),
        Ok(Outcome::Configured) => json!({"status": "configured"}),
        Err(e @ Error::Stopped(signal)) => {
            json!({"status": "stopped", "signal": signal, "exit_code": e.code(), "error": e.to_string()})
        }
        Err(e) => json!({"status": "failed", "exit_code": e.code(), "error": e.to_string()}),
    };
    report["instance"] = json!(name);
    report["started_at"] = json!(started.to_rfc3339());
    report["finished_at"] = json!(Utc::now().to_rfc3339());
    let path = last_run_path(dir, name);
    if let Err(e) = super::local::write_atomically(&path, config::pretty_json(&report).as_bytes(), 0o600) {
        tracing::warn!("could not write {}: {e}", path.display());
    }
}

pub(super) async fn connect(options: crate::threatq::ClientOptions) -> Result<Client, crate::threatq::Error> {
    let client = Client::new(options)?;
    client.sign_in().await?;
    Ok(client)
}

async fn run_inner(mut ctx: RunContext<'_>, started: DateTime<Utc>) -> Result<Outcome, Error> {
    super::local::check_not_writable_by_others(&ctx.dir)?;
    super::local::check_not_writable_by_others(&super::secrets::file_path(&ctx.dir, &ctx.name))?;
    let Some(local) = LocalConfig::load(&ctx.dir, &ctx.name)? else {
        setup::first_run(&ctx.dir, &ctx.name, ctx.prompter, ctx.env, |options| async move {
            connect(options).await.map(Box::new)
        })
        .await?;
        return Ok(Outcome::Configured);
    };
    let client = connect(local.options_for_run(&ctx.dir, ctx.env)?).await?;
    let record = client.ensure_registered(&config::definition(Some(&ctx.name))).await?;
    if !record.is_active {
        tell(&mut ctx, &format!("{}: disabled in ThreatQ; turn the toggle on in the integration page", record.name))?;
        return Ok(Outcome::Disabled);
    }
    for field in config::unknown_fields(&record.custom_fields) {
        tracing::warn!(field, "ignoring an unknown field in the ThreatQ configuration");
    }
    let settings = config::parse_custom_fields(&record.custom_fields)?;
    let devo_options = DevoOptions::from_env(ctx.env)?;
    let uploader = devo::uploader(&settings.devo, &devo_options)?;
    match cron::activate(&ctx.cron_dir, &ctx.name) {
        Ok(true) => tracing::info!("configured in ThreatQ: the cron job is now enabled"),
        Ok(false) => {}
        // The export does not need cron; the log (and `doctor`) say why the job will not run on its own.
        Err(e) => tracing::error!("configured in ThreatQ, but {e}"),
    }

    let _lock = if settings.allow_multiple_runs || ctx.dry_run {
        None
    } else {
        let (dir, name, kill_after) = (ctx.dir.clone(), ctx.name.clone(), settings.kill_previous_after);
        // Stopping an old holder waits for it, so keep that off the async workers.
        let guard = tokio::task::spawn_blocking(move || lock::acquire(&dir, &name, kill_after))
            .await
            .map_err(|e| Error::Other(format!("the lock task failed: {e}")))??;
        Some(guard)
    };

    let summary = export(&client, &settings, uploader.as_ref(), &ctx, started).await?;
    if summary.dry_run {
        print_plan(ctx.out, &summary).map_err(|e| Error::io("writing to stdout", e))?;
        return Ok(Outcome::Synced(summary));
    }
    tell(&mut ctx, &summary.line())?;
    // The lookup is delivered and the state saved: a report ThreatQ refuses does not undo that.
    if let Err(e) = client.report_run(record.id, Utc::now(), summary.unique).await {
        tracing::warn!("the run succeeded, but ThreatQ refused its report (last_import_at/count): {e}");
    }
    Ok(Outcome::Synced(summary))
}

/// The line that ends a run the user should see: on `out` when the logs go there too or it is a terminal, and in
/// the log otherwise (at every verbosity: it is the run's record), so that cron, which mails whatever a job
/// prints, stays quiet.
fn tell(ctx: &mut RunContext<'_>, line: &str) -> Result<(), Error> {
    if ctx.logs_to_out || std::io::stdout().is_terminal() {
        writeln!(ctx.out, "{line}").map_err(|e| Error::io("writing to stdout", e))?;
    }
    if !ctx.logs_to_out {
        tracing::info!(target: RECORD, "{line}");
    }
    Ok(())
}

async fn export(
    client: &Client,
    settings: &Settings,
    uploader: &dyn devo::Uploader,
    ctx: &RunContext<'_>,
    started: DateTime<Utc>,
) -> Result<Summary, Error> {
    let collection = client.find_collection(&settings.data_collection_name).await?;
    tracing::info!(collection = %collection.name, devo = %uploader.describe(), "exporting");
    let progress = Progress::new("IOCs");
    let options = SyncOptions { dry_run: ctx.dry_run, allow_mass_delete: ctx.allow_mass_delete, now: started };
    let mapper = RowMapper::new(&settings.threatq_hostname);
    // Rows are made on the task that read the page, from the indicators as they are read.
    let map = move |rows: &mut PackedRows, ioc: IndicatorRef<'_>| mapper.push(rows, &ioc);
    let pages = client
        .pages_into(&collection, settings.batch_size, settings.parallel_page_requests.into(), map)
        .inspect_ok(|batch| {
            if let Some(total) = batch.total {
                progress.set_total(total);
            }
        })
        .map_ok(|batch| batch.indicators);
    let mut seen = 0;
    let summary = sync::sync(pages, settings, uploader, &state_path(&ctx.dir, &ctx.name), &options, |fetched| {
        progress.inc(fetched - seen);
        seen = fetched;
    })
    .await;
    progress.finish();
    summary
}

fn print_plan(out: &mut dyn std::io::Write, summary: &Summary) -> std::io::Result<()> {
    writeln!(out, "{}", summary.line())?;
    if let Some(reason) = &summary.reason {
        writeln!(out, "full replace because {reason}")?;
    }
    for (action, row) in &summary.preview {
        writeln!(out, "  {action:<6} {}", row.join(" | "))?;
    }
    writeln!(out, "dry run: nothing was sent to Devo and the state is unchanged")
}

/// Runs the commands of the connector that talk to ThreatQ or Devo (the run, `doctor`) with [`stoppable`].
pub fn execute(invocation: &super::cli::Invocation) -> Result<(), Error> {
    let mut stdout = std::io::stdout();
    stoppable(invocation, async {
        match &invocation.command {
            super::cli::Command::Doctor { json } => super::doctor::doctor(invocation, *json, &mut stdout).await,
            _ => {
                let dir = std::path::absolute(&invocation.config_dir)
                    .map_err(|e| Error::io(format!("resolving {}", invocation.config_dir.display()), e))?;
                let mut prompter = super::setup::LinePrompter::stdio();
                let ctx = RunContext {
                    dir,
                    name: invocation.name.clone(),
                    cron_dir: invocation.cron_dir.clone(),
                    dry_run: invocation.dry_run,
                    allow_mass_delete: invocation.allow_mass_delete,
                    env: &super::local::process_env,
                    prompter: &mut prompter,
                    out: &mut stdout,
                    logs_to_out: invocation.log == super::logging::LogTarget::Stdout,
                };
                run(ctx).await.map(drop)
            }
        }
    })
}

/// Runs `work` (a run, `doctor`, or `demo` and `sandbox`, which the binary hands in from the stand-ins' layer) on
/// a tokio runtime. SIGTERM and Ctrl-C stop it cleanly: a run's upload is dropped without its END, the lock is
/// released and the state is kept. They are how `sandbox` is meant to end, so for it they are a success.
pub fn stoppable(
    invocation: &super::cli::Invocation,
    work: impl std::future::Future<Output = Result<(), Error>>,
) -> Result<(), Error> {
    use super::cli::Command;
    crate::init_tls();
    let runtime = tokio::runtime::Runtime::new().map_err(|e| Error::io("starting the async runtime", e))?;
    runtime.block_on(async {
        let started = Utc::now();
        // Both handlers are in place before the work starts: `tokio::signal::ctrl_c()` would install its own only
        // when first polled, after the work's first steps, and a Ctrl-C before that killed the process outright.
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).map_err(|e| Error::io("installing the SIGTERM handler", e))?;
        let mut int = signal(SignalKind::interrupt()).map_err(|e| Error::io("installing the SIGINT handler", e))?;
        let stopped = tokio::select! {
            result = work => return result,
            _ = term.recv() => Error::Stopped("SIGTERM"),
            _ = int.recv() => Error::Stopped("SIGINT"),
        };
        if matches!(invocation.command, Command::Sandbox(_)) {
            return Ok(());
        }
        // The run's own report was dropped with it; a stopped run is recorded as stopped.
        if matches!(invocation.command, Command::Run)
            && !invocation.dry_run
            && let Ok(dir) = std::path::absolute(&invocation.config_dir)
        {
            record(&dir, &invocation.name, started, Err(&stopped));
        }
        Err(stopped)
    })
}
