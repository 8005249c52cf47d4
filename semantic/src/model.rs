//! Metric models. In: a model as posted (JSON or YAML), in the style of Cube and MetricFlow:
//! a table, its time dimension, dimensions (columns or expressions) and measures
//! (aggregations with optional row filters, or derived measures computed from other
//! measures). Out: a checked [`Model`] whose dimensions and measures are parsed SQL
//! expressions over the table, each measure one aggregate expression ready to be placed in a
//! query's SELECT list.
//!
//! Checks here are the ones that need no table: names, aggregations, expressions that parse
//! as exactly one SQL expression without subqueries, derived measures that name measures of
//! the model and do not form a cycle. Errors name the field (`measures[2].agg`). The
//! table's columns and types are checked by planning (see [`crate::catalog`]).

use std::collections::{BTreeMap, HashSet};
use std::ops::ControlFlow;
use std::time::Duration;

use datafusion::sql::sqlparser::ast::{visit_expressions, visit_expressions_mut, Expr, Ident};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::Token;
use serde::{Deserialize, Serialize};

use crate::error::{invalid, Result};

/// Longest expression text a model or request may hold.
pub const MAX_EXPR_CHARS: usize = 4_096;
/// Most dimensions, and most measures, in one model.
pub const MAX_ITEMS: usize = 256;
/// Longest name (model, dimension, measure).
pub const MAX_NAME_CHARS: usize = 64;

/// A model as posted and as stored in the metastore.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// The model's name: queried as `semantic.<model>` and by `/semantic/query`.
    pub model: String,
    /// The Basalt table it reads.
    pub table: String,
    /// The table's time column: the dimension `grain` buckets and `from`/`to` bound.
    pub time_dimension: String,
    /// How far behind now the newest event may be before answers carry a warning
    /// (`10s`, `5m`); none: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freshness: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default)]
    pub dimensions: Vec<DimensionSpec>,
    pub measures: Vec<MeasureSpec>,
}

/// A dimension: a column of the table by name, or a named expression over its columns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DimensionSpec {
    Column(String),
    Expr(DimensionExpr),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DimensionExpr {
    pub name: String,
    pub expr: String,
}

impl DimensionSpec {
    pub fn name(&self) -> &str {
        match self {
            DimensionSpec::Column(c) => c,
            DimensionSpec::Expr(e) => &e.name,
        }
    }
}

/// How a measure aggregates its expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Agg {
    Sum,
    /// Rows (or non-null values of `expr`).
    Count,
    /// Exact distinct count.
    CountDistinct,
    /// HyperLogLog distinct count (sketches merge across segments and tiers).
    CountDistinctApprox,
    Avg,
    Min,
    Max,
    /// Approximate percentile `p` (t-digest).
    Percentile,
}

/// A measure: `agg` over `expr` on the rows passing `filter`, or (no `agg`) a derived
/// measure whose `expr` combines other measures after aggregation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeasureSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agg: Option<Agg>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// The percentile of `agg: percentile`, in (0, 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A dimension of a checked model.
#[derive(Debug, Clone)]
pub enum Dimension {
    /// A column of the table (the time dimension is one).
    Column,
    /// An expression over the table's columns.
    Expr(Box<Expr>),
}

/// A measure of a checked model: one aggregate expression over the table (derived
/// measures have their inputs' aggregates inlined).
#[derive(Debug, Clone)]
pub struct Measure {
    pub sql: Expr,
}

/// A checked model.
#[derive(Debug, Clone)]
pub struct Model {
    pub spec: ModelSpec,
    pub freshness: Option<Duration>,
    /// Every dimension by name, the time dimension included.
    pub dimensions: BTreeMap<String, Dimension>,
    pub measures: BTreeMap<String, Measure>,
}

/// The body's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    Json,
    Yaml,
}

impl Model {
    /// Parses and checks a posted model.
    pub fn parse(body: &[u8], format: BodyFormat) -> Result<Model> {
        let value: serde_json::Value = match format {
            BodyFormat::Json => serde_json::from_slice(body)
                .map_err(|e| invalid("model", format!("not valid JSON: {e}")))?,
            BodyFormat::Yaml => serde_norway::from_slice(body)
                .map_err(|e| invalid("model", format!("not valid YAML: {e}")))?,
        };
        Model::from_value(value)
    }

    /// Checks a model given as a JSON value; errors name the field.
    pub fn from_value(value: serde_json::Value) -> Result<Model> {
        let serde_json::Value::Object(mut obj) = value else {
            return Err(invalid(
                "model",
                "expected an object (model, table, time_dimension, dimensions, measures)",
            ));
        };
        // Dimensions and measures one by one, so an error names its element.
        let take_list = |obj: &mut serde_json::Map<String, serde_json::Value>, key: &str| match obj
            .remove(key)
        {
            None | Some(serde_json::Value::Null) => Ok(Vec::new()),
            Some(serde_json::Value::Array(a)) => Ok(a),
            Some(_) => Err(invalid(key, "expected a list")),
        };
        let dims = take_list(&mut obj, "dimensions")?;
        let measures = take_list(&mut obj, "measures")?;
        obj.insert("measures".into(), serde_json::Value::Array(Vec::new()));
        let mut spec: ModelSpec = serde_json::from_value(serde_json::Value::Object(obj))
            .map_err(|e| invalid("model", e.to_string()))?;
        for (i, d) in dims.into_iter().enumerate() {
            let field = format!("dimensions[{i}]");
            let dim = match d {
                serde_json::Value::String(s) => DimensionSpec::Column(s),
                v @ serde_json::Value::Object(_) => DimensionSpec::Expr(
                    serde_json::from_value(v).map_err(|e| invalid(&field, e.to_string()))?,
                ),
                _ => return Err(invalid(&field, "expected a column name or {name, expr}")),
            };
            spec.dimensions.push(dim);
        }
        for (i, m) in measures.into_iter().enumerate() {
            let field = format!("measures[{i}]");
            let m: MeasureSpec =
                serde_json::from_value(m).map_err(|e| invalid(&field, e.to_string()))?;
            spec.measures.push(m);
        }
        Model::check(spec)
    }

    /// Checks a spec (also one read back from the metastore).
    pub fn check(spec: ModelSpec) -> Result<Model> {
        check_name("model", &spec.model)?;
        check_name("table", &spec.table)?;
        check_name("time_dimension", &spec.time_dimension)?;
        let freshness = match &spec.freshness {
            None => None,
            Some(f) => Some(
                basalt_ingest::spec::parse_duration(f)
                    .map_err(|e| invalid("freshness", e.to_string()))?,
            ),
        };
        if spec.dimensions.len() > MAX_ITEMS || spec.measures.len() > MAX_ITEMS {
            return Err(invalid(
                "model",
                format!("at most {MAX_ITEMS} dimensions and {MAX_ITEMS} measures"),
            ));
        }
        if spec.measures.is_empty() {
            return Err(invalid("measures", "a model needs at least one measure"));
        }
        let mut dimensions = BTreeMap::new();
        dimensions.insert(spec.time_dimension.clone(), Dimension::Column);
        for (i, d) in spec.dimensions.iter().enumerate() {
            let field = format!("dimensions[{i}]");
            let (name, dim) = match d {
                DimensionSpec::Column(c) => (c.as_str(), Dimension::Column),
                DimensionSpec::Expr(e) => (
                    e.name.as_str(),
                    Dimension::Expr(Box::new(parse_expr(&format!("{field}.expr"), &e.expr)?)),
                ),
            };
            check_name(&field, name)?;
            if dimensions.insert(name.to_string(), dim).is_some() {
                return Err(invalid(
                    &field,
                    format!("dimension {name:?} is defined twice (the time dimension is one)"),
                ));
            }
        }
        let mut names = HashSet::new();
        for (i, m) in spec.measures.iter().enumerate() {
            let field = format!("measures[{i}]");
            check_name(&format!("{field}.name"), &m.name)?;
            if dimensions.contains_key(&m.name) {
                return Err(invalid(
                    &format!("{field}.name"),
                    format!("{:?} is also a dimension", m.name),
                ));
            }
            if !names.insert(m.name.as_str()) {
                return Err(invalid(
                    &format!("{field}.name"),
                    format!("measure {:?} is defined twice", m.name),
                ));
            }
        }
        let mut measures = BTreeMap::new();
        let by_name: BTreeMap<&str, (usize, &MeasureSpec)> = spec
            .measures
            .iter()
            .enumerate()
            .map(|(i, m)| (m.name.as_str(), (i, m)))
            .collect();
        for m in &spec.measures {
            resolve(&by_name, &m.name, &mut measures, &mut Vec::new())?;
        }
        Ok(Model {
            spec,
            freshness,
            dimensions,
            measures,
        })
    }

    /// The model's dimension names, the time dimension first.
    pub fn dimension_names(&self) -> Vec<&str> {
        let mut v = vec![self.spec.time_dimension.as_str()];
        v.extend(self.spec.dimensions.iter().map(|d| d.name()));
        v
    }

    /// The model's measure names, in the order defined.
    pub fn measure_names(&self) -> Vec<&str> {
        self.spec.measures.iter().map(|m| m.name.as_str()).collect()
    }
}

/// Names are SQL identifiers: `[A-Za-z_][A-Za-z0-9_]*`, at most 64 characters.
fn check_name(field: &str, name: &str) -> Result<()> {
    let mut chars = name.chars();
    let ok = name.len() <= MAX_NAME_CHARS
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{name:?} is not a name ([A-Za-z_][A-Za-z0-9_]*, at most {MAX_NAME_CHARS} characters)"),
        ))
    }
}

/// Parses exactly one SQL expression without subqueries (`field` names it in errors).
pub fn parse_expr(field: &str, text: &str) -> Result<Expr> {
    if text.len() > MAX_EXPR_CHARS {
        return Err(invalid(
            field,
            format!("longer than {MAX_EXPR_CHARS} characters"),
        ));
    }
    let dialect = GenericDialect {};
    let mut parser = Parser::new(&dialect)
        .try_with_sql(text)
        .map_err(|e| invalid(field, e.to_string()))?;
    let expr = parser
        .parse_expr()
        .map_err(|e| invalid(field, e.to_string()))?;
    let next = parser.peek_token();
    if next.token != Token::EOF {
        return Err(invalid(
            field,
            format!(
                "expected one expression, found more after it: {}",
                next.token
            ),
        ));
    }
    let nested = visit_expressions(&expr, |e| match e {
        Expr::Subquery(_) | Expr::InSubquery { .. } | Expr::Exists { .. } => ControlFlow::Break(()),
        _ => ControlFlow::Continue(()),
    });
    if nested.is_break() {
        return Err(invalid(field, "subqueries are not allowed here"));
    }
    Ok(expr)
}

/// Parses an expression composed from checked ones (no length limit: checked parts).
fn parse_composed(field: &str, text: &str) -> Result<Expr> {
    Parser::new(&GenericDialect {})
        .try_with_sql(text)
        .and_then(|mut p| p.parse_expr())
        .map_err(|e| invalid(field, format!("the measure does not compose: {e}")))
}

/// Builds measure `name` (and first the measures a derived one names) into `out`.
fn resolve(
    specs: &BTreeMap<&str, (usize, &MeasureSpec)>,
    name: &str,
    out: &mut BTreeMap<String, Measure>,
    stack: &mut Vec<String>,
) -> Result<()> {
    if out.contains_key(name) {
        return Ok(());
    }
    let (i, m) = specs[name];
    let field = format!("measures[{i}]");
    if stack.iter().any(|s| s == name) {
        stack.push(name.to_string());
        return Err(invalid(
            &format!("{field}.expr"),
            format!("derived measures form a cycle: {}", stack.join(" -> ")),
        ));
    }
    let measure = match m.agg {
        None => {
            let Some(text) = &m.expr else {
                return Err(invalid(
                    &field,
                    "a measure needs `agg` (sum, count, count_distinct, count_distinct_approx, avg, min, max, percentile), or `expr` combining other measures",
                ));
            };
            if m.filter.is_some() || m.p.is_some() {
                return Err(invalid(
                    &field,
                    "a derived measure (no `agg`) takes no `filter` or `p`: filter its input measures",
                ));
            }
            let mut expr = parse_expr(&format!("{field}.expr"), text)?;
            // Every identifier names a measure; collect them first, then inline each.
            let mut inputs = Vec::new();
            let _ = visit_expressions(&expr, |e| {
                match e {
                    Expr::Identifier(id) => inputs.push(Ok(id.value.clone())),
                    Expr::CompoundIdentifier(parts) => inputs.push(Err(parts
                        .iter()
                        .map(|p| p.value.as_str())
                        .collect::<Vec<_>>()
                        .join("."))),
                    Expr::Function(f) if f.over.is_some() || f.filter.is_some() => {
                        inputs.push(Err(f.to_string()))
                    }
                    _ => {}
                }
                ControlFlow::<()>::Continue(())
            });
            for input in inputs {
                let input = input.map_err(|what| {
                    invalid(
                        &format!("{field}.expr"),
                        format!("{what:?} is not a measure of this model; a derived measure combines measures by name"),
                    )
                })?;
                if !specs.contains_key(input.as_str()) {
                    return Err(invalid(
                        &format!("{field}.expr"),
                        format!(
                            "{input:?} is not a measure of this model (measures: {})",
                            specs.keys().copied().collect::<Vec<_>>().join(", ")
                        ),
                    ));
                }
                stack.push(name.to_string());
                resolve(specs, &input, out, stack)?;
                stack.pop();
            }
            // Inputs are aggregated at the query's grain, then combined in DOUBLE precision
            // (a ratio of two counts is not an integer division).
            let flow = visit_expressions_mut(&mut expr, |e| {
                if let Expr::Identifier(id) = e {
                    let input = &out[id.value.as_str()].sql;
                    match parse_composed(&field, &format!("CAST(({input}) AS DOUBLE)")) {
                        Ok(x) => *e = x,
                        Err(err) => return ControlFlow::Break(err),
                    }
                }
                ControlFlow::Continue(())
            });
            if let ControlFlow::Break(e) = flow {
                return Err(e);
            }
            Measure { sql: expr }
        }
        Some(agg) => {
            let arg = match &m.expr {
                Some(t) => Some(parse_expr(&format!("{field}.expr"), t)?),
                None => None,
            };
            let filter = match &m.filter {
                Some(t) => Some(parse_expr(&format!("{field}.filter"), t)?),
                None => None,
            };
            let needs_arg = |arg: Option<Expr>| {
                arg.ok_or_else(|| {
                    invalid(
                        &format!("{field}.expr"),
                        format!("`agg: {}` needs `expr`", agg_name(agg)),
                    )
                })
            };
            if agg != Agg::Percentile && m.p.is_some() {
                return Err(invalid(
                    &format!("{field}.p"),
                    "`p` is for `agg: percentile` only",
                ));
            }
            let text = match agg {
                Agg::Count => match arg {
                    None => "count(*)".to_string(),
                    Some(a) => format!("count({a})"),
                },
                Agg::Sum => format!("sum({})", needs_arg(arg)?),
                Agg::Avg => format!("avg({})", needs_arg(arg)?),
                Agg::Min => format!("min({})", needs_arg(arg)?),
                Agg::Max => format!("max({})", needs_arg(arg)?),
                Agg::CountDistinct => format!("count(DISTINCT {})", needs_arg(arg)?),
                Agg::CountDistinctApprox => format!("approx_distinct({})", needs_arg(arg)?),
                Agg::Percentile => {
                    let p = m.p.filter(|p| *p > 0.0 && *p < 1.0).ok_or_else(|| {
                        invalid(
                            &format!("{field}.p"),
                            "`agg: percentile` needs `p` between 0 and 1 (0.95 for the 95th percentile)",
                        )
                    })?;
                    format!("approx_percentile_cont({}, {p})", needs_arg(arg)?)
                }
            };
            let text = match filter {
                Some(f) => format!("{text} FILTER (WHERE {f})"),
                None => text,
            };
            Measure {
                sql: parse_composed(&field, &text)?,
            }
        }
    };
    out.insert(name.to_string(), measure);
    Ok(())
}

fn agg_name(a: Agg) -> String {
    serde_json::to_value(a)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// A quoted identifier (names are checked, so quoting only keeps their case).
pub fn quoted(name: &str) -> Ident {
    Ident::with_quote('"', name)
}

impl From<&Model> for serde_json::Value {
    fn from(m: &Model) -> Self {
        serde_json::to_value(&m.spec).unwrap_or(serde_json::Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENTS_YAML: &str = r#"
model: events
table: events
time_dimension: ts
freshness: 10s
dimensions: [country, device, event_type, {name: app_major, expr: "split_part(app_version, '.', 1)"}]
measures:
  - {name: revenue, agg: sum, expr: revenue, filter: "event_type = 'purchase'"}
  - {name: purchases, agg: count, filter: "event_type = 'purchase'"}
  - {name: sessions, agg: count_distinct_approx, expr: session_id}
  - {name: users, agg: count_distinct_approx, expr: user_id}
  - {name: p95_latency, agg: percentile, expr: latency_ms, p: 0.95}
  - {name: conversion, expr: "purchases / nullif(sessions, 0)"}
"#;

    fn err(yaml: &str) -> String {
        Model::parse(yaml.as_bytes(), BodyFormat::Yaml)
            .expect_err("invalid")
            .to_string()
    }

    #[test]
    fn the_issue_model_parses_from_yaml_and_json() {
        let m = Model::parse(EVENTS_YAML.as_bytes(), BodyFormat::Yaml).unwrap();
        assert_eq!(m.freshness, Some(Duration::from_secs(10)));
        assert_eq!(
            m.dimension_names(),
            ["ts", "country", "device", "event_type", "app_major"]
        );
        assert_eq!(
            m.measures["revenue"].sql.to_string(),
            "sum(revenue) FILTER (WHERE event_type = 'purchase')"
        );
        assert_eq!(
            m.measures["p95_latency"].sql.to_string(),
            "approx_percentile_cont(latency_ms, 0.95)"
        );
        assert_eq!(
            m.measures["conversion"].sql.to_string(),
            "CAST((count(*) FILTER (WHERE event_type = 'purchase')) AS DOUBLE) / nullif(CAST((approx_distinct(session_id)) AS DOUBLE), 0)"
        );
        // Stored as JSON, read back the same.
        let json = serde_json::to_vec(&m.spec).unwrap();
        let again = Model::parse(&json, BodyFormat::Json).unwrap();
        assert_eq!(again.spec, m.spec);
    }

    #[test]
    fn errors_name_the_field() {
        let base = "model: m\ntable: t\ntime_dimension: ts\n";
        assert!(err("[1, 2]").starts_with("model:"));
        assert!(
            err("model: m\ntime_dimension: ts\nmeasures: [{name: n, agg: count}]")
                .contains("missing field `table`")
        );
        assert!(err(&format!(
            "{base}measures: [{{name: n, agg: count}}]\nmesures: 1"
        ))
        .contains("unknown field `mesures`"));
        let e = err(&format!(
            "{base}measures: [{{name: a, agg: count}}, {{name: b, agg: median, expr: x}}]"
        ));
        assert!(e.starts_with("measures[1]:") && e.contains("median"), "{e}");
        let e = err(&format!(
            "{base}measures: [{{name: a, agg: count, fitler: x}}]"
        ));
        assert!(e.starts_with("measures[0]:") && e.contains("fitler"), "{e}");
        let e = err(&format!("{base}measures: [{{name: a, agg: sum}}]"));
        assert!(e.starts_with("measures[0].expr:"), "{e}");
        let e = err(&format!(
            "{base}measures: [{{name: a, agg: percentile, expr: x, p: 95}}]"
        ));
        assert!(e.starts_with("measures[0].p:"), "{e}");
        let e = err(&format!(
            "{base}measures: [{{name: a, agg: count, filter: \"x = \"}}]"
        ));
        assert!(e.starts_with("measures[0].filter:"), "{e}");
        let e = err(&format!(
            "{base}measures: [{{name: a, agg: count}}, {{name: b, expr: \"a / c\"}}]"
        ));
        assert!(
            e.starts_with("measures[1].expr:") && e.contains("\"c\""),
            "{e}"
        );
        let e = err(&format!(
            "{base}measures: [{{name: a, expr: \"b + 1\"}}, {{name: b, expr: \"a * 2\"}}]"
        ));
        assert!(e.contains("cycle") && e.contains("a -> b -> a"), "{e}");
        let e = err(&format!(
            "{base}dimensions: [c, {{name: d}}]\nmeasures: [{{name: a, agg: count}}]"
        ));
        assert!(e.starts_with("dimensions[1]:"), "{e}");
        let e = err(&format!(
            "{base}dimensions: [ts]\nmeasures: [{{name: a, agg: count}}]"
        ));
        assert!(
            e.starts_with("dimensions[0]:") && e.contains("twice"),
            "{e}"
        );
        let e = err(&format!(
            "{base}dimensions: [c]\nmeasures: [{{name: c, agg: count}}]"
        ));
        assert!(e.starts_with("measures[0].name:"), "{e}");
        let e = err(&format!(
            "{base}dimensions: [\"a b\"]\nmeasures: [{{name: n, agg: count}}]"
        ));
        assert!(e.starts_with("dimensions[0]:"), "{e}");
        let e = err(&format!(
            "{base}freshness: soon\nmeasures: [{{name: n, agg: count}}]"
        ));
        assert!(e.starts_with("freshness:"), "{e}");
        let e = err(&format!("{base}measures: []"));
        assert!(e.starts_with("measures:"), "{e}");
    }

    #[test]
    fn expressions_are_one_expression_without_subqueries() {
        assert!(parse_expr("f", "a + 1").is_ok());
        for bad in [
            "a) UNION SELECT 1 --",
            "a; DROP TABLE t",
            "(SELECT max(x) FROM other)",
            "a IN (SELECT b FROM other)",
            "EXISTS (SELECT 1)",
            "",
        ] {
            let e = parse_expr("f", bad).expect_err(bad).to_string();
            assert!(e.starts_with("f:"), "{bad}: {e}");
        }
        assert!(parse_expr("f", &"a+".repeat(3000)).is_err());
    }
}
