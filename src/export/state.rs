//! What Devo holds after the last accepted upload: IOC value → content digest, in a compact versioned file that is
//! replaced atomically and only after Devo accepted an upload. Its rows are ordered by key digest, as the merged
//! rows of a run are ([`Collected::winners`]), so that comparing the two is one pass over two sorted files and
//! neither ever sits in memory.
//!
//! File layout (little-endian): magic, version `u32`, target digest `u64`, last full replace (unix seconds `i64`),
//! row count `u64`, then per row, in key digest order, the key's length `u32`, the key's UTF-8 bytes and the row's
//! content digest `u64`; last, the BLAKE3 hash of everything before it, so a torn or edited file is detected.
//! (Version 1, of 0.1.0, listed the rows unordered; such a state is not read, and the run after an upgrade replaces
//! the lookup whole once.)

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use super::collect::{Collected, ContentDigest, KeyDigest, Winner, digest_key, digest_row};
use crate::devo::{Row, RowSource, Table, Target};
use crate::file::{NO_FOLLOW, parent};

const MAGIC: &[u8; 12] = b"TQDEVO-STATE";
const VERSION: u32 = 2;
/// Longest key accepted when reading, so a corrupt length cannot ask for gigabytes.
const MAX_KEY: u32 = 1 << 20;

/// The delivered state of one instance.
#[derive(Debug)]
pub struct State {
    path: PathBuf,
    /// What the rows meant when delivered (lookup, columns, upload target); see [`target_digest`].
    pub target: ContentDigest,
    pub last_full_at: DateTime<Utc>,
    count: u64,
}

/// One row of the state: its key's digest, the key, and the row's content digest.
#[derive(Debug)]
pub(super) struct Delivered {
    pub digest: KeyDigest,
    pub key: String,
    pub content: ContentDigest,
}

/// Why no usable state was loaded.
#[derive(Debug)]
pub enum Unusable {
    Missing,
    Corrupt(String),
}

/// The identity of what a state describes, hashed: the upload method, endpoint and domain ([`Target`]), the
/// lookup's name and its columns (names and types). When it changes, a full replace is due. Built from data, never
/// from log wording, so rewording a message cannot force a full replace on every installation.
pub fn target_digest(target: &Target, table: &Table) -> ContentDigest {
    #[derive(serde::Serialize)]
    struct Identity<'a> {
        #[serde(flatten)]
        target: &'a Target,
        lookup: &'a str,
        columns: &'a [crate::devo::Column],
    }
    let identity = Identity { target, lookup: &table.name, columns: &table.columns };
    digest_row(&[serde_json::to_string(&identity).expect("plain data serializes")])
}

struct Header {
    target: ContentDigest,
    last_full_at: i64,
    count: u64,
}

/// Reads the file while hashing it, to check the trailing checksum.
struct Checked<R> {
    inner: R,
    hasher: blake3::Hasher,
}

impl<R: Read> Checked<R> {
    fn exact<const N: usize>(&mut self) -> io::Result<[u8; N]> {
        let mut buf = [0; N];
        self.inner.read_exact(&mut buf)?;
        self.hasher.update(&buf);
        Ok(buf)
    }

    fn header(&mut self) -> io::Result<Header> {
        if &self.exact::<12>()? != MAGIC {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "not a state file"));
        }
        let version = u32::from_le_bytes(self.exact()?);
        if version == 1 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "written by 0.1.0, whose rows are not in order"));
        }
        if version != VERSION {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("state version {version} is unknown")));
        }
        Ok(Header {
            target: u64::from_le_bytes(self.exact()?),
            last_full_at: i64::from_le_bytes(self.exact()?),
            count: u64::from_le_bytes(self.exact()?),
        })
    }

    fn record(&mut self) -> io::Result<(String, ContentDigest)> {
        let len = u32::from_le_bytes(self.exact()?);
        if len > MAX_KEY {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "key longer than 1 MiB"));
        }
        let mut key = vec![0; len as usize];
        self.inner.read_exact(&mut key)?;
        self.hasher.update(&key);
        let key = String::from_utf8(key).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "key not UTF-8"))?;
        Ok((key, u64::from_le_bytes(self.exact()?)))
    }

    fn verify_end(mut self) -> io::Result<()> {
        let expected = self.hasher.finalize();
        let mut stored = [0; 32];
        self.inner.read_exact(&mut stored)?;
        let mut rest = [0; 1];
        if stored != *expected.as_bytes() || self.inner.read(&mut rest)? != 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "checksum mismatch"));
        }
        Ok(())
    }
}

fn open(path: &Path) -> io::Result<(Checked<BufReader<File>>, Header)> {
    let file = File::options().read(true).custom_flags(NO_FOLLOW).open(path)?;
    let mut reader = Checked { inner: BufReader::with_capacity(1 << 16, file), hasher: blake3::Hasher::new() };
    let header = reader.header()?;
    Ok((reader, header))
}

impl State {
    /// Loads the state's header after checking the whole file (its checksum, and that its rows are in key digest
    /// order); a missing or damaged file is reported, never fatal: the caller does a full replace.
    pub fn load(path: &Path) -> Result<State, Unusable> {
        let read = || -> io::Result<State> {
            let (mut reader, header) = open(path)?;
            let mut last: Option<KeyDigest> = None;
            for _ in 0..header.count {
                let (key, _) = reader.record()?;
                let digest = digest_key(&key);
                if last.is_some_and(|last| last >= digest) {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "rows out of order"));
                }
                last = Some(digest);
            }
            reader.verify_end()?;
            Ok(State {
                path: path.to_owned(),
                target: header.target,
                last_full_at: DateTime::from_timestamp(header.last_full_at, 0).unwrap_or_default(),
                count: header.count,
            })
        };
        match read() {
            Ok(state) => Ok(state),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Unusable::Missing),
            Err(e) => Err(Unusable::Corrupt(e.to_string())),
        }
    }

    /// Rows Devo holds.
    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The rows, in key digest order, read from the file again.
    pub(super) fn rows(&self) -> impl Iterator<Item = io::Result<Delivered>> + '_ {
        let mut reader = None;
        let mut left = self.count;
        std::iter::from_fn(move || {
            if left == 0 {
                return None;
            }
            let next = (|| {
                let reader = match &mut reader {
                    Some((reader, _)) => reader,
                    None => &mut reader.insert(open(&self.path)?).0,
                };
                let (key, content) = reader.record()?;
                Ok(Delivered { digest: digest_key(&key), key, content })
            })();
            // After an error the pass ends: the rest of the file cannot be trusted.
            left = if next.is_ok() { left - 1 } else { 0 };
            Some(next)
        })
    }

    /// Notes, before an upload starts, that Devo may soon hold rows the state does not list. [`State::write`]
    /// clears the note; one left behind (a crash during or right after the upload, an upload Devo applied but
    /// whose acknowledgement was lost, an incremental upload half applied) makes the next run replace the whole
    /// lookup, since only then is a row that left the collection meanwhile sure to be deleted.
    pub fn begin_delivery(path: &Path) -> io::Result<()> {
        let marker = pending_path(path);
        let mut options = File::options();
        options.write(true).create(true).truncate(true).custom_flags(NO_FOLLOW);
        options.open(&marker)?.sync_all()?;
        File::open(parent(path))?.sync_all()
    }

    /// Whether an upload began after the state was last written.
    pub fn delivery_pending(path: &Path) -> bool {
        pending_path(path).exists()
    }

    /// Replaces the state file with `rows` (what Devo now holds) durably ([`crate::file::replace`]: temp file,
    /// fsync, rename, fsync of the folder); then clears the note of [`State::begin_delivery`]. The rows are sorted
    /// in memory: for tests, which build small states from rows.
    #[cfg(test)]
    pub(crate) fn write(
        path: &Path,
        target: ContentDigest,
        last_full_at: DateTime<Utc>,
        rows: &dyn RowSource,
    ) -> io::Result<()> {
        let mut records = rows
            .rows()
            .map(|row| {
                let mut row = row?;
                let content = digest_row(&row);
                let key = row.swap_remove(0);
                Ok((digest_key(&key), key.into_bytes(), content))
            })
            .collect::<io::Result<Vec<_>>>()?;
        records.sort_by_key(|(digest, _, _)| *digest);
        let records = records.into_iter().map(|(_, key, content)| Ok((key, content)));
        Self::write_records(path, target, last_full_at, rows.len(), records)
    }

    /// [`State::write`] for the rows of `collected` (every winning row, as a full replace or the changes left
    /// Devo), copied from its merged winners: no row is read or hashed again, and they are in order already.
    pub fn write_collected(
        path: &Path,
        target: ContentDigest,
        last_full_at: DateTime<Utc>,
        collected: &Collected,
    ) -> io::Result<()> {
        let records = collected.winners().map(|w| w.map(|w| (w.key, w.content)));
        Self::write_records(path, target, last_full_at, collected.unique(), records)
    }

    /// [`State::write_collected`] in two steps, so that the writing and its fsync can run while Devo takes the
    /// upload: this writes the next state beside the state file (on a thread of its own: it borrows nothing), and
    /// [`NextState::commit`] puts it in place once Devo accepted. Dropped uncommitted, it is removed.
    pub fn prepare_collected(
        path: &Path,
        target: ContentDigest,
        last_full_at: DateTime<Utc>,
        collected: &Collected,
    ) -> io::Result<impl FnOnce() -> io::Result<NextState> + Send + 'static> {
        let (path, count) = (path.to_owned(), collected.unique());
        let winners = collected.winners_owned()?;
        Ok(move || {
            let records = winners.map(|w| w.map(|w| (w.key, w.content)));
            Self::prepare_records(&path, target, last_full_at, count, records).map(|file| NextState { file, path })
        })
    }

    fn write_records(
        path: &Path,
        target: ContentDigest,
        last_full_at: DateTime<Utc>,
        count: u64,
        records: impl Iterator<Item = io::Result<(Vec<u8>, ContentDigest)>>,
    ) -> io::Result<()> {
        let file = Self::prepare_records(path, target, last_full_at, count, records)?;
        NextState { file, path: path.to_owned() }.commit()
    }

    fn prepare_records(
        path: &Path,
        target: ContentDigest,
        last_full_at: DateTime<Utc>,
        count: u64,
        records: impl Iterator<Item = io::Result<(Vec<u8>, ContentDigest)>>,
    ) -> io::Result<crate::file::Prepared> {
        crate::file::prepare(path, 0o600, |file| {
            let mut out = BufWriter::with_capacity(1 << 16, file);
            let mut hasher = blake3::Hasher::new();
            let mut put = |bytes: &[u8]| -> io::Result<()> {
                hasher.update(bytes);
                out.write_all(bytes)
            };
            put(MAGIC)?;
            put(&VERSION.to_le_bytes())?;
            put(&target.to_le_bytes())?;
            put(&last_full_at.timestamp().to_le_bytes())?;
            put(&count.to_le_bytes())?;
            let mut written = 0u64;
            for record in records {
                let (key, content) = record?;
                let len = u32::try_from(key.len())
                    .ok()
                    .filter(|l| *l <= MAX_KEY)
                    .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "an IOC value is longer than 1 MiB"))?;
                put(&len.to_le_bytes())?;
                put(&key)?;
                put(&content.to_le_bytes())?;
                written += 1;
            }
            if written != count {
                return Err(io::Error::other("the rows changed while the state was written"));
            }
            out.write_all(hasher.finalize().as_bytes())?;
            out.flush()
        })
    }
}

/// The next state, written and synced beside the state file ([`State::prepare_collected`]).
#[derive(Debug)]
pub struct NextState {
    file: crate::file::Prepared,
    path: PathBuf,
}

impl NextState {
    /// Makes this the state (rename, fsync of the folder), then clears the note of [`State::begin_delivery`].
    pub fn commit(self) -> io::Result<()> {
        self.file.commit()?;
        // Should this removal be lost to a crash, the next run merely replaces the lookup once more.
        match std::fs::remove_file(pending_path(&self.path)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// `<state>.pending`, beside the state file.
fn pending_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".pending");
    PathBuf::from(name)
}

/// What reading a run's winners and the state side by side meets, value by value.
pub(super) enum Met {
    /// A value the state does not hold.
    New(Winner),
    /// A value both hold.
    Held(Winner, Delivered),
    /// A value the state holds and the run no longer has.
    Gone(Delivered),
}

/// The run's winners and the state's rows (none without a state), both in key digest order, read side by side:
/// one pass over two sorted files. The first error ends what is read.
pub(super) fn side_by_side<'a>(
    collected: &'a Collected,
    state: Option<&'a State>,
) -> impl Iterator<Item = io::Result<Met>> + Send + 'a {
    let mut winners = collected.winners().peekable();
    let mut delivered = state.into_iter().flat_map(State::rows).peekable();
    std::iter::from_fn(move || match (winners.peek(), delivered.peek()) {
        (None, None) => None,
        (Some(Err(_)), _) => Some(Err(winners.next()?.expect_err("peeked an error"))),
        (_, Some(Err(_))) => Some(Err(delivered.next()?.expect_err("peeked an error"))),
        (Some(Ok(w)), Some(Ok(d))) if w.digest == d.digest => {
            let (w, d) = (winners.next()?.ok()?, delivered.next()?.ok()?);
            Some(Ok(Met::Held(w, d)))
        }
        (Some(Ok(w)), Some(Ok(d))) if w.digest > d.digest => Some(delivered.next()?.map(Met::Gone)),
        (Some(Ok(_)), _) => Some(winners.next()?.map(Met::New)),
        (None, Some(Ok(_))) => Some(delivered.next()?.map(Met::Gone)),
    })
}

/// Delete rows for keys Devo holds that the collection no longer has: the state's rows and the run's winners,
/// both in key digest order, read side by side.
pub struct Deletions<'a> {
    state: &'a State,
    collected: &'a Collected,
    columns: usize,
    count: u64,
}

impl<'a> Deletions<'a> {
    /// The `count` deletions (known from the [`super::Plan`]) of `state` against `collected`, as `columns`-wide
    /// rows with only the key set.
    pub(super) fn new(state: &'a State, collected: &'a Collected, columns: usize, count: u64) -> Self {
        Deletions { state, collected, columns, count }
    }
}

impl RowSource for Deletions<'_> {
    fn rows(&self) -> Box<dyn Iterator<Item = io::Result<Row>> + Send + '_> {
        if self.count == 0 {
            // Nothing to find: both files need not be read again.
            return Box::new(std::iter::empty());
        }
        let columns = self.columns;
        Box::new(side_by_side(self.collected, Some(self.state)).filter_map(move |met| match met {
            Ok(Met::Gone(delivered)) => {
                let mut row = vec![String::new(); columns];
                row[0] = delivered.key;
                Some(Ok(row))
            }
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        }))
    }

    fn len(&self) -> u64 {
        self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each part of the identity, changed alone, changes the digest; the same parts give the same digest.
    #[test]
    fn the_target_identity_is_the_method_endpoint_domain_lookup_and_columns() {
        use crate::devo::UploadMethod;
        use crate::devo::{Column, ColumnType};
        let target = Target {
            method: UploadMethod::LookupsApi,
            endpoint: "https://api-us.devo.com/lookup-api".into(),
            domain: "acme".into(),
        };
        let table = crate::export::table("tq_iocs");
        let base = target_digest(&target, &table);
        assert_eq!(target_digest(&target.clone(), &table.clone()), base, "nothing changed: same identity");
        let mut renamed = table.clone();
        renamed.columns[1].name = "type".into();
        let mut retyped = table.clone();
        retyped.columns[3].ty =
            if retyped.columns[3].ty == ColumnType::Int { ColumnType::Float } else { ColumnType::Int };
        let mut more = table.clone();
        more.columns.push(Column { name: "extra".into(), ty: ColumnType::Str });
        let other_endpoint = "https://api-eu.devo.com/lookup-api".to_owned();
        let changed = [
            ("method", target_digest(&Target { method: UploadMethod::Relay, ..target.clone() }, &table)),
            ("endpoint", target_digest(&Target { endpoint: other_endpoint, ..target.clone() }, &table)),
            ("domain", target_digest(&Target { domain: "acme_eu".into(), ..target.clone() }, &table)),
            ("lookup", target_digest(&target, &Table { name: "tq_iocs2".into(), ..table.clone() })),
            ("column name", target_digest(&target, &renamed)),
            ("column type", target_digest(&target, &retyped)),
            ("columns", target_digest(&target, &more)),
        ];
        for (part, digest) in changed {
            assert_ne!(digest, base, "changing the {part} changes the identity");
        }
    }

    fn rows(keys: &[&str]) -> Vec<Row> {
        keys.iter().map(|k| vec![(*k).to_owned(), format!("v-{k}")]).collect()
    }

    #[test]
    fn round_trip_and_deletions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.state");
        let at = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        State::write(&path, 42, at, &rows(&["a", "b\nc", "日本"])).unwrap();
        let state = State::load(&path).unwrap();
        assert_eq!((state.len(), state.target, state.last_full_at), (3, 42, at));
        let held: Vec<Delivered> = state.rows().collect::<io::Result<_>>().unwrap();
        let mut keys: Vec<&str> = held.iter().map(|d| d.key.as_str()).collect();
        assert!(held.is_sorted_by_key(|d| d.digest), "rows are in key digest order");
        keys.sort();
        assert_eq!(keys, ["a", "b\nc", "日本"]);
        let a = held.iter().find(|d| d.key == "a").unwrap();
        assert_eq!((a.digest, a.content), (digest_key("a"), digest_row(&["a".to_owned(), "v-a".to_owned()])));

        // Deletions: what the state holds and the collection no longer has.
        let mut collected = Collected::new(dir.path(), crate::export::COLUMNS.len()).unwrap();
        let mut only_a = vec![String::new(); crate::export::COLUMNS.len()];
        only_a[0] = "a".into();
        collected.push(&only_a).unwrap();
        collected.finish().unwrap();
        let plan = crate::export::Plan::new(&collected, Some(&state), None).unwrap();
        let deletions = plan.deletions(&state, &collected, 2);
        assert_eq!(deletions.len(), 2);
        let mut got: Vec<Row> = deletions.rows().collect::<io::Result<_>>().unwrap();
        got.sort();
        assert_eq!(got, vec![vec!["b\nc".to_owned(), String::new()], vec!["日本".to_owned(), String::new()]]);
    }

    #[test]
    fn missing_torn_and_foreign_files_are_unusable_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.state");
        assert!(matches!(State::load(&path), Err(Unusable::Missing)));

        State::write(&path, 1, Utc::now(), &rows(&["a", "b"])).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        for cut in [0, 5, 20, bytes.len() - 1] {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            assert!(matches!(State::load(&path), Err(Unusable::Corrupt(_))), "cut at {cut}");
        }
        let mut flipped = bytes.clone();
        flipped[50] ^= 1;
        std::fs::write(&path, flipped).unwrap();
        assert!(matches!(State::load(&path), Err(Unusable::Corrupt(_))));
        std::fs::write(&path, b"{\"json\": true}").unwrap();
        assert!(matches!(State::load(&path), Err(Unusable::Corrupt(_))));

        // A state whose rows are not in key digest order cannot be compared side by side with a run's rows.
        let (mut first, mut second) = ("a", "b");
        if digest_key(first) < digest_key(second) {
            (first, second) = (second, first);
        }
        let unordered = [first, second].map(|k| Ok((k.as_bytes().to_vec(), 0)));
        State::write_records(&path, 1, Utc::now(), 2, unordered.into_iter()).unwrap();
        assert!(matches!(State::load(&path), Err(Unusable::Corrupt(why)) if why.contains("order")));

        // 0.1.0's state (version 1) listed its rows unordered: it is not read, and says why.
        let mut old = bytes.clone();
        old[12..16].copy_from_slice(&1u32.to_le_bytes());
        std::fs::write(&path, old).unwrap();
        assert!(matches!(State::load(&path), Err(Unusable::Corrupt(why)) if why.contains("0.1.0")));
    }

    /// The state written from what collecting noted is the very file that reading the rows back gives.
    #[test]
    fn the_state_of_a_collection_needs_no_second_read_of_its_rows() {
        use crate::export::COLUMNS;
        let dir = tempfile::tempdir().unwrap();
        let row = |key: &str, score: &str| {
            let mut r = vec![String::new(); COLUMNS.len()];
            (r[0], r[3], r[5]) = (key.to_owned(), score.to_owned(), format!("{key}{score}"));
            r
        };
        let mut collected = Collected::new(dir.path(), COLUMNS.len()).unwrap();
        for r in [row("a", "1"), row("b\n,\"", "2"), row("a", "5"), row("日本", "0"), row("b\n,\"", "1")] {
            collected.push(&r).unwrap();
        }
        collected.finish().unwrap();
        let at = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let (read_back, noted) = (dir.path().join("read.state"), dir.path().join("noted.state"));
        State::write(&read_back, 9, at, &collected.all()).unwrap();
        State::write_collected(&noted, 9, at, &collected).unwrap();
        assert_eq!(std::fs::read(&noted).unwrap(), std::fs::read(&read_back).unwrap());
        let state = State::load(&noted).unwrap();
        assert_eq!(state.len(), 3);
        let a = state.rows().map(Result::unwrap).find(|d| d.key == "a").unwrap();
        assert_eq!(a.content, digest_row(&row("a", "5")));
    }

    #[test]
    fn an_upload_stays_pending_until_the_state_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.state");
        assert!(!State::delivery_pending(&path));
        State::begin_delivery(&path).unwrap();
        assert!(State::delivery_pending(&path), "a crash now leaves the note behind");
        State::write(&path, 1, Utc::now(), &rows(&["a"])).unwrap();
        assert!(!State::delivery_pending(&path));
        State::write(&path, 1, Utc::now(), &rows(&["a"])).unwrap();
    }
}
