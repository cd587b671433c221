//! Sync that converges: whole runs against the three stand-ins, through the library and through the real binary,
//! with the collection changing and faults injected on both sides. After a clean run the Devo lookup equals the
//! collection; after a failed run it is as it was; the next run converges; small changes send small uploads.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use proptest::prelude::*;
use serde_json::json;
use tqdevo::Error;
use tqdevo::connector::run::{self, Outcome, RunContext};
use tqdevo::connector::setup::LinePrompter;
use tqdevo::connector::sync::Summary;
use tqdevo::devo::Row;
use tqdevo::devo::UploadMethod;
use tqdevo::export::{self, State};
use tqdevo::sandbox::relay::{Faults, RelayStandIn};
use tqdevo::sandbox::stage::{self, Ports, Stage};
use tqdevo::sandbox::threatq::Fault;
use tqdevo::threatq::{self, Indicator};

/// What the stage's "ThreatQ Hostname" field holds, for the expected links.
const TQ_HOSTNAME: &str = "threatq.example.com";

/// Fails the test instead of hanging it.
pub(crate) async fn bounded<T>(what: &str, work: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(120), work).await.unwrap_or_else(|_| panic!("{what} took over 120 s"))
}

/// The stand-ins, a config directory and the environment a user would set.
pub(crate) struct World {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) stage: Stage,
    pub(crate) env: HashMap<String, String>,
}

impl World {
    pub(crate) async fn start(iocs: u64) -> World {
        let dir = tempfile::tempdir().unwrap();
        let stage = Stage::start(iocs, Ports::default(), &dir.path().join("files")).await.unwrap();
        let mut env = stage.env();
        env.insert("DEVO_JOB_POLL_SECONDS".into(), "0.05".into());
        std::fs::create_dir_all(dir.path().join("config")).unwrap();
        World { dir, stage, env }
    }

    pub(crate) fn config_dir(&self) -> PathBuf {
        self.dir.path().join("config")
    }

    pub(crate) fn state_path(&self, name: &str) -> PathBuf {
        run::state_path(&self.config_dir(), name)
    }

    pub(crate) fn state_bytes(&self, name: &str) -> Option<Vec<u8>> {
        std::fs::read(self.state_path(name)).ok()
    }

    /// One run through the library, as cron would start it.
    pub(crate) async fn run(&self, name: &str, dry_run: bool) -> (Result<Outcome, Error>, String) {
        self.run_allowing(name, dry_run, false).await
    }

    /// [`World::run`], with `--allow-mass-delete` when `allow_mass_delete`.
    async fn run_allowing(
        &self,
        name: &str,
        dry_run: bool,
        allow_mass_delete: bool,
    ) -> (Result<Outcome, Error>, String) {
        let lookup = |key: &str| self.env.get(key).cloned();
        let mut no_input = LinePrompter::new(std::io::empty(), Vec::new());
        let mut out = Vec::new();
        let ctx = RunContext {
            dir: self.config_dir(),
            name: name.to_owned(),
            cron_dir: self.config_dir(),
            dry_run,
            allow_mass_delete,
            env: &lookup,
            prompter: &mut no_input,
            out: &mut out,
            logs_to_out: true,
        };
        let result = bounded("a run", run::run(ctx)).await;
        (result, String::from_utf8_lossy(&out).into_owned())
    }

    /// A run that must sync.
    pub(crate) async fn synced(&self, name: &str) -> Summary {
        match self.run(name, false).await {
            (Ok(Outcome::Synced(summary)), _) => summary,
            (other, out) => panic!("{name}: expected a sync, got {other:?}; output: {out}"),
        }
    }

    /// The first run registers the instance; then the user fills the UI form and turns the toggle on.
    pub(crate) async fn configure(&self, name: &str, method: UploadMethod, lookup: &str, extra: &[(&str, &str)]) {
        assert!(matches!(self.run(name, false).await.0, Ok(Outcome::Configured)));
        self.set_fields(name, method, lookup, extra);
        assert!(self.stage.threatq.set_active(name, true));
    }

    fn set_fields(&self, name: &str, method: UploadMethod, lookup: &str, extra: &[(&str, &str)]) {
        let mut fields = self.stage.ui_fields(method, lookup);
        fields.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        assert!(self.stage.threatq.set_custom_fields(name, fields));
    }

    pub(crate) fn lookup(&self, method: UploadMethod, lookup: &str) -> Vec<Row> {
        self.stage.lookup(method, lookup).unwrap_or_default()
    }

    /// The collection as ThreatQ serves it, read by the client with no fault armed.
    pub(crate) async fn collection(&self) -> Vec<Indicator> {
        let options = threatq::ClientOptions {
            host: self.stage.threatq.host(),
            client_id: self.env["THREATQ_CLIENT_ID"].clone(),
            username: self.env["THREATQ_USERNAME"].clone(),
            password: self.env["THREATQ_PASSWORD"].clone().into(),
            ca_file: Some(self.stage.threatq_ca_file()),
            tls_verify: true,
        };
        let client = threatq::Client::new(options).unwrap();
        let collection = client.find_collection(stage::COLLECTION).await.unwrap();
        let pages: Vec<_> = client.indicators(&collection, 1000).collect().await;
        pages.into_iter().flat_map(Result::unwrap).collect()
    }
}

/// The rows the lookup must hold for `collection` (ThreatQ's id order): the mapping, then the duplicate rule
/// written plainly: per value, the highest score, then the newest `updated_at`, then the lowest id.
pub(crate) fn expected_rows(collection: &[Indicator]) -> Vec<Row> {
    let mut by_value: BTreeMap<String, Vec<&Indicator>> = BTreeMap::new();
    for ioc in collection {
        by_value.entry(ioc.value.clone()).or_default().push(ioc);
    }
    let score = |i: &Indicator| i.score.as_deref().and_then(|s| s.trim().parse::<f64>().ok()).unwrap_or(f64::MIN);
    by_value
        .into_values()
        .map(|candidates| {
            let best = candidates
                .into_iter()
                .max_by(|a, b| {
                    score(a)
                        .total_cmp(&score(b))
                        .then_with(|| a.updated_at.cmp(&b.updated_at))
                        .then_with(|| b.id.cmp(&a.id))
                })
                .expect("a value has a candidate");
            export::map_indicator(best, TQ_HOSTNAME)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------------------------
// The model: random collection changes and faults over both upload methods.
// ---------------------------------------------------------------------------------------------------------------

const VALUES: [&str; 10] = [
    "c2.model.example",
    "203.0.113.7",
    "https://dl.model.example/a?b=1",
    "evil, \"quoted\" | piped; ü",
    "dropper.exe",
    "198.51.100.23",
    "beacon.model.example",
    "d41d8cd98f00b204e9800998ecf8427e",
    "mail@model.example",
    "10.0.0.0/8",
];
const TYPES: [&str; 4] = ["FQDN", "IP Address", "URL", "Filename"];
/// Scores as ThreatQ sends them; "7.5" and "7.50" tie, so the tie rules are exercised.
const SCORES: [Option<&str>; 6] = [None, Some("0"), Some("3"), Some("7.5"), Some("7.50"), Some("10")];
const PHASES: [&str; 3] = ["Delivery", "Exploitation", "Command and Control"];

/// One IOC of the model collection.
#[derive(Clone, Debug)]
struct Ioc {
    value: String,
    type_name: &'static str,
    active: bool,
    score: Option<&'static str>,
    phase: &'static str,
    /// Minutes after the epoch of the stamps; small, so equal stamps happen.
    updated: u8,
}

fn stamp(minutes: u8) -> String {
    format!("2024-05-01 10:{:02}:00", minutes % 60)
}

impl Ioc {
    fn indicator(&self, id: u64) -> Indicator {
        Indicator {
            id,
            value: self.value.clone(),
            type_name: self.type_name.to_owned(),
            status: if self.active { "Active" } else { "Expired" }.to_owned(),
            score: self.score.map(str::to_owned),
            attributes: vec![("Attack Phase".into(), self.phase.into())],
            adversaries: Vec::new(),
            related_adversary_count: Some(0),
            sources: vec!["Model Feed".into()],
            tags: Vec::new(),
            created_at: Some(stamp(0)),
            updated_at: Some(stamp(self.updated)),
            expires_at: None,
        }
    }

    /// The same IOC as ThreatQ's API sends it.
    fn json(&self, id: u64) -> serde_json::Value {
        json!({
            "id": id, "value": self.value, "type": {"name": self.type_name},
            "status": {"name": if self.active { "Active" } else { "Expired" }}, "score": self.score,
            "attributes": [{"name": "Attack Phase", "value": self.phase}], "adversaries": [],
            "sources": [{"name": "Model Feed"}], "tags": [], "created_at": stamp(0), "updated_at": stamp(self.updated),
        })
    }
}

#[derive(Clone, Debug)]
enum Change {
    Add(Ioc),
    /// A second IOC with the value of an existing one, under another type.
    Duplicate {
        of: prop::sample::Index,
        type_name: &'static str,
        score: Option<&'static str>,
        updated: u8,
    },
    Edit {
        of: prop::sample::Index,
        score: Option<&'static str>,
        phase: &'static str,
        updated: u8,
    },
    Retype {
        of: prop::sample::Index,
        type_name: &'static str,
    },
    /// Leaves the Active collection.
    Expire(prop::sample::Index),
    Reactivate(prop::sample::Index),
    Remove(prop::sample::Index),
}

/// What goes wrong around one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Trouble {
    None,
    /// A ThreatQ page after the first comes back cut in half.
    ThreatqMidPaging,
    /// The upload fails for good: relay cut after `k` lines on every attempt; API job failure or a 503 asking
    /// to retry later than the run waits.
    DevoFails {
        k: usize,
        job: bool,
    },
    /// The upload fails once and the uploader redoes it.
    DevoRetried {
        k: usize,
    },
    /// The process dies after Devo accepted and before the state was written.
    Crash,
    StateDeleted,
    StateCorrupt,
}

fn ioc() -> impl Strategy<Value = Ioc> {
    (0..VALUES.len(), prop::sample::select(&TYPES[..]), any::<bool>(), prop::sample::select(&SCORES[..])).prop_flat_map(
        |(v, type_name, mostly, score)| {
            (prop::sample::select(&PHASES[..]), 0u8..4).prop_map(move |(phase, updated)| Ioc {
                value: VALUES[v].to_owned(),
                type_name,
                active: mostly || v % 3 != 0,
                score,
                phase,
                updated,
            })
        },
    )
}

fn change() -> impl Strategy<Value = Change> {
    let index = any::<prop::sample::Index>;
    prop_oneof![
        3 => ioc().prop_map(Change::Add),
        1 => (index(), prop::sample::select(&TYPES[..]), prop::sample::select(&SCORES[..]), 0u8..4)
            .prop_map(|(of, type_name, score, updated)| Change::Duplicate { of, type_name, score, updated }),
        3 => (index(), prop::sample::select(&SCORES[..]), prop::sample::select(&PHASES[..]), 0u8..4)
            .prop_map(|(of, score, phase, updated)| Change::Edit { of, score, phase, updated }),
        1 => (index(), prop::sample::select(&TYPES[..])).prop_map(|(of, type_name)| Change::Retype { of, type_name }),
        2 => index().prop_map(Change::Expire),
        1 => index().prop_map(Change::Reactivate),
        2 => index().prop_map(Change::Remove),
    ]
}

fn trouble() -> impl Strategy<Value = Trouble> {
    prop_oneof![
        4 => Just(Trouble::None),
        2 => Just(Trouble::ThreatqMidPaging),
        // An upload has at least 3 lines (START, a row, END): cutting after 1 or 2 always strikes before the END.
        2 => (1usize..3, any::<bool>()).prop_map(|(k, job)| Trouble::DevoFails { k, job }),
        1 => (1usize..6).prop_map(|k| Trouble::DevoRetried { k }),
        2 => Just(Trouble::Crash),
        1 => Just(Trouble::StateDeleted),
        1 => Just(Trouble::StateCorrupt),
    ]
}

/// The model of the collection: ThreatQ ids to IOCs (removed ones gone).
struct Model {
    iocs: BTreeMap<u64, Ioc>,
}

impl Model {
    fn apply(&mut self, world: &World, change: &Change) {
        let tq = &world.stage.threatq;
        let ids: Vec<u64> = self.iocs.keys().copied().collect();
        let pick = |i: &prop::sample::Index| (!ids.is_empty()).then(|| ids[i.index(ids.len())]);
        let put = |iocs: &mut BTreeMap<u64, Ioc>, id: Option<u64>, ioc: Ioc| {
            let json = match id {
                Some(id) => ioc.json(id),
                None => {
                    let mut json = ioc.json(0);
                    json.as_object_mut().unwrap().remove("id");
                    json
                }
            };
            let id = tq.upsert_indicator(json);
            iocs.insert(id, ioc);
        };
        match change {
            Change::Add(ioc) => put(&mut self.iocs, None, ioc.clone()),
            Change::Duplicate { of, type_name, score, updated } => {
                if let Some(id) = pick(of) {
                    let original = &self.iocs[&id];
                    let twin = Ioc { type_name, score: *score, updated: *updated, active: true, ..original.clone() };
                    put(&mut self.iocs, None, twin);
                }
            }
            Change::Edit { of, score, phase, updated } => {
                if let Some(id) = pick(of) {
                    let edited = Ioc { score: *score, phase, updated: *updated, ..self.iocs[&id].clone() };
                    put(&mut self.iocs, Some(id), edited);
                }
            }
            Change::Retype { of, type_name } => {
                if let Some(id) = pick(of) {
                    let retyped = Ioc { type_name, ..self.iocs[&id].clone() };
                    put(&mut self.iocs, Some(id), retyped);
                }
            }
            Change::Expire(of) | Change::Reactivate(of) => {
                if let Some(id) = pick(of) {
                    let active = matches!(change, Change::Reactivate(_));
                    let toggled = Ioc { active, ..self.iocs[&id].clone() };
                    put(&mut self.iocs, Some(id), toggled);
                }
            }
            Change::Remove(of) => {
                if let Some(id) = pick(of) {
                    assert!(tq.remove_indicator(id));
                    self.iocs.remove(&id);
                }
            }
        }
    }

    fn expected(&self) -> Vec<Row> {
        let active: Vec<Indicator> =
            self.iocs.iter().filter(|(_, i)| i.active).map(|(id, ioc)| ioc.indicator(*id)).collect();
        expected_rows(&active)
    }
}

/// Cuts the next `times` relay connections after `k` lines each: the fault knob cuts one connection, so it is
/// armed again as soon as the cut connection is over (the uploader waits seconds before its next attempt).
async fn cut_connections(relay: &RelayStandIn, k: usize, times: usize) {
    for _ in 0..times {
        let seen = relay.connections().len();
        relay.set_faults(Faults { close_after_lines: Some(k), ..Faults::default() });
        while relay.connections().len() == seen {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

struct Instance {
    name: &'static str,
    method: UploadMethod,
    lookup: &'static str,
}

const INSTANCES: [Instance; 2] = [
    Instance { name: "model-api", method: UploadMethod::LookupsApi, lookup: "model_api" },
    Instance { name: "model-relay", method: UploadMethod::Relay, lookup: "model_relay" },
];

/// Runs `instance` once with `trouble` and checks the lookup: equal to the collection after a clean run, as it
/// was before after a failed one, and never a partial full upload on the relay.
async fn run_with(world: &World, instance: &Instance, expected: &[Row], trouble: Trouble) {
    let (stage, name, relay) = (&world.stage, instance.name, &world.stage.relay);
    let before = world.lookup(instance.method, instance.lookup);
    let state_before = world.state_bytes(name);
    let applied_before = relay.applied().len();
    // A Devo fault is armed only when an upload is certain, so it never lingers into another run.
    let must_upload = before != expected && !expected.is_empty();
    let trouble = match trouble {
        Trouble::DevoFails { .. } | Trouble::DevoRetried { .. } if !must_upload => Trouble::None,
        other => other,
    };
    let mut cut = None;
    match trouble {
        Trouble::ThreatqMidPaging => {
            stage.threatq.inject("/api/indicators/query", 1, Fault::Delay(Duration::ZERO));
            stage.threatq.inject("/api/indicators/query", 1, Fault::Truncate);
        }
        Trouble::DevoFails { k, job } => match instance.method {
            UploadMethod::Relay => cut = Some(k),
            UploadMethod::LookupsApi if job => stage.devo_api.fail_next_job("injected: the lookup job failed"),
            UploadMethod::LookupsApi => {
                let method = if stage.lookup(instance.method, instance.lookup).is_some() { "PUT" } else { "POST" };
                stage.devo_api.fail_next(method, "/deploy-csv", 1, 503, Some(3600));
            }
        },
        Trouble::DevoRetried { k } => match instance.method {
            UploadMethod::Relay => relay.set_faults(Faults { close_after_lines: Some(k), ..Faults::default() }),
            UploadMethod::LookupsApi => {
                let method = if stage.lookup(instance.method, instance.lookup).is_some() { "PUT" } else { "POST" };
                stage.devo_api.fail_next(method, "/deploy-csv", 1, 503, None);
            }
        },
        Trouble::StateDeleted => {
            let _ = std::fs::remove_file(world.state_path(name));
        }
        Trouble::StateCorrupt => {
            if let Some(mut bytes) = state_before.clone() {
                let middle = bytes.len() / 2;
                bytes[middle] ^= 0x5a;
                std::fs::write(world.state_path(name), bytes).unwrap();
            }
        }
        Trouble::None | Trouble::Crash => {}
    }

    let cutting = async {
        if let Some(k) = cut {
            cut_connections(relay, k, 3).await;
        }
        std::future::pending::<()>().await
    };
    let (result, out) = tokio::select! {
        done = world.run(name, false) => done,
        _ = cutting => unreachable!("the cutter never ends"),
    };
    stage.threatq.clear_faults();
    relay.set_faults(Faults::default());
    let after = world.lookup(instance.method, instance.lookup);
    let context = format!("{name} with {trouble:?}: {result:?}; output {out}");
    match &result {
        Ok(Outcome::Synced(summary)) => {
            assert_eq!(after, expected, "{context}");
            if matches!(trouble, Trouble::DevoFails { .. }) {
                panic!("an upload that fails for good cannot end in a sync: {context}");
            }
            if matches!(trouble, Trouble::StateDeleted | Trouble::StateCorrupt) && state_before.is_some() {
                assert_eq!(summary.action, "full", "{context}");
            }
            if trouble == Trouble::Crash
                && (summary.action == "full" || summary.added + summary.changed + summary.deleted > 0)
            {
                // What the disk holds when the process dies between Devo's acceptance and the state write.
                match &state_before {
                    Some(bytes) => std::fs::write(world.state_path(name), bytes).unwrap(),
                    None => std::fs::remove_file(world.state_path(name)).unwrap(),
                }
                State::begin_delivery(&world.state_path(name)).unwrap();
            }
        }
        Err(e) => {
            let code = e.code();
            let allowed = match trouble {
                Trouble::ThreatqMidPaging => code == 4,
                Trouble::DevoFails { .. } => code == 5,
                _ => code == 7 && expected.is_empty(),
            };
            assert!(allowed, "unexpected failure: {context}");
            assert_eq!(after, before, "a failed run changed the lookup: {context}");
            assert_eq!(world.state_bytes(name), state_before, "a failed run changed the state: {context}");
        }
        Ok(other) => panic!("unexpected outcome {other:?}: {context}"),
    }
    for upload in &relay.applied()[applied_before..] {
        if upload.action == tqdevo::devo::relay::encode::Action::Full {
            assert_eq!(upload.rows, expected.len(), "a partial FULL upload was applied: {context}");
        }
    }
}

fn model_case(initial: Vec<Ioc>, steps: Vec<(Vec<Change>, Trouble, Trouble)>) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let world = World::start(0).await;
        let mut model = Model { iocs: BTreeMap::new() };
        for ioc in initial {
            model.apply(&world, &Change::Add(ioc));
        }
        // Pages of 4, so that a fault can strike mid-paging; no guard on deletions, which the model makes freely.
        let extra = [("batch_size", "4"), ("max_delete_percent", "100")];
        for instance in &INSTANCES {
            world.configure(instance.name, instance.method, instance.lookup, &extra).await;
        }
        for (changes, api_trouble, relay_trouble) in steps {
            for change in &changes {
                model.apply(&world, change);
            }
            let expected = model.expected();
            for (instance, trouble) in INSTANCES.iter().zip([api_trouble, relay_trouble]) {
                run_with(&world, instance, &expected, trouble).await;
            }
        }
        // Whatever happened, two clean runs converge and the second sends nothing.
        let expected = model.expected();
        for instance in &INSTANCES {
            run_with(&world, instance, &expected, Trouble::None).await;
            let again = world.synced(instance.name).await;
            assert_eq!(again.sent, 0, "{}: {again:?}", instance.name);
        }
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10, failure_persistence: None, ..ProptestConfig::default() })]

    /// Random collection changes and faults on both sides, over both upload methods.
    #[test]
    fn runs_converge_and_failed_runs_leave_the_lookup_as_it_was(
        initial in prop::collection::vec(ioc(), 5..12),
        steps in prop::collection::vec((prop::collection::vec(change(), 0..4), trouble(), trouble()), 1..4),
    ) {
        model_case(initial, steps);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The mass-delete guard without a state: it goes by what Devo holds.
// ---------------------------------------------------------------------------------------------------------------

/// With the state lost and the collection come back empty, the run asks Devo (Lookups API) or cannot know (relay)
/// what the lookup holds; either way it refuses to empty it (exit 7, nothing sent) until allowed.
async fn an_emptied_collection_without_a_state_is_refused_until_allowed(method: UploadMethod) {
    let world = World::start(40).await;
    world.configure("guarded", method, "guarded", &[]).await;
    world.synced("guarded").await;
    let full = world.lookup(method, "guarded");
    assert_eq!(full, expected_rows(&world.collection().await));
    assert!(!full.is_empty());
    std::fs::remove_file(world.state_path("guarded")).unwrap();
    world.stage.threatq.set_generated(0);
    world.stage.devo_api.clear_requests();
    let relay_uploads = world.stage.relay.applied().len();

    let (refused, _) = world.run("guarded", false).await;
    let refused = refused.expect_err("an empty collection may not empty the lookup unseen");
    assert_eq!(refused.code(), 7, "{refused}");
    assert!(refused.to_string().contains("--allow-mass-delete"), "{refused}");
    let sent: Vec<_> = world.stage.devo_api.requests().into_iter().filter(|r| r.method != "GET").collect();
    assert!(sent.is_empty(), "nothing is sent: {sent:?}");
    assert_eq!(world.stage.relay.applied().len(), relay_uploads, "nothing is sent to the relay");
    assert_eq!(world.lookup(method, "guarded"), full);
    assert_eq!(world.state_bytes("guarded"), None);

    let (allowed, out) = world.run_allowing("guarded", false, true).await;
    assert!(matches!(allowed, Ok(Outcome::Synced(_))), "{allowed:?}: {out}");
    assert_eq!(world.stage.lookup(method, "guarded"), Some(Vec::new()), "the lookup is emptied when allowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_state_the_guard_asks_the_lookups_api_what_the_lookup_holds() {
    an_emptied_collection_without_a_state_is_refused_until_allowed(UploadMethod::LookupsApi).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_state_the_guard_treats_the_relays_lookup_as_unknown() {
    an_emptied_collection_without_a_state_is_refused_until_allowed(UploadMethod::Relay).await;
}

/// Without a state, a collection much smaller than what Devo reports trips the guard by percentage too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_state_a_collection_far_smaller_than_the_lookup_is_refused() {
    let world = World::start(40).await;
    world.configure("shrunk", UploadMethod::LookupsApi, "shrunk", &[]).await;
    world.synced("shrunk").await;
    let full = world.lookup(UploadMethod::LookupsApi, "shrunk");
    std::fs::remove_file(world.state_path("shrunk")).unwrap();
    world.stage.threatq.set_generated(10);
    let (refused, _) = world.run("shrunk", false).await;
    let refused = refused.expect_err("about three quarters of the rows would go");
    assert_eq!(refused.code(), 7, "{refused}");
    assert!(refused.to_string().contains(&format!("Devo reports {} rows", full.len())), "{refused}");
    assert_eq!(world.lookup(UploadMethod::LookupsApi, "shrunk"), full);
}

// ---------------------------------------------------------------------------------------------------------------
// When a full replace is due, and what a dry run leaves alone.
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_or_missing_state_means_a_full_replace_never_a_crash() {
    let world = World::start(300).await;
    world.configure("states", UploadMethod::LookupsApi, "states", &[]).await;
    let expected = expected_rows(&world.collection().await);
    assert_eq!(world.synced("states").await.action, "full");
    let path = world.state_path("states");
    for (damage, reason) in [(Some(&b"TQDEVO-STATE\x01\0\0\0torn"[..]), "unusable"), (None, "no delivered state")] {
        match damage {
            Some(bytes) => std::fs::write(&path, bytes).unwrap(),
            None => std::fs::remove_file(&path).unwrap(),
        }
        let summary = world.synced("states").await;
        assert_eq!(summary.action, "full", "{summary:?}");
        assert!(summary.reason.as_deref().is_some_and(|r| r.contains(reason)), "{summary:?}");
        assert_eq!(world.lookup(UploadMethod::LookupsApi, "states"), expected);
        assert_eq!(world.synced("states").await.action, "incremental", "the rewritten state is used again");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_due_resync_a_changed_target_or_the_clock_jumping_back_means_a_full_replace() {
    use tqdevo::connector::config::parse_custom_fields;
    use tqdevo::connector::sync::{SyncOptions, sync};
    use tqdevo::devo::{DevoOptions, uploader};
    use tqdevo::export::{PackedRows, RowMapper};

    let world = World::start(200).await;
    let collection = world.collection().await;
    let state = world.dir.path().join("direct.state");
    let env = |key: &str| world.env.get(key).cloned();
    let devo_options = DevoOptions::from_env(&env).unwrap();
    let sync_at = |fields: BTreeMap<String, String>, hours: i64| {
        let (collection, state, devo_options) = (collection.clone(), state.clone(), devo_options.clone());
        async move {
            let settings = parse_custom_fields(&fields).unwrap();
            let uploader = uploader(&settings.devo, &devo_options).unwrap();
            let now = chrono::Utc::now() + chrono::Duration::hours(hours);
            let options = SyncOptions { dry_run: false, allow_mass_delete: false, now };
            let (mut rows, mapper) = (PackedRows::default(), RowMapper::new(&settings.threatq_hostname));
            for ioc in &collection {
                mapper.push(&mut rows, ioc);
            }
            let pages = futures::stream::iter([Ok(rows)]);
            bounded("a sync", sync(pages, &settings, uploader.as_ref(), &state, &options, |_| {})).await.unwrap()
        }
    };
    let api = world.stage.ui_fields(UploadMethod::LookupsApi, "resync");
    let action = |s: Summary| (s.action, s.reason.unwrap_or_default());
    let full = |why: &str| ("full".to_owned(), why.to_owned());
    let incremental = ("incremental".to_owned(), String::new());

    assert_eq!(action(sync_at(api.clone(), 0).await), full("no delivered state yet"));
    assert_eq!(action(sync_at(api.clone(), 23).await), incremental);
    assert_eq!(action(sync_at(api.clone(), 24).await), full("the periodic full resync is due"));
    assert_eq!(action(sync_at(api.clone(), 47).await), incremental, "the resync clock restarted");
    // The clock jumps three days back: waiting for it to pass the last full replace again would stall the resync
    // for three days, so the resync is due at once and its timer restarts from the new time.
    assert_eq!(action(sync_at(api.clone(), -72).await), full("the periodic full resync is due"));
    assert_eq!(action(sync_at(api.clone(), -71).await), incremental, "the resync timer restarted");
    assert_eq!(action(sync_at(api.clone(), -48).await), full("the periodic full resync is due"), "and runs on");
    assert_eq!(action(sync_at(api.clone(), 47).await), full("the periodic full resync is due"));

    let changed_target = full("the lookup or its Devo target changed");
    let mut renamed = api.clone();
    renamed.insert("lookup_table_name".into(), "resync_renamed".into());
    let summary = sync_at(renamed, 47).await;
    let counts = (summary.added, summary.changed, summary.deleted, summary.unchanged, summary.sent);
    assert_eq!(counts, (summary.unique, 0, 0, 0, summary.unique), "a new target gets, and is told of, every row");
    assert_eq!(action(summary), changed_target);
    assert_eq!(action(sync_at(world.stage.ui_fields(UploadMethod::Relay, "resync_renamed"), 47).await), changed_target);
    let mut other_endpoint = world.stage.ui_fields(UploadMethod::LookupsApi, "resync_renamed");
    let by_name = other_endpoint["devo_custom_endpoint"].replace("127.0.0.1", "localhost");
    other_endpoint.insert("devo_custom_endpoint".into(), by_name);
    assert_eq!(action(sync_at(other_endpoint.clone(), 47).await), changed_target);
    assert_eq!(action(sync_at(other_endpoint.clone(), 47).await), incremental);
    assert_eq!(world.lookup(UploadMethod::LookupsApi, "resync_renamed"), expected_rows(&collection));
    let mut other_domain = other_endpoint;
    other_domain.insert("devo_domain".into(), "another_domain".into());
    assert_eq!(action(sync_at(other_domain.clone(), 47).await), changed_target);
    assert_eq!(action(sync_at(other_domain, 47).await), incremental, "nothing else changed");
    assert_eq!(world.stage.devo_api.table("another_domain", "resync_renamed"), Some(expected_rows(&collection)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_sends_nothing_and_leaves_the_state_byte_identical() {
    let world = World::start(300).await;
    for (name, method) in [("dry-api", UploadMethod::LookupsApi), ("dry-relay", UploadMethod::Relay)] {
        world.configure(name, method, &name.replace('-', "_"), &[]).await;
        world.synced(name).await;
    }
    let first = expected_rows(&world.collection().await);
    edit_scores(&world, 1..=300, 10);
    world.stage.devo_api.clear_requests();
    let connections = world.stage.relay.connections().len();
    for (name, method) in [("dry-api", UploadMethod::LookupsApi), ("dry-relay", UploadMethod::Relay)] {
        let state = world.state_bytes(name);
        let (result, out) = world.run(name, true).await;
        let Ok(Outcome::Synced(summary)) = result else { panic!("{result:?}") };
        assert!(summary.dry_run && summary.changed > 0, "{summary:?}");
        assert!(out.contains("nothing was sent to Devo") && out.contains("change"), "{out}");
        assert_eq!(world.state_bytes(name), state);
        assert_eq!(world.lookup(method, &name.replace('-', "_")), first);
    }
    assert!(world.stage.devo_api.requests().iter().all(|r| r.method == "GET"), "{:?}", world.stage.devo_api.requests());
    assert_eq!(world.stage.relay.connections().len(), connections);
}

/// Sets a new score on every `every`-th Active IOC among `ids`; returns how many changed.
fn edit_scores(world: &World, ids: std::ops::RangeInclusive<u64>, every: usize) -> usize {
    let tq = &world.stage.threatq;
    let active: Vec<u64> = ids.filter(|id| tq.indicator(*id).is_some_and(|i| is_active(&i))).collect();
    let chosen: Vec<u64> = active.into_iter().step_by(every).collect();
    for id in &chosen {
        tq.modify_indicator(*id, |i| i["score"] = json!(format!("{}.25", id % 10)));
    }
    chosen.len()
}

fn is_active(ioc: &serde_json::Value) -> bool {
    ioc["status"]["name"] == "Active" || ioc["status"] == "Active"
}

// ---------------------------------------------------------------------------------------------------------------
// Incremental runs send what changed.
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_percent_change_sends_about_one_percent_of_the_rows() {
    let world = World::start(2_000).await;
    for (name, method) in [("inc-api", UploadMethod::LookupsApi), ("inc-relay", UploadMethod::Relay)] {
        world.configure(name, method, &name.replace('-', "_"), &[]).await;
        assert_eq!(world.synced(name).await.action, "full");
    }
    let total = expected_rows(&world.collection().await).len();
    // 20 changes among ~1,500 rows: 8 rescored, 6 expired, 6 added. Ids near the generator's duplicates (every
    // 1000th id repeats the one before) are left alone, so each change moves exactly one row.
    let tq = &world.stage.threatq;
    let active: Vec<u64> = (1..=1_990)
        .filter(|id| id % 1000 < 990 && tq.indicator(*id).is_some_and(|i| is_active(&i)))
        .step_by(50)
        .take(14)
        .collect();
    assert_eq!(active.len(), 14);
    for id in &active[..8] {
        tq.modify_indicator(*id, |i| i["score"] = json!("9.75"));
    }
    for id in &active[8..] {
        tq.modify_indicator(*id, |i| i["status"] = json!({"id": 2, "name": "Expired"}));
    }
    for n in 0..6 {
        tq.upsert_indicator(json!({"value": format!("new-{n}.inc.example"), "type": "FQDN", "status": "Active"}));
    }
    world.stage.devo_api.clear_requests();
    let connections = world.stage.relay.connections().len();
    for name in ["inc-api", "inc-relay"] {
        let summary = world.synced(name).await;
        assert_eq!((summary.changed, summary.deleted, summary.added, summary.sent), (8, 6, 6, 20), "{summary:?}");
    }
    let expected = expected_rows(&world.collection().await);
    assert_eq!(world.lookup(UploadMethod::LookupsApi, "inc_api"), expected);
    assert_eq!(world.lookup(UploadMethod::Relay, "inc_relay"), expected);

    let deploys: Vec<_> =
        world.stage.devo_api.requests().into_iter().filter(|r| r.path.ends_with("/deploy-csv")).collect();
    let api_rows: u64 = deploys.iter().map(|r| r.csv_rows).sum();
    assert_eq!(api_rows, 20, "{deploys:?}");
    let relay = world.stage.relay.connections();
    assert_eq!(relay.len(), connections + 1);
    let lines = relay[connections].iter().filter(|b| **b == b'\n').count();
    assert_eq!(lines, 20 + 2, "START, the 20 changes, END");
    assert!(total > 50 * 20, "the collection ({total} rows) is far larger than the change");
}

// ---------------------------------------------------------------------------------------------------------------
// The real binary, killed mid-run.
// ---------------------------------------------------------------------------------------------------------------

/// Starts the built binary for instance `name` with the world's environment plus `extra`.
fn spawn_binary(world: &World, name: &str, extra: &[(&str, &str)]) -> std::process::Child {
    let dir = world.config_dir();
    let mut command = crate::binary::Test::with_only_env(&world.env, &dir)
        .arg("-c")
        .arg(&dir)
        .args(["-n", name, "--cron-dir"])
        .arg(&dir)
        .command();
    command.envs(extra.iter().copied());
    command.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    command.spawn().unwrap()
}

/// Waits for the process without blocking the stand-ins' runtime.
async fn exit_of(child: &mut std::process::Child) -> std::process::ExitStatus {
    bounded("the binary", async {
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

fn signal(child: &std::process::Child, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_never_leaves_a_partial_lookup_and_the_next_run_converges() {
    use rand::RngExt as _;
    let world = World::start(3_000).await;
    let instances =
        [("kill-api", UploadMethod::LookupsApi, "kill_api"), ("kill-relay", UploadMethod::Relay, "kill_relay")];
    for (name, method, lookup) in instances {
        world.configure(name, method, lookup, &[]).await;
    }
    // Edits change scores only, so the lookup's size never changes: any other size seen is a partial table.
    let unique = expected_rows(&world.collection().await).len();
    let watching = AtomicBool::new(true);
    let sampler = async {
        let mut bad = Vec::new();
        while watching.load(Ordering::Relaxed) {
            for (_, method, lookup) in instances {
                let size = world.stage.lookup(method, lookup).map(|rows| rows.len());
                if size.is_some_and(|n| n != unique) {
                    bad.push((lookup, size));
                }
            }
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        bad
    };
    // Each kill lands at a random point after ThreatQ served the run's first page; it was mid-way when the run
    // had not written its state yet. Without enough of those the test would prove nothing.
    const ROUNDS: u64 = 10;
    const MID_WAY_AT_LEAST: u32 = 5;
    let killer = async {
        let mut mid_way = 0;
        for round in 0..ROUNDS {
            edit_scores(&world, (round * 300 + 1)..=(round * 300 + 300), 3);
            let (name, _, _) = instances[(round % 2) as usize];
            let state = world.state_bytes(name);
            world.stage.threatq.clear_requests();
            let mut child = spawn_binary(&world, name, &[]);
            bounded("the run's first page", async {
                while !world.stage.threatq.requests().iter().any(|r| r.path.contains("/indicators")) {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
            .await;
            // A whole run of 3,000 IOCs takes well under a second here.
            let wait = rand::rng().random_range(0..250);
            tokio::time::sleep(Duration::from_millis(wait)).await;
            signal(&child, nix::sys::signal::Signal::SIGKILL);
            let killed = exit_of(&mut child).await.code().is_none();
            mid_way += u32::from(killed && world.state_bytes(name) == state);
        }
        eprintln!("SIGKILL landed between the first page and the state write in {mid_way} of {ROUNDS} runs");
        watching.store(false, Ordering::Relaxed);
        mid_way
    };
    let (bad, mid_way) = tokio::join!(sampler, killer);
    assert!(mid_way >= MID_WAY_AT_LEAST, "only {mid_way} of {ROUNDS} kills landed mid-way");
    assert!(bad.is_empty(), "a stand-in held a partial lookup: {bad:?}");

    let expected = expected_rows(&world.collection().await);
    for (name, method, lookup) in instances {
        let status = exit_of(&mut spawn_binary(&world, name, &[])).await;
        assert!(status.success(), "{name}: {status}");
        assert_eq!(world.lookup(method, lookup), expected, "{name}");
    }
    for upload in world.stage.relay.applied() {
        if upload.action == tqdevo::devo::relay::encode::Action::Full {
            assert_eq!(upload.rows, unique, "{upload:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_an_upload_before_its_end_keeps_the_state_and_releases_the_lock() {
    let world = World::start(1_000).await;
    world.configure("term", UploadMethod::Relay, "term", &[]).await;
    world.synced("term").await;
    let before = world.lookup(UploadMethod::Relay, "term");
    let state = world.state_bytes("term");
    let applied = world.stage.relay.applied().len();
    edit_scores(&world, 1..=1_000, 5);

    // A long pause after START keeps the upload open; the run is in it once ThreatQ served the last page (of
    // the stage's 250).
    let last_page = format!("offset={}&", (world.collection().await.len() - 1) / 250 * 250);
    world.stage.threatq.clear_requests();
    let mut child = spawn_binary(&world, "term", &[("DEVO_RELAY_DELAY_SECONDS", "60")]);
    bounded("the run to reach the upload", async {
        while !world
            .stage
            .threatq
            .requests()
            .iter()
            .any(|r| r.path.contains("/indicators/") && r.query.contains(&last_page))
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    signal(&child, nix::sys::signal::Signal::SIGTERM);
    let status =
        tokio::time::timeout(Duration::from_secs(20), exit_of(&mut child)).await.expect("SIGTERM stops the run");
    assert!(!status.success(), "{status}");

    assert_eq!(world.stage.relay.applied().len(), applied, "nothing applied");
    let last = world.stage.relay.connections().last().cloned().unwrap_or_default();
    assert!(!String::from_utf8_lossy(&last).contains("|END|"), "no END for the interrupted upload");
    assert_eq!(world.lookup(UploadMethod::Relay, "term"), before);
    assert_eq!(world.state_bytes("term"), state, "the state is unchanged");

    let status = exit_of(&mut spawn_binary(&world, "term", &[])).await;
    assert_eq!(status.code(), Some(0), "the lock was released, so the next run is not refused (exit 6)");
    assert_eq!(world.lookup(UploadMethod::Relay, "term"), expected_rows(&world.collection().await));
}
