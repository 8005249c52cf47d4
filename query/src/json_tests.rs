//! `JSON_MATCH` and `JSON_EXTRACT_SCALAR` against DataFusion's JSON functions
//! (`datafusion-functions-json`'s `json_get_str`, `json_get_float`, ...): filters, negations,
//! extractions and groupings over segments (with JSON indexes, and one built without, as a
//! real-time chunk is) answer what those functions mean over the same rows as plain Arrow
//! tables; the filters the index answers need no `FilterExec`; bad filters, paths and types
//! are refused at planning.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int32Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use basalt_segment::{
    build_segment, BuildOptions, ColumnDef, ColumnType, IndexKind, SegmentReader, SegmentSchema,
};
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::engine::QueryLimits;
use crate::tests::{assert_pairs, engine_and_reference, explain, segments_last_unindexed};

const T0: i64 = 1_767_225_600_000; // 2026-01-01
const ROWS: usize = 2_000;
const COUNTRIES: &[&str] = &["de", "fr", "us", "in", "br"];
const OS: &[&str] = &["ios", "android", "linux"];
const TAGS: &[&str] = &["a", "b", "c", "vip", "it's"];

fn json_schema() -> SegmentSchema {
    let mut ts = ColumnDef::new("ts", ColumnType::Timestamp);
    ts.nullable = false;
    SegmentSchema {
        columns: vec![
            ts,
            // Near-unique documents: raw strings.
            ColumnDef::new("attrs", ColumnType::Json).with_index(IndexKind::Json),
            // Few documents: a dictionary.
            ColumnDef::new("device", ColumnType::Json)
                .with_index(IndexKind::Json)
                .with_index(IndexKind::Inverted),
            ColumnDef::new("n", ColumnType::Int),
        ],
        time_column: Some("ts".into()),
        star_trees: Vec::new(),
    }
}

/// A user's attributes: a string-valued country (sometimes missing or null), an integer
/// visit count, a fractional score, a boolean, up to four tags; a few values are not JSON.
fn attrs(rng: &mut StdRng) -> String {
    if rng.random_bool(0.02) {
        return "not json".to_string();
    }
    let mut user = json!({ "id": format!("u{}", rng.random_range(0..5000)) });
    match rng.random_range(0..10) {
        0 => {}
        1 => user["country"] = serde_json::Value::Null,
        _ => user["country"] = json!(COUNTRIES[rng.random_range(0..COUNTRIES.len())]),
    }
    let tags: Vec<&str> = (0..rng.random_range(0..5))
        .map(|_| TAGS[rng.random_range(0..TAGS.len())])
        .collect();
    let mut doc = json!({
        "user": user,
        "visits": rng.random_range(0..50),
        "score": rng.random_range(0..40) as f64 / 4.0,
        "tags": tags,
    });
    if rng.random_bool(0.7) {
        doc["premium"] = json!(rng.random_bool(0.3));
    }
    doc.to_string()
}

fn device(rng: &mut StdRng) -> String {
    let os = OS[rng.random_range(0..OS.len())];
    let (version, w) = (
        rng.random_range(10..14),
        [360, 1080][rng.random_range(0..2)],
    );
    json!({ "os": os, "version": version, "screen": { "w": w } }).to_string()
}

fn batch(rng: &mut StdRng, t0: i64) -> RecordBatch {
    let s = Arc::new(Schema::new(vec![
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("attrs", DataType::Utf8, true),
        Field::new("device", DataType::Utf8, true),
        Field::new("n", DataType::Int32, true),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(TimestampMillisecondArray::from_iter_values(
            (0..ROWS).map(|i| t0 + i as i64 * 1000),
        )),
        Arc::new(StringArray::from_iter(
            (0..ROWS).map(|_| rng.random_bool(0.95).then(|| attrs(rng))),
        )),
        Arc::new(StringArray::from_iter(
            (0..ROWS).map(|_| rng.random_bool(0.95).then(|| device(rng))),
        )),
        Arc::new(Int32Array::from_iter_values(
            (0..ROWS).map(|_| rng.random_range(0..20)),
        )),
    ];
    RecordBatch::try_new(s, cols).unwrap()
}

/// `JSON_MATCH` filters on `attrs` and DataFusion conditions meaning the same (NULL where
/// the path is missing, as `json_get_*` gives).
fn attrs_cases() -> Vec<(&'static str, String)> {
    let any_tag = |t: &str| {
        let each: Vec<String> = (0..4)
            .map(|i| format!("json_get_str(attrs, 'tags', {i}) = '{t}'"))
            .collect();
        format!("({})", each.join(" OR "))
    };
    vec![
        (
            r#""$.user.country" = 'de'"#,
            "json_get_str(attrs, 'user', 'country') = 'de'".into(),
        ),
        (
            r#""$.user.country" != 'de'"#,
            "json_get_str(attrs, 'user', 'country') <> 'de'".into(),
        ),
        (
            r#""$.user.country" IN ('fr', 'us')"#,
            "json_get_str(attrs, 'user', 'country') IN ('fr', 'us')".into(),
        ),
        (
            r#""$.user.country" IS NULL"#,
            // JSON_MATCH of a NULL value is NULL.
            "attrs IS NOT NULL AND json_get_str(attrs, 'user', 'country') IS NULL".into(),
        ),
        (
            r#""$.user.country" IS NOT NULL AND "$.visits" < 10"#,
            "json_get_str(attrs, 'user', 'country') IS NOT NULL AND json_get_int(attrs, 'visits') < 10".into(),
        ),
        (
            r#""$.visits" >= 25"#,
            "json_get_int(attrs, 'visits') >= 25".into(),
        ),
        (
            r#""$.visits" = 7"#,
            "json_get_int(attrs, 'visits') = 7".into(),
        ),
        (
            r#""$.score" > 4.5"#,
            "json_get_float(attrs, 'score') > 4.5".into(),
        ),
        (
            r#""$.score" = 2"#,
            "json_get_float(attrs, 'score') = 2".into(),
        ),
        (
            r#""$.premium" = true"#,
            "json_get_bool(attrs, 'premium')".into(),
        ),
        (r#""$.tags[*]" = 'vip'"#, any_tag("vip")),
        (r#""$.tags[*]" = 'it''s'"#, any_tag("it''s")),
        (
            r#""$.tags[0]" = 'a'"#,
            "json_get_str(attrs, 'tags', 0) = 'a'".into(),
        ),
        (
            r#"REGEXP_LIKE("$.user.id", '7$')"#,
            "json_get_str(attrs, 'user', 'id') ~ '7$'".into(),
        ),
        (
            r#""$.user.country" = 'in' OR ("$.premium" = false AND "$.tags[*]" = 'b')"#,
            format!(
                "json_get_str(attrs, 'user', 'country') = 'in' OR (NOT json_get_bool(attrs, 'premium') AND {})",
                any_tag("b")
            ),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_functions_answer_like_datafusion_json_functions() {
    let mut rng = StdRng::seed_from_u64(0x150A);
    let schema = json_schema();
    let batches: Vec<RecordBatch> = (0..3)
        .map(|s| batch(&mut rng, T0 + (s * ROWS) as i64 * 1000))
        .collect();
    let segments = segments_last_unindexed(&schema, &batches);
    let indexed: Vec<bool> = segments
        .iter()
        .map(|s| s.column_meta(1).json.is_some())
        .collect();
    assert_eq!(indexed, [true, true, false]);
    let (engine, mut reference) = engine_and_reference(schema, segments, &batches);
    datafusion_functions_json::register_all(&mut reference).unwrap();
    // The segments filter (through their JSON indexes), not DataFusion.
    for sql in [
        r#"SELECT count(*) FROM t WHERE JSON_MATCH(attrs, '"$.user.country" = ''de''') AND n > 3"#,
        "SELECT count(*) FROM t WHERE JSON_EXTRACT_SCALAR(attrs, '$.user.country', 'STRING') IN ('de', 'fr')",
        "SELECT count(*) FROM t WHERE JSON_EXTRACT_SCALAR(attrs, '$.score', 'DOUBLE') > 2.5",
        "SELECT count(*) FROM t WHERE JSON_EXTRACT_SCALAR(device, '$.os', 'STRING') = 'ios'",
    ] {
        let plan = explain(&engine, sql).await;
        assert!(!plan.contains("FilterExec"), "{sql}\n{plan}");
    }
    let m = |col: &str, f: &str| format!("JSON_MATCH({col}, '{}')", f.replace('\'', "''"));
    let mut sqls: Vec<(String, String)> = Vec::new();
    let cases = attrs_cases();
    for (i, (f, r)) in cases.iter().enumerate() {
        let (f2, r2) = &cases[(i * 7 + 3) % cases.len()];
        let (r, r2) = (format!("({r})"), format!("({r2})"));
        sqls.push((
            format!("SELECT count(*) FROM t WHERE {}", m("attrs", f)),
            format!("SELECT count(*) FROM t WHERE {r}"),
        ));
        // NOT: FALSE where the path is missing or the text is not JSON; NULL for NULL.
        sqls.push((
            format!("SELECT count(*) FROM t WHERE NOT {}", m("attrs", f)),
            format!("SELECT count(*) FROM t WHERE attrs IS NOT NULL AND NOT coalesce({r}, false)"),
        ));
        sqls.push((
            format!(
                "SELECT n, count(*) FROM t WHERE {} GROUP BY n",
                m("attrs", &format!("({f}) AND NOT ({f2})"))
            ),
            format!(
                "SELECT n, count(*) FROM t WHERE coalesce({r}, false) AND NOT coalesce({r2}, false) GROUP BY n"
            ),
        ));
        sqls.push((
            format!(
                "SELECT ts, n FROM t WHERE {} AND n > 12 AND ts >= to_timestamp_millis({})",
                m("attrs", f),
                T0 + 1_500_000
            ),
            format!(
                "SELECT ts, n FROM t WHERE {r} AND n > 12 AND ts >= to_timestamp_millis({})",
                T0 + 1_500_000
            ),
        ));
        sqls.push((
            format!("SELECT {} AS hit, count(*) FROM t GROUP BY 1", m("attrs", f)),
            format!(
                "SELECT CASE WHEN attrs IS NULL THEN NULL ELSE coalesce({r}, false) END AS hit, count(*) FROM t GROUP BY 1"
            ),
        ));
    }
    for (f, r) in [
        (r#""$.os" = 'ios'"#, "json_get_str(device, 'os') = 'ios'"),
        (
            r#""$.version" > 11"#,
            "json_get_int(device, 'version') > 11",
        ),
        (
            r#""$.screen.w" = 1080"#,
            "json_get_int(device, 'screen', 'w') = 1080",
        ),
        (
            r#""$.os" NOT IN ('ios', 'linux')"#,
            "json_get_str(device, 'os') NOT IN ('ios', 'linux')",
        ),
    ] {
        sqls.push((
            format!("SELECT count(*) FROM t WHERE {}", m("device", f)),
            format!("SELECT count(*) FROM t WHERE {r}"),
        ));
        sqls.push((
            format!(
                "SELECT n, count(*) FROM t WHERE {} OR n = 3 GROUP BY n",
                m("device", f)
            ),
            format!("SELECT n, count(*) FROM t WHERE {r} OR n = 3 GROUP BY n"),
        ));
    }
    // Extraction: filters pushed to the index, and values in the select list and GROUP BY.
    let x =
        |col: &str, path: &str, ty: &str| format!("JSON_EXTRACT_SCALAR({col}, '{path}', '{ty}')");
    for (got, want) in [
        (
            format!("{} = 'de'", x("attrs", "$.user.country", "STRING")),
            "json_get_str(attrs, 'user', 'country') = 'de'".to_string(),
        ),
        (
            format!("{} IN ('de', 'br')", x("attrs", "$.user.country", "STRING")),
            "json_get_str(attrs, 'user', 'country') IN ('de', 'br')".to_string(),
        ),
        (
            format!("{} IS NOT NULL", x("attrs", "$.user.country", "STRING")),
            "json_get_str(attrs, 'user', 'country') IS NOT NULL".to_string(),
        ),
        (
            format!("{} <= 3.25", x("attrs", "$.score", "DOUBLE")),
            "json_get_float(attrs, 'score') <= 3.25".to_string(),
        ),
        (
            format!("{} > 40", x("attrs", "$.visits", "LONG")),
            "json_get_int(attrs, 'visits') > 40".to_string(),
        ),
        (
            format!("{} = 'android'", x("device", "$.os", "STRING")),
            "json_get_str(device, 'os') = 'android'".to_string(),
        ),
        (
            x("attrs", "$.premium", "BOOLEAN"),
            "json_get_bool(attrs, 'premium')".to_string(),
        ),
    ] {
        sqls.push((
            format!("SELECT count(*) FROM t WHERE {got}"),
            format!("SELECT count(*) FROM t WHERE {want}"),
        ));
    }
    for (got, want) in [
        (
            x("attrs", "$.user.country", "STRING"),
            "json_get_str(attrs, 'user', 'country')".to_string(),
        ),
        (
            x("attrs", "$.visits", "INT"),
            "CAST(json_get_int(attrs, 'visits') AS INT)".to_string(),
        ),
        (
            x("attrs", "$.score", "DOUBLE"),
            "json_get_float(attrs, 'score')".to_string(),
        ),
        (
            x("device", "$.version", "LONG"),
            "json_get_int(device, 'version')".to_string(),
        ),
        (
            x("device", "$.screen.w", "STRING"),
            "CAST(json_get_int(device, 'screen', 'w') AS VARCHAR)".to_string(),
        ),
        (
            "JSON_EXTRACT_SCALAR(attrs, '$.user.country', 'STRING', 'none')".to_string(),
            "coalesce(json_get_str(attrs, 'user', 'country'), 'none')".to_string(),
        ),
    ] {
        sqls.push((
            format!("SELECT {got} AS v, count(*) FROM t GROUP BY 1 ORDER BY 1 NULLS FIRST"),
            format!("SELECT {want} AS v, count(*) FROM t GROUP BY 1 ORDER BY 1 NULLS FIRST"),
        ));
    }
    let nonzero = assert_pairs(&engine, &reference, &sqls).await;
    assert!(
        nonzero > sqls.len() * 3 / 4,
        "most queries match rows: {nonzero}/{}",
        sqls.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_json_arguments_are_refused_at_planning() {
    let mut rng = StdRng::seed_from_u64(1);
    let schema = json_schema();
    let b = batch(&mut rng, T0);
    let bytes = build_segment(&schema, std::slice::from_ref(&b), &BuildOptions::default()).unwrap();
    let seg = Arc::new(SegmentReader::open(Bytes::from(bytes)).unwrap());
    let (engine, _) = engine_and_reference(schema, vec![seg], &[b]);
    for (sql, why) in [
        (
            "SELECT count(*) FROM t WHERE JSON_MATCH(attrs, '\"$.a\" = NULL')",
            "IS NULL",
        ),
        (
            "SELECT count(*) FROM t WHERE JSON_MATCH(attrs, '\"a\" = 1')",
            "starts with `$`",
        ),
        (
            "SELECT count(*) FROM t WHERE JSON_MATCH(attrs, device)",
            "constant string",
        ),
        (
            "SELECT count(*) FROM t WHERE JSON_MATCH(n, '\"$.a\" = 1')",
            "string column",
        ),
        (
            "SELECT JSON_EXTRACT_SCALAR(attrs, '$.tags[*]', 'STRING') FROM t",
            "[*]",
        ),
        (
            "SELECT JSON_EXTRACT_SCALAR(attrs, '$.a', 'DATE') FROM t",
            "is not one of",
        ),
        (
            "SELECT JSON_EXTRACT_SCALAR(attrs, '$.a', 'INT', 'x') FROM t",
            "is not a INT",
        ),
        (
            "SELECT JSON_EXTRACT_SCALAR(attrs, '$.a') FROM t",
            "3 or 4 arguments",
        ),
        (
            "SELECT JSON_EXTRACT_SCALAR(attrs, '$.a', 'STRING', 'x', 'y') FROM t",
            "3 or 4 arguments",
        ),
    ] {
        let err = engine
            .execute(sql, &QueryLimits::default())
            .await
            .err()
            .unwrap_or_else(|| panic!("{sql} ran"));
        assert!(err.to_string().contains(why), "{sql}: {err}");
    }
}
