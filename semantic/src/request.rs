//! Semantic queries (`POST /semantic/query`). In: a model's name, the measures and dimensions
//! asked for, a time grain, a time range and row filters over dimensions. Out: SQL over the
//! model's table — the time bucket and dimensions first, then the measures in the order
//! asked — compiled through the same rewrite as `MEASURE()` SQL ([`crate::sql`]), and the
//! range it covers.

use std::collections::HashSet;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use serde::{Deserialize, Serialize};

use crate::error::{invalid, Result};
use crate::model::{parse_expr, Model};
use crate::sql::{rewrite_statement, SCHEMA};

/// Most measures, dimensions and filters one request names.
const MAX_LIST: usize = 64;

/// A semantic query.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SemanticQuery {
    pub model: String,
    #[serde(default)]
    pub measures: Vec<String>,
    #[serde(default)]
    pub dimensions: Vec<String>,
    /// Buckets the time dimension (`minute` … `year`); its column comes first, named after
    /// the time dimension, holding each bucket's start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grain: Option<Grain>,
    /// Inclusive start of the time range (RFC 3339, `YYYY-MM-DD` or `YYYY-MM-DD HH:MM:SS`,
    /// UTC unless an offset is given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Exclusive end of the time range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Row filters: SQL conditions over the model's dimensions, all of which must hold.
    #[serde(default)]
    pub filters: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Grain {
    Minute,
    Hour,
    Day,
    Week,
    Month,
    Quarter,
    Year,
}

impl Grain {
    fn unit(self) -> &'static str {
        match self {
            Grain::Minute => "minute",
            Grain::Hour => "hour",
            Grain::Day => "day",
            Grain::Week => "week",
            Grain::Month => "month",
            Grain::Quarter => "quarter",
            Grain::Year => "year",
        }
    }
}

/// A compiled semantic query.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// SQL over `semantic.<model>`, as a user would write it.
    pub semantic_sql: String,
    /// The same over the model's table: what runs.
    pub sql: String,
    /// The requested range in epoch milliseconds, `[from, to)`.
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
}

/// Parses a time bound; `field` names it in errors.
pub fn parse_time(field: &str, text: &str) -> Result<i64> {
    let t = text.trim();
    if let Ok(d) = DateTime::parse_from_rfc3339(t) {
        return Ok(d.timestamp_millis());
    }
    for f in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(d) = NaiveDateTime::parse_from_str(t, f) {
            return Ok(d.and_utc().timestamp_millis());
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return Ok(d
            .and_hms_opt(0, 0, 0)
            .expect("midnight exists")
            .and_utc()
            .timestamp_millis());
    }
    Err(invalid(
        field,
        format!("{text:?} is not a time (RFC 3339 such as 2026-11-28T10:00:00Z, or 2026-11-28, or 2026-11-28 10:00:00)"),
    ))
}

/// A SQL timestamp literal for epoch milliseconds (UTC).
pub fn timestamp_literal(ms: i64) -> String {
    let t = DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default();
    format!("TIMESTAMP '{}'", t.format("%Y-%m-%d %H:%M:%S%.3f"))
}

fn ident(name: &str) -> String {
    crate::model::quoted(name).to_string()
}

/// Compiles `q` over `model`; errors name the request's field.
pub fn compile(model: &std::sync::Arc<Model>, q: &SemanticQuery) -> Result<Compiled> {
    if q.measures.len() > MAX_LIST || q.dimensions.len() > MAX_LIST || q.filters.len() > MAX_LIST {
        return Err(invalid(
            "query",
            format!("at most {MAX_LIST} measures, dimensions and filters"),
        ));
    }
    if q.measures.is_empty() && q.dimensions.is_empty() && q.grain.is_none() {
        return Err(invalid(
            "measures",
            format!(
                "ask for at least one measure or dimension (measures: {})",
                model.measure_names().join(", ")
            ),
        ));
    }
    let time = &model.spec.time_dimension;
    let mut columns = Vec::new();
    let mut seen = HashSet::new();
    if let Some(g) = q.grain {
        columns.push(format!(
            "date_trunc('{}', {}) AS {}",
            g.unit(),
            ident(time),
            ident(time)
        ));
        seen.insert(time.as_str());
    }
    for (i, d) in q.dimensions.iter().enumerate() {
        if !model.dimensions.contains_key(d) {
            return Err(invalid(
                &format!("dimensions[{i}]"),
                format!(
                    "{d:?} is not a dimension of model {:?} (dimensions: {})",
                    model.spec.model,
                    model.dimension_names().join(", ")
                ),
            ));
        }
        if !seen.insert(d.as_str()) {
            return Err(invalid(
                &format!("dimensions[{i}]"),
                format!("{d:?} is asked for twice (with a grain, the time dimension comes first by itself)"),
            ));
        }
        columns.push(ident(d));
    }
    let groups = columns.len();
    let mut measures = HashSet::new();
    for (i, m) in q.measures.iter().enumerate() {
        if !model.measures.contains_key(m) {
            return Err(invalid(
                &format!("measures[{i}]"),
                format!(
                    "{m:?} is not a measure of model {:?} (measures: {})",
                    model.spec.model,
                    model.measure_names().join(", ")
                ),
            ));
        }
        if !measures.insert(m.as_str()) {
            return Err(invalid(
                &format!("measures[{i}]"),
                format!("{m:?} is asked for twice"),
            ));
        }
        columns.push(format!("MEASURE({}) AS {}", ident(m), ident(m)));
    }
    let from_ms = q
        .from
        .as_deref()
        .map(|t| parse_time("from", t))
        .transpose()?;
    let to_ms = q.to.as_deref().map(|t| parse_time("to", t)).transpose()?;
    if let (Some(f), Some(t)) = (from_ms, to_ms) {
        if f >= t {
            return Err(invalid(
                "to",
                "`to` must be after `from` (the range is [from, to))",
            ));
        }
    }
    let mut conditions = Vec::new();
    if let Some(f) = from_ms {
        conditions.push(format!("{} >= {}", ident(time), timestamp_literal(f)));
    }
    if let Some(t) = to_ms {
        conditions.push(format!("{} < {}", ident(time), timestamp_literal(t)));
    }
    for (i, f) in q.filters.iter().enumerate() {
        let field = format!("filters[{i}]");
        let expr = parse_expr(&field, f)?;
        // Checked alone first, so an unknown name is blamed on its filter.
        let probe = format!(
            "SELECT 1 FROM {SCHEMA}.{} WHERE {expr}",
            ident(&model.spec.model)
        );
        to_table_sql(model, &probe).map_err(|e| invalid(&field, e.to_string()))?;
        conditions.push(format!("({expr})"));
    }
    // Dimensions alone: their distinct combinations.
    let distinct = if q.measures.is_empty() {
        "DISTINCT "
    } else {
        ""
    };
    let mut sql = format!(
        "SELECT {distinct}{} FROM {SCHEMA}.{}",
        columns.join(", "),
        ident(&model.spec.model)
    );
    if !conditions.is_empty() {
        sql.push_str(&format!(" WHERE {}", conditions.join(" AND ")));
    }
    if groups > 0 {
        let ordinals: Vec<String> = (1..=groups).map(|i| i.to_string()).collect();
        if !q.measures.is_empty() {
            sql.push_str(&format!(" GROUP BY {}", ordinals.join(", ")));
        }
        sql.push_str(&format!(" ORDER BY {}", ordinals.join(", ")));
    }
    if let Some(n) = q.limit {
        sql.push_str(&format!(" LIMIT {n}"));
    }
    let table_sql = to_table_sql(model, &sql).map_err(|e| invalid("query", e.to_string()))?;
    Ok(Compiled {
        semantic_sql: sql,
        sql: table_sql,
        from_ms,
        to_ms,
    })
}

/// SQL over `semantic.<model>` rewritten over the model's table.
fn to_table_sql(
    model: &std::sync::Arc<Model>,
    sql: &str,
) -> Result<String, basalt_query::QueryError> {
    let mut statements = Parser::parse_sql(&GenericDialect {}, sql).map_err(|e| {
        basalt_query::QueryError::invalid(basalt_query::ErrorKind::Syntax, e.to_string())
    })?;
    let [statement] = statements.as_mut_slice() else {
        return Err(basalt_query::QueryError::invalid(
            basalt_query::ErrorKind::Syntax,
            "expected one statement",
        ));
    };
    let name = model.spec.model.clone();
    rewrite_statement(statement, &|n| (n == name).then(|| model.clone()))?;
    Ok(statement.to_string())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::model::BodyFormat;

    fn model() -> Arc<Model> {
        let yaml = r#"
model: events
table: events
time_dimension: ts
dimensions: [country, device, {name: app_major, expr: "split_part(app_version, '.', 1)"}]
measures:
  - {name: revenue, agg: sum, expr: revenue, filter: "event_type = 'purchase'"}
  - {name: purchases, agg: count, filter: "event_type = 'purchase'"}
  - {name: sessions, agg: count_distinct_approx, expr: session_id}
  - {name: conversion, expr: "purchases / nullif(sessions, 0)"}
"#;
        Arc::new(Model::parse(yaml.as_bytes(), BodyFormat::Yaml).unwrap())
    }

    fn q(v: serde_json::Value) -> SemanticQuery {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_request_compiles_to_sql_over_the_table() {
        let c = compile(
            &model(),
            &q(serde_json::json!({"model": "events", "measures": ["revenue", "conversion"],
                "dimensions": ["country"], "grain": "day", "from": "2026-11-01", "to": "2026-11-03T00:00:00Z",
                "filters": ["device = 'ios'"]})),
        )
        .unwrap();
        assert_eq!(c.from_ms, Some(1_793_491_200_000));
        assert_eq!(c.to_ms, Some(1_793_664_000_000));
        assert_eq!(
            c.semantic_sql,
            "SELECT date_trunc('day', \"ts\") AS \"ts\", \"country\", MEASURE(\"revenue\") AS \"revenue\", MEASURE(\"conversion\") AS \"conversion\" \
             FROM semantic.\"events\" WHERE \"ts\" >= TIMESTAMP '2026-11-01 00:00:00.000' AND \"ts\" < TIMESTAMP '2026-11-03 00:00:00.000' \
             AND (device = 'ios') GROUP BY 1, 2 ORDER BY 1, 2"
        );
        assert!(c.sql.starts_with("SELECT date_trunc('day', \"ts\") AS \"ts\", \"country\" AS \"country\", (sum(revenue) FILTER (WHERE event_type = 'purchase')) AS \"revenue\""), "{}", c.sql);
        assert!(c.sql.contains("FROM \"events\" WHERE"), "{}", c.sql);
    }

    #[test]
    fn errors_name_the_request_field() {
        let m = model();
        let err = |v| compile(&m, &q(v)).unwrap_err().to_string();
        assert!(
            err(serde_json::json!({"model": "events", "measures": ["revenue", "profit"]}))
                .starts_with("measures[1]: \"profit\"")
        );
        assert!(err(
            serde_json::json!({"model": "events", "measures": ["revenue"], "dimensions": ["city"]})
        )
        .starts_with("dimensions[0]: \"city\""));
        let e = err(
            serde_json::json!({"model": "events", "measures": ["revenue"], "filters": ["device = 'ios'", "city = 'x'"]}),
        );
        assert!(
            e.starts_with("filters[1]:") && e.contains("\"city\""),
            "{e}"
        );
        let e = err(
            serde_json::json!({"model": "events", "measures": ["revenue"], "filters": ["1=1) OR (2=2"]}),
        );
        assert!(e.starts_with("filters[0]:"), "{e}");
        assert!(err(
            serde_json::json!({"model": "events", "measures": ["revenue"], "from": "yesterday"})
        )
        .starts_with("from:"));
        assert!(err(serde_json::json!({"model": "events", "measures": ["revenue"], "from": "2026-11-02", "to": "2026-11-01"})).starts_with("to:"));
        assert!(err(serde_json::json!({"model": "events"})).starts_with("measures:"));
        assert!(err(serde_json::json!({"model": "events", "measures": ["revenue"], "grain": "day", "dimensions": ["ts"]})).starts_with("dimensions[0]:"));
        assert!(err(serde_json::json!({"model": "events", "measures": ["revenue"], "filters": ["MEASURE(revenue) > 1"]})).starts_with("filters[0]:"));
    }
}
