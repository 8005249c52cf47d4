//! Segments in a form a fuzzer can mutate past the checksums (tests and the `fuzzing`
//! feature only). In: a segment file, or its unpacked form. Out: the other form; packing
//! recomputes every section checksum over the (mutated) bytes and compresses the footer, so
//! a mutation reaches the decoders instead of stopping at the first CRC or inside zstd.
//!
//! ```text
//! unpacked := footer_len:u32 footer_json:u8[footer_len] body:u8*
//! ```
//! `body` is the file up to its footer (header and sections). Packing never fails: whatever
//! the bytes, it produces a file for the reader to judge.

use crate::error::Result;
use crate::layout::{
    read_footer, Encoding, Footer, SectionRef, FORMAT_VERSION, HEADER_LEN, TRAILER_MAGIC,
};
use crate::predicate::{evaluate, may_match, CmpOp, Predicate};
use crate::reader::SegmentReader;
use crate::types::{ColumnDef, ColumnType, SegmentSchema, Value};

/// A schema with a column of every type: a non-nullable time column, a JSON column and
/// multi-value columns (the fuzz targets' table, and decoder tests that need every type).
pub fn every_type_schema() -> SegmentSchema {
    let mut ts = ColumnDef::new("ts", ColumnType::Timestamp);
    ts.nullable = false;
    SegmentSchema {
        columns: vec![
            ts,
            ColumnDef::new("s", ColumnType::String),
            ColumnDef::new("i", ColumnType::Int),
            ColumnDef::new("l", ColumnType::Long),
            ColumnDef::new("f", ColumnType::Float),
            ColumnDef::new("d", ColumnType::Double),
            ColumnDef::new("b", ColumnType::Boolean),
            ColumnDef::new("j", ColumnType::Json),
            ColumnDef::new("day", ColumnType::Date),
            ColumnDef::new(
                "dec",
                ColumnType::Decimal {
                    precision: 12,
                    scale: 2,
                },
            ),
            ColumnDef::multi_value("tags", ColumnType::String),
            ColumnDef::multi_value("ns", ColumnType::Long),
        ],
        time_column: Some("ts".into()),
        star_trees: Vec::new(),
    }
}

/// The unpacked form of a valid segment.
pub fn unpack(segment: &[u8]) -> Result<Vec<u8>> {
    let footer = read_footer(segment)?;
    let json = serde_json::to_vec_pretty(&footer)?;
    let body_end = footer_offset(segment);
    let mut out = Vec::with_capacity(4 + json.len() + body_end);
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(&segment[..body_end]);
    Ok(out)
}

fn footer_offset(segment: &[u8]) -> usize {
    let t = segment.len() - crate::layout::TRAILER_LEN;
    u64::from_le_bytes(segment[t..t + 8].try_into().expect("8 bytes")) as usize
}

/// Every section reference of `footer`, to be rewritten.
fn sections_mut(footer: &mut Footer) -> Vec<&mut SectionRef> {
    let mut out = Vec::new();
    for c in &mut footer.columns {
        match &mut c.encoding {
            Encoding::Dictionary { dictionary, .. } | Encoding::MultiValue { dictionary, .. } => {
                out.push(dictionary)
            }
            Encoding::Raw { .. } | Encoding::RawStrings | Encoding::Packed => {}
        }
        out.extend(c.blocks.iter_mut().map(|b| &mut b.data));
        out.extend(
            [
                &mut c.nulls,
                &mut c.inverted,
                &mut c.sorted_runs,
                &mut c.bloom,
            ]
            .into_iter()
            .flatten(),
        );
        if let Some(r) = &mut c.range {
            out.push(&mut r.section);
        }
    }
    out
}

/// A segment file from its unpacked form, with every checksum that can be computed made
/// right: sections inside the body get the CRC of their bytes, the footer that of its
/// compressed JSON (kept as given when it is not a footer, so the parser sees it).
pub fn pack(unpacked: &[u8]) -> Vec<u8> {
    let (len, rest) = match unpacked.split_first_chunk::<4>() {
        Some((l, rest)) => (u32::from_le_bytes(*l) as usize, rest),
        None => (0, unpacked),
    };
    let (json, body) = rest.split_at(len.min(rest.len()));
    let json = match serde_json::from_slice::<Footer>(json) {
        Ok(mut footer) => {
            for s in sections_mut(&mut footer) {
                let end = s.offset.checked_add(s.len).map(|e| e as usize);
                if let Some(bytes) = end.and_then(|e| body.get(s.offset as usize..e)) {
                    s.crc = crc32fast::hash(bytes);
                }
            }
            serde_json::to_vec(&footer).unwrap_or_else(|_| json.to_vec())
        }
        Err(_) => json.to_vec(),
    };
    let compressed = zstd::bulk::compress(&json, 1).unwrap_or_default();
    let version = body
        .get(8..HEADER_LEN)
        .map(|v| u32::from_le_bytes(v.try_into().expect("4 bytes")))
        .unwrap_or(FORMAT_VERSION);
    let mut out = Vec::with_capacity(body.len() + compressed.len() + 32);
    out.extend_from_slice(body);
    out.extend_from_slice(&compressed);
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&(compressed.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&compressed).to_le_bytes());
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(TRAILER_MAGIC);
    out
}

/// Opens `bytes` and uses every read path on every column: verification, materialisation
/// of all and of scattered rows, comparisons, `LIKE`, `IS NULL`, `IN`, pruning and bloom
/// filters. Errors are expected; a panic is a bug.
pub fn exercise(bytes: Vec<u8>) {
    let Ok(r) = SegmentReader::open(bytes::Bytes::from(bytes)) else {
        return;
    };
    let _ = r.verify();
    let n = r.row_count();
    let docs: Vec<u32> = (0..n.min(1 << 16)).collect();
    // Every 5th doc: blocks are read for a few rows (the picked-row paths).
    let sparse: Vec<u32> = docs.iter().copied().step_by(5).collect();
    for c in 0..r.footer().columns.len() {
        let _ = r.read_column(c, &docs);
        let _ = r.read_column(c, &sparse);
        let name = r.column_def(c).name.clone();
        let mut preds = Vec::new();
        for v in [
            Value::Int(1),
            Value::Str("a".into()),
            Value::Float(0.5),
            Value::Bool(true),
            Value::Ratio(-7, 3),
        ] {
            for op in [CmpOp::Eq, CmpOp::Lt, CmpOp::GtEq, CmpOp::NotEq] {
                preds.push(Predicate::Compare {
                    column: name.clone(),
                    op,
                    value: v.clone(),
                });
            }
            preds.push(Predicate::InList {
                column: name.clone(),
                values: vec![v.clone(), Value::Null],
                negated: false,
            });
        }
        for (pattern, case_insensitive) in [("a%", false), ("%b_c%", true)] {
            preds.push(Predicate::Like {
                column: name.clone(),
                pattern: pattern.into(),
                negated: false,
                case_insensitive,
            });
        }
        preds.push(Predicate::IsNull {
            column: name.clone(),
            negated: true,
        });
        for p in &preds {
            let _ = evaluate(&r, p);
            let _ = may_match(&r, p);
        }
        let _ = r.bloom(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{build_segment, BuildOptions, ColumnDef, ColumnType, SegmentSchema};
    use arrow::array::{ArrayRef, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::record_batch::RecordBatch;
    use std::sync::Arc;

    #[test]
    fn pack_undoes_unpack() {
        let schema = SegmentSchema {
            columns: vec![
                ColumnDef::new("s", ColumnType::String),
                ColumnDef::new("n", ColumnType::Long),
            ],
            time_column: None,
            star_trees: Vec::new(),
        };
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("s", DataType::Utf8, true),
                Field::new("n", DataType::Int64, true),
            ])),
            vec![
                Arc::new(StringArray::from(vec![Some("a"), None, Some("b")])) as ArrayRef,
                Arc::new(Int64Array::from(vec![1, 2, 3])),
            ],
        )
        .unwrap();
        let seg = build_segment(&schema, &[batch], &BuildOptions::default()).unwrap();
        let mut unpacked = unpack(&seg).unwrap();
        let packed = pack(&unpacked);
        let a = SegmentReader::open(bytes::Bytes::from(seg)).unwrap();
        let b = SegmentReader::open(bytes::Bytes::from(packed)).unwrap();
        b.verify().unwrap();
        assert_eq!(a.footer(), b.footer());
        // A byte changed in the body still opens and verifies: the checksums follow it.
        let last = unpacked.len() - 1;
        unpacked[last] ^= 0x55;
        let changed = SegmentReader::open(bytes::Bytes::from(pack(&unpacked))).unwrap();
        changed.verify().unwrap();
    }
}
