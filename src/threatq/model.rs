//! What ThreatQ sends and receives, as the rest of the program sees it.

use std::borrow::Cow;
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

/// An IOC, normalised from either shape ThreatQ uses for type, status and score. Text is `String` once kept;
/// a page is read as `Indicator<Cow<str>>` ([`IndicatorRef`]), borrowing from the page's bytes what needs no
/// unescaping.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Indicator<S = String> {
    pub id: u64,
    pub value: S,
    pub type_name: S,
    pub status: S,
    /// `manual_score` if set, else `generated_score`, else the plain score; text as ThreatQ gave it.
    pub score: Option<S>,
    /// `(name, value)` in the order given; a name may repeat.
    pub attributes: Vec<(S, S)>,
    pub adversaries: Vec<S>,
    pub related_adversary_count: Option<u64>,
    pub sources: Vec<S>,
    pub tags: Vec<S>,
    pub created_at: Option<S>,
    pub updated_at: Option<S>,
    pub expires_at: Option<S>,
}

/// An indicator as read from a page, borrowing from it.
pub type IndicatorRef<'a> = Indicator<Cow<'a, str>>;

impl<S: AsRef<str>> Indicator<S> {
    /// All values of one attribute name, in order.
    pub fn attribute<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + Clone + 'a {
        self.attributes.iter().filter(move |(n, _)| n.as_ref().eq_ignore_ascii_case(name)).map(|(_, v)| v.as_ref())
    }
}

impl IndicatorRef<'_> {
    /// The indicator with text of its own.
    pub fn into_owned(self) -> Indicator {
        fn own(text: Cow<'_, str>) -> String {
            text.into_owned()
        }
        fn all(list: Vec<Cow<'_, str>>) -> Vec<String> {
            list.into_iter().map(own).collect()
        }
        Indicator {
            id: self.id,
            value: own(self.value),
            type_name: own(self.type_name),
            status: own(self.status),
            score: self.score.map(own),
            attributes: self.attributes.into_iter().map(|(n, v)| (own(n), own(v))).collect(),
            adversaries: all(self.adversaries),
            related_adversary_count: self.related_adversary_count,
            sources: all(self.sources),
            tags: all(self.tags),
            created_at: self.created_at.map(own),
            updated_at: self.updated_at.map(own),
            expires_at: self.expires_at.map(own),
        }
    }
}
