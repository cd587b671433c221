//! Streams a million generated IOCs from the ThreatQ stand-in through the client and prints throughput and
//! memory: peak RSS (VmHWM) and RSS at 100k and at the end. Stand-in and client share this process, so the
//! growth between the checkpoints is what matters: flat means the client holds one page, not the collection.
//!
//! `scripts/bench` runs it in release mode; arguments: `[IOCS] [PAGE_SIZE]`.

use std::io::Write;
use std::time::Instant;

use futures::StreamExt;
use secrecy::SecretString;
use tqdevo::sandbox::threatq::{DEFAULT_CLIENT_ID, DEFAULT_EMAIL, DEFAULT_PASSWORD, ThreatqOptions, ThreatqStandIn};
use tqdevo::threatq::{Client, ClientOptions};

#[path = "support/rss.rs"]
mod rss;
use rss::{reset_peak, status_mib};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let iocs: u64 = args.next().map_or(Ok(1_000_000), |a| a.parse())?;
    let page_size: u32 = args.next().map_or(Ok(1000), |a| a.parse())?;
    tqdevo::init_tls();

    let tq = ThreatqStandIn::start(ThreatqOptions { generated: iocs, ..ThreatqOptions::default() }).await?;
    tq.add_collection("Everything", serde_json::json!({}));
    let mut ca_file = tempfile::NamedTempFile::new()?;
    ca_file.write_all(tq.ca_pem().as_bytes())?;
    let client = Client::new(ClientOptions {
        host: tq.host(),
        client_id: DEFAULT_CLIENT_ID.into(),
        username: DEFAULT_EMAIL.into(),
        password: SecretString::from(DEFAULT_PASSWORD),
        ca_file: Some(ca_file.path().to_owned()),
        tls_verify: true,
    })?;
    let collection = client.find_collection("Everything").await?;

    let rss_start = status_mib("VmRSS:");
    reset_peak();
    let started = Instant::now();
    let (mut seen, mut bytes_of_values, mut rss_100k) = (0u64, 0usize, None);
    let mut pages = std::pin::pin!(client.indicators(&collection, page_size));
    while let Some(page) = pages.next().await {
        let page = page?;
        bytes_of_values += page.iter().map(|i| i.value.len()).sum::<usize>();
        seen += page.len() as u64;
        if rss_100k.is_none() && seen >= 100_000 {
            rss_100k = Some(status_mib("VmRSS:"));
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let rss_end = status_mib("VmRSS:");

    println!("streamed {seen} IOCs in pages of {page_size} in {seconds:.1} s: {:.0} IOCs/s", seen as f64 / seconds);
    println!("(values alone: {:.1} MiB, so holding them all would show as growth)", bytes_of_values as f64 / 1048576.0);
    println!("RSS before paging: {rss_start:.1} MiB");
    if let Some(rss) = rss_100k {
        println!("RSS after 100k:    {rss:.1} MiB");
    }
    println!("RSS after {seen}: {rss_end:.1} MiB");
    println!("peak RSS while paging (VmHWM): {:.1} MiB (stand-in and client together)", status_mib("VmHWM:"));
    Ok(())
}
