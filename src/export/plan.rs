//! What a run will do to the lookup: compare the collected rows with the delivered state.

use std::fmt;
use std::io;

use super::collect::{Collected, RowSet};
use super::state::{Deletions, Met, State, side_by_side};

/// Why a run replaces the whole lookup instead of sending changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FullReason {
    /// No state yet: the first run, or the state file was removed.
    NoState,
    /// The state file could not be read.
    UnusableState(String),
    /// "Sync Mode" is Full.
    SyncModeFull,
    /// "Full Resync Every N Hours" has passed since the last full replace.
    ResyncDue,
    /// The lookup name, columns or upload target changed since the last delivery.
    TargetChanged,
    /// An upload began after the state was written and did not finish cleanly, so Devo may hold rows the state
    /// does not know of.
    UnfinishedUpload,
    /// Devo holds the lookup with other columns or another key (how they differ): changes would not fit it.
    LookupRedefined(String),
}

impl fmt::Display for FullReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FullReason::NoState => f.write_str("no delivered state yet"),
            FullReason::UnusableState(why) => write!(f, "the state file is unusable ({why})"),
            FullReason::SyncModeFull => f.write_str("Sync Mode is Full"),
            FullReason::ResyncDue => f.write_str("the periodic full resync is due"),
            FullReason::TargetChanged => f.write_str("the lookup or its Devo target changed"),
            FullReason::UnfinishedUpload => {
                f.write_str("the last upload did not finish cleanly, so the lookup may differ from the state")
            }
            FullReason::LookupRedefined(differs) => write!(f, "the lookup in Devo {differs}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Full(FullReason),
    Incremental,
}

/// What the run knows of the rows the lookup holds in Devo before the upload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Held {
    /// The delivered state lists them, so the deletions are known exactly.
    Delivered(u64),
    /// No usable state: Devo reports this many rows (0 when the lookup does not exist).
    Reported(u64),
    /// No usable state, and the upload method cannot ask Devo (the relay).
    Unknown,
}

/// A run refused before anything is sent (exit 7), unless the user allows mass deletes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error(
        "refusing to delete {deleted} of the {existing} rows of the lookup: more than the Mass-Delete Guard of \
         {max_percent}%; check the data collection, or run once with --allow-mass-delete"
    )]
    MassDelete { deleted: u64, existing: u64, max_percent: u8 },
    #[error(
        "there is no delivered state and Devo reports {existing} rows in the lookup: replacing them with the \
         {unique} IOCs of the collection deletes at least {deleted}, more than the Mass-Delete Guard of \
         {max_percent}%; check the data collection, or run once with --allow-mass-delete"
    )]
    MassDeleteReported { deleted: u64, existing: u64, unique: u64, max_percent: u8 },
    #[error(
        "the data collection came back empty but the lookup has {existing} rows; check the collection, or run \
         once with --allow-mass-delete"
    )]
    EmptyCollection { existing: u64 },
    #[error(
        "the data collection came back empty and there is no delivered state, so what the lookup holds is \
         unknown (the relay cannot tell, and a dry run does not ask); replacing it would empty it: check the \
         collection, or run once with --allow-mass-delete"
    )]
    EmptyCollectionUnknownLookup,
}

/// The rows to add, change and delete. Row sets number spool rows of the [`Collected`] they were made from.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    pub action: Action,
    pub added: RowSet,
    pub changed: RowSet,
    pub unchanged: u64,
    /// Delivered keys no longer in the collection (a full replace removes them too); 0 without a state.
    pub deleted: u64,
    /// What the lookup holds before the upload: from the state, else [`Held::Unknown`] until
    /// [`Plan::reported_by_devo`] says what Devo reports.
    pub held: Held,
}

impl Plan {
    /// Compares the collected rows with what Devo holds; `full` forces a full replace. Both are read in key
    /// digest order, side by side, so nothing of either is held in memory but the row sets.
    pub fn new(collected: &Collected, state: Option<&State>, full: Option<FullReason>) -> io::Result<Plan> {
        let (mut added, mut changed, mut unchanged, mut deleted) = (RowSet::default(), RowSet::default(), 0, 0);
        for met in side_by_side(collected, state) {
            match met? {
                Met::New(winner) => added.insert(winner.row),
                Met::Held(winner, held) if held.content != winner.content => changed.insert(winner.row),
                Met::Held(..) => unchanged += 1,
                Met::Gone(_) => deleted += 1,
            }
        }
        let action = match (full, state) {
            (Some(reason), _) => Action::Full(reason),
            (None, None) => Action::Full(FullReason::NoState),
            (None, Some(_)) => Action::Incremental,
        };
        let held = state.map_or(Held::Unknown, |s| Held::Delivered(s.len()));
        Ok(Plan { action, added, changed, unchanged, deleted, held })
    }

    /// The delete rows of this plan: what `state` holds and `collected` no longer has, `columns` wide.
    pub fn deletions<'a>(&self, state: &'a State, collected: &'a Collected, columns: usize) -> Deletions<'a> {
        Deletions::new(state, collected, columns, self.deleted)
    }

    /// Without a state, what Devo reports the lookup holds (`None`: the upload method cannot tell).
    pub fn reported_by_devo(&mut self, rows: Option<u64>) {
        if !matches!(self.held, Held::Delivered(_)) {
            self.held = rows.map_or(Held::Unknown, Held::Reported);
        }
    }

    /// Rows to upsert in an incremental upload.
    pub fn upserts(&self) -> RowSet {
        self.added.union(&self.changed)
    }

    /// Whether anything would change in Devo.
    pub fn is_noop(&self) -> bool {
        self.action == Action::Incremental && self.added.is_empty() && self.changed.is_empty() && self.deleted == 0
    }

    /// The safety rails: an empty collection where the lookup has (or may have) rows, or more deletions than
    /// the guard allows, stop the run. Without a state, a full replace deletes at least the rows Devo reports
    /// beyond the collection's.
    pub fn check(&self, unique: u64, max_delete_percent: u8) -> Result<(), Refusal> {
        let too_many = |deleted: u64, existing: u64| deleted * 100 > existing * u64::from(max_delete_percent);
        match self.held {
            Held::Unknown if unique == 0 => Err(Refusal::EmptyCollectionUnknownLookup),
            Held::Unknown | Held::Delivered(0) | Held::Reported(0) => Ok(()),
            Held::Delivered(existing) | Held::Reported(existing) if unique == 0 => {
                Err(Refusal::EmptyCollection { existing })
            }
            Held::Delivered(existing) if too_many(self.deleted, existing) => {
                Err(Refusal::MassDelete { deleted: self.deleted, existing, max_percent: max_delete_percent })
            }
            Held::Reported(existing) if too_many(existing.saturating_sub(unique), existing) => {
                Err(Refusal::MassDeleteReported {
                    deleted: existing - unique,
                    existing,
                    unique,
                    max_percent: max_delete_percent,
                })
            }
            Held::Delivered(_) | Held::Reported(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io;

    use proptest::prelude::*;

    use super::*;
    use crate::devo::{Row, RowSource};
    use crate::export::COLUMNS;

    fn row(key: &str, content: u8) -> Row {
        let mut r = vec![String::new(); COLUMNS.len()];
        r[0] = key.to_owned();
        r[1] = content.to_string();
        r
    }

    fn collect(dir: &std::path::Path, rows: &[Row]) -> Collected {
        let mut c = Collected::new(dir, COLUMNS.len()).unwrap();
        for r in rows {
            c.push(r).unwrap();
        }
        c.finish().unwrap();
        c
    }

    fn as_map(rows: impl IntoIterator<Item = Row>) -> BTreeMap<String, Row> {
        rows.into_iter().map(|r| (r[0].clone(), r)).collect()
    }

    proptest! {
        /// Applying the plan's upserts and deletions to what Devo held gives exactly the collection.
        #[test]
        fn applying_the_plan_converges(
            before in prop::collection::btree_map("[a-e]{1,2}", 0u8..3, 0..20),
            after in prop::collection::btree_map("[a-e]{1,2}", 0u8..3, 0..20),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("s.state");
            let held: Vec<Row> = before.iter().map(|(k, c)| row(k, *c)).collect();
            State::write(&path, 7, chrono::Utc::now(), &held).unwrap();
            let state = State::load(&path).unwrap();

            let now: Vec<Row> = after.iter().map(|(k, c)| row(k, *c)).collect();
            let collected = collect(dir.path(), &now);
            let plan = Plan::new(&collected, Some(&state), None).unwrap();

            let mut devo = as_map(held);
            for r in collected.select(plan.upserts()).rows() {
                let r = r.unwrap();
                devo.insert(r[0].clone(), r);
            }
            let deletions = plan.deletions(&state, &collected, COLUMNS.len());
            prop_assert_eq!(deletions.len(), plan.deleted);
            for r in deletions.rows() {
                devo.remove(&r.unwrap()[0]);
            }
            prop_assert_eq!(&devo, &as_map(now));
            let changes = plan.added.len() + plan.changed.len() + plan.deleted;
            prop_assert_eq!(plan.is_noop(), changes == 0);
            prop_assert_eq!(plan.unchanged + plan.added.len() + plan.changed.len(), after.len() as u64);
        }
    }

    #[test]
    fn the_guard_stops_mass_deletes_and_an_emptied_collection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.state");
        let held: Vec<Row> = (0..10).map(|i| row(&format!("k{i}"), 0)).collect();
        State::write(&path, 7, chrono::Utc::now(), &held).unwrap();
        let state = State::load(&path).unwrap();

        let keep_four = collect(dir.path(), &held[..4]);
        let plan = Plan::new(&keep_four, Some(&state), None).unwrap();
        assert_eq!(plan.deleted, 6);
        assert_eq!(plan.check(4, 50), Err(Refusal::MassDelete { deleted: 6, existing: 10, max_percent: 50 }));
        assert_eq!(plan.check(4, 60), Ok(()));

        let empty = collect(dir.path(), &[]);
        let plan = Plan::new(&empty, Some(&state), Some(FullReason::SyncModeFull)).unwrap();
        assert_eq!(plan.check(0, 100), Err(Refusal::EmptyCollection { existing: 10 }));

        let mut first_run = Plan::new(&empty, None, None).unwrap();
        assert_eq!(first_run.action, Action::Full(FullReason::NoState));
        first_run.reported_by_devo(Some(0));
        assert_eq!(first_run.check(0, 0), Ok(()), "a lookup Devo does not have may start empty");
    }

    #[test]
    fn without_a_state_the_guard_goes_by_what_devo_reports_or_refuses_to_empty_an_unknown_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let four: Vec<Row> = (0..4).map(|i| row(&format!("k{i}"), 0)).collect();
        let (empty, some) = (collect(dir.path(), &[]), collect(dir.path(), &four));
        let planned = |collected: &Collected, reported: Option<u64>| {
            let mut plan = Plan::new(collected, None, None).unwrap();
            plan.reported_by_devo(reported);
            plan.check(collected.unique(), 50)
        };
        assert_eq!(planned(&empty, Some(10)), Err(Refusal::EmptyCollection { existing: 10 }));
        assert_eq!(planned(&empty, None), Err(Refusal::EmptyCollectionUnknownLookup));
        assert_eq!(
            planned(&some, Some(10)),
            Err(Refusal::MassDeleteReported { deleted: 6, existing: 10, unique: 4, max_percent: 50 })
        );
        assert_eq!(planned(&some, Some(8)), Ok(()), "at least 4 of 8 deleted: within 50%");
        assert_eq!(planned(&some, None), Ok(()), "an unknown lookup is replaced by a non-empty collection");

        // A state, when there is one, knows better than any report.
        let path = dir.path().join("s.state");
        State::write(&path, 7, chrono::Utc::now(), &four).unwrap();
        let state = State::load(&path).unwrap();
        let mut plan = Plan::new(&some, Some(&state), None).unwrap();
        plan.reported_by_devo(Some(1000));
        assert_eq!((plan.held, plan.check(4, 50)), (Held::Delivered(4), Ok(())));
    }

    #[test]
    fn io_errors_of_a_vanished_state_file_surface_when_planning_and_reading_deletions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.state");
        State::write(&path, 7, chrono::Utc::now(), &vec![row("a", 1)]).unwrap();
        let state = State::load(&path).unwrap();
        let empty = collect(dir.path(), &[]);
        let plan = Plan::new(&empty, Some(&state), None).unwrap();
        assert_eq!(plan.deleted, 1);
        std::fs::remove_file(&path).unwrap();
        let err = plan.deletions(&state, &empty, COLUMNS.len()).rows().next().unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        let err = Plan::new(&empty, Some(&state), None).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
