//! Stream messages in, validated rows or quarantine entries out. In: one message payload at a
//! time with where it came from (topic, partition, offset, timestamp). Out: rows appended to
//! a [`RowWriter`] (schema-on-write, as batch ingestion), or a [`QuarantineEntry`] keeping
//! the raw bytes and the reason — a bad message never stops ingestion and never vanishes.
//!
//! Quarantine entries have a table schema of their own ([`quarantine_schema`]) so they are
//! built into segments and queried like any table (`"events$quarantine"`). The real-time
//! ingester owns one decoder per partition.

use arrow::record_batch::RecordBatch;
use basalt_segment::{ColumnDef, ColumnType, SegmentSchema};
use std::sync::Arc;

use crate::decode::{ingest_schema, JsonRowError, RowWriter};
use crate::error::Result;
use crate::json_row::ObjectError;

/// Where a message came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageOrigin {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The message timestamp, epoch ms, when the source has one.
    pub timestamp: Option<i64>,
}

/// A message that could not become a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantineEntry {
    pub origin: MessageOrigin,
    pub raw: Vec<u8>,
    pub reason: String,
}

/// Decodes JSON messages into rows of one table.
pub struct MessageDecoder {
    writer: RowWriter,
    /// With [`MessageDecoder::with_origins`]: each pending row's origin and raw bytes, so a
    /// row refused after decoding (a PARTIAL upsert merge) can still be quarantined.
    origins: Option<Vec<(MessageOrigin, Vec<u8>)>>,
    /// Fields messages carried that the table has no column for (ignored, counted).
    pub unknown_fields: u64,
    pub rows: u64,
    pub quarantined: u64,
}

impl MessageDecoder {
    pub fn new(schema: &SegmentSchema, batch_rows: usize) -> Self {
        MessageDecoder {
            writer: RowWriter::new(schema, batch_rows),
            origins: None,
            unknown_fields: 0,
            rows: 0,
            quarantined: 0,
        }
    }

    /// Keeps each pending row's origin and raw bytes (see [`MessageDecoder::take_origins`]).
    pub fn with_origins(mut self) -> Self {
        self.origins = Some(Vec::new());
        self
    }

    /// The origins and raw bytes of the rows of the last [`MessageDecoder::take_batch`], in
    /// row order (empty without [`MessageDecoder::with_origins`]).
    pub fn take_origins(&mut self) -> Vec<(MessageOrigin, Vec<u8>)> {
        self.origins
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Appends the message as a row, or returns it as a quarantine entry.
    pub fn decode(
        &mut self,
        payload: &[u8],
        origin: MessageOrigin,
    ) -> std::result::Result<(), QuarantineEntry> {
        let reject = |me: &mut Self, reason: String| {
            me.quarantined += 1;
            Err(QuarantineEntry {
                origin: origin.clone(),
                raw: payload.to_vec(),
                reason,
            })
        };
        let location = || format!("{}/{}@{}", origin.topic, origin.partition, origin.offset);
        match self.writer.push_json_bytes(payload, &location) {
            Ok(unknown) => self.unknown_fields += unknown,
            Err(JsonRowError::Object(ObjectError::NotAnObject(kind))) => {
                return reject(self, format!("message is {kind}, not a JSON object"))
            }
            Err(JsonRowError::Object(ObjectError::Invalid(e))) => {
                return reject(self, format!("message is not valid JSON: {e}"))
            }
            Err(JsonRowError::Row(e)) => return reject(self, e.to_string()),
        }
        if let Some(o) = self.origins.as_mut() {
            o.push((origin, payload.to_vec()));
        }
        self.rows += 1;
        Ok(())
    }

    /// Rows decoded and not taken yet.
    pub fn pending_rows(&self) -> usize {
        self.writer.rows()
    }

    /// The rows decoded since the last call, as one batch.
    pub fn take_batch(&mut self) -> Result<Option<RecordBatch>> {
        self.writer.finish()
    }
}

/// The schema of a table's quarantine (`<table>$quarantine`).
pub fn quarantine_schema() -> SegmentSchema {
    let required = |name: &str, ty| {
        let mut c = ColumnDef::new(name, ty);
        c.nullable = false;
        c
    };
    SegmentSchema {
        columns: vec![
            required("topic", ColumnType::String),
            required("partition", ColumnType::Int),
            required("offset", ColumnType::Long),
            ColumnDef::new("timestamp", ColumnType::Timestamp),
            required("raw", ColumnType::String),
            required("reason", ColumnType::String),
        ],
        time_column: None,
        star_trees: Vec::new(),
    }
}

/// Quarantine entries as a batch of [`quarantine_schema`] (raw bytes as lossy UTF-8 text).
pub fn quarantine_batch(entries: &[QuarantineEntry]) -> Result<Option<RecordBatch>> {
    use arrow::array::{
        ArrayRef, Int32Builder, Int64Builder, StringBuilder, TimestampMillisecondBuilder,
    };
    if entries.is_empty() {
        return Ok(None);
    }
    let n = entries.len();
    let mut topic = StringBuilder::with_capacity(n, n * 8);
    let mut partition = Int32Builder::with_capacity(n);
    let mut offset = Int64Builder::with_capacity(n);
    let mut timestamp = TimestampMillisecondBuilder::with_capacity(n);
    let mut raw = StringBuilder::with_capacity(n, entries.iter().map(|e| e.raw.len()).sum());
    let mut reason = StringBuilder::with_capacity(n, n * 48);
    for e in entries {
        topic.append_value(&e.origin.topic);
        partition.append_value(e.origin.partition);
        offset.append_value(e.origin.offset);
        timestamp.append_option(e.origin.timestamp);
        raw.append_value(String::from_utf8_lossy(&e.raw));
        reason.append_value(&e.reason);
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(topic.finish()),
        Arc::new(partition.finish()),
        Arc::new(offset.finish()),
        Arc::new(timestamp.finish()),
        Arc::new(raw.finish()),
        Arc::new(reason.finish()),
    ];
    Ok(Some(RecordBatch::try_new(
        ingest_schema(&quarantine_schema()),
        cols,
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::TableSpec;
    use arrow::array::{Array, AsArray};
    use basalt_segment::{build_segment, BuildOptions, SegmentReader};

    fn origin(offset: i64) -> MessageOrigin {
        MessageOrigin {
            topic: "events".into(),
            partition: 3,
            offset,
            timestamp: Some(1_795_000_000_000 + offset),
        }
    }

    #[test]
    fn good_rows_pass_and_bad_messages_are_kept_with_a_reason() {
        let spec: TableSpec = serde_json::from_str(include_str!("gen_events_spec.json")).unwrap();
        let mut d = MessageDecoder::new(&spec.segment_schema(), 1000);
        let good = br#"{"event_id":"a","ts":1795000000000,"country":"DE","extra":1,"more":"x"}"#;
        d.decode(good, origin(0)).unwrap();
        let cases: [(&[u8], &str); 4] = [
            (b"{not json", "not valid JSON"),
            (b"[1,2]", "an array"),
            (br#"{"event_id":"b","ts":"yesterday"}"#, "\"ts\""),
            (
                br#"{"event_id":"c","ts":1,"latency_ms":"fast"}"#,
                "\"latency_ms\"",
            ),
        ];
        let mut entries = Vec::new();
        for (i, (payload, why)) in cases.iter().enumerate() {
            let e = d.decode(payload, origin(1 + i as i64)).unwrap_err();
            assert!(e.reason.contains(why), "{}: {}", why, e.reason);
            assert_eq!(e.raw, payload.to_vec());
            assert_eq!(e.origin.offset, 1 + i as i64);
            entries.push(e);
        }
        d.decode(good, origin(9)).unwrap();
        assert_eq!((d.rows, d.quarantined, d.unknown_fields), (2, 4, 4));
        let batch = d.take_batch().unwrap().unwrap();
        assert_eq!(batch.num_rows(), 2, "bad messages add no partial rows");

        // Quarantine entries are a table of their own.
        let q = quarantine_batch(&entries).unwrap().unwrap();
        let seg = build_segment(&quarantine_schema(), &[q], &BuildOptions::default()).unwrap();
        let r = SegmentReader::open(bytes::Bytes::from(seg)).unwrap();
        assert_eq!(r.row_count(), 4);
        let reasons = r.read_column(5, &[0, 1, 2, 3]).unwrap();
        let reasons = arrow::compute::cast(&reasons, &arrow::datatypes::DataType::Utf8).unwrap();
        assert!(reasons.as_string::<i32>().value(1).contains("array"));
        let offsets = r.read_column(2, &[0, 3]).unwrap();
        assert_eq!(
            offsets
                .as_primitive::<arrow::datatypes::Int64Type>()
                .values(),
            &[1, 4]
        );
        assert!(!offsets.is_null(0));
    }
}
