//! Upload method `relay`: devo-sdk's `Lookup` syslog lines over mutual TLS to a Devo relay (legacy, kept complete
//! and byte-compatible). Each upload is START, the rows, END on one connection; any failure drops the connection
//! and redoes the whole upload under a new run id, and a failed upload never sends END, so Devo never applies a
//! truncated table.

pub mod encode;

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::devo::settings::{DevoSettings, UploadMethod, label};
use crate::devo::{self, Delivery, Probe, Receipt, RowSource, Table, pem};
use crate::field::ConfigError;
use crate::retry::{RetryLogic, RetryPolicy};
use crate::tls::SetupError;
use encode::{Action, EncoderMode, LookupEncoder};

/// Lines are gathered up to this size before a write, so a large upload is not one TLS record per row.
const WRITE_BATCH: usize = 64 * 1024;

/// The unix time as a float, like Python's `time.time()`; the run id is made from it.
pub type Clock = Arc<dyn Fn() -> f64 + Send + Sync>;

/// Where and how to upload: validated from the UI by [`RelayConfig::from_settings`], then tuned with the builder
/// methods (tests set the delays to zero and fix the hostname and clock).
#[derive(Clone)]
pub struct RelayConfig {
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    tls: Arc<rustls::ClientConfig>,
    mode: EncoderMode,
    hostname: String,
    /// The Devo domain the client certificate names (empty when it names none).
    domain: String,
    clock: Clock,
    start_end_delay: Duration,
    progress_timeout: Duration,
    retry: RetryPolicy,
}

impl std::fmt::Debug for RelayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayConfig")
            .field("endpoint", &self.endpoint())
            .field("mode", &self.mode)
            .field("hostname", &self.hostname)
            .finish_non_exhaustive()
    }
}

impl RelayConfig {
    /// The relay of the region (port 443), or the "Custom Devo Endpoint" `host[:port]`; the certificate, key and
    /// chain CA from the UI, checked now so that every mistake names its field.
    pub fn from_settings(settings: &DevoSettings) -> Result<Self, devo::Error> {
        let (host, port) = relay_endpoint(settings)?;
        let certificate = settings.certificate.as_deref().ok_or_else(|| ConfigError::missing(label::CERTIFICATE))?;
        let key = settings.private_key.as_ref().ok_or_else(|| ConfigError::missing(label::PRIVATE_KEY))?;
        let chain = settings.chain_ca.as_deref().ok_or_else(|| ConfigError::missing(label::CHAIN_CA))?;
        let identity = pem::client_identity(certificate, key)?;
        let roots = pem::trust_roots(chain)?;
        let server_name = ServerName::try_from(host.clone()).map_err(|_| {
            ConfigError::invalid(label::CUSTOM_ENDPOINT, format!("{host:?} is not a host name or IP address"))
        })?;
        let tls = crate::tls::client_config(crate::tls::Trust::Only(roots), Some(identity)).map_err(|e| match e {
            SetupError::Identity(e) => {
                ConfigError::invalid(label::PRIVATE_KEY, format!("cannot be used for TLS ({e})"))
            }
            SetupError::NoRoots => ConfigError::invalid(label::CHAIN_CA, "holds no certificate"),
        })?;
        Ok(Self {
            host,
            port,
            server_name,
            tls: Arc::new(tls),
            mode: EncoderMode::Safe,
            hostname: gethostname::gethostname().to_string_lossy().into_owned(),
            domain: pem::domain_from_certificate(certificate).unwrap_or_default(),
            clock: Arc::new(|| SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64()),
            start_end_delay: Duration::from_secs(5),
            progress_timeout: Duration::from_secs(30),
            retry: RetryPolicy {
                max_attempts: 3,
                base_delay: Duration::from_secs(2),
                max_delay: Duration::from_secs(8),
                // A relay sends no Retry-After.
                retry_after_cap: Duration::ZERO,
            },
        })
    }

    /// The SDK waits this long after START and before END "to avoid sync problems" (default 5 s).
    pub fn start_end_delay(mut self, delay: Duration) -> Self {
        self.start_end_delay = delay;
        self
    }

    /// [`EncoderMode::Safe`] unless a byte-parity check asks for the SDK's.
    pub fn encoder_mode(mut self, mode: EncoderMode) -> Self {
        self.mode = mode;
        self
    }

    /// The syslog HOSTNAME of every line (default: this machine's name).
    pub fn hostname(mut self, hostname: impl Into<String>) -> Self {
        self.hostname = hostname.into();
        self
    }

    /// Where run ids take their time from (default: the system clock).
    pub fn clock(mut self, clock: impl Fn() -> f64 + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// An attempt fails when the relay takes no bytes for this long (default 30 s). A slow but steady relay never
    /// trips it, however long the upload.
    pub fn progress_timeout(mut self, timeout: Duration) -> Self {
        self.progress_timeout = timeout;
        self
    }

    /// How many times an upload is tried in all (default 3).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.retry.max_attempts = attempts.max(1);
        self
    }

    /// The first backoff ceiling before trying again (default 2 s, doubling up to 8 s, full jitter).
    pub fn base_delay(mut self, delay: Duration) -> Self {
        self.retry.base_delay = delay;
        self
    }

    pub fn endpoint(&self) -> String {
        match self.server_name {
            ServerName::IpAddress(rustls_pki_types::IpAddr::V6(_)) => format!("[{}]:{}", self.host, self.port),
            _ => format!("{}:{}", self.host, self.port),
        }
    }
}

/// The relay for the region (from [`Region::hosts`]), port 443 (Devo's documented collectors), or the custom
/// `host[:port]`.
fn relay_endpoint(settings: &DevoSettings) -> Result<(String, u16), ConfigError> {
    match settings.region.hosts() {
        Some(hosts) => Ok((hosts.relay.to_owned(), 443)),
        None => {
            let custom =
                settings.custom_endpoint.as_deref().ok_or_else(|| ConfigError::missing(label::CUSTOM_ENDPOINT))?;
            parse_host_port(custom.trim())
        }
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`, nothing else: a stray character must not silently mean port 443.
fn parse_host_port(endpoint: &str) -> Result<(String, u16), ConfigError> {
    let form = "for the X.509 relay give host:port (e.g. relay.example.com:443 or [2001:db8::1]:443)";
    let invalid = |problem: String| ConfigError::invalid(label::CUSTOM_ENDPOINT, format!("{problem}; {form}"));
    if endpoint.contains("://") || endpoint.contains('/') {
        return Err(invalid(format!("{endpoint:?} is a URL")));
    }
    if endpoint.chars().any(char::is_whitespace) {
        return Err(invalid(format!("{endpoint:?} holds a space")));
    }
    let (host, port) = match endpoint.strip_prefix('[') {
        Some(v6) => {
            let (host, rest) =
                v6.split_once(']').ok_or_else(|| invalid(format!("{endpoint:?} lacks its closing ]")))?;
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(invalid(format!("{host:?} in brackets is not an IPv6 address")));
            }
            match rest {
                "" => (host, None),
                _ => (
                    host,
                    Some(
                        rest.strip_prefix(':')
                            .ok_or_else(|| invalid(format!("{endpoint:?}: \"]\" must be followed by \":port\"")))?,
                    ),
                ),
            }
        }
        None => match endpoint.split_once(':') {
            Some((_, port)) if port.contains(':') => {
                return Err(invalid(format!("{endpoint:?}: put an IPv6 address in brackets")));
            }
            Some((host, port)) => (host, Some(port)),
            None => (endpoint, None),
        },
    };
    let port = match port {
        None => 443,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|n| *n != 0 && p.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| invalid(format!("port {p:?} is not 1-65535")))?,
    };
    if host.is_empty() {
        return Err(invalid(format!("{endpoint:?} has no host")));
    }
    if host.contains(['[', ']']) {
        return Err(invalid(format!("{endpoint:?} has a stray bracket")));
    }
    Ok((host.to_owned(), port))
}

/// The relay's certificate failed verification against "Devo X.509 Chain CA": a value to fix (exit 3), which no
/// retry mends.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UntrustedRelay(String);

/// Uploads through a Devo relay; see the module documentation.
pub struct RelayUploader {
    config: RelayConfig,
}

impl RelayUploader {
    pub fn new(config: RelayConfig) -> Self {
        Self { config }
    }

    fn io_error(&self, source: io::Error) -> devo::Error {
        if let Some(UntrustedRelay(why)) = source.get_ref().and_then(|e| e.downcast_ref::<UntrustedRelay>()) {
            return ConfigError::invalid(label::CHAIN_CA, why.clone()).into();
        }
        devo::Error::Io { endpoint: self.config.endpoint(), source }
    }

    /// One attempt on one connection; returns the rows sent.
    async fn attempt(
        &self,
        encoder: &LookupEncoder,
        table: &Table,
        upserts: &dyn RowSource,
        deletes: Option<&dyn RowSource>,
    ) -> Result<u64, devo::Error> {
        let mut conn = self.connect().await.map_err(|e| self.io_error(e))?;
        let mut lines = String::with_capacity(WRITE_BATCH + 1024);
        encoder.start(&mut lines);
        conn.send(&mut lines).await.map_err(|e| self.io_error(e))?;
        self.pause().await;
        let mut sent = 0u64;
        let mut upserts = upserts.cursor();
        while let Some(row) = upserts.next_row() {
            let row = row.map_err(devo::Error::Rows)?;
            if row.len() != table.columns.len() {
                return Err(devo::Error::Rows(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "row {} has {} values, lookup {} has {} columns",
                        sent + 1,
                        row.len(),
                        table.name,
                        table.columns.len()
                    ),
                )));
            }
            encoder.row(row, &mut lines);
            sent += 1;
            if lines.len() >= WRITE_BATCH {
                conn.send(&mut lines).await.map_err(|e| self.io_error(e))?;
            }
        }
        // A delete carries the key and empty other values.
        let empty = table.columns.len().saturating_sub(1);
        let mut deletes = deletes.map(|d| d.cursor());
        while let Some(row) = deletes.as_mut().and_then(|d| d.next_row()) {
            let row = row.map_err(devo::Error::Rows)?;
            let key = row.get(0).ok_or_else(|| {
                devo::Error::Rows(io::Error::new(io::ErrorKind::InvalidData, "a row to delete has no key"))
            })?;
            encoder.delete(std::iter::once(key).chain(std::iter::repeat_n("", empty)), &mut lines);
            sent += 1;
            if lines.len() >= WRITE_BATCH {
                conn.send(&mut lines).await.map_err(|e| self.io_error(e))?;
            }
        }
        conn.send(&mut lines).await.map_err(|e| self.io_error(e))?;
        self.pause().await;
        encoder.end(&mut lines);
        conn.send(&mut lines).await.map_err(|e| self.io_error(e))?;
        conn.finish().await.map_err(|e| self.io_error(e))?;
        Ok(sent)
    }

    async fn pause(&self) {
        if !self.config.start_end_delay.is_zero() {
            tokio::time::sleep(self.config.start_end_delay).await;
        }
    }

    async fn connect(&self) -> io::Result<Connection> {
        let config = &self.config;
        let tcp =
            tokio::time::timeout(config.progress_timeout, TcpStream::connect((config.host.as_str(), config.port)))
                .await
                .map_err(|_| {
                    io::Error::new(io::ErrorKind::TimedOut, "no TCP connection within the progress timeout")
                })??;
        tcp.set_nodelay(true)?;
        let progress = DeliveryMeter::new(tcp.as_raw_fd(), config.progress_timeout);
        let watched = Watched { inner: tcp, written: progress.written.clone(), read: progress.read.clone() };
        let connector = TlsConnector::from(config.tls.clone());
        let tls = progress
            .watch("TLS handshake", connector.connect(config.server_name.clone(), watched))
            .await
            .map_err(|e| {
                if let Some(rustls::Error::InvalidCertificate(why)) = crate::tls::rustls_cause(&e) {
                    let untrusted = format!("does not trust the relay's certificate ({why:?})");
                    return io::Error::new(io::ErrorKind::InvalidData, UntrustedRelay(untrusted));
                }
                io::Error::new(
                    e.kind(),
                    format!(
                        "TLS handshake failed ({e}): check \"Devo X.509 Chain CA\" and that the relay accepts \
                         \"Devo X.509 Certificate\""
                    ),
                )
            })?;
        let (reader, writer) = tokio::io::split(tls);
        Ok(Connection { writer, closed: tokio::spawn(wait_for_close(reader)), progress })
    }
}

/// Only the network is worth another try on the relay; bad rows stay bad. The relay never answers, so it has
/// no response to classify.
struct RelayRetry;

impl RetryLogic for RelayRetry {
    type Error = devo::Error;
    type Response = std::convert::Infallible;

    fn is_retriable_error(&self, error: &devo::Error) -> bool {
        matches!(error, devo::Error::Io { .. })
    }

    fn should_retry_response(&self, response: &std::convert::Infallible) -> bool {
        match *response {}
    }
}

#[async_trait]
impl devo::Uploader for RelayUploader {
    async fn deliver(&self, table: &Table, delivery: Delivery<'_>) -> Result<Receipt, devo::Error> {
        table.check()?;
        let (action, upserts, deletes) = match delivery {
            Delivery::Full(rows) => (Action::Full, rows, None),
            Delivery::Changes { upserts, deletes } => (Action::Inc, upserts, Some(deletes)),
        };
        let mut attempts = 0;
        loop {
            attempts += 1;
            let run_id = encode::run_id((self.config.clock)(), &table.name);
            let encoder = LookupEncoder::new(table, action, run_id, &self.config.hostname, self.config.mode);
            match self.attempt(&encoder, table, upserts, deletes).await {
                Ok(rows_sent) => {
                    return Ok(Receipt { rows_sent, attempts, reference: encoder.run_id().to_owned() });
                }
                Err(e) if RelayRetry.is_retriable_error(&e) && !self.config.retry.spent(attempts) => {
                    tracing::warn!(
                        run_id = encoder.run_id(),
                        "relay upload attempt {attempts} failed, redoing it whole: {e}"
                    );
                    tokio::time::sleep(self.config.retry.wait(attempts - 1, None)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A relay cannot be asked what a lookup holds.
    async fn inspect(&self, _table: &Table) -> Result<devo::Inspection, devo::Error> {
        Ok(devo::Inspection::default())
    }

    fn describe(&self) -> String {
        format!("Devo relay {} (X.509, {:?} encoding)", self.config.endpoint(), self.config.mode)
    }

    fn target(&self) -> devo::Target {
        devo::Target {
            method: UploadMethod::Relay,
            endpoint: self.config.endpoint(),
            domain: self.config.domain.clone(),
        }
    }
}

/// How long each step of `doctor`'s handshake may take.
const PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(10);

/// `doctor`'s checks of the relay settings: the certificate's days to expiry, the key against the certificate,
/// the chain CA; then, when those hold, TCP and a TLS handshake with the client certificate against the
/// configured relay, closed at once: no line reaches the relay.
pub async fn preflight(settings: &DevoSettings) -> Vec<Probe> {
    let mut probes = Vec::new();
    let mut push =
        |check, outcome: Result<String, ConfigError>| probes.push(Probe::new(check, outcome.map_err(Into::into)));
    match required(settings.certificate.as_deref(), label::CERTIFICATE)
        .and_then(|pem| pem::certificates(label::CERTIFICATE, pem))
    {
        Ok(certificates) => {
            push(
                "Devo certificate",
                pem::expiry(&certificates[0]).map(|(day, left)| {
                    let soon = if left < pem::EXPIRY_WARNING_DAYS { ": renew it in Devo soon" } else { "" };
                    format!("expires on {day}, in {left} days{soon}")
                }),
            );
            let key = settings.private_key.as_ref().ok_or_else(|| ConfigError::missing(label::PRIVATE_KEY));
            push(
                "Devo private key",
                key.and_then(|key| pem::identity(certificates, key)).map(|_| "matches the certificate".into()),
            );
        }
        Err(e) => push("Devo certificate", Err(e)),
    }
    let chain = required(settings.chain_ca.as_deref(), label::CHAIN_CA).and_then(pem::trust_roots);
    push("Devo chain CA", chain.map(|roots| format!("certificates to trust: {}", roots.len())));
    if probes.iter().any(|p| p.outcome.is_err()) {
        return probes;
    }
    match RelayConfig::from_settings(settings) {
        Ok(config) => probes.extend(handshake(&config).await),
        Err(e) => probes.push(Probe::new("Devo relay endpoint", Err(e))),
    }
    probes
}

fn required<'a>(value: Option<&'a str>, field: &str) -> Result<&'a str, ConfigError> {
    value.ok_or_else(|| ConfigError::missing(field))
}

/// TCP, TLS with the client certificate, then close_notify and a wait for the relay to close: a relay that
/// refuses the certificate says so with an alert, which TLS 1.3 delivers only after the client's handshake.
async fn handshake(config: &RelayConfig) -> Vec<Probe> {
    let endpoint = config.endpoint();
    let failed = |source: io::Error| Err(devo::Error::Io { endpoint: endpoint.clone(), source });
    let timed = |what: &str| {
        let message = format!("no answer within {} s while {what}", PREFLIGHT_TIMEOUT.as_secs());
        move |_| io::Error::new(io::ErrorKind::TimedOut, message)
    };
    let tcp = tokio::time::timeout(PREFLIGHT_TIMEOUT, TcpStream::connect((config.host.as_str(), config.port)))
        .await
        .map_err(timed("connecting"))
        .and_then(|connected| connected);
    let tcp = match tcp {
        Ok(tcp) => tcp,
        Err(e) => {
            let hint = io::Error::new(
                e.kind(),
                format!("cannot connect ({e}): check \"Custom Devo Endpoint\" or the region, and the firewall"),
            );
            return vec![Probe::new("Devo relay connection", failed(hint))];
        }
    };
    let mut probes = vec![Probe::new("Devo relay connection", Ok(format!("{endpoint} answers")))];
    let connector = TlsConnector::from(config.tls.clone());
    let tls = tokio::time::timeout(PREFLIGHT_TIMEOUT, connector.connect(config.server_name.clone(), tcp))
        .await
        .map_err(timed("in the TLS handshake"))
        .and_then(|connected| connected);
    let mut tls = match tls {
        Ok(tls) => tls,
        Err(e) if matches!(rustls_error(&e), Some(rustls::Error::InvalidCertificate(_))) => {
            let untrusted = io::Error::new(
                e.kind(),
                format!("the relay's certificate is not trusted ({e}): check \"Devo X.509 Chain CA\""),
            );
            probes.push(Probe::new("Devo relay trust", failed(untrusted)));
            return probes;
        }
        // Not a verdict on the relay's certificate: whether it was trusted is not known.
        Err(e) => {
            probes.push(Probe::new("Devo relay handshake", failed(refused(e))));
            return probes;
        }
    };
    probes.push(Probe::new("Devo relay trust", Ok("the chain CA trusts the relay's certificate".into())));
    let closed = async {
        let shut = tls.shutdown().await;
        let mut scratch = [0u8; 1024];
        loop {
            match tls.read(&mut scratch).await {
                Ok(0) => return shut,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return shut,
                Err(e) => return Err(e),
            }
        }
    };
    let closed = tokio::time::timeout(PREFLIGHT_TIMEOUT, closed).await.map_err(timed("closing")).and_then(|c| c);
    probes.push(Probe::new(
        "Devo relay handshake",
        closed.map(|()| "the relay accepted the certificate; no data was sent".into()).or_else(|e| failed(refused(e))),
    ));
    probes
}

fn refused(e: io::Error) -> io::Error {
    io::Error::new(
        e.kind(),
        format!(
            "the relay refused the TLS session ({e}): check that \"Devo X.509 Certificate\" is one this Devo domain issued"
        ),
    )
}

/// The rustls error inside an I/O error from the TLS stream, if that is what it is.
fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

type Tls = TlsStream<Watched>;

/// One TLS connection to the relay. The relay never writes, so a task reads only to see it close: before `finish`
/// that means the upload was cut off.
struct Connection {
    writer: WriteHalf<Tls>,
    closed: JoinHandle<io::Result<()>>,
    progress: DeliveryMeter,
}

impl Connection {
    /// Writes and empties `lines`; each line goes out whole (partial writes continue) or the attempt fails.
    async fn send(&mut self, lines: &mut String) -> io::Result<()> {
        if self.closed.is_finished() {
            return Err(io::Error::new(io::ErrorKind::ConnectionAborted, "the relay closed the connection mid-upload"));
        }
        if !lines.is_empty() {
            self.progress.watch("sending", self.writer.write_all(lines.as_bytes())).await?;
            lines.clear();
        }
        Ok(())
    }

    /// Half-closes (TLS close_notify, then TCP FIN) and waits for the relay to close its side once it has read
    /// everything, as the SDK does.
    async fn finish(mut self) -> io::Result<()> {
        self.progress.watch("closing", self.writer.shutdown()).await?;
        let closed = async { (&mut self.closed).await.map_err(io::Error::other)? };
        self.progress.watch("waiting for the relay to close the connection", closed).await
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.closed.abort();
    }
}

/// Reads until the relay closes. Relays may close without TLS close_notify (the SDK accepts that too); a reset or
/// an alert is an error.
async fn wait_for_close(mut reader: ReadHalf<Tls>) -> io::Result<()> {
    let mut scratch = [0u8; 1024];
    loop {
        match reader.read(&mut scratch).await {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(io::Error::new(e.kind(), format!("the relay ended the connection: {e}"))),
        }
    }
}

/// Bytes the relay has taken: what its TCP stack acknowledged (written minus what still waits in our send queue)
/// plus what it sent. Counting acknowledgements rather than accepted writes keeps a slow reader from looking stuck
/// while the kernel's large send buffer drains, and lets the wait for EOF see the last bytes leave.
struct DeliveryMeter {
    fd: RawFd,
    written: Arc<AtomicU64>,
    read: Arc<AtomicU64>,
    timeout: Duration,
}

impl DeliveryMeter {
    fn new(fd: RawFd, timeout: Duration) -> Self {
        Self { fd, written: Arc::default(), read: Arc::default(), timeout }
    }

    fn delivered(&self) -> u64 {
        let mut unacknowledged: nix::libc::c_int = 0;
        // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int; `fd` is the connection's socket, alive as long as `self`.
        let rc = unsafe { nix::libc::ioctl(self.fd, nix::libc::TIOCOUTQ, &mut unacknowledged) };
        let queued = if rc == 0 { u64::try_from(unacknowledged).unwrap_or(0) } else { 0 };
        self.written.load(Ordering::Relaxed).saturating_sub(queued) + self.read.load(Ordering::Relaxed)
    }

    /// Runs `operation`, failing it only when a whole `timeout` passes without a byte delivered.
    async fn watch<T>(&self, what: &str, operation: impl Future<Output = io::Result<T>>) -> io::Result<T> {
        tokio::pin!(operation);
        let mut last = self.delivered();
        loop {
            match tokio::time::timeout(self.timeout, &mut operation).await {
                Ok(result) => return result,
                Err(_) => {
                    let now = self.delivered();
                    if now == last {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("no progress for {} s while {what}", self.timeout.as_secs_f64()),
                        ));
                    }
                    last = now;
                }
            }
        }
    }
}

/// The TCP stream, counting the bytes that cross it for [`DeliveryMeter`].
struct Watched {
    inner: TcpStream,
    written: Arc<AtomicU64>,
    read: Arc<AtomicU64>,
}

impl AsyncRead for Watched {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.read.fetch_add((buf.filled().len() - before) as u64, Ordering::Relaxed);
        result
    }
}

impl AsyncWrite for Watched {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = result {
            this.written.fetch_add(n as u64, Ordering::Relaxed);
        }
        result
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_endpoints_are_host_and_port() {
        assert_eq!(parse_host_port("relay.example.com:6514").unwrap(), ("relay.example.com".into(), 6514));
        assert_eq!(parse_host_port("relay.example.com").unwrap(), ("relay.example.com".into(), 443));
        assert_eq!(parse_host_port("[::1]:8443").unwrap(), ("::1".into(), 8443));
        assert_eq!(parse_host_port("[::1]").unwrap(), ("::1".into(), 443));
        for bad in [
            "https://relay.example.com",
            "relay:0",
            "relay:http",
            ":443",
            "[::1]8443",
            "[::1]:",
            "[::1",
            "::1:8443",
            "relay:+443",
            "relay:",
            "relay.example.com:443]",
            "relay example.com:443",
            "[relay.example.com]:443",
        ] {
            let err = parse_host_port(bad).unwrap_err().to_string();
            assert!(err.contains("Custom Devo Endpoint"), "{bad}: {err}");
        }
    }
}
