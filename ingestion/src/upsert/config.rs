//! The upsert and dedup settings of a table spec, checked and resolved to column positions.
//! In: a [`TableSpec`]. Out: errors naming the offending field (at `POST /tables`), or a
//! [`KeyedTable`] the key map and the merge work from.

use basalt_segment::ColumnType;

use crate::error::{IngestError, Result};
use crate::metastore::SegmentMeta;
use crate::spec::{parse_duration, TableSpec};

/// How a PARTIAL upsert combines a column of the key's current row with a new row's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// The new value, when it is not null (also the default of unlisted columns).
    Overwrite,
    /// Keep the first non-null value ever seen.
    Ignore,
    /// Add the new value to the current one.
    Increment,
    Max,
    Min,
    /// Array columns: the new elements after the current ones.
    Append,
    /// Array columns: the current elements plus new ones not already present.
    Union,
}

impl Strategy {
    const ALL: [(&'static str, Strategy); 7] = [
        ("OVERWRITE", Strategy::Overwrite),
        ("IGNORE", Strategy::Ignore),
        ("INCREMENT", Strategy::Increment),
        ("MAX", Strategy::Max),
        ("MIN", Strategy::Min),
        ("APPEND", Strategy::Append),
        ("UNION", Strategy::Union),
    ];

    fn parse(s: &str) -> Option<Strategy> {
        Strategy::ALL
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(s))
            .map(|(_, st)| *st)
    }
}

/// What a keyed table does with a row whose key is known.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyMode {
    /// The row replaces the key's row.
    Full,
    /// The row is merged into the key's row; one strategy per column.
    Partial(Vec<Strategy>),
    /// The row is dropped.
    Dedup,
}

/// An upsert or dedup table's settings, resolved against its columns.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyedTable {
    pub mode: KeyMode,
    /// Positions of the primary key columns.
    pub key: Vec<usize>,
    /// Position of the column ordering a key's rows (dedup: the time column).
    pub comparison: usize,
    pub delete: Option<usize>,
    /// Keys older than the largest comparison value minus this are forgotten.
    pub ttl_ms: Option<i64>,
}

impl KeyedTable {
    /// `None` for a plain append table; call on a validated spec.
    pub fn of(spec: &TableSpec) -> Option<KeyedTable> {
        resolve(spec).ok().flatten()
    }

    /// The stream partition whose servers hold `segment` (partition-aware placement, as
    /// Pinot requires): an upsert or dedup table's real-time segments stay with their
    /// partition's consumer and key map. `None` for every other segment, placed by its id.
    pub fn placement_partition(spec: &TableSpec, segment: &SegmentMeta) -> Option<i32> {
        let d = segment.stream?;
        KeyedTable::of(spec).map(|_| d.partition)
    }

    /// PARTIAL upsert: rows merge column by column (and a merge can be refused).
    pub fn is_partial(&self) -> bool {
        matches!(self.mode, KeyMode::Partial(_))
    }

    pub fn is_upsert(&self) -> bool {
        !matches!(self.mode, KeyMode::Dedup)
    }
}

fn err(msg: impl Into<String>) -> IngestError {
    IngestError::Spec(msg.into())
}

/// Checks the spec's `primary_key`, `upsert` and `dedup` fields.
pub fn validate(spec: &TableSpec) -> Result<()> {
    resolve(spec).map(|_| ())
}

fn resolve(spec: &TableSpec) -> Result<Option<KeyedTable>> {
    let dedup = spec.dedup.as_ref().filter(|d| d.enabled);
    if spec.upsert.is_some() && dedup.is_some() {
        return Err(err(
            "dedup: a table is either an upsert table or a dedup table, not both",
        ));
    }
    if spec.primary_key.is_empty() {
        if spec.upsert.is_some() || dedup.is_some() {
            let field = if spec.upsert.is_some() {
                "upsert"
            } else {
                "dedup"
            };
            return Err(err(format!(
                "primary_key: {field} needs the columns that identify a row"
            )));
        }
        return Ok(None);
    }
    let position = |field: &str, name: &str| {
        spec.columns
            .iter()
            .position(|c| c.name == name)
            .ok_or_else(|| err(format!("{field}: {name:?} is not one of the columns")))
    };
    // Types are checked here too: a spec read back from a metastore was not validated.
    let ty = |i: usize| -> Result<ColumnType> {
        let c = &spec.columns[i];
        crate::spec::column_kind(&c.ty)
            .map(|(t, _)| t)
            .ok_or_else(|| err(format!("columns: {:?} has unknown type {:?}", c.name, c.ty)))
    };
    let mut key = Vec::new();
    for (i, k) in spec.primary_key.iter().enumerate() {
        let pos = position(&format!("primary_key[{i}]"), k)?;
        if key.contains(&pos) {
            return Err(err(format!("primary_key[{i}]: {k:?} is listed twice")));
        }
        if spec.is_array(pos) {
            return Err(err(format!(
                "primary_key[{i}]: {k:?} is an array column; keys are single values"
            )));
        }
        key.push(pos);
    }
    if spec.upsert.is_none() && dedup.is_none() {
        return Err(err(
            "primary_key: set \"upsert\" or \"dedup\" to say what a repeated key does",
        ));
    }
    if spec
        .columns
        .iter()
        .any(|c| c.index.iter().any(|i| i.eq_ignore_ascii_case("sorted")))
    {
        return Err(err(
            "columns: a sorted index re-orders rows at seal, which upsert and dedup tables \
             do not support yet (their valid-docs bitmaps are by arrival order)",
        ));
    }
    if spec.segment.max_rows > super::keymap::MAX_DOC as usize + 1 {
        return Err(err(format!(
            "segment.max_rows: upsert and dedup tables seal at most {} rows per segment",
            super::keymap::MAX_DOC as u64 + 1
        )));
    }
    let time = spec
        .time_column
        .as_deref()
        .map(|t| position("time_column", t))
        .transpose()?;
    if let Some(d) = dedup {
        let time = time.ok_or_else(|| {
            err("time_column: a dedup table needs one (its TTL and first-wins order are by time)")
        })?;
        if ty(time)? == ColumnType::Date {
            return Err(err(
                "time_column: a dedup table's time column must be TIMESTAMP or LONG (its TTL \
                 is in milliseconds), not DATE",
            ));
        }
        let ttl_ms = d.ttl.as_deref().map(|t| ttl("dedup.ttl", t)).transpose()?;
        return Ok(Some(KeyedTable {
            mode: KeyMode::Dedup,
            key,
            comparison: time,
            delete: None,
            ttl_ms,
        }));
    }
    let u = spec.upsert.as_ref().expect("upsert or dedup");
    let comparison = match &u.comparison_column {
        Some(c) => position("upsert.comparison_column", c)?,
        None => time.ok_or_else(|| {
            err("upsert.comparison_column: required for a table without a time_column")
        })?,
    };
    match ty(comparison)? {
        _ if spec.is_array(comparison) => {
            return Err(err(format!(
                "upsert.comparison_column: {:?} is an array column, must be a number or TIMESTAMP",
                spec.columns[comparison].name
            )))
        }
        ColumnType::Int
        | ColumnType::Long
        | ColumnType::Timestamp
        | ColumnType::Date
        | ColumnType::Decimal { .. }
        | ColumnType::Float
        | ColumnType::Double => {}
        other => {
            return Err(err(format!(
                "upsert.comparison_column: {:?} is {}, must be a number, DATE or TIMESTAMP",
                spec.columns[comparison].name,
                other.name()
            )))
        }
    }
    let delete = match &u.delete_column {
        Some(c) => {
            let pos = position("upsert.delete_column", c)?;
            if ty(pos)? != ColumnType::Boolean || spec.is_array(pos) {
                return Err(err(format!(
                    "upsert.delete_column: {c:?} must be BOOLEAN, not {}",
                    ty(pos)?.name()
                )));
            }
            Some(pos)
        }
        None => None,
    };
    let mode = match u.mode.to_ascii_uppercase().as_str() {
        "FULL" => {
            if !u.partial_strategies.is_empty() {
                return Err(err(
                    "upsert.partial_strategies: only a PARTIAL upsert merges columns",
                ));
            }
            KeyMode::Full
        }
        "PARTIAL" => {
            let mut strategies = vec![Strategy::Overwrite; spec.columns.len()];
            for (col, s) in &u.partial_strategies {
                let field = format!("upsert.partial_strategies.{col}");
                let pos = position(&field, col)?;
                let st = Strategy::parse(s).ok_or_else(|| {
                    err(format!(
                        "{field}: unknown strategy {s:?} (OVERWRITE, IGNORE, INCREMENT, MAX, MIN, APPEND, UNION)"
                    ))
                })?;
                if key.contains(&pos) || pos == comparison || Some(pos) == delete {
                    return Err(err(format!(
                        "{field}: {col:?} is a primary key, comparison or delete column; \
                         those are not merged"
                    )));
                }
                let t = ty(pos)?;
                let array = spec.is_array(pos);
                let fits = match st {
                    Strategy::Overwrite | Strategy::Ignore => true,
                    Strategy::Append | Strategy::Union => array,
                    _ if array => false,
                    Strategy::Increment => matches!(
                        t,
                        ColumnType::Int | ColumnType::Long | ColumnType::Float | ColumnType::Double
                    ),
                    Strategy::Max | Strategy::Min => matches!(
                        t,
                        ColumnType::Int
                            | ColumnType::Long
                            | ColumnType::Float
                            | ColumnType::Double
                            | ColumnType::Timestamp
                            | ColumnType::Date
                            | ColumnType::Decimal { .. }
                    ),
                };
                if !fits {
                    return Err(err(format!(
                        "{field}: {s} does not apply to {col:?}, a {} column",
                        spec.columns[pos].ty.to_ascii_uppercase()
                    )));
                }
                strategies[pos] = st;
            }
            KeyMode::Partial(strategies)
        }
        other => {
            return Err(err(format!(
                "upsert.mode: {other:?} must be FULL or PARTIAL"
            )))
        }
    };
    let ttl_ms = u
        .metadata_ttl
        .as_deref()
        .map(|t| ttl("upsert.metadata_ttl", t))
        .transpose()?;
    if ttl_ms.is_some() && matches!(ty(comparison)?, ColumnType::Float | ColumnType::Double) {
        return Err(err(
            "upsert.metadata_ttl: needs a comparison column in epoch milliseconds (LONG or \
             TIMESTAMP), not a floating-point one",
        ));
    }
    Ok(Some(KeyedTable {
        mode,
        key,
        comparison,
        delete,
        ttl_ms,
    }))
}

fn ttl(field: &str, s: &str) -> Result<i64> {
    let d = parse_duration(s).map_err(|e| err(format!("{field}: {e}")))?;
    i64::try_from(d.as_millis()).map_err(|_| err(format!("{field}: {s:?} is too long")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: &str) -> std::result::Result<TableSpec, String> {
        let json = format!(
            r#"{{"name":"orders","time_column":"ts",
             "columns":[{{"name":"order_id","type":"STRING"}},{{"name":"ts","type":"TIMESTAMP"}},
               {{"name":"updated_at","type":"LONG"}},{{"name":"is_deleted","type":"BOOLEAN"}},
               {{"name":"amount","type":"DOUBLE"}},{{"name":"status","type":"STRING"}},
               {{"name":"max_seen","type":"LONG"}},{{"name":"tags","type":"STRING_ARRAY"}}]{extra}}}"#
        );
        TableSpec::from_json(json.as_bytes()).map_err(|e| e.to_string())
    }

    /// A keyed table's real-time segments follow their partition; its batch segments and
    /// every segment of an append table are placed by id.
    #[test]
    fn only_keyed_stream_segments_are_placed_by_partition() {
        let keyed = spec(r#","primary_key":["order_id"],"upsert":{"mode":"FULL"}"#).unwrap();
        let append = spec("").unwrap();
        let segment = |stream: Option<i32>| SegmentMeta {
            id: "s".into(),
            path: "s".into(),
            rows: 1,
            bytes: 1,
            time_range: None,
            stream: stream.map(|partition| crate::metastore::CheckpointDelta {
                partition,
                from: None,
                to: 10,
            }),
        };
        assert_eq!(
            KeyedTable::placement_partition(&keyed, &segment(Some(3))),
            Some(3)
        );
        assert_eq!(
            KeyedTable::placement_partition(&keyed, &segment(None)),
            None
        );
        assert_eq!(
            KeyedTable::placement_partition(&append, &segment(Some(3))),
            None
        );
    }

    #[test]
    fn accepts_the_issue_spec_and_resolves_columns() {
        // Exactly as written in the issue.
        let s = spec(
            r#",
 "primary_key":["order_id"],
 "upsert":{"mode":"PARTIAL","comparison_column":"updated_at","delete_column":"is_deleted",
           "partial_strategies":{"amount":"INCREMENT","tags":"UNION","status":"OVERWRITE","max_seen":"MAX"},
           "metadata_ttl":"7d"}"#,
        )
        .unwrap();
        let k = KeyedTable::of(&s).unwrap();
        assert_eq!(k.key, vec![0]);
        assert_eq!((k.comparison, k.delete), (2, Some(3)));
        assert_eq!(k.ttl_ms, Some(7 * 86_400_000));
        let KeyMode::Partial(st) = &k.mode else {
            panic!("partial")
        };
        assert_eq!(st[4], Strategy::Increment);
        assert_eq!(st[6], Strategy::Max);
        assert_eq!(st[5], Strategy::Overwrite);
        assert_eq!(st[7], Strategy::Union);
        // Array strategies need array columns, and arrays take no arithmetic.
        for (col, strategy) in [("amount", "UNION"), ("tags", "INCREMENT"), ("tags", "MAX")] {
            let e = spec(&format!(
                r#","primary_key":["order_id"],"upsert":{{"mode":"PARTIAL",
                   "partial_strategies":{{"{col}":"{strategy}"}}}}"#
            ))
            .unwrap_err();
            assert!(e.contains(col) && e.contains(strategy), "{e}");
        }
        // Key and comparison columns are never null.
        let schema = s.segment_schema();
        assert!(!schema.columns[0].nullable && !schema.columns[2].nullable);
        let d = spec(r#","primary_key":["order_id"],"dedup":{"enabled":true,"ttl":"1d"}"#).unwrap();
        assert_eq!(KeyedTable::of(&d).unwrap().mode, KeyMode::Dedup);
        // Round trip.
        let back = TableSpec::from_json(&serde_json::to_vec(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn errors_name_the_field() {
        for (extra, field) in [
            (r#","upsert":{"mode":"FULL"}"#, "primary_key"),
            (
                r#","primary_key":["nope"],"upsert":{"mode":"FULL"}"#,
                "primary_key[0]",
            ),
            (r#","primary_key":["order_id"]"#, "primary_key"),
            (
                r#","primary_key":["order_id"],"upsert":{"mode":"HALF"}"#,
                "upsert.mode",
            ),
            (
                r#","primary_key":["order_id"],"upsert":{"mode":"FULL","comparison_column":"status"}"#,
                "upsert.comparison_column",
            ),
            (
                r#","primary_key":["order_id"],"upsert":{"mode":"FULL","delete_column":"amount"}"#,
                "upsert.delete_column",
            ),
            (
                r#","primary_key":["order_id"],"upsert":{"mode":"PARTIAL","partial_strategies":{"status":"INCREMENT"}}"#,
                "upsert.partial_strategies.status",
            ),
            (
                r#","primary_key":["order_id"],"upsert":{"mode":"PARTIAL","partial_strategies":{"amount":"SUM"}}"#,
                "upsert.partial_strategies.amount",
            ),
            (
                r#","primary_key":["order_id"],"upsert":{"mode":"FULL","partial_strategies":{"amount":"MAX"}}"#,
                "upsert.partial_strategies",
            ),
            (
                r#","primary_key":["order_id"],"upsert":{"mode":"FULL","metadata_ttl":"soon"}"#,
                "upsert.metadata_ttl",
            ),
            (
                r#","primary_key":["order_id"],"upsert":{"mode":"FULL"},"dedup":{"enabled":true}"#,
                "dedup",
            ),
            (
                r#","primary_key":["order_id"],"upsert":{"mode":"FULL","extra":1}"#,
                "unknown field `extra`",
            ),
        ] {
            let e = spec(extra).unwrap_err();
            assert!(e.contains(field), "{extra}: {e}");
        }
    }

    /// A spec read back from a metastore is not validated yet: an unknown column type is an
    /// error (found by the `metastore_state` fuzz target; it was a panic).
    #[test]
    fn unknown_column_types_are_errors_not_panics() {
        let spec: TableSpec = serde_json::from_value(serde_json::json!({
            "name": "k", "time_column": "ts",
            "columns": [{"name": "ts", "type": "TIMESTAMP"}, {"name": "id", "type": "STRING"},
                        {"name": "n", "type": "LONG"}, {"name": "del", "type": "BOOLEA+N"}],
            "primary_key": ["id"],
            "upsert": {"mode": "FULL", "comparison_column": "n", "delete_column": "del"}
        }))
        .unwrap();
        let e = validate(&spec).unwrap_err().to_string();
        assert!(e.contains("unknown type"), "{e}");
        assert!(KeyedTable::of(&spec).is_none());
    }
}
