//! What the Devo side needs from the UI: the upload method, where Devo is, and the credentials. The connector
//! turns the ThreatQ form into a [`DevoSettings`]; the labels here are the ones the form shows, so an error from
//! this side names the field the user fixes.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::field::SecretText;

/// The labels of the UI fields the Devo settings come from: the form publishes them and every error names them.
pub mod label {
    pub const UPLOAD_METHOD: &str = "Devo Upload Method";
    pub const REGION: &str = "Devo API Region";
    pub const CUSTOM_ENDPOINT: &str = "Custom Devo Endpoint";
    pub const DOMAIN: &str = "Devo Domain";
    pub const API_TOKEN: &str = "Devo API Token";
    pub const CERTIFICATE: &str = "Devo X.509 Certificate";
    pub const PRIVATE_KEY: &str = "Devo X.509 Private Key";
    pub const CHAIN_CA: &str = "Devo X.509 Chain CA";
    /// The lookup's name is the only name a user chooses; Devo's naming rule is checked here.
    pub const LOOKUP_TABLE_NAME: &str = "Lookup Table Name";
}

/// How rows reach Devo.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum UploadMethod {
    /// Lookups API (token)
    #[default]
    #[serde(rename = "lookups-api")]
    LookupsApi,
    /// X.509 relay (legacy)
    #[serde(rename = "relay")]
    Relay,
}

/// Which Devo cloud to talk to; `Custom` takes the endpoint from "Custom Devo Endpoint".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Region {
    /// US
    #[default]
    #[serde(rename = "US")]
    Us,
    /// EU
    #[serde(rename = "EU")]
    Eu,
    /// CA
    #[serde(rename = "CA")]
    Ca,
    /// APAC
    #[serde(rename = "APAC")]
    Apac,
    /// Custom
    #[serde(rename = "Custom")]
    Custom,
}

/// Devo's endpoints in one region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionHosts {
    /// The Lookups API root.
    pub lookups_api: &'static str,
    /// The relay (collector) host, port 443.
    pub relay: &'static str,
}

impl Region {
    /// The region table: Devo's documented US and EU hosts, CA and APAC by the same pattern; `None` for
    /// `Custom`, whose endpoint the user gives.
    pub fn hosts(self) -> Option<RegionHosts> {
        let (lookups_api, relay) = match self {
            Region::Us => ("https://api-us.devo.com/lookup-api", "collector-us.devo.io"),
            Region::Eu => ("https://api-eu.devo.com/lookup-api", "collector-eu.devo.io"),
            Region::Ca => ("https://api-ca.devo.com/lookup-api", "collector-ca.devo.io"),
            Region::Apac => ("https://api-ap.devo.com/lookup-api", "collector-ap.devo.io"),
            Region::Custom => return None,
        };
        Some(RegionHosts { lookups_api, relay })
    }
}

/// Where and how to deliver to Devo, as the UI says. PEM contents are checked by the uploaders, which name the
/// field on error.
#[derive(Clone, Debug)]
pub struct DevoSettings {
    pub method: UploadMethod,
    pub region: Region,
    pub custom_endpoint: Option<String>,
    pub domain: Option<String>,
    pub api_token: Option<SecretText>,
    pub certificate: Option<String>,
    pub private_key: Option<SecretText>,
    pub chain_ca: Option<String>,
}
