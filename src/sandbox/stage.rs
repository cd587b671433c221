//! All three stand-ins at once, with what a user would type to point the connector at them: used by `demo`,
//! `sandbox` and the end-to-end tests.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};

use serde_json::json;

use super::devo_api::{self, LookupsApiStandIn};
use super::relay::RelayStandIn;
use super::threatq::{self as tq, ThreatqOptions, ThreatqStandIn};
use crate::devo::UploadMethod;

/// The Devo domain the Lookups API stand-in serves in the stage.
pub const DOMAIN: &str = "sandbox_domain";
/// The data collection the stage creates: the Active IOCs.
pub const COLLECTION: &str = "Devo Export";

/// Where the stand-ins listen; 0 picks a free port.
#[derive(Clone, Copy, Debug, Default)]
pub struct Ports {
    pub threatq: u16,
    pub devo_api: u16,
}

pub struct Stage {
    pub threatq: ThreatqStandIn,
    pub devo_api: LookupsApiStandIn,
    pub relay: RelayStandIn,
    files: PathBuf,
}

impl Stage {
    /// Starts the stand-ins with `iocs` generated indicators, and writes their CA certificates into `files`.
    pub async fn start(iocs: u64, ports: Ports, files: &Path) -> io::Result<Stage> {
        Self::start_with(iocs, ports, files, LookupsApiStandIn::builder()).await
    }

    /// [`Stage::start`] with a Lookups API stand-in built from `devo_api` (benchmarks keep no rows).
    pub async fn start_with(iocs: u64, ports: Ports, files: &Path, devo_api: devo_api::Builder) -> io::Result<Stage> {
        let threatq = ThreatqOptions { port: ports.threatq, generated: iocs, ..Default::default() };
        Self::start_options(threatq, ports.devo_api, files, devo_api).await
    }

    /// [`Stage::start_with`] with a ThreatQ stand-in of any size, seed and speed (`sandbox`).
    pub async fn start_options(
        threatq: ThreatqOptions,
        devo_api_port: u16,
        files: &Path,
        devo_api: devo_api::Builder,
    ) -> io::Result<Stage> {
        crate::init_tls();
        let threatq = ThreatqStandIn::start(threatq).await?;
        threatq.add_collection(COLLECTION, json!({"criteria": {"status_name": "Active"}, "filters": {}}));
        let devo_api = devo_api.port(devo_api_port).start().await?;
        let relay = RelayStandIn::start().await?;
        std::fs::create_dir_all(files)?;
        std::fs::write(files.join("threatq-ca.pem"), threatq.ca_pem())?;
        std::fs::write(files.join("devo-ca.pem"), devo_api.ca_pem())?;
        Ok(Stage { threatq, devo_api, relay, files: files.to_owned() })
    }

    pub fn threatq_ca_file(&self) -> PathBuf {
        self.files.join("threatq-ca.pem")
    }

    pub fn devo_ca_file(&self) -> PathBuf {
        self.files.join("devo-ca.pem")
    }

    /// The environment that answers the first-run prompts and trusts the stand-ins.
    pub fn env(&self) -> HashMap<String, String> {
        [
            ("THREATQ_HOST", self.threatq.host()),
            ("THREATQ_CLIENT_ID", tq::DEFAULT_CLIENT_ID.to_owned()),
            ("THREATQ_USERNAME", tq::DEFAULT_EMAIL.to_owned()),
            ("THREATQ_PASSWORD", tq::DEFAULT_PASSWORD.to_owned()),
            ("THREATQ_STATUS", "Review".to_owned()),
            ("THREATQ_CA_FILE", self.threatq_ca_file().display().to_string()),
            ("DEVO_CA_FILE", self.devo_ca_file().display().to_string()),
            ("DEVO_RELAY_DELAY_SECONDS", "0".to_owned()),
            ("DEVO_JOB_POLL_SECONDS", "0.1".to_owned()),
            ("TQ_SECRETS_BACKEND", "file".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// What a user types in the Configuration tab to export the stage's collection to `lookup` by `method`.
    pub fn ui_fields(&self, method: UploadMethod, lookup: &str) -> BTreeMap<String, String> {
        let mut fields: BTreeMap<String, String> = [
            ("lookup_table_name", lookup.to_owned()),
            ("data_collection_name", COLLECTION.to_owned()),
            ("threatq_hostname", "threatq.example.com".to_owned()),
            ("devo_region", "Custom".to_owned()),
            ("batch_size", "250".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        match method {
            UploadMethod::LookupsApi => {
                fields.insert("devo_upload_method".into(), "lookups-api".into());
                fields.insert("devo_custom_endpoint".into(), self.devo_api.base_url());
                fields.insert("devo_domain".into(), DOMAIN.into());
                fields.insert("devo_api_token".into(), devo_api::DEFAULT_TOKEN.into());
            }
            UploadMethod::Relay => {
                let client = self.relay.client_cert();
                fields.insert("devo_upload_method".into(), "relay".into());
                // The address, not `localhost`: a host without /etc/hosts (the static binary in an empty chroot)
                // cannot resolve that name, and the relay's certificate names 127.0.0.1 too.
                fields.insert("devo_custom_endpoint".into(), format!("127.0.0.1:{}", self.relay.port()));
                fields.insert("devo_certificate".into(), client.cert_pem);
                fields.insert("devo_private_key".into(), client.key_pem);
                fields.insert("devo_chain_ca".into(), self.relay.ca_pem().to_owned());
            }
        }
        fields
    }

    /// The lookup as the Devo stand-in of `method` holds it (rows key first, sorted by key).
    pub fn lookup(&self, method: UploadMethod, lookup: &str) -> Option<Vec<Vec<String>>> {
        match method {
            UploadMethod::LookupsApi => self.devo_api.table(DOMAIN, lookup),
            UploadMethod::Relay => self.relay.table(lookup),
        }
    }
}
