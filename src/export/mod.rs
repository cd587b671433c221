//! From ThreatQ indicators to Devo lookup rows: the columns, the mapping, duplicates, the plan and the state.

mod collect;
mod map;
mod plan;
mod state;

pub use collect::{Collected, ContentDigest, KeyDigest, RowSet, SpoolRows, Winner, digest_key, digest_row};
pub use map::{COLUMNS, PackedRows, RowMapper, map_indicator, table};
pub use plan::{Action, FullReason, Held, Plan, Refusal};
pub use state::{Deletions, NextState, State, Unusable, target_digest};
