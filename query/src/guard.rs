//! Statement guards that run before planning. In: SQL text and the server's statement limits.
//! Out: the text accepted, or an error of kind [`ErrorKind::TooComplex`] naming the limit.
//!
//! The parser builds operator chains (`1+1+...+1`, `a OR b OR ...`, `UNION` after `UNION`)
//! in a loop, but the tree it builds is as deep as the chain is long, and everything after
//! it — dropping the tree, printing it, rewriting, planning, optimizing — recurses over that
//! depth. A two-million-term chain would overflow the stack and abort the process. So the
//! text is tokenized first (the tokenizer is iterative) and refused when it is longer than
//! `max_sql_bytes` or has more operators than `max_expression_terms`; nesting by
//! parentheses is bounded by the parser's own recursion limit. Relations per statement are
//! bounded too, as each FROM item or JOIN deepens the plan.
//!
//! [`unknown_table`] and [`unknown_function`] find a name no catalog or registry of the
//! session knows, so that a planning failure caused by it gets the kind
//! [`ErrorKind::UndefinedTable`] or [`ErrorKind::UndefinedFunction`] from the name's
//! resolution rather than from DataFusion's message.

use std::ops::ControlFlow;

use datafusion::execution::SessionState;
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{visit_expressions, visit_relations, Expr, ObjectNamePart};
use datafusion::sql::sqlparser::dialect::Dialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

use crate::error::{ErrorKind, QueryError, Result};

/// Limits on a statement's size and shape.
#[derive(Debug, Clone, Copy)]
pub struct StatementLimits {
    /// Longest SQL text, in bytes (default 4 MiB).
    pub max_sql_bytes: usize,
    /// Operators (arithmetic, comparison, AND/OR, casts, set operations, joins) one
    /// statement may have (default 4,096).
    pub max_expression_terms: usize,
    /// Relations (tables, subqueries, table functions) one statement may name (default 256).
    pub max_relations: usize,
}

impl Default for StatementLimits {
    fn default() -> Self {
        StatementLimits {
            max_sql_bytes: 4 << 20,
            max_expression_terms: 4096,
            max_relations: 256,
        }
    }
}

fn too_complex(message: String) -> QueryError {
    QueryError::invalid(ErrorKind::TooComplex, message)
}

/// Whether a token joins two operands into a deeper tree.
fn is_operator(t: &Token) -> bool {
    match t {
        Token::Plus
        | Token::Minus
        | Token::Mul
        | Token::Div
        | Token::DuckIntDiv
        | Token::Mod
        | Token::StringConcat
        | Token::Eq
        | Token::DoubleEq
        | Token::Neq
        | Token::Lt
        | Token::Gt
        | Token::LtEq
        | Token::GtEq
        | Token::Spaceship
        | Token::DoubleColon
        | Token::LBracket
        | Token::Ampersand
        | Token::Pipe
        | Token::Caret
        | Token::ShiftLeft
        | Token::ShiftRight
        | Token::Arrow
        | Token::LongArrow
        | Token::HashArrow
        | Token::HashLongArrow
        | Token::AtArrow
        | Token::ArrowAt
        | Token::Tilde
        | Token::TildeAsterisk
        | Token::ExclamationMarkTilde
        | Token::ExclamationMarkTildeAsterisk => true,
        Token::Word(w) => matches!(
            w.keyword,
            Keyword::AND
                | Keyword::OR
                | Keyword::XOR
                | Keyword::LIKE
                | Keyword::ILIKE
                | Keyword::SIMILAR
                | Keyword::IS
                | Keyword::UNION
                | Keyword::EXCEPT
                | Keyword::INTERSECT
                | Keyword::JOIN
                | Keyword::COLLATE
                | Keyword::AT
        ),
        _ => false,
    }
}

/// Checks the text's length and operator count before it is parsed.
pub fn check_text(sql: &str, dialect: &dyn Dialect, limits: &StatementLimits) -> Result<()> {
    if sql.len() > limits.max_sql_bytes {
        return Err(too_complex(format!(
            "the statement is {} bytes long; the limit is {} (query.max_sql_bytes)",
            sql.len(),
            limits.max_sql_bytes
        )));
    }
    // Unparseable text is left to the parser, which names what is wrong.
    let Ok(tokens) = Tokenizer::new(dialect, sql).tokenize() else {
        return Ok(());
    };
    let operators = tokens.iter().filter(|t| is_operator(t)).count();
    if operators > limits.max_expression_terms {
        return Err(too_complex(format!(
            "the statement has {operators} operators; the limit is {} (query.max_expression_terms)",
            limits.max_expression_terms
        )));
    }
    Ok(())
}

/// Checks the parsed statement's relation count.
pub fn check_statement(statement: &DfStatement, limits: &StatementLimits) -> Result<()> {
    let DfStatement::Statement(s) = statement else {
        return Ok(());
    };
    let mut relations = 0usize;
    let _ = visit_relations(s.as_ref(), |_| {
        relations += 1;
        ControlFlow::<()>::Continue(())
    });
    if relations > limits.max_relations {
        return Err(too_complex(format!(
            "the statement names {relations} relations; the limit is {} (query.max_relations)",
            limits.max_relations
        )));
    }
    Ok(())
}

/// A function name in `statement` that no scalar, aggregate or window function registry of
/// `state` knows (names resolve as DataFusion resolves them: lowercased unless quoted).
pub fn unknown_function(statement: &DfStatement, state: &SessionState) -> Option<String> {
    let inner = match statement {
        DfStatement::Statement(s) => s.as_ref(),
        DfStatement::Explain(e) => match e.statement.as_ref() {
            DfStatement::Statement(s) => s.as_ref(),
            _ => return None,
        },
        _ => return None,
    };
    let mut unknown = None;
    let _ = visit_expressions(inner, |e| {
        if let Expr::Function(f) = e {
            if f.name.0.len() == 1 {
                if let Some(ObjectNamePart::Identifier(id)) = f.name.0.first() {
                    let name = match id.quote_style {
                        Some(_) => id.value.clone(),
                        None => id.value.to_ascii_lowercase(),
                    };
                    let known = state.scalar_functions().contains_key(&name)
                        || state.aggregate_functions().contains_key(&name)
                        || state.window_functions().contains_key(&name)
                        || matches!(name.as_str(), "unnest" | "make_map");
                    if !known {
                        unknown = Some(name);
                        return ControlFlow::Break(());
                    }
                }
            }
        }
        ControlFlow::Continue(())
    });
    unknown
}

/// A relation `statement` names that no catalog of the session has (CTE names and table
/// functions are not tables to look up).
pub fn unknown_table(statement: &DfStatement, state: &SessionState) -> Option<String> {
    let references = state.resolve_table_references(statement).ok()?;
    references.into_iter().find_map(|r| {
        if r.schema().is_none() && state.table_functions().contains_key(r.table()) {
            return None;
        }
        let schema = state.schema_for_ref(r.clone());
        match schema.map(|s| s.table_exist(r.table())) {
            Ok(true) => None,
            _ => Some(r.table().to_string()),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::dialect::GenericDialect;

    #[test]
    fn long_chains_and_texts_are_refused_before_parsing() {
        let l = StatementLimits {
            max_sql_bytes: 1 << 20,
            max_expression_terms: 100,
            max_relations: 4,
        };
        let d = GenericDialect {};
        check_text("SELECT a + b FROM t WHERE x = 'a+b+c' -- + + +", &d, &l).unwrap();
        let chain = format!("SELECT 1{}", "+1".repeat(101));
        let e = check_text(&chain, &d, &l).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TooComplex);
        assert!(e.to_string().contains("query.max_expression_terms"), "{e}");
        let ors = format!("SELECT 1 WHERE a = 1{}", " OR a = 1".repeat(60));
        assert!(check_text(&ors, &d, &l).is_err());
        let long = format!("SELECT '{}'", "x".repeat(2 << 20));
        assert!(check_text(&long, &d, &l)
            .unwrap_err()
            .to_string()
            .contains("query.max_sql_bytes"));
        // An IN list is wide, not deep.
        let wide = format!(
            "SELECT 1 WHERE a IN ({})",
            (0..5000)
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        check_text(&wide, &d, &l).unwrap();
    }
}
