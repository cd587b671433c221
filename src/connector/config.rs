//! The connector's UI form: Rust types are the single source of the JSON Schema published to ThreatQ, of the
//! `user_fields` in the manifest, and of the rules that turn ThreatQ's `custom_fields` (all strings) into a
//! validated [`Settings`].

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::Duration;

use schemars::{JsonSchema, generate::SchemaSettings};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::devo::{DevoSettings, Region, UploadMethod, label as devo_label};
use crate::field::{ConfigError, SecretText, parse_bool};
use crate::threatq::{ConnectorDefinition, FieldDef};

/// The connector's name in ThreatQ when no `-n/--name` is given.
pub const CONNECTOR_NAME: &str = "tq-conn-devo-ioc-exporter";

/// Whether each run sends only changes or replaces the whole lookup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum SyncMode {
    /// Incremental (changes and deletions only)
    #[default]
    #[serde(rename = "incremental")]
    Incremental,
    /// Full (replace every run)
    #[serde(rename = "full")]
    Full,
}

/// The Configuration tab of the integration in ThreatQ. Field names are the `custom_fields` keys; titles are the
/// labels the user sees and every error names.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(
    title = "Devo IOC Exporter",
    description = "Keeps a Devo Lookup List equal to the IOCs of a ThreatQ Data Collection."
)]
pub struct UiForm {
    /// Lookups API (REST, token) is the default; the X.509 relay is Devo's legacy syslog upload.
    #[schemars(title = devo_label::UPLOAD_METHOD)]
    #[serde(default)]
    pub devo_upload_method: UploadMethod,

    /// Devo cloud region. Custom: set "Custom Devo Endpoint".
    #[schemars(title = devo_label::REGION)]
    #[serde(default)]
    pub devo_region: Region,

    /// Custom region only: the Lookups API base URL (https://host/lookup-api), or the relay's host:port.
    #[schemars(title = devo_label::CUSTOM_ENDPOINT)]
    #[serde(default)]
    pub devo_custom_endpoint: Option<String>,

    /// Lookups API: the Devo domain that owns the lookup. Default: the certificate's subject, when one is given.
    #[schemars(title = devo_label::DOMAIN)]
    #[serde(default)]
    pub devo_domain: Option<String>,

    /// Lookups API: a Devo API token allowed to manage lookups.
    #[schemars(title = devo_label::API_TOKEN)]
    #[serde(default)]
    pub devo_api_token: Option<SecretText>,

    /// Relay: the PEM certificate from Devo's Administration → Credentials → X.509.
    #[schemars(title = devo_label::CERTIFICATE, extend("x-ui-widget" = "textarea"))]
    #[serde(default)]
    pub devo_certificate: Option<String>,

    /// Relay: the PEM private key of that certificate; it must match the certificate.
    #[schemars(title = devo_label::PRIVATE_KEY)]
    #[serde(default)]
    pub devo_private_key: Option<SecretText>,

    /// Relay: the PEM chain CA that signs the relay's certificate (the trust store for the relay).
    #[schemars(title = devo_label::CHAIN_CA, extend("x-ui-widget" = "textarea"))]
    #[serde(default)]
    pub devo_chain_ca: Option<String>,

    /// The Devo Lookup List to keep equal to the collection: letters, digits and underscores.
    #[schemars(title = devo_label::LOOKUP_TABLE_NAME, regex(pattern = r"^[A-Za-z0-9_]+$"), length(min = 1))]
    pub lookup_table_name: String,

    /// The exact name of the ThreatQ Data Collection to export.
    #[schemars(title = "ThreatQ Data Collection Name", length(min = 1))]
    pub data_collection_name: String,

    /// The ThreatQ host name used in the links back to each IOC.
    #[schemars(title = "ThreatQ Hostname", length(min = 1))]
    pub threatq_hostname: String,

    /// How many IOCs to read from ThreatQ per page.
    #[schemars(title = "Batch Size", range(min = 1, max = 10000))]
    #[serde(default = "defaults::batch_size")]
    pub batch_size: u32,

    /// Off: a run lock keeps one run at a time. On: runs may overlap.
    #[schemars(title = "Allow Multiple Runs")]
    #[serde(default)]
    pub allow_multiple_runs: bool,

    /// A run older than this that still holds the lock is stopped.
    #[schemars(title = "Kill Previous Runs After X Seconds", range(min = 1, max = 604800))]
    #[serde(default = "defaults::kill_previous_after_seconds")]
    pub kill_previous_after_seconds: u32,

    /// Incremental sends changes and deletions; Full replaces the lookup every run.
    #[schemars(title = "Sync Mode")]
    #[serde(default)]
    pub sync_mode: SyncMode,

    /// In incremental mode, replace the whole lookup this often.
    #[schemars(title = "Full Resync Every N Hours", range(min = 1, max = 8760))]
    #[serde(default = "defaults::full_resync_hours")]
    pub full_resync_hours: u32,

    /// Refuse a run that would delete more than this percentage of the lookup.
    #[schemars(title = "Mass-Delete Guard (%)", range(min = 0, max = 100))]
    #[serde(default = "defaults::max_delete_percent")]
    pub max_delete_percent: u8,

    /// ThreatQ page requests in flight (1 = one at a time); halved by itself on 429, 503 and timeouts.
    #[schemars(title = "Parallel Page Requests", range(min = 1, max = 16))]
    #[serde(default = "defaults::parallel_page_requests")]
    pub parallel_page_requests: u8,
}

mod defaults {
    pub fn batch_size() -> u32 {
        1000
    }
    pub fn kill_previous_after_seconds() -> u32 {
        3600
    }
    pub fn full_resync_hours() -> u32 {
        24
    }
    pub fn max_delete_percent() -> u8 {
        50
    }
    pub fn parallel_page_requests() -> u8 {
        4
    }
}

/// The validated configuration of one run.
#[derive(Clone, Debug)]
pub struct Settings {
    pub devo: DevoSettings,
    pub lookup_table_name: String,
    pub data_collection_name: String,
    pub threatq_hostname: String,
    pub batch_size: u32,
    pub allow_multiple_runs: bool,
    pub kill_previous_after: Duration,
    pub sync_mode: SyncMode,
    pub full_resync_every: Duration,
    pub max_delete_percent: u8,
    pub parallel_page_requests: u8,
}

/// The form's JSON Schema, as published (`ui-schema/`).
pub fn schema() -> &'static Value {
    static SCHEMA: LazyLock<Value> = LazyLock::new(|| {
        let settings = SchemaSettings::draft2020_12().with(|s| s.inline_subschemas = true);
        settings.into_generator().into_root_schema_for::<UiForm>().to_value()
    });
    &SCHEMA
}

fn properties() -> &'static Map<String, Value> {
    schema()["properties"].as_object().expect("the form schema has properties")
}

fn required() -> Vec<&'static str> {
    schema()["required"].as_array().map(|r| r.iter().filter_map(Value::as_str).collect()).unwrap_or_default()
}

/// The label the user sees for a field (its schema title); the name itself for an unknown field.
pub fn label(field: &str) -> &str {
    properties().get(field).and_then(|p| p["title"].as_str()).unwrap_or(field)
}

/// Which scalar type a property takes; `Option<T>` comes out as `["T", "null"]`.
fn base_type(prop: &Value) -> &str {
    match &prop["type"] {
        Value::String(t) => t,
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).find(|t| *t != "null").unwrap_or("string"),
        // Selects are `oneOf` of string constants.
        _ => "string",
    }
}

/// The allowed values of a select: `(value, label)`.
fn options(prop: &Value) -> Option<Vec<(&str, &str)>> {
    let one_of = prop["oneOf"].as_array()?;
    Some(
        one_of
            .iter()
            .filter_map(|o| {
                let value = o["const"].as_str()?;
                Some((value, o["description"].as_str().unwrap_or(value)))
            })
            .collect(),
    )
}

fn is_secret(prop: &Value) -> bool {
    prop["writeOnly"].as_bool() == Some(true)
}

/// ThreatQ's field definitions (`user_fields`), derived from the schema so that the two never disagree.
pub fn user_fields() -> Vec<FieldDef> {
    let required = required();
    properties()
        .iter()
        .map(|(name, prop)| {
            let opts = options(prop);
            let kind = if opts.is_some() {
                "select"
            } else if is_secret(prop) {
                "password"
            } else if prop["x-ui-widget"] == "textarea" {
                "textarea"
            } else {
                match base_type(prop) {
                    "boolean" => "checkbox",
                    "integer" | "number" => "number",
                    _ => "text",
                }
            };
            FieldDef {
                name: name.clone(),
                label: label(name).to_owned(),
                kind: kind.to_owned(),
                required: required.contains(&name.as_str()),
                default: prop.get("default").cloned().filter(|d| !d.is_null()),
                description: prop["description"].as_str().unwrap_or_default().to_owned(),
                options: opts.map(|o| {
                    o.into_iter()
                        .map(|(value, label)| crate::threatq::FieldOption { value: value.into(), label: label.into() })
                        .collect()
                }),
                mask: is_secret(prop),
            }
        })
        .collect()
}

/// The connector as registered with ThreatQ (`manifest/`); `name` is the instance name (`-n`), if any.
pub fn definition(name: Option<&str>) -> ConnectorDefinition {
    ConnectorDefinition {
        name: name.unwrap_or(CONNECTOR_NAME).to_owned(),
        display_name: "Devo IOC Exporter".to_owned(),
        category: "Labs".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        namespace: "threatq.labs.devo_ioc_exporter".to_owned(),
        user_fields: user_fields(),
    }
}

/// The committed generated files, relative to the repository root, and what they must hold.
pub fn generated_files() -> [(&'static str, String); 2] {
    [
        ("ui-schema/devo-ioc-exporter.schema.json", pretty_json(schema())),
        ("manifest/tq-conn-devo-ioc-exporter.json", pretty_json(&definition(None))),
    ]
}

/// Pretty JSON with a final newline, as the generated files are committed.
pub fn pretty_json(value: &impl Serialize) -> String {
    serde_json::to_string_pretty(value).expect("serialisable") + "\n"
}

/// Turns one string from `custom_fields` into the JSON value its property takes, checking the schema's rules.
fn typed_value(field: &str, prop: &Value, raw: &str) -> Result<Value, ConfigError> {
    let shown = |raw: &str| if is_secret(prop) { "the value".to_owned() } else { format!("{raw:?}") };
    if let Some(opts) = options(prop) {
        return opts
            .iter()
            .find(|(value, label)| value.eq_ignore_ascii_case(raw) || label.eq_ignore_ascii_case(raw))
            .map(|(value, _)| Value::from(*value))
            .ok_or_else(|| {
                let allowed: Vec<&str> = opts.iter().map(|(v, _)| *v).collect();
                ConfigError::invalid(label(field), format!("{} is not one of: {}", shown(raw), allowed.join(", ")))
            });
    }
    match base_type(prop) {
        "boolean" => parse_bool(raw)
            .map(Value::Bool)
            .ok_or_else(|| ConfigError::invalid(label(field), format!("{} is not true or false", shown(raw)))),
        "integer" => {
            let (min, max) = (prop["minimum"].as_i64(), prop["maximum"].as_i64());
            let range = format!("a whole number from {} to {}", min.unwrap_or(0), max.unwrap_or(i64::MAX));
            let n: i64 = raw
                .parse()
                .map_err(|_| ConfigError::invalid(label(field), format!("{} is not {range}", shown(raw))))?;
            if min.is_some_and(|m| n < m) || max.is_some_and(|m| n > m) {
                return Err(ConfigError::invalid(label(field), format!("{n} is out of range: {range}")));
            }
            Ok(Value::from(n))
        }
        _ => {
            if let Some(pattern) = prop["pattern"].as_str() {
                // The only pattern in the form is Devo's name rule; the Devo side owns its check.
                debug_assert_eq!(pattern, r"^[A-Za-z0-9_]+$");
                if !crate::devo::is_valid_name(raw) {
                    return Err(ConfigError::invalid(
                        label(field),
                        format!("{} may hold only letters A-Z a-z, digits and underscores", shown(raw)),
                    ));
                }
            }
            Ok(Value::from(raw))
        }
    }
}

/// Unknown keys in `custom_fields` (a typo, or a field from an older version) are reported, not fatal.
pub fn unknown_fields(custom_fields: &BTreeMap<String, String>) -> Vec<&str> {
    custom_fields.keys().map(String::as_str).filter(|k| !properties().contains_key(*k)).collect()
}

/// Validates what the user typed in ThreatQ. Empty values mean "not set" and take the default.
pub fn parse_custom_fields(custom_fields: &BTreeMap<String, String>) -> Result<Settings, ConfigError> {
    let mut object = Map::new();
    for (name, prop) in properties() {
        let raw = custom_fields.get(name).map(|v| v.trim()).unwrap_or_default();
        if raw.is_empty() {
            if required().contains(&name.as_str()) {
                return Err(ConfigError::missing(label(name)));
            }
            continue;
        }
        object.insert(name.clone(), typed_value(name, prop, raw)?);
    }
    let form: UiForm = serde_json::from_value(Value::Object(object))
        .map_err(|e| ConfigError::Invalid { label: "configuration".into(), problem: e.to_string() })?;
    form.validate()
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

impl UiForm {
    /// Rules between fields that a per-field schema cannot say.
    fn validate(self) -> Result<Settings, ConfigError> {
        let devo = DevoSettings {
            method: self.devo_upload_method,
            region: self.devo_region,
            custom_endpoint: non_empty(self.devo_custom_endpoint),
            domain: non_empty(self.devo_domain),
            api_token: self.devo_api_token.filter(|t| !t.expose().trim().is_empty()),
            certificate: non_empty(self.devo_certificate),
            private_key: self.devo_private_key.filter(|k| !k.expose().trim().is_empty()),
            chain_ca: non_empty(self.devo_chain_ca),
        };
        if devo.region == Region::Custom && devo.custom_endpoint.is_none() {
            return Err(ConfigError::invalid(
                devo_label::CUSTOM_ENDPOINT,
                "is required when \"Devo API Region\" is Custom",
            ));
        }
        match devo.method {
            UploadMethod::LookupsApi => {
                if devo.api_token.is_none() {
                    return Err(ConfigError::invalid(
                        devo_label::API_TOKEN,
                        "is required for the Lookups API upload method",
                    ));
                }
                if devo.domain.is_none() && devo.certificate.is_none() {
                    return Err(ConfigError::invalid(
                        devo_label::DOMAIN,
                        "is required for the Lookups API upload method (or paste the X.509 certificate, whose \
                         subject names the domain)",
                    ));
                }
            }
            UploadMethod::Relay => {
                for (field_label, set) in [
                    (devo_label::CERTIFICATE, devo.certificate.is_some()),
                    (devo_label::PRIVATE_KEY, devo.private_key.is_some()),
                    (devo_label::CHAIN_CA, devo.chain_ca.is_some()),
                ] {
                    if !set {
                        return Err(ConfigError::invalid(field_label, "is required for the X.509 relay upload method"));
                    }
                }
            }
        }
        Ok(Settings {
            devo,
            lookup_table_name: self.lookup_table_name,
            data_collection_name: self.data_collection_name,
            threatq_hostname: self.threatq_hostname,
            batch_size: self.batch_size,
            allow_multiple_runs: self.allow_multiple_runs,
            kill_previous_after: Duration::from_secs(self.kill_previous_after_seconds.into()),
            sync_mode: self.sync_mode,
            full_resync_every: Duration::from_secs(u64::from(self.full_resync_hours) * 3600),
            max_delete_percent: self.max_delete_percent,
            parallel_page_requests: self.parallel_page_requests,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn minimal() -> BTreeMap<String, String> {
        fields(&[
            ("lookup_table_name", "tq_iocs"),
            ("data_collection_name", "Export to Devo"),
            ("threatq_hostname", "tq.example.com"),
            ("devo_domain", "acme"),
            ("devo_api_token", "tok-123"),
        ])
    }

    #[test]
    fn the_form_has_the_eighteen_fields_of_the_product() {
        let names: Vec<String> = user_fields().into_iter().map(|f| f.name).collect();
        assert_eq!(
            names,
            [
                "devo_upload_method",
                "devo_region",
                "devo_custom_endpoint",
                "devo_domain",
                "devo_api_token",
                "devo_certificate",
                "devo_private_key",
                "devo_chain_ca",
                "lookup_table_name",
                "data_collection_name",
                "threatq_hostname",
                "batch_size",
                "allow_multiple_runs",
                "kill_previous_after_seconds",
                "sync_mode",
                "full_resync_hours",
                "max_delete_percent",
                "parallel_page_requests",
            ]
        );
    }

    #[test]
    fn field_kinds_follow_the_types() {
        let kinds: BTreeMap<String, (String, bool)> =
            user_fields().into_iter().map(|f| (f.name, (f.kind, f.mask))).collect();
        assert_eq!(kinds["devo_upload_method"].0, "select");
        assert_eq!(kinds["devo_api_token"], ("password".into(), true));
        assert_eq!(kinds["devo_private_key"], ("password".into(), true));
        assert_eq!(kinds["devo_certificate"].0, "textarea");
        assert_eq!(kinds["batch_size"].0, "number");
        assert_eq!(kinds["allow_multiple_runs"].0, "checkbox");
        assert_eq!(kinds["lookup_table_name"].0, "text");
    }

    #[test]
    fn defaults_apply_to_unset_and_empty_values() {
        let mut f = minimal();
        f.insert("batch_size".into(), "".into());
        let s = parse_custom_fields(&f).unwrap();
        assert_eq!(s.batch_size, 1000);
        assert_eq!(s.kill_previous_after, Duration::from_secs(3600));
        assert_eq!(s.full_resync_every, Duration::from_secs(24 * 3600));
        assert_eq!(s.max_delete_percent, 50);
        assert_eq!(s.parallel_page_requests, 4);
        assert_eq!(s.devo.method, UploadMethod::LookupsApi);
        assert_eq!(s.devo.region, Region::Us);
        assert_eq!(s.sync_mode, SyncMode::Incremental);
        assert!(!s.allow_multiple_runs);
    }

    #[test]
    fn every_bad_value_names_the_label() {
        let cases = [
            ("batch_size", "0", "Batch Size"),
            ("batch_size", "10001", "Batch Size"),
            ("batch_size", "lots", "Batch Size"),
            ("lookup_table_name", "bad-name", "Lookup Table Name"),
            ("devo_region", "Mars", "Devo API Region"),
            ("allow_multiple_runs", "maybe", "Allow Multiple Runs"),
            ("max_delete_percent", "101", "Mass-Delete Guard (%)"),
            ("sync_mode", "sometimes", "Sync Mode"),
            ("parallel_page_requests", "0", "Parallel Page Requests"),
            ("parallel_page_requests", "17", "Parallel Page Requests"),
        ];
        for (field, value, label) in cases {
            let mut f = minimal();
            f.insert(field.into(), value.into());
            let err = parse_custom_fields(&f).unwrap_err().to_string();
            assert!(err.contains(label), "{field}={value}: {err}");
        }
    }

    #[test]
    fn required_fields_and_cross_field_rules() {
        let mut f = minimal();
        f.remove("lookup_table_name");
        assert_eq!(parse_custom_fields(&f).unwrap_err(), ConfigError::Missing { label: "Lookup Table Name".into() });

        let mut f = minimal();
        f.insert("devo_region".into(), "Custom".into());
        assert!(parse_custom_fields(&f).unwrap_err().to_string().contains("Custom Devo Endpoint"));

        let mut f = minimal();
        f.insert("devo_upload_method".into(), "relay".into());
        assert!(parse_custom_fields(&f).unwrap_err().to_string().contains("Devo X.509 Certificate"));
    }

    #[test]
    fn selects_accept_values_and_labels_in_any_case() {
        let mut f = minimal();
        f.insert("devo_region".into(), "eu".into());
        f.insert("sync_mode".into(), "Full (replace every run)".into());
        f.insert("allow_multiple_runs".into(), "true".into());
        let s = parse_custom_fields(&f).unwrap();
        assert_eq!(s.devo.region, Region::Eu);
        assert_eq!(s.sync_mode, SyncMode::Full);
        assert!(s.allow_multiple_runs);
    }

    #[test]
    fn generated_schema_and_manifest_are_committed() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        for (path, expected) in generated_files() {
            if std::env::var_os("UPDATE_GENERATED").is_some() {
                std::fs::write(root.join(path), &expected).unwrap();
            }
            let committed = std::fs::read_to_string(root.join(path)).unwrap_or_default();
            assert!(committed == expected, "{path} is out of date: run `UPDATE_GENERATED=1 cargo test generated`");
        }
    }

    #[test]
    fn secrets_never_print() {
        let mut f = minimal();
        f.insert("devo_api_token".into(), "super-secret-token".into());
        let s = parse_custom_fields(&f).unwrap();
        assert!(!format!("{s:?}").contains("super-secret-token"));
        let schema = schema().to_string();
        assert!(schema.contains("writeOnly"));
    }
}
