//! Query handling for PostgreSQL connections: the simple protocol (`Query`, several
//! statements per message) and the extended protocol (`Parse`/`Bind`/`Describe`/`Execute`).
//! In: SQL text, bound parameters and the connection's session. Out: row descriptions and
//! rows, command tags, and ErrorResponses with SQLSTATE codes.
//!
//! A `Parse` plans the statement once to describe its result columns and infer its
//! parameter types; every `Execute` plans it again on a fresh snapshot of the tables, so a
//! prepared statement a dashboard re-runs every second sees new rows.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use basalt_query::postgres::{self, PgCommand, PgSession};
use basalt_query::{workload, QueryEngine, QueryError, QueryLimits, Workload};
use datafusion::common::ScalarValue;
use futures::{stream, Sink};
use parking_lot::Mutex;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, Type, METADATA_DATABASE, METADATA_USER};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;

use super::encode;
use super::params;
use crate::metrics::Metrics;

/// A statement of the extended protocol, as `Parse` left it.
#[derive(Debug, Clone)]
pub struct Prepared {
    command: PgCommand,
    /// Per `$n`: the type DataFusion inferred, if it could.
    inferred: Vec<Option<DataType>>,
    /// Per `$n`: the type the client is told (declared by it, else inferred, else text);
    /// binary parameters are decoded as this type.
    param_types: Vec<Type>,
    /// Result columns of queries and `SHOW` (`None`: no rows).
    schema: Option<SchemaRef>,
}

/// Settings a client's startup message carries that are not settings.
const NOT_SETTINGS: &[&str] = &["user", "database", "options", "replication"];

/// The connection's session, created from its startup parameters on first use.
fn session<C: ClientInfo + ?Sized>(client: &C) -> Arc<Mutex<PgSession>> {
    client.session_extensions().get_or_insert_with(|| {
        let meta = client.metadata();
        let user = meta
            .get(METADATA_USER)
            .cloned()
            .unwrap_or_else(|| "basalt".into());
        let database = meta
            .get(METADATA_DATABASE)
            .cloned()
            .unwrap_or_else(|| user.clone());
        let mut s = PgSession::new(user, database);
        for (k, v) in meta {
            if !NOT_SETTINGS.contains(&k.as_str()) {
                s.set(k, v.clone());
            }
        }
        Mutex::new(s)
    })
}

/// The setting with which a session accepts results that miss segments no live server
/// holds (default off: such a query fails with SQLSTATE 57P03 naming them).
pub const PARTIAL_RESULTS: &str = "basalt.allow_partial_results";

fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "1" | "yes" => Some(true),
        "off" | "false" | "0" | "no" => Some(false),
        _ => None,
    }
}

fn allows_partial(session: &PgSession) -> bool {
    session
        .settings
        .get(PARTIAL_RESULTS)
        .and_then(|v| parse_bool(v))
        .unwrap_or(false)
}

fn snapshot<C: ClientInfo + ?Sized>(client: &C) -> Arc<PgSession> {
    Arc::new(session(client).lock().clone())
}

/// The SQLSTATE of a query error, chosen from its kind.
pub fn sqlstate(e: &QueryError) -> &'static str {
    use basalt_query::ErrorKind::*;
    match e.kind() {
        Syntax => "42601",
        ReadOnly => "25006",
        UndefinedTable => "42P01",
        UndefinedColumn => "42703",
        AmbiguousColumn => "42702",
        DuplicateColumn => "42701",
        UndefinedFunction => "42883",
        InvalidQuery => "42000",
        NotSupported => "0A000",
        TooComplex => "54001",
        DivisionByZero => "22012",
        NumericOverflow => "22003",
        InvalidValue => "22P02",
        DataException => "22000",
        InvalidParameter => "22023",
        Timeout => "57014",
        RowLimit | ResponseTooLarge => "54000",
        Memory => "53200",
        Overloaded => "53300",
        Unavailable => "57P03",
        DataCorrupted => "XX001",
        Io => "58030",
        Internal => "XX000",
    }
}

/// An ErrorResponse to send (boxed: it is large).
type PgError = Box<ErrorInfo>;

fn error_info(code: &str, message: impl Into<String>) -> PgError {
    Box::new(ErrorInfo::new(
        "ERROR".to_string(),
        code.to_string(),
        message.into(),
    ))
}

fn query_error(e: &QueryError) -> PgError {
    error_info(sqlstate(e), e.to_string())
}

fn user_error(info: PgError) -> PgWireError {
    PgWireError::UserError(info)
}

/// The handlers of every PostgreSQL connection.
pub struct Backend {
    engine: QueryEngine,
    limits: QueryLimits,
    /// The `analyst` class (`SET basalt.workload = 'analyst'`).
    analyst: QueryLimits,
    metrics: Metrics,
    parser: Arc<StatementParser>,
}

impl Backend {
    pub fn new(
        engine: QueryEngine,
        limits: QueryLimits,
        analyst: QueryLimits,
        metrics: Metrics,
    ) -> Self {
        Backend {
            parser: Arc::new(StatementParser {
                engine: engine.clone(),
                limits: limits.statement,
            }),
            engine,
            limits,
            analyst,
            metrics,
        }
    }

    /// The connection's limits: the server's for its class (`basalt.workload`), with its
    /// `statement_timeout` when set (within the server's ceiling).
    fn limits(&self, session: &PgSession) -> QueryLimits {
        let workload = session
            .setting(workload::PG_SETTING)
            .and_then(|w| w.parse().ok())
            .unwrap_or_default();
        let mut l = match workload {
            Workload::Dashboard => self.limits.clone(),
            Workload::Analyst => self.analyst.clone(),
        };
        if let Some(ms) = session
            .setting("statement_timeout")
            .and_then(|v| parse_duration_ms(v).ok())
            .filter(|&ms| ms > 0)
        {
            l.timeout = self.engine.clamp_timeout(Duration::from_millis(ms));
        }
        l
    }

    /// Runs one command; `format` is the result format the client asked for.
    async fn run<C: ClientInfo + ?Sized>(
        &self,
        client: &C,
        command: &PgCommand,
        params: Vec<ScalarValue>,
        format: &Format,
    ) -> Result<Response, PgError> {
        match command {
            PgCommand::Query(statement, _) => {
                let session = snapshot(client);
                let started = Instant::now();
                let result = self
                    .engine
                    .execute_pg(statement, params, &session, &self.limits(&session))
                    .await;
                let outcome = match &result {
                    Ok(_) => "ok",
                    Err(e) => crate::metrics::outcome(e),
                };
                self.metrics
                    .queries
                    .with_label_values(&["postgres", outcome])
                    .inc();
                self.metrics
                    .query_seconds
                    .with_label_values(&["postgres", outcome])
                    .observe(started.elapsed().as_secs_f64());
                let mut out = result.map_err(|e| {
                    tracing::info!(error = %e, sql = %statement, "postgres query failed");
                    query_error(&e)
                })?;
                if out.stats.partial() && !allows_partial(&session) {
                    return Err(error_info(
                        "57P03",
                        format!(
                            "{} segments have no live replica, so the result would be partial: {} \
                             (SET {PARTIAL_RESULTS} = on to accept partial results)",
                            out.stats.missing_segments.len(),
                            out.stats.missing_segments.join(", ")
                        ),
                    ));
                }
                let max = self.limits.max_response_bytes;
                let mut sent = 0usize;
                let schema = out.schema.clone();
                let batches = std::mem::take(&mut out.batches);
                rows_response(&schema, &batches, format, |bytes| {
                    sent += bytes;
                    if sent > max {
                        return Err(query_error(&QueryError::ResponseTooLarge { limit: max }));
                    }
                    out.reserve(bytes).map_err(|e| query_error(&e))
                })
            }
            PgCommand::Set { name, value } => {
                if name.eq_ignore_ascii_case("statement_timeout") {
                    parse_duration_ms(value).map_err(|m| error_info("22023", m))?;
                }
                if name.eq_ignore_ascii_case(PARTIAL_RESULTS) {
                    parse_bool(value).ok_or_else(|| {
                        error_info("22023", format!("{PARTIAL_RESULTS} must be on or off"))
                    })?;
                }
                if name.eq_ignore_ascii_case(workload::PG_SETTING) {
                    value
                        .parse::<Workload>()
                        .map_err(|e| error_info("22023", e.to_string()))?;
                }
                session(client).lock().set(name, value.clone());
                Ok(Response::Execution(Tag::new("SET")))
            }
            PgCommand::Show(name) => {
                let (schema, batch) = show(&session(client).lock(), name)?;
                rows_response(&schema, &[batch], format, |_| Ok(()))
            }
            PgCommand::Begin => Ok(Response::TransactionStart(Tag::new("BEGIN"))),
            PgCommand::Commit => Ok(Response::TransactionEnd(Tag::new("COMMIT"))),
            PgCommand::Rollback => Ok(Response::TransactionEnd(Tag::new("ROLLBACK"))),
            PgCommand::Noop(tag) => Ok(Response::Execution(Tag::new(tag))),
        }
    }
}

/// Encodes `batches` as rows; `budget` sees each batch's bytes and may refuse them.
fn rows_response(
    schema: &Schema,
    batches: &[RecordBatch],
    format: &Format,
    budget: impl FnMut(usize) -> Result<(), PgError>,
) -> Result<Response, PgError> {
    let fields = Arc::new(encode::fields(schema, format));
    let mut budget = budget;
    let rows =
        encode::rows(batches, &fields, |bytes| budget(bytes).map_err(user_error)).map_err(|e| {
            match e {
                PgWireError::UserError(info) => info,
                e => error_info("XX000", format!("encoding the result: {e}")),
            }
        })?;
    Ok(Response::Query(QueryResponse::new(
        fields,
        stream::iter(rows.into_iter().map(Ok)),
    )))
}

/// `statement_timeout` values as PostgreSQL takes them: milliseconds, or with a unit (`us`,
/// `ms`, `s`, `min`, `h`, `d`), at most 2147483647 ms.
fn parse_duration_ms(v: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "invalid value for parameter \"statement_timeout\": \"{v}\" (a duration up to 2147483647 ms)"
        )
    };
    let t = v.trim().trim_matches('\'').trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let ms = match unit.trim() {
        "us" => Some(n / 1000),
        "" | "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "min" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => None,
    };
    ms.filter(|&ms| ms <= i32::MAX as u64).ok_or_else(bad)
}

fn show_schema(name: &str) -> SchemaRef {
    if name == "all" {
        Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, false),
            Field::new("setting", DataType::Utf8, false),
            Field::new("description", DataType::Utf8, false),
        ]))
    } else {
        Arc::new(Schema::new(vec![Field::new(name, DataType::Utf8, false)]))
    }
}

/// `SHOW name` / `SHOW ALL` as a result.
fn show(session: &PgSession, name: &str) -> Result<(SchemaRef, RecordBatch), PgError> {
    let schema = show_schema(name);
    let columns: Vec<ArrayRef> = if name == "all" {
        let names: Vec<&str> = session.settings.keys().map(String::as_str).collect();
        let values: Vec<&str> = session.settings.values().map(String::as_str).collect();
        vec![
            Arc::new(StringArray::from(names)),
            Arc::new(StringArray::from(values)),
            Arc::new(StringArray::from(vec![""; session.settings.len()])),
        ]
    } else {
        let value = session.setting(name).ok_or_else(|| {
            error_info(
                "42704",
                format!("unrecognized configuration parameter \"{name}\""),
            )
        })?;
        vec![Arc::new(StringArray::from(vec![value]))]
    };
    let batch = RecordBatch::try_new(schema.clone(), columns)
        .map_err(|e| error_info("XX000", e.to_string()))?;
    Ok((schema, batch))
}

/// Parses and describes statements of the extended protocol.
#[derive(Debug)]
pub struct StatementParser {
    engine: QueryEngine,
    limits: basalt_query::StatementLimits,
}

#[async_trait]
impl QueryParser for StatementParser {
    type Statement = Prepared;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        types: &[Option<Type>],
    ) -> PgWireResult<Option<Prepared>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let mut commands =
            postgres::parse(sql, &self.limits).map_err(|e| user_error(query_error(&e)))?;
        if commands.len() > 1 {
            return Err(user_error(error_info(
                "42601",
                "cannot insert multiple commands into a prepared statement",
            )));
        }
        let Some(command) = commands.pop() else {
            return Ok(None);
        };
        let (schema, mut inferred) = match &command {
            PgCommand::Query(statement, _) => {
                let (schema, inferred) = self
                    .engine
                    .describe_pg(statement, &snapshot(client))
                    .await
                    .map_err(|e| user_error(query_error(&e)))?;
                (Some(schema), inferred)
            }
            PgCommand::Show(name) => (Some(show_schema(name)), Vec::new()),
            _ => (None, Vec::new()),
        };
        // Every `$n` the client wrote is described, also those a rewrite dropped (a filter
        // over a catalog Basalt keeps empty): the client binds them all.
        let named: &[Option<String>] = match &command {
            PgCommand::Query(_, named) => named,
            _ => &[],
        };
        if inferred.len() < named.len() {
            inferred.resize(named.len(), None);
        }
        let n = inferred.len().max(types.len());
        let param_types =
            (0..n)
                .map(|i| {
                    types
                        .get(i)
                        .cloned()
                        .flatten()
                        .filter(|t| t.oid() != 0)
                        .or_else(|| {
                            inferred.get(i).cloned().flatten().map(|dt| {
                                encode::pg_wire_type(postgres::types::pg_type_of(&dt).oid)
                            })
                        })
                        // Dropped by a rewrite: the type its cast names, if it decodes.
                        .or_else(|| {
                            let name = named.get(i)?.as_deref()?;
                            let t = encode::pg_wire_type(postgres::types::by_name(name)?.oid);
                            params::decodes(&t).then_some(t)
                        })
                        // As PostgreSQL does for a parameter nothing constrains: text.
                        // Clients that bind in binary (asyncpg) need a concrete type.
                        .unwrap_or(Type::TEXT)
                })
                .collect();
        Ok(Some(Prepared {
            command,
            inferred,
            param_types,
            schema,
        }))
    }

    fn get_parameter_types(&self, stmt: &Prepared) -> PgWireResult<Vec<Type>> {
        Ok(stmt.param_types.clone())
    }

    fn get_result_schema(
        &self,
        stmt: &Prepared,
        column_format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        Ok(match &stmt.schema {
            Some(s) => encode::fields(s, column_format.unwrap_or(&Format::UnifiedText)),
            None => Vec::new(),
        })
    }
}

#[async_trait]
impl SimpleQueryHandler for Backend {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let commands = match postgres::parse(query, &self.limits.statement) {
            Ok(c) => c,
            Err(e) => return Ok(vec![Response::Error(query_error(&e))]),
        };
        let mut out = Vec::with_capacity(commands.len());
        for c in &commands {
            match self
                .run(&*client, c, Vec::new(), &Format::UnifiedText)
                .await
            {
                Ok(r) => out.push(r),
                Err(e) => {
                    // Like PostgreSQL, the statements after a failed one do not run.
                    out.push(Response::Error(e));
                    break;
                }
            }
        }
        if out.is_empty() {
            out.push(Response::EmptyQuery);
        }
        Ok(out)
    }
}

#[async_trait]
impl ExtendedQueryHandler for Backend {
    type Statement = Prepared;
    type QueryParser = StatementParser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        self.parser.clone()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let stmt = &portal.statement.statement;
        let declared = &portal.statement.parameter_types;
        let values = (0..portal.parameter_len())
            .map(|i| {
                params::decode(
                    i,
                    portal.parameters[i].as_ref(),
                    portal.parameter_format.is_binary(i),
                    // What the client declared at Parse, else what it was told.
                    declared
                        .get(i)
                        .and_then(|t| t.as_ref())
                        .filter(|t| t.oid() != 0)
                        .or(stmt.param_types.get(i)),
                    stmt.inferred.get(i).and_then(|t| t.as_ref()),
                )
            })
            .collect::<Result<Vec<_>, params::ParamError>>()
            .map_err(|e| user_error(error_info(e.sqlstate(), e.to_string())))?;
        self.run(
            &*client,
            &stmt.command,
            values,
            &portal.result_column_format,
        )
        .await
        .map_err(user_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_carry_sqlstate_codes_from_their_kind() {
        use basalt_query::ErrorKind;
        assert_eq!(
            sqlstate(&QueryError::invalid(ErrorKind::Syntax, "x")),
            "42601"
        );
        assert_eq!(sqlstate(&QueryError::UndefinedTable("t".into())), "42P01");
        assert_eq!(
            sqlstate(&QueryError::ReadOnly("only queries".into())),
            "25006"
        );
        assert_eq!(sqlstate(&QueryError::Timeout(5)), "57014");
        assert_eq!(sqlstate(&QueryError::RowLimit(5)), "54000");
        assert_eq!(
            sqlstate(&QueryError::Overloaded {
                running: 1,
                queued: 1
            }),
            "53300"
        );
        // The same words in a message do not change the code.
        assert_eq!(
            sqlstate(&QueryError::invalid(
                ErrorKind::Internal,
                "sql parser error: table not found"
            )),
            "XX000"
        );
    }

    #[test]
    fn statement_timeouts_parse() {
        assert_eq!(parse_duration_ms("2500"), Ok(2500));
        assert_eq!(parse_duration_ms("'5s'"), Ok(5000));
        assert_eq!(parse_duration_ms("1min"), Ok(60_000));
        assert!(parse_duration_ms("soon").is_err());
        // Huge values are refused, not overflowed.
        assert!(parse_duration_ms("99999999999999999999min").is_err());
        assert!(parse_duration_ms("307445734561825861min").is_err());
        assert!(parse_duration_ms("2147483648").is_err());
        assert_eq!(parse_duration_ms("2147483647"), Ok(2147483647));
    }
}
