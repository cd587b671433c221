//! One IOC → one lookup row, with the columns of `docs/threatq.md` "What the exporter makes of it".

use crate::devo::{Column, ColumnType, Row, Table};
use crate::threatq::Indicator;

/// The lookup's columns in order; the first is the key.
pub const COLUMNS: [(&str, ColumnType); 15] = [
    ("ioc", ColumnType::Str),
    ("ioc_type", ColumnType::Str),
    ("status", ColumnType::Str),
    ("score", ColumnType::Str),
    ("attack_phase", ColumnType::Str),
    ("threat_type", ColumnType::Str),
    ("adversary", ColumnType::Str),
    ("has_adversary", ColumnType::Int),
    ("threatq_link", ColumnType::Str),
    ("threatq_id", ColumnType::Int),
    ("sources", ColumnType::Str),
    ("tags", ColumnType::Str),
    ("created_at", ColumnType::Str),
    ("updated_at", ColumnType::Str),
    ("expires_at", ColumnType::Str),
];

/// Positions of the columns the duplicate rule reads.
pub(crate) const SCORE: usize = 3;
pub(crate) const UPDATED_AT: usize = 13;

/// The lookup named `name` with the exporter's columns.
pub fn table(name: &str) -> Table {
    Table {
        name: name.to_owned(),
        columns: COLUMNS.iter().map(|(n, ty)| Column { name: (*n).to_owned(), ty: *ty }).collect(),
    }
}

/// Attributes whose values name an adversary, besides the related adversary objects.
const ADVERSARY_ATTRIBUTES: [&str; 3] = ["Actor", "Related Adversary", "Related Actor"];

const JOIN: &str = "; ";

/// Distinct values in first-seen order, joined with `; `.
fn join_distinct<'a>(values: impl IntoIterator<Item = &'a str>) -> String {
    let mut seen: Vec<&str> = Vec::new();
    for v in values.into_iter().map(str::trim).filter(|v| !v.is_empty()) {
        if !seen.contains(&v) {
            seen.push(v);
        }
    }
    seen.join(JOIN)
}

/// The row for one indicator; `threatq_hostname` is the UI's "ThreatQ Hostname", used for the link back.
pub fn map_indicator(ioc: &Indicator, threatq_hostname: &str) -> Row {
    let adversary = join_distinct(
        ADVERSARY_ATTRIBUTES
            .iter()
            .flat_map(|name| ioc.attribute(name))
            .chain(ioc.adversaries.iter().map(String::as_str)),
    );
    let has_adversary = ioc.related_adversary_count.unwrap_or(ioc.adversaries.len() as u64);
    let host =
        threatq_hostname.trim().trim_start_matches("https://").trim_start_matches("http://").trim_end_matches('/');
    vec![
        ioc.value.clone(),
        ioc.type_name.clone(),
        ioc.status.clone(),
        ioc.score.clone().unwrap_or_default(),
        join_distinct(ioc.attribute("Attack Phase")),
        join_distinct(ioc.attribute("Threat Type")),
        adversary,
        has_adversary.to_string(),
        format!("https://{host}/indicators/{}/details", ioc.id),
        ioc.id.to_string(),
        join_distinct(ioc.sources.iter().map(String::as_str)),
        join_distinct(ioc.tags.iter().map(String::as_str)),
        ioc.created_at.clone().unwrap_or_default(),
        ioc.updated_at.clone().unwrap_or_default(),
        ioc.expires_at.clone().unwrap_or_default(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apt_ioc() -> Indicator {
        Indicator {
            id: 106767,
            value: "107.189.1.90".into(),
            type_name: "IP Address".into(),
            status: "Active".into(),
            score: Some("7".into()),
            attributes: vec![
                ("Attack Phase".into(), "Delivery".into()),
                ("Actor".into(), "Cozy Bear".into()),
                ("Attack Phase".into(), "Exploitation".into()),
                ("Related Adversary".into(), "APT 29".into()),
                ("Threat Type".into(), "C2".into()),
                ("Related Actor".into(), "Nobelium".into()),
            ],
            adversaries: vec!["APT 29".into(), "Dukes".into()],
            related_adversary_count: None,
            sources: vec!["Feed X".into(), "Feed Y".into(), "Feed X".into()],
            tags: vec!["c2".into()],
            created_at: Some("2024-01-02 03:04:05".into()),
            updated_at: Some("2024-02-03 04:05:06".into()),
            expires_at: None,
        }
    }

    #[test]
    fn rule_columns_point_at_their_names() {
        assert_eq!((COLUMNS[SCORE].0, COLUMNS[UPDATED_AT].0), ("score", "updated_at"));
    }

    #[test]
    fn every_column_in_order() {
        let row = map_indicator(&apt_ioc(), "https://tq.example.com/");
        let named: Vec<(&str, &str)> = COLUMNS.iter().map(|(n, _)| *n).zip(row.iter().map(String::as_str)).collect();
        assert_eq!(
            named,
            [
                ("ioc", "107.189.1.90"),
                ("ioc_type", "IP Address"),
                ("status", "Active"),
                ("score", "7"),
                ("attack_phase", "Delivery; Exploitation"),
                ("threat_type", "C2"),
                ("adversary", "Cozy Bear; APT 29; Nobelium; Dukes"),
                ("has_adversary", "2"),
                ("threatq_link", "https://tq.example.com/indicators/106767/details"),
                ("threatq_id", "106767"),
                ("sources", "Feed X; Feed Y"),
                ("tags", "c2"),
                ("created_at", "2024-01-02 03:04:05"),
                ("updated_at", "2024-02-03 04:05:06"),
                ("expires_at", ""),
            ]
        );
    }

    #[test]
    fn the_related_adversary_count_wins_over_the_embedded_list() {
        let mut ioc = apt_ioc();
        ioc.related_adversary_count = Some(5);
        assert_eq!(map_indicator(&ioc, "tq")[7], "5");
        ioc.related_adversary_count = None;
        ioc.adversaries.clear();
        ioc.attributes.clear();
        let row = map_indicator(&ioc, "tq");
        assert_eq!((row[6].as_str(), row[7].as_str()), ("", "0"));
    }
}
