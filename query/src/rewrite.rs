//! Statement rewrites the embedding process adds to the engine. In: a parsed read-only
//! statement (after the Pinot and PostgreSQL rewrites). Out: the statement to plan instead:
//! the semantic layer (`basalt-semantic`) turns queries over `semantic.<model>` into
//! queries over the model's table.

use datafusion::sql::sqlparser::ast::Statement;

use crate::error::Result;

/// A rewrite of every statement before it is planned; an error is the query's answer.
pub trait StatementRewrite: Send + Sync + std::fmt::Debug {
    fn rewrite(&self, statement: &mut Statement) -> Result<()>;
}
