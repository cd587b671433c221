//! The whole export at scale: a ThreatQ collection of N generated IOCs (default 1,000,000) through the connector's
//! run (setup, live configuration, paging, mapping, dedup, plan, Lookups API upload, state), then a 1% change and
//! an incremental run. Prints time, throughput, rows sent and memory (RSS; the stand-ins share this process, the
//! Devo stand-in counts rows without keeping them).
//!
//! `scripts/bench` runs it in release mode; argument: `[IOCS]`.

use std::collections::HashMap;
use std::time::Instant;

use tqdevo::connector::run::{Outcome, RunContext, run};
use tqdevo::connector::setup::LinePrompter;
use tqdevo::devo::UploadMethod;
use tqdevo::sandbox::devo_api::LookupsApiStandIn;
use tqdevo::sandbox::stage::{Ports, Stage};

async fn run_once(dir: &std::path::Path, env: &HashMap<String, String>) -> Outcome {
    let lookup = |key: &str| env.get(key).cloned();
    let mut prompter = LinePrompter::new(std::io::empty(), Vec::new());
    let mut out = Vec::new();
    let ctx = RunContext {
        dir: dir.to_owned(),
        name: "bench".into(),
        cron_dir: dir.to_owned(),
        dry_run: false,
        allow_mass_delete: false,
        env: &lookup,
        prompter: &mut prompter,
        out: &mut out,
        logs_to_out: true,
    };
    run(ctx).await.unwrap_or_else(|e| panic!("run failed: {e}"))
}
#[path = "support/rss.rs"]
mod rss;
use rss::{reset_peak, status_mib};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let iocs: u64 = std::env::args().nth(1).map_or(Ok(1_000_000), |a| a.parse())?;
    let work = tempfile::tempdir()?;
    let stage =
        Stage::start_with(iocs, Ports::default(), work.path(), LookupsApiStandIn::builder().keep_rows(false)).await?;
    let env = stage.env();
    run_once(work.path(), &env).await;
    let mut fields = stage.ui_fields(UploadMethod::LookupsApi, "bench");
    fields.insert("batch_size".into(), "1000".into());
    stage.threatq.set_custom_fields("bench", fields);
    stage.threatq.set_active("bench", true);

    let rss_before = status_mib("VmRSS:");
    reset_peak();
    let started = Instant::now();
    let Outcome::Synced(full) = run_once(work.path(), &env).await else { panic!("not synced") };
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "full run: {} IOCs fetched, {} unique, in {seconds:.1} s ({:.0} IOCs/s)",
        full.fetched,
        full.unique,
        full.fetched as f64 / seconds
    );
    println!("RSS before the run: {rss_before:.1} MiB; peak (VmHWM) during it: {:.1} MiB", status_mib("VmHWM:"));
    let state = std::fs::metadata(work.path().join("bench.state"))?.len();
    println!(
        "state file: {:.1} MiB ({:.0} bytes per IOC)",
        state as f64 / 1048576.0,
        state as f64 / full.unique as f64
    );

    // 1% of the collection changes: every 100th IOC gets a new score.
    let stamp = chrono::Utc::now().format("%Y-%m-%d %H:%M:%S").to_string();
    let mut changed = 0;
    for id in (1..=iocs).step_by(100) {
        changed += u64::from(stage.threatq.modify_indicator(id, |i| {
            i["score"] = serde_json::json!(10);
            i["updated_at"] = serde_json::json!(stamp);
        }));
    }
    stage.devo_api.clear_requests();
    let rss_before = status_mib("VmRSS:");
    reset_peak();
    let started = Instant::now();
    let Outcome::Synced(inc) = run_once(work.path(), &env).await else { panic!("not synced") };
    let seconds = started.elapsed().as_secs_f64();
    let rows_sent: u64 = stage.devo_api.requests().iter().map(|r| r.csv_rows).sum();
    println!(
        "incremental run after changing {changed} IOCs ({:.1}%): {} changed, {} added, {} deleted; {rows_sent} rows sent \
         ({:.2}% of the lookup) in {seconds:.1} s",
        100.0 * changed as f64 / iocs as f64,
        inc.changed,
        inc.added,
        inc.deleted,
        100.0 * rows_sent as f64 / inc.unique.max(1) as f64
    );
    println!("RSS before the run: {rss_before:.1} MiB; peak (VmHWM) during it: {:.1} MiB", status_mib("VmHWM:"));
    Ok(())
}
