//! Pages in flight against the ThreatQ stand-in: the rows equal a one-at-a-time run's whatever the collection,
//! page size, concurrency and overload answers; the window of requests shrinks on 429/503 and grows back; and a
//! slow ThreatQ sees K requests at once, by its own log of when each request started and ended.

use std::io::Write;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use proptest::prelude::*;
use secrecy::SecretString;
use serde_json::json;
use tqdevo::retry::RetryPolicy;
use tqdevo::sandbox::threatq::{
    DEFAULT_CLIENT_ID, DEFAULT_EMAIL, DEFAULT_PASSWORD, Fault, LoggedRequest, PageLatency, ThreatqOptions,
    ThreatqStandIn,
};
use tqdevo::threatq::{Batch, Client, ClientOptions, DataCollection, Error, Indicator, Policy};

const QUERY: &str = "/api/indicators/query";

struct Env {
    tq: ThreatqStandIn,
    client: Client,
    _ca_file: tempfile::NamedTempFile,
}

async fn env(generated: u64, latency_ms: u64) -> Env {
    tqdevo::init_tls();
    let page_latency = PageLatency { base: Duration::from_millis(latency_ms), per_ioc: Duration::ZERO };
    let tq = ThreatqStandIn::start(ThreatqOptions { generated, page_latency, ..ThreatqOptions::default() })
        .await
        .expect("stand-in starts");
    let mut ca_file = tempfile::NamedTempFile::new().expect("temp file");
    ca_file.write_all(tq.ca_pem().as_bytes()).expect("CA written");
    let options = ClientOptions {
        host: tq.host(),
        client_id: DEFAULT_CLIENT_ID.into(),
        username: DEFAULT_EMAIL.into(),
        password: SecretString::from(DEFAULT_PASSWORD),
        ca_file: Some(ca_file.path().to_owned()),
        tls_verify: true,
    };
    let retry = RetryPolicy {
        base_delay: Duration::from_millis(2),
        max_delay: Duration::from_millis(20),
        ..Policy::default().retry
    };
    let policy = Policy { retry, ..Policy::default() };
    let client = Client::with_policy(options, policy).expect("client");
    Env { tq, client, _ca_file: ca_file }
}

impl Env {
    async fn collection(&self, name: &str, api_query: serde_json::Value) -> DataCollection {
        self.tq.add_collection(name, api_query);
        self.client.find_collection(name).await.expect("collection found")
    }

    /// The indicator page requests the stand-in served, by start time.
    fn page_requests(&self) -> Vec<LoggedRequest> {
        let mut requests: Vec<LoggedRequest> = self.tq.requests().into_iter().filter(|r| r.path == QUERY).collect();
        requests.sort_by_key(|r| r.started);
        requests
    }
}

async fn drain(stream: impl Stream<Item = Result<Batch, Error>>) -> Result<Vec<Indicator>, Error> {
    tokio::time::timeout(Duration::from_secs(60), async {
        let mut stream = std::pin::pin!(stream);
        let mut all = Vec::new();
        while let Some(batch) = stream.next().await {
            all.extend(batch?.indicators);
        }
        Ok(all)
    })
    .await
    .expect("paging finished within a minute")
}

/// For each request (by start), how many requests the stand-in was serving when it started, itself included.
fn in_flight_at_each_start(requests: &[LoggedRequest]) -> Vec<usize> {
    let end = |r: &LoggedRequest| r.finished.expect("every request was answered");
    requests.iter().map(|r| requests.iter().filter(|o| o.started <= r.started && r.started < end(o)).count()).collect()
}

#[derive(Clone, Debug)]
struct Case {
    generated: u64,
    removed: Vec<u64>,
    query: u8,
    page_size: u32,
    in_flight: u32,
    faults: Vec<u16>,
}

fn case() -> impl Strategy<Value = Case> {
    (0u64..1500, prop::collection::vec(1u64..1500, 0..20), 0u8..3, 5u32..300, 1u32..=16).prop_flat_map(
        |(generated, removed, query, page_size, in_flight)| {
            prop::collection::vec(prop::sample::select(vec![429u16, 503]), 0..5).prop_map(move |faults| Case {
                generated,
                removed: removed.clone(),
                query,
                page_size,
                in_flight,
                faults,
            })
        },
    )
}

fn run_case(case: Case) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let env = env(case.generated, 0).await;
        for id in &case.removed {
            env.tq.remove_indicator(*id);
        }
        let query = match case.query {
            0 => json!({}),
            1 => json!({"criteria": {"status_name": "Active"}}),
            _ => json!({"criteria": {"score": {"+gte": 5}}, "filters": {"+and": [{"type_name": "FQDN"}]}}),
        };
        let collection = env.collection("Case", query).await;
        let sequential = drain(env.client.pages(&collection, case.page_size, 1)).await.expect("sequential");
        // Overload answers armed one by one while the pages are being fetched, so they land on any page.
        let tq = &env.tq;
        let arm = async {
            for status in &case.faults {
                tq.inject(QUERY, 1, Fault::Status { status: *status, retry_after: Some(0) });
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        };
        let (parallel, ()) = tokio::join!(drain(env.client.pages(&collection, case.page_size, case.in_flight)), arm);
        assert_eq!(parallel.expect("parallel"), sequential, "{case:?}");
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn pages_in_flight_return_exactly_the_sequential_rows(case in case()) {
        run_case(case);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_threatq_sees_k_requests_in_flight_and_never_more() {
    let env = env(3000, 60).await;
    let collection = env.collection("Everything", json!({})).await;
    let sequential = drain(env.client.pages(&collection, 100, 1)).await.unwrap();
    let alone = in_flight_at_each_start(&env.page_requests());
    assert_eq!(alone.iter().max(), Some(&1), "one at a time: {alone:?}");
    for k in [3, 6] {
        env.tq.clear_requests();
        assert_eq!(drain(env.client.pages(&collection, 100, k)).await.unwrap(), sequential);
        let requests = env.page_requests();
        assert_eq!(requests.len(), 30, "one request a page");
        let overlap = in_flight_at_each_start(&requests);
        assert_eq!(overlap.iter().max(), Some(&(k as usize)), "{k} in flight: {overlap:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_halves_on_429_and_503_and_grows_back_by_one_per_clean_page() {
    for status in [429, 503] {
        let env = env(4000, 40).await;
        let collection = env.collection("Everything", json!({})).await;
        // The first page is refused twice: the window of 4 halves to 2, then to 1.
        env.tq.inject(QUERY, 2, Fault::Status { status, retry_after: Some(0) });
        assert_eq!(drain(env.client.pages(&collection, 100, 4)).await.unwrap().len(), 4000);
        let overlap = in_flight_at_each_start(&env.page_requests());
        assert_eq!(overlap.len(), 42, "40 pages and the 2 refusals");
        assert_eq!(&overlap[..3], &[1, 1, 1], "HTTP {status}: the first page alone: {overlap:?}");
        // The first clean page opens the window to 2, each later one by one more, up to the 4 asked for.
        assert!(overlap[3..5].iter().all(|n| *n <= 2), "HTTP {status}: shrunk: {overlap:?}");
        assert_eq!(overlap.iter().max(), Some(&4), "HTTP {status}: recovered: {overlap:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_holds_back_new_requests() {
    let env = env(600, 0).await;
    let collection = env.collection("Everything", json!({})).await;
    env.tq.inject(QUERY, 1, Fault::Status { status: 429, retry_after: Some(1) });
    let started = Instant::now();
    assert_eq!(drain(env.client.pages(&collection, 100, 4)).await.unwrap().len(), 600);
    let requests = env.page_requests();
    let refused = requests[0].finished.unwrap();
    assert!(requests[1..].iter().all(|r| r.started >= refused + Duration::from_millis(950)), "waited for Retry-After");
    assert!(started.elapsed() >= Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_shifted_into_the_next_page_fails_the_read_instead_of_passing_a_row_twice() {
    let env = env(1000, 30).await;
    // Removed before paging and put back while paging: every later row moves one place on.
    let removed = env.tq.indicator(5).unwrap();
    env.tq.remove_indicator(5);
    let collection = env.collection("Everything", json!({})).await;
    let mut pages = std::pin::pin!(env.client.pages(&collection, 100, 1));
    pages.next().await.unwrap().unwrap();
    env.tq.upsert_indicator(removed);
    let mut outcome = Ok(());
    while let Some(batch) = pages.next().await {
        if let Err(e) = batch {
            outcome = Err(e);
            break;
        }
    }
    let error = outcome.expect_err("the shift is seen");
    assert!(matches!(error, tqdevo::threatq::Error::Changed { .. }), "{error}");
    assert!(error.to_string().contains("Everything"), "names the collection: {error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_carries_the_collection_total() {
    let env = env(450, 0).await;
    let collection = env.collection("Everything", json!({})).await;
    let batches: Vec<Batch> = env.client.pages(&collection, 100, 4).map(Result::unwrap).collect().await;
    assert_eq!(batches.len(), 5);
    assert!(batches.iter().all(|b| b.total == Some(450)), "the progress bar's length from the first page on");
}
