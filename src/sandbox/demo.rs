//! `demo`: the whole product flow against the in-repo stand-ins, and `sandbox`: the stand-ins kept running for
//! trying the real binary by hand.

use std::collections::HashMap;
use std::io::Write;

use serde_json::json;

use super::devo_api::LookupsApiStandIn;
use super::stage::{self, Ports, Stage};
use super::threatq::{PageLatency, ThreatqOptions};
use crate::Error;
use crate::connector::cli::SandboxArgs;
use crate::connector::run::{self, Outcome, RunContext};
use crate::connector::setup::{self, LinePrompter};
use crate::devo::UploadMethod;

/// IOCs the demo's ThreatQ holds: as many as `sandbox` serves by default.
const DEMO_IOCS: u64 = SandboxArgs::DEFAULT_IOCS;
/// Rows of the lookup the demo prints.
const SHOWN_ROWS: usize = 8;

fn io_error(e: std::io::Error) -> Error {
    Error::io("writing to stdout", e)
}

/// Runs the connector once as cron would, with `env` as the environment.
async fn run_once(
    stage_dir: &std::path::Path,
    name: &str,
    env: &HashMap<String, String>,
    out: &mut dyn Write,
) -> Result<Outcome, Error> {
    let lookup = |key: &str| env.get(key).cloned();
    let mut no_input = LinePrompter::new(std::io::empty(), Vec::new());
    run::run(RunContext {
        dir: stage_dir.to_owned(),
        name: name.to_owned(),
        cron_dir: stage_dir.to_owned(),
        dry_run: false,
        allow_mass_delete: false,
        env: &lookup,
        prompter: &mut no_input,
        out,
        logs_to_out: true,
    })
    .await
}

/// The demo: set up, configure in the UI, export, change the collection, export again; for both upload methods.
pub async fn demo(out: &mut dyn Write) -> Result<(), Error> {
    let work = tempfile::tempdir().map_err(|e| Error::io("creating a temporary directory", e))?;
    let stage = Stage::start(DEMO_IOCS, Ports::default(), work.path())
        .await
        .map_err(|e| Error::io("starting the stand-ins", e))?;
    let env = stage.env();
    writeln!(
        out,
        "Stand-ins on loopback: ThreatQ {} with {DEMO_IOCS} IOCs (collection {:?}: the Active ones), Devo Lookups \
         API {}, Devo relay 127.0.0.1:{}\n",
        stage.threatq.base_url(),
        stage::COLLECTION,
        stage.devo_api.base_url(),
        stage.relay.port()
    )
    .map_err(io_error)?;

    let rounds =
        [(UploadMethod::LookupsApi, "demo-api", "tq_iocs_api"), (UploadMethod::Relay, "demo-relay", "tq_iocs_relay")];
    for (round, (method, name, lookup)) in rounds.into_iter().enumerate() {
        let title = match method {
            UploadMethod::LookupsApi => "Lookups API (default)",
            UploadMethod::Relay => "X.509 relay (legacy)",
        };
        writeln!(out, "=== Upload method: {title} ===").map_err(io_error)?;
        writeln!(out, "$ tq-conn-devo-ioc-exporter -n {name}    # first run, answers from THREATQ_* variables")
            .map_err(io_error)?;
        if let Outcome::Configured = run_once(work.path(), name, &env, out).await? {
            writeln!(out, "{}", setup::CONFIGURED).map_err(io_error)?;
        }

        writeln!(out, "$ tq-conn-devo-ioc-exporter -n {name}    # before the UI is filled").map_err(io_error)?;
        run_once(work.path(), name, &env, out).await?;

        writeln!(out, "[ThreatQ UI] fill the Configuration tab, lookup {lookup:?}, and turn the toggle on")
            .map_err(io_error)?;
        stage.threatq.set_custom_fields(name, stage.ui_fields(method, lookup));
        stage.threatq.set_active(name, true);
        writeln!(out, "$ tq-conn-devo-ioc-exporter -n {name}").map_err(io_error)?;
        run_once(work.path(), name, &env, out).await?;
        print_lookup(out, &stage, method, lookup)?;

        let changes = change_collection(&stage, round, lookup);
        writeln!(out, "[ThreatQ] the collection changes: {changes}").map_err(io_error)?;
        writeln!(out, "$ tq-conn-devo-ioc-exporter -n {name}    # sends only the changes").map_err(io_error)?;
        run_once(work.path(), name, &env, out).await?;
        print_lookup(out, &stage, method, lookup)?;
        writeln!(out).map_err(io_error)?;
    }
    writeln!(out, "Demo finished. The same runs, against a real ThreatQ and Devo: see the README.").map_err(io_error)
}

/// Adds two IOCs, edits one and expires (removes from the Active collection) two, as analysts would; each round
/// touches other IOCs, so every round shows all three kinds of change.
fn change_collection(stage: &Stage, round: usize, tag: &str) -> String {
    let tq = &stage.threatq;
    let stamp = chrono::Utc::now().format("%Y-%m-%d %H:%M:%S").to_string();
    let added: Vec<u64> = [format!("new-c2.{tag}.example.net"), format!("https://{tag}.example.org/payload")]
        .iter()
        .zip(["FQDN", "URL"])
        .map(|(value, ty)| {
            tq.upsert_indicator(json!({
                "value": value, "type": {"name": ty}, "status": {"name": "Active"}, "score": 9,
                "attributes": [{"name": "Attack Phase", "value": "Command and Control"}],
                "adversaries": [{"id": 1, "name": "Demo Adversary"}],
                "sources": [{"name": "Demo Feed"}], "tags": [{"name": "demo"}],
                "created_at": stamp, "updated_at": stamp,
            }))
        })
        .collect();
    let is_active = |i: &serde_json::Value| i["status"]["name"] == "Active" || i["status"] == "Active";
    let active: Vec<u64> =
        (1..=500).filter(|id| tq.indicator(*id).is_some_and(|i| is_active(&i))).skip(3 * round).take(3).collect();
    tq.modify_indicator(active[0], |i| {
        i["score"] = json!(10);
        i["updated_at"] = json!(stamp);
    });
    for id in &active[1..] {
        tq.modify_indicator(*id, |i| i["status"] = json!({"id": 2, "name": "Expired"}));
    }
    format!("added ids {:?}, rescored id {}, expired ids {:?}", added, active[0], &active[1..])
}

fn print_lookup(out: &mut dyn Write, stage: &Stage, method: UploadMethod, lookup: &str) -> Result<(), Error> {
    let rows = stage.lookup(method, lookup).unwrap_or_default();
    let columns = crate::export::COLUMNS;
    let shown = [0, 1, 2, 3, 4, 6];
    let cell = |v: &str| {
        let v: String = v.escape_debug().collect();
        if v.chars().count() > 26 { format!("{}…", v.chars().take(25).collect::<String>()) } else { v }
    };
    writeln!(out, "Devo lookup {lookup:?}: {} rows; the first {}:", rows.len(), SHOWN_ROWS.min(rows.len()))
        .map_err(io_error)?;
    let header: Vec<String> = shown.iter().map(|i| format!("{:<26}", columns[*i].0)).collect();
    writeln!(out, "  {}", header.join(" ").trim_end()).map_err(io_error)?;
    for row in rows.iter().take(SHOWN_ROWS) {
        let cells: Vec<String> = shown.iter().map(|i| format!("{:<26}", cell(&row[*i]))).collect();
        writeln!(out, "  {}", cells.join(" ").trim_end()).map_err(io_error)?;
    }
    Ok(())
}

/// `sandbox`: keeps the stand-ins running on fixed ports and says how to point the real binary at them. Lines on
/// stdin drive it (the benchmark does): `configure NAME relay|lookups-api LOOKUP [FIELD=VALUE...]`,
/// `change PERCENT` (rescores that share of the IOCs), `latency MS[+US_PER_IOC]`; each is answered on one line.
pub async fn sandbox(args: &SandboxArgs, out: &mut dyn Write) -> Result<(), Error> {
    let files = std::env::temp_dir().join("tq-conn-devo-ioc-exporter-sandbox");
    let ports = Ports { threatq: 8443, devo_api: 8444 };
    let threatq = ThreatqOptions {
        port: ports.threatq,
        generated: args.iocs,
        seed: args.seed,
        page_latency: args.page_latency,
        ..ThreatqOptions::default()
    };
    let stage = Stage::start_options(threatq, ports.devo_api, &files, LookupsApiStandIn::builder())
        .await
        .map_err(|e| Error::io("starting the stand-ins", e))?;
    // Uploads of a million rows, one after another, would pile up in memory.
    stage.relay.keep_connection_bytes(false);
    let env = stage.env();
    let mut vars: Vec<_> =
        env.iter().filter(|(k, _)| !k.starts_with("DEVO_RELAY") && !k.starts_with("DEVO_JOB")).collect();
    vars.sort();
    writeln!(out, "Stand-ins running until Ctrl-C:").map_err(io_error)?;
    writeln!(
        out,
        "  ThreatQ       {}  (collection {:?}; {} IOCs, seed {}, {} ms a page)",
        stage.threatq.base_url(),
        stage::COLLECTION,
        args.iocs,
        args.seed,
        args.page_latency
    )
    .map_err(io_error)?;
    writeln!(
        out,
        "  Devo API      {}  (domain {:?}, token {:?})",
        stage.devo_api.base_url(),
        stage::DOMAIN,
        super::devo_api::DEFAULT_TOKEN
    )
    .map_err(io_error)?;
    let relay_files = write_relay_files(&stage, &files)?;
    writeln!(
        out,
        "  Devo relay    127.0.0.1:{}  (client certificate, key and CA: {})",
        stage.relay.port(),
        relay_files.join(" ")
    )
    .map_err(io_error)?;
    writeln!(out, "\nIn another shell, set up and run the real binary:").map_err(io_error)?;
    for (k, v) in vars {
        writeln!(out, "  export {k}={v}").map_err(io_error)?;
    }
    writeln!(out, "  tq-conn-devo-ioc-exporter -c /tmp/tq-sandbox -ll stdout -v2      # registers the connector")
        .map_err(io_error)?;
    writeln!(out, "\nThe UI form is filled and the toggle turned on for you as soon as the connector registers.")
        .map_err(io_error)?;
    out.flush().map_err(io_error)?;
    let fields = stage.ui_fields(UploadMethod::LookupsApi, "tq_iocs");
    let name = crate::connector::config::CONNECTOR_NAME;
    let mut commands = stdin_lines();
    // Until SIGINT or SIGTERM, which `run::stoppable` turns into a clean end.
    loop {
        tokio::select! {
            Some(line) = commands.recv() => {
                writeln!(out, "{}", obey(&stage, args.iocs, &line)).map_err(io_error)?;
                out.flush().map_err(io_error)?;
            }
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {
                if stage.threatq.connector(name).is_some_and(|c| c["custom_fields"].as_object().is_none_or(|f| f.is_empty())) {
                    stage.threatq.set_custom_fields(name, fields.clone());
                    stage.threatq.set_active(name, true);
                    writeln!(out, "[ThreatQ UI] {name} configured and enabled; run the binary again to export")
                        .map_err(io_error)?;
                    out.flush().map_err(io_error)?;
                }
            }
        }
    }
}

/// The relay's client certificate, its key and the CA, as files a devo-sdk `SenderConfigSSL` takes.
fn write_relay_files(stage: &Stage, dir: &std::path::Path) -> Result<Vec<String>, Error> {
    let client = stage.relay.client_cert();
    let files = [("relay-client.crt", client.cert_pem), ("relay-client.key", client.key_pem)];
    let files = files.into_iter().chain([("relay-ca.crt", stage.relay.ca_pem().to_owned())]);
    files
        .map(|(name, pem)| {
            let path = dir.join(name);
            crate::connector::local::write_atomically(&path, pem.as_bytes(), 0o600)?;
            Ok(path.display().to_string())
        })
        .collect()
}

/// Lines typed on stdin. A thread of its own reads them: a blocked read must not hold up the exit.
fn stdin_lines() -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Carries out one stdin command; the answer starts with `ok` or `error`.
fn obey(stage: &Stage, iocs: u64, line: &str) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["configure", name, method, lookup, fields @ ..] => {
            let method = match *method {
                "relay" => UploadMethod::Relay,
                "lookups-api" => UploadMethod::LookupsApi,
                other => return format!("error: upload method {other:?} is neither relay nor lookups-api"),
            };
            let mut form = stage.ui_fields(method, lookup);
            for field in fields {
                let Some((key, value)) = field.split_once('=') else {
                    return format!("error: {field:?} is not FIELD=VALUE");
                };
                form.insert(key.to_owned(), value.to_owned());
            }
            if !stage.threatq.set_custom_fields(name, form) || !stage.threatq.set_active(name, true) {
                return format!("error: no connector {name:?} is registered yet; run the binary once first");
            }
            format!("ok: {name} exports to {lookup} by {method:?}")
        }
        ["change", percent] => match percent.parse::<u64>() {
            Ok(percent @ 1..=100) => {
                let stamp = chrono::Utc::now().format("%Y-%m-%d %H:%M:%S").to_string();
                let changed = (1..=iocs)
                    .step_by((100 / percent) as usize)
                    .filter(|id| {
                        stage.threatq.modify_indicator(*id, |i| {
                            i["score"] = json!(10);
                            i["updated_at"] = json!(stamp);
                        })
                    })
                    .count();
                format!("ok: rescored {changed} IOCs")
            }
            _ => format!("error: {percent:?} is not a percentage from 1 to 100"),
        },
        ["latency", latency] => match latency.parse::<PageLatency>() {
            Ok(latency) => {
                stage.threatq.set_page_latency(latency);
                format!("ok: pages take {latency} ms")
            }
            Err(e) => format!("error: {e}"),
        },
        _ => format!(
            "error: {line:?}: commands are `configure NAME relay|lookups-api LOOKUP [FIELD=VALUE...]`, \
             `change PERCENT`, `latency MS[+US_PER_IOC]`"
        ),
    }
}
