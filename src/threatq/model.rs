//! What ThreatQ sends and receives, as the rest of the program sees it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One option of a select field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldOption {
    pub value: String,
    pub label: String,
}

/// A field of the connector's Configuration tab, as ThreatQ stores it in `user_fields`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FieldDef {
    pub name: String,
    pub label: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub required: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<serde_json::Value>,
    #[serde(default)]
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<Vec<FieldOption>>,
    #[serde(default)]
    pub mask: bool,
}

/// The connector as this binary defines it (`manifest/`), registered with ThreatQ on first run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConnectorDefinition {
    pub name: String,
    pub display_name: String,
    /// Category name; resolved to an id at registration.
    pub category: String,
    pub version: String,
    pub namespace: String,
    pub user_fields: Vec<FieldDef>,
}

/// The connector record ThreatQ holds: the user's configuration and the toggle.
#[derive(Clone, Debug, PartialEq)]
pub struct ConnectorRecord {
    pub id: u64,
    pub name: String,
    pub display_name: String,
    pub version: String,
    pub is_active: bool,
    /// What the user typed in the Configuration tab; every value is a string.
    pub custom_fields: BTreeMap<String, String>,
    pub user_fields: Vec<FieldDef>,
    pub last_import_at: Option<String>,
    pub last_import_count: Option<u64>,
}

/// A saved Threat Library search.
#[derive(Clone, Debug, PartialEq)]
pub struct DataCollection {
    pub id: u64,
    pub name: String,
    /// `{"criteria": ..., "filters": ...}`; `null` parts mean "everything".
    pub criteria: serde_json::Value,
    pub filters: serde_json::Value,
}

/// An IOC, normalised from either shape ThreatQ uses for type, status and score.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Indicator {
    pub id: u64,
    pub value: String,
    pub type_name: String,
    pub status: String,
    /// `manual_score` if set, else `generated_score`, else the plain score; text as ThreatQ gave it.
    pub score: Option<String>,
    /// `(name, value)` in the order given; a name may repeat.
    pub attributes: Vec<(String, String)>,
    pub adversaries: Vec<String>,
    pub related_adversary_count: Option<u64>,
    pub sources: Vec<String>,
    pub tags: Vec<String>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
    pub expires_at: Option<String>,
}

impl Indicator {
    /// All values of one attribute name, in order.
    pub fn attribute<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.attributes.iter().filter(move |(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}
