//! Where and how the Lookups API uploader talks to Devo.

use std::time::Duration;

use reqwest::Url;
use secrecy::SecretString;

use crate::devo::settings::{DevoSettings, Region, label};
use crate::field::ConfigError;
use crate::retry::RetryPolicy;

/// The Lookups API's retries: 5 tries, backoff from 0.5 s up to 60 s; a `Retry-After` beyond 60 s ends the run
/// ("try again later") rather than waiting it out.
pub fn default_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 5,
        base_delay: Duration::from_millis(500),
        max_delay: Duration::from_secs(60),
        retry_after_cap: Duration::from_secs(60),
    }
}

/// Everything the Lookups API uploader needs. The token is a secret: it only ever goes into the
/// `Authorization` header.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// The API root, e.g. `https://api-us.devo.com/lookup-api` (no trailing slash).
    pub base_url: Url,
    /// The Devo domain that owns the lookup (already resolved by the caller, e.g. from the certificate).
    pub domain: String,
    pub token: SecretString,
    /// Extra trust anchors (PEM, from `DEVO_CA_FILE`) on top of the system roots.
    pub extra_ca_pem: Option<String>,
    /// How long to wait for Devo's job to report success or failure after an upload.
    pub job_timeout: Duration,
    /// The longest pause between two polls of a job (they start at 0.01 s and double up to this).
    pub poll_interval: Duration,
    /// Connect timeout, and the longest silence while reading a response.
    pub io_timeout: Duration,
    pub retry: RetryPolicy,
}

impl ApiConfig {
    /// A configuration with the default timings (job timeout 10 min, polls at most 5 s apart, I/O timeout 60 s).
    pub fn new(base_url: Url, domain: impl Into<String>, token: SecretString) -> Result<Self, ConfigError> {
        let domain = domain.into();
        if domain.trim().is_empty() {
            return Err(ConfigError::missing(label::DOMAIN));
        }
        Ok(Self {
            base_url,
            domain,
            token,
            extra_ca_pem: None,
            job_timeout: Duration::from_secs(600),
            poll_interval: Duration::from_secs(5),
            io_timeout: Duration::from_secs(60),
            retry: default_retry(),
        })
    }

    /// A configuration for a region; `Custom` takes the UI's "Custom Devo Endpoint", which must be an https URL.
    pub fn for_region(
        region: Region,
        custom_endpoint: Option<&str>,
        domain: impl Into<String>,
        token: SecretString,
    ) -> Result<Self, ConfigError> {
        Self::new(base_url(region, custom_endpoint)?, domain, token)
    }

    /// The configuration the UI describes. `domain` is resolved by the caller ("Devo Domain", or the
    /// certificate's subject when that field is empty).
    pub fn from_settings(devo: &DevoSettings, domain: impl Into<String>) -> Result<Self, ConfigError> {
        let token = devo.api_token.as_ref().ok_or_else(|| ConfigError::missing(label::API_TOKEN))?;
        Self::for_region(devo.region, devo.custom_endpoint.as_deref(), domain, token.secret().clone())
    }
}

/// The Lookups API root of a region (from [`Region::hosts`]), or the custom endpoint.
pub fn base_url(region: Region, custom_endpoint: Option<&str>) -> Result<Url, ConfigError> {
    match region.hosts() {
        Some(hosts) => Ok(Url::parse(hosts.lookups_api).expect("the region table holds valid URLs")),
        None => {
            let raw = custom_endpoint.map(str::trim).filter(|e| !e.is_empty());
            custom_url(raw.ok_or_else(|| ConfigError::missing(label::CUSTOM_ENDPOINT))?)
        }
    }
}

fn custom_url(raw: &str) -> Result<Url, ConfigError> {
    let invalid = |why: &str| {
        ConfigError::invalid(
            label::CUSTOM_ENDPOINT,
            format!(
                "{raw:?} {why}; with the Lookups API it is an https URL such as https://devo.example.com/lookup-api"
            ),
        )
    };
    let url = Url::parse(raw).map_err(|e| invalid(&format!("is not a URL ({e})")))?;
    // The URL parser takes "host:" as the default port; a stray ':' is a typo to show, not to guess.
    if raw.split_once("://").and_then(|(_, rest)| rest.split(['/', '?', '#']).next()).is_some_and(|a| a.ends_with(':'))
    {
        return Err(invalid("has a ':' but no port after it"));
    }
    if url.scheme() != "https" {
        return Err(invalid("does not start with https://"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("has no host"));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("may not hold a query, a fragment or credentials"));
    }
    // Paths are appended segment by segment, so a trailing slash would leave an empty segment.
    let mut url = url;
    let path = url.path().trim_end_matches('/').to_owned();
    url.set_path(&path);
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_region_has_its_lookup_api_root() {
        let cases = [
            (Region::Us, "https://api-us.devo.com/lookup-api"),
            (Region::Eu, "https://api-eu.devo.com/lookup-api"),
            (Region::Ca, "https://api-ca.devo.com/lookup-api"),
            (Region::Apac, "https://api-ap.devo.com/lookup-api"),
        ];
        for (region, url) in cases {
            assert_eq!(base_url(region, Some("https://ignored.example")).unwrap().as_str(), url);
        }
    }

    #[test]
    fn a_custom_endpoint_is_kept_without_its_trailing_slash() {
        let url = base_url(Region::Custom, Some(" https://devo.example.com:8443/lookup-api/ ")).unwrap();
        assert_eq!(url.as_str(), "https://devo.example.com:8443/lookup-api");
    }

    #[test]
    fn a_custom_endpoint_must_be_an_https_url_and_errors_name_the_field() {
        for bad in [
            "http://devo.example.com/lookup-api",
            "devo.example.com",
            "https://devo.example.com/x?a=1",
            "https://[::1]8443/lookup-api",
            "https://devo.example.com:/lookup-api",
        ] {
            let err = base_url(Region::Custom, Some(bad)).unwrap_err().to_string();
            assert!(err.contains("Custom Devo Endpoint"), "{err}");
            assert!(err.contains(bad), "{err}");
        }
        let err = base_url(Region::Custom, None).unwrap_err().to_string();
        assert!(err.contains("Custom Devo Endpoint"), "{err}");
    }

    #[test]
    fn an_empty_domain_is_refused_naming_the_field() {
        let err = ApiConfig::for_region(Region::Eu, None, " ", SecretString::from("t")).unwrap_err();
        assert!(err.to_string().contains("Devo Domain"), "{err}");
    }

    #[test]
    fn settings_without_a_token_name_the_token_field() {
        let devo = DevoSettings {
            method: crate::devo::UploadMethod::LookupsApi,
            region: Region::Us,
            custom_endpoint: None,
            domain: Some("acme".into()),
            api_token: None,
            certificate: None,
            private_key: None,
            chain_ca: None,
        };
        let err = ApiConfig::from_settings(&devo, "acme").unwrap_err();
        assert!(err.to_string().contains("Devo API Token"), "{err}");
    }
}
