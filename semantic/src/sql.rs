//! SQL over the semantic layer, Cube's SQL API pattern: `SELECT country, MEASURE(revenue)
//! FROM semantic.events WHERE ts > now() - INTERVAL '1' DAY GROUP BY 1`. In: a parsed
//! statement. Out: the same statement over the model's table — `MEASURE(name)` replaced by
//! the measure's aggregate expression, expression dimensions by their expression — or an
//! error naming the unknown measure or dimension.
//!
//! A query block reads `semantic.<model>` alone (no join; it may itself sit in a CTE, a
//! subquery or a join of an outer query). Inside it, a bare name is a dimension of the model
//! (or, in GROUP BY, HAVING and ORDER BY, an output column's alias); measures are written
//! `MEASURE(name)` and may not appear in WHERE. `MEASURE(x)` without an alias is named `x`,
//! as is an expression dimension selected by its name. Subqueries inside such a block are
//! refused: the names in them would be resolved against the model.

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::sync::Arc;

use basalt_query::rewrite::StatementRewrite;
use basalt_query::{ErrorKind, QueryError};
use datafusion::sql::sqlparser::ast::{
    visit_relations, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr, Ident,
    ObjectName, ObjectNamePart, OrderByKind, Query, Select, SelectItem, SetExpr, Statement,
    TableFactor, VisitMut, VisitorMut,
};

use crate::catalog::SemanticRegistry;
use crate::model::{quoted, Dimension, Model};

/// The schema semantic models are queried in.
pub const SCHEMA: &str = "semantic";

/// The engine's rewrite of queries over `semantic.<model>` (see the module docs).
#[derive(Debug)]
pub struct SemanticRewrite {
    pub registry: Arc<SemanticRegistry>,
}

impl StatementRewrite for SemanticRewrite {
    fn rewrite(&self, statement: &mut Statement) -> Result<(), QueryError> {
        rewrite_statement(statement, &|name| self.registry.get(name))
    }
}

/// `semantic.<model>`: the model's name, if `name` is one.
fn semantic_name(name: &ObjectName) -> Option<&str> {
    match name.0.as_slice() {
        [ObjectNamePart::Identifier(s), ObjectNamePart::Identifier(m)]
            if s.value.eq_ignore_ascii_case(SCHEMA) =>
        {
            Some(m.value.as_str())
        }
        _ => None,
    }
}

/// Rewrites every query block over `semantic.<model>` in `statement`; `lookup` finds models.
pub fn rewrite_statement(
    statement: &mut Statement,
    lookup: &dyn Fn(&str) -> Option<Arc<Model>>,
) -> Result<(), QueryError> {
    // Most statements name no semantic model: one walk over the relations says so.
    let any = visit_relations(&*statement, |r| match semantic_name(r) {
        Some(_) => ControlFlow::Break(()),
        None => ControlFlow::Continue(()),
    });
    if any.is_continue() {
        return Ok(());
    }
    if let ControlFlow::Break(e) = statement.visit(&mut Blocks { lookup }) {
        return Err(e);
    }
    // Anything left is a semantic model in a place a block cannot read it from.
    let mut left = None;
    let _ = visit_relations(&*statement, |r| {
        left = semantic_name(r).map(str::to_string);
        match left {
            Some(_) => ControlFlow::Break(()),
            None => ControlFlow::Continue(()),
        }
    });
    match left {
        None => Ok(()),
        Some(m) if lookup(&m).is_none() => Err(unknown_model(&m)),
        Some(m) => Err(QueryError::invalid(
            ErrorKind::NotSupported,
            format!("semantic.{m} is read alone by its query block: no joins with it (join its results in an outer query instead)"),
        )),
    }
}

fn unknown_model(name: &str) -> QueryError {
    QueryError::invalid(
        ErrorKind::UndefinedTable,
        format!("semantic model {name:?} does not exist (GET /semantic/models lists them)"),
    )
}

/// Finds query blocks over a semantic model.
struct Blocks<'a> {
    lookup: &'a dyn Fn(&str) -> Option<Arc<Model>>,
}

impl VisitorMut for Blocks<'_> {
    type Break = QueryError;

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<QueryError> {
        let Query { body, order_by, .. } = query;
        let SetExpr::Select(select) = body.as_mut() else {
            return ControlFlow::Continue(());
        };
        let Some((model, qualifier)) = (match reads_model(select) {
            Some((name, q)) => match (self.lookup)(&name) {
                Some(m) => Some((m, q)),
                None => return ControlFlow::Break(unknown_model(&name)),
            },
            None => None,
        }) else {
            return ControlFlow::Continue(());
        };
        let order: Vec<&mut Expr> = match order_by.as_mut().map(|o| &mut o.kind) {
            Some(OrderByKind::Expressions(list)) => list.iter_mut().map(|o| &mut o.expr).collect(),
            _ => Vec::new(),
        };
        match rewrite_block(&model, &qualifier, select, order) {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => ControlFlow::Break(e),
        }
    }
}

/// The model a SELECT reads alone (its name and the name its columns may be qualified
/// with), replacing the relation by the model's table.
fn reads_model(select: &mut Select) -> Option<(String, String)> {
    let [from] = select.from.as_mut_slice() else {
        return None;
    };
    if !from.joins.is_empty() {
        return None;
    }
    let TableFactor::Table {
        name, alias, args, ..
    } = &mut from.relation
    else {
        return None;
    };
    if args.is_some() {
        return None;
    }
    let model = semantic_name(name)?.to_string();
    let qualifier = alias
        .as_ref()
        .map_or_else(|| model.clone(), |a| a.name.value.clone());
    Some((model, qualifier))
}

/// Where an expression sits: what a bare name may mean there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Clause {
    Select,
    Where,
    GroupBy,
    Having,
    OrderBy,
}

fn rewrite_block(
    model: &Model,
    qualifier: &str,
    select: &mut Select,
    order_by: Vec<&mut Expr>,
) -> Result<(), QueryError> {
    let TableFactor::Table { name, .. } = &mut select.from[0].relation else {
        unreachable!("reads_model checked the relation");
    };
    *name = ObjectName(vec![ObjectNamePart::Identifier(quoted(&model.spec.table))]);
    if select.prewhere.is_some() || select.qualify.is_some() || !select.named_window.is_empty() {
        return Err(QueryError::invalid(
            ErrorKind::NotSupported,
            format!(
                "a query over semantic.{} takes SELECT, WHERE, GROUP BY, HAVING, ORDER BY and LIMIT",
                model.spec.model
            ),
        ));
    }
    // Output names first: MEASURE(x) and expression dimensions are named after themselves.
    let mut aliases = HashSet::new();
    for item in &mut select.projection {
        match item {
            SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => {
                return Err(QueryError::invalid(
                    ErrorKind::InvalidQuery,
                    format!(
                        "SELECT * over semantic.{m} is not defined: name dimensions and MEASURE(...)s (dimensions: {}; measures: {})",
                        model.dimension_names().join(", "),
                        model.measure_names().join(", "),
                        m = model.spec.model
                    ),
                ))
            }
            SelectItem::ExprWithAlias { alias, .. } => {
                aliases.insert(alias.value.clone());
            }
            SelectItem::UnnamedExpr(e) => {
                let name = measure_arg(e).or_else(|| dimension_ref(e, qualifier));
                if let Some(n) = name {
                    aliases.insert(n.clone());
                    *item = SelectItem::ExprWithAlias {
                        expr: e.clone(),
                        alias: quoted(&n),
                    };
                }
            }
        }
    }
    let mut r = Resolver {
        model,
        qualifier,
        aliases: &aliases,
        clause: Clause::Select,
        slots: Vec::new(),
    };
    for item in &mut select.projection {
        if let SelectItem::ExprWithAlias { expr, .. } | SelectItem::UnnamedExpr(expr) = item {
            r.run(Clause::Select, expr)?;
        }
    }
    if let Some(w) = &mut select.selection {
        r.run(Clause::Where, w)?;
    }
    if let GroupByExpr::Expressions(list, _) = &mut select.group_by {
        for e in list {
            r.run(Clause::GroupBy, e)?;
        }
    }
    if let Some(h) = &mut select.having {
        r.run(Clause::Having, h)?;
    }
    for e in order_by {
        r.run(Clause::OrderBy, e)?;
    }
    Ok(())
}

/// Whether a function name is `MEASURE`.
fn is_measure_call(name: &ObjectName) -> bool {
    matches!(name.0.as_slice(), [ObjectNamePart::Identifier(n)] if n.value.eq_ignore_ascii_case("measure"))
}

/// `MEASURE(name)`'s name.
fn measure_arg(e: &Expr) -> Option<String> {
    let Expr::Function(f) = e else { return None };
    if !is_measure_call(&f.name) {
        return None;
    }
    let FunctionArguments::List(list) = &f.args else {
        return None;
    };
    match list.args.as_slice() {
        [FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Identifier(id)))] => {
            Some(id.value.clone())
        }
        [FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::CompoundIdentifier(parts)))] => {
            parts.last().map(|p| p.value.clone())
        }
        _ => None,
    }
}

/// A bare (or qualified) name selected as is.
fn dimension_ref(e: &Expr, qualifier: &str) -> Option<String> {
    match e {
        Expr::Identifier(id) => Some(id.value.clone()),
        Expr::CompoundIdentifier(p) if p.len() == 2 && p[0].value == qualifier => {
            Some(p[1].value.clone())
        }
        _ => None,
    }
}

/// Marks a `MEASURE(...)` replaced before its arguments are visited; swapped for the
/// measure's expression after.
const SLOT: &str = "\u{0}measure:";

struct Resolver<'a> {
    model: &'a Model,
    qualifier: &'a str,
    aliases: &'a HashSet<String>,
    clause: Clause,
    slots: Vec<Expr>,
}

impl Resolver<'_> {
    fn run(&mut self, clause: Clause, e: &mut Expr) -> Result<(), QueryError> {
        self.clause = clause;
        match e.visit(self) {
            ControlFlow::Break(err) => Err(err),
            ControlFlow::Continue(()) => Ok(()),
        }
    }

    fn unknown(&self, name: &str) -> QueryError {
        QueryError::invalid(
            ErrorKind::UndefinedColumn,
            format!(
                "{name:?} is not a dimension of semantic model {:?} (dimensions: {}; measures are written MEASURE(name): {})",
                self.model.spec.model,
                self.model.dimension_names().join(", "),
                self.model.measure_names().join(", "),
            ),
        )
    }

    /// What a bare name means here, or `None` to leave it (an output alias).
    fn resolve(&self, name: &str) -> Result<Option<Expr>, QueryError> {
        if let Some(d) = self.model.dimensions.get(name) {
            return Ok(Some(match d {
                Dimension::Column => Expr::Identifier(quoted(name)),
                Dimension::Expr(e) => Expr::Nested(e.clone()),
            }));
        }
        let alias = self.aliases.contains(name);
        if let Some(m) = self.model.measures.get(name) {
            return match (self.clause, alias) {
                (Clause::OrderBy, true) => Ok(None),
                (Clause::Having, true) => Ok(Some(Expr::Nested(Box::new(m.sql.clone())))),
                _ => Err(QueryError::invalid(
                    ErrorKind::InvalidQuery,
                    format!(
                        "{name:?} is a measure of semantic model {:?}: write MEASURE({name})",
                        self.model.spec.model
                    ),
                )),
            };
        }
        match (self.clause, alias) {
            (Clause::GroupBy | Clause::Having | Clause::OrderBy, true) => Ok(None),
            _ => Err(self.unknown(name)),
        }
    }
}

impl VisitorMut for Resolver<'_> {
    type Break = QueryError;

    fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<QueryError> {
        let plain_measure = match &*expr {
            Expr::Subquery(_) | Expr::InSubquery { .. } | Expr::Exists { .. } => {
                return ControlFlow::Break(QueryError::invalid(
                    ErrorKind::NotSupported,
                    format!(
                        "subqueries inside a query over semantic.{} are not supported",
                        self.model.spec.model
                    ),
                ))
            }
            Expr::Function(f) if is_measure_call(&f.name) => f.over.is_none() && f.filter.is_none(),
            _ => return ControlFlow::Continue(()),
        };
        let Some(name) = measure_arg(expr).filter(|_| plain_measure) else {
            return ControlFlow::Break(QueryError::invalid(
                ErrorKind::InvalidQuery,
                "MEASURE() takes one measure name, e.g. MEASURE(revenue)",
            ));
        };
        let Some(m) = self.model.measures.get(&name) else {
            return ControlFlow::Break(QueryError::invalid(
                ErrorKind::UndefinedColumn,
                format!(
                    "{name:?} is not a measure of semantic model {:?} (measures: {})",
                    self.model.spec.model,
                    self.model.measure_names().join(", ")
                ),
            ));
        };
        if self.clause == Clause::Where {
            return ControlFlow::Break(QueryError::invalid(
                ErrorKind::InvalidQuery,
                format!("MEASURE({name}) cannot filter rows in WHERE; use HAVING"),
            ));
        }
        self.slots.push(Expr::Nested(Box::new(m.sql.clone())));
        *expr = Expr::Identifier(Ident::new(format!("{SLOT}{}", self.slots.len() - 1)));
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<QueryError> {
        let name = match expr {
            Expr::Identifier(id) => {
                if let Some(slot) = id.value.strip_prefix(SLOT) {
                    let i: usize = slot.parse().expect("a slot index this visitor wrote");
                    *expr = self.slots[i].clone();
                    return ControlFlow::Continue(());
                }
                id.value.clone()
            }
            Expr::CompoundIdentifier(parts) => {
                let qualified = match parts.as_slice() {
                    [q, n] if q.value == self.qualifier => Some(n.value.clone()),
                    [s, m, n]
                        if s.value.eq_ignore_ascii_case(SCHEMA)
                            && m.value == self.model.spec.model =>
                    {
                        Some(n.value.clone())
                    }
                    _ => None,
                };
                match qualified {
                    Some(n) => n,
                    None => {
                        let text = parts
                            .iter()
                            .map(|p| p.value.as_str())
                            .collect::<Vec<_>>()
                            .join(".");
                        return ControlFlow::Break(self.unknown(&text));
                    }
                }
            }
            _ => return ControlFlow::Continue(()),
        };
        match self.resolve(&name) {
            Ok(Some(e)) => *expr = e,
            Ok(None) => {}
            Err(e) => return ControlFlow::Break(e),
        }
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    use super::*;
    use crate::model::BodyFormat;

    fn model() -> Arc<Model> {
        let yaml = r#"
model: events
table: events_t
time_dimension: ts
dimensions: [country, {name: app_major, expr: "split_part(app_version, '.', 1)"}]
measures:
  - {name: revenue, agg: sum, expr: revenue, filter: "event_type = 'purchase'"}
  - {name: purchases, agg: count, filter: "event_type = 'purchase'"}
  - {name: sessions, agg: count_distinct_approx, expr: session_id}
  - {name: conversion, expr: "purchases / nullif(sessions, 0)"}
"#;
        Arc::new(Model::parse(yaml.as_bytes(), BodyFormat::Yaml).unwrap())
    }

    fn rewrite(sql: &str) -> Result<String, QueryError> {
        let models: BTreeMap<String, Arc<Model>> = [("events".to_string(), model())].into();
        let mut s = Parser::parse_sql(&GenericDialect {}, sql)
            .unwrap()
            .remove(0);
        rewrite_statement(&mut s, &|n| models.get(n).cloned())?;
        Ok(s.to_string())
    }

    #[test]
    fn measures_and_dimensions_become_the_tables_expressions() {
        assert_eq!(
            rewrite("SELECT country, MEASURE(revenue), MEASURE(conversion) AS c FROM semantic.events WHERE ts > now() - INTERVAL '1' DAY GROUP BY 1").unwrap(),
            "SELECT \"country\" AS \"country\", (sum(revenue) FILTER (WHERE event_type = 'purchase')) AS \"revenue\", \
             (CAST((count(*) FILTER (WHERE event_type = 'purchase')) AS DOUBLE) / nullif(CAST((approx_distinct(session_id)) AS DOUBLE), 0)) AS c \
             FROM \"events_t\" WHERE \"ts\" > now() - INTERVAL '1' DAY GROUP BY 1"
        );
        assert_eq!(
            rewrite("SELECT e.app_major, measure(purchases) FROM semantic.events AS e GROUP BY app_major HAVING MEASURE(purchases) > 1 ORDER BY purchases DESC").unwrap(),
            "SELECT (split_part(app_version, '.', 1)) AS \"app_major\", (count(*) FILTER (WHERE event_type = 'purchase')) AS \"purchases\" \
             FROM \"events_t\" AS e GROUP BY (split_part(app_version, '.', 1)) HAVING (count(*) FILTER (WHERE event_type = 'purchase')) > 1 ORDER BY purchases DESC"
        );
        // A semantic block inside an outer query, and the outer query untouched.
        let s = rewrite("WITH d AS (SELECT country, MEASURE(revenue) AS r FROM semantic.events GROUP BY 1) SELECT country, r FROM d JOIN other ON d.country = other.c").unwrap();
        assert!(
            s.contains("FROM \"events_t\"")
                && s.ends_with("SELECT country, r FROM d JOIN other ON d.country = other.c"),
            "{s}"
        );
        // Statements without semantic models are left as they are.
        assert_eq!(
            rewrite("SELECT revenue FROM events").unwrap(),
            "SELECT revenue FROM events"
        );
    }

    #[test]
    fn unknown_names_are_errors_naming_them() {
        let e = rewrite("SELECT MEASURE(profit) FROM semantic.events").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::UndefinedColumn);
        assert!(e.to_string().contains("\"profit\" is not a measure"), "{e}");
        let e =
            rewrite("SELECT city, MEASURE(revenue) FROM semantic.events GROUP BY 1").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::UndefinedColumn);
        assert!(e.to_string().contains("\"city\" is not a dimension"), "{e}");
        let e = rewrite("SELECT MEASURE(revenue) FROM semantic.nope").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::UndefinedTable);
        assert!(e.to_string().contains("\"nope\""), "{e}");
        let e = rewrite("SELECT revenue FROM semantic.events").unwrap_err();
        assert!(e.to_string().contains("write MEASURE(revenue)"), "{e}");
        let e =
            rewrite("SELECT country FROM semantic.events WHERE MEASURE(revenue) > 1").unwrap_err();
        assert!(e.to_string().contains("HAVING"), "{e}");
        let e = rewrite("SELECT * FROM semantic.events").unwrap_err();
        assert!(
            e.to_string().contains("dimensions: ts, country, app_major"),
            "{e}"
        );
        let e = rewrite("SELECT a.country FROM semantic.events JOIN b ON true").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotSupported);
        let e = rewrite("SELECT country FROM semantic.events WHERE country IN (SELECT c FROM t)")
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotSupported);
        let e = rewrite("SELECT MEASURE(revenue, 2) FROM semantic.events").unwrap_err();
        assert!(e.to_string().contains("one measure name"), "{e}");
    }
}
