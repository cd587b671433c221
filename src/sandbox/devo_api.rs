//! A stand-in for Devo's Lookups API (`docs/devo.md`): a real HTTPS server on loopback that keeps
//! lookups in memory, applies each `deploy-csv` through a job, logs what it received, and fails on request.
//!
//! The job status document is **[OURS]** (Devo does not publish its shape):
//!
//! ```json
//! {"id": "<uuid>", "lookup": "<name>", "status": "RUNNING" | "SUCCEEDED" | "FAILED",
//!  "message": "<why it failed>" | null, "history": [{"status": "RUNNING", "at": "<RFC 3339>"}, ...]}
//! ```
//!
//! A deploy answers `202 {"jobId": "<uuid>"}` (also [OURS]). Its job answers `RUNNING` to the first
//! [`Builder::running_polls`] status requests, then applies the change to the table at once and answers
//! `SUCCEEDED`, or answers `FAILED` and leaves the table as it was. Errors are `{"message": "..."}`.
//!
//! As the contract says, a deploy's `deploy-config` is the lookup's definition: an append (add or del) whose
//! columns differ from the lookup's is refused with 400 (`append columns [...] differ from the lookup's [...]`).
//! A lookup's metadata (also [OURS]) is `{"domain", "name", "columns": [{"name", "type"}], "key", "rows"}`.

use std::collections::HashMap;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Multipart, Path, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json};
use bytes::Bytes;
use csv::StringRecord;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_util::io::{StreamReader, SyncIoBridge};

use super::https::HttpsServer;

/// The token the stand-in accepts unless told otherwise.
pub const DEFAULT_TOKEN: &str = "sandbox-devo-api-token";

/// One request as the stand-in saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiRequest {
    pub method: String,
    /// The full path, e.g. `/lookup-api/lookup/acme/iocs/deploy-csv`.
    pub path: String,
    pub status: u16,
    /// Bytes of the `csv` part (header included), 0 without one.
    pub csv_bytes: u64,
    /// Data rows in the `csv` part (header excluded).
    pub csv_rows: u64,
    /// The `deploy-config` columns as `(name, type)`, in order; empty without one.
    pub deploy_columns: Vec<(String, String)>,
}

/// Options for [`LookupsApiStandIn::start`].
pub struct Builder {
    token: String,
    port: u16,
    running_polls: u32,
    keep_rows: bool,
}

impl Builder {
    /// The Bearer token to accept (default [`DEFAULT_TOKEN`]).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = token.into();
        self
    }
    /// Listen on this port of 127.0.0.1 (default 0: any free port).
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }
    /// How many status polls a job answers `RUNNING` before it ends (default 1).
    pub fn running_polls(mut self, polls: u32) -> Self {
        self.running_polls = polls;
        self
    }
    /// `false`: parse and count rows but keep none (for benchmarks of a million rows).
    pub fn keep_rows(mut self, keep: bool) -> Self {
        self.keep_rows = keep;
        self
    }

    pub async fn start(self) -> io::Result<LookupsApiStandIn> {
        let shared = Arc::new(Mutex::new(StandInState {
            token: self.token,
            running_polls: self.running_polls,
            keep_rows: self.keep_rows,
            job_id_in_response: true,
            ..StandInState::default()
        }));
        let server = HttpsServer::start("Devo Lookups API stand-in", self.port, router(shared.clone())).await?;
        Ok(LookupsApiStandIn { server, shared })
    }
}

/// The running stand-in; it stops when dropped.
pub struct LookupsApiStandIn {
    server: HttpsServer,
    shared: Shared,
}

impl LookupsApiStandIn {
    pub fn builder() -> Builder {
        Builder { token: DEFAULT_TOKEN.to_owned(), port: 0, running_polls: 1, keep_rows: true }
    }

    /// A stand-in on a free port with the default options.
    pub async fn start() -> io::Result<Self> {
        Self::builder().start().await
    }

    /// The API root, `https://127.0.0.1:PORT/lookup-api`.
    pub fn base_url(&self) -> String {
        format!("https://{}/lookup-api", self.server.addr())
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// The PEM CA that signed the server certificate (what `DEVO_CA_FILE` would hold).
    pub fn ca_pem(&self) -> &str {
        self.server.ca_pem()
    }

    fn state(&self) -> MutexGuard<'_, StandInState> {
        lock(&self.shared)
    }

    /// Only these Devo domains exist from now on: requests for another one are answered 404 (by default every
    /// domain exists).
    pub fn set_domains(&self, domains: &[&str]) {
        self.state().domains = Some(domains.iter().map(|d| (*d).to_owned()).collect());
    }

    /// Accept only this token from now on (revokes the previous one).
    pub fn set_token(&self, token: impl Into<String>) {
        self.state().token = token.into();
    }

    /// The lookup's rows, each in column order with the key first, sorted by key; `None` if it does not exist.
    pub fn table(&self, domain: &str, name: &str) -> Option<Vec<Vec<String>>> {
        let state = self.state();
        let lookup = state.tables.get(&(domain.to_owned(), name.to_owned()))?;
        let mut rows: Vec<(&String, &StringRecord)> = lookup.rows.iter().collect();
        rows.sort_unstable_by_key(|(key, _)| *key);
        Some(rows.into_iter().map(|(_, row)| row.iter().map(str::to_owned).collect()).collect())
    }

    /// The lookup's columns as `(name, Devo type)`, key first.
    pub fn columns(&self, domain: &str, name: &str) -> Option<Vec<(String, String)>> {
        Some(self.state().tables.get(&(domain.to_owned(), name.to_owned()))?.columns.clone())
    }

    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<ApiRequest> {
        self.state().log.clone()
    }

    pub fn clear_requests(&self) {
        self.state().log.clear();
    }

    /// The next `times` requests with this method whose path ends with `path_suffix` (e.g. `/deploy-csv`) are
    /// answered `status` (with `Retry-After: retry_after_secs`, if given) after their body is read.
    pub fn fail_next(&self, method: &str, path_suffix: &str, times: u32, status: u16, retry_after_secs: Option<u64>) {
        self.state().faults.push(Fault {
            method: method.to_ascii_uppercase(),
            path_suffix: path_suffix.to_owned(),
            remaining: times,
            status,
            retry_after_secs,
        });
    }

    /// The next deploy's job ends `FAILED` with this message, leaving the table unchanged.
    pub fn fail_next_job(&self, message: impl Into<String>) {
        self.state().fail_next_job = Some(message.into());
    }

    /// Jobs stay `RUNNING` for ever (until set back to `false`).
    pub fn set_jobs_never_finish(&self, never: bool) {
        self.state().jobs_never_finish = never;
    }

    /// `false`: deploy responses carry no job id, so clients must find the job in the job list.
    pub fn set_job_id_in_response(&self, named: bool) {
        self.state().job_id_in_response = named;
    }
}

type Shared = Arc<Mutex<StandInState>>;
type LookupKey = (String, String);

fn lock(shared: &Shared) -> MutexGuard<'_, StandInState> {
    // A handler that panicked cannot leave the maps half-updated (every change is one insert or remove), so
    // the state stays usable.
    shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[derive(Default)]
struct StandInState {
    token: String,
    running_polls: u32,
    keep_rows: bool,
    job_id_in_response: bool,
    jobs_never_finish: bool,
    /// The domains that exist; `None`: all of them.
    domains: Option<Vec<String>>,
    fail_next_job: Option<String>,
    faults: Vec<Fault>,
    tables: HashMap<LookupKey, Lookup>,
    jobs: HashMap<String, Job>,
    /// Job ids per lookup, oldest first.
    job_order: HashMap<LookupKey, Vec<String>>,
    log: Vec<ApiRequest>,
}

struct Fault {
    method: String,
    path_suffix: String,
    remaining: u32,
    status: u16,
    retry_after_secs: Option<u64>,
}

struct Lookup {
    /// `(name, type)`, key first.
    columns: Vec<(String, String)>,
    /// Rows by key, each in `columns` order: one record (one buffer for all values) a row, so a large upload is
    /// not a string per value; sorted only when read.
    rows: HashMap<String, StringRecord>,
}

/// What a deploy does once its job succeeds.
enum Change {
    Replace(Lookup),
    Upsert(Vec<StringRecord>),
    Delete(Vec<String>),
}

struct Job {
    lookup: LookupKey,
    change: Option<Change>,
    fail: Option<String>,
    polls: u32,
    status: &'static str,
    message: Option<String>,
    history: Vec<Value>,
}

impl Job {
    fn set_status(&mut self, status: &'static str) {
        self.status = status;
        self.history.push(json!({"status": status, "at": chrono::Utc::now().to_rfc3339()}));
    }

    fn to_json(&self, id: &str) -> Value {
        json!({"id": id, "lookup": self.lookup.1, "status": self.status, "message": self.message, "history": self.history})
    }
}

/// What the deploy handler saw of a request, for the log.
#[derive(Clone, Default)]
struct DeployStats(Arc<Mutex<DeploySeen>>);

#[derive(Default)]
struct DeploySeen {
    csv_bytes: u64,
    csv_rows: u64,
    columns: Vec<(String, String)>,
}

impl DeployStats {
    fn seen(&self) -> MutexGuard<'_, DeploySeen> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn router(shared: Shared) -> Router {
    let api = Router::new()
        .route("/lookup/{domain}", get(list))
        .route("/lookup/{domain}/{name}", get(metadata).delete(remove))
        .route("/lookup/{domain}/{name}/deploy-csv", axum::routing::post(deploy).put(deploy))
        .route("/lookup/{domain}/{name}/job", get(jobs))
        .route("/lookup/{domain}/{name}/job/{id}", get(job_status))
        .with_state(shared.clone());
    Router::new()
        .nest("/lookup-api", api)
        .layer(middleware::from_fn_with_state(shared, gate))
        .layer(DefaultBodyLimit::disable())
}

fn reply(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"message": message.into()}))).into_response()
}

/// Logs every request, checks the token, and plays the queued faults.
async fn gate(State(shared): State<Shared>, mut request: Request, next: Next) -> Response {
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let expected = format!("Bearer {}", lock(&shared).token);
    let authorised = request.headers().get(header::AUTHORIZATION).is_some_and(|v| v.as_bytes() == expected.as_bytes());
    let fault = {
        let mut state = lock(&shared);
        state.faults.retain(|f| f.remaining > 0);
        state.faults.iter_mut().find(|f| f.method == method && path.ends_with(&f.path_suffix)).map(|f| {
            f.remaining -= 1;
            (f.status, f.retry_after_secs)
        })
    };
    let domain = path.strip_prefix("/lookup-api/lookup/").map(|rest| rest.split('/').next().unwrap_or_default());
    let unknown_domain =
        domain.filter(|d| lock(&shared).domains.as_ref().is_some_and(|known| !known.iter().any(|k| k == d)));
    let stats = DeployStats::default();
    let response = if !authorised || fault.is_some() || unknown_domain.is_some() {
        // Read the body first so that a client still sending it gets the answer, not a reset connection.
        let mut body = std::mem::take(request.body_mut()).into_data_stream();
        while let Some(Ok(_)) = body.next().await {}
        match (fault, unknown_domain) {
            _ if !authorised => reply(StatusCode::UNAUTHORIZED, "invalid or expired token"),
            (_, Some(domain)) => reply(StatusCode::NOT_FOUND, format!("domain {domain} not found")),
            (Some((status, retry_after)), None) => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let mut response = reply(status, "stand-in fault, as asked");
                if let Some(seconds) = retry_after {
                    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
                }
                response
            }
            (None, None) => unreachable!("handled by the first arm"),
        }
    } else {
        request.extensions_mut().insert(stats.clone());
        next.run(request).await
    };
    let DeploySeen { csv_bytes, csv_rows, columns } = std::mem::take(&mut *stats.seen());
    let status = response.status().as_u16();
    lock(&shared).log.push(ApiRequest { method, path, status, csv_bytes, csv_rows, deploy_columns: columns });
    response
}

async fn list(State(shared): State<Shared>, Path(domain): Path<String>) -> Response {
    let state = lock(&shared);
    let mut names: Vec<&str> = state.tables.keys().filter(|(d, _)| *d == domain).map(|(_, n)| n.as_str()).collect();
    names.sort_unstable();
    Json(json!({"lookups": names})).into_response()
}

async fn metadata(State(shared): State<Shared>, Path(key): Path<LookupKey>) -> Response {
    let state = lock(&shared);
    let Some(lookup) = state.tables.get(&key) else {
        return reply(StatusCode::NOT_FOUND, format!("lookup {} not found", key.1));
    };
    let columns: Vec<Value> = lookup.columns.iter().map(|(name, ty)| json!({"name": name, "type": ty})).collect();
    Json(json!({
        "domain": key.0, "name": key.1, "columns": columns, "key": lookup.columns[0].0, "rows": lookup.rows.len()
    }))
    .into_response()
}

async fn remove(State(shared): State<Shared>, Path(key): Path<LookupKey>) -> Response {
    match lock(&shared).tables.remove(&key) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => reply(StatusCode::NOT_FOUND, format!("lookup {} not found", key.1)),
    }
}

async fn jobs(State(shared): State<Shared>, Path(key): Path<LookupKey>) -> Response {
    let state = lock(&shared);
    match state.job_order.get(&key) {
        Some(ids) => Json(json!({"jobs": ids[ids.len().saturating_sub(10)..]})).into_response(),
        None if state.tables.contains_key(&key) => Json(json!({"jobs": []})).into_response(),
        None => reply(StatusCode::NOT_FOUND, format!("lookup {} not found", key.1)),
    }
}

async fn job_status(
    State(shared): State<Shared>,
    Path((domain, name, id)): Path<(String, String, String)>,
) -> Response {
    let mut guard = lock(&shared);
    let state = &mut *guard;
    let Some(job) = state.jobs.get_mut(&id).filter(|j| j.lookup == (domain.clone(), name.clone())) else {
        return reply(StatusCode::NOT_FOUND, format!("no job {id} for lookup {name}"));
    };
    if job.status == "RUNNING" && !state.jobs_never_finish {
        if job.polls < state.running_polls {
            job.polls += 1;
        } else {
            let outcome = match (job.fail.take(), job.change.take()) {
                (Some(message), _) => Err(message),
                (None, Some(change)) => apply(&mut state.tables, &job.lookup, change),
                (None, None) => Ok(()),
            };
            match outcome {
                Ok(()) => job.set_status("SUCCEEDED"),
                Err(message) => {
                    job.message = Some(message);
                    job.set_status("FAILED");
                }
            }
        }
    }
    Json(job.to_json(&id)).into_response()
}

/// Applies a job's change in one step, or fails leaving the table as it was.
fn apply(tables: &mut HashMap<LookupKey, Lookup>, key: &LookupKey, change: Change) -> Result<(), String> {
    if let Change::Replace(lookup) = change {
        tables.insert(key.clone(), lookup);
        return Ok(());
    }
    let table = tables.get_mut(key).ok_or_else(|| format!("lookup {} no longer exists", key.1))?;
    match change {
        Change::Upsert(rows) => table.rows.extend(rows.into_iter().map(|row| (row[0].to_owned(), row))),
        Change::Delete(keys) => keys.iter().for_each(|k| drop(table.rows.remove(k))),
        Change::Replace(_) => unreachable!("handled above"),
    }
    Ok(())
}

/// The parts of `deploy-config` the stand-in acts on.
struct DeployConfig {
    /// `(name, type)` in CSV order.
    columns: Vec<(String, String)>,
    key_index: usize,
    has_header: bool,
    append: bool,
    delete: bool,
}

impl DeployConfig {
    fn parse(json: &[u8]) -> Result<Self, String> {
        let config: Value = serde_json::from_slice(json).map_err(|e| format!("deploy-config is not JSON: {e}"))?;
        let columns: Vec<(String, String)> = config["columns"]
            .as_array()
            .ok_or("deploy-config has no \"columns\" array")?
            .iter()
            .map(|c| match (c["name"].as_str(), c["type"].as_str()) {
                (Some(name), Some(ty)) if !name.is_empty() => Ok((name.to_owned(), ty.to_owned())),
                _ => Err(format!("deploy-config column {c} needs a name and a type")),
            })
            .collect::<Result<_, _>>()?;
        if config["key"]["type"] != "column" {
            return Err("deploy-config \"key\" must be {\"type\": \"column\", \"column\": ...}".into());
        }
        let key = config["key"]["column"].as_str().unwrap_or_default();
        let key_index = columns
            .iter()
            .position(|(name, _)| name == key)
            .ok_or_else(|| format!("deploy-config key column {key:?} is not among the columns"))?;
        let contribution = config["contribution"]["type"].as_str().unwrap_or("add");
        if !matches!(contribution, "add" | "del") {
            return Err(format!("unknown contribution type {contribution:?}"));
        }
        Ok(Self {
            columns,
            key_index,
            has_header: config["hasHeader"].as_bool().unwrap_or(false),
            append: config["append"].as_bool().unwrap_or(false),
            delete: contribution == "del",
        })
    }
}

/// Values in CSV order with the key moved first: how the table stores columns and rows.
fn key_first<T: Clone>(values: &[T], key_index: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(values.len());
    out.push(values[key_index].clone());
    out.extend(values.iter().enumerate().filter(|(i, _)| *i != key_index).map(|(_, v)| v.clone()));
    out
}

/// `POST` creates, `PUT` replaces, or with `append` upserts or deletes; the change waits for its job.
async fn deploy(
    State(shared): State<Shared>,
    method: Method,
    Path(key): Path<LookupKey>,
    Extension(stats): Extension<DeployStats>,
    mut multipart: Multipart,
) -> Response {
    let mut config = None;
    let mut parsed = None;
    loop {
        let mut field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) => return reply(StatusCode::BAD_REQUEST, format!("multipart body: {e}")),
        };
        match field.name() {
            Some("deploy-config") => {
                match field.bytes().await.map_err(|e| e.to_string()).and_then(|b| DeployConfig::parse(&b)) {
                    Ok(c) => {
                        stats.seen().columns = c.columns.clone();
                        config = Some(c);
                    }
                    Err(e) => return reply(StatusCode::BAD_REQUEST, e),
                }
            }
            Some("csv") => {
                let Some(config) = &config else {
                    return reply(StatusCode::BAD_REQUEST, "the deploy-config part must come before the csv part");
                };
                let keep = lock(&shared).keep_rows;
                // The CSV is parsed as it arrives, on a blocking thread, so a large upload is never held whole.
                let (mut tx, rx) = futures::channel::mpsc::channel::<io::Result<Bytes>>(8);
                let reader = SyncIoBridge::new(StreamReader::new(rx));
                let (columns, has_header, key_index, delete) =
                    (config.columns.clone(), config.has_header, config.key_index, config.delete);
                let parser = tokio::task::spawn_blocking(move || {
                    parse_csv(reader, &columns, has_header, keep, |row| match (delete, key_index) {
                        (true, _) => StringRecord::from(vec![&row[key_index]]),
                        (false, 0) => row,
                        (false, _) => key_first(&row.iter().collect::<Vec<_>>(), key_index).into_iter().collect(),
                    })
                });
                let mut bytes = 0u64;
                let mut failure = None;
                loop {
                    match field.chunk().await {
                        Ok(Some(chunk)) => {
                            bytes += chunk.len() as u64;
                            if tx.send(Ok(chunk)).await.is_err() {
                                break; // the parser stopped on an error it reports below
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            failure = Some(format!("multipart body: {e}"));
                            let _ = tx.send(Err(io::Error::other("the upload broke off"))).await;
                            break;
                        }
                    }
                }
                drop(tx);
                let result = parser.await.unwrap_or_else(|e| Err(format!("CSV parser crashed: {e}")));
                let rows = result.as_ref().map(|(_, n)| *n).unwrap_or(0);
                {
                    let mut seen = stats.seen();
                    (seen.csv_bytes, seen.csv_rows) = (bytes, rows);
                }
                if let Some(failure) = failure {
                    return reply(StatusCode::BAD_REQUEST, failure);
                }
                match result {
                    Ok(rows) => parsed = Some(rows),
                    Err(e) => return reply(StatusCode::BAD_REQUEST, e),
                }
            }
            other => return reply(StatusCode::BAD_REQUEST, format!("unexpected multipart part {other:?}")),
        }
    }
    let (Some(config), Some((rows, _))) = (config, parsed) else {
        return reply(StatusCode::BAD_REQUEST, "a deploy needs a deploy-config part and a csv part");
    };
    let mut guard = lock(&shared);
    let state = &mut *guard;
    let existing = state.tables.get(&key);
    let stored_columns = key_first(&config.columns, config.key_index);
    let change = match (method == Method::POST, existing, config.append) {
        (true, Some(_), _) => return reply(StatusCode::CONFLICT, format!("lookup {} already exists", key.1)),
        (true, None, true) => return reply(StatusCode::BAD_REQUEST, "append needs an existing lookup (PUT)"),
        (false, None, _) => return reply(StatusCode::NOT_FOUND, format!("lookup {} not found", key.1)),
        (_, _, false) => Change::Replace(Lookup {
            columns: stored_columns,
            rows: rows.into_iter().map(|row| (row[0].to_owned(), row)).collect(),
        }),
        // A deploy's columns may be taken as the lookup's definition, so an append (add or del) must describe
        // the lookup exactly, as Devo's own delete example does.
        (false, Some(table), true) if stored_columns != table.columns => {
            return reply(
                StatusCode::BAD_REQUEST,
                format!(
                    "append columns {} differ from the lookup's {}",
                    describe_columns(&config.columns),
                    describe_columns(&table.columns)
                ),
            );
        }
        (false, Some(_), true) if config.delete => {
            Change::Delete(rows.into_iter().map(|row| row[0].to_owned()).collect())
        }
        (false, Some(_), true) => Change::Upsert(rows),
    };
    let id = new_job_id();
    let fail = state.fail_next_job.take();
    let mut job = Job {
        lookup: key.clone(),
        change: Some(change),
        fail,
        polls: 0,
        status: "",
        message: None,
        history: Vec::new(),
    };
    job.set_status("RUNNING");
    state.jobs.insert(id.clone(), job);
    state.job_order.entry(key).or_default().push(id.clone());
    let body = if state.job_id_in_response { json!({"jobId": id}) } else { json!({}) };
    (StatusCode::ACCEPTED, Json(body)).into_response()
}

/// `[ioc STRING, score INT8]`: columns as an error message shows them.
fn describe_columns(columns: &[(String, String)]) -> String {
    let each: Vec<String> = columns.iter().map(|(name, ty)| format!("{name} {ty}")).collect();
    format!("[{}]", each.join(", "))
}

/// Reads CSV rows, checks the header and each row's width, and returns them as `shape` makes them (key first),
/// or only their count when `keep` is false.
fn parse_csv(
    reader: impl Read,
    columns: &[(String, String)],
    has_header: bool,
    keep: bool,
    shape: impl Fn(StringRecord) -> StringRecord,
) -> Result<(Vec<StringRecord>, u64), String> {
    let mut csv = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(reader);
    let mut records = csv.records();
    if has_header {
        let header = records.next().transpose().map_err(|e| format!("CSV header: {e}"))?.unwrap_or_default();
        let expected: Vec<&str> = columns.iter().map(|(name, _)| name.as_str()).collect();
        if header.iter().collect::<Vec<_>>() != expected {
            return Err(format!("CSV header {:?} does not match deploy-config columns {expected:?}", header));
        }
    }
    let mut rows = Vec::new();
    let mut count = 0u64;
    for record in records {
        let record = record.map_err(|e| format!("CSV row {}: {e}", count + 1))?;
        if record.len() != columns.len() {
            return Err(format!("CSV row {} has {} fields, expected {}", count + 1, record.len(), columns.len()));
        }
        count += 1;
        if keep {
            rows.push(shape(record));
        }
    }
    Ok((rows, count))
}

/// A random (version 4) UUID.
fn new_job_id() -> String {
    let n: u128 = rand::random();
    let hex = format!("{n:032x}");
    format!("{}-{}-4{}-a{}-{}", &hex[..8], &hex[8..12], &hex[13..16], &hex[17..20], &hex[20..32])
}
