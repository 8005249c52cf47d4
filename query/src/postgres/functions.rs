//! PostgreSQL's system functions, for client introspection. In: the connection's
//! [`PgSession`] and the engine's table names. Out: scalar UDFs (`version()`,
//! `current_setting()`, `current_schema()`, `pg_table_is_visible()`, `format_type()`,
//! `pg_get_userbyid()`, `to_regclass()`, privilege checks, …) registered on PostgreSQL
//! sessions only, so the Pinot HTTP surface keeps DataFusion's own `version()`.
//!
//! They run a row at a time over scalar values: they serve catalog queries of a few hundred
//! rows, never a scan of a Basalt table.

use std::any::Any;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::Array;
use arrow::datatypes::{DataType, Field};
use datafusion::common::{exec_err, ScalarValue};
use datafusion::error::Result;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature,
    Volatility,
};

use super::catalog::table_oid;
use super::types;
use super::PgSession;
use crate::table::TableSource;

type RowFn = dyn Fn(&[ScalarValue]) -> Result<ScalarValue> + Send + Sync;

/// A PostgreSQL function evaluated row by row over scalar arguments.
struct PgFunction {
    name: &'static str,
    signature: Signature,
    returns: DataType,
    f: Arc<RowFn>,
}

impl fmt::Debug for PgFunction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PgFunction({})", self.name)
    }
}

impl PartialEq for PgFunction {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}
impl Eq for PgFunction {}
impl Hash for PgFunction {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.name.hash(state)
    }
}

impl ScalarUDFImpl for PgFunction {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(self.returns.clone())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let all_scalar = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        if all_scalar {
            let values: Vec<ScalarValue> = args
                .args
                .iter()
                .map(|a| match a {
                    ColumnarValue::Scalar(s) => s.clone(),
                    ColumnarValue::Array(_) => unreachable!("checked above"),
                })
                .collect();
            return Ok(ColumnarValue::Scalar(
                (self.f)(&values)?.cast_to(&self.returns)?,
            ));
        }
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let mut out = Vec::with_capacity(args.number_rows);
        let mut row = Vec::with_capacity(arrays.len());
        for i in 0..args.number_rows {
            row.clear();
            for a in &arrays {
                row.push(ScalarValue::try_from_array(a, i)?);
            }
            out.push((self.f)(&row)?.cast_to(&self.returns)?);
        }
        if out.is_empty() {
            return Ok(ColumnarValue::Array(arrow::array::new_empty_array(
                &self.returns,
            )));
        }
        Ok(ColumnarValue::Array(ScalarValue::iter_to_array(out)?))
    }
}

fn udf(
    name: &'static str,
    args: &[usize],
    returns: DataType,
    f: impl Fn(&[ScalarValue]) -> Result<ScalarValue> + Send + Sync + 'static,
) -> ScalarUDF {
    let mut sigs: Vec<TypeSignature> = Vec::new();
    for &n in args {
        sigs.push(if n == 0 {
            TypeSignature::Nullary
        } else {
            TypeSignature::Any(n)
        });
    }
    let signature = if sigs.len() == 1 {
        Signature::new(sigs.pop().expect("one"), Volatility::Stable)
    } else {
        Signature::one_of(sigs, Volatility::Stable)
    };
    ScalarUDF::new_from_impl(PgFunction {
        name,
        signature,
        returns,
        f: Arc::new(f),
    })
}

/// The argument as text (`None` for null or a non-text value).
fn as_str(v: &ScalarValue) -> Option<&str> {
    match v {
        ScalarValue::Utf8(s) | ScalarValue::LargeUtf8(s) | ScalarValue::Utf8View(s) => s.as_deref(),
        ScalarValue::Dictionary(_, inner) => as_str(inner),
        _ => None,
    }
}

/// The argument as an integer (`None` for null or a non-integer value).
fn as_i64(v: &ScalarValue) -> Option<i64> {
    match v {
        ScalarValue::Int8(x) => x.map(i64::from),
        ScalarValue::Int16(x) => x.map(i64::from),
        ScalarValue::Int32(x) => x.map(i64::from),
        ScalarValue::Int64(x) => *x,
        ScalarValue::UInt8(x) => x.map(i64::from),
        ScalarValue::UInt16(x) => x.map(i64::from),
        ScalarValue::UInt32(x) => x.map(i64::from),
        ScalarValue::UInt64(x) => x.map(|x| x as i64),
        _ => None,
    }
}

fn utf8(s: impl Into<String>) -> ScalarValue {
    ScalarValue::Utf8(Some(s.into()))
}

fn null_text() -> ScalarValue {
    ScalarValue::Utf8(None)
}

/// `version()`: PostgreSQL's form, so clients that parse it (SQLAlchemy) see a version.
pub fn version_string() -> String {
    format!(
        "PostgreSQL {} (Basalt {}, a real-time OLAP store speaking the PostgreSQL protocol)",
        super::SERVER_VERSION,
        env!("CARGO_PKG_VERSION")
    )
}

/// Quotes an identifier when PostgreSQL would.
pub fn quote_ident(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        s.to_string()
    } else {
        format!("\"{}\"", s.replace('"', "\"\""))
    }
}

/// `pg_size_pretty(bigint)`.
fn size_pretty(n: i64) -> String {
    let units = ["bytes", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v.abs() >= 10.0 * 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{} {}", v.round() as i64, units[u])
}

/// Settings a Basalt session acts on, which only `SET` changes.
const SET_ONLY: &[&str] = &[
    "statement_timeout",
    "search_path",
    "timezone",
    "datestyle",
    "intervalstyle",
    "extra_float_digits",
    "client_encoding",
];

/// Every PostgreSQL function of a session.
pub fn all(session: &Arc<PgSession>, tables: Arc<dyn TableSource>) -> Vec<ScalarUDF> {
    let text = DataType::Utf8;
    let boolean = DataType::Boolean;
    let mut v = Vec::new();
    v.push(udf("version", &[0], text.clone(), |_| {
        Ok(utf8(version_string()))
    }));
    // `set_config(name, value, is_local)` runs inside a query, which cannot change its
    // connection's settings: it answers `value` for settings Basalt does not act on (asyncpg
    // turns `jit` off around its type lookups; Basalt has no JIT) and refuses the ones it
    // does, naming `SET` instead.
    v.push(udf("set_config", &[3], text.clone(), |a| {
        let (Some(name), value) = (as_str(&a[0]), as_str(&a[1])) else {
            return exec_err!("set_config: the setting name must be text and not null");
        };
        let lower = name.to_ascii_lowercase();
        if SET_ONLY.contains(&lower.as_str()) || lower.starts_with("basalt.") {
            return exec_err!(
                "set_config cannot change {name} inside a query; use SET {name} = ... instead"
            );
        }
        Ok(value.map(utf8).unwrap_or_else(null_text))
    }));
    let s = session.clone();
    v.push(udf("current_setting", &[1, 2], text.clone(), move |a| {
        let Some(name) = as_str(&a[0]) else {
            return Ok(null_text());
        };
        match s.setting(name) {
            Some(value) => Ok(utf8(value)),
            None if a.get(1).and_then(|m| match m {
                ScalarValue::Boolean(b) => *b,
                _ => None,
            }) == Some(true) =>
            {
                Ok(null_text())
            }
            None => exec_err!("unrecognized configuration parameter \"{name}\""),
        }
    }));
    // The PostgreSQL type a value is described as (`regtype` there; text here).
    v.push(udf("pg_typeof", &[1], text.clone(), |a| {
        let t = types::pg_type_of(&a[0].data_type());
        Ok(utf8(types::format_type(t.oid).unwrap_or(t.name)))
    }));
    v.push(udf("current_schema", &[0], text.clone(), |_| {
        Ok(utf8("public"))
    }));
    v.push(udf(
        "current_schemas",
        &[1],
        DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
        |a| {
            let implicit = matches!(a[0], ScalarValue::Boolean(Some(true)));
            let mut names = Vec::new();
            if implicit {
                names.push(utf8("pg_catalog"));
            }
            names.push(utf8("public"));
            Ok(ScalarValue::List(ScalarValue::new_list_nullable(
                &names,
                &DataType::Utf8,
            )))
        },
    ));
    let s = session.clone();
    v.push(udf("current_database", &[0], text.clone(), move |_| {
        Ok(utf8(s.database.clone()))
    }));
    v.push(udf("current_catalog", &[0], text.clone(), {
        let s = session.clone();
        move |_| Ok(utf8(s.database.clone()))
    }));
    for name in ["current_user", "session_user", "current_role", "user"] {
        let s = session.clone();
        v.push(udf(name, &[0], text.clone(), move |_| {
            Ok(utf8(s.user.clone()))
        }));
    }
    let s = session.clone();
    v.push(udf("pg_get_userbyid", &[1], text.clone(), move |_| {
        Ok(utf8(s.user.clone()))
    }));
    for name in [
        "pg_table_is_visible",
        "pg_type_is_visible",
        "pg_function_is_visible",
    ] {
        v.push(udf(name, &[1], boolean.clone(), |a| {
            Ok(ScalarValue::Boolean(as_i64(&a[0]).map(|_| true)))
        }));
    }
    for name in [
        "has_table_privilege",
        "has_schema_privilege",
        "has_database_privilege",
        "has_column_privilege",
        "has_any_column_privilege",
        "pg_has_role",
    ] {
        v.push(udf(name, &[2, 3, 4], boolean.clone(), |_| {
            Ok(ScalarValue::Boolean(Some(true)))
        }));
    }
    v.push(udf("format_type", &[2], text.clone(), |a| {
        Ok(match as_i64(&a[0]) {
            // As PostgreSQL: `-` for no type (`typelem` 0), `???` for an unknown one.
            Some(0) => utf8("-"),
            Some(oid) => utf8(types::format_type(oid as u32).unwrap_or("???")),
            None => null_text(),
        })
    }));
    // Basalt has no column defaults, comments, indexes, constraints or views.
    for (name, arities) in [
        ("pg_get_expr", &[2usize, 3][..]),
        ("obj_description", &[1, 2]),
        ("col_description", &[2]),
        ("shobj_description", &[2]),
        ("pg_get_indexdef", &[1, 3]),
        ("pg_get_constraintdef", &[1, 2]),
        ("pg_get_viewdef", &[1, 2]),
        ("pg_get_triggerdef", &[1, 2]),
        ("pg_get_partkeydef", &[1]),
        ("pg_get_serial_sequence", &[2]),
        ("pg_tablespace_location", &[1]),
    ] {
        v.push(udf(name, arities, text.clone(), |_| Ok(null_text())));
    }
    v.push(udf("pg_encoding_to_char", &[1], text.clone(), |_| {
        Ok(utf8("UTF8"))
    }));
    v.push(udf(
        "pg_relation_is_publishable",
        &[1],
        boolean.clone(),
        |_| Ok(ScalarValue::Boolean(Some(false))),
    ));
    v.push(udf("pg_is_in_recovery", &[0], boolean.clone(), |_| {
        Ok(ScalarValue::Boolean(Some(false)))
    }));
    v.push(udf("pg_backend_pid", &[0], DataType::Int32, |_| {
        Ok(ScalarValue::Int32(Some(std::process::id() as i32)))
    }));
    v.push(udf("txid_current", &[0], DataType::Int64, |_| {
        Ok(ScalarValue::Int64(Some(1)))
    }));
    v.push(udf("quote_ident", &[1], text.clone(), |a| {
        Ok(as_str(&a[0])
            .map(|s| utf8(quote_ident(s)))
            .unwrap_or_else(null_text))
    }));
    v.push(udf("pg_size_pretty", &[1], text.clone(), |a| {
        Ok(as_i64(&a[0])
            .map(|n| utf8(size_pretty(n)))
            .unwrap_or_else(null_text))
    }));
    // `'events'::regclass` and `to_regclass('events')`: a table's OID from its name. The
    // cast form fails on an unknown table, as in PostgreSQL; `to_regclass` answers null.
    let known = tables.clone();
    v.push(udf("to_regclass", &[1], DataType::UInt32, move |a| {
        Ok(ScalarValue::UInt32(
            regclass(&a[0], &known.table_names()).ok().flatten(),
        ))
    }));
    let known = tables;
    v.push(udf(
        super::rewrite::REGCLASS_FN,
        &[1],
        DataType::UInt32,
        move |a| match regclass(&a[0], &known.table_names()) {
            Ok(v) => Ok(ScalarValue::UInt32(v)),
            Err(name) => exec_err!("relation \"{name}\" does not exist"),
        },
    ));
    // `'int4'::regtype` fails on an unknown type name, as in PostgreSQL; `to_regtype`
    // (psycopg 3's type lookup) answers null.
    v.push(udf(
        super::rewrite::REGTYPE_FN,
        &[1],
        DataType::UInt32,
        |a| match regtype(&a[0]) {
            Ok(oid) => Ok(ScalarValue::UInt32(oid)),
            Err(name) => exec_err!("type \"{name}\" does not exist"),
        },
    ));
    v.push(udf("to_regtype", &[1], DataType::UInt32, |a| {
        Ok(ScalarValue::UInt32(regtype(&a[0]).ok().flatten()))
    }));
    v.push(udf(
        "parse_ident",
        &[1, 2],
        DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
        |a| {
            let Some(s) = as_str(&a[0]) else {
                return Ok(ScalarValue::List(ScalarValue::new_list_nullable(
                    &[],
                    &DataType::Utf8,
                )));
            };
            let parts: Vec<ScalarValue> = parse_ident(s).into_iter().map(utf8).collect();
            Ok(ScalarValue::List(ScalarValue::new_list_nullable(
                &parts,
                &DataType::Utf8,
            )))
        },
    ));
    // 64-bit (PostgreSQL's are int4) so that `generate_series(1, array_upper(a, 1))`, which
    // pgjdbc's type cache runs, plans: DataFusion's generate_series takes int8 bounds.
    v.push(udf("array_lower", &[2], DataType::Int64, |a| {
        Ok(ScalarValue::Int64(
            list_len(&a[0]).filter(|&n| n > 0).map(|_| 1),
        ))
    }));
    v.push(udf("array_upper", &[2], DataType::Int64, |a| {
        Ok(ScalarValue::Int64(
            list_len(&a[0]).filter(|&n| n > 0).map(|n| n as i64),
        ))
    }));
    v
}

/// A type's OID from an OID or a type name (`int4`, `integer`, `pg_catalog.text`,
/// `character varying`, `text[]`): `Ok(None)` for null, `Err(name)` for an unknown name.
fn regtype(v: &ScalarValue) -> std::result::Result<Option<u32>, String> {
    if let Some(n) = as_i64(v) {
        return Ok(u32::try_from(n).ok());
    }
    match as_str(v) {
        None => Ok(None),
        Some(name) => types::by_name(name.trim_matches('"'))
            .map(|t| Some(t.oid))
            .ok_or_else(|| name.to_string()),
    }
}

/// `parse_ident('public."My Table"')` → `["public", "My Table"]`: dots split, quotes keep
/// case and dots, unquoted parts are lowercased.
fn parse_ident(s: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                cur.push('"');
            }
            '"' => quoted = !quoted,
            '.' if !quoted => parts.push(std::mem::take(&mut cur)),
            c if quoted => cur.push(c),
            c => cur.push(c.to_ascii_lowercase()),
        }
    }
    parts.push(cur);
    parts
}

fn list_len(v: &ScalarValue) -> Option<usize> {
    match v {
        ScalarValue::List(l) if l.is_valid(0) => Some(l.value_length(0) as usize),
        _ => None,
    }
}

/// A table's OID from its (optionally `public.`-qualified, optionally quoted) name, or an
/// OID passed through; `Err(name)` for an unknown name.
fn regclass(v: &ScalarValue, tables: &[String]) -> Result<Option<u32>, String> {
    if let Some(n) = as_i64(v) {
        return Ok(Some(n as u32));
    }
    let Some(name) = as_str(v) else {
        return Ok(None);
    };
    let bare = name
        .strip_prefix("public.")
        .or_else(|| name.strip_prefix("pg_catalog."))
        .unwrap_or(name)
        .trim_matches('"');
    if tables.iter().any(|t| t == bare) || super::catalog::is_catalog_table(bare) {
        Ok(Some(table_oid(bare)))
    } else {
        Err(name.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_like_postgres() {
        assert_eq!(quote_ident("events"), "events");
        assert_eq!(quote_ident("Events"), "\"Events\"");
        assert_eq!(quote_ident("events$quarantine"), "\"events$quarantine\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(size_pretty(512), "512 bytes");
        assert_eq!(size_pretty(20 * 1024 * 1024), "20 MB");
        assert_eq!(parse_ident("public.events"), ["public", "events"]);
        assert_eq!(parse_ident("\"My.T\"\"x\""), ["My.T\"x"]);
        assert_eq!(parse_ident("Events"), ["events"]);
    }
}
