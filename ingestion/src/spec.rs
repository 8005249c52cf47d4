//! Table specs: what a data engineer posts to `POST /tables`. In: JSON. Out: a validated
//! [`TableSpec`] and the [`SegmentSchema`] segments of the table are built with.
//!
//! Unknown fields are rejected (serde `deny_unknown_fields`); types and index kinds are checked
//! here so the error names the offending field, e.g. `columns[3].type`.

use basalt_segment::{ColumnDef, ColumnType, IndexKind, SegmentSchema};
use serde::{Deserialize, Serialize};

use crate::error::{IngestError, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSpec {
    pub name: String,
    /// The column rows are placed in time by; must be TIMESTAMP or LONG (epoch ms).
    pub time_column: String,
    pub columns: Vec<ColumnSpec>,
    #[serde(default)]
    pub segment: SegmentConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnSpec {
    pub name: String,
    /// One of STRING, INT, LONG, FLOAT, DOUBLE, BOOLEAN, TIMESTAMP, JSON.
    #[serde(rename = "type")]
    pub ty: String,
    /// Index kinds: inverted, range, sorted, bloom ("text" is reserved).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub index: Vec<String>,
    /// Whether the column may be null (default true; the time column never is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nullable: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentConfig {
    /// Rows per sealed segment (default 1,000,000).
    #[serde(default = "default_max_rows")]
    pub max_rows: usize,
}

fn default_max_rows() -> usize {
    1_000_000
}

impl Default for SegmentConfig {
    fn default() -> Self {
        SegmentConfig {
            max_rows: default_max_rows(),
        }
    }
}

fn spec_err(msg: impl Into<String>) -> IngestError {
    IngestError::Spec(msg.into())
}

impl TableSpec {
    /// Parses and validates a spec from JSON bytes.
    pub fn from_json(bytes: &[u8]) -> Result<TableSpec> {
        let spec: TableSpec = serde_json::from_slice(bytes).map_err(|e| spec_err(e.to_string()))?;
        spec.validate()?;
        Ok(spec)
    }

    pub fn validate(&self) -> Result<()> {
        let valid_name = |s: &str| {
            !s.is_empty()
                && s.len() <= 128
                && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !s.starts_with(|c: char| c.is_ascii_digit())
        };
        if !valid_name(&self.name) {
            return Err(spec_err(format!(
                "name: {:?} must be 1-128 letters, digits or underscores, not starting with a digit",
                self.name
            )));
        }
        if self.columns.is_empty() {
            return Err(spec_err("columns: a table needs at least one column"));
        }
        let mut seen = std::collections::HashSet::new();
        let mut sorted = 0;
        for (i, c) in self.columns.iter().enumerate() {
            if !valid_name(&c.name) {
                return Err(spec_err(format!(
                    "columns[{i}].name: {:?} must be 1-128 letters, digits or underscores",
                    c.name
                )));
            }
            if !seen.insert(c.name.as_str()) {
                return Err(spec_err(format!(
                    "columns[{i}].name: duplicate column {:?}",
                    c.name
                )));
            }
            let ty = ColumnType::parse(&c.ty).ok_or_else(|| {
                spec_err(format!(
                    "columns[{i}].type: unknown type {:?} (expected one of STRING, INT, LONG, FLOAT, DOUBLE, BOOLEAN, TIMESTAMP, JSON)",
                    c.ty
                ))
            })?;
            for (j, k) in c.index.iter().enumerate() {
                let kind = parse_index(k).ok_or_else(|| {
                    spec_err(format!(
                        "columns[{i}].index[{j}]: unknown index kind {k:?} (expected inverted, range, sorted, bloom or text)"
                    ))
                })?;
                match kind {
                    IndexKind::Text => {
                        return Err(spec_err(format!(
                            "columns[{i}].index[{j}]: the text index is reserved and not available yet"
                        )))
                    }
                    IndexKind::Range if matches!(ty, ColumnType::String | ColumnType::Json | ColumnType::Boolean) => {
                        return Err(spec_err(format!(
                            "columns[{i}].index[{j}]: a range index needs a numeric or TIMESTAMP column, {} is {}",
                            c.name,
                            ty.name()
                        )))
                    }
                    IndexKind::Sorted => sorted += 1,
                    _ => {}
                }
            }
        }
        if sorted > 1 {
            return Err(spec_err(
                "columns: at most one column can have a sorted index",
            ));
        }
        let time = self
            .columns
            .iter()
            .position(|c| c.name == self.time_column)
            .ok_or_else(|| {
                spec_err(format!(
                    "time_column: {:?} is not one of the columns",
                    self.time_column
                ))
            })?;
        match ColumnType::parse(&self.columns[time].ty) {
            Some(ColumnType::Timestamp | ColumnType::Long) => {}
            _ => {
                return Err(spec_err(format!(
                    "time_column: {:?} must be TIMESTAMP or LONG, not {}",
                    self.time_column, self.columns[time].ty
                )))
            }
        }
        if self.columns[time].nullable == Some(true) {
            return Err(spec_err(format!(
                "columns[{time}].nullable: the time column cannot be nullable"
            )));
        }
        if self.segment.max_rows == 0 || self.segment.max_rows > u32::MAX as usize {
            return Err(spec_err(
                "segment.max_rows: must be between 1 and 4294967295",
            ));
        }
        Ok(())
    }

    /// The segment schema; call only on a validated spec.
    pub fn segment_schema(&self) -> SegmentSchema {
        SegmentSchema {
            columns: self
                .columns
                .iter()
                .map(|c| ColumnDef {
                    name: c.name.clone(),
                    ty: ColumnType::parse(&c.ty).expect("validated type"),
                    nullable: c.name != self.time_column && c.nullable.unwrap_or(true),
                    indexes: c.index.iter().filter_map(|k| parse_index(k)).collect(),
                })
                .collect(),
            time_column: Some(self.time_column.clone()),
        }
    }
}

fn parse_index(s: &str) -> Option<IndexKind> {
    IndexKind::ALL
        .into_iter()
        .find(|k| k.name().eq_ignore_ascii_case(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const EVENTS: &str = r#"{"name":"events",
 "time_column":"ts",
 "columns":[
   {"name":"event_id","type":"STRING"},
   {"name":"ts","type":"TIMESTAMP"},
   {"name":"user_id","type":"STRING","index":["inverted"]},
   {"name":"session_id","type":"STRING"},
   {"name":"event_type","type":"STRING","index":["inverted"]},
   {"name":"country","type":"STRING","index":["inverted"]},
   {"name":"device","type":"STRING","index":["inverted"]},
   {"name":"os","type":"STRING"},
   {"name":"app_version","type":"STRING"},
   {"name":"url","type":"STRING","index":["inverted"]},
   {"name":"revenue","type":"DOUBLE"},
   {"name":"latency_ms","type":"DOUBLE","index":["range"]},
   {"name":"is_bot","type":"BOOLEAN"}],
 "segment":{"max_rows":1000000}}"#;

    #[test]
    fn accepts_the_events_spec() {
        let s = TableSpec::from_json(EVENTS.as_bytes()).unwrap();
        assert_eq!(s.columns.len(), 13);
        assert_eq!(
            s.segment_schema().columns[2].indexes,
            vec![IndexKind::Inverted]
        );
    }

    fn err(json: &str) -> String {
        TableSpec::from_json(json.as_bytes())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn errors_name_the_field() {
        let e = err(&EVENTS.replace("\"os\",\"type\":\"STRING\"", "\"os\",\"type\":\"STRNG\""));
        assert!(e.contains("columns[7].type") && e.contains("STRNG"), "{e}");
        let e = err(&EVENTS.replace("\"range\"", "\"ranged\""));
        assert!(e.contains("columns[11].index[0]"), "{e}");
        let e = err(&EVENTS.replace("\"time_column\":\"ts\"", "\"time_column\":\"tz\""));
        assert!(e.contains("time_column"), "{e}");
        let e = err(&EVENTS.replace("\"time_column\":\"ts\"", "\"time_column\":\"os\""));
        assert!(e.contains("TIMESTAMP or LONG"), "{e}");
        let e = err(&EVENTS.replace("\"segment\"", "\"segmnt\""));
        assert!(e.contains("unknown field `segmnt`"), "{e}");
        let e = err(&EVENTS.replace("{\"max_rows\":1000000}", "{\"max_rows\":1000000,\"x\":1}"));
        assert!(e.contains("unknown field `x`"), "{e}");
        let e = err("{\"name\":\"t\",\"time_column\":\"ts\",\"columns\":[{\"name\":\"ts\"}]}");
        assert!(e.contains("missing field `type`"), "{e}");
    }
}
