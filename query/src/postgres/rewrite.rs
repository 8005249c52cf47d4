//! PostgreSQL syntax DataFusion does not plan, rewritten on the parsed statement. In: a
//! statement parsed with the PostgreSQL dialect. Out: the same statement in forms DataFusion
//! plans, with the same meaning:
//!
//! - `pg_catalog.f(...)` → `f(...)` (system functions are registered unqualified);
//! - `x::regclass` / `x::regtype` → OID lookups by name; `x::oid` → an unsigned 32-bit cast;
//!   `x::regproc`, `x::regnamespace` → OIDs; `x::name`, `x::"char"` → text; types spelled
//!   `pg_catalog.int4`, `int8`, `float8`, `timestamptz`, … → DataFusion's names for them;
//! - `a OPERATOR(pg_catalog.~) b` → `a ~ b`, and `expr COLLATE "C"` → `expr`;
//! - `x = ANY (ARRAY[a, b])` → `x IN (a, b)`, `x <> ALL (ARRAY[...])` → `x NOT IN (...)`,
//!   and `x <> ALL ($1)` over an array value → `NOT array_has($1, x)`;
//! - bare `current_user`, `session_user`, `current_schema`, `current_catalog` → calls;
//! - `CASE WHEN t.typtype = 'd' THEN …` branches for kinds of types Basalt has none of
//!   (domains, composites, enums, ranges) → dropped;
//! - `WITH RECURSIVE t(a, b) AS (…)` → the anchor's items named `a`, `b`;
//! - `x IN (<the search path's schemas, expanded with generate_series>)` (Grafana's
//!   pickers) → `array_has(current_schemas(false), x)`;
//! - a correlated scalar subquery over `pg_catalog` that is not aggregated (psql's `\d` asks
//!   for a column's default and collation that way) → its value wrapped in `first_value`,
//!   which DataFusion can decorrelate; PostgreSQL would fail on more than one row, and the
//!   catalogs these subqueries read hold at most one.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    visit_expressions_mut, ArrayElemTypeDef, BinaryOperator, CastKind, DataType as SqlType, Expr,
    Function, FunctionArg, FunctionArgExpr, FunctionArgumentList, FunctionArguments, Ident,
    ObjectName, ObjectNamePart, Statement, Value,
};

/// The function `::regclass` casts become.
pub const REGCLASS_FN: &str = "basalt_regclass";
/// The function `::regtype` casts become.
pub const REGTYPE_FN: &str = "basalt_regtype";

fn name(s: &str) -> ObjectName {
    ObjectName(vec![ObjectNamePart::Identifier(Ident::new(s))])
}

fn call(f: &str, args: Vec<Expr>) -> Expr {
    Expr::Function(Function {
        name: name(f),
        uses_odbc_syntax: false,
        parameters: FunctionArguments::None,
        args: FunctionArguments::List(FunctionArgumentList {
            duplicate_treatment: None,
            args: args
                .into_iter()
                .map(|e| FunctionArg::Unnamed(FunctionArgExpr::Expr(e)))
                .collect(),
            clauses: vec![],
        }),
        filter: None,
        null_treatment: None,
        over: None,
        within_group: vec![],
    })
}

/// The last part of a (possibly `pg_catalog.`-qualified) type or function name, lowercased.
fn last_lower(n: &ObjectName) -> Option<String> {
    match n.0.last()? {
        ObjectNamePart::Identifier(i) => Some(i.value.to_ascii_lowercase()),
        _ => None,
    }
}

fn in_pg_catalog(n: &ObjectName) -> bool {
    n.0.len() == 2
        && matches!(&n.0[0], ObjectNamePart::Identifier(i) if i.value.eq_ignore_ascii_case("pg_catalog"))
}

/// Whether `expr` is a (rewritten) `::regtype` cast.
fn calls_regtype(expr: &Expr) -> bool {
    matches!(expr, Expr::Function(f) if last_lower(&f.name).as_deref() == Some(REGTYPE_FN))
}

/// What a cast to a PostgreSQL-only type becomes (`None`: leave the cast to DataFusion).
fn rewrite_cast(expr: &Expr, ty: &SqlType) -> Option<Expr> {
    let type_name = match ty {
        // `oid::regtype::text` is the type's name, as `format_type` spells it.
        SqlType::Text | SqlType::Varchar(_) if calls_regtype(expr) => {
            return Some(call(
                "format_type",
                vec![expr.clone(), Expr::Value(Value::Null.into())],
            ))
        }
        SqlType::Regclass => "regclass".to_string(),
        SqlType::Custom(n, _) => last_lower(n)?,
        // `$1::oid[]` (asyncpg's type lookup): an array of unsigned 32-bit OIDs, described
        // to the client as `oid[]`, the array type asyncpg decodes without a lookup.
        SqlType::Array(ArrayElemTypeDef::SquareBracket(elem, None)) => match elem.as_ref() {
            SqlType::Custom(n, _)
                if last_lower(n).is_some_and(|t| {
                    matches!(t.as_str(), "oid" | "regtype" | "regclass" | "regproc")
                }) =>
            {
                return Some(call(
                    "arrow_cast",
                    vec![
                        expr.clone(),
                        Expr::Value(Value::SingleQuotedString("List(UInt32)".into()).into()),
                    ],
                ))
            }
            _ => return None,
        },
        _ => return None,
    };
    let inner = expr.clone();
    // `'pg_catalog.array_in'::regproc`: a function by name, compared with the catalogs'
    // function-name columns (`pg_type.typinput`), which hold names here.
    if matches!(type_name.as_str(), "regproc" | "regprocedure") {
        if let Expr::Value(v) = expr {
            if let Value::SingleQuotedString(s) = &v.value {
                let bare = s.strip_prefix("pg_catalog.").unwrap_or(s);
                return Some(Expr::Value(
                    Value::SingleQuotedString(bare.to_string()).into(),
                ));
            }
        }
    }
    Some(match type_name.as_str() {
        "regclass" => call(REGCLASS_FN, vec![inner]),
        "regtype" => call(REGTYPE_FN, vec![inner]),
        "oid" | "regproc" | "regprocedure" | "regnamespace" | "regrole" | "xid" | "cid" | "tid" => {
            call(
                "arrow_cast",
                vec![
                    inner,
                    Expr::Value(Value::SingleQuotedString("UInt32".into()).into()),
                ],
            )
        }
        other => {
            let data_type = match other {
                "name" | "char" | "bpchar" | "int2vector" | "oidvector" | "text" | "varchar" => {
                    SqlType::Text
                }
                "int2" | "smallint" => SqlType::SmallInt(None),
                "int4" | "int" | "integer" => SqlType::Int(None),
                "int8" | "bigint" => SqlType::BigInt(None),
                "float4" | "real" => SqlType::Real,
                "float8" => SqlType::Double(datafusion::sql::sqlparser::ast::ExactNumberInfo::None),
                "bool" | "boolean" => SqlType::Boolean,
                "date" => SqlType::Date,
                "timestamp" => {
                    SqlType::Timestamp(None, datafusion::sql::sqlparser::ast::TimezoneInfo::None)
                }
                "timestamptz" => SqlType::Timestamp(
                    None,
                    datafusion::sql::sqlparser::ast::TimezoneInfo::WithTimeZone,
                ),
                _ => return None,
            };
            Expr::Cast {
                kind: CastKind::Cast,
                expr: Box::new(inner),
                data_type,
                array: false,
                format: None,
            }
        }
    })
}

fn custom_operator(parts: &[String]) -> Option<BinaryOperator> {
    Some(match parts.last()?.as_str() {
        "~" => BinaryOperator::PGRegexMatch,
        "~*" => BinaryOperator::PGRegexIMatch,
        "!~" => BinaryOperator::PGRegexNotMatch,
        "!~*" => BinaryOperator::PGRegexNotIMatch,
        "~~" => BinaryOperator::PGLikeMatch,
        "!~~" => BinaryOperator::PGNotLikeMatch,
        "=" => BinaryOperator::Eq,
        "<>" => BinaryOperator::NotEq,
        "<" => BinaryOperator::Lt,
        "<=" => BinaryOperator::LtEq,
        ">" => BinaryOperator::Gt,
        ">=" => BinaryOperator::GtEq,
        _ => return None,
    })
}

const AGGREGATES: &[&str] = &[
    "count",
    "sum",
    "min",
    "max",
    "avg",
    "array_agg",
    "string_agg",
    "bool_and",
    "bool_or",
    "first_value",
    "last_value",
    "approx_distinct",
    "approx_percentile_cont",
    "median",
];

/// Whether `node` (an expression or a statement) calls a function named in `names`
/// (lowercase; matched on the last part of the name, case-insensitively) anywhere.
pub(crate) fn calls_any<V: datafusion::sql::sqlparser::ast::Visit>(
    node: &V,
    names: &[&str],
) -> bool {
    datafusion::sql::sqlparser::ast::visit_expressions(node, |x| match x {
        Expr::Function(f) if last_lower(&f.name).is_some_and(|n| names.contains(&n.as_str())) => {
            ControlFlow::Break(())
        }
        _ => ControlFlow::Continue(()),
    })
    .is_break()
}

/// Grafana's table and column pickers list the schemas of the search path with
/// `SELECT CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END FROM
/// generate_series(array_lower(…), array_upper(…)) AS i, string_to_array(current_setting(
/// 'search_path'), ',') s`: set-returning functions in FROM, which DataFusion does not
/// plan. `x IN (that)` means "x is a schema of the search path", which is what
/// `array_has(current_schemas(false), x)` answers.
fn expands_search_path(q: &datafusion::sql::sqlparser::ast::Query) -> bool {
    let text = q.to_string().to_ascii_lowercase();
    text.contains("generate_series")
        && text.contains("string_to_array(current_setting('search_path')")
}

/// Whether a scalar subquery inner-joins a catalog that never has rows in Basalt, so it
/// yields no row and is NULL (`(SELECT pg_get_expr(d.adbin, …) FROM pg_attrdef d WHERE …)`).
fn reads_an_empty_catalog(q: &datafusion::sql::sqlparser::ast::Query) -> bool {
    use datafusion::sql::sqlparser::ast::SetExpr;
    match q.body.as_ref() {
        SetExpr::Select(select) => select_is_empty(select),
        _ => false,
    }
}

/// Whether a SELECT inner-joins a catalog that never has rows in Basalt.
fn select_is_empty(select: &datafusion::sql::sqlparser::ast::Select) -> bool {
    use datafusion::sql::sqlparser::ast::{JoinOperator, TableFactor};
    let empty = |f: &TableFactor| match f {
        TableFactor::Table { name, .. } => {
            let parts: Vec<String> = name
                .0
                .iter()
                .map(|p| p.to_string().to_ascii_lowercase())
                .collect();
            match parts.as_slice() {
                [t] | [_, t] if parts.len() == 1 || parts[0] == "pg_catalog" => {
                    super::catalog::always_empty(t)
                }
                _ => false,
            }
        }
        // A derived table over such a catalog (pgjdbc's getPrimaryKeys filters one on
        // `(result.keys).x`, a composite field DataFusion does not plan).
        TableFactor::Derived { subquery, .. } => reads_an_empty_catalog(subquery),
        _ => false,
    };
    select.from.iter().any(|t| {
        empty(&t.relation)
            || t.joins.iter().any(|j| {
                matches!(
                    j.join_operator,
                    JoinOperator::Inner(_) | JoinOperator::Join(_)
                ) && empty(&j.relation)
            })
    })
}

/// `(SELECT x FROM pg_catalog.t WHERE …)` → `(SELECT first_value(x) FROM …)`.
fn aggregate_catalog_subquery(q: &mut datafusion::sql::sqlparser::ast::Query) {
    use datafusion::sql::sqlparser::ast::{GroupByExpr, SelectItem, SetExpr, TableFactor};
    let SetExpr::Select(select) = q.body.as_mut() else {
        return;
    };
    let reads_catalog = select.from.iter().any(|t| {
        matches!(&t.relation, TableFactor::Table { name, .. } if name.to_string().to_ascii_lowercase().contains("pg_"))
    });
    let grouped = !matches!(&select.group_by, GroupByExpr::Expressions(e, _) if e.is_empty());
    if !reads_catalog || grouped || select.projection.len() != 1 {
        return;
    }
    let wrap = |e: &mut Expr| {
        if !calls_any(e, AGGREGATES) {
            *e = call("first_value", vec![e.clone()]);
        }
    };
    match &mut select.projection[0] {
        SelectItem::UnnamedExpr(e) => wrap(e),
        SelectItem::ExprWithAlias { expr, .. } => wrap(expr),
        _ => {}
    }
}

/// A SELECT over a catalog that never has rows returns none, so its projected expressions
/// are never evaluated (nor is its WHERE, which becomes FALSE): every one but a plain column
/// becomes NULL under its name, so the
/// functions and subqueries psql's policy, statistics and publication lookups use need not
/// plan (the result, no rows, is the same).
fn blank_empty_projection(statement: &mut Statement) {
    if let Statement::Query(q) = statement {
        blank_set_expr(q.body.as_mut());
    }
}

fn blank_derived(t: &mut datafusion::sql::sqlparser::ast::TableFactor) {
    if let datafusion::sql::sqlparser::ast::TableFactor::Derived { subquery, .. } = t {
        blank_set_expr(subquery.body.as_mut());
    }
}

fn blank_set_expr(body: &mut datafusion::sql::sqlparser::ast::SetExpr) {
    use datafusion::sql::sqlparser::ast::{SelectItem, SetExpr};
    let select = match body {
        SetExpr::Select(select) => {
            for t in &mut select.from {
                blank_derived(&mut t.relation);
                for j in &mut t.joins {
                    blank_derived(&mut j.relation);
                }
            }
            select
        }
        SetExpr::Query(q) => return blank_set_expr(q.body.as_mut()),
        SetExpr::SetOperation { left, right, .. } => {
            blank_set_expr(left);
            blank_set_expr(right);
            return;
        }
        _ => return,
    };
    if !select_is_empty(select) {
        return;
    }
    // The filter is never evaluated either.
    select.selection = Some(Expr::Value(Value::Boolean(false).into()));
    let plain = |e: &Expr| matches!(e, Expr::Identifier(_) | Expr::CompoundIdentifier(_));
    let mut names = std::collections::HashSet::new();
    for item in &mut select.projection {
        match item {
            SelectItem::UnnamedExpr(e) if !plain(e) => {
                let mut name = e.to_string();
                while !names.insert(name.clone()) {
                    name.push('_');
                }
                let alias = Ident::new(name);
                *item = SelectItem::ExprWithAlias {
                    expr: Expr::Value(Value::Null.into()),
                    alias,
                };
            }
            SelectItem::ExprWithAlias { expr, .. } if !plain(expr) => {
                *expr = Expr::Value(Value::Null.into());
            }
            _ => {}
        }
    }
}

/// `WITH RECURSIVE t(a, b) AS (SELECT x, 0 UNION ALL SELECT … FROM t)`: DataFusion names the
/// recursive reference's columns after the anchor's expressions, not the CTE's column list,
/// so the anchor's items get the list's names (asyncpg's type introspection reads `tt.depth`).
struct NameRecursiveAnchors;

impl datafusion::sql::sqlparser::ast::VisitorMut for NameRecursiveAnchors {
    type Break = ();

    fn pre_visit_query(
        &mut self,
        query: &mut datafusion::sql::sqlparser::ast::Query,
    ) -> ControlFlow<()> {
        use datafusion::sql::sqlparser::ast::{SelectItem, SetExpr};
        let Some(with) = query.with.as_mut().filter(|w| w.recursive) else {
            return ControlFlow::Continue(());
        };
        for cte in &mut with.cte_tables {
            let names: Vec<Ident> = cte.alias.columns.iter().map(|c| c.name.clone()).collect();
            let SetExpr::SetOperation { left, .. } = cte.query.body.as_mut() else {
                continue;
            };
            let SetExpr::Select(anchor) = left.as_mut() else {
                continue;
            };
            if names.is_empty() || anchor.projection.len() != names.len() {
                continue;
            }
            for (item, name) in anchor.projection.iter_mut().zip(names) {
                *item = match std::mem::replace(item, SelectItem::Wildcard(Default::default())) {
                    SelectItem::UnnamedExpr(expr) | SelectItem::ExprWithAlias { expr, .. } => {
                        SelectItem::ExprWithAlias { expr, alias: name }
                    }
                    other => other,
                };
            }
        }
        ControlFlow::Continue(())
    }
}

/// Whether `cond` is `<…>.typtype = 'k'` for a kind of type Basalt's `pg_type` never holds
/// (only base types, `b`, and pseudo-types, `p`): domains, composites, enums, ranges.
fn never_a_basalt_type_kind(cond: &Expr) -> bool {
    let Expr::BinaryOp {
        left,
        op: BinaryOperator::Eq,
        right,
    } = cond
    else {
        return false;
    };
    let column = match left.as_ref() {
        Expr::Identifier(i) => &i.value,
        Expr::CompoundIdentifier(parts) => match parts.last() {
            Some(i) => &i.value,
            None => return false,
        },
        _ => return false,
    };
    let kind = match right.as_ref() {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(k) => k.as_str(),
            _ => return false,
        },
        _ => return false,
    };
    column.eq_ignore_ascii_case("typtype") && matches!(kind, "c" | "d" | "e" | "r" | "m")
}

/// Applies every rewrite of this module to `statement`.
pub fn rewrite(statement: &mut Statement) {
    let _ = datafusion::sql::sqlparser::ast::VisitMut::visit(statement, &mut NameRecursiveAnchors);
    blank_empty_projection(statement);
    let _ = visit_expressions_mut(statement, |expr| {
        let replacement = match expr {
            Expr::Function(f) if in_pg_catalog(&f.name) => {
                f.name = ObjectName(vec![f.name.0[1].clone()]);
                None
            }
            Expr::Cast {
                expr: inner,
                data_type,
                ..
            } => rewrite_cast(inner, data_type),
            Expr::BinaryOp {
                left,
                op: BinaryOperator::PGCustomBinaryOperator(parts),
                right,
            } => custom_operator(parts).map(|op| Expr::BinaryOp {
                left: left.clone(),
                op,
                right: right.clone(),
            }),
            Expr::Collate { expr: inner, .. } => Some((**inner).clone()),
            Expr::InSubquery {
                expr: inner,
                subquery,
                negated,
            } if expands_search_path(subquery) => {
                let has = call(
                    "array_has",
                    vec![
                        call(
                            "current_schemas",
                            vec![Expr::Value(Value::Boolean(false).into())],
                        ),
                        (**inner).clone(),
                    ],
                );
                Some(if *negated {
                    Expr::UnaryOp {
                        op: datafusion::sql::sqlparser::ast::UnaryOperator::Not,
                        expr: Box::new(has),
                    }
                } else {
                    has
                })
            }
            Expr::Subquery(q) if reads_an_empty_catalog(q) => Some(Expr::Value(Value::Null.into())),
            Expr::Subquery(q) => {
                blank_set_expr(q.body.as_mut());
                aggregate_catalog_subquery(q);
                None
            }
            Expr::AnyOp {
                left,
                compare_op: BinaryOperator::Eq,
                right,
                ..
            } => match right.as_ref() {
                Expr::Array(a) => Some(Expr::InList {
                    expr: left.clone(),
                    list: a.elem.clone(),
                    negated: false,
                }),
                _ => None,
            },
            Expr::AllOp {
                left,
                compare_op: BinaryOperator::NotEq,
                right,
            } => match right.as_ref() {
                Expr::Array(a) => Some(Expr::InList {
                    expr: left.clone(),
                    list: a.elem.clone(),
                    negated: true,
                }),
                // An array value (a bound `$1`): not among its elements. PostgreSQL answers
                // NULL rather than true when the array holds a NULL and no element matches.
                Expr::Subquery(_) => None,
                array => Some(Expr::UnaryOp {
                    op: datafusion::sql::sqlparser::ast::UnaryOperator::Not,
                    expr: Box::new(Expr::Nested(Box::new(call(
                        "array_has",
                        vec![array.clone(), left.as_ref().clone()],
                    )))),
                }),
            },
            // `CASE WHEN t.typtype = 'd' THEN (a correlated, recursive lookup of the domain's
            // base type) …` (asyncpg's type introspection): the branch is never taken here,
            // and DataFusion cannot plan what it holds.
            Expr::Case {
                operand: None,
                conditions,
                else_result,
                ..
            } if conditions
                .iter()
                .any(|w| never_a_basalt_type_kind(&w.condition)) =>
            {
                conditions.retain(|w| !never_a_basalt_type_kind(&w.condition));
                match conditions.is_empty() {
                    true => Some(match else_result.take() {
                        Some(e) => Expr::Nested(e),
                        None => Expr::Value(Value::Null.into()),
                    }),
                    false => None,
                }
            }
            Expr::Identifier(i) if i.quote_style.is_none() => {
                let lower = i.value.to_ascii_lowercase();
                match lower.as_str() {
                    "current_user" | "session_user" | "current_schema" | "current_catalog"
                    | "current_role" => Some(call(&lower, vec![])),
                    _ => None,
                }
            }
            _ => None,
        };
        if let Some(r) = replacement {
            *expr = r;
        }
        ControlFlow::<()>::Continue(())
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    fn rw(sql: &str) -> String {
        let mut s = Parser::parse_sql(&PostgreSqlDialect {}, sql)
            .unwrap()
            .remove(0);
        rewrite(&mut s);
        s.to_string()
    }

    #[test]
    fn postgres_only_syntax_becomes_plannable() {
        assert_eq!(
            rw("SELECT pg_catalog.pg_get_userbyid(c.relowner) FROM pg_catalog.pg_class c"),
            "SELECT pg_get_userbyid(c.relowner) FROM pg_catalog.pg_class c"
        );
        assert_eq!(
            rw("SELECT 'events'::regclass, c.oid::pg_catalog.regclass FROM t"),
            "SELECT basalt_regclass('events'), basalt_regclass(c.oid) FROM t"
        );
        assert_eq!(
            rw("SELECT x::oid, y::name FROM t"),
            "SELECT arrow_cast(x, 'UInt32'), CAST(y AS TEXT) FROM t"
        );
        assert_eq!(
            rw("SELECT 1 FROM t WHERE c.relname OPERATOR(pg_catalog.~) '^(events)$' COLLATE pg_catalog.default"),
            "SELECT 1 FROM t WHERE c.relname ~ '^(events)$'"
        );
        assert_eq!(
            rw("SELECT 1 FROM t WHERE relkind = ANY (ARRAY['r', 'p']) AND k <> ALL (ARRAY['x'])"),
            "SELECT 1 FROM t WHERE relkind IN ('r', 'p') AND k NOT IN ('x')"
        );
        assert_eq!(
            rw("SELECT (SELECT c.collname FROM pg_catalog.pg_collation c, pg_catalog.pg_type t WHERE c.oid = a.attcollation), \
                (SELECT n.nspname FROM pg_catalog.pg_namespace n WHERE n.oid = a.attrelid), \
                (SELECT count(*) FROM pg_catalog.pg_class) FROM pg_catalog.pg_attribute a"),
            "SELECT NULL, \
                (SELECT first_value(n.nspname) FROM pg_catalog.pg_namespace n WHERE n.oid = a.attrelid), \
                (SELECT count(*) FROM pg_catalog.pg_class) FROM pg_catalog.pg_attribute a"
        );
        assert_eq!(
            rw("SELECT 1 FROM t WHERE quote_ident(table_schema) IN (SELECT CASE WHEN trim(s[i]) = '\"$user\"' THEN user ELSE trim(s[i]) END \
                FROM generate_series(array_lower(string_to_array(current_setting('search_path'),','),1), \
                array_upper(string_to_array(current_setting('search_path'),','),1)) as i, \
                string_to_array(current_setting('search_path'),',') s)"),
            "SELECT 1 FROM t WHERE array_has(current_schemas(false), quote_ident(table_schema))"
        );
        assert_eq!(
            rw("SELECT current_user, current_schema, \"current_user\" FROM t"),
            "SELECT current_user, current_schema(), \"current_user\" FROM t"
        );
    }

    #[test]
    fn client_introspection_syntax_becomes_plannable() {
        assert_eq!(
            rw("SELECT t.oid::regtype::text, typinput = 'pg_catalog.array_in'::regproc FROM pg_type t"),
            "SELECT format_type(basalt_regtype(t.oid), NULL), typinput = 'array_in' FROM pg_type t"
        );
        assert_eq!(
            rw("SELECT 1 FROM t WHERE k <> ALL ($1) AND o = ANY ($2::oid[])"),
            "SELECT 1 FROM t WHERE NOT (array_has($1, k)) AND o = ANY(arrow_cast($2, 'List(UInt32)'))"
        );
        // Branches for kinds of types Basalt has none of are dropped.
        assert_eq!(
            rw("SELECT CASE WHEN t.typtype = 'd' THEN (SELECT 1) WHEN t.typtype = 'b' THEN 2 END, \
                CASE WHEN t.typtype = 'c' THEN (SELECT 3) ELSE 4 END FROM pg_type t"),
            "SELECT CASE WHEN t.typtype = 'b' THEN 2 END, (4) FROM pg_type t"
        );
        // The anchor of a recursive CTE takes the CTE's column names.
        assert_eq!(
            rw("WITH RECURSIVE r(n, depth) AS (SELECT 1, 0 UNION ALL SELECT n + 1, r.depth + 1 FROM r WHERE n < 3) SELECT * FROM r"),
            "WITH RECURSIVE r (n, depth) AS (SELECT 1 AS n, 0 AS depth UNION ALL SELECT n + 1, r.depth + 1 FROM r WHERE n < 3) SELECT * FROM r"
        );
    }
}
