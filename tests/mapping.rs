//! The lookup rows of a fixture collection, as Devo receives them: every column, the adversary merge, the joined
//! multi-values, both JSON shapes of ThreatQ, and the duplicate rule.

use std::io;

use tqdevo::devo::RowSource;
use tqdevo::export::{COLUMNS, Collected, map_indicator};
use tqdevo::threatq::indicator_from_json;

#[test]
fn a_fixture_collection_maps_to_these_rows() {
    let fixture: Vec<serde_json::Value> =
        serde_json::from_str(include_str!("fixtures/collection.json")).expect("the fixture is JSON");
    let dir = tempfile::tempdir().unwrap();
    let mut collected = Collected::new(dir.path(), COLUMNS.len()).unwrap();
    for value in fixture {
        let ioc = indicator_from_json(value).expect("the fixture parses");
        collected.push(&map_indicator(&ioc, "tq.example.com")).unwrap();
    }
    collected.finish().unwrap();
    assert_eq!((collected.fetched(), collected.unique(), collected.duplicates()), (5, 4, 1));

    let rows: Vec<serde_json::Map<String, serde_json::Value>> = collected
        .all()
        .rows()
        .collect::<io::Result<Vec<_>>>()
        .unwrap()
        .into_iter()
        .map(|row| COLUMNS.iter().map(|(name, _)| name.to_string()).zip(row.into_iter().map(Into::into)).collect())
        .collect();
    insta::assert_json_snapshot!(rows);
}
