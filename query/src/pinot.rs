//! Pinot-compatible SQL surface, applied as a rewrite of the parsed statement before planning.
//! In: a parsed `Statement`. Out: the same statement with Pinot function names mapped onto
//! DataFusion's: `DISTINCTCOUNTHLL(x)` → `approx_distinct(x)`, `PERCENTILETDIGEST(x, 95)` →
//! `approx_percentile_cont(x, 0.95)`, `DATETRUNC('MINUTE', ts)` → `date_trunc('minute', ts)`,
//! `DISTINCTCOUNT(x)` → `count(DISTINCT x)`. Function names are matched case-insensitively.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    visit_expressions_mut, DuplicateTreatment, Expr, FunctionArg, FunctionArgExpr,
    FunctionArguments, Ident, ObjectName, ObjectNamePart, Statement, Value,
};

use crate::error::QueryError;

/// Rewrites Pinot functions in place; fails on a Pinot function used with bad arguments.
pub fn rewrite(statement: &mut Statement) -> Result<(), QueryError> {
    let flow = visit_expressions_mut(statement, |expr| {
        if let Expr::Function(f) = expr {
            let Some(ObjectNamePart::Identifier(ident)) = f.name.0.last() else {
                return ControlFlow::Continue(());
            };
            let lower = ident.value.to_ascii_lowercase();
            let new_name = match lower.as_str() {
                "distinctcounthll" | "distinct_count_hll" => "approx_distinct",
                "datetrunc" => "date_trunc",
                "percentiletdigest" | "percentile_tdigest" => {
                    if let Err(e) = scale_percentile(&mut f.args) {
                        return ControlFlow::Break(e);
                    }
                    "approx_percentile_cont"
                }
                "distinctcount" => {
                    if let FunctionArguments::List(l) = &mut f.args {
                        l.duplicate_treatment = Some(DuplicateTreatment::Distinct);
                    }
                    "count"
                }
                _ => {
                    // SQL function names are case-insensitive even when identifiers are not.
                    if f.name.0.len() == 1 && ident.quote_style.is_none() && ident.value != lower {
                        f.name = ObjectName(vec![ObjectNamePart::Identifier(Ident::new(lower))]);
                    }
                    return ControlFlow::Continue(());
                }
            };
            f.name = ObjectName(vec![ObjectNamePart::Identifier(Ident::new(new_name))]);
        }
        ControlFlow::Continue(())
    });
    match flow {
        ControlFlow::Break(e) => Err(e),
        ControlFlow::Continue(()) => Ok(()),
    }
}

/// PERCENTILETDIGEST takes a percentile in 0..=100; DataFusion wants 0..=1.
fn scale_percentile(args: &mut FunctionArguments) -> Result<(), QueryError> {
    let bad = || {
        QueryError::invalid(
            crate::ErrorKind::InvalidQuery,
            "PERCENTILETDIGEST(column, percentile) needs a numeric percentile literal between 0 and 100",
        )
    };
    let FunctionArguments::List(list) = args else {
        return Err(bad());
    };
    let Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(v)))) = list.args.get_mut(1)
    else {
        return Err(bad());
    };
    let Value::Number(n, long) = &v.value else {
        return Err(bad());
    };
    let p: f64 = n.parse().map_err(|_| bad())?;
    if !(0.0..=100.0).contains(&p) {
        return Err(bad());
    }
    v.value = Value::Number(format!("{:?}", p / 100.0), *long);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    fn rw(sql: &str) -> String {
        let mut s = Parser::parse_sql(&GenericDialect {}, sql)
            .unwrap()
            .remove(0);
        rewrite(&mut s).unwrap();
        s.to_string()
    }

    #[test]
    fn rewrites_pinot_functions() {
        assert_eq!(
            rw("SELECT DISTINCTCOUNTHLL(user_id), PERCENTILETDIGEST(latency_ms, 95) FROM t"),
            "SELECT approx_distinct(user_id), approx_percentile_cont(latency_ms, 0.95) FROM t"
        );
        assert_eq!(
            rw("SELECT DATETRUNC('MINUTE', ts), COUNT(*) FROM t GROUP BY 1"),
            "SELECT date_trunc('MINUTE', ts), count(*) FROM t GROUP BY 1"
        );
        assert_eq!(
            rw("SELECT DISTINCTCOUNT(x) FROM t"),
            "SELECT count(DISTINCT x) FROM t"
        );
    }

    #[test]
    fn bad_percentile_is_an_error() {
        let mut s = Parser::parse_sql(
            &GenericDialect {},
            "SELECT PERCENTILETDIGEST(x, 101) FROM t",
        )
        .unwrap()
        .remove(0);
        assert!(rewrite(&mut s).is_err());
    }
}
