//! A stand-in for a Devo relay: a mutual-TLS syslog server on 127.0.0.1 that reads devo-sdk `Lookup` lines and
//! applies an upload to its lookup only when a well-formed END arrives, as Devo does. Faults can be switched on to
//! test the uploader: cut the connection after K lines, read slowly, refuse the handshake.
//!
//! Like a syslog server, it reads a connection to its end and closes it, and a worker of its own parses and
//! applies the lines it read, in the order they arrived. The accessors wait for that worker to catch up.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::devo::relay::encode::{Action, decode_fields, decode_fields_into};
use crate::devo::{DevoSettings, Region, UploadMethod};
use crate::field::SecretText;
use crate::sandbox::certs::{CertPair, TestCa};

/// What goes wrong on purpose.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Reset the next connection after this many lines (it applies once, so a retry can succeed).
    pub close_after_lines: Option<usize>,
    /// Sleep this long after every read of at most 4 KiB: a slow but steady relay.
    pub read_pause: Option<Duration>,
    /// Drop every connection before the TLS handshake.
    pub refuse_handshake: bool,
}

/// An upload the stand-in applied (its END arrived, well-formed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedUpload {
    pub run_id: String,
    pub lookup: String,
    pub action: Action,
    pub rows: usize,
    pub deletes: usize,
}

pub struct RelayStandIn {
    addr: SocketAddr,
    ca_pem: String,
    client: CertPair,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

struct Shared {
    state: Arc<Mutex<State>>,
    /// The worker's queue, and how many items in it are not yet applied.
    work: Sender<Work>,
    pending: Arc<(Mutex<u64>, Condvar)>,
    faults: Mutex<Faults>,
    /// Keep no connection's bytes (`sandbox`, where uploads of a million rows would pile up).
    forget_bytes: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct State {
    /// lookup → key → row as it was sent (its values decode with [`decode_fields`]); sorted only when read.
    tables: HashMap<String, HashMap<String, String>>,
    /// Uploads whose START arrived, by run id.
    open: HashMap<String, OpenUpload>,
    applied: Vec<AppliedUpload>,
    connections: Vec<Vec<u8>>,
    problems: Vec<String>,
    /// The values of the row being checked, reused from row to row.
    scratch: Vec<String>,
}

struct OpenUpload {
    lookup: String,
    action: Action,
    headers: String,
    columns: usize,
    /// Rows to add or change: key and the row as sent.
    upserts: Vec<(String, String)>,
    deletes: Vec<String>,
    broken: Option<String>,
}

impl RelayStandIn {
    /// Listens on 127.0.0.1 with a fresh CA, a server certificate for localhost/127.0.0.1 and a client certificate
    /// (CN `tq-exporter`, O `sandbox_domain`) that the stand-in accepts.
    pub async fn start() -> io::Result<Self> {
        let ca = TestCa::new("Devo Relay Stand-in CA");
        let server = ca.server(&[]);
        let client = ca.client("tq-exporter", "sandbox_domain");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).map_err(io::Error::other)?)
            .map_err(io::Error::other)?;
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(io::Error::other)?;
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![CertificateDer::from_pem_slice(server.cert_pem.as_bytes()).map_err(io::Error::other)?],
                PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes()).map_err(io::Error::other)?,
            )
            .map_err(io::Error::other)?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::start());
        let task = tokio::spawn(serve(listener, TlsAcceptor::from(Arc::new(config)), shared.clone()));
        Ok(Self { addr, ca_pem: ca.cert_pem(), client, shared, task })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The CA that signed the server certificate: the "Devo X.509 Chain CA" to configure.
    pub fn ca_pem(&self) -> String {
        self.ca_pem.clone()
    }

    /// A client certificate the stand-in accepts.
    pub fn client_cert(&self) -> CertPair {
        self.client.clone()
    }

    /// The UI settings that point the relay upload method here (host `localhost`, so the name is verified).
    pub fn devo_settings(&self) -> DevoSettings {
        DevoSettings {
            method: UploadMethod::Relay,
            region: Region::Custom,
            custom_endpoint: Some(format!("localhost:{}", self.port())),
            domain: None,
            api_token: None,
            certificate: Some(self.client.cert_pem.clone()),
            private_key: Some(SecretText::new(self.client.key_pem.clone())),
            chain_ca: Some(self.ca_pem()),
        }
    }

    pub fn set_faults(&self, faults: Faults) {
        *self.shared.faults.lock().expect("faults lock") = faults;
    }

    /// The lookup's rows, decoded, key first, sorted by key; `None` before any upload to it was applied.
    pub fn table(&self, lookup: &str) -> Option<Vec<Vec<String>>> {
        self.state(|s| {
            let decoded = |row: &String| decode_fields(row).expect("rows were checked when they arrived");
            s.tables.get(lookup).map(|t| {
                let mut rows: Vec<(&String, &String)> = t.iter().collect();
                rows.sort_unstable();
                rows.into_iter().map(|(_, row)| decoded(row)).collect()
            })
        })
    }

    /// The uploads applied so far, in order.
    pub fn applied(&self) -> Vec<AppliedUpload> {
        self.state(|s| s.applied.clone())
    }

    /// Whether [`RelayStandIn::connections`] keeps what each connection sent (it does by default, for tests).
    pub fn keep_connection_bytes(&self, keep: bool) {
        self.shared.forget_bytes.store(!keep, std::sync::atomic::Ordering::Relaxed);
    }

    /// Every byte each finished connection delivered, in the order the connections ended.
    pub fn connections(&self) -> Vec<Vec<u8>> {
        self.state(|s| s.connections.clone())
    }

    /// Lines that could not be read or uploads that could not be applied, with the reason.
    pub fn problems(&self) -> Vec<String> {
        self.state(|s| s.problems.clone())
    }

    fn state<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        let (count, caught_up) = &*self.shared.pending;
        drop(caught_up.wait_while(count.lock().expect("pending lock"), |n| *n > 0).expect("pending lock"));
        f(&self.shared.state.lock().expect("state lock"))
    }
}

/// What the worker applies, in order.
enum Work {
    /// Whole lines (each ending in `\n`) as they arrived.
    Lines(Vec<u8>),
    /// A connection ended; what it delivered (empty when the bytes are not kept).
    Ended(Vec<u8>),
}

impl Shared {
    /// Starts the worker, which stops when the queue is dropped with the stand-in.
    fn start() -> Self {
        let (tx, rx) = mpsc::channel::<Work>();
        let state = Arc::new(Mutex::new(State::default()));
        let pending = Arc::new((Mutex::new(0u64), Condvar::new()));
        let (worker_state, worker_pending) = (state.clone(), pending.clone());
        std::thread::spawn(move || {
            for work in rx {
                {
                    let mut state = worker_state.lock().expect("state lock");
                    match work {
                        Work::Lines(bytes) => {
                            let lines = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
                            for line in lines.split(|b| *b == b'\n') {
                                match std::str::from_utf8(line) {
                                    Ok(line) => state.receive(line),
                                    Err(_) => state.receive(&String::from_utf8_lossy(line)),
                                }
                            }
                        }
                        Work::Ended(bytes) => state.connections.push(bytes),
                    }
                }
                let (count, caught_up) = &*worker_pending;
                *count.lock().expect("pending lock") -= 1;
                caught_up.notify_all();
            }
        });
        Self {
            state,
            work: tx,
            pending,
            faults: Mutex::default(),
            forget_bytes: std::sync::atomic::AtomicBool::default(),
        }
    }

    fn submit(&self, work: Work) {
        *self.pending.0.lock().expect("pending lock") += 1;
        if self.work.send(work).is_err() {
            *self.pending.0.lock().expect("pending lock") -= 1;
        }
    }
}

impl Drop for RelayStandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    while let Ok((tcp, _)) = listener.accept().await {
        tokio::spawn(handle(tcp, acceptor.clone(), shared.clone()));
    }
}

async fn handle(tcp: TcpStream, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    let faults = {
        let mut faults = shared.faults.lock().expect("faults lock");
        Faults { close_after_lines: faults.close_after_lines.take(), ..faults.clone() }
    };
    let problem = |p: String| shared.state.lock().expect("state lock").problems.push(p);
    if faults.refuse_handshake {
        let _ = tcp.set_zero_linger();
        return;
    }
    let mut tls = match acceptor.accept(tcp).await {
        Ok(tls) => tls,
        Err(e) => return problem(format!("TLS handshake refused: {e}")),
    };
    let keep_bytes = !shared.forget_bytes.load(std::sync::atomic::Ordering::Relaxed);
    // What arrived and is not yet a whole line, or (keeping the bytes) everything from the start; whole lines go to
    // the worker as they arrive.
    let mut received = Vec::new();
    let mut line_start = 0;
    let mut lines = 0;
    // A slow relay reads 4 KiB at a time (see `Faults::read_pause`).
    let mut buf = vec![0u8; if faults.read_pause.is_some() { 4 << 10 } else { 64 << 10 }];
    let cut = loop {
        match tls.read(&mut buf).await {
            Ok(0) => break false,
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) => {
                problem(format!("connection ended badly: {e}"));
                break false;
            }
        }
        let whole = match faults.close_after_lines {
            // Counted line by line, to cut after the K-th.
            Some(k) => {
                let mut end = line_start;
                while lines < k {
                    let Some(i) = memchr::memchr(b'\n', &received[end..]) else { break };
                    end += i + 1;
                    lines += 1;
                }
                end
            }
            None => memchr::memrchr(b'\n', &received[line_start..]).map_or(line_start, |i| line_start + i + 1),
        };
        if whole > line_start {
            shared.submit(Work::Lines(received[line_start..whole].to_vec()));
            line_start = whole;
        }
        if !keep_bytes {
            received.drain(..line_start);
            line_start = 0;
        }
        if faults.close_after_lines.is_some_and(|k| lines >= k) {
            break true;
        }
        if let Some(pause) = faults.read_pause {
            tokio::time::sleep(pause).await;
        }
    };
    if cut {
        // What the relay took before it cut the connection: the lines it read, not what it had buffered beyond them.
        received.truncate(line_start);
    }
    shared.submit(Work::Ended(if keep_bytes { received } else { Vec::new() }));
    if cut {
        // A reset, as a load balancer that drops a connection sends: the client cannot mistake it for a close.
        let _ = tls.get_ref().0.set_zero_linger();
    } else {
        let _ = tls.shutdown().await;
    }
}

impl State {
    fn receive(&mut self, line: &str) {
        if let Err(problem) = self.apply_line(line) {
            self.problems.push(format!("{problem}: {line:.200}"));
        }
    }

    fn apply_line(&mut self, line: &str) -> Result<(), String> {
        let rest = line.strip_prefix("<14>Jan  1 00:00:00 ").ok_or("not a devo-sdk syslog line")?;
        let (_host, rest) = rest.split_once(' ').ok_or("no tag")?;
        let (tag, payload) = rest.split_once(": ").ok_or("no payload")?;
        let (run_id, body) = payload.split_once('|').ok_or("no run id")?;
        if let Some(control) = tag.strip_prefix("my.lookup.control.") {
            let (lookup, action) = control.rsplit_once('.').ok_or("no action in the control tag")?;
            let action = match action {
                "FULL" => Action::Full,
                "INC" => Action::Inc,
                _ => return Err("unknown action".into()),
            };
            let (event, headers) = body.split_once('|').ok_or("no event")?;
            if !run_id.ends_with(&format!("_{lookup}")) {
                return Err("run id of another lookup".into());
            }
            match event {
                "START" => {
                    let columns = serde_json::from_str::<Vec<serde_json::Value>>(headers)
                        .map_err(|e| format!("headers are not a JSON list ({e})"))?
                        .len();
                    let upload = OpenUpload {
                        lookup: lookup.to_owned(),
                        action,
                        headers: headers.to_owned(),
                        columns,
                        upserts: Vec::new(),
                        deletes: Vec::new(),
                        broken: None,
                    };
                    self.open.insert(run_id.to_owned(), upload);
                    Ok(())
                }
                "END" => {
                    let upload = self.open.remove(run_id).ok_or("END without START")?;
                    if upload.lookup != lookup || upload.action != action || upload.headers != headers {
                        return Err("END does not repeat its START".into());
                    }
                    if let Some(broken) = upload.broken {
                        return Err(format!("upload not applied: {broken}"));
                    }
                    self.apply(run_id, upload);
                    Ok(())
                }
                _ => Err("unknown control event".into()),
            }
        } else if let Some(data) = tag.strip_prefix("my.lookup.data.") {
            let (lookup, delete) = match data.strip_suffix(".DELETE") {
                Some(lookup) => (lookup, true),
                None => (data, false),
            };
            let upload = self.open.get_mut(run_id).ok_or("row outside an upload")?;
            if upload.lookup != lookup {
                return Err("row for another lookup".into());
            }
            let columns = upload.columns;
            let fields = decode_fields_into(body, &mut self.scratch).map_err(|e| e.to_string()).and_then(|n| {
                if n == columns { Ok(&self.scratch[..n]) } else { Err(format!("{n} values for {columns} columns")) }
            });
            let key = match fields {
                Ok(fields) => fields[0].clone(),
                Err(e) => {
                    upload.broken.get_or_insert_with(|| e.clone());
                    return Err(e);
                }
            };
            if delete {
                upload.deletes.push(key);
            } else {
                upload.upserts.push((key, body.to_owned()));
            }
            Ok(())
        } else {
            Err("not a lookup tag".into())
        }
    }

    fn apply(&mut self, run_id: &str, upload: OpenUpload) {
        let table = self.tables.entry(upload.lookup.clone()).or_default();
        if upload.action == Action::Full {
            table.clear();
        }
        let (rows, deletes) = (upload.upserts.len(), upload.deletes.len());
        for (key, row) in upload.upserts {
            table.insert(key, row);
        }
        for key in &upload.deletes {
            table.remove(key);
        }
        self.applied.push(AppliedUpload {
            run_id: run_id.to_owned(),
            lookup: upload.lookup,
            action: upload.action,
            rows,
            deletes,
        });
    }
}
