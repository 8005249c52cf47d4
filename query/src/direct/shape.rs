//! The statement shapes the direct plan takes. In: a parsed statement. Out: its table, its
//! aggregates and its WHERE clause when it is exactly `SELECT <aggregates> FROM <table>
//! [WHERE <condition>]`, each aggregate `count(*)`, `count(col)`, `sum(col)`, `min(col)`,
//! `max(col)` or `avg(col)` with an optional alias; `None` for anything else.
//!
//! Every clause of sqlparser's `Query` and `Select` is named here, so a new clause in a
//! parser upgrade fails to compile instead of being ignored.

use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{
    Expr as SqlExpr, Function, FunctionArg, FunctionArgExpr, FunctionArgumentList,
    FunctionArguments, GroupByExpr, Ident, ObjectName, ObjectNamePart, Query, Select, SelectFlavor,
    SelectItem, SetExpr, Statement, TableFactor, TableWithJoins,
};

/// An aggregate function the direct plan computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Func {
    CountStar,
    Count,
    Sum,
    Min,
    Max,
    Avg,
}

impl Func {
    /// DataFusion's name of the function (the output column's name is built from it).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Func::CountStar | Func::Count => "count",
            Func::Sum => "sum",
            Func::Min => "min",
            Func::Max => "max",
            Func::Avg => "avg",
        }
    }
}

/// One item of the select list.
#[derive(Debug)]
pub(crate) struct Item<'a> {
    pub func: Func,
    /// The column the function reads (`None` for `count(*)`).
    pub column: Option<&'a str>,
    pub alias: Option<&'a str>,
}

/// A statement the direct plan may answer.
#[derive(Debug)]
pub(crate) struct Shape<'a> {
    pub table: &'a str,
    pub items: Vec<Item<'a>>,
    pub selection: Option<&'a SqlExpr>,
}

/// The shape of `statement`, or `None` when it is anything but a one-table aggregation
/// without grouping.
pub(crate) fn shape(statement: &DfStatement) -> Option<Shape<'_>> {
    let DfStatement::Statement(s) = statement else {
        return None;
    };
    let Statement::Query(q) = s.as_ref() else {
        return None;
    };
    let Query {
        with: None,
        body,
        order_by: None,
        limit_clause: None,
        fetch: None,
        locks,
        for_clause: None,
        settings: None,
        format_clause: None,
        pipe_operators,
    } = q.as_ref()
    else {
        return None;
    };
    if !locks.is_empty() || !pipe_operators.is_empty() {
        return None;
    }
    let SetExpr::Select(select) = body.as_ref() else {
        return None;
    };
    let Select {
        select_token: _,
        optimizer_hint: None,
        distinct: None,
        select_modifiers: None,
        top: None,
        top_before_distinct: _,
        projection,
        exclude: None,
        into: None,
        from,
        lateral_views,
        prewhere: None,
        selection,
        connect_by,
        group_by: GroupByExpr::Expressions(group_by, group_modifiers),
        cluster_by,
        distribute_by,
        sort_by,
        having: None,
        named_window,
        qualify: None,
        window_before_qualify: _,
        value_table_mode: None,
        flavor: SelectFlavor::Standard,
    } = select.as_ref()
    else {
        return None;
    };
    let nothing_else = lateral_views.is_empty()
        && connect_by.is_empty()
        && group_by.is_empty()
        && group_modifiers.is_empty()
        && cluster_by.is_empty()
        && distribute_by.is_empty()
        && sort_by.is_empty()
        && named_window.is_empty();
    if !nothing_else {
        return None;
    }
    let [TableWithJoins {
        relation:
            TableFactor::Table {
                name,
                alias: None,
                args: None,
                with_hints,
                version: None,
                with_ordinality: false,
                partitions,
                json_path: None,
                sample: None,
                index_hints,
            },
        joins,
    }] = from.as_slice()
    else {
        return None;
    };
    if !(joins.is_empty()
        && with_hints.is_empty()
        && partitions.is_empty()
        && index_hints.is_empty())
    {
        return None;
    }
    let table = single_name(name)?;
    let items = projection
        .iter()
        .map(|item| match item {
            SelectItem::UnnamedExpr(e) => aggregate(e, table, None),
            SelectItem::ExprWithAlias { expr, alias } => {
                aggregate(expr, table, Some(alias.value.as_str()))
            }
            _ => None,
        })
        .collect::<Option<Vec<_>>>()?;
    if items.is_empty() {
        return None;
    }
    Some(Shape {
        table,
        items,
        selection: selection.as_ref(),
    })
}

/// A one-part object name.
fn single_name(name: &ObjectName) -> Option<&str> {
    match name.0.as_slice() {
        [ObjectNamePart::Identifier(Ident { value, .. })] => Some(value),
        _ => None,
    }
}

/// A call's one-part name and arguments, when it has nothing else: no DISTINCT, FILTER,
/// OVER, WITHIN GROUP or other clause.
pub(crate) fn plain_call(f: &Function) -> Option<(&str, &[FunctionArg])> {
    let Function {
        name,
        uses_odbc_syntax: false,
        parameters: FunctionArguments::None,
        args:
            FunctionArguments::List(FunctionArgumentList {
                duplicate_treatment: None,
                args,
                clauses,
            }),
        filter: None,
        null_treatment: None,
        over: None,
        within_group,
    } = f
    else {
        return None;
    };
    if !clauses.is_empty() || !within_group.is_empty() {
        return None;
    }
    Some((single_name(name)?, args))
}

/// `f(col)` or `count(*)`. Function names are matched as DataFusion spells them (lower
/// case).
fn aggregate<'a>(e: &'a SqlExpr, table: &str, alias: Option<&'a str>) -> Option<Item<'a>> {
    let SqlExpr::Function(f) = e else {
        return None;
    };
    let (name, args) = plain_call(f)?;
    let [FunctionArg::Unnamed(arg)] = args else {
        return None;
    };
    let (func, column) = match (name, arg) {
        ("count", FunctionArgExpr::Wildcard) => (Func::CountStar, None),
        (_, FunctionArgExpr::Expr(e)) => {
            let func = match name {
                "count" => Func::Count,
                "sum" => Func::Sum,
                "min" => Func::Min,
                "max" => Func::Max,
                "avg" => Func::Avg,
                _ => return None,
            };
            (func, Some(column_name(e, table)?))
        }
        _ => return None,
    };
    Some(Item {
        func,
        column,
        alias,
    })
}

/// The column `e` names: `col` or `<table>.col`.
pub(crate) fn column_name<'a>(e: &'a SqlExpr, table: &str) -> Option<&'a str> {
    match e {
        SqlExpr::Identifier(Ident { value, .. }) => Some(value),
        SqlExpr::CompoundIdentifier(parts) => match parts.as_slice() {
            [t, c] if t.value == table => Some(&c.value),
            _ => None,
        },
        _ => None,
    }
}
