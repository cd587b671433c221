//! The Lookups API uploader against the HTTPS stand-in: create, replace, incremental changes, jobs that fail or
//! never end, retries, the token, CSV fidelity, and a million-row figure.

use std::future::Future;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use secrecy::SecretString;
use tqdevo::devo::Region;
use tqdevo::devo::api::{ApiConfig, LookupsApiUploader};
use tqdevo::devo::{Column, ColumnType, Delivery, Error, Inspection, Row, RowSource, Table, Uploader};
use tqdevo::retry::RetryPolicy;
use tqdevo::sandbox::devo_api::{ApiRequest, DEFAULT_TOKEN, LookupsApiStandIn};
use tracing::instrument::WithSubscriber;

const DOMAIN: &str = "acme";
const LOOKUP: &str = "iocs";

/// Fails the test instead of hanging it.
async fn bounded<T>(test: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(120), test).await.expect("the test took over 120 s")
}

fn table() -> Table {
    let columns =
        [("ioc", ColumnType::Str), ("type", ColumnType::Str), ("score", ColumnType::Int), ("link", ColumnType::Str)];
    Table {
        name: LOOKUP.into(),
        columns: columns.into_iter().map(|(name, ty)| Column { name: name.into(), ty }).collect(),
    }
}

fn row(ioc: &str, score: u32) -> Row {
    vec![ioc.into(), "FQDN".into(), score.to_string(), format!("https://tq.example/indicators/{score}")]
}

fn rows(range: std::ops::Range<u32>) -> Vec<Row> {
    range.map(|i| row(&format!("host-{i:05}.example"), i)).collect()
}

fn sorted(mut rows: Vec<Row>) -> Vec<Row> {
    rows.sort();
    rows
}

/// Fast timings so the tests wait milliseconds, not the production seconds.
fn config(standin: &LookupsApiStandIn, token: &str) -> ApiConfig {
    let mut config =
        ApiConfig::new(standin.base_url().parse().unwrap(), DOMAIN, SecretString::from(token.to_owned())).unwrap();
    config.extra_ca_pem = Some(standin.ca_pem().to_owned());
    config.poll_interval = Duration::from_millis(10);
    config.job_timeout = Duration::from_secs(10);
    config.retry = RetryPolicy {
        max_attempts: 4,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_secs(2),
        retry_after_cap: Duration::from_secs(2),
    };
    config
}

async fn start() -> (LookupsApiStandIn, LookupsApiUploader) {
    let standin = LookupsApiStandIn::start().await.unwrap();
    let uploader = LookupsApiUploader::new(config(&standin, DEFAULT_TOKEN)).unwrap();
    (standin, uploader)
}

fn deploys(standin: &LookupsApiStandIn) -> Vec<ApiRequest> {
    standin.requests().into_iter().filter(|r| r.path.ends_with("/deploy-csv")).collect()
}

#[tokio::test]
async fn an_absent_lookup_is_created_with_post_and_its_job_is_the_reference() {
    bounded(async {
        let (standin, uploader) = start().await;
        let full = rows(0..3);
        let receipt = uploader.deliver(&table(), Delivery::Full(&full)).await.unwrap();

        assert_eq!(standin.table(DOMAIN, LOOKUP), Some(sorted(full)));
        let columns = standin.columns(DOMAIN, LOOKUP).unwrap();
        let types: Vec<(&str, &str)> = columns.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
        assert_eq!(types, [("ioc", "STRING"), ("type", "STRING"), ("score", "INT8"), ("link", "STRING")]);
        let deploys = deploys(&standin);
        assert_eq!(deploys.len(), 1);
        assert_eq!((deploys[0].method.as_str(), deploys[0].status, deploys[0].csv_rows), ("POST", 202, 3));
        assert_eq!((receipt.rows_sent, receipt.attempts), (3, 1));
        let polled = standin.requests().iter().any(|r| r.path.ends_with(&format!("/job/{}", receipt.reference)));
        assert!(polled, "the receipt names the job that was polled: {receipt:?}");
    })
    .await
}

#[tokio::test]
async fn an_existing_lookup_is_replaced_with_put_and_old_rows_are_gone() {
    bounded(async {
        let (standin, uploader) = start().await;
        uploader.deliver(&table(), Delivery::Full(&rows(0..10))).await.unwrap();
        let newer = rows(5..8);
        uploader.deliver(&table(), Delivery::Full(&newer)).await.unwrap();

        assert_eq!(standin.table(DOMAIN, LOOKUP), Some(sorted(newer)));
        let methods: Vec<String> = deploys(&standin).into_iter().map(|r| r.method).collect();
        assert_eq!(methods, ["POST", "PUT"]);
    })
    .await
}

#[tokio::test]
async fn incremental_changes_send_only_the_changed_rows_and_delete_by_key() {
    bounded(async {
        let (standin, uploader) = start().await;
        let full = rows(0..10_000);
        uploader.deliver(&table(), Delivery::Full(&full)).await.unwrap();
        let full_bytes = deploys(&standin)[0].csv_bytes;
        standin.clear_requests();

        // 50 updated, 50 new, 100 deleted (known by key only, as the sync state knows them).
        let mut upserts: Vec<Row> = (0..50).map(|i| row(&format!("host-{i:05}.example"), 90_000 + i)).collect();
        upserts.extend(rows(20_000..20_050));
        let deletes: Vec<Row> = (9_900..10_000).map(|i| vec![format!("host-{i:05}.example")]).collect();
        let receipt =
            uploader.deliver(&table(), Delivery::Changes { upserts: &upserts, deletes: &deletes }).await.unwrap();

        let mut expected: Vec<Row> = full[50..9_900].to_vec();
        expected.extend(upserts.iter().cloned());
        assert_eq!(standin.table(DOMAIN, LOOKUP), Some(sorted(expected)));
        assert_eq!(receipt.rows_sent, 200);
        assert_eq!(receipt.reference.split(',').count(), 2, "one job per request: {receipt:?}");
        let sent: Vec<(String, u64)> = deploys(&standin).into_iter().map(|r| (r.method, r.csv_rows)).collect();
        assert_eq!(sent, [("PUT".to_owned(), 100), ("PUT".to_owned(), 100)]);
        let bytes: u64 = deploys(&standin).iter().map(|r| r.csv_bytes).sum();
        println!("incremental run: {bytes} CSV bytes against {full_bytes} for the full table");
        assert!(bytes * 50 < full_bytes, "2% of the rows should cost under 2% of the bytes: {bytes} of {full_bytes}");
    })
    .await
}

#[tokio::test]
async fn changes_only_upserts_or_only_deletes_make_one_request() {
    bounded(async {
        let (standin, uploader) = start().await;
        uploader.deliver(&table(), Delivery::Full(&rows(0..5))).await.unwrap();
        standin.clear_requests();
        let none: Vec<Row> = Vec::new();
        let deletes = vec![vec!["host-00001.example".to_owned()]];
        uploader.deliver(&table(), Delivery::Changes { upserts: &none, deletes: &deletes }).await.unwrap();

        assert_eq!(deploys(&standin).len(), 1);
        let keys: Vec<String> = standin.table(DOMAIN, LOOKUP).unwrap().into_iter().map(|r| r[0].clone()).collect();
        assert_eq!(keys, ["host-00000.example", "host-00002.example", "host-00003.example", "host-00004.example"]);
    })
    .await
}

#[tokio::test]
async fn changes_to_a_lookup_that_is_gone_ask_for_a_full_upload() {
    bounded(async {
        let (standin, uploader) = start().await;
        let upserts = rows(0..2);
        let err = uploader.deliver(&table(), Delivery::Changes { upserts: &upserts, deletes: &Vec::new() }).await;
        assert!(matches!(err, Err(Error::LookupMissing { .. })), "{err:?}");
        assert!(deploys(&standin).is_empty());
        assert_eq!(standin.table(DOMAIN, LOOKUP), None);
    })
    .await
}

#[tokio::test]
async fn a_lookup_deleted_in_devo_makes_the_next_changes_ask_for_a_full_upload() {
    bounded(async {
        let (standin, uploader) = start().await;
        uploader.deliver(&table(), Delivery::Full(&rows(0..3))).await.unwrap();
        let ca = reqwest::Certificate::from_pem(standin.ca_pem().as_bytes()).unwrap();
        let http = reqwest::Client::builder().tls_certs_only([ca]).build().unwrap();
        let lookups = format!("{}/lookup/{DOMAIN}", standin.base_url());
        let listed: serde_json::Value =
            http.get(&lookups).bearer_auth(DEFAULT_TOKEN).send().await.unwrap().json().await.unwrap();
        assert_eq!(listed, serde_json::json!({"lookups": [LOOKUP]}));
        let deleted = http.delete(format!("{lookups}/{LOOKUP}")).bearer_auth(DEFAULT_TOKEN).send().await.unwrap();
        assert_eq!(deleted.status(), 204);

        let upserts = rows(3..4);
        let err = uploader.deliver(&table(), Delivery::Changes { upserts: &upserts, deletes: &Vec::new() }).await;
        assert!(matches!(err, Err(Error::LookupMissing { .. })), "{err:?}");
    })
    .await
}

/// The exporter's own lookup: 15 columns, two of them integers.
fn exporter_table() -> Table {
    tqdevo::export::table(LOOKUP)
}

/// The lookup's definition as the stand-in keeps it: `(name, Devo type)`, key first.
fn definition(table: &Table) -> Vec<(String, String)> {
    let devo_type = |ty| match ty {
        ColumnType::Str => "STRING",
        ColumnType::Int => "INT8",
        other => panic!("the exporter has no {other:?} column"),
    };
    table.columns.iter().map(|c| (c.name.clone(), devo_type(c.ty).to_owned())).collect()
}

/// A row of the exporter's lookup with integers where its integer columns are.
fn exporter_row(i: u32, score: u32) -> Row {
    let mut row: Row = tqdevo::export::COLUMNS.iter().map(|(name, _)| format!("{name}-{i}")).collect();
    row[0] = format!("host-{i:05}.example");
    row[3] = score.to_string();
    row[7] = (i % 2).to_string();
    row[9] = i.to_string();
    row
}

/// Full, then incremental with deletes, then incremental with upserts, on the exporter's lookup: every request
/// describes the whole lookup, and after each run the lookup keeps its definition and holds the expected rows.
#[tokio::test]
async fn full_then_deletes_then_upserts_describe_the_whole_lookup_and_keep_its_definition() {
    bounded(async {
        let (standin, uploader) = start().await;
        let table = exporter_table();
        let after = |expected: &[Row]| {
            assert_eq!(standin.table(DOMAIN, LOOKUP), Some(sorted(expected.to_vec())));
            assert_eq!(standin.columns(DOMAIN, LOOKUP), Some(definition(&table)));
            let deploys = deploys(&standin);
            assert!(!deploys.is_empty());
            for deploy in deploys {
                assert_eq!(deploy.status, 202, "{deploy:?}");
                assert_eq!(deploy.deploy_columns, definition(&table), "{deploy:?}");
            }
        };
        let mut held: Vec<Row> = (0..20).map(|i| exporter_row(i, 1)).collect();
        uploader.deliver(&table, Delivery::Full(&held)).await.unwrap();
        after(&held);

        // Deletes known by key only, as the sync state knows them.
        let deletes: Vec<Row> = held.drain(15..).map(|row| vec![row[0].clone()]).collect();
        let none: Vec<Row> = Vec::new();
        standin.clear_requests();
        uploader.deliver(&table, Delivery::Changes { upserts: &none, deletes: &deletes }).await.unwrap();
        after(&held);

        let upserts: Vec<Row> =
            (0..3).map(|i| exporter_row(i, 9)).chain((20..22).map(|i| exporter_row(i, 2))).collect();
        held.drain(..3);
        held.extend(upserts.iter().cloned());
        standin.clear_requests();
        uploader.deliver(&table, Delivery::Changes { upserts: &upserts, deletes: &none }).await.unwrap();
        after(&held);
    })
    .await
}

/// What the Lookups API stand-in now refuses: the delete deploy this uploader used to send, describing only the
/// key column, which a Lookups API may take as the lookup's new definition.
#[tokio::test]
async fn a_delete_that_describes_only_the_key_column_is_refused_and_changes_nothing() {
    bounded(async {
        let (standin, uploader) = start().await;
        let table = exporter_table();
        let held: Vec<Row> = (0..3).map(|i| exporter_row(i, 1)).collect();
        uploader.deliver(&table, Delivery::Full(&held)).await.unwrap();

        let old_delete = r#"{"columns":[{"name":"ioc","type":"STRING"}],"hasHeader":true,"key":{"type":"column","column":"ioc"},"append":true,"contribution":{"type":"del"}}"#;
        let part = |text: &str, mime: &str| reqwest::multipart::Part::text(text.to_owned()).mime_str(mime).unwrap();
        let form = reqwest::multipart::Form::new()
            .part("deploy-config", part(old_delete, "application/json"))
            .part("csv", part("ioc\r\nhost-00001.example\r\n", "text/csv").file_name("iocs.csv"));
        let ca = reqwest::Certificate::from_pem(standin.ca_pem().as_bytes()).unwrap();
        let http = reqwest::Client::builder().tls_certs_only([ca]).build().unwrap();
        let url = format!("{}/lookup/{DOMAIN}/{LOOKUP}/deploy-csv", standin.base_url());
        let response = http.put(url).bearer_auth(DEFAULT_TOKEN).multipart(form).send().await.unwrap();
        assert_eq!(response.status(), 400);
        let message = response.json::<serde_json::Value>().await.unwrap()["message"].as_str().unwrap().to_owned();
        assert!(
            message.starts_with("append columns [ioc STRING] differ from the lookup's [ioc STRING, ioc_type STRING,"),
            "{message}"
        );
        assert_eq!(standin.table(DOMAIN, LOOKUP), Some(sorted(held)));
        assert_eq!(standin.columns(DOMAIN, LOOKUP), Some(definition(&table)));
    })
    .await
}

/// What Devo says of a lookup (its size, for the guard without a state; whether its columns are the table's), and
/// changes for a lookup Devo holds with other columns: the uploader asks for a full upload, which redefines it.
#[tokio::test]
async fn inspection_tells_the_size_and_definition_and_changes_to_another_definition_ask_for_a_full_upload() {
    bounded(async {
        let (standin, uploader) = start().await;
        let absent = uploader.inspect(&table()).await.unwrap();
        assert_eq!(absent, Inspection { rows: Some(0), differs: None }, "an absent lookup holds nothing");
        uploader.deliver(&table(), Delivery::Full(&rows(0..3))).await.unwrap();
        assert_eq!(uploader.inspect(&table()).await.unwrap(), Inspection { rows: Some(3), differs: None });
        let other = uploader.inspect(&exporter_table()).await.unwrap();
        assert!(other.differs.is_some_and(|d| d.contains("[ioc STRING, type STRING, score INT8, link STRING]")));
        standin.clear_requests();

        let upserts = vec![exporter_row(1, 1)];
        let changes = Delivery::Changes { upserts: &upserts, deletes: &Vec::new() };
        let err = uploader.deliver(&exporter_table(), changes).await.unwrap_err();
        assert!(matches!(&err, Error::LookupRedefined { .. }), "{err:?}");
        assert!(
            err.to_string().contains("has the columns [ioc STRING, type STRING, score INT8, link STRING]"),
            "{err}"
        );
        assert!(deploys(&standin).is_empty(), "nothing was sent");
        uploader.deliver(&exporter_table(), Delivery::Full(&upserts)).await.unwrap();
        assert_eq!(standin.columns(DOMAIN, LOOKUP), Some(definition(&exporter_table())));
    })
    .await
}

#[tokio::test]
async fn a_failed_job_is_an_error_with_devos_message_and_the_table_is_unchanged() {
    bounded(async {
        let (standin, uploader) = start().await;
        let before = rows(0..4);
        uploader.deliver(&table(), Delivery::Full(&before)).await.unwrap();
        standin.fail_next_job("column score: not an INT8");

        let err = uploader.deliver(&table(), Delivery::Full(&rows(100..110))).await.unwrap_err().to_string();
        assert!(err.contains("column score: not an INT8"), "{err}");
        assert!(err.contains("failed"), "{err}");
        assert_eq!(standin.table(DOMAIN, LOOKUP), Some(sorted(before)));
    })
    .await
}

#[tokio::test]
async fn a_job_that_never_finishes_ends_in_a_timeout_error() {
    bounded(async {
        let standin = LookupsApiStandIn::start().await.unwrap();
        let mut config = config(&standin, DEFAULT_TOKEN);
        config.job_timeout = Duration::from_millis(300);
        let uploader = LookupsApiUploader::new(config).unwrap();
        standin.set_jobs_never_finish(true);

        let err = uploader.deliver(&table(), Delivery::Full(&rows(0..3))).await.unwrap_err().to_string();
        assert!(err.contains("did not finish within 300ms"), "{err}");
        assert_eq!(standin.table(DOMAIN, LOOKUP), None);
    })
    .await
}

#[tokio::test]
async fn the_job_is_found_in_the_job_list_when_the_response_does_not_name_it() {
    bounded(async {
        let (standin, uploader) = start().await;
        uploader.deliver(&table(), Delivery::Full(&rows(0..3))).await.unwrap();
        standin.set_job_id_in_response(false);
        let newer = rows(3..5);
        let receipt = uploader.deliver(&table(), Delivery::Full(&newer)).await.unwrap();

        assert_eq!(standin.table(DOMAIN, LOOKUP), Some(sorted(newer)));
        let polled = standin.requests().iter().any(|r| r.path.ends_with(&format!("/job/{}", receipt.reference)));
        assert!(polled, "{receipt:?}");
    })
    .await
}

#[tokio::test]
async fn a_429_is_retried_after_retry_after_with_the_whole_csv_again() {
    bounded(async {
        let (standin, uploader) = start().await;
        standin.fail_next("POST", "/deploy-csv", 2, 429, Some(1));
        let full = rows(0..5_000);
        let started = Instant::now();
        let receipt = uploader.deliver(&table(), Delivery::Full(&full)).await.unwrap();

        assert!(started.elapsed() >= Duration::from_secs(2), "Retry-After: 1 was honoured twice");
        assert_eq!(receipt.attempts, 3);
        let statuses: Vec<u16> = deploys(&standin).iter().map(|r| r.status).collect();
        assert_eq!(statuses, [429, 429, 202]);
        assert_eq!(deploys(&standin)[2].csv_rows, 5_000, "the retry sent every row from the start");
        assert_eq!(standin.table(DOMAIN, LOOKUP), Some(sorted(full)));
    })
    .await
}

#[tokio::test]
async fn server_errors_are_retried_then_succeed() {
    bounded(async {
        let (standin, uploader) = start().await;
        standin.fail_next("GET", "/lookup/acme/iocs", 2, 503, None);
        standin.fail_next("POST", "/deploy-csv", 1, 500, None);
        standin.fail_next("GET", "/job", 1, 502, None);
        let full = rows(0..20);
        uploader.deliver(&table(), Delivery::Full(&full)).await.unwrap();

        assert_eq!(standin.table(DOMAIN, LOOKUP), Some(sorted(full)));
        let failed = standin.requests().iter().filter(|r| r.status >= 500).count();
        assert_eq!(failed, 4);
    })
    .await
}

#[tokio::test]
async fn retries_are_bounded_and_the_lookup_is_left_as_it_was() {
    bounded(async {
        let (standin, uploader) = start().await;
        let before = rows(0..3);
        uploader.deliver(&table(), Delivery::Full(&before)).await.unwrap();
        standin.fail_next("PUT", "/deploy-csv", 10, 503, None);

        let err = uploader.deliver(&table(), Delivery::Full(&rows(10..20))).await.unwrap_err().to_string();
        assert!(err.contains("503") && err.contains("gave up after 4 attempts"), "{err}");
        assert_eq!(deploys(&standin).iter().filter(|r| r.status == 503).count(), 4);
        assert_eq!(standin.table(DOMAIN, LOOKUP), Some(sorted(before)));
    })
    .await
}

#[tokio::test]
async fn a_refused_token_names_the_ui_field_and_never_shows_the_token() {
    bounded(async {
        let standin = LookupsApiStandIn::start().await.unwrap();
        let secret = "wrong-token-5f2c9a";
        let uploader = LookupsApiUploader::new(config(&standin, secret)).unwrap();

        let err = uploader.deliver(&table(), Delivery::Full(&rows(0..3))).await.unwrap_err();
        let text = err.to_string();
        assert!(text.contains("\"Devo API Token\"") && text.contains("401"), "{text}");
        assert!(!text.contains(secret) && !format!("{err:?}").contains(secret), "{text}");
        assert!(matches!(err, Error::Config(_)), "a configuration error (exit 3): {err:?}");
        assert_eq!(standin.requests().len(), 1, "a refused token is not retried");
    })
    .await
}

/// Everything the uploader logs, at every level.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test]
async fn the_token_never_reaches_the_logs() {
    bounded(async {
        let secret = "tok-never-logged-81d3";
        let standin = LookupsApiStandIn::builder().token(secret).start().await.unwrap();
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(captured.clone())
            .finish();
        async {
            let uploader = LookupsApiUploader::new(config(&standin, secret)).unwrap();
            standin.fail_next("POST", "/deploy-csv", 1, 429, None);
            uploader.deliver(&table(), Delivery::Full(&rows(0..3))).await.unwrap();
            standin.set_token("rotated");
            uploader.deliver(&table(), Delivery::Full(&rows(0..3))).await.unwrap_err();
        }
        .with_subscriber(subscriber)
        .await;

        let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        // tracing caches per-callsite interest process-wide, so with tests in parallel some events can miss a
        // scoped subscriber; one event of the uploader is enough to show the capture works.
        assert!(logs.contains("tqdevo::devo::api"), "the logs were captured: {logs}");
        assert!(!logs.contains(secret), "{logs}");
    })
    .await
}

#[tokio::test]
async fn tricky_values_round_trip_exactly() {
    bounded(async {
        let (standin, uploader) = start().await;
        let tricky = [
            "a,b,c",
            "say \"hi\"",
            "\"",
            "line\nfeed",
            "carriage\rreturn",
            "crlf\r\nboth",
            "  padded  ",
            "",
            "ünïcødé ☃ 漢字 🦀",
            "tab\there",
            "=HYPERLINK(\"x\")",
            "#not-a-comment",
        ];
        let rows: Vec<Row> = tricky
            .iter()
            .enumerate()
            .map(|(i, v)| vec![format!("{i:02}-{v}"), v.to_string(), i.to_string(), v.to_string()])
            .collect();
        uploader.deliver(&table(), Delivery::Full(&rows)).await.unwrap();
        assert_eq!(standin.table(DOMAIN, LOOKUP), Some(sorted(rows.clone())));

        let deletes: Vec<Row> = rows.iter().take(6).map(|r| vec![r[0].clone()]).collect();
        uploader.deliver(&table(), Delivery::Changes { upserts: &Vec::new(), deletes: &deletes }).await.unwrap();
        assert_eq!(standin.table(DOMAIN, LOOKUP), Some(sorted(rows[6..].to_vec())));
    })
    .await
}

/// Rows that fail to read after `good` rows, like a spool file cut short.
struct BrokenRows {
    good: u32,
}

impl RowSource for BrokenRows {
    fn rows(&self) -> Box<dyn Iterator<Item = io::Result<Row>> + Send + '_> {
        let broken = std::iter::once(Err(io::Error::new(io::ErrorKind::UnexpectedEof, "spool file cut short")));
        Box::new(rows(0..self.good).into_iter().map(Ok).chain(broken))
    }
    fn len(&self) -> u64 {
        u64::from(self.good) + 1
    }
}

#[tokio::test]
async fn an_unreadable_row_aborts_the_upload_and_the_lookup_is_unchanged() {
    bounded(async {
        let (standin, uploader) = start().await;
        let before = rows(0..3);
        uploader.deliver(&table(), Delivery::Full(&before)).await.unwrap();

        let err = uploader.deliver(&table(), Delivery::Full(&BrokenRows { good: 5_000 })).await.unwrap_err();
        assert!(matches!(&err, Error::Rows(e) if e.to_string().contains("spool file cut short")), "{err:?}");
        assert!(deploys(&standin).iter().skip(1).all(|r| r.status != 202), "no truncated CSV was accepted");
        assert_eq!(standin.table(DOMAIN, LOOKUP), Some(sorted(before)));
    })
    .await
}

#[tokio::test]
async fn a_server_certificate_outside_the_trust_store_is_a_tls_error_naming_devo_ca_file() {
    bounded(async {
        let standin = LookupsApiStandIn::start().await.unwrap();
        let mut config = config(&standin, DEFAULT_TOKEN);
        config.extra_ca_pem = None;
        let uploader = LookupsApiUploader::new(config).unwrap();

        let err = uploader.deliver(&table(), Delivery::Full(&rows(0..1))).await.unwrap_err();
        assert!(matches!(&err, Error::Tls(m) if m.contains("DEVO_CA_FILE")), "{err:?}");
        assert!(standin.requests().is_empty());
    })
    .await
}

#[tokio::test]
async fn the_custom_region_takes_an_https_url_from_the_ui() {
    bounded(async {
        let token = || SecretString::from(DEFAULT_TOKEN);
        for bad in ["http://127.0.0.1:1/lookup-api", "127.0.0.1:1", "https://"] {
            let err = ApiConfig::for_region(Region::Custom, Some(bad), DOMAIN, token()).unwrap_err().to_string();
            assert!(err.contains("\"Custom Devo Endpoint\""), "{bad}: {err}");
        }

        let standin = LookupsApiStandIn::start().await.unwrap();
        let endpoint = format!("{}/", standin.base_url());
        let mut config = ApiConfig::for_region(Region::Custom, Some(&endpoint), DOMAIN, token()).unwrap();
        config.extra_ca_pem = Some(standin.ca_pem().to_owned());
        config.poll_interval = Duration::from_millis(10);
        let uploader = LookupsApiUploader::new(config).unwrap();
        assert!(uploader.describe().contains(&standin.base_url()), "{}", uploader.describe());
        uploader.deliver(&table(), Delivery::Full(&rows(0..2))).await.unwrap();
        assert_eq!(standin.table(DOMAIN, LOOKUP).map(|t| t.len()), Some(2));
    })
    .await
}

/// A million rows of 15 realistic columns, made on the fly so that only the uploader's memory is measured.
struct MillionRows;

const MILLION: u32 = 1_000_000;

impl RowSource for MillionRows {
    fn rows(&self) -> Box<dyn Iterator<Item = io::Result<Row>> + Send + '_> {
        Box::new((0..MILLION).map(|i| {
            Ok(vec![
                format!("malicious-{i:07}.badhost-{}.example.com", i % 977),
                "FQDN".into(),
                "Active".into(),
                (i % 10).to_string(),
                "2024-05-17T08:31:12Z".into(),
                "2025-01-02T19:04:55Z".into(),
                format!("https://threatq.example.com/indicators/{i}/details"),
                "Abuse.ch URLhaus, AlienVault OTX".into(),
                "AMBER".into(),
                format!("{}", 50 + i % 50),
                "phishing;credential-theft;campaign-2024".into(),
                "Observed in a spear-phishing wave against finance; resolves to bulletproof hosting.".into(),
                "Malware Family: Emotet".into(),
                format!("10.{}.{}.{}", i % 256, (i / 256) % 256, (i / 65536) % 256),
                "ThreatQ".into(),
            ])
        }))
    }
    fn len(&self) -> u64 {
        u64::from(MILLION)
    }
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// `cargo test --release --test lib lookups_api::figure -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a figure, not a check: run in release with --ignored --nocapture"]
async fn figure_a_million_rows_upload() {
    bounded(async {
        let standin = LookupsApiStandIn::builder().keep_rows(false).start().await.unwrap();
        let uploader = LookupsApiUploader::new(config(&standin, DEFAULT_TOKEN)).unwrap();
        let columns = (0..15).map(|i| Column { name: format!("c{i:02}"), ty: ColumnType::Str }).collect();
        let table = Table { name: "million".into(), columns };
        let before = peak_rss_kib();
        let started = Instant::now();
        let receipt = uploader.deliver(&table, Delivery::Full(&MillionRows)).await.unwrap();
        let elapsed = started.elapsed();
        let after = peak_rss_kib();

        let sent = deploys(&standin)[0].csv_bytes;
        assert_eq!(deploys(&standin)[0].csv_rows, u64::from(MILLION));
        println!(
            "1,000,000 rows x 15 columns: {:.1} MiB of CSV in {:.2} s ({:.0} rows/s, {:.1} MiB/s); peak RSS {} MiB \
             before, {} MiB after (growth {} MiB, uploader and stand-in together); {} attempt(s)",
            sent as f64 / 1_048_576.0,
            elapsed.as_secs_f64(),
            f64::from(MILLION) / elapsed.as_secs_f64(),
            sent as f64 / 1_048_576.0 / elapsed.as_secs_f64(),
            before / 1024,
            after / 1024,
            (after - before) / 1024,
            receipt.attempts,
        );
    })
    .await
}
