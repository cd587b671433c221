//! Upload method `lookups-api`: Devo's Lookups REST API (`docs/devo.md`). Each upload is one
//! `deploy-csv` request whose CSV streams from the [`RowSource`], then a poll of the job it started; the upload
//! counts as delivered only when that job reports success.

mod body;
mod config;

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use futures::channel::mpsc;
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderMap, HeaderValue};
use reqwest::multipart::{Form, Part};
use reqwest::{Body, Method, Response, StatusCode, Url};
use secrecy::ExposeSecret;
use serde_json::Value;
use tokio::time::Instant;

use self::body::{CsvChunks, DeployMode, Pumped};
pub use self::config::{ApiConfig, base_url, default_retry};
use super::{Delivery, Error, Inspection, Probe, Receipt, RowSource, Table, Uploader};
use crate::devo::settings::label;
use crate::field::ConfigError;
use crate::retry::{RetryLogic, RetryPolicy};

/// Uploads lookups through the Lookups API with a Bearer token.
pub struct LookupsApiUploader {
    client: reqwest::Client,
    config: ApiConfig,
}

/// The outcome of one try of a request: retry it (after `retry_after`, if Devo said) or give up.
enum Attempt {
    Retry { why: String, retry_after: Option<Duration> },
    Fail(Error),
}

/// Which Lookups API failures are tried again: 408, 429 and 5xx, and transport errors other than a certificate
/// the trust refuses.
struct LookupsRetry;

impl RetryLogic for LookupsRetry {
    type Error = reqwest::Error;
    type Response = Response;

    fn is_retriable_error(&self, error: &reqwest::Error) -> bool {
        crate::tls::rustls_cause(error).is_none()
    }

    fn should_retry_response(&self, response: &Response) -> bool {
        let status = response.status();
        matches!(status, StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS) || status.is_server_error()
    }

    fn retry_after(&self, response: &Response) -> Option<Duration> {
        crate::retry::retry_after(response.headers())
    }
}

/// One `deploy-csv` request that Devo's job applied.
struct Deployed {
    rows: u64,
    attempts: u32,
    job: String,
}

impl LookupsApiUploader {
    /// Builds the HTTPS client: system roots plus `extra_ca_pem`, the token as a sensitive header.
    pub fn new(config: ApiConfig) -> Result<Self, Error> {
        crate::init_tls();
        let mut auth =
            HeaderValue::try_from(format!("Bearer {}", config.token.expose_secret().trim())).map_err(|_| {
                ConfigError::invalid(label::API_TOKEN, "holds characters that cannot be sent in an HTTP header")
            })?;
        auth.set_sensitive(true);
        let headers =
            HeaderMap::from_iter([(AUTHORIZATION, auth), (ACCEPT, HeaderValue::from_static("application/json"))]);
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls_config(config.extra_ca_pem.as_deref())?)
            .default_headers(headers)
            .user_agent(concat!(env!("CARGO_PKG_NAME"), "/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(config.io_timeout)
            .read_timeout(config.io_timeout)
            .build()
            .map_err(|e| Error::Tls(format!("cannot set up the HTTPS client: {e}")))?;
        Ok(Self { client, config })
    }

    fn endpoint(&self) -> String {
        self.config.base_url.to_string()
    }

    fn remote(&self, message: impl Into<String>) -> Error {
        Error::Remote { endpoint: self.endpoint(), message: message.into() }
    }

    /// `{base}/lookup/{domain}/{more...}`, each segment percent-encoded.
    fn domain_url(&self, more: &[&str]) -> Url {
        let mut url = self.config.base_url.clone();
        url.path_segments_mut().expect("an https URL has a path").push("lookup").push(&self.config.domain).extend(more);
        url
    }

    /// `{base}/lookup/{domain}/{name}/{more...}`.
    fn url(&self, table: &Table, more: &[&str]) -> Url {
        self.domain_url(&[&[table.name.as_str()][..], more].concat())
    }

    /// Runs `attempt` until it succeeds, fails for good, or the retry policy is spent; returns the value and
    /// how many tries it took.
    async fn retrying<T, F, Fut>(&self, what: &str, mut attempt: F) -> Result<(T, u32), Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Attempt>>,
    {
        let policy = &self.config.retry;
        let mut tries = 0;
        loop {
            tries += 1;
            let (why, retry_after) = match attempt().await {
                Ok(value) => return Ok((value, tries)),
                Err(Attempt::Fail(e)) => return Err(e),
                Err(Attempt::Retry { why, retry_after }) => (why, retry_after),
            };
            if policy.spent(tries) {
                return Err(self.remote(format!("{what}: {why}; gave up after {tries} attempts")));
            }
            if let Some(asked) = retry_after.filter(|a| *a > policy.retry_after_cap) {
                return Err(self.remote(format!(
                    "{what}: {why}; Devo asked to retry after {} s, longer than this run waits ({} s): try again later",
                    asked.as_secs(),
                    policy.retry_after_cap.as_secs()
                )));
            }
            let wait = policy.wait(tries - 1, retry_after);
            tracing::warn!(endpoint = %self.config.base_url, attempt = tries, wait_ms = wait.as_millis() as u64, "{what}: {why}; retrying");
            tokio::time::sleep(wait).await;
        }
    }

    /// Sorts a response: success passes; 401/403 name the token; 408, 429 and 5xx are retried; the rest fail
    /// with Devo's message.
    async fn check(&self, what: &str, response: Response) -> Result<Response, Attempt> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = LookupsRetry.retry_after(&response);
        let retriable = LookupsRetry.should_retry_response(&response);
        let message = self.devo_message(&response.text().await.unwrap_or_default());
        match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(Attempt::Fail(
                ConfigError::invalid(
                    label::API_TOKEN,
                    format!(
                        "Devo at {} refused it (HTTP {status}{message}); check that the token is valid, not expired, \
                         and allowed to manage the lookups of domain {:?}",
                        self.config.base_url, self.config.domain
                    ),
                )
                .into(),
            )),
            _ if retriable => Err(Attempt::Retry { why: format!("HTTP {status}{message}"), retry_after }),
            _ => Err(Attempt::Fail(self.remote(format!("{what}: HTTP {status}{message}")))),
        }
    }

    /// Devo's explanation from an error body, `": <message>"`, short, and never echoing the token.
    fn devo_message(&self, body: &str) -> String {
        let json: Option<Value> = serde_json::from_str(body).ok();
        let text = json
            .as_ref()
            .and_then(|j| ["message", "error", "msg", "detail"].iter().find_map(|k| j.get(k)?.as_str()))
            .unwrap_or(body)
            .trim();
        if text.is_empty() {
            return String::new();
        }
        let text: String = text.chars().take(300).collect();
        let token = self.config.token.expose_secret().trim();
        format!(": {}", if token.is_empty() { text } else { text.replace(token, "[redacted]") })
    }

    /// A failure to send or receive: a certificate problem is final; anything else is retried.
    fn transport(&self, what: &str, error: reqwest::Error) -> Attempt {
        if !LookupsRetry.is_retriable_error(&error)
            && let Some(tls) = crate::tls::rustls_cause(&error)
        {
            return Attempt::Fail(Error::Tls(format!(
                "{what}: cannot verify {}: {tls}; if Devo is reached through a private CA or a TLS-inspecting proxy, \
                 put that CA in DEVO_CA_FILE",
                self.config.base_url
            )));
        }
        Attempt::Retry { why: error_chain(&error), retry_after: None }
    }

    /// A bodiless request, retried; `Ok(None)` when Devo answers 404.
    async fn get_json(&self, what: &str, url: &Url) -> Result<Option<Value>, Error> {
        let (value, _) = self
            .retrying(what, || async {
                let response = self.client.get(url.clone()).send().await.map_err(|e| self.transport(what, e))?;
                if response.status() == StatusCode::NOT_FOUND {
                    return Ok(None);
                }
                let response = self.check(what, response).await?;
                let bytes = response.bytes().await.map_err(|e| self.transport(what, e))?;
                Ok(Some(serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
            })
            .await?;
        Ok(value)
    }

    async fn job_ids(&self, table: &Table) -> Result<Vec<String>, Error> {
        let list = self.get_json("listing the lookup's jobs", &self.url(table, &["job"])).await?;
        Ok(list
            .as_ref()
            .and_then(|l| l.get("jobs")?.as_array())
            .map(|jobs| jobs.iter().filter_map(job_id).collect())
            .unwrap_or_default())
    }

    /// One `deploy-csv` request, then its job until it succeeds.
    async fn deploy(
        &self,
        table: &Table,
        mode: DeployMode,
        create: bool,
        rows: &dyn RowSource,
    ) -> Result<Deployed, Error> {
        let what = format!("uploading lookup {:?} ({})", table.name, mode.describe());
        let url = self.url(table, &["deploy-csv"]);
        let method = if create { Method::POST } else { Method::PUT };
        let config = body::deploy_config(&table.columns, mode).to_string();
        // Jobs seen before the upload, to recognise its job should the response not name it.
        let before = self.job_ids(table).await?;
        let ((rows_sent, named_job), attempts) =
            self.retrying(&what, || self.upload_once(&what, method.clone(), &url, &config, table, mode, rows)).await?;
        let job = match named_job {
            Some(job) => job,
            None => self
                .job_ids(table)
                .await?
                .into_iter()
                .rfind(|j| !before.contains(j))
                .ok_or_else(|| self.remote(format!("{what}: Devo took the upload but lists no new job for it")))?,
        };
        tracing::info!(lookup = %table.name, mode = mode.describe(), rows = rows_sent, attempts, %job, "uploaded; waiting for the job");
        self.wait_for_job(table, &job).await?;
        Ok(Deployed { rows: rows_sent, attempts, job })
    }

    /// Sends the request while encoding the CSV into its body on the same task, so the rows are read only as
    /// fast as the connection takes them. Returns the rows sent and the job id, if the response names one.
    #[allow(clippy::too_many_arguments)]
    async fn upload_once(
        &self,
        what: &str,
        method: Method,
        url: &Url,
        config: &str,
        table: &Table,
        mode: DeployMode,
        rows: &dyn RowSource,
    ) -> Result<(u64, Option<String>), Attempt> {
        let (tx, rx) = mpsc::channel(4);
        let csv = Part::stream(Body::wrap_stream(body::body_stream(rx))).file_name(format!("{}.csv", table.name));
        let form = Form::new()
            .part("deploy-config", Part::text(config.to_owned()).mime_str("application/json").expect("valid MIME"))
            .part("csv", csv.mime_str("text/csv").expect("valid MIME"));
        let request = self.client.request(method, url.clone()).multipart(form).send();
        let producer = body::pump(CsvChunks::new(&table.columns, mode, rows), tx, self.config.io_timeout);
        tokio::pin!(request, producer);
        let mut rows_sent = None;
        let settle = |pumped| match pumped {
            Pumped::Sent(rows) => Ok(Some(rows)),
            Pumped::Stopped => Ok(None),
            Pumped::Stalled => Err(Attempt::Retry {
                why: format!("Devo took no part of the upload for {:?}", self.config.io_timeout),
                retry_after: None,
            }),
            Pumped::Failed(e) => Err(Attempt::Fail(e)),
        };
        // Returning early drops the request with a body that fails rather than ends (see `body_stream`).
        let response = loop {
            tokio::select! {
                response = &mut request => break response,
                pumped = &mut producer, if rows_sent.is_none() => rows_sent = Some(settle(pumped)?),
            }
        };
        // An unreadable row is the cause of whatever the request then did; `now_or_never` picks up a producer
        // that stopped in the same instant.
        if rows_sent.is_none()
            && let Some(pumped) = producer.now_or_never()
        {
            rows_sent = Some(settle(pumped)?);
        }
        let response = self.check(what, response.map_err(|e| self.transport(what, e))?).await?;
        let rows_sent = rows_sent
            .flatten()
            .ok_or_else(|| Attempt::Fail(self.remote(format!("{what}: Devo answered before reading the whole CSV"))))?;
        let bytes = response.bytes().await.map_err(|e| self.transport(what, e))?;
        let named_job = serde_json::from_slice::<Value>(&bytes).ok().as_ref().and_then(job_id);
        Ok((rows_sent, named_job))
    }

    /// Polls the job until it reports success (Ok), failure (its message), or `job_timeout` passes. The pauses
    /// between polls start short and double up to `poll_interval` (see [`poll_pauses`]).
    async fn wait_for_job(&self, table: &Table, job: &str) -> Result<(), Error> {
        let url = self.url(table, &["job", job]);
        let deadline = Instant::now() + self.config.job_timeout;
        let what = format!("the job {job} of lookup {:?}", table.name);
        let mut pauses = poll_pauses(self.config.poll_interval);
        loop {
            let status = self.get_json(&format!("checking {what}"), &url).await?.unwrap_or(Value::Null);
            match job_state(&status) {
                JobState::Succeeded => return Ok(()),
                JobState::Failed(message) => {
                    return Err(self.remote(format!("{what} failed: {message}; Devo did not apply this upload")));
                }
                JobState::Pending => tracing::debug!(%job, "job not finished yet"),
            }
            let pause = pauses.next().expect("the pauses never end");
            if Instant::now() + pause > deadline {
                return Err(self.remote(format!(
                    "{what} did not finish within {:?}; the run is not counted as delivered and the next run \
                     sends these rows again",
                    self.config.job_timeout
                )));
            }
            tokio::time::sleep(pause).await;
        }
    }
}

#[async_trait]
impl Uploader for LookupsApiUploader {
    async fn deliver(&self, table: &Table, delivery: Delivery<'_>) -> Result<Receipt, Error> {
        table.check()?;
        let metadata = self.get_json("reading the lookup", &self.url(table, &[])).await?;
        let deployed = match delivery {
            Delivery::Full(rows) => vec![self.deploy(table, DeployMode::Replace, metadata.is_none(), rows).await?],
            Delivery::Changes { upserts, deletes } => {
                let Some(metadata) = metadata else {
                    return Err(Error::LookupMissing {
                        endpoint: self.endpoint(),
                        domain: self.config.domain.clone(),
                        lookup: table.name.clone(),
                    });
                };
                if let Some(differs) = definition_differences(table, &metadata) {
                    return Err(Error::LookupRedefined {
                        endpoint: self.endpoint(),
                        lookup: table.name.clone(),
                        differs,
                    });
                }
                let mut deployed = Vec::new();
                for (mode, rows) in [(DeployMode::Upsert, upserts), (DeployMode::Delete, deletes)] {
                    if !rows.is_empty() {
                        deployed.push(self.deploy(table, mode, false, rows).await?);
                    }
                }
                deployed
            }
        };
        Ok(Receipt {
            rows_sent: deployed.iter().map(|d| d.rows).sum(),
            attempts: 1 + deployed.iter().map(|d| d.attempts - 1).sum::<u32>(),
            reference: deployed.iter().map(|d| d.job.as_str()).collect::<Vec<_>>().join(","),
        })
    }

    async fn inspect(&self, table: &Table) -> Result<Inspection, Error> {
        Ok(match self.get_json("reading the lookup", &self.url(table, &[])).await? {
            None => Inspection { rows: Some(0), differs: None },
            Some(metadata) => {
                Inspection { rows: reported_rows(&metadata), differs: definition_differences(table, &metadata) }
            }
        })
    }

    fn describe(&self) -> String {
        format!("Devo Lookups API at {} (domain {})", self.config.base_url, self.config.domain)
    }

    fn target(&self) -> crate::devo::Target {
        crate::devo::Target {
            method: crate::devo::UploadMethod::LookupsApi,
            endpoint: self.config.base_url.to_string(),
            domain: self.config.domain.clone(),
        }
    }
}

impl LookupsApiUploader {
    /// `doctor`'s checks, each one request tried once: the token (listing the domain's lookups), the domain, the
    /// lookup, its columns and key, and its last job. Only reads.
    pub async fn preflight(&self, table: &Table) -> Vec<Probe> {
        let once = Self {
            client: self.client.clone(),
            config: ApiConfig {
                retry: RetryPolicy { max_attempts: 1, ..self.config.retry.clone() },
                ..self.config.clone()
            },
        };
        once.probes(table).await
    }

    async fn probes(&self, table: &Table) -> Vec<Probe> {
        let domain = &self.config.domain;
        let listed = match self.get_json("listing the domain's lookups", &self.domain_url(&[])).await {
            Err(e) => return vec![Probe::new("Devo API token", Err(e))],
            Ok(listed) => listed,
        };
        let mut probes = vec![Probe::new("Devo API token", Ok(format!("accepted by {}", self.endpoint())))];
        let Some(listed) = listed else {
            let unknown = ConfigError::invalid(
                label::DOMAIN,
                format!(
                    "Devo at {} knows no domain {domain:?} (HTTP 404): check the domain's name, and that the token \
                     was made in that domain",
                    self.endpoint()
                ),
            );
            probes.push(Probe::new("Devo domain", Err(unknown.into())));
            return probes;
        };
        let count = listed.get("lookups").and_then(Value::as_array).map_or(0, Vec::len);
        probes.push(Probe::new("Devo domain", Ok(format!("{domain}, lookups in it: {count}"))));
        let metadata = match self.get_json("reading the lookup", &self.url(table, &[])).await {
            Ok(Some(metadata)) => metadata,
            Ok(None) => {
                probes
                    .push(Probe::new("Devo lookup", Ok(format!("{} is absent: the next run creates it", table.name))));
                return probes;
            }
            Err(e) => {
                probes.push(Probe::new("Devo lookup", Err(e)));
                return probes;
            }
        };
        let rows = reported_rows(&metadata).map_or(String::new(), |n| format!(", {n} rows"));
        probes.push(Probe::new("Devo lookup", Ok(format!("{} exists{rows}", table.name))));
        let columns = match definition_differences(table, &metadata) {
            None => Ok(format!(
                "{} columns, key {}, as the exporter writes them",
                table.columns.len(),
                table.columns[0].name
            )),
            Some(differs) => Err(self.remote(format!(
                "lookup {:?} {differs}; the next run replaces the lookup whole, with the exporter's columns",
                table.name
            ))),
        };
        probes.push(Probe::new("Devo lookup columns", columns));
        probes.push(Probe::new("Devo last job", self.last_job(table).await));
        probes
    }

    /// The status of the lookup's newest job, as a line; a failed job is an error.
    async fn last_job(&self, table: &Table) -> Result<String, Error> {
        let Some(job) = self.job_ids(table).await?.pop() else { return Ok("none yet".into()) };
        let what = format!("checking the job {job}");
        let status = self.get_json(&what, &self.url(table, &["job", &job])).await?.unwrap_or(Value::Null);
        match job_state(&status) {
            JobState::Succeeded => Ok(format!("{job} succeeded")),
            JobState::Pending => Ok(format!("{job} has not finished")),
            JobState::Failed(message) => Err(self
                .remote(format!("the lookup's last job {job} failed: {message}; the next run uploads the rows again"))),
        }
    }
}

/// How the lookup Devo describes differs from `table` (columns, their types and order, the key), or `None` when
/// it does not or Devo does not say. Devo does not publish this document's shape: `columns` as
/// `[{"name", "type"}]` and `key` as a column name (or `{"column": name}`) are read, anything else is not judged.
fn definition_differences(table: &Table, metadata: &Value) -> Option<String> {
    let theirs: Vec<(String, String)> = metadata
        .get("columns")?
        .as_array()?
        .iter()
        .map(|c| Some((c.get("name")?.as_str()?.to_owned(), c.get("type")?.as_str()?.to_ascii_uppercase())))
        .collect::<Option<_>>()?;
    let key = metadata.get("key").and_then(|k| k.as_str().or_else(|| k.get("column")?.as_str()));
    let ours: Vec<(String, String)> =
        table.columns.iter().map(|c| (c.name.clone(), body::devo_type(c.ty).to_owned())).collect();
    let our_key = ours[0].0.as_str();
    if theirs == ours && key.is_none_or(|k| k == our_key) {
        return None;
    }
    let show = |columns: &[(String, String)]| {
        columns.iter().map(|(name, ty)| format!("{name} {ty}")).collect::<Vec<_>>().join(", ")
    };
    Some(format!(
        "has the columns [{}] with key {}, the exporter writes [{}] with key {our_key}",
        show(&theirs),
        key.unwrap_or("(not said)"),
        show(&ours)
    ))
}

/// The row count in the lookup's metadata, under one of the names it might have.
fn reported_rows(metadata: &Value) -> Option<u64> {
    ["rows", "size", "count", "rowCount", "numRows"].iter().find_map(|k| metadata.get(k)?.as_u64())
}

impl DeployMode {
    fn describe(self) -> &'static str {
        match self {
            DeployMode::Replace => "full",
            DeployMode::Upsert => "upserts",
            DeployMode::Delete => "deletes",
        }
    }
}

/// The first pause before asking again whether a job finished. A small upload's job is often done within
/// milliseconds; doubling from here costs a long job only a few more cheap polls.
const FIRST_POLL: Duration = Duration::from_millis(10);

/// The pauses between job polls: [`FIRST_POLL`], doubling up to `cap`, so a small run ends in a fraction of a
/// second while a long job is not asked about more than once per `cap`.
fn poll_pauses(cap: Duration) -> impl Iterator<Item = Duration> {
    std::iter::successors(Some(FIRST_POLL.min(cap)), move |pause| Some((*pause * 2).min(cap)))
}

/// What a job status says. Devo does not publish its shape: a `status` field (or the last entry of `history`)
/// is read, and anything unrecognised counts as not finished, so a surprise ends in the job timeout, not in a
/// false success.
#[derive(Debug, PartialEq, Eq)]
enum JobState {
    Pending,
    Succeeded,
    Failed(String),
}

fn job_state(status: &Value) -> JobState {
    let last = status.get("history").and_then(Value::as_array).and_then(|h| h.last());
    let field = |key: &str| status.get(key).or_else(|| last?.get(key)).and_then(Value::as_str);
    match field("status").map(str::to_ascii_uppercase).as_deref() {
        Some("SUCCEEDED" | "SUCCESS" | "COMPLETED" | "DONE" | "FINISHED") => JobState::Succeeded,
        Some("FAILED" | "FAILURE" | "ERROR" | "CANCELLED" | "CANCELED" | "ABORTED") => {
            JobState::Failed(field("message").or_else(|| field("error")).unwrap_or("Devo gave no reason").to_owned())
        }
        _ => JobState::Pending,
    }
}

/// A job id: a string, or an object's `jobId` / `id`-like field.
fn job_id(value: &Value) -> Option<String> {
    if let Some(id) = value.as_str() {
        return Some(id.to_owned());
    }
    ["jobId", "job_id", "jobUuid", "job", "uuid", "id"].iter().find_map(|k| value.get(k)?.as_str().map(str::to_owned))
}

/// The TLS client configuration: system roots, plus the PEM certificates of `DEVO_CA_FILE`.
fn tls_config(extra_ca_pem: Option<&str>) -> Result<rustls::ClientConfig, Error> {
    let mut extra = rustls::RootCertStore::empty();
    if let Some(pem) = extra_ca_pem {
        crate::tls::add_pem_roots(&mut extra, pem.as_bytes())
            .map_err(|why| Error::Tls(format!("DEVO_CA_FILE: {why}")))?;
    }
    let mut config = crate::tls::client_config(crate::tls::Trust::SystemAnd(extra), None)
        .map_err(|e| Error::Tls(format!("{e}; put the CA that signs Devo's certificate in DEVO_CA_FILE")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// An error and its causes on one line ("error sending request: connection refused").
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(e) = next {
        let cause = e.to_string();
        if !text.contains(&cause) {
            text = format!("{text}: {cause}");
        }
        next = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_job_succeeds_or_fails_only_on_a_recognised_status() {
        assert_eq!(job_state(&json!({"status": "SUCCEEDED"})), JobState::Succeeded);
        assert_eq!(job_state(&json!({"status": "completed"})), JobState::Succeeded);
        assert_eq!(
            job_state(&json!({"status": "FAILED", "message": "bad column"})),
            JobState::Failed("bad column".into())
        );
        assert_eq!(job_state(&json!({"history": [{"status": "RUNNING"}, {"status": "SUCCESS"}]})), JobState::Succeeded);
        for pending in [json!({"status": "RUNNING"}), json!({"state": "done"}), json!([1, 2]), Value::Null] {
            assert_eq!(job_state(&pending), JobState::Pending, "{pending}");
        }
    }

    #[test]
    fn job_polls_start_fast_and_back_off_to_the_cap() {
        let pauses: Vec<u64> = poll_pauses(Duration::from_secs(5)).take(9).map(|p| p.as_millis() as u64).collect();
        assert_eq!(pauses, [10, 20, 40, 80, 160, 320, 640, 1280, 2560]);
        let capped: Vec<u64> =
            poll_pauses(Duration::from_secs(5)).skip(9).take(2).map(|p| p.as_millis() as u64).collect();
        assert_eq!(capped, [5000, 5000]);
        let tiny: Vec<Duration> = poll_pauses(Duration::from_millis(5)).take(2).collect();
        assert_eq!(tiny, [Duration::from_millis(5); 2]);
    }

    #[test]
    fn a_job_id_is_a_string_or_an_id_field() {
        assert_eq!(job_id(&json!("abc")), Some("abc".into()));
        assert_eq!(job_id(&json!({"jobId": "j-1"})), Some("j-1".into()));
        assert_eq!(job_id(&json!({"id": "j-2"})), Some("j-2".into()));
        assert_eq!(job_id(&json!({"status": "ok"})), None);
    }

    #[test]
    fn an_extra_ca_file_without_certificates_is_refused_naming_it() {
        crate::init_tls();
        let err = tls_config(Some("not a pem")).unwrap_err().to_string();
        assert!(err.contains("DEVO_CA_FILE"), "{err}");
    }
}
