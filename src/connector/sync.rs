//! One export: pages of IOCs → rows → plan against the delivered state → upload → new state.
//!
//! The state moves only after Devo accepted the upload, so a failure at any point leaves the next run to send
//! the same changes again (upserts and deletions are idempotent) and converge.

use std::path::Path;
use std::time::Instant;

use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};

use crate::Error;
use crate::connector::config::{Settings, SyncMode};
use crate::devo::{self, Delivery, Row, RowSource, Uploader};
use crate::export::{self, Action, Collected, ContentDigest, FullReason, PackedRows, Plan, State, Unusable};
use crate::threatq;

#[derive(Clone, Debug)]
pub struct SyncOptions {
    /// Print the plan; upload nothing and keep the state.
    pub dry_run: bool,
    /// Let the run delete more than the Mass-Delete Guard allows, or empty the lookup.
    pub allow_mass_delete: bool,
    pub now: DateTime<Utc>,
}

/// What a run did, for the summary line, `last-run.json` and the ThreatQ record.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Summary {
    /// `full` or `incremental`.
    pub action: String,
    /// Why a full replace was chosen.
    pub reason: Option<String>,
    pub fetched: u64,
    pub unique: u64,
    pub added: u64,
    pub changed: u64,
    pub deleted: u64,
    pub unchanged: u64,
    pub duplicates: u64,
    /// Rows Devo accepted (0 on a dry run or when nothing changed).
    pub sent: u64,
    pub seconds: f64,
    pub dry_run: bool,
    /// The first rows of each action, on a dry run: `(action, row)`.
    #[serde(skip)]
    pub preview: Vec<(&'static str, Row)>,
}

impl Summary {
    /// The one-line summary a run prints or logs at its end; a real run also says how many rows it sent.
    pub fn line(&self) -> String {
        format!(
            "{}{} sync: fetched {}, unique {}, added {}, changed {}, deleted {}, unchanged {}, duplicates {}, {}{:.1} s",
            match (self.dry_run, self.action.as_str()) {
                (false, _) => "",
                (true, "incremental") => "dry run of an ",
                (true, _) => "dry run of a ",
            },
            self.action,
            self.fetched,
            self.unique,
            self.added,
            self.changed,
            self.deleted,
            self.unchanged,
            self.duplicates,
            if self.dry_run { String::new() } else { format!("sent {}, ", self.sent) },
            self.seconds
        )
    }
}

/// How many rows of each action a dry run shows.
const PREVIEW_ROWS: usize = 5;

/// Everything that gives the rows their meaning in Devo: a change means the state says nothing about the lookup.
pub fn target_of(settings: &Settings, uploader: &dyn Uploader) -> ContentDigest {
    export::target_digest(&uploader.target(), &export::table(&settings.lookup_table_name))
}

fn full_reason(
    settings: &Settings,
    state: &Result<State, Unusable>,
    pending: bool,
    target: ContentDigest,
    now: DateTime<Utc>,
) -> Option<FullReason> {
    match state {
        Err(Unusable::Missing) => Some(FullReason::NoState),
        Err(Unusable::Corrupt(why)) => Some(FullReason::UnusableState(why.clone())),
        Ok(_) if settings.sync_mode == SyncMode::Full => Some(FullReason::SyncModeFull),
        Ok(state) if state.target != target => Some(FullReason::TargetChanged),
        Ok(_) if pending => Some(FullReason::UnfinishedUpload),
        Ok(state) => resync_due(now - state.last_full_at, settings.full_resync_every).then_some(FullReason::ResyncDue),
    }
}

/// Whether a full resync is due `since` the last one. A last full replace well "in the future" means the clock went
/// back: waiting for the clock to come round again would stall the resync for as long as the jump, so it is due
/// now and its timer restarts. (A few minutes of skew, as NTP steps, are not a jump.)
fn resync_due(since: chrono::TimeDelta, every: std::time::Duration) -> bool {
    since < -chrono::TimeDelta::minutes(5) || since.to_std().unwrap_or_default() >= every
}

/// Runs one export of `pages` (the rows of the collection's IOCs, mapped as they were read) into the lookup of
/// `settings` through `uploader`, keeping the state at `state_path`. `on_page` is told how many IOCs were read so
/// far.
pub async fn sync<S>(
    pages: S,
    settings: &Settings,
    uploader: &dyn Uploader,
    state_path: &Path,
    options: &SyncOptions,
    mut on_page: impl FnMut(u64),
) -> Result<Summary, Error>
where
    S: Stream<Item = Result<PackedRows, threatq::Error>>,
{
    let started = Instant::now();
    let table = export::table(&settings.lookup_table_name);
    let target = target_of(settings, uploader);
    let loaded = State::load(state_path);
    if let Err(Unusable::Corrupt(why)) = &loaded {
        tracing::warn!(path = %state_path.display(), "the delivered state is unusable ({why}); doing a full replace");
    }
    let pending = State::delivery_pending(state_path);
    if pending && loaded.is_ok() {
        tracing::warn!("the last upload did not finish cleanly; doing a full replace");
    }
    // What Devo says of the lookup (a dry run asks Devo nothing): a lookup redefined there gets a full replace,
    // and without a state its size feeds the mass-delete guard.
    let inspection = if options.dry_run { devo::Inspection::default() } else { uploader.inspect(&table).await? };
    let full = full_reason(settings, &loaded, pending, target, options.now)
        .or_else(|| inspection.differs.map(FullReason::LookupRedefined));
    let state = loaded.ok();

    let dir = state_path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let spool_error = |e| Error::io(format!("writing the row spool in {}", dir.display()), e);
    let mut collected = Collected::new(dir, table.columns.len()).map_err(spool_error)?;
    let mut pages = std::pin::pin!(pages);
    while let Some(page) = pages.next().await {
        let page = page?;
        // One row's values, borrowed from the page, in a list reused for every row of it.
        let mut row: Vec<&str> = Vec::with_capacity(table.columns.len());
        for i in 0..page.len() {
            row.clear();
            row.extend(page.fields(i));
            collected.push(&row).map_err(spool_error)?;
        }
        on_page(collected.fetched());
    }
    collected.finish().map_err(spool_error)?;

    let mut plan = Plan::new(&collected, state.as_ref(), full)
        .map_err(|e| Error::io(format!("comparing the rows with the delivered state {}", state_path.display()), e))?;
    tracing::debug!(
        fetched = collected.fetched(),
        unique = collected.unique(),
        seconds = started.elapsed().as_secs_f64(),
        "rows collected and compared with the delivered state"
    );
    if !options.allow_mass_delete {
        // Without a state the plan knows nothing of the lookup: a replace must not empty it unseen.
        plan.reported_by_devo(inspection.rows);
        plan.check(collected.unique(), settings.max_delete_percent)?;
    }
    let deletions = state.as_ref().map(|s| plan.deletions(s, &collected, table.columns.len()));
    // After a target change the state describes another lookup: to this one, every row is new.
    let new_target = plan.action == Action::Full(FullReason::TargetChanged);
    let mut summary = Summary {
        action: match plan.action {
            Action::Full(_) => "full".into(),
            Action::Incremental => "incremental".into(),
        },
        reason: match &plan.action {
            Action::Full(reason) => Some(reason.to_string()),
            Action::Incremental => None,
        },
        fetched: collected.fetched(),
        unique: collected.unique(),
        added: if new_target { collected.unique() } else { plan.added.len() },
        changed: if new_target { 0 } else { plan.changed.len() },
        deleted: if new_target { 0 } else { plan.deleted },
        unchanged: if new_target { 0 } else { plan.unchanged },
        duplicates: collected.duplicates(),
        sent: 0,
        seconds: 0.0,
        dry_run: options.dry_run,
        preview: Vec::new(),
    };

    let rows_error = |e| Error::io("reading the row spool", e);
    if options.dry_run {
        let mut preview = |action: &'static str, rows: &dyn RowSource| -> Result<(), Error> {
            for row in rows.rows().take(PREVIEW_ROWS) {
                summary.preview.push((action, row.map_err(rows_error)?));
            }
            Ok(())
        };
        preview("add", &collected.select(plan.added.clone()))?;
        preview("change", &collected.select(plan.changed.clone()))?;
        if let Some(deletions) = &deletions {
            preview("delete", deletions)?;
        }
    } else if !plan.is_noop() {
        let all = collected.all();
        let upserts = collected.select(plan.upserts());
        let no_deletions: Vec<Row> = Vec::new();
        let mut full_replaced = false;
        let delivery = match plan.action {
            Action::Full(_) => Delivery::Full(&all),
            Action::Incremental => Delivery::Changes {
                upserts: &upserts,
                deletes: deletions.as_ref().map_or(&no_deletions as &dyn RowSource, |d| d as &dyn RowSource),
            },
        };
        let state_error = |e| Error::io(format!("writing the delivered state {}", state_path.display()), e);
        State::begin_delivery(state_path).map_err(state_error)?;
        let last_full = match (&plan.action, &state) {
            (Action::Incremental, Some(state)) => state.last_full_at,
            _ => options.now,
        };
        // The next state is written and synced on a thread of its own while Devo takes the upload, so that once
        // Devo accepted only its rename is left to wait for.
        let prepare = State::prepare_collected(state_path, target, last_full, &collected).map_err(state_error)?;
        let next_state = tokio::task::spawn_blocking(prepare);
        let delivered = async {
            match uploader.deliver(&table, delivery).await {
                // The lookup was removed or redefined in Devo behind our back: the changes cannot apply to it.
                Err(e @ (devo::Error::LookupMissing { .. } | devo::Error::LookupRedefined { .. }))
                    if matches!(plan.action, Action::Incremental) =>
                {
                    tracing::warn!(lookup = %table.name, "{e}; replacing it whole");
                    summary.action = "full".into();
                    summary.reason = Some(match e {
                        devo::Error::LookupMissing { .. } => "the lookup was missing in Devo".into(),
                        _ => "the lookup's columns in Devo differ from the exporter's".into(),
                    });
                    full_replaced = true;
                    uploader.deliver(&table, Delivery::Full(&all)).await
                }
                result => result,
            }
        }
        .await;
        // Waited for even when the upload failed, so that its file is removed before the run ends.
        let next_state = next_state.await.unwrap_or_else(|e| Err(std::io::Error::other(e)));
        let receipt = delivered?;
        tracing::info!(reference = %receipt.reference, attempts = receipt.attempts, "Devo accepted the upload");
        summary.sent = receipt.rows_sent;
        match next_state.map_err(state_error)? {
            // The fallback full replace restarts the resync timer: the prepared state says otherwise.
            _ if full_replaced => {
                State::write_collected(state_path, target, options.now, &collected).map_err(state_error)?
            }
            next_state => next_state.commit().map_err(state_error)?,
        }
    }
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}
