//! The ThreatQ client against the ThreatQ stand-in, over real HTTPS on loopback.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use secrecy::SecretString;
use serde_json::{Value, json};
use tqdevo::retry::RetryPolicy;
use tqdevo::sandbox::threatq::{
    ActiveEncoding, DEFAULT_CLIENT_ID, DEFAULT_EMAIL, DEFAULT_PASSWORD, Fault, PageLatency, ThreatqOptions,
    ThreatqStandIn,
};
use tqdevo::threatq::{
    Client, ClientOptions, ConnectorDefinition, ConnectorRegistry, Error, FieldDef, Indicator, Policy,
};

/// No test here should come near this; a hang fails instead of blocking the suite.
const LIMIT: Duration = Duration::from_secs(60);

async fn within<F: Future>(work: F) -> F::Output {
    tokio::time::timeout(LIMIT, work).await.expect("finished within the time limit")
}

struct Env {
    tq: ThreatqStandIn,
    client: Client,
    ca_file: tempfile::NamedTempFile,
}

fn fast_policy() -> Policy {
    let retry = RetryPolicy {
        base_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(50),
        retry_after_cap: Duration::from_secs(2),
        ..Policy::default().retry
    };
    Policy { retry, ..Policy::default() }
}

fn options_for(tq: &ThreatqStandIn, ca_file: &tempfile::NamedTempFile, password: &str) -> ClientOptions {
    ClientOptions {
        host: tq.host(),
        client_id: DEFAULT_CLIENT_ID.into(),
        username: DEFAULT_EMAIL.into(),
        password: SecretString::from(password),
        ca_file: Some(ca_file.path().to_owned()),
        tls_verify: true,
    }
}

async fn env_with(options: ThreatqOptions) -> Env {
    tqdevo::init_tls();
    let tq = ThreatqStandIn::start(options).await.expect("stand-in starts");
    let mut ca_file = tempfile::NamedTempFile::new().expect("temp file");
    ca_file.write_all(tq.ca_pem().as_bytes()).expect("CA written");
    let client = Client::with_policy(options_for(&tq, &ca_file, DEFAULT_PASSWORD), fast_policy()).expect("client");
    Env { tq, client, ca_file }
}

async fn env(generated: u64) -> Env {
    env_with(ThreatqOptions { generated, ..ThreatqOptions::default() }).await
}

async fn drain(stream: impl Stream<Item = Result<Vec<Indicator>, Error>>) -> Result<Vec<Vec<Indicator>>, Error> {
    within(async {
        let mut stream = std::pin::pin!(stream);
        let mut pages = Vec::new();
        while let Some(page) = stream.next().await {
            pages.push(page?);
        }
        Ok(pages)
    })
    .await
}

fn ids(pages: &[Vec<Indicator>]) -> Vec<u64> {
    pages.iter().flatten().map(|i| i.id).collect()
}

impl Env {
    async fn collection(&self, name: &str, api_query: Value) -> tqdevo::threatq::DataCollection {
        self.tq.add_collection(name, api_query);
        within(self.client.find_collection(name)).await.expect("collection found")
    }

    async fn all(&self) -> tqdevo::threatq::DataCollection {
        self.collection("Everything", json!({})).await
    }

    fn count(&self, path: &str, query_part: &str) -> usize {
        self.tq.requests().iter().filter(|r| r.path == path && r.query.contains(query_part)).count()
    }
}

#[tokio::test]
async fn sign_in_with_good_and_bad_credentials() {
    let env = env(0).await;
    within(env.client.sign_in()).await.expect("good credentials sign in");

    let wrong = Client::with_policy(options_for(&env.tq, &env.ca_file, "not-the-password"), fast_policy()).unwrap();
    let error = within(wrong.sign_in()).await.expect_err("bad credentials refused");
    assert!(matches!(error, Error::SignIn { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains(&env.tq.host()) && message.contains("incorrect"), "{message}");
    assert!(!message.contains("not-the-password"));
}

#[tokio::test]
async fn every_call_carries_a_capital_b_bearer_token() {
    let env = env(10).await;
    drain(env.client.indicators(&env.all().await, 100)).await.unwrap();
    let calls: Vec<_> = env.tq.requests().into_iter().filter(|r| r.path != "/api/token").collect();
    assert!(!calls.is_empty());
    assert!(calls.iter().all(|r| r.authorization.as_deref().is_some_and(|a| a.starts_with("Bearer tqa-"))));
}

#[tokio::test]
async fn token_expiring_while_paging_is_refreshed_transparently() {
    let env = env_with(ThreatqOptions {
        generated: 3000,
        token_lifetime: Duration::from_secs(1),
        ..ThreatqOptions::default()
    })
    .await;
    let collection = env.all().await;
    env.tq.inject("/api/indicators/query", 6, Fault::Delay(Duration::from_millis(400)));
    let pages = drain(env.client.indicators(&collection, 500)).await.expect("paging survives token expiry");
    assert_eq!(ids(&pages), (1..=3000).collect::<Vec<_>>());
    assert!(env.count("/api/token", "grant_type=refresh_token") >= 1, "the refresh token was used");
}

#[tokio::test]
async fn a_token_the_server_already_expired_gets_one_renewal_and_a_retry() {
    // The server expires tokens well before the `expires_in` it announces (rounded up to a second), and takes
    // longer than that to answer a page: every page request finds its token expired.
    let env = env_with(ThreatqOptions {
        generated: 600,
        token_lifetime: Duration::from_millis(200),
        page_latency: PageLatency { base: Duration::from_millis(300), per_ioc: Duration::ZERO },
        ..ThreatqOptions::default()
    })
    .await;
    let collection = env.all().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut stream = std::pin::pin!(env.client.indicators(&collection, 200));
    let mut got = Vec::new();
    while let Some(page) = within(stream.next()).await {
        got.extend(page.expect("the 401 is absorbed"));
    }
    assert_eq!(got.len(), 600);
    assert_eq!(env.count("/api/indicators/query", ""), 3 + 3, "each page: a 401, then the retry");
    assert!(env.count("/api/token", "grant_type=refresh_token") >= 3);
}

#[tokio::test]
async fn revoked_tokens_lead_to_a_new_sign_in() {
    let env = env(0).await;
    env.tq.add_collection("c", json!({}));
    within(env.client.sign_in()).await.unwrap();
    env.tq.revoke_tokens();
    env.tq.clear_requests();
    within(env.client.find_collection("c")).await.expect("signed in again and retried");
    let log: Vec<(String, String)> = env.tq.requests().into_iter().map(|r| (r.path, r.query)).collect();
    assert_eq!(log.len(), 4, "{log:?}");
    assert_eq!(log[0].0, "/api/search/query");
    assert!(log[1].1.contains("grant_type=refresh_token"), "refresh first");
    assert!(log[2].1.contains("grant_type=password"), "then a password sign-in");
    assert_eq!(log[3].0, "/api/search/query");
}

#[tokio::test]
async fn a_second_401_in_a_row_is_an_error_not_a_loop() {
    let env = env(0).await;
    within(env.client.sign_in()).await.unwrap();
    env.tq.inject("/api/search/query", 2, Fault::Status { status: 401, retry_after: None });
    let error = within(env.client.find_collection("x")).await.expect_err("401 twice");
    assert!(matches!(error, Error::Http { status: 401, .. }), "{error:?}");
    assert_eq!(env.count("/api/search/query", ""), 2);
}

#[tokio::test]
async fn rate_limits_honour_retry_after() {
    let env = env(0).await;
    env.tq.add_collection("c", json!({}));
    env.tq.inject("/api/search/query", 1, Fault::Status { status: 429, retry_after: Some(1) });
    within(env.client.find_collection("c")).await.expect("retried after the rate limit");
    assert_eq!(env.count("/api/search/query", ""), 2);
}

#[tokio::test]
async fn server_errors_are_retried_a_bounded_number_of_times() {
    let env = env(0).await;
    env.tq.add_collection("c", json!({}));
    env.tq.inject("/api/search/query", 3, Fault::Status { status: 503, retry_after: None });
    within(env.client.find_collection("c")).await.expect("success after three 503s");

    env.tq.clear_requests();
    env.tq.inject("/api/search/query", 100, Fault::Status { status: 502, retry_after: None });
    let error = within(env.client.find_collection("c")).await.expect_err("gives up");
    assert!(matches!(error, Error::Http { status: 502, .. }), "{error:?}");
    assert_eq!(env.count("/api/search/query", ""), Policy::default().retry.max_attempts as usize);
}

#[tokio::test]
async fn a_success_status_with_errors_is_an_error() {
    let env = env(10).await;
    let collection = env.all().await;
    env.tq.inject("/api/indicators/query", 1, Fault::ErrorsIn2xx("Search backend unavailable".into()));
    let error = drain(env.client.indicators(&collection, 5)).await.expect_err("errors in a 200");
    assert!(matches!(&error, Error::Refused { path, .. } if path == "/api/indicators/query"), "{error:?}");
    assert!(error.to_string().contains("Search backend unavailable"));
}

#[tokio::test]
async fn garbage_and_truncated_bodies_are_clear_errors() {
    let env = env(50).await;
    let collection = env.all().await;
    for fault in [Fault::Garbage, Fault::Truncate] {
        env.tq.inject("/api/indicators/query", 1, fault.clone());
        let error = drain(env.client.indicators(&collection, 20)).await.expect_err("not JSON");
        assert!(
            matches!(&error, Error::Garbage { path, .. } if path == "/api/indicators/query"),
            "{fault:?}: {error:?}"
        );
    }
    // A garbage second page ends the stream with the error after the good first page.
    env.tq.clear_requests();
    let mut stream = std::pin::pin!(env.client.indicators(&collection, 20));
    assert_eq!(within(stream.next()).await.unwrap().unwrap().len(), 20);
    env.tq.inject("/api/indicators/query", 1, Fault::Truncate);
    assert!(matches!(within(stream.next()).await, Some(Err(Error::Garbage { .. }))));
    assert!(within(stream.next()).await.is_none());
}

#[tokio::test]
async fn an_empty_collection_yields_nothing() {
    let env = env(0).await;
    assert!(drain(env.client.indicators(&env.all().await, 100)).await.unwrap().is_empty());
    let env = self::env(100).await;
    let none = env.collection("No match", json!({"criteria": {"value": {"+contains": "no such text"}}})).await;
    assert!(drain(env.client.indicators(&none, 100)).await.unwrap().is_empty());
}

#[tokio::test]
async fn exactly_one_page_needs_one_request() {
    let env = env(100).await;
    let collection = env.all().await;
    let pages = drain(env.client.indicators(&collection, 100)).await.unwrap();
    assert_eq!(pages.len(), 1);
    assert_eq!(pages[0].len(), 100);
    assert_eq!(env.count("/api/indicators/query", ""), 1, "offset 100 >= total 100 ends the stream");
    let query = &env.tq.requests().into_iter().find(|r| r.path == "/api/indicators/query").unwrap().query;
    assert!(query.contains("sort=id") && query.contains("with=attributes%2Cadversaries"), "{query}");
}

#[tokio::test]
async fn a_collection_shrinking_while_paged_ends_with_an_error_naming_the_change() {
    let env = env(1000).await;
    let collection = env.all().await;
    let mut stream = std::pin::pin!(env.client.indicators(&collection, 100));
    let first = within(stream.next()).await.unwrap().unwrap();
    assert_eq!(first.len(), 100);
    // Offsets past a removal skip rows that are still there; a run must not export (and delete by) such a read.
    env.tq.set_generated(150);
    let error = within(stream.next()).await.unwrap().expect_err("the total moved");
    assert!(error.to_string().contains("total went from 1000 to 150"), "{error}");
    assert!(within(stream.next()).await.is_none());
}

#[tokio::test]
async fn a_missing_collection_names_close_ones() {
    let env = env(0).await;
    for name in ["High Score FQDNs", "Phishing URLs", "high score ips"] {
        env.tq.add_collection(name, json!({}));
    }
    let error = within(env.client.find_collection("High Score FQDN")).await.expect_err("no exact match");
    match &error {
        Error::CollectionNotFound { name, closest } => {
            assert_eq!(name, "High Score FQDN");
            assert_eq!(closest, &["High Score FQDNs", "high score ips"]);
        }
        other => panic!("{other:?}"),
    }
    assert!(error.to_string().contains("did you mean: High Score FQDNs"));
}

#[tokio::test]
async fn filters_of_a_collection_are_applied() {
    let env = env(3000).await;
    let query = json!({"criteria": {"+and": [{"+or": [{"type_name": "FQDN"}, {"type_name": "URL"}]},
                                             {"score": {"+gte": 5}}]},
                       "filters": {"+and": [{"status_name": "Active"}]}});
    let collection = env.collection("Scored domains", query).await;
    let got = ids(&drain(env.client.indicators(&collection, 97)).await.unwrap());
    let score = |v: &Value| match v {
        Value::Object(m) => {
            m["manual_score"].as_str().or(m["generated_score"].as_str()).unwrap().parse::<f64>().unwrap()
        }
        other => other.as_f64().unwrap(),
    };
    let name = |v: &Value| v.get("name").unwrap_or(v).as_str().unwrap().to_owned();
    let expected: Vec<u64> = (1..=3000)
        .filter(|id| {
            let ioc = env.tq.indicator(*id).unwrap();
            ["FQDN", "URL"].contains(&name(&ioc["type"]).as_str())
                && score(&ioc["score"]) >= 5.0
                && name(&ioc["status"]) == "Active"
        })
        .collect();
    assert!(!expected.is_empty() && expected.len() < 3000);
    assert_eq!(got, expected);
}

#[tokio::test]
async fn a_collection_whose_json_is_a_string_pages_like_one_whose_json_is_an_object() {
    let env = env(1234).await;
    let query = json!({"criteria": {"score": {"+lt": 4}}, "filters": null});
    let as_object = env.collection("Low", query.clone()).await;
    // Some instances send `json` as a JSON string.
    env.tq.add_collection_json("Low as text", json!(json!({ "api_query": query }).to_string()));
    let as_text = within(env.client.find_collection("Low as text")).await.unwrap();
    let from_object = drain(env.client.indicators(&as_object, 100)).await.unwrap().concat();
    let from_text = drain(env.client.indicators(&as_text, 100)).await.unwrap().concat();
    assert!(!from_object.is_empty() && from_object.len() < 1234);
    assert_eq!(from_text, from_object);
}

#[tokio::test]
async fn indicators_arrive_with_attributes_sources_and_both_shapes_normalised() {
    let env = env(300).await;
    let pages = drain(env.client.indicators(&env.all().await, 300)).await.unwrap();
    let iocs = pages.concat();
    assert!(iocs.iter().all(|i| !i.type_name.is_empty() && !i.status.is_empty() && !i.sources.is_empty()));
    assert!(iocs.iter().any(|i| i.attribute("Attack Phase").next().is_some()));
    assert!(iocs.iter().all(|i| i.score.is_some()));
    let edited = env.tq.upsert_indicator(json!({
        "id": 5000, "value": "a,b|c\n\"d\"", "type": "Filename", "status": {"name": "Review"},
        "score": {"generated_score": "6.50", "manual_score": null}, "tags": ["x", {"name": "y"}],
        "adversaries": [{"name": "APT 29"}], "attributes": [{"name": "Actor", "value": "Ünï"}],
        "expired_at": "2024-01-02 03:04:05",
    }));
    env.tq.set_generated(0);
    let only = drain(env.client.indicators(&env.collection("again", json!({})).await, 10)).await.unwrap().concat();
    assert_eq!(only.len(), 1);
    let ioc = &only[0];
    assert_eq!((ioc.id, ioc.value.as_str(), ioc.type_name.as_str()), (edited, "a,b|c\n\"d\"", "Filename"));
    assert_eq!((ioc.status.as_str(), ioc.score.as_deref()), ("Review", Some("6.50")));
    assert_eq!(ioc.tags, ["x", "y"]);
    assert_eq!((ioc.adversaries.clone(), ioc.related_adversary_count), (vec!["APT 29".to_owned()], Some(1)));
    assert_eq!(ioc.expires_at.as_deref(), Some("2024-01-02 03:04:05"));
}

fn definition(version: &str, extra_field: bool) -> ConnectorDefinition {
    let field = |name: &str, kind: &str| FieldDef {
        name: name.into(),
        label: name.to_uppercase(),
        kind: kind.into(),
        required: true,
        default: None,
        description: String::new(),
        options: None,
        mask: kind == "password",
    };
    let mut user_fields = vec![field("data_collection_name", "text"), field("devo_password", "password")];
    if extra_field {
        user_fields.push(field("batch_size", "number"));
    }
    ConnectorDefinition {
        name: "devo-ioc-exporter".into(),
        display_name: "Devo IOC Exporter".into(),
        category: "Labs".into(),
        version: version.into(),
        namespace: "tq_labs_devo_ioc_exporter".into(),
        user_fields,
    }
}

#[tokio::test]
async fn a_new_connector_is_registered_inactive_in_labs() {
    let env = env(0).await;
    assert_eq!(within(env.client.find_connector("devo-ioc-exporter")).await.unwrap(), None);
    let record = within(env.client.ensure_registered(&definition("1.0.0", false))).await.unwrap();
    assert!(!record.is_active);
    assert_eq!((record.version.as_str(), record.user_fields.len()), ("1.0.0", 2));
    let stored = env.tq.connector("devo-ioc-exporter").unwrap();
    assert_eq!(stored["category"]["name"], "Labs");
    assert_eq!(stored["namespace"], "tq_labs_devo_ioc_exporter");
    assert_eq!(stored["user_fields"][1]["mask"], true);
    // Registered again with the same definition: nothing to write.
    env.tq.clear_requests();
    assert_eq!(within(env.client.ensure_registered(&definition("1.0.0", false))).await.unwrap(), record);
    assert!(env.tq.requests().iter().all(|r| r.method == "GET"));
}

#[tokio::test]
async fn an_old_record_is_upgraded_and_keeps_the_users_configuration() {
    let env = env(0).await;
    within(env.client.ensure_registered(&definition("1.0.0", false))).await.unwrap();
    let typed = BTreeMap::from([("data_collection_name".to_owned(), "High Score FQDNs".to_owned())]);
    assert!(env.tq.set_custom_fields("devo-ioc-exporter", typed.clone()));
    env.tq.set_active("devo-ioc-exporter", true);
    let record = within(env.client.ensure_registered(&definition("1.1.0", true))).await.unwrap();
    assert_eq!((record.version.as_str(), record.user_fields.len()), ("1.1.0", 3));
    assert_eq!(record.custom_fields, typed);
    assert!(record.is_active);
}

#[tokio::test]
async fn the_toggle_reads_in_every_encoding() {
    let env = env(0).await;
    within(env.client.ensure_registered(&definition("1.0.0", false))).await.unwrap();
    for encoding in [
        ActiveEncoding::Bool,
        ActiveEncoding::Number,
        ActiveEncoding::YesNo,
        ActiveEncoding::TrueFalseText,
        ActiveEncoding::DigitText,
        ActiveEncoding::EmptyForFalse,
        ActiveEncoding::NullForFalse,
    ] {
        env.tq.set_active_encoding(encoding);
        for active in [true, false] {
            env.tq.set_active("devo-ioc-exporter", active);
            let record = within(env.client.find_connector("devo-ioc-exporter")).await.unwrap().unwrap();
            assert_eq!(record.is_active, active, "{encoding:?} {}", env.tq.connector("devo-ioc-exporter").unwrap());
        }
    }
}

#[tokio::test]
async fn find_connector_picks_the_exact_name_and_reads_typed_values_as_text() {
    let env = env(0).await;
    let mut beta = definition("9.9.9", false);
    beta.name = "devo-ioc-exporter-beta".into();
    within(env.client.ensure_registered(&beta)).await.unwrap();
    within(env.client.ensure_registered(&definition("1.0.0", false))).await.unwrap();
    env.tq.modify_connector("devo-ioc-exporter", |c| {
        c.insert("custom_fields".into(), json!({"batch_size": 500, "dry_run": false, "unset": null}));
    });
    let record = within(env.client.find_connector("devo-ioc-exporter")).await.unwrap().unwrap();
    assert_eq!(record.version, "1.0.0");
    let fields: Vec<(&str, &str)> = record.custom_fields.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(fields, [("batch_size", "500"), ("dry_run", "false")]);
}

#[tokio::test]
async fn report_run_writes_the_time_and_count() {
    let env = env(0).await;
    let record = within(env.client.ensure_registered(&definition("1.0.0", false))).await.unwrap();
    let at = chrono::DateTime::parse_from_rfc3339("2024-05-01T12:34:56Z").unwrap().to_utc();
    within(env.client.report_run(record.id, at, 4242)).await.unwrap();
    let stored = env.tq.connector("devo-ioc-exporter").unwrap();
    assert_eq!(
        (stored["last_import_at"].as_str(), stored["last_import_count"].as_u64()),
        (Some("2024-05-01 12:34:56"), Some(4242))
    );
    let again = within(env.client.find_connector("devo-ioc-exporter")).await.unwrap().unwrap();
    assert_eq!(again.last_import_count, Some(4242));
}

#[tokio::test]
async fn tls_is_verified_unless_explicitly_turned_off() {
    let env = env(0).await;
    let mut options = options_for(&env.tq, &env.ca_file, DEFAULT_PASSWORD);
    options.ca_file = None;
    let untrusted = Client::with_policy(options.clone(), fast_policy()).unwrap();
    let error = within(untrusted.sign_in()).await.expect_err("unknown CA refused");
    assert!(matches!(&error, Error::Tls(detail) if detail.contains("certificate")), "{error:?}");
    assert!(env.tq.requests().is_empty(), "no request crossed the refused handshake");

    options.tls_verify = false;
    within(Client::new(options).unwrap().sign_in()).await.expect("verification off");

    options = options_for(&env.tq, &env.ca_file, DEFAULT_PASSWORD);
    options.host = format!("http://{}", env.tq.host());
    assert!(matches!(Client::new(options), Err(Error::Host { .. })));
}

/// Collects everything every tracing level writes, for the secrets test.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn no_password_or_token_reaches_a_log_or_a_debug_print() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let env = env(30).await;
    let collection = env.all().await;
    env.tq.revoke_tokens();
    drain(env.client.indicators(&collection, 10)).await.unwrap();
    env.tq.inject("/api/token", 1, Fault::Status { status: 503, retry_after: None });
    env.tq.revoke_tokens();
    drain(env.client.indicators(&collection, 10)).await.unwrap();

    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(log.contains("signing in again"), "the log is captured");
    let mut secrets = env.tq.live_tokens();
    secrets.extend(env.tq.requests().into_iter().filter_map(|r| r.authorization));
    secrets.extend(
        env.tq
            .requests()
            .into_iter()
            .filter_map(|r| r.query.split('&').find_map(|p| p.strip_prefix("refresh_token=").map(str::to_owned))),
    );
    secrets.push(DEFAULT_PASSWORD.to_owned());
    assert!(secrets.len() > 4);
    for secret in secrets {
        let token = secret.trim_start_matches("Bearer ");
        assert!(!log.contains(token), "a secret reached the log");
        assert!(!format!("{:?}", env.client).contains(token));
    }
}
