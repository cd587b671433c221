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

/// Appends the distinct values, trimmed, in first-seen order, joined with `; `. Earlier values are compared
/// again rather than collected, as lists are short.
fn join_distinct<'a>(text: &mut String, values: impl Iterator<Item = &'a str> + Clone) {
    let mut first = true;
    for (i, v) in values.clone().enumerate() {
        let v = v.trim();
        if v.is_empty() || values.clone().take(i).any(|earlier| earlier.trim() == v) {
            continue;
        }
        if !first {
            text.push_str(JOIN);
        }
        text.push_str(v);
        first = false;
    }
}

/// Rows end to end in one buffer, with where each field ends: a page of rows is two allocations, not sixteen a
/// row, made by the task that read the page and freed in one go.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PackedRows {
    text: String,
    ends: Vec<usize>,
}

/// Makes indicators into rows.
#[derive(Clone, Debug)]
pub struct RowMapper {
    /// `https://{host}/indicators/`, the start of each link back to ThreatQ.
    link: String,
}

impl RowMapper {
    /// `threatq_hostname` is the UI's "ThreatQ Hostname", used for the link back.
    pub fn new(threatq_hostname: &str) -> RowMapper {
        let host =
            threatq_hostname.trim().trim_start_matches("https://").trim_start_matches("http://").trim_end_matches('/');
        RowMapper { link: format!("https://{host}/indicators/") }
    }

    /// Adds the row of one indicator to `rows`.
    pub fn push<S: AsRef<str>>(&self, rows: &mut PackedRows, ioc: &Indicator<S>) {
        fn optional<S: AsRef<str>>(value: &Option<S>) -> &str {
            value.as_ref().map_or("", AsRef::as_ref)
        }
        let PackedRows { text, ends } = rows;
        let mut end = |text: &String| ends.push(text.len());
        let mut digits = itoa::Buffer::new();
        for plain in [ioc.value.as_ref(), ioc.type_name.as_ref(), ioc.status.as_ref(), optional(&ioc.score)] {
            text.push_str(plain);
            end(text);
        }
        join_distinct(text, ioc.attribute("Attack Phase"));
        end(text);
        join_distinct(text, ioc.attribute("Threat Type"));
        end(text);
        let adversaries = ioc.adversaries.iter().map(AsRef::as_ref);
        join_distinct(text, ADVERSARY_ATTRIBUTES.iter().flat_map(|name| ioc.attribute(name)).chain(adversaries));
        end(text);
        text.push_str(digits.format(ioc.related_adversary_count.unwrap_or(ioc.adversaries.len() as u64)));
        end(text);
        let id = digits.format(ioc.id);
        for part in [self.link.as_str(), id, "/details"] {
            text.push_str(part);
        }
        end(text);
        text.push_str(id);
        end(text);
        join_distinct(text, ioc.sources.iter().map(AsRef::as_ref));
        end(text);
        join_distinct(text, ioc.tags.iter().map(AsRef::as_ref));
        end(text);
        for plain in [&ioc.created_at, &ioc.updated_at, &ioc.expires_at] {
            text.push_str(optional(plain));
            end(text);
        }
    }
}

impl PackedRows {
    /// How many rows.
    pub fn len(&self) -> usize {
        self.ends.len() / COLUMNS.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The fields of row `i`.
    pub fn fields(&self, i: usize) -> impl Iterator<Item = &str> {
        let ends = &self.ends[i * COLUMNS.len()..(i + 1) * COLUMNS.len()];
        let mut start = if i == 0 { 0 } else { self.ends[i * COLUMNS.len() - 1] };
        ends.iter().map(move |&end| {
            let field = &self.text[start..end];
            start = end;
            field
        })
    }
}

/// The row for one indicator; `threatq_hostname` is the UI's "ThreatQ Hostname", used for the link back.
pub fn map_indicator<S: AsRef<str>>(ioc: &Indicator<S>, threatq_hostname: &str) -> Row {
    let mut packed = PackedRows::default();
    RowMapper::new(threatq_hostname).push(&mut packed, ioc);
    packed.fields(0).map(str::to_owned).collect()
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

    /// Rows packed one after another read back, field by field, as the rows mapped one by one.
    #[test]
    fn packed_rows_are_the_mapped_rows() {
        let mut bare = apt_ioc();
        (bare.id, bare.value, bare.score, bare.attributes, bare.sources) = (7, " x ".into(), None, vec![], vec![]);
        let iocs = [apt_ioc(), bare, Indicator::default(), apt_ioc()];
        let (mut packed, mapper) = (PackedRows::default(), RowMapper::new("tq"));
        for ioc in &iocs {
            mapper.push(&mut packed, ioc);
        }
        assert_eq!(packed.len(), 4);
        for (i, ioc) in iocs.iter().enumerate() {
            assert_eq!(packed.fields(i).collect::<Vec<_>>(), map_indicator(ioc, "tq"), "row {i}");
        }
        assert!(PackedRows::default().is_empty());
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
