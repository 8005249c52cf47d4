//! Turns query output into Apache Pinot's broker response JSON, so Pinot clients (pinotdb,
//! Superset, Grafana's Pinot plugin) can read it. In: [`QueryOutput`] or [`QueryError`].
//! Out: `{"resultTable":{"dataSchema":{...},"rows":[...]},"exceptions":[],...}`.

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{
    DataType, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, TimeUnit,
    UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use basalt_query::{QueryError, QueryOutput};
use serde_json::{json, Value};

/// Pinot's name for an Arrow type.
pub fn pinot_type(t: &DataType) -> &'static str {
    match t {
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::UInt8 | DataType::UInt16 => {
            "INT"
        }
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => "LONG",
        DataType::Float32 => "FLOAT",
        DataType::Float64 => "DOUBLE",
        DataType::Boolean => "BOOLEAN",
        DataType::Timestamp(_, _) => "TIMESTAMP",
        DataType::Decimal128(_, _) | DataType::Decimal256(_, _) => "BIG_DECIMAL",
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "BYTES",
        DataType::Dictionary(_, v) => pinot_type(v),
        DataType::List(f) | DataType::LargeList(f) => match pinot_type(f.data_type()) {
            "INT" => "INT_ARRAY",
            "LONG" => "LONG_ARRAY",
            "FLOAT" => "FLOAT_ARRAY",
            "DOUBLE" => "DOUBLE_ARRAY",
            "BOOLEAN" => "BOOLEAN_ARRAY",
            "TIMESTAMP" => "TIMESTAMP_ARRAY",
            _ => "STRING_ARRAY",
        },
        _ => "STRING",
    }
}

fn float(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else if v.is_nan() {
        json!("NaN")
    } else if v > 0.0 {
        json!("Infinity")
    } else {
        json!("-Infinity")
    }
}

/// Formats a timestamp the way Pinot does: `2026-11-28 10:00:00.0`.
fn timestamp_ms(ms: i64) -> Value {
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(t) => {
            let frac = ms.rem_euclid(1000);
            let frac = if frac == 0 {
                "0".to_string()
            } else {
                format!("{frac:03}").trim_end_matches('0').to_string()
            };
            json!(format!("{}.{frac}", t.format("%Y-%m-%d %H:%M:%S")))
        }
        None => json!(ms),
    }
}

/// Converts one column to JSON cells.
fn column_values(a: &ArrayRef) -> Vec<Value> {
    let a: ArrayRef = match a.data_type() {
        DataType::Dictionary(_, v) => arrow::compute::cast(a, v).unwrap_or_else(|_| a.clone()),
        _ => a.clone(),
    };
    let n = a.len();
    macro_rules! prim {
        ($t:ty, $f:expr) => {{
            let p = a.as_primitive::<$t>();
            (0..n)
                .map(|i| {
                    if p.is_null(i) {
                        Value::Null
                    } else {
                        $f(p.value(i))
                    }
                })
                .collect()
        }};
    }
    match a.data_type() {
        DataType::Int8 => prim!(Int8Type, |v| json!(v)),
        DataType::Int16 => prim!(Int16Type, |v| json!(v)),
        DataType::Int32 => prim!(Int32Type, |v| json!(v)),
        DataType::Int64 => prim!(Int64Type, |v| json!(v)),
        DataType::UInt8 => prim!(UInt8Type, |v| json!(v)),
        DataType::UInt16 => prim!(UInt16Type, |v| json!(v)),
        DataType::UInt32 => prim!(UInt32Type, |v| json!(v)),
        DataType::UInt64 => prim!(UInt64Type, |v| json!(v)),
        DataType::Float32 => prim!(Float32Type, |v: f32| float(v as f64)),
        DataType::Float64 => prim!(Float64Type, float),
        DataType::Boolean => {
            let b = a.as_boolean();
            (0..n)
                .map(|i| {
                    if b.is_null(i) {
                        Value::Null
                    } else {
                        json!(b.value(i))
                    }
                })
                .collect()
        }
        DataType::Utf8 => {
            let s = a.as_string::<i32>();
            (0..n)
                .map(|i| {
                    if s.is_null(i) {
                        Value::Null
                    } else {
                        json!(s.value(i))
                    }
                })
                .collect()
        }
        DataType::Timestamp(_, _) => {
            let ms = arrow::compute::cast(&a, &DataType::Timestamp(TimeUnit::Millisecond, None))
                .ok()
                .and_then(|c| arrow::compute::cast(&c, &DataType::Int64).ok());
            match ms {
                Some(ms) => {
                    let p = ms.as_primitive::<Int64Type>();
                    (0..n)
                        .map(|i| {
                            if p.is_null(i) {
                                Value::Null
                            } else {
                                timestamp_ms(p.value(i))
                            }
                        })
                        .collect()
                }
                None => formatted(&a),
            }
        }
        DataType::List(_) => {
            // Pinot answers multi-value cells as JSON arrays.
            let l = a.as_list::<i32>();
            (0..n)
                .map(|i| {
                    if l.is_null(i) {
                        Value::Null
                    } else {
                        Value::Array(column_values(&l.value(i)))
                    }
                })
                .collect()
        }
        _ => formatted(&a),
    }
}

fn formatted(a: &ArrayRef) -> Vec<Value> {
    let opts = FormatOptions::default();
    match ArrayFormatter::try_new(a.as_ref(), &opts) {
        Ok(f) => (0..a.len())
            .map(|i| {
                if a.is_null(i) {
                    Value::Null
                } else {
                    json!(f.value(i).to_string())
                }
            })
            .collect(),
        Err(_) => vec![Value::Null; a.len()],
    }
}

/// The Pinot response for `out`, encoded batch by batch: each batch's bytes are reserved in
/// the query's memory and counted against `max_bytes`, so a huge result fails with a limit
/// error instead of being built whole.
pub fn success(out: &mut QueryOutput, max_bytes: usize) -> Result<Vec<u8>, QueryError> {
    let names: Vec<&str> = out
        .schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    let types: Vec<&str> = out
        .schema
        .fields()
        .iter()
        .map(|f| pinot_type(f.data_type()))
        .collect();
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    buf.extend_from_slice(b"{\"resultTable\":{\"dataSchema\":");
    let schema = json!({"columnNames": names, "columnDataTypes": types});
    serde_json::to_writer(&mut buf, &schema).expect("writing to a Vec");
    buf.extend_from_slice(b",\"rows\":[");
    let mut first = true;
    let mut charged = 0usize;
    for b in std::mem::take(&mut out.batches) {
        let cols: Vec<Vec<Value>> = b.columns().iter().map(column_values).collect();
        for r in 0..b.num_rows() {
            if !first {
                buf.push(b',');
            }
            first = false;
            buf.push(b'[');
            for (i, c) in cols.iter().enumerate() {
                if i > 0 {
                    buf.push(b',');
                }
                serde_json::to_writer(&mut buf, &c[r]).expect("writing to a Vec");
            }
            buf.push(b']');
        }
        if buf.len() > max_bytes {
            return Err(QueryError::ResponseTooLarge { limit: max_bytes });
        }
        out.reserve(buf.capacity().saturating_sub(charged))?;
        charged = buf.capacity();
    }
    buf.extend_from_slice(b"]},");
    let s = &out.stats;
    // A standalone process is its own one server.
    let (queried, responded) = match s.num_servers_queried {
        0 => (1, 1),
        n => (n, s.num_servers_responded),
    };
    let exceptions: Vec<Value> = match s.partial() {
        true => vec![json!({
            "errorCode": SEGMENTS_UNAVAILABLE,
            "message": format!(
                "{} segments have no live replica and are missing from this result: {}",
                s.missing_segments.len(),
                s.missing_segments.join(", ")
            ),
        })],
        false => Vec::new(),
    };
    let rest = json!({
        "exceptions": exceptions,
        "partialResult": s.partial(),
        "numServersQueried": queried,
        "numServersResponded": responded,
        "numDocsScanned": s.num_docs_scanned,
        "totalDocs": s.total_docs,
        "numSegmentsQueried": s.num_segments_queried,
        "numSegmentsProcessed": s.num_segments_queried - s.num_segments_pruned,
        "numSegmentsMatched": s.num_segments_matched,
        "numWarehouseFilesQueried": s.num_warehouse_files,
        "numSegmentsFromCache": s.num_segments_from_cache,
        "numSegmentsStarTree": s.num_segments_star_tree,
        "directPlan": out.direct,
        "numSegmentsPrunedByBroker": 0,
        "numSegmentsPrunedByServer": s.num_segments_pruned,
        "numEntriesScannedInFilter": s.blocks_scanned,
        "numEntriesScannedPostFilter": s.num_docs_scanned,
        "numGroupsLimitReached": false,
        "timeUsedMs": out.elapsed.as_millis() as u64,
    });
    let rest = serde_json::to_vec(&rest).expect("writing to a Vec");
    // `rest` is an object: splice its members after the result table.
    buf.extend_from_slice(&rest[1..]);
    Ok(buf)
}

/// Pinot's error code for segments no server answered for
/// (`BROKER_SEGMENT_UNAVAILABLE_ERROR_CODE`).
pub const SEGMENTS_UNAVAILABLE: i32 = 305;

pub fn failure(e: &QueryError, elapsed_ms: u64) -> Value {
    json!({
        "exceptions": [{"errorCode": e.pinot_code(), "message": e.to_string()}],
        "numServersQueried": 1,
        "numServersResponded": 1,
        "numDocsScanned": 0,
        "totalDocs": 0,
        "numSegmentsQueried": 0,
        "numSegmentsMatched": 0,
        "timeUsedMs": elapsed_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_look_like_pinot() {
        assert_eq!(timestamp_ms(0), json!("1970-01-01 00:00:00.0"));
        assert_eq!(timestamp_ms(1_500), json!("1970-01-01 00:00:01.5"));
        assert_eq!(timestamp_ms(1_025), json!("1970-01-01 00:00:01.025"));
    }

    #[test]
    fn non_finite_floats_are_strings() {
        assert_eq!(float(f64::NAN), json!("NaN"));
        assert_eq!(float(1.5), json!(1.5));
    }
}
