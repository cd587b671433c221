//! The ThreatQ HTTP client: sign-in and token upkeep, bounded retries, error classification, and the read calls
//! (data collections and their indicators, streamed a page at a time).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::Stream;
use reqwest::header::{AUTHORIZATION, HeaderValue, LOCATION};
use reqwest::{Method, StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::pages::{self, Batch, FetchPage, Tally, Window};
use super::parse::{self, Answer};
use super::{ClientOptions, DataCollection, Error, Indicator, IndicatorRef, tls};
use crate::retry::{RetryLogic, RetryPolicy};

/// Ask ThreatQ to embed everything the export maps; recent versions leave attributes and sources out otherwise.
const WITH: &str = "attributes,adversaries,score,type,status,sources,tags";
const FIELDS: [&str; 5] = ["*", "attributes", "adversaries", "sources", "tags"];
const QUERY_PATH: &str = "/api/indicators/query";
const TOKEN_PATH: &str = "/api/token";
/// The largest page the UI's Batch Size allows.
const MAX_PAGE: u32 = 10_000;
/// The longest indicator value exported: far above any real IOC, and within what one lookup row (a syslog line on
/// the relay) carries.
const MAX_VALUE_BYTES: usize = 64 * 1024;

/// Retry and timeout knobs. The defaults suit a real instance; tests shorten the backoff.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Tries on 429, 5xx and transport errors: 6 in all (5 retries), backoff from 0.5 s up to 30 s, a
    /// `Retry-After` waited out up to 120 s.
    pub retry: RetryPolicy,
    pub connect_timeout: Duration,
    /// The longest silence while waiting for (part of) an answer.
    pub read_timeout: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            retry: RetryPolicy {
                max_attempts: 6,
                base_delay: Duration::from_millis(500),
                max_delay: Duration::from_secs(30),
                retry_after_cap: Duration::from_secs(120),
            },
            connect_timeout: Duration::from_secs(15),
            read_timeout: Duration::from_secs(120),
        }
    }
}

/// Which ThreatQ failures are tried again: 429 and 5xx, and transport errors other than a certificate the trust
/// refuses.
struct ThreatqRetry;

impl RetryLogic for ThreatqRetry {
    type Error = reqwest::Error;
    type Response = Reply;

    fn is_retriable_error(&self, error: &reqwest::Error) -> bool {
        crate::tls::rustls_cause(error).is_none()
    }

    fn should_retry_response(&self, reply: &Reply) -> bool {
        reply.status == StatusCode::TOO_MANY_REQUESTS || reply.status.is_server_error()
    }

    fn retry_after(&self, reply: &Reply) -> Option<Duration> {
        reply.retry_after
    }
}

/// A signed-in session with one ThreatQ instance. Clones share the session (its token).
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    /// `host[:port]`, for messages.
    host: String,
    client_id: String,
    username: String,
    password: SecretString,
    policy: Policy,
    auth: Arc<tokio::sync::Mutex<Auth>>,
    /// The pager's window of requests in flight, told of overload and of clean answers.
    window: Option<Arc<Window>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("base", &self.base.as_str()).field("username", &self.username).finish()
    }
}

#[derive(Default)]
struct Auth {
    tokens: Option<Tokens>,
    /// Bumped at every new token, so concurrent callers that all saw a 401 renew it only once.
    generation: u64,
}

struct Tokens {
    access: SecretString,
    refresh: Option<SecretString>,
    renew_at: Option<Instant>,
}

/// A final answer (after retries) before classification.
struct Reply {
    status: StatusCode,
    location: Option<String>,
    retry_after: Option<Duration>,
    body: Bytes,
}

enum Grant<'a> {
    Password,
    Refresh(&'a SecretString),
}

impl Client {
    pub fn new(options: ClientOptions) -> Result<Client, Error> {
        Client::with_policy(options, Policy::default())
    }

    /// A client with its own retry and timeout policy (tests use short backoffs).
    pub fn with_policy(options: ClientOptions, policy: Policy) -> Result<Client, Error> {
        let base = base_url(&options.host)?;
        let tls = tls::client_config(&options.host, options.ca_file.as_deref(), options.tls_verify)?;
        let http = build_http(tls, &policy)?;
        Ok(Client {
            http,
            host: base.host_str().map(|h| base.port().map_or(h.to_owned(), |p| format!("{h}:{p}"))).unwrap_or_default(),
            base,
            client_id: options.client_id,
            username: options.username,
            password: options.password,
            policy,
            auth: Arc::default(),
            window: None,
        })
    }

    /// `https://host[:port]/`.
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// Signs in with the password now (the other calls sign in on first use).
    pub async fn sign_in(&self) -> Result<(), Error> {
        let mut auth = self.auth.lock().await;
        self.store(&mut auth, self.token(Grant::Password).await?);
        Ok(())
    }

    /// ThreatQ's clock, from the HTTP `Date` header of an unauthenticated request (for `doctor`'s clock skew);
    /// `None` when the answer has no readable `Date`.
    pub async fn server_time(&self) -> Result<Option<chrono::DateTime<chrono::Utc>>, Error> {
        let response = self
            .http
            .get(self.base.clone())
            .send()
            .await
            .map_err(|e| Error::Transport { host: self.host.clone(), detail: describe(e) })?;
        let date = response.headers().get(reqwest::header::DATE).and_then(|v| v.to_str().ok());
        Ok(date.and_then(|d| chrono::DateTime::parse_from_rfc2822(d).ok()).map(|d| d.to_utc()))
    }

    /// The data collection named exactly `name`; when none is, the error lists up to three close names.
    pub async fn find_collection(&self, name: &str) -> Result<DataCollection, Error> {
        const PATH: &str = "/api/search/query";
        let list: Value = self.call(Method::GET, PATH, &[], None).await?;
        let items = list
            .get("data")
            .and_then(Value::as_array)
            .ok_or_else(|| Error::Garbage { path: PATH.into(), detail: "no \"data\" list".into() })?;
        let name_of = |c: &Value| c.get("name").and_then(Value::as_str).map(str::to_owned);
        match items.iter().find(|c| name_of(c).as_deref() == Some(name)) {
            Some(found) => parse::data_collection(PATH, found),
            None => {
                let names: Vec<String> = items.iter().filter_map(name_of).collect();
                let closest = parse::closest_names(name, names.iter().map(String::as_str));
                Err(Error::CollectionNotFound { name: name.to_owned(), closest })
            }
        }
    }

    /// The collection's indicators, a page at a time, by offset (`sort=id`), one request at a time.
    pub fn indicators<'a>(
        &'a self,
        collection: &DataCollection,
        page_size: u32,
    ) -> impl Stream<Item = Result<Vec<Indicator>, Error>> + Send + use<'a> {
        use futures::TryStreamExt as _;
        self.pages(collection, page_size, 1).map_ok(|batch| batch.indicators)
    }

    /// The collection's pages by offset (`sort=id`), in order, with up to `in_flight` requests outstanding
    /// (fewer while ThreatQ answers 429, 503 or times out). Pages are fetched by a task of their own, ahead of
    /// the consumer by at most a few pages.
    ///
    /// Offsets shift when the collection changes while it is read: a row would be read twice or, worse, never
    /// (and then deleted from the lookup). Pages come sorted by id, so a shift shows as an id not above the
    /// previous page's last, or as a `total` that moved; the read then fails and the next run reads it again.
    /// The check runs on the pages in order, so it is the same at any number of requests in flight.
    pub fn pages(
        &self,
        collection: &DataCollection,
        page_size: u32,
        in_flight: u32,
    ) -> impl Stream<Item = Result<Batch, Error>> + Send + use<> {
        self.pages_into(collection, page_size, in_flight, |list: &mut Vec<Indicator>, ioc| list.push(ioc.into_owned()))
    }

    /// [`Client::pages`], each indicator handed to `make` as it is read, with the page's `P` to add it to. That
    /// runs on the task that fetched the page, with the indicator borrowing from the page's bytes, so that only
    /// what `make` keeps is allocated, and it is allocated where it is built.
    pub fn pages_into<P, F>(
        &self,
        collection: &DataCollection,
        page_size: u32,
        in_flight: u32,
        make: F,
    ) -> impl Stream<Item = Result<Batch<P>, Error>> + Send + use<P, F>
    where
        P: Default + Send + 'static,
        F: Fn(&mut P, IndicatorRef<'_>) + Send + Sync + 'static,
    {
        use futures::StreamExt as _;
        let window = Arc::new(Window::new(in_flight));
        let limit = page_size.clamp(1, MAX_PAGE);
        let fetcher = PageFetcher {
            client: Client { window: Some(window.clone()), ..self.clone() },
            body: Arc::new(json!({"criteria": collection.criteria, "filters": collection.filters, "fields": FIELDS})),
            limit: limit.to_string(),
            make: Arc::new(make),
            page: std::marker::PhantomData,
        };
        let mut paging = Paging { name: collection.name.clone(), total: None, last_id: None };
        pages::in_order(fetcher, u64::from(limit), window).map(move |batch| {
            let batch = batch?;
            paging.check(&batch)?;
            Ok(batch)
        })
    }

    /// An authenticated call whose 2xx answer is decoded as `T`: signs in on first use, renews the token once
    /// on 401 and retries, and turns every other failure into an [`Error`] naming `path`.
    pub(super) async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<T, Error> {
        let read = |answer: &[u8]| match parse::errors_in_success(answer) {
            Some(message) => Ok(Answer::Errors(message)),
            None => serde_json::from_slice(answer).map(Answer::Value),
        };
        self.call_with(method, path, query, body, read).await
    }

    /// [`Client::call`], with the 2xx answer decoded by `read`, which also tells whether it carries `errors`.
    async fn call_with<T>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
        read: impl FnOnce(&[u8]) -> Result<Answer<T>, serde_json::Error>,
    ) -> Result<T, Error> {
        let url = self.url(path)?;
        let mut renewed = false;
        loop {
            let (mut bearer, generation) = self.bearer().await?;
            bearer.set_sensitive(true);
            tracing::debug!("ThreatQ {method} {path}");
            let reply = self
                .exchange(path, || {
                    let request = self.http.request(method.clone(), url.clone()).query(query);
                    let request = request.header(AUTHORIZATION, bearer.clone());
                    match body {
                        Some(body) => request.json(body),
                        None => request,
                    }
                })
                .await?;
            if reply.status == StatusCode::UNAUTHORIZED && !renewed {
                tracing::info!("ThreatQ {path}: token refused (HTTP 401); signing in again");
                renewed = true;
                self.renew_after(generation).await?;
                continue;
            }
            return self.decode(path, reply, read);
        }
    }

    fn decode<T>(
        &self,
        path: &str,
        reply: Reply,
        read: impl FnOnce(&[u8]) -> Result<Answer<T>, serde_json::Error>,
    ) -> Result<T, Error> {
        if !reply.status.is_success() {
            return Err(status_error(path, &reply));
        }
        match read(&reply.body) {
            Ok(Answer::Value(value)) => Ok(value),
            Ok(Answer::Errors(message)) => Err(Error::Refused { path: path.to_owned(), message }),
            Err(e) => Err(garbage(path, e, &reply.body)),
        }
    }

    fn url(&self, path: &str) -> Result<Url, Error> {
        self.base.join(path).map_err(|e| Error::Host { host: self.host.clone(), problem: format!("{path}: {e}") })
    }

    /// The current access token as a header value, signing in or renewing first when needed.
    async fn bearer(&self) -> Result<(HeaderValue, u64), Error> {
        let mut auth = self.auth.lock().await;
        let fresh = auth.tokens.as_ref().map(|t| t.renew_at.is_none_or(|at| Instant::now() < at));
        match fresh {
            Some(true) => {}
            Some(false) => self.renew(&mut auth).await?,
            None => self.store(&mut auth, self.token(Grant::Password).await?),
        }
        let access = auth.tokens.as_ref().map(|t| t.access.expose_secret()).unwrap_or_default();
        let value = HeaderValue::from_str(&format!("Bearer {access}")).map_err(|_| Error::Garbage {
            path: TOKEN_PATH.into(),
            detail: "the access token holds characters not allowed in an HTTP header".into(),
        })?;
        Ok((value, auth.generation))
    }

    /// Renews the token after a 401, unless another caller already did since `seen`.
    async fn renew_after(&self, seen: u64) -> Result<(), Error> {
        let mut auth = self.auth.lock().await;
        if auth.generation == seen { self.renew(&mut auth).await } else { Ok(()) }
    }

    /// The refresh token first; a new password sign-in when there is none or it is refused.
    async fn renew(&self, auth: &mut Auth) -> Result<(), Error> {
        if let Some(refresh) = auth.tokens.as_ref().and_then(|t| t.refresh.clone()) {
            match self.token(Grant::Refresh(&refresh)).await {
                Ok(tokens) => {
                    self.store(auth, tokens);
                    return Ok(());
                }
                Err(e) => tracing::info!("ThreatQ token refresh failed ({e}); signing in again"),
            }
        }
        self.store(auth, self.token(Grant::Password).await?);
        Ok(())
    }

    fn store(&self, auth: &mut Auth, tokens: Tokens) {
        auth.tokens = Some(tokens);
        auth.generation += 1;
    }

    async fn token(&self, grant: Grant<'_>) -> Result<Tokens, Error> {
        let url = self.url(TOKEN_PATH)?;
        let reply = self
            .exchange(TOKEN_PATH, || {
                let request = self.http.post(url.clone());
                match grant {
                    Grant::Password => request
                        .query(&[("grant_type", "password"), ("client_id", &self.client_id)])
                        .json(&json!({"email": self.username, "password": self.password.expose_secret()})),
                    Grant::Refresh(refresh) => request.query(&[
                        ("grant_type", "refresh_token"),
                        ("refresh_token", refresh.expose_secret()),
                        ("client_id", &self.client_id),
                    ]),
                }
            })
            .await?;
        let refused = |message: String| Error::SignIn { host: self.host.clone(), message };
        if matches!(reply.status, StatusCode::BAD_REQUEST | StatusCode::UNAUTHORIZED) {
            return Err(refused(parse::error_message(&reply.body).unwrap_or_else(|| format!("HTTP {}", reply.status))));
        }
        if !reply.status.is_success() {
            return Err(status_error(TOKEN_PATH, &reply));
        }
        if let Some(message) = parse::errors_in_success(&reply.body) {
            return Err(refused(message));
        }
        // Read by hand: serde's messages quote the offending value, which here would be a token.
        let garbage = |detail: &str| Error::Garbage { path: TOKEN_PATH.into(), detail: detail.into() };
        let answer: Value = serde_json::from_slice(&reply.body).map_err(|_| garbage("the answer is not JSON"))?;
        let text =
            |key: &str| answer.get(key).and_then(Value::as_str).filter(|s| !s.is_empty()).map(SecretString::from);
        let access = text("access_token").ok_or_else(|| garbage("the answer has no access_token"))?;
        let renew_at = answer.get("expires_in").and_then(Value::as_u64).map(|secs| {
            // Renew a little early so a page request does not race the expiry.
            let lifetime = Duration::from_secs(secs);
            Instant::now() + lifetime - (lifetime / 10).min(Duration::from_secs(60))
        });
        tracing::debug!("signed in to ThreatQ at {}", self.host);
        Ok(Tokens { access, refresh: text("refresh_token"), renew_at })
    }

    /// Sends what `build` makes, retrying 429, 5xx and transport failures with backoff (honouring
    /// `Retry-After`), and returns the final answer with its whole body.
    async fn exchange(&self, path: &str, build: impl Fn() -> reqwest::RequestBuilder) -> Result<Reply, Error> {
        let policy = &self.policy.retry;
        let mut tries = 0;
        loop {
            tries += 1;
            let (wait, why) = match self.attempt(build()).await {
                Ok(reply) if !ThreatqRetry.should_retry_response(&reply) => {
                    if let Some(window) = self.window.as_ref().filter(|_| tries == 1 && reply.status.is_success()) {
                        window.clean();
                    }
                    return Ok(reply);
                }
                Ok(reply) => {
                    let retry_after = ThreatqRetry.retry_after(&reply);
                    if let Some(window) = self.window.as_ref().filter(|_| overloaded(reply.status)) {
                        window.congested(retry_after.map(|wait| wait.min(policy.retry_after_cap)));
                    }
                    if policy.spent(tries) {
                        return Err(status_error(path, &reply));
                    }
                    (policy.wait(tries - 1, retry_after), format!("HTTP {}", reply.status.as_u16()))
                }
                Err(e) => {
                    if let Some(window) = self.window.as_ref().filter(|_| e.is_timeout()) {
                        window.congested(None);
                    }
                    let transient = ThreatqRetry.is_retriable_error(&e);
                    let detail = describe(e);
                    // A certificate the configured trust refuses will not pass on a retry; the user fixes it.
                    if !transient {
                        return Err(Error::Tls(format!(
                            "cannot verify ThreatQ at {}: {detail}; set THREATQ_CA_FILE to the PEM bundle that signs \
                             its certificate",
                            self.host
                        )));
                    }
                    if policy.spent(tries) {
                        return Err(Error::Transport { host: self.host.clone(), detail });
                    }
                    (policy.wait(tries - 1, None), detail)
                }
            };
            tracing::warn!(
                "ThreatQ {path}: {why}; retry {tries} of {} in {:.1} s",
                policy.max_attempts.saturating_sub(1),
                wait.as_secs_f64()
            );
            tokio::time::sleep(wait).await;
        }
    }

    async fn attempt(&self, request: reqwest::RequestBuilder) -> Result<Reply, reqwest::Error> {
        let response = request.send().await?;
        let status = response.status();
        let retry_after = crate::retry::retry_after(response.headers());
        let location = response.headers().get(LOCATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let body = response.bytes().await?;
        Ok(Reply { status, location, retry_after, body })
    }
}

/// What [`Client::pages`] remembers between pages to see the collection shift under it.
struct Paging {
    name: String,
    total: Option<u64>,
    last_id: Option<u64>,
}

impl Paging {
    fn check<P>(&mut self, batch: &Batch<P>) -> Result<(), Error> {
        let changed = |detail: String| Error::Changed { name: self.name.clone(), detail };
        match (self.total, batch.total) {
            (Some(before), Some(now)) if before != now => {
                return Err(changed(format!("its total went from {before} to {now} between pages")));
            }
            (None, now) => self.total = now,
            _ => {}
        }
        if let (Some(last), Some(first)) = (self.last_id, batch.tally.first_id)
            && first <= last
        {
            return Err(changed(format!("indicator id {first} came again after id {last}")));
        }
        self.last_id = batch.tally.last_id.or(self.last_id);
        if let Some((id, bytes)) = batch.tally.oversized {
            return Err(Error::Oversized { id, bytes, limit: MAX_VALUE_BYTES });
        }
        Ok(())
    }
}

struct PageFetcher<P, F> {
    client: Client,
    body: Arc<Value>,
    limit: String,
    make: Arc<F>,
    page: std::marker::PhantomData<fn() -> P>,
}

// By hand: a derive would ask `P: Clone` and `F: Clone`.
impl<P, F> Clone for PageFetcher<P, F> {
    fn clone(&self) -> Self {
        PageFetcher {
            client: self.client.clone(),
            body: self.body.clone(),
            limit: self.limit.clone(),
            make: self.make.clone(),
            page: std::marker::PhantomData,
        }
    }
}

impl<P, F> FetchPage for PageFetcher<P, F>
where
    P: Default + Send + 'static,
    F: Fn(&mut P, IndicatorRef<'_>) + Send + Sync + 'static,
{
    type Page = P;

    fn fetch(&self, offset: u64) -> impl Future<Output = Result<Batch<P>, Error>> + Send + 'static {
        let this = self.clone();
        async move {
            let query = [
                ("limit", this.limit.clone()),
                ("offset", offset.to_string()),
                ("sort", "id".to_owned()),
                ("with", WITH.to_owned()),
            ];
            let (mut indicators, mut tally) = (P::default(), Tally::default());
            let read = |answer: &[u8]| {
                parse::page(answer, |ioc| {
                    tally.note(ioc.id, ioc.value.len(), MAX_VALUE_BYTES);
                    (this.make)(&mut indicators, ioc);
                })
            };
            let total = this.client.call_with(Method::POST, QUERY_PATH, &query, Some(&this.body), read).await?;
            Ok(Batch { indicators, total, tally })
        }
    }
}

fn build_http(tls: rustls::ClientConfig, policy: &Policy) -> Result<reqwest::Client, Error> {
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(policy.connect_timeout)
        .read_timeout(policy.read_timeout)
        .user_agent(concat!("tq-conn-devo-ioc-exporter/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Error::Tls(describe(e)))
}

/// The answers that say ThreatQ has more than it can take: fewer requests in flight.
fn overloaded(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE
}

/// The error's whole cause chain, without the URL, whose query may hold a refresh token.
fn describe(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut detail = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        detail.push_str(": ");
        detail.push_str(&cause.to_string());
        source = cause.source();
    }
    detail
}

/// The error for a 2xx answer that is not the JSON asked for.
fn garbage(path: &str, e: serde_json::Error, body: &[u8]) -> Error {
    // A proxy or a sign-on portal in the way answers 200 with a page of its own.
    let html = body.trim_ascii_start().first() == Some(&b'<');
    let detail = if html {
        "an HTML page (a proxy or a login page in the way? check the ThreatQ Host and HTTPS_PROXY/NO_PROXY)".to_owned()
    } else {
        format!("{e} (after {} bytes received)", body.len())
    };
    Error::Garbage { path: path.to_owned(), detail }
}

fn status_error(path: &str, reply: &Reply) -> Error {
    let status = reply.status;
    let said = parse::error_message(&reply.body).unwrap_or_else(|| {
        let text = String::from_utf8_lossy(&reply.body);
        let text: String = text.chars().take(200).collect();
        if text.trim().is_empty() { status.canonical_reason().unwrap_or("no message").to_owned() } else { text }
    });
    let message = match status.as_u16() {
        300..=399 => format!(
            "redirected to {}; API calls never follow redirects (check the ThreatQ Host)",
            reply.location.as_deref().unwrap_or("an unnamed place")
        ),
        401 => format!("{said} (the token was refused again right after signing in)"),
        403 => format!("{said} (the ThreatQ user's role lacks permission for this call)"),
        404 => format!("{said} (no such object)"),
        _ => said,
    };
    Error::Http { path: path.to_owned(), status: status.as_u16(), message }
}

/// `host`, `host:port` or `https://host[:port]`, as `https://host[:port]/`. Plain HTTP is refused: the password
/// and the tokens would cross the network readable.
fn base_url(host: &str) -> Result<Url, Error> {
    let problem = |problem: &str| Error::Host { host: host.to_owned(), problem: problem.to_owned() };
    let trimmed = host.trim().trim_end_matches('/');
    if trimmed.is_empty() {
        return Err(problem("is empty"));
    }
    let lower = trimmed.to_ascii_lowercase();
    let with_scheme = if lower.starts_with("https://") {
        trimmed.to_owned()
    } else if lower.starts_with("http://") {
        return Err(problem("plain http:// is refused; ThreatQ is reached over https://"));
    } else if trimmed.contains("://") {
        return Err(problem("only https:// is supported"));
    } else {
        format!("https://{trimmed}")
    };
    let url = Url::parse(&with_scheme).map_err(|e| problem(&format!("not a host name with an optional port ({e})")))?;
    // The URL parser takes "host:" as the default port; a stray ':' is a typo to show, not to guess.
    if with_scheme["https://".len()..].split(['/', '?', '#']).next().is_some_and(|a| a.ends_with(':')) {
        return Err(problem("has a ':' but no port after it"));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(problem("give only the host name and an optional port, no path"));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_forms() {
        for (given, expected) in [
            ("tq.example.com", "https://tq.example.com/"),
            ("tq.example.com:8443", "https://tq.example.com:8443/"),
            ("https://tq.example.com/", "https://tq.example.com/"),
            ("HTTPS://127.0.0.1:9443", "https://127.0.0.1:9443/"),
        ] {
            assert_eq!(base_url(given).expect(given).as_str(), expected);
        }
        for refused in [
            "http://tq.example.com",
            "",
            "ftp://x",
            "tq.example.com/api",
            "tq:99999",
            "[::1]8443",
            "tq:",
            "tq:+1",
            "::1:8443",
        ] {
            assert!(matches!(base_url(refused), Err(Error::Host { .. })), "{refused:?}");
        }
    }
}
