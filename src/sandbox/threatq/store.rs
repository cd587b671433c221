//! The stand-in's indicators: ids `1..=generated` come from the [`Generator`] on demand; an overlay holds the
//! edits, removals and additions tests make. Paging walks ids in order (`sort=id`) without building the set.

use std::collections::BTreeMap;

use serde_json::Value;

use super::filter::Filter;
use super::generate::Generator;

/// Every this many matches of a filtered query, the index remembers the id, so an offset is found by a short walk.
const CHECKPOINT_EVERY: u64 = 1024;
/// Filtered queries whose index is kept; a run pages one query, a test a few.
const CACHED_QUERIES: usize = 4;

pub(super) struct Store {
    generator: Generator,
    generated: u64,
    /// `Some` replaces or adds an indicator, `None` removes a generated one.
    overlay: BTreeMap<u64, Option<Value>>,
    /// Bumped at every change, so cached indexes of filtered queries go stale.
    version: u64,
    indexes: Vec<Index>,
}

struct Index {
    key: String,
    version: u64,
    total: u64,
    /// The id of match number `k * CHECKPOINT_EVERY`.
    checkpoints: Vec<u64>,
}

impl Store {
    pub fn new(seed: u64, generated: u64) -> Self {
        Store { generator: Generator::new(seed), generated, overlay: BTreeMap::new(), version: 0, indexes: Vec::new() }
    }

    fn changed(&mut self) {
        self.version += 1;
    }

    /// Changes at every edit: what was rendered from an older version is stale.
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn get(&self, id: u64) -> Option<Value> {
        match self.overlay.get(&id) {
            Some(entry) => entry.clone(),
            None if (1..=self.generated).contains(&id) => Some(self.generator.indicator(id)),
            None => None,
        }
    }

    /// Stores `ioc` (its `id`, or the next free one), returning the id.
    pub fn upsert(&mut self, mut ioc: Value) -> u64 {
        let id = match ioc.get("id").and_then(Value::as_u64) {
            Some(id) => id,
            None => {
                let last = self.overlay.keys().next_back().copied().unwrap_or(0).max(self.generated);
                ioc["id"] = Value::from(last + 1);
                last + 1
            }
        };
        self.overlay.insert(id, Some(ioc));
        self.changed();
        id
    }

    pub fn remove(&mut self, id: u64) -> bool {
        if self.get(id).is_none() {
            return false;
        }
        if id <= self.generated {
            self.overlay.insert(id, None);
        } else {
            self.overlay.remove(&id);
        }
        self.changed();
        true
    }

    /// Changes the number of generated indicators (edits beyond the new count stay as additions).
    pub fn set_generated(&mut self, count: u64) {
        self.overlay.retain(|id, entry| *id <= count || entry.is_some());
        self.generated = count;
        self.changed();
    }

    /// The number of indicators, without visiting them.
    pub fn len(&self) -> u64 {
        let removed = self.overlay.values().filter(|e| e.is_none()).count() as u64;
        let added = self.overlay.range(self.generated + 1..).count() as u64;
        self.generated - removed + added
    }

    /// Ids present from `start` on, in order.
    fn ids_from(&self, start: u64) -> impl Iterator<Item = u64> + '_ {
        let generated = start.max(1)..=self.generated;
        let added = self.overlay.range(start.max(self.generated + 1)..).map(|(id, _)| *id);
        generated.chain(added).filter(|id| !matches!(self.overlay.get(id), Some(None)))
    }

    /// The id of the `n`-th indicator (0-based), skipping removed ones without a walk over the others.
    fn nth_id(&self, n: u64) -> Option<u64> {
        let additions: Vec<u64> = self.overlay.range(self.generated + 1..).map(|(id, _)| *id).collect();
        let at = |p: u64| {
            if p < self.generated { Some(p + 1) } else { additions.get((p - self.generated) as usize).copied() }
        };
        let removed_upto = |id: u64| self.overlay.range(..=id).filter(|(_, e)| e.is_none()).count() as u64;
        // The smallest position p holding n + (removals up to it): a fixpoint reached from below.
        let mut position = n;
        loop {
            let id = at(position)?;
            let next = n + removed_upto(id);
            if next == position {
                return Some(id);
            }
            position = next;
        }
    }

    /// A page of the query `filter` (keyed `key` for its cached index), `sort=id`: `(total, indicators)`.
    pub fn page(&mut self, filter: &Filter, key: &str, offset: u64, limit: u64) -> (u64, Vec<Value>) {
        if filter.is_everything() {
            let page = match self.nth_id(offset) {
                Some(start) => self.ids_from(start).take(limit as usize).filter_map(|id| self.get(id)).collect(),
                None => Vec::new(),
            };
            return (self.len(), page);
        }
        let (total, start, skip) = {
            let index = self.index(filter, key);
            match index.checkpoints.get((offset / CHECKPOINT_EVERY) as usize) {
                Some(start) if offset < index.total => (index.total, *start, offset % CHECKPOINT_EVERY),
                _ => return (index.total, Vec::new()),
            }
        };
        (total, self.matching_from(filter, start).skip(skip as usize).take(limit as usize).collect())
    }

    fn matching_from<'a>(&'a self, filter: &'a Filter, start: u64) -> impl Iterator<Item = Value> + 'a {
        self.ids_from(start).filter_map(|id| self.get(id)).filter(|ioc| filter.matches(ioc))
    }

    /// The cached index of a filtered query, built by one pass over all ids when missing or stale.
    fn index(&mut self, filter: &Filter, key: &str) -> &Index {
        let version = self.version;
        if let Some(i) = self.indexes.iter().position(|ix| ix.key == key && ix.version == version) {
            return &self.indexes[i];
        }
        let mut total = 0;
        let mut checkpoints = Vec::new();
        for id in self.ids_from(1) {
            if self.get(id).is_some_and(|ioc| filter.matches(&ioc)) {
                if total % CHECKPOINT_EVERY == 0 {
                    checkpoints.push(id);
                }
                total += 1;
            }
        }
        self.indexes.retain(|ix| ix.key != key && ix.version == version);
        if self.indexes.len() >= CACHED_QUERIES {
            self.indexes.remove(0);
        }
        self.indexes.push(Index { key: key.to_owned(), version, total, checkpoints });
        &self.indexes[self.indexes.len() - 1]
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ids(page: &[Value]) -> Vec<u64> {
        page.iter().map(|i| i["id"].as_u64().unwrap()).collect()
    }

    #[test]
    fn pages_skip_removed_and_include_added() {
        let mut store = Store::new(1, 10);
        store.remove(2);
        store.remove(5);
        let added = store.upsert(json!({"value": "x"}));
        assert_eq!(added, 11);
        assert_eq!(store.len(), 9);
        let all = Filter::EVERYTHING;
        assert_eq!(ids(&store.page(&all, "", 0, 4).1), vec![1, 3, 4, 6]);
        assert_eq!(ids(&store.page(&all, "", 4, 4).1), vec![7, 8, 9, 10]);
        assert_eq!(ids(&store.page(&all, "", 8, 4).1), vec![11]);
        assert!(store.page(&all, "", 9, 4).1.is_empty());
    }

    #[test]
    fn filtered_pages_agree_with_a_plain_scan() {
        let mut store = Store::new(3, 5000);
        store.remove(1500);
        let filter =
            super::super::filter::compile(&json!({"+or": [{"type_name": "FQDN"}, {"score": {"+gte": 9}}]})).unwrap();
        let expected: Vec<u64> = (1..=5000).filter(|id| store.get(*id).is_some_and(|i| filter.matches(&i))).collect();
        let mut got = Vec::new();
        loop {
            let (total, page) = store.page(&filter, "k", got.len() as u64, 333);
            assert_eq!(total, expected.len() as u64);
            if page.is_empty() {
                break;
            }
            got.extend(ids(&page));
        }
        assert_eq!(got, expected);
    }
}
