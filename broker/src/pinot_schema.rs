//! A table's schema in Apache Pinot's controller format (`GET /tables/{name}/schema`), so
//! Pinot clients (pinotdb's SQLAlchemy dialect, Superset's Pinot engine) can reflect Basalt
//! tables. In: a table spec. Out: `{"schemaName", "dimensionFieldSpecs",
//! "metricFieldSpecs", "dateTimeFieldSpecs"}`.
//!
//! Numeric columns are metrics and the others dimensions, as Pinot's schema inference does;
//! the time column is the one date-time field (epoch milliseconds, or a `yyyy-MM-dd` date).
//! Array columns are multi-valued dimensions of their element type.

use basalt_ingest::spec::TableSpec;
use serde_json::{json, Value};

/// Pinot's data type and single-value flag for a Basalt column type.
fn pinot_type(ty: &str) -> (&'static str, bool) {
    let upper = ty.trim().to_ascii_uppercase();
    match upper.as_str() {
        "INT" => ("INT", true),
        "LONG" => ("LONG", true),
        "FLOAT" => ("FLOAT", true),
        "DOUBLE" => ("DOUBLE", true),
        "BOOLEAN" => ("BOOLEAN", true),
        "TIMESTAMP" => ("TIMESTAMP", true),
        "JSON" => ("JSON", true),
        "STRING_ARRAY" => ("STRING", false),
        "LONG_ARRAY" => ("LONG", false),
        d if d.starts_with("DECIMAL") => ("BIG_DECIMAL", true),
        // STRING, and DATE (Pinot has no date type; its values are `yyyy-MM-dd` strings).
        _ => ("STRING", true),
    }
}

/// The Pinot schema of `spec`.
pub fn pinot_schema(spec: &TableSpec) -> Value {
    let mut dimensions = Vec::new();
    let mut metrics = Vec::new();
    let mut date_times = Vec::new();
    for c in &spec.columns {
        let (data_type, single) = pinot_type(&c.ty);
        if spec.time_column.as_deref() == Some(c.name.as_str()) {
            let format = match data_type {
                "STRING" => "1:DAYS:SIMPLE_DATE_FORMAT:yyyy-MM-dd",
                "TIMESTAMP" => "TIMESTAMP",
                _ => "1:MILLISECONDS:EPOCH",
            };
            date_times.push(json!({
                "name": c.name,
                "dataType": data_type,
                "format": format,
                "granularity": if data_type == "STRING" { "1:DAYS" } else { "1:MILLISECONDS" },
            }));
            continue;
        }
        let mut field = json!({ "name": c.name, "dataType": data_type });
        if !single {
            field["singleValueField"] = json!(false);
        }
        let metric = single
            && matches!(
                data_type,
                "INT" | "LONG" | "FLOAT" | "DOUBLE" | "BIG_DECIMAL"
            );
        match metric {
            true => metrics.push(field),
            false => dimensions.push(field),
        }
    }
    let mut schema = json!({
        "schemaName": spec.name,
        "dimensionFieldSpecs": dimensions,
        "metricFieldSpecs": metrics,
        "dateTimeFieldSpecs": date_times,
    });
    if !spec.primary_key.is_empty() {
        schema["primaryKeyColumns"] = json!(spec.primary_key);
    }
    schema
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_schema_in_pinot_form() {
        let spec: TableSpec = serde_json::from_str(basalt_ingest::gen::EVENTS_SPEC).unwrap();
        let s = pinot_schema(&spec);
        assert_eq!(s["schemaName"], "events");
        assert_eq!(
            s["dateTimeFieldSpecs"],
            json!([{"name": "ts", "dataType": "TIMESTAMP", "format": "TIMESTAMP",
                    "granularity": "1:MILLISECONDS"}])
        );
        let names = |k: &str| {
            s[k].as_array()
                .unwrap()
                .iter()
                .map(|f| f["name"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(names("metricFieldSpecs"), ["revenue", "latency_ms"]);
        assert_eq!(names("dimensionFieldSpecs").len(), 10);
        assert!(s["dimensionFieldSpecs"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "is_bot", "dataType": "BOOLEAN"})));
        assert_eq!(pinot_type("STRING_ARRAY"), ("STRING", false));
        assert_eq!(pinot_type("DECIMAL(12, 2)"), ("BIG_DECIMAL", true));
        assert_eq!(pinot_type("date"), ("STRING", true));
    }
}
