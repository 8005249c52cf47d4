//! Writes a starting corpus for every target under the directory given (one folder per
//! target): valid inputs of each kind, so the fuzzer starts from deep inside each decoder.
//! `cargo run --example seeds -- <dir>` (fuzz/run.sh does this when a corpus is empty).

use std::path::Path;
use std::sync::Arc;

use basalt_fuzz_core::{limits, schema, BATCH_ROWS};
use basalt_ingest::metastore::{SegmentMeta, TableState};
use basalt_ingest::upsert::SlotSnapshot;
use basalt_ingest::TableSpec;
use basalt_segment::{build_segment, BuildOptions, IndexKind, RoaringBitmap};

/// Rows every decoder accepts (they also build the seed segments).
const VALID: &str = r#"{"ts": 1700000000000, "s": "paris", "i": 3, "l": -9000000000, "f": 1.5, "d": 2.25, "b": true, "j": {"k": [1, 2]}, "tags": ["a", "b"], "ns": [1, 2, 3]}
{"ts": "2024-01-02T03:04:05Z", "s": "lima", "i": null, "l": 7, "d": 1e308, "b": false, "tags": [], "ns": null}
{"ts": 1700000001000, "s": "", "i": -2147483648, "l": 9223372036854775807, "d": -0.0, "j": "x", "tags": ["z"]}
{"ts": 1700000002000, "s": "oslo\u00e9\n", "i": 2147483647, "f": -3.4e38, "d": 5, "tags": ["a", "c"], "ns": [-1]}
"#;

/// Rows each refused for a different reason.
const INVALID: &str = r#"{"ts": 1, "f": "NaN"}
{"ts": null}
{"ts": 1, "i": 2147483648}
{"ts": 1, "tags": ["a", null]}
[1, 2]
{"ts": 1, "b": "maybe"
"#;
const CSV: &str = "ts,s,i,l,f,d,b,j,tags,ns\n\
1700000000000,paris,3,-9000000000,1.5,2.25,true,\"{\"\"k\"\"\\: 1}\",a,1\n\
2024-01-02T03:04:05Z,\"li,ma\",,7,NaN,1e308,false,,,\n\
1700000001000,,-2147483648,9223372036854775807,,-0.0,1,x,z,-1\n";

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) {
    let d = dir.join(target);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join(name), bytes).unwrap();
}

fn batches() -> Vec<arrow::record_batch::RecordBatch> {
    let mut out = Vec::new();
    let body = VALID.repeat(40);
    basalt_ingest::decode::decode_ndjson(
        body.as_bytes(),
        &schema(),
        BATCH_ROWS,
        &limits(),
        &mut |b| {
            out.push(b);
            Ok(())
        },
    )
    .expect("the seed rows decode");
    out
}

fn main() {
    let dir = std::env::args().nth(1).expect("usage: seeds <corpus dir>");
    let dir = Path::new(&dir);
    let batches = batches();

    // Segments: compressed and not, with and without indexes and raw strings.
    let mut indexed = schema();
    for c in &mut indexed.columns {
        *c = match c.name.as_str() {
            "s" => c.clone().with_index(IndexKind::Inverted),
            "l" => c.clone().with_index(IndexKind::Range),
            "i" => c.clone().with_index(IndexKind::Sorted),
            _ => c.clone(),
        };
    }
    let mut n = 0;
    for (schema, compress, raw_strings) in [
        (schema(), true, true),
        (schema(), false, true),
        (indexed.clone(), false, false),
        (indexed, true, false),
    ] {
        let opts = BuildOptions {
            block_rows: 16,
            range_buckets: 4,
            compress,
            raw_strings,
            ..BuildOptions::default()
        };
        let seg = build_segment(&schema, &batches, &opts).expect("builds");
        let unpacked = basalt_segment::fuzzing::unpack(&seg).expect("unpacks");
        write(dir, "segment_reader", &format!("unpacked-{n}"), &unpacked);
        let mut raw = vec![0u8];
        raw.extend_from_slice(&seg);
        write(dir, "segment_reader", &format!("raw-{n}"), &raw);
        n += 1;
    }

    write(dir, "ndjson", "rows", VALID.as_bytes());
    write(dir, "ndjson", "refused", INVALID.as_bytes());
    write(dir, "csv", "rows", CSV.as_bytes());
    write(
        dir,
        "json_row",
        "messages",
        format!("{VALID}{INVALID}").replace('\n', "\0").as_bytes(),
    );

    // Parquet: the decoded rows, plain and compressed, one and several row groups.
    for (i, codec) in [
        parquet::basic::Compression::UNCOMPRESSED,
        parquet::basic::Compression::SNAPPY,
        parquet::basic::Compression::ZSTD(Default::default()),
    ]
    .into_iter()
    .enumerate()
    {
        let props = parquet::file::properties::WriterProperties::builder()
            .set_compression(codec)
            .set_max_row_group_row_count(Some(50))
            .build();
        let mut buf = Vec::new();
        let mut w =
            parquet::arrow::ArrowWriter::try_new(&mut buf, batches[0].schema(), Some(props))
                .unwrap();
        for b in &batches {
            w.write(b).unwrap();
        }
        w.close().unwrap();
        write(dir, "parquet", &format!("rows-{i}"), &buf);
    }

    // Table specs: plain, generator, Kafka with properties, upsert.
    let specs = [
        include_str!("../../../ingestion/src/gen_events_spec.json").to_string(),
        serde_json::json!({
            "name": "k", "time_column": "ts",
            "columns": [{"name": "ts", "type": "TIMESTAMP"}, {"name": "id", "type": "STRING"},
                        {"name": "n", "type": "LONG"}, {"name": "del", "type": "BOOLEAN"},
                        {"name": "v", "type": "LONG"}],
            "primary_key": ["id"],
            "upsert": {"mode": "PARTIAL", "comparison_column": "n", "delete_column": "del",
                       "partial_strategies": {"v": "INCREMENT"}, "metadata_ttl": "7d"},
            "source": {"kafka": {"brokers": "127.0.0.1:9092", "topic": "t",
                       "properties": {"security.protocol": "SASL_PLAINTEXT",
                                      "sasl.mechanism": "PLAIN", "sasl.username": "u",
                                      "sasl.password": "${env:BASALT_SECRET_PW}"}}},
            "segment": {"max_rows": 1000, "max_age": "10m", "max_bytes": "64MB"},
            "deep_store": "s3://bucket/prefix/k"
        })
        .to_string(),
    ];
    for (i, s) in specs.iter().enumerate() {
        write(dir, "table_spec", &format!("spec-{i}"), s.as_bytes());
        let spec = TableSpec::from_json(s.as_bytes()).expect("seed specs are valid");
        let mut state = TableState::new(spec);
        state.segments.push(SegmentMeta {
            id: "k__1__000001__abcd".into(),
            path: format!("segments/k/{}/k__1__000001__abcd.seg", state.generation),
            rows: 10,
            bytes: 1000,
            time_range: Some((1, 2)),
            stream: None,
        });
        state.checkpoints.insert(0, 42);
        state.keyed_snapshots.insert(0, "keyed/k/0.bks".into());
        let json = serde_json::to_vec_pretty(&state).unwrap();
        write(dir, "metastore_state", &format!("state-{i}"), &json);
    }

    // Keyed snapshots, without the checksum the target appends.
    let slots: Vec<SlotSnapshot> = (0..3)
        .map(|i| SlotSnapshot {
            id: format!("seg-{i}"),
            docs: 100,
            valid: Arc::new(RoaringBitmap::from_iter((0..100).filter(|d| d % (i + 2) == 0))),
            tombstones: Arc::new(RoaringBitmap::from_iter([1, 5, 99])),
        })
        .collect();
    let mut snap = basalt_ingest::upsert::snapshot::encode(&slots).unwrap();
    snap.truncate(snap.len() - 4);
    write(dir, "upsert_snapshot", "slots", &snap);
}
