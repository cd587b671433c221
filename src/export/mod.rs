//! From ThreatQ indicators to Devo lookup rows: the columns, the mapping, duplicates, the plan and the state.

mod map;

pub use map::{COLUMNS, map_indicator, table};
