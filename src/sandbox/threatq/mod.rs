//! The ThreatQ stand-in: a real HTTPS server on 127.0.0.1 serving every call of `docs/threatq.md` (sign-in
//! and refresh, the connector record, data collections, the indicator query with the saved-search filter
//! language), with a deterministic generator behind the indicators, knobs to inject faults, and a request log.

// Handlers' helpers return `Result<_, Response>`: the error is the HTTP answer itself, handed straight to axum.
#![allow(clippy::result_large_err)]

mod filter;
pub mod generate;
mod store;

// The latency parses on the command line (`sandbox --page-latency`), which stays below the stand-ins.
pub use crate::connector::cli::PageLatency;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::{Map, Value, json};

use self::filter::Filter;
pub use self::generate::Generator;
use self::store::Store;
use super::https::HttpsServer;
use crate::threatq::parse_is_active;

pub const DEFAULT_CLIENT_ID: &str = "tqdevo-sandbox-client";
pub const DEFAULT_EMAIL: &str = "analyst@threatq.sandbox";
pub const DEFAULT_PASSWORD: &str = "sandbox-password";
/// The connector categories the stand-in knows; registration looks up "Labs".
pub const CATEGORIES: &[(u64, &str)] = &[(1, "Commercial"), (2, "OSINT"), (3, "Labs"), (4, "Enrichment")];
/// Requests kept in the log; older ones are dropped so a long-lived sandbox does not grow.
const LOG_LIMIT: usize = 100_000;
/// Indicator pages kept as rendered, so that a page asked again costs what a real server's cache hit does and the
/// benchmarks measure the exporter, not the generator.
const RENDERED_LIMIT: usize = 2 << 30;

/// How to start the stand-in.
#[derive(Clone, Debug)]
pub struct ThreatqOptions {
    /// 0 picks a free port.
    pub port: u16,
    pub client_id: String,
    pub email: String,
    pub password: String,
    pub token_lifetime: Duration,
    /// How many generated indicators (ids `1..=generated`) the instance holds.
    pub generated: u64,
    pub seed: u64,
    /// How long an indicator page takes to answer, as a real instance's joins do.
    pub page_latency: PageLatency,
}

impl Default for ThreatqOptions {
    fn default() -> Self {
        ThreatqOptions {
            port: 0,
            client_id: DEFAULT_CLIENT_ID.into(),
            email: DEFAULT_EMAIL.into(),
            password: DEFAULT_PASSWORD.into(),
            token_lifetime: Duration::from_secs(3600),
            generated: 0,
            seed: 1,
            page_latency: PageLatency::default(),
        }
    }
}

/// How the stand-in writes `is_active`; real instances have been seen sending each of these.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ActiveEncoding {
    #[default]
    Bool,
    /// `1` / `0`
    Number,
    /// `"Y"` / `"N"`
    YesNo,
    /// `"true"` / `"false"`
    TrueFalseText,
    /// `"1"` / `"0"`
    DigitText,
    /// `"1"` / `""`
    EmptyForFalse,
    /// `true` / `null`
    NullForFalse,
}

impl ActiveEncoding {
    fn encode(self, active: bool) -> Value {
        match (self, active) {
            (ActiveEncoding::Bool, b) => json!(b),
            (ActiveEncoding::Number, b) => json!(u8::from(b)),
            (ActiveEncoding::YesNo, b) => json!(if b { "Y" } else { "N" }),
            (ActiveEncoding::TrueFalseText, b) => json!(b.to_string()),
            (ActiveEncoding::DigitText | ActiveEncoding::EmptyForFalse, true) => json!("1"),
            (ActiveEncoding::DigitText, false) => json!("0"),
            (ActiveEncoding::EmptyForFalse, false) => json!(""),
            (ActiveEncoding::NullForFalse, true) => json!(true),
            (ActiveEncoding::NullForFalse, false) => Value::Null,
        }
    }
}

/// A misbehaviour to serve instead of (or around) the real answer.
#[derive(Clone, Debug)]
pub enum Fault {
    /// This status with a `{"errors": [...]}` body, and `Retry-After: seconds` when given.
    Status { status: u16, retry_after: Option<u64> },
    /// Wait, then answer normally.
    Delay(Duration),
    /// The real answer with only its first half sent.
    Truncate,
    /// 200 with a body that is not JSON.
    Garbage,
    /// 200 with `{"errors": [message]}`.
    ErrorsIn2xx(String),
    /// 200 with an HTML page, as a proxy or a single sign-on portal answers.
    Html,
    /// 302 to a login page.
    RedirectToLogin,
    /// The real answer with its body passed through a function (an id repeated, a changed `total`, a huge value,
    /// bytes that are not UTF-8).
    Rewrite(Rewrite),
}

/// Turns the bytes of a real answer into the bytes served.
pub type RewriteFn = dyn Fn(&[u8]) -> Vec<u8> + Send + Sync;

/// A function over the bytes of a real answer, for [`Fault::Rewrite`].
#[derive(Clone)]
pub struct Rewrite(pub Arc<RewriteFn>);

impl Rewrite {
    /// Rewrites the answer's JSON with `edit`.
    pub fn json(edit: impl Fn(&mut Value) + Send + Sync + 'static) -> Rewrite {
        Rewrite(Arc::new(move |body| {
            let Ok(mut value) = serde_json::from_slice::<Value>(body) else { return body.to_vec() };
            edit(&mut value);
            serde_json::to_vec(&value).expect("JSON values serialize")
        }))
    }
}

impl std::fmt::Debug for Rewrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rewrite(..)")
    }
}

/// One request as the stand-in received it.
#[derive(Clone, Debug)]
pub struct LoggedRequest {
    pub method: String,
    pub path: String,
    pub query: String,
    pub authorization: Option<String>,
    /// When the stand-in received the request, and when its answer was ready: the stand-in's own record of
    /// how requests overlapped.
    pub started: Instant,
    pub finished: Option<Instant>,
    seq: u64,
}

struct ArmedFault {
    path_prefix: String,
    /// Matching requests to let through before the fault is served.
    skip: u32,
    remaining: u32,
    fault: Fault,
}

struct Collection {
    id: u64,
    name: String,
    hash: String,
    json: Value,
}

struct StandInState {
    options: ThreatqOptions,
    access_tokens: HashMap<String, Instant>,
    refresh_tokens: HashSet<String>,
    connectors: Vec<Map<String, Value>>,
    encoding: ActiveEncoding,
    collections: Vec<Collection>,
    store: Store,
    faults: Vec<ArmedFault>,
    log: Vec<LoggedRequest>,
    /// Requests logged so far, numbering the entries.
    logged: u64,
    rendered: Rendered,
}

/// Rendered indicator pages of one store version: the JSON body and how many IOCs it holds, by query.
#[derive(Default)]
struct Rendered {
    version: u64,
    bytes: usize,
    pages: HashMap<String, (Bytes, usize)>,
}

type Shared = Arc<Mutex<StandInState>>;

fn lock(shared: &Shared) -> MutexGuard<'_, StandInState> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running stand-in; stops when dropped.
pub struct ThreatqStandIn {
    server: HttpsServer,
    shared: Shared,
}

impl ThreatqStandIn {
    /// Binds 127.0.0.1:`options.port` and serves HTTPS with a certificate from a fresh throwaway CA.
    pub async fn start(options: ThreatqOptions) -> io::Result<ThreatqStandIn> {
        let port = options.port;
        let shared: Shared = Arc::new(Mutex::new(StandInState {
            store: Store::new(options.seed, options.generated),
            options,
            access_tokens: HashMap::new(),
            refresh_tokens: HashSet::new(),
            connectors: Vec::new(),
            encoding: ActiveEncoding::default(),
            collections: Vec::new(),
            faults: Vec::new(),
            log: Vec::new(),
            logged: 0,
            rendered: Rendered::default(),
        }));
        let server = HttpsServer::start("ThreatQ stand-in", port, router(shared.clone())).await?;
        Ok(ThreatqStandIn { server, shared })
    }

    /// `https://127.0.0.1:PORT`
    pub fn base_url(&self) -> String {
        format!("https://{}", self.server.addr())
    }

    /// `127.0.0.1:PORT`, as a user would type it into the ThreatQ Host prompt.
    pub fn host(&self) -> String {
        self.server.addr().to_string()
    }

    pub fn port(&self) -> u16 {
        self.server.addr().port()
    }

    /// The PEM of the CA that signed the server certificate (what `THREATQ_CA_FILE` would hold).
    pub fn ca_pem(&self) -> &str {
        self.server.ca_pem()
    }

    fn state(&self) -> MutexGuard<'_, StandInState> {
        lock(&self.shared)
    }

    /// Applies to tokens issued from now on.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.state().options.token_lifetime = lifetime;
    }

    /// Invalidates every access and refresh token, as a password change or an admin would.
    pub fn revoke_tokens(&self) {
        let mut state = self.state();
        state.access_tokens.clear();
        state.refresh_tokens.clear();
    }

    /// Every access and refresh token still valid, to check they never reach a log.
    pub fn live_tokens(&self) -> Vec<String> {
        let state = self.state();
        state.access_tokens.keys().chain(state.refresh_tokens.iter()).cloned().collect()
    }

    /// The connector record as a GET would return it, if registered.
    pub fn connector(&self, name: &str) -> Option<Value> {
        let state = self.state();
        state.connectors.iter().find(|c| c["name"] == name).map(|c| state.render_connector(c, true))
    }

    /// Edits the stored record (`is_active` is stored as a bool); false when no such connector.
    pub fn modify_connector(&self, name: &str, edit: impl FnOnce(&mut Map<String, Value>)) -> bool {
        let mut state = self.state();
        state.connectors.iter_mut().find(|c| c["name"] == name).map(edit).is_some()
    }

    /// What a user typing into the Configuration tab does.
    pub fn set_custom_fields(&self, name: &str, fields: BTreeMap<String, String>) -> bool {
        self.modify_connector(name, |c| {
            c.insert("custom_fields".into(), json!(fields));
        })
    }

    /// What a user flipping the toggle does.
    pub fn set_active(&self, name: &str, active: bool) -> bool {
        self.modify_connector(name, |c| {
            c.insert("is_active".into(), json!(active));
        })
    }

    pub fn set_active_encoding(&self, encoding: ActiveEncoding) {
        self.state().encoding = encoding;
    }

    /// A data collection whose `json` is `{"api_query": api_query}`; returns its id.
    pub fn add_collection(&self, name: &str, api_query: Value) -> u64 {
        self.add_collection_json(name, json!({ "api_query": api_query }))
    }

    /// A data collection with this exact `json` (an object, or a JSON string as some instances send).
    pub fn add_collection_json(&self, name: &str, json: Value) -> u64 {
        let mut state = self.state();
        let id = state.collections.len() as u64 + 1;
        let hash = blake3::hash(format!("{id}:{name}").as_bytes()).to_hex()[..32].to_owned();
        state.collections.push(Collection { id, name: name.to_owned(), hash, json });
        id
    }

    /// Adds or replaces an indicator (its `id`, or the next free one); returns the id.
    pub fn upsert_indicator(&self, indicator: Value) -> u64 {
        self.state().store.upsert(indicator)
    }

    pub fn remove_indicator(&self, id: u64) -> bool {
        self.state().store.remove(id)
    }

    /// Edits an indicator in place (generated or added); false when there is none with this id.
    pub fn modify_indicator(&self, id: u64, edit: impl FnOnce(&mut Value)) -> bool {
        let mut state = self.state();
        let Some(mut indicator) = state.store.get(id) else { return false };
        edit(&mut indicator);
        indicator["id"] = json!(id);
        state.store.upsert(indicator);
        true
    }

    pub fn indicator(&self, id: u64) -> Option<Value> {
        self.state().store.get(id)
    }

    /// Grows or shrinks the generated indicators to ids `1..=count`.
    pub fn set_generated(&self, count: u64) {
        self.state().store.set_generated(count);
    }

    pub fn indicator_count(&self) -> u64 {
        self.state().store.len()
    }

    /// Serves `fault` to the next `times` requests whose path starts with `path_prefix`.
    pub fn inject(&self, path_prefix: &str, times: u32, fault: Fault) {
        self.inject_after(path_prefix, 0, times, fault);
    }

    /// [`Self::inject`], once `skip` matching requests went through untouched (e.g. to fault the second page).
    pub fn inject_after(&self, path_prefix: &str, skip: u32, times: u32, fault: Fault) {
        let armed = ArmedFault { path_prefix: path_prefix.to_owned(), skip, remaining: times, fault };
        self.state().faults.push(armed);
    }

    /// Applies to indicator pages asked from now on.
    pub fn set_page_latency(&self, latency: PageLatency) {
        self.state().options.page_latency = latency;
    }

    pub fn clear_faults(&self) {
        self.state().faults.clear();
    }

    /// The requests received so far (the newest [`LOG_LIMIT`]).
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.state().log.clone()
    }

    pub fn clear_requests(&self) {
        self.state().log.clear();
    }
}

impl StandInState {
    fn render_connector(&self, record: &Map<String, Value>, with_category: bool) -> Value {
        let mut out = record.clone();
        let active = out.get("is_active").and_then(parse_is_active).unwrap_or(false);
        out.insert("is_active".into(), self.encoding.encode(active));
        if !with_category {
            out.remove("category");
        }
        Value::Object(out)
    }

    fn take_fault(&mut self, path: &str) -> Option<Fault> {
        let armed = self.faults.iter_mut().find(|f| f.remaining > 0 && path.starts_with(&f.path_prefix))?;
        if armed.skip > 0 {
            armed.skip -= 1;
            return None;
        }
        armed.remaining -= 1;
        let fault = armed.fault.clone();
        self.faults.retain(|f| f.remaining > 0);
        Some(fault)
    }

    fn issue_tokens(&mut self) -> Value {
        let lifetime = self.options.token_lifetime;
        let (access, refresh) = (token("tqa"), token("tqr"));
        self.access_tokens.insert(access.clone(), Instant::now() + lifetime);
        self.refresh_tokens.insert(refresh.clone());
        let expires_in = lifetime.as_secs_f64().ceil().max(1.0) as u64;
        json!({"access_token": access, "token_type": "Bearer", "expires_in": expires_in, "refresh_token": refresh})
    }
}

fn token(prefix: &str) -> String {
    format!("{prefix}-{:016x}{:016x}", rand::random::<u64>(), rand::random::<u64>())
}

fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%d %H:%M:%S").to_string()
}

fn reply(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn errors(status: StatusCode, message: impl Into<String>) -> Response {
    reply(status, json!({ "errors": [message.into()] }))
}

fn field_error(field: &str, message: &str) -> Response {
    reply(StatusCode::UNPROCESSABLE_ENTITY, json!({"data": {"errors": {field: [message]}}}))
}

fn router(shared: Shared) -> Router {
    Router::new()
        .route("/api/token", post(sign_in))
        .route("/api/connectors", get(list_connectors).post(create_connector))
        .route("/api/connectors/{id}", put(update_connector))
        .route("/api/connector/categories", get(categories))
        .route("/api/search/query", get(collections))
        .route("/api/indicators/query", post(query_indicators))
        .route("/api/indicators/{id}/adversaries", get(adversaries))
        .route("/api/indicator/statuses", get(statuses))
        .route("/api/indicator/types", get(types))
        .layer(from_fn_with_state(shared.clone(), authenticate))
        .layer(from_fn_with_state(shared.clone(), inject_faults))
        .layer(from_fn_with_state(shared.clone(), log_request))
        .with_state(shared)
}

async fn log_request(State(shared): State<Shared>, request: Request, next: Next) -> Response {
    let seq = {
        let mut state = lock(&shared);
        if state.log.len() >= LOG_LIMIT {
            state.log.drain(..LOG_LIMIT / 2);
        }
        state.logged += 1;
        let entry = LoggedRequest {
            method: request.method().to_string(),
            path: request.uri().path().to_owned(),
            query: request.uri().query().unwrap_or_default().to_owned(),
            authorization: request.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_owned),
            started: Instant::now(),
            finished: None,
            seq: state.logged,
        };
        state.log.push(entry);
        state.logged
    };
    let response = next.run(request).await;
    if let Some(entry) = lock(&shared).log.iter_mut().rev().find(|e| e.seq == seq) {
        entry.finished = Some(Instant::now());
    }
    response
}

async fn inject_faults(State(shared): State<Shared>, request: Request, next: Next) -> Response {
    let fault = lock(&shared).take_fault(request.uri().path());
    match fault {
        None => next.run(request).await,
        Some(Fault::Status { status, retry_after }) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut response = errors(status, format!("injected fault: HTTP {}", status.as_u16()));
            if let Some(seconds) = retry_after {
                response.headers_mut().insert(RETRY_AFTER, seconds.into());
            }
            response
        }
        Some(Fault::Delay(wait)) => {
            tokio::time::sleep(wait).await;
            next.run(request).await
        }
        Some(Fault::Garbage) => {
            (StatusCode::OK, [(CONTENT_TYPE, "application/json")], "<html><body>Bad Gateway</body></html>\u{1}{")
                .into_response()
        }
        Some(Fault::ErrorsIn2xx(message)) => errors(StatusCode::OK, message),
        Some(Fault::Html) => (
            StatusCode::OK,
            [(CONTENT_TYPE, "text/html; charset=utf-8")],
            "<!DOCTYPE html><html><head><title>Sign in</title></head><body><form action=\"/login\"></form></body></html>",
        )
            .into_response(),
        Some(Fault::RedirectToLogin) => {
            (StatusCode::FOUND, [(axum::http::header::LOCATION, "/login?next=%2Fapi")], "").into_response()
        }
        Some(Fault::Rewrite(Rewrite(rewrite))) => {
            let (mut parts, body) = next.run(request).await.into_parts();
            let whole = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
            parts.headers.remove(CONTENT_LENGTH);
            Response::from_parts(parts, Body::from(rewrite(&whole)))
        }
        Some(Fault::Truncate) => {
            let (mut parts, body) = next.run(request).await.into_parts();
            let whole = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
            parts.headers.remove(CONTENT_LENGTH);
            Response::from_parts(parts, Body::from(whole.slice(..whole.len() / 2)))
        }
    }
}

/// Every call but sign-in needs `Authorization: Bearer <live token>`; ThreatQ refuses a lower-case `bearer`.
async fn authenticate(State(shared): State<Shared>, request: Request, next: Next) -> Response {
    if request.uri().path() == "/api/token" {
        return next.run(request).await;
    }
    let presented =
        request.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|h| h.strip_prefix("Bearer "));
    let live =
        presented.is_some_and(|t| lock(&shared).access_tokens.get(t).is_some_and(|until| Instant::now() < *until));
    if !live {
        return reply(StatusCode::UNAUTHORIZED, json!({"message": "Unauthenticated."}));
    }
    next.run(request).await
}

/// Query parameters, then the keys of a JSON or form body (the stand-in accepts all three, like ThreatQ).
fn token_parameters(query: HashMap<String, String>, headers: &HeaderMap, body: &[u8]) -> HashMap<String, String> {
    let mut params = query;
    let json_body = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|t| t.contains("json"));
    let from_body: Vec<(String, String)> = if json_body {
        match serde_json::from_slice::<Map<String, Value>>(body) {
            Ok(map) => map.into_iter().filter_map(|(k, v)| Some((k, v.as_str()?.to_owned()))).collect(),
            Err(_) => Vec::new(),
        }
    } else {
        serde_urlencoded::from_bytes(body).unwrap_or_default()
    };
    for (key, value) in from_body {
        params.entry(key).or_insert(value);
    }
    params
}

async fn sign_in(
    State(shared): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params = token_parameters(query, &headers, &body);
    let param = |key: &str| params.get(key).map(String::as_str).unwrap_or_default();
    let mut state = lock(&shared);
    match param("grant_type") {
        "password" => {
            let options = &state.options;
            let good = param("client_id") == options.client_id
                && param("email") == options.email
                && param("password") == options.password;
            if !good {
                return errors(StatusCode::BAD_REQUEST, "The user credentials were incorrect.");
            }
        }
        "refresh_token" => {
            // Refresh tokens are single use, as ThreatQ's OAuth server rotates them.
            if !state.refresh_tokens.remove(param("refresh_token")) {
                return errors(StatusCode::UNAUTHORIZED, "The refresh token is invalid.");
            }
        }
        other => return errors(StatusCode::BAD_REQUEST, format!("Unsupported grant type {other:?}.")),
    }
    reply(StatusCode::OK, state.issue_tokens())
}

fn list(data: Vec<Value>) -> Response {
    reply(StatusCode::OK, json!({"total": data.len(), "data": data}))
}

fn wants(with: Option<&String>, what: &str) -> bool {
    with.is_some_and(|w| w.split(',').any(|part| part.trim() == what))
}

async fn list_connectors(State(shared): State<Shared>, Query(query): Query<HashMap<String, String>>) -> Response {
    let state = lock(&shared);
    // A search, like ThreatQ's: the name matches loosely, so the client must pick the exact one.
    let needle = query.get("name").map(|n| n.to_lowercase()).unwrap_or_default();
    let with_category = wants(query.get("with"), "category");
    list(
        state
            .connectors
            .iter()
            .filter(|c| c["name"].as_str().is_some_and(|n| n.to_lowercase().contains(&needle)))
            .map(|c| state.render_connector(c, with_category))
            .collect(),
    )
}

fn body_object(body: &[u8]) -> Result<Map<String, Value>, Response> {
    serde_json::from_slice(body)
        .map_err(|e| errors(StatusCode::BAD_REQUEST, format!("The body is not a JSON object: {e}")))
}

async fn create_connector(State(shared): State<Shared>, body: Bytes) -> Response {
    let body = match body_object(&body) {
        Ok(body) => body,
        Err(response) => return response,
    };
    const KEYS: &[&str] =
        &["name", "display_name", "category_id", "version", "namespace", "is_active", "user_fields", "custom_fields"];
    if let Some(unknown) = body.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return field_error(unknown, "is not a connector field");
    }
    let mut state = lock(&shared);
    let Some(name) = body.get("name").and_then(Value::as_str).filter(|n| !n.is_empty()) else {
        return field_error("name", "The name field is required.");
    };
    if state.connectors.iter().any(|c| c["name"] == name) {
        return field_error("name", "The name has already been taken.");
    }
    let category = body.get("category_id").and_then(Value::as_u64).and_then(|id| CATEGORIES.iter().find(|c| c.0 == id));
    let Some(&(category_id, category_name)) = category else {
        return field_error("category_id", "The selected category id is invalid.");
    };
    let Some(is_active) = body.get("is_active").map_or(Some(false), parse_is_active) else {
        return field_error("is_active", "The is active field must be true or false.");
    };
    let id = state.connectors.iter().filter_map(|c| c["id"].as_u64()).max().unwrap_or(0) + 1;
    let text = |key: &str| body.get(key).cloned().unwrap_or(json!(""));
    let record = json!({
        "id": id, "name": name, "display_name": text("display_name"), "namespace": text("namespace"),
        "version": text("version"), "category_id": category_id, "category": {"id": category_id, "name": category_name},
        "is_active": is_active, "custom_fields": body.get("custom_fields").cloned().unwrap_or(json!({})),
        "user_fields": body.get("user_fields").cloned().unwrap_or(json!([])),
        "last_import_at": null, "last_import_count": null, "created_at": now(), "updated_at": now(),
    });
    let Value::Object(record) = record else { unreachable!("json! of an object literal is an object") };
    let rendered = state.render_connector(&record, true);
    state.connectors.push(record);
    reply(StatusCode::CREATED, json!({ "data": rendered }))
}

async fn update_connector(State(shared): State<Shared>, Path(id): Path<u64>, body: Bytes) -> Response {
    let body = match body_object(&body) {
        Ok(body) => body,
        Err(response) => return response,
    };
    let mut state = lock(&shared);
    let Some(index) = state.connectors.iter().position(|c| c["id"] == id) else {
        return reply(StatusCode::NOT_FOUND, json!({"message": format!("No connector with id {id}.")}));
    };
    let mut record = state.connectors[index].clone();
    for (key, value) in body {
        let accepted = match key.as_str() {
            "is_active" => parse_is_active(&value).map(Value::Bool),
            "custom_fields" => value.is_object().then_some(value),
            "user_fields" => value.is_array().then_some(value),
            "version" | "display_name" => value.is_string().then_some(value),
            "last_import_at" => match &value {
                Value::Null => Some(value),
                Value::String(s) => chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").ok().map(|_| value),
                _ => None,
            },
            "last_import_count" => (value.is_u64() || value.is_null()).then_some(value),
            _ => return field_error(&key, "is not a field that can be updated"),
        };
        match accepted {
            Some(value) => record.insert(key, value),
            None => return field_error(&key, "has the wrong format"),
        };
    }
    record.insert("updated_at".into(), json!(now()));
    let rendered = state.render_connector(&record, true);
    state.connectors[index] = record;
    reply(StatusCode::OK, json!({ "data": rendered }))
}

async fn categories() -> Response {
    list(CATEGORIES.iter().map(|(id, name)| json!({"id": id, "name": name})).collect())
}

async fn statuses() -> Response {
    list(generate::STATUSES.iter().map(|(id, name)| json!({"id": id, "name": name})).collect())
}

async fn types(Query(query): Query<HashMap<String, String>>) -> Response {
    let wanted = query.get("name");
    list(
        generate::TYPES
            .iter()
            .filter(|(_, name)| wanted.is_none_or(|w| w == name))
            .map(|(id, name)| json!({"id": id, "name": name}))
            .collect(),
    )
}

async fn collections(State(shared): State<Shared>) -> Response {
    let state = lock(&shared);
    list(
        state.collections.iter().map(|c| json!({"id": c.id, "name": c.name, "hash": c.hash, "json": c.json})).collect(),
    )
}

/// Compiles a query, answering 400 as ThreatQ does for a filter it cannot read.
fn compile(criteria: &Value, filters: &Value) -> Result<(Filter, String), Response> {
    let filter = Filter::compile_query(criteria, filters).map_err(|e| errors(StatusCode::BAD_REQUEST, e))?;
    Ok((filter, format!("{criteria}|{filters}")))
}

/// Drops what recent ThreatQ leaves out unless asked for in `with` or `fields`.
fn shape(mut indicators: Vec<Value>, with: Option<&String>, fields: &[&str]) -> Vec<Value> {
    let keep = |what: &str| wants(with, what) || fields.contains(&what);
    let (attributes, sources) = (keep("attributes"), keep("sources"));
    for ioc in indicators.iter_mut().filter_map(Value::as_object_mut) {
        if !attributes {
            ioc.remove("attributes");
        }
        if !sources {
            ioc.remove("sources");
        }
    }
    indicators
}

fn number(query: &HashMap<String, String>, key: &str, default: u64) -> Result<u64, Response> {
    match query.get(key) {
        None => Ok(default),
        Some(text) => text.parse().map_err(|_| errors(StatusCode::BAD_REQUEST, format!("{key} must be a number"))),
    }
}

fn sorted_by_id(query: &HashMap<String, String>) -> Result<(), Response> {
    match query.get("sort").map(String::as_str) {
        None | Some("id") => Ok(()),
        Some(other) => Err(errors(StatusCode::BAD_REQUEST, format!("the stand-in sorts by id only, not {other:?}"))),
    }
}

async fn query_indicators(
    State(shared): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let run = || -> Result<(Response, Duration), Response> {
        let body = if body.is_empty() { Map::new() } else { body_object(&body)? };
        sorted_by_id(&query)?;
        let (limit, offset) = (number(&query, "limit", 1000)?, number(&query, "offset", 0)?);
        let null = Value::Null;
        let (filter, key) = compile(body.get("criteria").unwrap_or(&null), body.get("filters").unwrap_or(&null))?;
        let fields: Vec<&str> =
            body.get("fields").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
        let page_key = format!("{key}|{offset}|{limit}|{:?}|{fields:?}", query.get("with"));
        let mut state = lock(&shared);
        let version = state.store.version();
        if state.rendered.version != version {
            state.rendered = Rendered { version, ..Rendered::default() };
        }
        let (rendered, iocs) = match state.rendered.pages.get(&page_key) {
            Some(hit) => hit.clone(),
            None => {
                let (total, page) = state.store.page(&filter, &key, offset, limit);
                let data = shape(page, query.get("with"), &fields);
                let iocs = data.len();
                let json = json!({"total": total, "data": data, "limit": limit, "offset": offset});
                let rendered = Bytes::from(serde_json::to_vec(&json).unwrap_or_default());
                if state.rendered.bytes + rendered.len() <= RENDERED_LIMIT {
                    state.rendered.bytes += rendered.len();
                    state.rendered.pages.insert(page_key, (rendered.clone(), iocs));
                }
                (rendered, iocs)
            }
        };
        let latency = state.options.page_latency.of_page(iocs);
        Ok(((StatusCode::OK, [(CONTENT_TYPE, "application/json")], rendered).into_response(), latency))
    };
    match run() {
        Ok((response, latency)) => {
            tokio::time::sleep(latency).await;
            response
        }
        Err(response) => response,
    }
}

async fn adversaries(
    State(shared): State<Shared>,
    Path(id): Path<u64>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let run = || -> Result<Response, Response> {
        let (limit, offset) = (number(&query, "limit", 1000)?, number(&query, "offset", 0)?);
        let Some(indicator) = lock(&shared).store.get(id) else {
            return Err(reply(StatusCode::NOT_FOUND, json!({"message": format!("No indicator with id {id}.")})));
        };
        let all = indicator["adversaries"].as_array().cloned().unwrap_or_default();
        let data: Vec<Value> = all.iter().skip(offset as usize).take(limit as usize).cloned().collect();
        Ok(reply(StatusCode::OK, json!({"total": all.len(), "data": data})))
    };
    run().unwrap_or_else(|response| response)
}
