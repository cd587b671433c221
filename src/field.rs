//! What the user types in the ThreatQ UI, as every layer sees it: a masked value that never prints, and the error
//! that names the field (by the label the user sees) to fix. It sits below `devo` and `connector`, which both use
//! it, and imports nothing of the crate.

use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// A value typed into a masked UI field. It never prints and is published as `writeOnly`.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct SecretText(SecretString);

impl SecretText {
    pub fn new(value: impl Into<String>) -> Self {
        Self(SecretString::from(value.into()))
    }
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
    pub fn secret(&self) -> &SecretString {
        &self.0
    }
}

impl fmt::Debug for SecretText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl JsonSchema for SecretText {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "SecretText".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "string", "format": "password", "writeOnly": true})
    }
}

/// A UI value that cannot be used, named by the label the user sees.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("UI field \"{label}\" is required")]
    Missing { label: String },
    #[error("UI field \"{label}\": {problem}")]
    Invalid { label: String, problem: String },
}

impl ConfigError {
    /// The field labelled `label` holds a value that cannot be used, for `problem`.
    pub fn invalid(label: &str, problem: impl Into<String>) -> Self {
        Self::Invalid { label: label.to_owned(), problem: problem.into() }
    }
    /// The field labelled `label` is empty but needed.
    pub fn missing(label: &str) -> Self {
        Self::Missing { label: label.to_owned() }
    }
}

/// Reads a yes/no typed by a person (a UI checkbox sent as text, an environment variable), in any case;
/// `None` for anything else, which the caller reports naming its field or variable.
pub fn parse_bool(raw: &str) -> Option<bool> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "y" | "on" => Some(true),
        "false" | "0" | "no" | "n" | "off" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yes_and_no_in_every_spelling_people_use() {
        for yes in ["true", "TRUE", "1", "yes", "Y", "on", " On "] {
            assert_eq!(parse_bool(yes), Some(true), "{yes}");
        }
        for no in ["false", "False", "0", "no", "N", "off", "OFF"] {
            assert_eq!(parse_bool(no), Some(false), "{no}");
        }
        for neither in ["", "maybe", "2", "tru", "enabled"] {
            assert_eq!(parse_bool(neither), None, "{neither}");
        }
    }

    #[test]
    fn secrets_never_print() {
        assert_eq!(format!("{:?}", SecretText::new("hunter2")), "[redacted]");
    }
}
