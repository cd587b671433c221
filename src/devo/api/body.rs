//! The multipart body of a `deploy-csv` request: the `deploy-config` JSON and the CSV, which is encoded in
//! chunks as the request is sent so that no upload ever sits in memory whole.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use futures::channel::mpsc;
use futures::{SinkExt, Stream, StreamExt, future, stream};
use serde_json::{Value, json};

use crate::devo::{Column, ColumnType, Error, RowCursor, RowSource};

/// How big a CSV chunk grows before it is handed to the connection.
const CHUNK_BYTES: usize = 64 * 1024;

/// What one `deploy-csv` request does to the lookup. Every mode describes the whole lookup (all columns, the
/// first as key, a full CSV header), as Devo's own delete example does: a deploy may be taken as the lookup's
/// definition, so one that named fewer columns would cut the lookup down to them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum DeployMode {
    /// The rows become the whole lookup (POST to create, PUT to replace).
    Replace,
    /// Upsert by key, keeping the other rows (`"append": true`).
    Upsert,
    /// Delete the rows with these keys (`"append": true, "contribution": {"type": "del"}`). Only the key of each
    /// row counts: the exporter may know nothing else of a row that left the collection, so the other columns
    /// carry [`filler`] values.
    Delete,
}

pub(super) fn devo_type(ty: ColumnType) -> &'static str {
    match ty {
        ColumnType::Str => "STRING",
        ColumnType::Int | ColumnType::Int8 => "INT8",
        ColumnType::Int4 => "INT4",
        ColumnType::Float => "FLOAT",
        ColumnType::Bool => "BOOL",
        ColumnType::Ip4 => "IP4",
    }
}

/// A value every column of type `ty` accepts, for the non-key columns of a row to delete.
fn filler(ty: ColumnType) -> &'static str {
    match ty {
        ColumnType::Str => "",
        ColumnType::Int | ColumnType::Int4 | ColumnType::Int8 | ColumnType::Float => "0",
        ColumnType::Bool => "false",
        ColumnType::Ip4 => "0.0.0.0",
    }
}

/// The `deploy-config` part: every column with its type, a header row, the first column as key.
pub(super) fn deploy_config(columns: &[Column], mode: DeployMode) -> Value {
    let mut config = json!({
        "columns": columns.iter().map(|c| json!({"name": c.name, "type": devo_type(c.ty)})).collect::<Vec<_>>(),
        "hasHeader": true,
        "key": {"type": "column", "column": columns.first().map(|c| c.name.as_str()).unwrap_or_default()},
    });
    match mode {
        DeployMode::Replace => {}
        DeployMode::Upsert => config["append"] = json!(true),
        DeployMode::Delete => {
            config["append"] = json!(true);
            config["contribution"] = json!({"type": "del"});
        }
    }
    config
}

/// The CSV of a deploy as a sequence of chunks of about [`CHUNK_BYTES`]: RFC 4180 (CRLF, fields quoted when they
/// hold `,` `"` CR or LF, quotes doubled), UTF-8, a header row first.
pub(super) struct CsvChunks<'a> {
    rows: Box<dyn RowCursor + 'a>,
    header: Option<Vec<&'a str>>,
    width: usize,
    /// For deletes: what follows each key, a [`filler`] value for every other column.
    fillers: Option<Vec<&'static str>>,
    sent: u64,
    done: bool,
}

impl<'a> CsvChunks<'a> {
    pub(super) fn new(columns: &'a [Column], mode: DeployMode, rows: &'a dyn RowSource) -> Self {
        Self {
            rows: rows.cursor(),
            header: Some(columns.iter().map(|c| c.name.as_str()).collect()),
            width: columns.len(),
            fillers: (mode == DeployMode::Delete).then(|| columns.iter().skip(1).map(|c| filler(c.ty)).collect()),
            sent: 0,
            done: false,
        }
    }

    /// Rows encoded so far.
    pub(super) fn rows_sent(&self) -> u64 {
        self.sent
    }

    /// Whether `row` fits: as wide as the lookup, or for deletes at least a key. (Not a method: the row is
    /// borrowed from `self.rows` while it is checked.)
    fn check(deleting: bool, width: usize, sent: u64, row: &csv::StringRecord) -> Result<(), Error> {
        let fits = if deleting { !row.is_empty() } else { row.len() == width };
        if fits {
            return Ok(());
        }
        Err(Error::Rows(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("row {} has {} values but the lookup has {} columns", sent + 1, row.len(), width),
        )))
    }
}

impl Iterator for CsvChunks<'_> {
    type Item = Result<Bytes, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let mut csv = csv::WriterBuilder::new()
            .has_headers(false)
            .terminator(csv::Terminator::CRLF)
            .from_writer(Vec::with_capacity(CHUNK_BYTES + CHUNK_BYTES / 4));
        const IN_MEMORY: &str = "writing CSV to memory cannot fail";
        if let Some(header) = self.header.take() {
            csv.write_record(header).expect(IN_MEMORY);
        }
        // The writer's own buffer is not counted: a chunk may end up a few KiB over CHUNK_BYTES.
        while csv.get_ref().len() < CHUNK_BYTES {
            let row = match self.rows.next_row() {
                None => {
                    self.done = true;
                    break;
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(Error::Rows(e)));
                }
                Some(Ok(row)) => row,
            };
            if let Err(e) = Self::check(self.fillers.is_some(), self.width, self.sent, row) {
                self.done = true;
                return Some(Err(e));
            }
            match &self.fillers {
                Some(fillers) => csv.write_record(std::iter::once(&row[0]).chain(fillers.iter().copied())),
                None => csv.write_record(row),
            }
            .expect(IN_MEMORY);
            self.sent += 1;
        }
        let chunk = csv.into_inner().expect(IN_MEMORY);
        if chunk.is_empty() { None } else { Some(Ok(Bytes::from(chunk))) }
    }
}

/// What travels from the encoder to the request body.
pub(super) enum Frame {
    Data(Bytes),
    /// The CSV is complete.
    End,
}

/// The request body. It ends only after [`Frame::End`]: if the encoder stops early for any reason (a bad row,
/// a stall, a cancelled upload) the body fails instead, so the connection is dropped and Devo never sees a
/// complete-looking, truncated CSV.
pub(super) fn body_stream(frames: mpsc::Receiver<Frame>) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    frames
        .map(Some)
        .chain(stream::once(future::ready(None)))
        .take_while(|frame| future::ready(!matches!(frame, Some(Frame::End))))
        .map(|frame| match frame {
            Some(Frame::Data(bytes)) => Ok(bytes),
            _ => Err(io::Error::other("the CSV was cut off before its last row; the upload is abandoned")),
        })
}

/// How feeding a request body ended.
pub(super) enum Pumped {
    /// Every row went into the body.
    Sent(u64),
    /// The request stopped reading (it ended early: its response says why).
    Stopped,
    /// The connection took nothing for `io_timeout`.
    Stalled,
    Failed(Error),
}

/// Feeds the chunks into the request body, waiting at most `io_timeout` for the connection to take each one.
pub(super) async fn pump(mut chunks: CsvChunks<'_>, mut body: mpsc::Sender<Frame>, io_timeout: Duration) -> Pumped {
    loop {
        let frame = match chunks.next() {
            Some(Ok(bytes)) => Frame::Data(bytes),
            Some(Err(e)) => return Pumped::Failed(e),
            None => Frame::End,
        };
        let end = matches!(frame, Frame::End);
        match tokio::time::timeout(io_timeout, body.send(frame)).await {
            Err(_) => return Pumped::Stalled,
            Ok(Err(_)) => return Pumped::Stopped,
            Ok(Ok(())) if end => return Pumped::Sent(chunks.rows_sent()),
            Ok(Ok(())) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devo::Row;

    fn columns() -> Vec<Column> {
        [("ioc", ColumnType::Str), ("score", ColumnType::Int), ("ip", ColumnType::Ip4), ("ok", ColumnType::Bool)]
            .into_iter()
            .map(|(name, ty)| Column { name: name.into(), ty })
            .collect()
    }

    fn csv_of(columns: &[Column], mode: DeployMode, rows: &dyn RowSource) -> String {
        let chunks: Vec<Bytes> = CsvChunks::new(columns, mode, rows).collect::<Result<_, _>>().unwrap();
        String::from_utf8(chunks.concat()).unwrap()
    }

    #[test]
    fn a_replace_config_lists_typed_columns_and_the_first_as_key() {
        let config = deploy_config(&columns(), DeployMode::Replace);
        assert_eq!(
            config.to_string(),
            r#"{"columns":[{"name":"ioc","type":"STRING"},{"name":"score","type":"INT8"},{"name":"ip","type":"IP4"},{"name":"ok","type":"BOOL"}],"hasHeader":true,"key":{"type":"column","column":"ioc"}}"#
        );
    }

    #[test]
    fn every_mode_describes_the_whole_lookup_and_deletes_are_a_del_contribution() {
        let replace = deploy_config(&columns(), DeployMode::Replace);
        let upsert = deploy_config(&columns(), DeployMode::Upsert);
        assert_eq!(upsert["append"], true);
        assert!(upsert.get("contribution").is_none());
        let delete = deploy_config(&columns(), DeployMode::Delete);
        assert_eq!((delete["append"].clone(), delete["contribution"].clone()), (json!(true), json!({"type": "del"})));
        for config in [&upsert, &delete] {
            assert_eq!((&config["columns"], &config["key"]), (&replace["columns"], &replace["key"]));
        }
    }

    #[test]
    fn every_column_type_has_a_devo_name() {
        let all = [
            (ColumnType::Str, "STRING"),
            (ColumnType::Int, "INT8"),
            (ColumnType::Int4, "INT4"),
            (ColumnType::Int8, "INT8"),
            (ColumnType::Float, "FLOAT"),
            (ColumnType::Bool, "BOOL"),
            (ColumnType::Ip4, "IP4"),
        ];
        for (ty, name) in all {
            assert_eq!(devo_type(ty), name);
        }
    }

    #[test]
    fn the_csv_is_rfc_4180_with_a_header() {
        let rows: Vec<Row> = vec![
            vec!["a,b".into(), "1".into(), "10.0.0.1".into(), "true".into()],
            vec!["say \"hi\"".into(), "".into(), "".into(), "false".into()],
            vec!["line\r\nbreak\nand ünïcødé ☃".into(), "2".into(), "x".into(), "y".into()],
        ];
        assert_eq!(
            csv_of(&columns(), DeployMode::Replace, &rows),
            "ioc,score,ip,ok\r\n\"a,b\",1,10.0.0.1,true\r\n\"say \"\"hi\"\"\",,,false\r\n\
             \"line\r\nbreak\nand ünïcødé ☃\",2,x,y\r\n"
        );
    }

    #[test]
    fn deletes_send_the_full_header_each_key_and_values_each_column_type_accepts() {
        let rows: Vec<Row> = vec![vec!["gone.example".into()], vec!["also,gone".into(), "3".into(), "x".into()]];
        assert_eq!(
            csv_of(&columns(), DeployMode::Delete, &rows),
            "ioc,score,ip,ok\r\ngone.example,0,0.0.0.0,false\r\n\"also,gone\",0,0.0.0.0,false\r\n"
        );
        let text: Vec<Column> =
            ["ioc", "tags"].into_iter().map(|name| Column { name: name.into(), ty: ColumnType::Str }).collect();
        assert_eq!(csv_of(&text, DeployMode::Delete, &vec![vec!["k".to_owned()]]), "ioc,tags\r\nk,\r\n");
    }

    #[test]
    fn a_large_upload_comes_in_bounded_chunks_that_add_up_to_every_row() {
        let rows: Vec<Row> =
            (0..20_000).map(|i| vec![format!("ioc-{i:06}"), i.to_string(), "".into(), "".into()]).collect();
        let columns = columns();
        let mut chunks = CsvChunks::new(&columns, DeployMode::Replace, &rows);
        let mut total = Vec::new();
        let mut count = 0;
        for chunk in chunks.by_ref() {
            let chunk = chunk.unwrap();
            assert!(chunk.len() < CHUNK_BYTES + 16 * 1024, "chunk of {} bytes", chunk.len());
            total.extend_from_slice(&chunk);
            count += 1;
        }
        assert!(count > 1);
        assert_eq!(chunks.rows_sent(), 20_000);
        let text = String::from_utf8(total).unwrap();
        assert_eq!(text.lines().count(), 20_001);
        assert!(text.ends_with("ioc-019999,19999,,\r\n"));
    }

    #[test]
    fn a_row_of_the_wrong_width_stops_the_csv_with_an_error() {
        let rows: Vec<Row> = vec![vec!["a".into(), "1".into(), "".into(), "".into()], vec!["b".into()]];
        let results: Vec<_> = CsvChunks::new(&columns(), DeployMode::Replace, &rows).collect();
        assert_eq!(results.len(), 1);
        let err = results.into_iter().next().unwrap().unwrap_err().to_string();
        assert!(err.contains("row 2 has 1 values but the lookup has 4 columns"), "{err}");
    }

    #[tokio::test]
    async fn the_body_ends_only_after_the_end_frame_and_fails_if_cut_off() {
        let (mut tx, rx) = mpsc::channel(4);
        tx.send(Frame::Data(Bytes::from_static(b"ioc\r\n"))).await.unwrap();
        tx.send(Frame::End).await.unwrap();
        let whole: Vec<_> = body_stream(rx).collect().await;
        assert_eq!(whole.len(), 1);
        assert_eq!(whole[0].as_ref().unwrap(), &Bytes::from_static(b"ioc\r\n"));

        let (mut tx, rx) = mpsc::channel(4);
        tx.send(Frame::Data(Bytes::from_static(b"ioc\r\n"))).await.unwrap();
        drop(tx);
        let cut: Vec<_> = body_stream(rx).collect().await;
        assert_eq!(cut.len(), 2);
        assert!(cut[1].as_ref().unwrap_err().to_string().contains("cut off"));
    }

    #[tokio::test]
    async fn a_connection_that_takes_nothing_stalls_the_pump() {
        let rows: Vec<Row> = (0..100_000).map(|i| vec![format!("ioc-{i}"), "1".into(), "".into(), "".into()]).collect();
        let columns = columns();
        let (tx, _unread) = mpsc::channel(1);
        let pumped = pump(CsvChunks::new(&columns, DeployMode::Replace, &rows), tx, Duration::from_millis(50)).await;
        assert!(matches!(pumped, Pumped::Stalled));
    }
}
