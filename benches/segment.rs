//! Micro benchmarks of the hot paths under the dashboard queries: sealing generated events
//! into a segment, evaluating indexed and scanned predicates, materialising columns for
//! matched docs, and NDJSON decoding (the batch-ingest path without HTTP).
//!
//! Run: `cargo bench --bench segment` (figures in BENCHMARKS.md).

use std::hint::black_box;

use basalt_ingest::decode::decode_ndjson;
use basalt_ingest::gen::{EventGenerator, EVENTS_SPEC};
use basalt_ingest::TableSpec;
use basalt_segment::{
    build_segment, evaluate, BuildOptions, CmpOp, Predicate, SegmentReader, Value,
};
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const ROWS: usize = 200_000;

fn events(
    rows: usize,
) -> (
    basalt_segment::SegmentSchema,
    arrow::record_batch::RecordBatch,
) {
    let spec = TableSpec::from_json(EVENTS_SPEC.as_bytes()).unwrap();
    (
        spec.segment_schema(),
        EventGenerator::new(7, 1_795_860_000_000).batch(rows, 1.0),
    )
}

fn open_segment(
    schema: &basalt_segment::SegmentSchema,
    batch: &arrow::record_batch::RecordBatch,
) -> SegmentReader {
    let bytes = build_segment(
        schema,
        std::slice::from_ref(batch),
        &BuildOptions::default(),
    );
    SegmentReader::open(Bytes::from(bytes.unwrap())).unwrap()
}

fn eq(c: &str, v: &str) -> Predicate {
    Predicate::Compare {
        column: c.into(),
        op: CmpOp::Eq,
        value: Value::Str(v.into()),
    }
}

fn bench(c: &mut Criterion) {
    let (schema, batch) = events(ROWS);
    let mut g = c.benchmark_group("segment");
    g.sample_size(10);
    g.throughput(Throughput::Elements(ROWS as u64));
    g.bench_function("build_200k_events", |b| {
        b.iter(|| {
            build_segment(
                &schema,
                std::slice::from_ref(&batch),
                &BuildOptions::default(),
            )
            .unwrap()
        })
    });
    let r = open_segment(&schema, &batch);
    let rare = Predicate::And(vec![
        eq("country", "AB"),
        eq("device", "tv"),
        eq("event_type", "purchase"),
    ]);
    g.bench_function("eval_three_inverted_filters", |b| {
        b.iter(|| black_box(evaluate(&r, &rare).unwrap()))
    });
    let lat = Predicate::Compare {
        column: "latency_ms".into(),
        op: CmpOp::Gt,
        value: Value::Float(200.0),
    };
    g.bench_function("eval_range_index", |b| {
        b.iter(|| black_box(evaluate(&r, &lat).unwrap()))
    });
    let like = Predicate::Like {
        column: "url".into(),
        pattern: "%/p/12%".into(),
        negated: false,
        case_insensitive: false,
    };
    g.bench_function("eval_like_on_dictionary", |b| {
        b.iter(|| black_box(evaluate(&r, &like).unwrap()))
    });
    let user = evaluate(&r, &eq("user_id", "u3")).unwrap();
    let docs: Vec<u32> = user.iter().collect();
    let cols: Vec<usize> = (0..13).collect();
    g.bench_function("materialise_one_user_all_columns", |b| {
        b.iter(|| black_box(r.read_batch(&cols, &docs).unwrap()))
    });
    let all: Vec<u32> = (0..ROWS as u32).collect();
    g.bench_function("materialise_full_scan_two_columns", |b| {
        b.iter(|| black_box(r.read_batch(&[4, 11], &all).unwrap()))
    });
    let mut nd = Vec::new();
    {
        let mut w = arrow::json::LineDelimitedWriter::new(&mut nd);
        w.write(&batch).unwrap();
        w.finish().unwrap();
    }
    g.throughput(Throughput::Bytes(nd.len() as u64));
    g.bench_function("decode_ndjson_200k_events", |b| {
        b.iter(|| {
            decode_ndjson(&nd[..], &schema, 65536, &Default::default(), &mut |b| {
                black_box(b);
                Ok(())
            })
            .unwrap()
        })
    });
    g.finish();
}

/// Index lookups on a production-sized (1M-row) segment: a dense value (`device = 'mobile'`,
/// 55% of rows), a 2% value, a common and a rare three-filter combination, one user, and a range.
fn bench_postings(c: &mut Criterion) {
    let (schema, batch) = events(1_000_000);
    let r = open_segment(&schema, &batch);
    let cases = [
        ("dense_value", eq("device", "mobile")),
        ("two_percent_value", eq("device", "tv")),
        (
            "common_three_filters",
            Predicate::And(vec![
                eq("country", "AA"),
                eq("device", "desktop"),
                eq("event_type", "page_view"),
            ]),
        ),
        (
            "rare_three_filters",
            Predicate::And(vec![
                eq("country", "AB"),
                eq("device", "tv"),
                eq("event_type", "purchase"),
            ]),
        ),
        ("one_user", eq("user_id", "u3")),
        (
            "range",
            Predicate::Compare {
                column: "latency_ms".into(),
                op: CmpOp::Gt,
                value: Value::Float(200.0),
            },
        ),
    ];
    let mut g = c.benchmark_group("postings_1m");
    g.sample_size(20);
    // Rice decoding alone, and into a bitmap: 30k docs in 1M (about 3%, like one heavy user).
    let list: basalt_segment::RoaringBitmap = (0..30_000u32).map(|i| i * 33 + i % 7).collect();
    let (k, _) = basalt_segment::rice::choose(&list);
    let mut coded = Vec::new();
    basalt_segment::rice::encode(&list, k, &mut coded);
    g.bench_function("rice_decode_30k", |b| {
        b.iter(|| {
            let mut n = 0u32;
            basalt_segment::rice::decode(&coded, k, 1_000_000, |d| n ^= d).unwrap();
            black_box(n)
        })
    });
    g.bench_function("rice_decode_bitmap_30k", |b| {
        b.iter(|| black_box(basalt_segment::rice::decode_bitmap(&coded, k, 1_000_000).unwrap()))
    });
    for (name, p) in &cases {
        g.bench_function(*name, |b| b.iter(|| black_box(evaluate(&r, p).unwrap())));
    }
    // The macro query "one user's latest events": ts, event_type, url of a user with a
    // handful of docs, each in a different block.
    let docs: Vec<u32> = evaluate(&r, &eq("user_id", "u12345"))
        .unwrap()
        .iter()
        .collect();
    let cols = [
        r.column_index("ts").unwrap(),
        r.column_index("event_type").unwrap(),
        r.column_index("url").unwrap(),
    ];
    g.bench_function(
        format!("materialise_{}_docs_three_columns", docs.len()),
        |b| b.iter(|| black_box(r.read_batch(&cols, &docs).unwrap())),
    );
    // `event_id` is near-unique and unindexed, so it is stored raw (format 6): a lookup scans
    // its blocks' strings.
    let id = r
        .read_column(r.column_index("event_id").unwrap(), &[777_777])
        .unwrap();
    let id = arrow::util::display::array_value_to_string(&id, 0).unwrap();
    g.bench_function("raw_string_eq_scan", |b| {
        b.iter(|| black_box(evaluate(&r, &eq("event_id", &id)).unwrap()))
    });
    // The same lookup and the 6-doc read with `event_id` in a dictionary (format 5's layout
    // for it): a binary search in the (cached) dictionary, then a scan of 20-bit ids.
    let with_dict = SegmentReader::open(Bytes::from(
        build_segment(
            &schema,
            std::slice::from_ref(&batch),
            &BuildOptions {
                raw_strings: false,
                ..BuildOptions::default()
            },
        )
        .unwrap(),
    ))
    .unwrap();
    g.bench_function("dictionary_eq_scan", |b| {
        b.iter(|| black_box(evaluate(&with_dict, &eq("event_id", &id)).unwrap()))
    });
    // A raw string filter under a selective indexed one: only the candidates' frames are read.
    let under_user = Predicate::And(vec![
        eq("user_id", "u12345"),
        Predicate::Like {
            column: "event_id".into(),
            pattern: "a%".into(),
            negated: false,
            case_insensitive: false,
        },
    ]);
    for (name, seg) in [("raw", &r), ("dictionary", &with_dict)] {
        g.bench_function(format!("one_user_and_event_id_like_{name}"), |b| {
            b.iter(|| black_box(evaluate(seg, &under_user).unwrap()))
        });
    }
    let all: Vec<usize> = (0..13).collect();
    for (name, seg) in [("raw", &r), ("dictionary", &with_dict)] {
        g.bench_function(
            format!("materialise_{}_docs_all_columns_{name}", docs.len()),
            |b| b.iter(|| black_box(seg.read_batch(&all, &docs).unwrap())),
        );
    }
    g.finish();
}

criterion_group!(benches, bench, bench_postings);
criterion_main!(benches);
