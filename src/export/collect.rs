//! Gathers the mapped rows of one run in memory that stays flat however large the collection: rows go to a spool
//! file on disk, and what decides duplicates (each row's key digest and rank) is sorted in bounded runs on disk
//! and merged, so that the winners come out ordered by key digest, the order of the state file. The plan and the
//! state then compare and copy sorted files instead of holding a table of every IOC.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek as _, SeekFrom, Write as _};
use std::path::Path;

use chrono::{NaiveDate, NaiveDateTime};

use crate::devo::{Row, RowCursor, RowSource};

use super::map::{SCORE, UPDATED_AT};

/// An IOC value's digest: 128 bits of BLAKE3, ordered as the state file and the merged winners are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyDigest([u64; 2]);

impl KeyDigest {
    fn to_bytes(self) -> [u8; 16] {
        let mut bytes = [0; 16];
        bytes[..8].copy_from_slice(&self.0[0].to_be_bytes());
        bytes[8..].copy_from_slice(&self.0[1].to_be_bytes());
        bytes
    }

    fn from_bytes(bytes: [u8; 16]) -> KeyDigest {
        let word = |i: usize| u64::from_be_bytes(bytes[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        KeyDigest([word(0), word(1)])
    }
}

/// A row's content digest: 64 bits of BLAKE3; a change goes unnoticed with probability 2^-64.
pub type ContentDigest = u64;

pub fn digest_key(key: &str) -> KeyDigest {
    let bytes = blake3::hash(key.as_bytes());
    let word = |i: usize| u64::from_le_bytes(bytes.as_bytes()[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    KeyDigest([word(0), word(1)])
}

/// The content digest of a row: every field, length-prefixed so that field boundaries count.
pub fn digest_row<S: AsRef<str>>(row: &[S]) -> ContentDigest {
    digest_row_with(row, &mut Vec::new())
}

/// [`digest_row`], laying the fields out in `scratch` first: one hash call instead of two a field.
fn digest_row_with<S: AsRef<str>>(row: &[S], scratch: &mut Vec<u8>) -> ContentDigest {
    scratch.clear();
    for field in row {
        let field = field.as_ref();
        scratch.extend_from_slice(&(field.len() as u64).to_le_bytes());
        scratch.extend_from_slice(field.as_bytes());
    }
    u64::from_le_bytes(blake3::hash(scratch).as_bytes()[..8].try_into().expect("8 bytes"))
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

    pub fn contains(&self, n: u32) -> bool {
        self.words.get(n as usize / 64).is_some_and(|w| w & (1 << (n % 64)) != 0)
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The highest row number in the set.
    fn last(&self) -> Option<u32> {
        let (i, word) = self.words.iter().enumerate().rev().find(|(_, w)| **w != 0)?;
        Some(i as u32 * 64 + 63 - word.leading_zeros())
    }

    /// The row numbers, in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + Send + '_ {
        self.words.iter().enumerate().flat_map(|(i, word)| {
            let mut bits = *word;
            std::iter::from_fn(move || {
                (bits != 0).then(|| {
                    let bit = bits.trailing_zeros();
                    bits &= bits - 1;
                    i as u32 * 64 + bit
                })
            })
        })
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

/// What sorting keeps of one row: its key's digest, where it is in the spool, what the duplicate rule compares,
/// and its content digest (what the state file holds of it, with the key itself).
#[derive(Clone, Copy, Debug, Default)]
struct Noted {
    key: KeyDigest,
    row: u32,
    score: f32,
    updated_at: i64,
    content: ContentDigest,
}

impl Noted {
    /// Size of the fixed part of a sorted-run record; the key's bytes follow it.
    const BYTES: usize = 16 + 4 + 4 + 8 + 8 + 4;

    /// The order of sorted runs: by key digest, and within one key the row that wins first. The duplicate rule:
    /// the highest score wins, then the newest `updated_at`; on a tie the first seen stays.
    fn order(&self, other: &Noted) -> Ordering {
        self.key
            .cmp(&other.key)
            .then_with(|| other.score.total_cmp(&self.score))
            .then_with(|| other.updated_at.cmp(&self.updated_at))
            .then_with(|| self.row.cmp(&other.row))
    }

    fn write(&self, key: &[u8], out: &mut impl io::Write) -> io::Result<()> {
        let mut fixed = [0; Self::BYTES];
        fixed[..16].copy_from_slice(&self.key.to_bytes());
        fixed[16..20].copy_from_slice(&self.row.to_le_bytes());
        fixed[20..24].copy_from_slice(&self.score.to_le_bytes());
        fixed[24..32].copy_from_slice(&self.updated_at.to_le_bytes());
        fixed[32..40].copy_from_slice(&self.content.to_le_bytes());
        fixed[40..44].copy_from_slice(&key_len(key)?.to_le_bytes());
        out.write_all(&fixed)?;
        out.write_all(key)
    }

    /// Reads one record into `key`; `None` at the end of the run.
    fn read(input: &mut impl io::BufRead, key: &mut Vec<u8>) -> io::Result<Option<Noted>> {
        if input.fill_buf()?.is_empty() {
            return Ok(None);
        }
        let mut fixed = [0; Self::BYTES];
        input.read_exact(&mut fixed)?;
        let field = |at: usize| -> [u8; 8] { fixed[at..at + 8].try_into().expect("8 bytes") };
        let noted = Noted {
            key: KeyDigest::from_bytes(fixed[..16].try_into().expect("16 bytes")),
            row: u32::from_le_bytes(fixed[16..20].try_into().expect("4 bytes")),
            score: f32::from_le_bytes(fixed[20..24].try_into().expect("4 bytes")),
            updated_at: i64::from_le_bytes(field(24)),
            content: u64::from_le_bytes(field(32)),
        };
        read_key(input, u32::from_le_bytes(fixed[40..44].try_into().expect("4 bytes")), key)?;
        Ok(Some(noted))
    }
}

fn key_len(key: &[u8]) -> io::Result<u32> {
    u32::try_from(key.len()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "an IOC value of 4 GiB or more"))
}

fn read_key(input: &mut impl Read, len: u32, key: &mut Vec<u8>) -> io::Result<()> {
    key.clear();
    key.resize(len as usize, 0);
    input.read_exact(key)
}

/// The rank of a row for the duplicate rule: its score, then its `updated_at` in unix seconds (ThreatQ's
/// `YYYY-MM-DD HH:MM:SS`, read without a format parser when it has exactly that shape).
fn rank<S: AsRef<str>>(row: &[S]) -> (f32, i64) {
    let score = row[SCORE].as_ref().trim().parse::<f32>().ok().filter(|s| s.is_finite()).unwrap_or(f32::NEG_INFINITY);
    let updated = row[UPDATED_AT].as_ref().trim();
    let updated = canonical_time(updated)
        .or_else(|| NaiveDateTime::parse_from_str(updated, "%Y-%m-%d %H:%M:%S").ok())
        .map_or(i64::MIN, |t| t.and_utc().timestamp());
    (score, updated)
}

fn canonical_time(text: &str) -> Option<NaiveDateTime> {
    let b = text.as_bytes();
    if b.len() != 19 || b[4] != b'-' || b[7] != b'-' || b[10] != b' ' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<u32> {
        b[range].iter().try_fold(0u32, |n, d| d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0')))
    };
    NaiveDate::from_ymd_opt(i32::try_from(number(0..4)?).ok()?, number(5..7)?, number(8..10)?)?.and_hms_opt(
        number(11..13)?,
        number(14..16)?,
        number(17..19)?,
    )
}

/// Bytes of noted rows sorted in memory before they go to disk as one run: the memory collecting needs, whatever
/// the collection's size.
const RUN_BYTES: usize = 2 << 20;
/// Read buffer of each run while merging; runs are RUN_BYTES each, so a million rows make ~40 of them.
const MERGE_BUFFER: usize = 32 << 10;

/// The rows of one run: spooled to disk, deduplicated by value.
pub struct Collected {
    /// Each row as its content digest reads it ([`digest_row`]: every value after its length), after the length
    /// of that record: written and read back without quoting or parsing.
    spool: tempfile::NamedTempFile,
    writer: Option<BufWriter<File>>,
    /// Where each row's record starts in the spool (`u64`, in row order), so that a few rows are read without
    /// reading the whole spool; and the spool's length so far.
    offsets: tempfile::NamedTempFile,
    offsets_writer: Option<BufWriter<File>>,
    spool_len: u64,
    /// Noted rows, sorted run by run: each run's records are ordered by [`Noted::order`].
    runs: tempfile::NamedTempFile,
    runs_writer: Option<BufWriter<File>>,
    /// Byte ranges of the runs in `runs`.
    run_spans: Vec<(u64, u64)>,
    /// The run being gathered, with its keys' bytes (offset and length into `run_keys`), and its size limit.
    run: Vec<(Noted, u32, u32)>,
    run_bytes: usize,
    run_keys: Vec<u8>,
    /// Each row laid out for its content digest, which is also its spool record; reused from row to row.
    scratch: Vec<u8>,
    /// After [`Collected::finish`]: the winning row of each value, ordered by key digest.
    winners_file: tempfile::NamedTempFile,
    rows: u32,
    winners: RowSet,
    duplicates: u64,
    columns: usize,
}

/// One value's winning row, as the merge gives it: the key digest, its spool row, its content digest and the key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Winner {
    pub digest: KeyDigest,
    pub row: u32,
    pub content: ContentDigest,
    pub key: Vec<u8>,
}

impl Collected {
    /// Starts an empty spool in `dir` (the instance's state directory, so it sits on the same disk).
    pub fn new(dir: &Path, columns: usize) -> io::Result<Self> {
        let temp = |prefix: &str| tempfile::Builder::new().prefix(prefix).tempfile_in(dir);
        let spool = temp(".spool-")?;
        let writer = BufWriter::with_capacity(1 << 16, spool.reopen()?);
        let offsets = temp(".spool-offsets-")?;
        let offsets_writer = BufWriter::new(offsets.reopen()?);
        let runs = temp(".spool-runs-")?;
        let runs_writer = BufWriter::new(runs.reopen()?);
        Ok(Self {
            spool,
            writer: Some(writer),
            offsets,
            offsets_writer: Some(offsets_writer),
            spool_len: 0,
            runs,
            runs_writer: Some(runs_writer),
            run_spans: Vec::new(),
            run: Vec::new(),
            run_bytes: RUN_BYTES,
            run_keys: Vec::new(),
            scratch: Vec::new(),
            winners_file: temp(".spool-winners-")?,
            rows: 0,
            winners: RowSet::default(),
            duplicates: 0,
            columns,
        })
    }

    /// Adds one mapped row (key first).
    pub fn push<S: AsRef<str>>(&mut self, row: &[S]) -> io::Result<()> {
        debug_assert_eq!(row.len(), self.columns);
        let (score, updated_at) = rank(row);
        let key = row[0].as_ref().as_bytes();
        let noted = Noted {
            key: digest_key(row[0].as_ref()),
            row: self.rows,
            score,
            updated_at,
            content: digest_row_with(row, &mut self.scratch),
        };
        let writer = self.writer.as_mut().expect("push after finish");
        writer.write_all(&key_len(&self.scratch)?.to_le_bytes())?;
        writer.write_all(&self.scratch)?;
        self.offsets_writer.as_mut().expect("push after finish").write_all(&self.spool_len.to_le_bytes())?;
        self.spool_len += 4 + self.scratch.len() as u64;
        let offset = u32::try_from(self.run_keys.len()).expect("runs are flushed long before 4 GiB");
        self.run.push((noted, offset, key_len(key)?));
        self.run_keys.extend_from_slice(key);
        self.rows = self.rows.checked_add(1).ok_or_else(|| io::Error::other("more than 4 billion rows"))?;
        if self.run_keys.len() + self.run.len() * size_of::<(Noted, u32, u32)>() >= self.run_bytes {
            self.flush_run()?;
        }
        Ok(())
    }

    /// Sorts the run gathered so far and appends it to the runs file.
    fn flush_run(&mut self) -> io::Result<()> {
        if self.run.is_empty() {
            return Ok(());
        }
        self.run.sort_unstable_by(|a, b| a.0.order(&b.0));
        let out = self.runs_writer.as_mut().expect("flush after finish");
        let start = self.run_spans.last().map_or(0, |(_, end)| *end);
        let mut written = 0u64;
        for (noted, offset, len) in &self.run {
            let key = &self.run_keys[*offset as usize..(*offset + *len) as usize];
            noted.write(key, out)?;
            written += (Noted::BYTES + key.len()) as u64;
        }
        self.run_spans.push((start, start + written));
        self.run.clear();
        self.run_keys.clear();
        Ok(())
    }

    /// Ends collecting: flushes the spool, and merges the sorted runs into the winners, one per value in key
    /// digest order (the first of each value's rows in merge order; the others are duplicates). The spool is read
    /// back through the page cache and removed at the end of the run, so nothing is synced to disk.
    pub fn finish(&mut self) -> io::Result<()> {
        let Some(mut writer) = self.writer.take() else { return Ok(()) };
        writer.flush()?;
        self.offsets_writer.take().expect("open until finish").flush()?;
        self.flush_run()?;
        let mut runs_writer = self.runs_writer.take().expect("open until finish");
        runs_writer.flush()?;
        drop(runs_writer);
        self.run = Vec::new();
        self.run_keys = Vec::new();

        let mut heads = BinaryHeap::new();
        let mut readers = Vec::with_capacity(self.run_spans.len());
        for (run, (start, end)) in self.run_spans.iter().enumerate() {
            let mut file = self.runs.reopen()?;
            file.seek(SeekFrom::Start(*start))?;
            let mut reader = BufReader::with_capacity(MERGE_BUFFER, file.take(end - start));
            let mut key = Vec::new();
            if let Some(noted) = Noted::read(&mut reader, &mut key)? {
                heads.push(Head { noted, key, run });
            }
            readers.push(reader);
        }
        let mut out = BufWriter::with_capacity(1 << 16, self.winners_file.reopen()?);
        let mut last: Option<KeyDigest> = None;
        while let Some(mut head) = heads.pop() {
            if last == Some(head.noted.key) {
                self.duplicates += 1;
            } else {
                last = Some(head.noted.key);
                self.winners.insert(head.noted.row);
                let Noted { key: digest, row, content, .. } = head.noted;
                write_winner(&mut out, digest, row, content, &head.key)?;
            }
            if let Some(noted) = Noted::read(&mut readers[head.run], &mut head.key)? {
                head.noted = noted;
                heads.push(head);
            }
        }
        out.flush()?;
        // The runs are merged: give their disk space back now.
        self.runs.as_file().set_len(0)?;
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

    /// Every winning row, in the order ThreatQ gave them.
    pub fn all(&self) -> SpoolRows<'_> {
        self.select(self.winners.clone())
    }

    /// The winning row of each value, ordered by key digest: what the plan compares with the state, and what the
    /// next state lists.
    pub fn winners(&self) -> impl Iterator<Item = io::Result<Winner>> + '_ {
        assert!(self.writer.is_none(), "read the winners after finish()");
        winners_of(move || self.winners_file.reopen())
    }

    /// [`Collected::winners`] from a handle of their file opened now: a pass that borrows nothing, for another
    /// thread.
    pub fn winners_owned(&self) -> io::Result<impl Iterator<Item = io::Result<Winner>> + Send + 'static> {
        assert!(self.writer.is_none(), "read the winners after finish()");
        let mut file = Some(self.winners_file.reopen()?);
        Ok(winners_of(move || file.take().ok_or_else(|| io::Error::other("the winners are read once"))))
    }

    /// The spooled rows whose numbers are in `rows`.
    pub fn select(&self, rows: RowSet) -> SpoolRows<'_> {
        assert!(self.writer.is_none(), "read the spool after finish()");
        SpoolRows { spool: &self.spool, offsets: &self.offsets, total: self.rows, rows }
    }
}

/// The head of one sorted run while merging; the heap pops the record first in [`Noted::order`].
struct Head {
    noted: Noted,
    key: Vec<u8>,
    run: usize,
}

impl Ord for Head {
    fn cmp(&self, other: &Self) -> Ordering {
        other.noted.order(&self.noted)
    }
}

impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Head {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Head {}

/// A winners-file record: key digest, spool row, content digest, the key's length and bytes.
fn write_winner(
    out: &mut impl io::Write,
    digest: KeyDigest,
    row: u32,
    content: ContentDigest,
    key: &[u8],
) -> io::Result<()> {
    out.write_all(&digest.to_bytes())?;
    out.write_all(&row.to_le_bytes())?;
    out.write_all(&content.to_le_bytes())?;
    out.write_all(&key_len(key)?.to_le_bytes())?;
    out.write_all(key)
}

/// One pass over a winners file, opened by `open` at the first read.
fn winners_of(mut open: impl FnMut() -> io::Result<File>) -> impl Iterator<Item = io::Result<Winner>> {
    let mut reader: Option<BufReader<File>> = None;
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        let next = (|| {
            let reader = match &mut reader {
                Some(reader) => reader,
                None => reader.insert(BufReader::with_capacity(1 << 16, open()?)),
            };
            read_winner(reader)
        })();
        // The pass ends at the end of the file, or after an error: the rest of the file cannot be trusted.
        done = !matches!(next, Ok(Some(_)));
        next.transpose()
    })
}

fn read_winner(input: &mut impl io::BufRead) -> io::Result<Option<Winner>> {
    if input.fill_buf()?.is_empty() {
        return Ok(None);
    }
    let mut fixed = [0; 16 + 4 + 8 + 4];
    input.read_exact(&mut fixed)?;
    let mut winner = Winner {
        digest: KeyDigest::from_bytes(fixed[..16].try_into().expect("16 bytes")),
        row: u32::from_le_bytes(fixed[16..20].try_into().expect("4 bytes")),
        content: u64::from_le_bytes(fixed[20..28].try_into().expect("8 bytes")),
        key: Vec::new(),
    };
    read_key(input, u32::from_le_bytes(fixed[28..32].try_into().expect("4 bytes")), &mut winner.key)?;
    Ok(Some(winner))
}

/// A [`RowSource`] over part of the spool. Every pass starts over: it reads the file from the start up to the last
/// row wanted or, for a few rows of many ([`SPARSE`]), each wanted row where it is.
pub struct SpoolRows<'a> {
    spool: &'a tempfile::NamedTempFile,
    offsets: &'a tempfile::NamedTempFile,
    /// Rows in the spool.
    total: u32,
    rows: RowSet,
}

/// Up to one row in this many wanted, a pass reads each wanted row where it is (by its offset) instead of reading
/// the spool through: a small incremental upload then reads its rows, not the whole collection.
const SPARSE: u64 = 32;

impl RowSource for SpoolRows<'_> {
    fn rows(&self) -> Box<dyn Iterator<Item = io::Result<Row>> + Send + '_> {
        let mut cursor = self.cursor();
        Box::new(std::iter::from_fn(move || {
            cursor.next_row().map(|row| row.map(|r| r.iter().map(str::to_owned).collect()))
        }))
    }

    fn cursor(&self) -> Box<dyn RowCursor + '_> {
        if self.rows.len() * SPARSE < u64::from(self.total) {
            let files = self.spool.reopen().and_then(|spool| Ok((spool, self.offsets.reopen()?)));
            return Box::new(SparseCursor {
                files: Some(files),
                wanted: Box::new(self.rows.iter()),
                bytes: Vec::new(),
                record: csv::StringRecord::new(),
            });
        }
        // A fresh handle, so each pass starts at the beginning and passes do not share an offset.
        let reader = self.spool.reopen().map(|file| BufReader::with_capacity(1 << 16, file));
        let last = self.rows.last().map_or(0, |last| u64::from(last) + 1);
        Box::new(SpoolCursor {
            reader: Some(reader),
            bytes: Vec::new(),
            record: csv::StringRecord::new(),
            wanted: &self.rows,
            next: 0,
            last,
        })
    }

    fn len(&self) -> u64 {
        self.rows.len()
    }
}

struct SpoolCursor<'a> {
    /// `None` once the pass is over; an error opening the spool is given by the first read.
    reader: Option<io::Result<BufReader<File>>>,
    /// The spooled record of the current row, and its values.
    bytes: Vec<u8>,
    record: csv::StringRecord,
    wanted: &'a RowSet,
    /// The number of the next row in the spool, and one past the last wanted.
    next: u64,
    last: u64,
}

impl SpoolCursor<'_> {
    /// Reads the next row into `record` if it is wanted, else skips it; `false` at the end of the spool.
    fn advance(&mut self) -> io::Result<bool> {
        let reader = match self.reader.as_mut() {
            None => return Ok(false),
            Some(Ok(reader)) => reader,
            Some(Err(_)) => return Err(self.reader.take().expect("is some").expect_err("is an error")),
        };
        let mut len = [0; 4];
        match reader.read_exact(&mut len) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
            other => other?,
        }
        let len = u32::from_le_bytes(len);
        let row = self.next as u32;
        self.next += 1;
        if !self.wanted.contains(row) {
            reader.seek_relative(i64::from(len))?;
            return Ok(true);
        }
        read_key(reader, len, &mut self.bytes)?;
        fill_record(&self.bytes, &mut self.record)?;
        Ok(true)
    }
}

/// Reads one spool record's values (each after its `u64` length) into `record`.
fn fill_record(mut rest: &[u8], record: &mut csv::StringRecord) -> io::Result<()> {
    record.clear();
    while let Some((len, after)) = rest.split_first_chunk::<8>() {
        let len = usize::try_from(u64::from_le_bytes(*len)).map_err(io::Error::other)?;
        let value = after.get(..len).ok_or_else(|| invalid("a value runs past its row"))?;
        record.push_field(std::str::from_utf8(value).map_err(|_| invalid("a value is not UTF-8"))?);
        rest = &after[len..];
    }
    if !rest.is_empty() {
        return Err(invalid("a row ends inside a value's length"));
    }
    Ok(())
}

/// A pass over a few of the spool's rows: each is read at its offset (two positioned reads, after one of the
/// offsets file), in spool order.
struct SparseCursor<'a> {
    /// The spool and the offsets file; `None` once the pass is over.
    files: Option<io::Result<(File, File)>>,
    wanted: Box<dyn Iterator<Item = u32> + Send + 'a>,
    bytes: Vec<u8>,
    record: csv::StringRecord,
}

impl SparseCursor<'_> {
    fn read(&mut self, row: u32) -> io::Result<()> {
        use std::os::unix::fs::FileExt as _;
        let (spool, offsets) = match self.files.as_ref().expect("read while the pass lasts") {
            Ok(files) => files,
            Err(_) => return Err(self.files.take().expect("is some").expect_err("is an error")),
        };
        let mut offset = [0; 8];
        offsets.read_exact_at(&mut offset, u64::from(row) * 8)?;
        let offset = u64::from_le_bytes(offset);
        let mut len = [0; 4];
        spool.read_exact_at(&mut len, offset)?;
        self.bytes.clear();
        self.bytes.resize(u32::from_le_bytes(len) as usize, 0);
        spool.read_exact_at(&mut self.bytes, offset + 4)?;
        fill_record(&self.bytes, &mut self.record)
    }
}

impl RowCursor for SparseCursor<'_> {
    fn next_row(&mut self) -> Option<io::Result<&csv::StringRecord>> {
        self.files.as_ref()?;
        let Some(row) = self.wanted.next() else {
            self.files = None;
            return None;
        };
        match self.read(row) {
            Ok(()) => Some(Ok(&self.record)),
            Err(e) => {
                self.files = None;
                Some(Err(e))
            }
        }
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("the row spool is damaged: {what}"))
}

impl RowCursor for SpoolCursor<'_> {
    fn next_row(&mut self) -> Option<io::Result<&csv::StringRecord>> {
        while self.next < self.last {
            let before = self.next;
            match self.advance() {
                Ok(true) if self.wanted.contains(before as u32) => return Some(Ok(&self.record)),
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    self.reader = None;
                    return Some(Err(e));
                }
            }
        }
        self.reader = None;
        None
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

    proptest::proptest! {
        /// Any selection of rows reads the same, in spool order, whether it is read where each row is (a few of
        /// many) or by a pass through the spool; and a row set lists its members in order.
        #[test]
        fn a_selection_reads_the_same_rows_in_place_or_by_a_pass(
            values in proptest::collection::vec("[a-z ,\"\r\n日]{0,12}", 1..300),
            picks in proptest::collection::vec(proptest::bool::weighted(0.03), 300),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut c = Collected::new(dir.path(), COLUMNS.len()).unwrap();
            let rows: Vec<Row> = values.iter().enumerate().map(|(i, v)| row(&format!("{i}{v}"), "1", "")).collect();
            for r in &rows {
                c.push(r).unwrap();
            }
            c.finish().unwrap();
            let mut wanted = RowSet::default();
            let expected: Vec<Row> = (0..rows.len()).filter(|i| picks[*i]).map(|i| {
                wanted.insert(i as u32);
                rows[i].clone()
            }).collect();
            proptest::prop_assert_eq!(wanted.iter().collect::<Vec<_>>().len() as u64, wanted.len());
            proptest::prop_assert!(wanted.iter().zip(wanted.iter().skip(1)).all(|(a, b)| a < b));
            let selection = c.select(wanted.clone());
            let read = |cursor: &mut dyn RowCursor| {
                let mut out = Vec::new();
                while let Some(row) = cursor.next_row() {
                    out.push(row.unwrap().iter().map(str::to_owned).collect::<Row>());
                }
                out
            };
            let in_place = read(&mut *selection.cursor());
            let by_a_pass = read(&mut SpoolCursor {
                reader: Some(c.spool.reopen().map(BufReader::new)),
                bytes: Vec::new(),
                record: csv::StringRecord::new(),
                wanted: &wanted,
                next: 0,
                last: wanted.last().map_or(0, |last| u64::from(last) + 1),
            });
            proptest::prop_assert_eq!(&in_place, &expected);
            proptest::prop_assert_eq!(&by_a_pass, &expected);
        }
    }

    #[test]
    fn row_digests_see_field_boundaries() {
        assert_ne!(digest_row(&["ab", "c"]), digest_row(&["a", "bc"]));
        assert_eq!(digest_row(&["a", "bc"]), digest_row(&["a".to_owned(), "bc".to_owned()]), "the same for owned text");
    }
}

#[cfg(test)]
mod merge {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::export::COLUMNS;

    fn row(key: &str, score: Option<u8>, day: u8) -> Row {
        let mut r = vec![String::new(); COLUMNS.len()];
        r[0] = key.to_owned();
        r[SCORE] = score.map(|s| s.to_string()).unwrap_or_default();
        r[UPDATED_AT] = if day == 0 { "never".into() } else { format!("2024-01-{day:02} 00:00:00") };
        r
    }

    proptest! {
        /// However the rows fall into sorted runs, the merge picks each value's winner by the duplicate rule (the
        /// model: a plain scan keeping the best row so far), counts the rest as duplicates, and lists the winners
        /// in key digest order with the key and the content digest of their row.
        #[test]
        fn the_merge_of_sorted_runs_keeps_the_rule_s_winner_of_each_value(
            rows in prop::collection::vec(("[a-f]{1,2}", prop::option::of(0u8..4), 0u8..4), 0..120),
            run_bytes in 100usize..3000,
        ) {
            let rows: Vec<Row> = rows.iter().map(|(k, s, d)| row(k, *s, *d)).collect();
            let dir = tempfile::tempdir().unwrap();
            let mut collected = Collected::new(dir.path(), COLUMNS.len()).unwrap();
            collected.run_bytes = run_bytes;
            for r in &rows {
                collected.push(r).unwrap();
            }
            collected.finish().unwrap();

            let mut best: BTreeMap<&str, (usize, (f32, i64))> = BTreeMap::new();
            for (n, r) in rows.iter().enumerate() {
                let rank = rank(r);
                best.entry(&r[0])
                    .and_modify(|(at, kept)| if rank > *kept { (*at, *kept) = (n, rank) })
                    .or_insert((n, rank));
            }
            let mut expected: Vec<Winner> = best
                .iter()
                .map(|(key, (n, _))| Winner {
                    digest: digest_key(key),
                    row: *n as u32,
                    content: digest_row(&rows[*n]),
                    key: key.as_bytes().to_vec(),
                })
                .collect();
            expected.sort_by_key(|w| w.digest);
            let winners: Vec<Winner> = collected.winners().collect::<io::Result<_>>().unwrap();
            prop_assert_eq!(&winners, &expected);
            prop_assert_eq!(collected.unique(), expected.len() as u64);
            prop_assert_eq!(collected.duplicates(), (rows.len() - expected.len()) as u64);
            let in_order: Vec<Row> = collected.all().rows().collect::<io::Result<_>>().unwrap();
            let mut kept: Vec<usize> = best.values().map(|(n, _)| *n).collect();
            kept.sort();
            prop_assert_eq!(in_order, kept.iter().map(|n| rows[*n].clone()).collect::<Vec<_>>());
        }

        /// ThreatQ's own timestamp shape is read without chrono's format parser, to the same second.
        #[test]
        fn canonical_times_read_as_chrono_reads_them(secs in 0i64..5_000_000_000) {
            let text = DateTime::from_timestamp(secs, 0).unwrap().format("%Y-%m-%d %H:%M:%S").to_string();
            prop_assert_eq!(canonical_time(&text).map(|t| t.and_utc().timestamp()), Some(secs));
        }
    }

    #[test]
    fn other_time_shapes_fall_back_to_chrono_or_rank_last() {
        let at = |text: &str| rank(&row_at(text)).1;
        fn row_at(text: &str) -> Row {
            let mut r = vec![String::new(); COLUMNS.len()];
            r[UPDATED_AT] = text.to_owned();
            r
        }
        assert_eq!(at("2024-1-2 3:04:05"), at("2024-01-02 03:04:05"));
        assert_eq!(at("2024-02-30 00:00:00"), i64::MIN);
        assert_eq!(at("2024-01-02T03:04:05"), i64::MIN);
        assert_eq!(at(""), i64::MIN);
    }

    use chrono::DateTime;
}
