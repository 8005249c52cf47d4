//! The PostgreSQL dialect of Basalt's SQL, for the wire-protocol front end. In: SQL text from
//! a PostgreSQL client and the connection's [`PgSession`]. Out: [`PgCommand`]s — queries for
//! the engine (Pinot function names still work, as over HTTP), and the session commands
//! clients send around them (`SET`, `SHOW`, `BEGIN`, `DISCARD ALL`, …) for the protocol layer
//! to answer.
//!
//! Queries on a PostgreSQL session also see `pg_catalog` ([`catalog`]), PostgreSQL's system
//! functions ([`functions`]) and PostgreSQL-only syntax rewritten into DataFusion's
//! ([`rewrite`]). Basalt is read-only: any other statement is refused with
//! [`QueryError::ReadOnly`].

pub mod catalog;
pub mod functions;
pub mod params;
pub mod rewrite;
pub mod types;

use std::collections::BTreeMap;

use datafusion::sql::parser::{DFParser, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::{Expr, Set, Statement, Value};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;

use crate::error::Result;

/// The PostgreSQL version Basalt reports (`server_version`, `version()`).
pub const SERVER_VERSION: &str = "16.6";

/// One connection's identity and settings.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PgSession {
    pub user: String,
    pub database: String,
    /// Settings by lowercased name: PostgreSQL's defaults, the startup parameters, then `SET`.
    pub settings: BTreeMap<String, String>,
}

/// Settings every session starts with (what `SHOW` and `current_setting()` answer).
const DEFAULT_SETTINGS: &[(&str, &str)] = &[
    ("application_name", ""),
    ("client_encoding", "UTF8"),
    ("datestyle", "ISO, MDY"),
    ("default_table_access_method", "heap"),
    ("default_tablespace", ""),
    ("default_transaction_isolation", "read committed"),
    ("default_transaction_read_only", "on"),
    ("extra_float_digits", "1"),
    ("integer_datetimes", "on"),
    ("intervalstyle", "postgres"),
    ("is_superuser", "off"),
    // Basalt compiles no expressions at run time (asyncpg reads this).
    ("jit", "off"),
    ("lc_collate", "C"),
    ("lc_ctype", "C"),
    ("lc_messages", "C"),
    ("lc_monetary", "C"),
    ("lc_numeric", "C"),
    ("lc_time", "C"),
    ("max_identifier_length", "63"),
    ("max_index_keys", "32"),
    ("search_path", "public"),
    ("server_encoding", "UTF8"),
    ("server_version_num", "160006"),
    ("standard_conforming_strings", "on"),
    ("statement_timeout", "0"),
    ("timezone", "UTC"),
    ("transaction_isolation", "read committed"),
    ("transaction_read_only", "on"),
];

impl PgSession {
    pub fn new(user: impl Into<String>, database: impl Into<String>) -> Self {
        let mut settings: BTreeMap<String, String> = DEFAULT_SETTINGS
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        settings.insert("server_version".into(), SERVER_VERSION.into());
        let user = user.into();
        settings.insert("session_authorization".into(), user.clone());
        PgSession {
            user,
            database: database.into(),
            settings,
        }
    }

    /// A setting by name, case-insensitively.
    pub fn setting(&self, name: &str) -> Option<&str> {
        self.settings
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        self.settings
            .insert(name.to_ascii_lowercase(), value.into());
    }
}

/// A statement from a PostgreSQL client, classified.
#[derive(Debug, Clone)]
pub enum PgCommand {
    /// A read-only query (SELECT, WITH, VALUES, EXPLAIN, SHOW TABLES) for the engine, and
    /// per `$n` it names, the type its text casts it to (`$1::integer` → `integer`), if any.
    /// Rewrites may drop placeholders a client still binds (a filter over a catalog Basalt
    /// keeps empty); these say what to describe them as.
    Query(Box<DfStatement>, Vec<Option<String>>),
    /// `SET name = value` (also `SET name TO value`, `SET TIME ZONE value`).
    Set {
        name: String,
        value: String,
    },
    /// `SHOW name`; `"all"` for `SHOW ALL`.
    Show(String),
    Begin,
    Commit,
    Rollback,
    /// Accepted and without effect in a read-only store; the command tag to answer.
    Noop(&'static str),
}

/// Splits `sql` into statements within `limits` and classifies each. Empty input yields no
/// commands.
pub fn parse(sql: &str, limits: &crate::StatementLimits) -> Result<Vec<PgCommand>> {
    crate::guard::check_text(sql, &PostgreSqlDialect {}, limits)?;
    let statements = DFParser::parse_sql_with_dialect(sql, &PostgreSqlDialect {})?;
    for s in &statements {
        crate::guard::check_statement(s, limits)?;
    }
    statements.into_iter().map(classify).collect()
}

fn setting_value(values: &[Expr]) -> String {
    values
        .iter()
        .map(|v| match v {
            Expr::Value(v) => match &v.value {
                Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s.clone(),
                other => other.to_string(),
            },
            Expr::Identifier(i) => i.value.clone(),
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn classify(statement: DfStatement) -> Result<PgCommand> {
    let params = placeholders(&statement);
    let DfStatement::Statement(s) = &statement else {
        return crate::engine::check_query(statement)
            .map(|s| PgCommand::Query(Box::new(s), params));
    };
    Ok(match s.as_ref() {
        Statement::Set(Set::SingleAssignment {
            variable, values, ..
        }) => PgCommand::Set {
            name: variable.to_string().to_ascii_lowercase(),
            value: setting_value(values),
        },
        Statement::Set(Set::SetTimeZone { value, .. }) => PgCommand::Set {
            name: "timezone".into(),
            value: setting_value(std::slice::from_ref(value)),
        },
        Statement::Set(_) => PgCommand::Noop("SET"),
        Statement::ShowVariable { variable } => {
            let name = variable
                .iter()
                .map(|i| i.value.to_ascii_lowercase())
                .collect::<Vec<_>>()
                .join(" ");
            PgCommand::Show(match name.as_str() {
                "transaction isolation level" => "transaction_isolation".into(),
                "time zone" => "timezone".into(),
                _ => name,
            })
        }
        Statement::StartTransaction { .. } => PgCommand::Begin,
        Statement::Commit { .. } => PgCommand::Commit,
        Statement::Rollback {
            savepoint: None, ..
        } => PgCommand::Rollback,
        Statement::Rollback { .. } => PgCommand::Noop("ROLLBACK"),
        Statement::Savepoint { .. } => PgCommand::Noop("SAVEPOINT"),
        Statement::ReleaseSavepoint { .. } => PgCommand::Noop("RELEASE"),
        Statement::Discard { .. } => PgCommand::Noop("DISCARD ALL"),
        Statement::Deallocate { .. } => PgCommand::Noop("DEALLOCATE"),
        Statement::Close { .. } => PgCommand::Noop("CLOSE CURSOR"),
        Statement::Reset(_) => PgCommand::Noop("RESET"),
        Statement::UNLISTEN { .. } => PgCommand::Noop("UNLISTEN"),
        _ => {
            let mut statement = crate::engine::check_query(statement)?;
            if let DfStatement::Statement(s) = &mut statement {
                name_columns_like_postgres(s);
            }
            PgCommand::Query(Box::new(statement), params)
        }
    })
}

/// The most parameters a statement takes (the protocol counts them in 16 bits); a higher
/// `$n` is left to the planner, which refuses it unbound.
const MAX_PARAMETERS: usize = u16::MAX as usize;

/// Per `$n` of `statement` up to the highest, the SQL type a cast gives it (`None`: named
/// but never cast, or not named).
fn placeholders(statement: &DfStatement) -> Vec<Option<String>> {
    use datafusion::sql::sqlparser::ast::{visit_expressions, Value};
    let DfStatement::Statement(s) = statement else {
        return Vec::new();
    };
    let index = |e: &Expr| match e {
        Expr::Value(v) => match &v.value {
            Value::Placeholder(p) => p
                .strip_prefix('$')
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|&n| (1..=MAX_PARAMETERS).contains(&n)),
            _ => None,
        },
        _ => None,
    };
    let mut out: Vec<Option<String>> = Vec::new();
    let _ = visit_expressions(s.as_ref(), |e| {
        let (n, ty) = match e {
            Expr::Cast {
                expr, data_type, ..
            } => (index(expr), Some(data_type.to_string())),
            other => (index(other), None),
        };
        if let Some(n) = n {
            if out.len() < n {
                out.resize(n, None);
            }
            if out[n - 1].is_none() {
                out[n - 1] = ty;
            }
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
    out
}

/// PostgreSQL names an unaliased `count(*)` column `count` and `x::int` column `x`, where
/// DataFusion would say `count(*)` and `CAST(x AS Int32)`: give such top-level columns
/// PostgreSQL's name, unless two columns would then share it.
fn name_columns_like_postgres(statement: &mut Statement) {
    use datafusion::sql::sqlparser::ast::{Ident, ObjectNamePart, SelectItem, SetExpr};
    let Statement::Query(q) = statement else {
        return;
    };
    let SetExpr::Select(select) = q.body.as_mut() else {
        return;
    };
    fn pg_name(e: &Expr) -> Option<String> {
        match e {
            Expr::Function(f) => match f.name.0.last()? {
                ObjectNamePart::Identifier(i) => Some(i.value.to_ascii_lowercase()),
                _ => None,
            },
            Expr::Cast { expr, .. } | Expr::Nested(expr) => match expr.as_ref() {
                Expr::Identifier(i) => Some(i.value.clone()),
                Expr::CompoundIdentifier(parts) => parts.last().map(|i| i.value.clone()),
                other => pg_name(other),
            },
            _ => None,
        }
    }
    let names: Vec<Option<String>> = select
        .projection
        .iter()
        .map(|item| match item {
            SelectItem::UnnamedExpr(e) => pg_name(e),
            _ => None,
        })
        .collect();
    let taken = |n: &str, me: usize| {
        select.projection.iter().enumerate().any(|(j, item)| {
            j != me
                && match item {
                    SelectItem::ExprWithAlias { alias, .. } => alias.value == n,
                    SelectItem::UnnamedExpr(Expr::Identifier(i)) => i.value == n,
                    _ => false,
                }
        }) || names
            .iter()
            .enumerate()
            .any(|(j, o)| j != me && o.as_deref() == Some(n))
    };
    let renames: Vec<(usize, String)> = names
        .iter()
        .enumerate()
        .filter_map(|(i, n)| n.clone().filter(|n| !taken(n, i)).map(|n| (i, n)))
        .collect();
    for (i, name) in renames {
        if let SelectItem::UnnamedExpr(e) = &select.projection[i] {
            select.projection[i] = SelectItem::ExprWithAlias {
                expr: e.clone(),
                alias: Ident::with_quote('"', name),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(sql: &str) -> PgCommand {
        let mut c = parse(sql, &Default::default()).unwrap();
        assert_eq!(c.len(), 1, "{sql}");
        c.remove(0)
    }

    #[test]
    fn session_commands_are_classified() {
        assert!(matches!(one("SET extra_float_digits = 3"),
            PgCommand::Set { name, value } if name == "extra_float_digits" && value == "3"));
        assert!(matches!(one("SET application_name TO 'grafana'"),
            PgCommand::Set { name, value } if name == "application_name" && value == "grafana"));
        assert!(matches!(one("SET basalt.workload = 'analyst'"),
            PgCommand::Set { name, value } if name == "basalt.workload" && value == "analyst"));
        assert!(matches!(one("SET TIME ZONE 'UTC'"),
            PgCommand::Set { name, value } if name == "timezone" && value == "UTC"));
        assert!(matches!(one("SHOW transaction isolation level"),
            PgCommand::Show(n) if n == "transaction_isolation"));
        assert!(matches!(one("SHOW standard_conforming_strings"),
            PgCommand::Show(n) if n == "standard_conforming_strings"));
        assert!(matches!(one("BEGIN"), PgCommand::Begin));
        assert!(matches!(
            one("START TRANSACTION READ ONLY"),
            PgCommand::Begin
        ));
        assert!(matches!(one("COMMIT"), PgCommand::Commit));
        assert!(matches!(one("ROLLBACK"), PgCommand::Rollback));
        assert!(matches!(one("DISCARD ALL"), PgCommand::Noop("DISCARD ALL")));
        assert!(matches!(one("SELECT 1"), PgCommand::Query(_, p) if p.is_empty()));
        let PgCommand::Query(_, p) = one("SELECT $2::INTEGER FROM t WHERE a = $4 LIMIT $1") else {
            panic!()
        };
        assert_eq!(p, [None, Some("INTEGER".to_string()), None, None]);
        assert_eq!(
            parse("SELECT 1; SELECT 2", &Default::default())
                .unwrap()
                .len(),
            2
        );
        assert!(parse("", &Default::default()).unwrap().is_empty());
    }

    #[test]
    fn unaliased_columns_get_postgres_names() {
        let PgCommand::Query(q, _) =
            one("SELECT count(*), max(ts), x::int, sum(a) AS s, min(a), min(b) FROM t")
        else {
            panic!()
        };
        assert_eq!(
            q.to_string(),
            "SELECT count(*) AS \"count\", max(ts) AS \"max\", x::INT AS \"x\", sum(a) AS s, min(a), min(b) FROM t"
        );
    }

    #[test]
    fn writes_are_refused_as_read_only() {
        for sql in [
            "INSERT INTO events VALUES (1)",
            "CREATE TABLE t (a int)",
            "DELETE FROM events",
        ] {
            match parse(sql, &Default::default()) {
                Err(crate::QueryError::ReadOnly(m)) => assert!(m.contains("read-only"), "{m}"),
                other => panic!("{sql}: {other:?}"),
            }
        }
    }

    #[test]
    fn settings_are_case_insensitive() {
        let mut s = PgSession::new("alice", "basalt");
        assert_eq!(s.setting("TimeZone"), Some("UTC"));
        assert_eq!(s.setting("server_version"), Some(SERVER_VERSION));
        s.set("DateStyle", "ISO, DMY");
        assert_eq!(s.setting("datestyle"), Some("ISO, DMY"));
        assert_eq!(s.setting("no_such_setting"), None);
    }
}
