//! Gathers the mapped rows of one run without keeping them in memory: rows go to a spool file on disk, and a
//! compact index (a fixed-size digest per IOC value) decides which of two rows with the same value wins.

use std::collections::HashMap;
use std::fs::File;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::io::{self, BufReader, BufWriter, Read as _, Write as _};
use std::path::Path;

use chrono::NaiveDateTime;

use crate::devo::{Row, RowSource};

use super::map::{SCORE, UPDATED_AT};

/// An IOC value's digest: 128 bits of BLAKE3, kept as two words so that index slots need no 16-byte alignment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyDigest([u64; 2]);

impl Hash for KeyDigest {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Already uniform: one word is a perfect hash for the table.
        state.write_u64(self.0[0]);
    }
}

/// A row's content digest: 64 bits of BLAKE3; a change goes unnoticed with probability 2^-64.
pub type ContentDigest = u64;

/// Hashes a [`KeyDigest`] by taking its first word as it is; nothing else is hashed with it.
#[derive(Default)]
pub struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only reached if something other than a digest is hashed: fold the bytes so it still works.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A map keyed by IOC digests: 40 bytes a slot for the index, 24 for the state.
pub type DigestMap<V> = HashMap<KeyDigest, V, BuildHasherDefault<PassThrough>>;

pub fn digest_key(key: &str) -> KeyDigest {
    let bytes = blake3::hash(key.as_bytes());
    let word = |i: usize| u64::from_le_bytes(bytes.as_bytes()[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    KeyDigest([word(0), word(1)])
}

/// The content digest of a row: every field, length-prefixed so that field boundaries count.
pub fn digest_row(row: &[String]) -> ContentDigest {
    let mut hasher = blake3::Hasher::new();
    for field in row {
        hasher.update(&(field.len() as u64).to_le_bytes());
        hasher.update(field.as_bytes());
    }
    u64::from_le_bytes(hasher.finalize().as_bytes()[..8].try_into().expect("8 bytes"))
}

/// A set of spool row numbers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RowSet {
    words: Vec<u64>,
    len: u64,
}

impl RowSet {
    pub fn insert(&mut self, n: u32) {
        let (word, bit) = (n as usize / 64, n % 64);
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        if self.words[word] & (1 << bit) == 0 {
            self.words[word] |= 1 << bit;
            self.len += 1;
        }
    }

    pub fn remove(&mut self, n: u32) {
        let (word, bit) = (n as usize / 64, n % 64);
        if let Some(w) = self.words.get_mut(word)
            && *w & (1 << bit) != 0
        {
            *w &= !(1 << bit);
            self.len -= 1;
        }
    }

    pub fn contains(&self, n: u32) -> bool {
        self.words.get(n as usize / 64).is_some_and(|w| w & (1 << (n % 64)) != 0)
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn union(&self, other: &RowSet) -> RowSet {
        let (long, short) = if self.words.len() >= other.words.len() { (self, other) } else { (other, self) };
        let mut words = long.words.clone();
        for (w, o) in words.iter_mut().zip(&short.words) {
            *w |= o;
        }
        let len = words.iter().map(|w| u64::from(w.count_ones())).sum();
        RowSet { words, len }
    }
}

/// What the index keeps of the row that currently wins for one IOC value.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    /// Row number in the spool.
    pub row: u32,
    score: f32,
    updated_at: i64,
    pub content: ContentDigest,
}

impl Entry {
    /// The duplicate rule: the highest score wins, then the newest `updated_at`; on a tie the first seen stays.
    fn beats(&self, other: &Entry) -> bool {
        (self.score, self.updated_at) > (other.score, other.updated_at)
    }
}

fn rank(row: &[String]) -> (f32, i64) {
    let score = row[SCORE].trim().parse::<f32>().ok().filter(|s| s.is_finite()).unwrap_or(f32::NEG_INFINITY);
    let updated = NaiveDateTime::parse_from_str(row[UPDATED_AT].trim(), "%Y-%m-%d %H:%M:%S")
        .map(|t| t.and_utc().timestamp())
        .unwrap_or(i64::MIN);
    (score, updated)
}

/// The rows of one run: spooled to disk, deduplicated by value.
pub struct Collected {
    spool: tempfile::NamedTempFile,
    writer: Option<csv::Writer<BufWriter<File>>>,
    /// Beside the rows, each row's key and content digest (what the state file holds of it), so that the state
    /// is written by copying bytes, without parsing and hashing the rows again.
    keys: tempfile::NamedTempFile,
    keys_writer: Option<BufWriter<File>>,
    rows: u32,
    winners: RowSet,
    index: DigestMap<Entry>,
    duplicates: u64,
    columns: usize,
}

impl Collected {
    /// Starts an empty spool in `dir` (the instance's state directory, so it sits on the same disk).
    pub fn new(dir: &Path, columns: usize) -> io::Result<Self> {
        Self::sized(dir, columns, 0)
    }

    /// [`Collected::new`] for about `expected` values (e.g. as many as the delivered state holds): the index is
    /// sized up front, so that it does not grow by doubling, with the old and the new table alive at once.
    pub fn sized(dir: &Path, columns: usize, expected: u64) -> io::Result<Self> {
        let spool = tempfile::Builder::new().prefix(".spool-").tempfile_in(dir)?;
        let writer = csv::WriterBuilder::new().flexible(false).from_writer(BufWriter::new(spool.reopen()?));
        let keys = tempfile::Builder::new().prefix(".spool-keys-").tempfile_in(dir)?;
        let keys_writer = BufWriter::new(keys.reopen()?);
        // A little headroom for growth since the last run; the cap keeps a corrupt hint from asking for gigabytes.
        let capacity = expected.saturating_add(expected / 16).min(1 << 26) as usize;
        Ok(Self {
            spool,
            writer: Some(writer),
            keys,
            keys_writer: Some(keys_writer),
            rows: 0,
            winners: RowSet::default(),
            index: DigestMap::with_capacity_and_hasher(capacity, Default::default()),
            duplicates: 0,
            columns,
        })
    }

    /// Adds one mapped row (key first).
    pub fn push(&mut self, row: &Row) -> io::Result<()> {
        debug_assert_eq!(row.len(), self.columns);
        let writer = self.writer.as_mut().expect("push after finish");
        writer.write_record(row)?;
        let (score, updated_at) = rank(row);
        let entry = Entry { row: self.rows, content: digest_row(row), score, updated_at };
        let keys = self.keys_writer.as_mut().expect("push after finish");
        keys.write_all(&(row[0].len() as u64).to_le_bytes())?;
        keys.write_all(row[0].as_bytes())?;
        keys.write_all(&entry.content.to_le_bytes())?;
        self.rows = self.rows.checked_add(1).ok_or_else(|| io::Error::other("more than 4 billion rows"))?;
        match self.index.entry(digest_key(&row[0])) {
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(entry);
                self.winners.insert(entry.row);
            }
            std::collections::hash_map::Entry::Occupied(mut slot) => {
                self.duplicates += 1;
                if entry.beats(slot.get()) {
                    self.winners.remove(slot.get().row);
                    self.winners.insert(entry.row);
                    slot.insert(entry);
                }
            }
        }
        Ok(())
    }

    /// Flushes the spool; no rows can be added afterwards. The spool is read back through the page cache and
    /// removed at the end of the run, so it is not synced to disk.
    pub fn finish(&mut self) -> io::Result<()> {
        if let Some(mut writer) = self.writer.take() {
            writer.flush()?;
        }
        if let Some(mut keys) = self.keys_writer.take() {
            keys.flush()?;
        }
        Ok(())
    }

    /// Rows read from ThreatQ.
    pub fn fetched(&self) -> u64 {
        u64::from(self.rows)
    }

    /// Distinct IOC values.
    pub fn unique(&self) -> u64 {
        self.winners.len()
    }

    /// Rows dropped by the duplicate rule.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// The winning row of each value, by key digest.
    pub fn index(&self) -> &DigestMap<Entry> {
        &self.index
    }

    /// Every winning row, in the order ThreatQ gave them.
    pub fn all(&self) -> SpoolRows<'_> {
        self.select(self.winners.clone())
    }

    /// Each winning row's key and content digest, in the order of [`Collected::all`]: what the state file lists.
    pub fn delivered(&self) -> impl Iterator<Item = io::Result<(Vec<u8>, ContentDigest)>> + '_ {
        assert!(self.keys_writer.is_none(), "read the spool after finish()");
        let mut reader: Option<BufReader<File>> = None;
        let mut row = 0u32;
        std::iter::from_fn(move || {
            while row < self.rows {
                let next = (|| -> io::Result<Option<(Vec<u8>, ContentDigest)>> {
                    let reader = match &mut reader {
                        Some(reader) => reader,
                        None => reader.insert(BufReader::new(self.keys.reopen()?)),
                    };
                    let mut word = [0; 8];
                    reader.read_exact(&mut word)?;
                    let len = u64::from_le_bytes(word);
                    let key = if self.winners.contains(row) {
                        let mut key = vec![0; usize::try_from(len).map_err(io::Error::other)?];
                        reader.read_exact(&mut key)?;
                        Some(key)
                    } else {
                        reader.seek_relative(i64::try_from(len).map_err(io::Error::other)?)?;
                        None
                    };
                    reader.read_exact(&mut word)?;
                    Ok(key.map(|key| (key, u64::from_le_bytes(word))))
                })();
                // After an error the pass ends: the rest of the file cannot be trusted.
                row = if next.is_err() { self.rows } else { row + 1 };
                if let Some(found) = next.transpose() {
                    return Some(found);
                }
            }
            None
        })
    }

    /// The spooled rows whose numbers are in `rows`.
    pub fn select(&self, rows: RowSet) -> SpoolRows<'_> {
        assert!(self.writer.is_none(), "read the spool after finish()");
        SpoolRows { spool: &self.spool, rows }
    }
}

/// A [`RowSource`] over part of the spool; every `rows()` call reads the file again from the start.
pub struct SpoolRows<'a> {
    spool: &'a tempfile::NamedTempFile,
    rows: RowSet,
}

impl RowSource for SpoolRows<'_> {
    fn rows(&self) -> Box<dyn Iterator<Item = io::Result<Row>> + Send + '_> {
        // A fresh handle, so each pass starts at the beginning and passes do not share an offset.
        let file = match self.spool.reopen() {
            Ok(f) => f,
            Err(e) => return Box::new(std::iter::once(Err(e))),
        };
        let reader = csv::ReaderBuilder::new().has_headers(false).from_reader(BufReader::new(file));
        let wanted = &self.rows;
        Box::new(
            reader
                .into_records()
                .enumerate()
                .filter(move |(n, _)| wanted.contains(*n as u32))
                .map(|(_, record)| record.map(|r| r.iter().map(str::to_owned).collect()).map_err(io::Error::from)),
        )
    }

    fn len(&self) -> u64 {
        self.rows.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::COLUMNS;

    fn row(value: &str, score: &str, updated: &str) -> Row {
        let mut r = vec![String::new(); COLUMNS.len()];
        r[0] = value.into();
        r[SCORE] = score.into();
        r[UPDATED_AT] = updated.into();
        r
    }

    fn collect(rows: &[Row]) -> (tempfile::TempDir, Vec<Row>, u64) {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Collected::new(dir.path(), COLUMNS.len()).unwrap();
        for r in rows {
            c.push(r).unwrap();
        }
        c.finish().unwrap();
        let out = c.all().rows().collect::<io::Result<Vec<_>>>().unwrap();
        let dups = c.duplicates();
        drop(c);
        (dir, out, dups)
    }

    #[test]
    fn the_highest_score_then_the_newest_update_wins() {
        let rows = [
            row("evil.com", "5", "2024-01-01 00:00:00"),
            row("1.2.3.4", "3", "2024-01-01 00:00:00"),
            row("evil.com", "7.5", "2023-01-01 00:00:00"),
            row("1.2.3.4", "3", "2024-06-01 00:00:00"),
            row("evil.com", "7.5", "2022-01-01 00:00:00"),
        ];
        let (_dir, out, dups) = collect(&rows);
        assert_eq!(out, vec![rows[2].clone(), rows[3].clone()]);
        assert_eq!(dups, 3);
    }

    #[test]
    fn tricky_values_survive_the_spool_and_it_can_be_read_twice() {
        let rows = [row("a,\"b\"\r\nc", "", ""), row("日本 🎉|x", "1", "")];
        let dir = tempfile::tempdir().unwrap();
        let mut c = Collected::new(dir.path(), COLUMNS.len()).unwrap();
        for r in &rows {
            c.push(r).unwrap();
        }
        c.finish().unwrap();
        let all = c.all();
        for _ in 0..2 {
            assert_eq!(all.rows().collect::<io::Result<Vec<_>>>().unwrap(), rows);
        }
        assert_eq!(all.len(), 2);
    }

    #[test]
    fn row_digests_see_field_boundaries() {
        assert_ne!(digest_row(&["ab".into(), "c".into()]), digest_row(&["a".into(), "bc".into()]));
    }
}

#[cfg(test)]
mod layout {
    use super::*;

    #[test]
    fn index_slots_stay_compact() {
        assert_eq!(std::mem::size_of::<(KeyDigest, Entry)>(), 40);
        assert_eq!(std::mem::size_of::<(KeyDigest, ContentDigest)>(), 24);
    }
}
