//! `pg_catalog` for PostgreSQL clients. In: the engine's tables (names and schemas) and the
//! connection's session (user, database, settings). Out: a DataFusion schema whose tables
//! (`pg_namespace`, `pg_class`, `pg_attribute`, `pg_type`, `pg_database`, `pg_settings`, …)
//! describe Basalt's tables the way psql, psycopg, SQLAlchemy and Grafana look them up.
//!
//! Each table is built when a query names it, from the tables as they are at that moment.
//! Catalogs Basalt has nothing for (indexes, constraints, triggers, …) exist with
//! PostgreSQL's columns and no rows, so the clients' joins against them plan and return
//! nothing extra. Table OIDs are a stable hash of the table name.

use std::any::Any;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::datasource::MemTable;
use datafusion::error::Result as DfResult;

use super::types::{self, pg_type_of};
use super::PgSession;
use crate::table::TableSource;

/// OID of the `pg_catalog` namespace.
pub const PG_CATALOG_OID: u32 = 11;
/// OID of the `public` namespace, where every Basalt table lives.
pub const PUBLIC_OID: u32 = 2200;
/// OID of `information_schema`.
pub const INFORMATION_SCHEMA_OID: u32 = 13_000;
/// OID of the one role, the connected user.
pub const ROLE_OID: u32 = 10;
/// OID of the database the client connected to.
pub const DATABASE_OID: u32 = 16_384;

/// The OID of a Basalt table: FNV-1a of its name, above PostgreSQL's reserved range.
pub fn table_oid(name: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    20_000 + h % 2_000_000_000
}

/// Column types of catalog tables.
#[derive(Clone, Copy)]
enum T {
    Oid,
    Text,
    Bool,
    I16,
    I32,
    I64,
    F32,
    TextList,
    I16List,
}

impl T {
    fn arrow(self) -> DataType {
        let list = |dt| DataType::List(Arc::new(Field::new("item", dt, true)));
        match self {
            T::Oid => DataType::UInt32,
            T::Text => DataType::Utf8,
            T::Bool => DataType::Boolean,
            T::I16 => DataType::Int16,
            T::I32 => DataType::Int32,
            T::I64 => DataType::Int64,
            T::F32 => DataType::Float32,
            T::TextList => list(DataType::Utf8),
            T::I16List => list(DataType::Int16),
        }
    }

    /// The value a row that does not name this column gets: `false`, `0`, or null for text
    /// and lists (PostgreSQL's defaults for the columns clients filter on).
    fn default_value(self) -> ScalarValue {
        match self {
            T::Oid => ScalarValue::UInt32(Some(0)),
            T::Bool => ScalarValue::Boolean(Some(false)),
            T::I16 => ScalarValue::Int16(Some(0)),
            T::I32 => ScalarValue::Int32(Some(0)),
            T::I64 => ScalarValue::Int64(Some(0)),
            T::F32 => ScalarValue::Float32(Some(0.0)),
            other => ScalarValue::try_from(other.arrow()).unwrap_or(ScalarValue::Null),
        }
    }
}

/// A cell value in a catalog row.
fn oid(v: u32) -> ScalarValue {
    ScalarValue::UInt32(Some(v))
}
fn text(v: impl Into<String>) -> ScalarValue {
    ScalarValue::Utf8(Some(v.into()))
}
fn boolean(v: bool) -> ScalarValue {
    ScalarValue::Boolean(Some(v))
}
fn i16v(v: i16) -> ScalarValue {
    ScalarValue::Int16(Some(v))
}
fn i32v(v: i32) -> ScalarValue {
    ScalarValue::Int32(Some(v))
}

type Row = Vec<(&'static str, ScalarValue)>;
/// A catalog table's columns.
type Columns = &'static [(&'static str, T)];

/// Builds a one-batch table from a column list and rows naming some of the columns.
fn build(columns: &[(&'static str, T)], rows: Vec<Row>) -> DfResult<Arc<dyn TableProvider>> {
    let schema: SchemaRef = Arc::new(Schema::new(
        columns
            .iter()
            .map(|(n, t)| Field::new(*n, t.arrow(), true))
            .collect::<Vec<_>>(),
    ));
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(columns.len());
    for (name, ty) in columns {
        let values = rows.iter().map(|row| {
            row.iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| ty.default_value())
        });
        let array = if rows.is_empty() {
            arrow::array::new_empty_array(&ty.arrow())
        } else {
            let a = ScalarValue::iter_to_array(values)?;
            if a.data_type() != &ty.arrow() {
                arrow::compute::cast(&a, &ty.arrow())?
            } else {
                a
            }
        };
        arrays.push(array);
    }
    let batch = RecordBatch::try_new(schema.clone(), arrays)?;
    Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
}

const NAMESPACE: &[(&str, T)] = &[
    ("oid", T::Oid),
    ("nspname", T::Text),
    ("nspowner", T::Oid),
    ("nspacl", T::TextList),
];

const CLASS: &[(&str, T)] = &[
    ("oid", T::Oid),
    ("relname", T::Text),
    ("relnamespace", T::Oid),
    ("reltype", T::Oid),
    ("reloftype", T::Oid),
    ("relowner", T::Oid),
    ("relam", T::Oid),
    ("relfilenode", T::Oid),
    ("reltablespace", T::Oid),
    ("relpages", T::I32),
    ("reltuples", T::F32),
    ("relallvisible", T::I32),
    ("reltoastrelid", T::Oid),
    ("relhasindex", T::Bool),
    ("relisshared", T::Bool),
    ("relpersistence", T::Text),
    ("relkind", T::Text),
    ("relnatts", T::I16),
    ("relchecks", T::I16),
    ("relhasrules", T::Bool),
    ("relhastriggers", T::Bool),
    ("relhassubclass", T::Bool),
    ("relrowsecurity", T::Bool),
    ("relforcerowsecurity", T::Bool),
    ("relispopulated", T::Bool),
    ("relreplident", T::Text),
    ("relispartition", T::Bool),
    ("relrewrite", T::Oid),
    ("reloptions", T::TextList),
    ("relacl", T::TextList),
    ("relpartbound", T::Text),
];

const ATTRIBUTE: &[(&str, T)] = &[
    ("attrelid", T::Oid),
    ("attname", T::Text),
    ("atttypid", T::Oid),
    ("attstattarget", T::I32),
    ("attlen", T::I16),
    ("attnum", T::I16),
    ("attndims", T::I32),
    ("attcacheoff", T::I32),
    ("atttypmod", T::I32),
    ("attbyval", T::Bool),
    ("attalign", T::Text),
    ("attstorage", T::Text),
    ("attcompression", T::Text),
    ("attnotnull", T::Bool),
    ("atthasdef", T::Bool),
    ("atthasmissing", T::Bool),
    ("attidentity", T::Text),
    ("attgenerated", T::Text),
    ("attisdropped", T::Bool),
    ("attislocal", T::Bool),
    ("attinhcount", T::I32),
    ("attcollation", T::Oid),
    ("attacl", T::TextList),
    ("attoptions", T::TextList),
    ("attfdwoptions", T::TextList),
];

const TYPE: &[(&str, T)] = &[
    ("oid", T::Oid),
    ("typname", T::Text),
    ("typnamespace", T::Oid),
    ("typowner", T::Oid),
    ("typlen", T::I16),
    ("typbyval", T::Bool),
    ("typtype", T::Text),
    ("typcategory", T::Text),
    ("typispreferred", T::Bool),
    ("typisdefined", T::Bool),
    ("typdelim", T::Text),
    ("typrelid", T::Oid),
    ("typsubscript", T::Text),
    ("typelem", T::Oid),
    ("typarray", T::Oid),
    ("typinput", T::Text),
    ("typoutput", T::Text),
    ("typreceive", T::Text),
    ("typsend", T::Text),
    ("typalign", T::Text),
    ("typstorage", T::Text),
    ("typnotnull", T::Bool),
    ("typbasetype", T::Oid),
    ("typtypmod", T::I32),
    ("typndims", T::I32),
    ("typcollation", T::Oid),
    ("typdefault", T::Text),
    ("typacl", T::TextList),
];

const DATABASE: &[(&str, T)] = &[
    ("oid", T::Oid),
    ("datname", T::Text),
    ("datdba", T::Oid),
    ("encoding", T::I32),
    ("datlocprovider", T::Text),
    ("datistemplate", T::Bool),
    ("datallowconn", T::Bool),
    ("datconnlimit", T::I32),
    ("dattablespace", T::Oid),
    ("datcollate", T::Text),
    ("datctype", T::Text),
    ("daticulocale", T::Text),
    ("datacl", T::TextList),
];

const SETTINGS: &[(&str, T)] = &[
    ("name", T::Text),
    ("setting", T::Text),
    ("unit", T::Text),
    ("category", T::Text),
    ("short_desc", T::Text),
    ("context", T::Text),
    ("vartype", T::Text),
    ("source", T::Text),
    ("boot_val", T::Text),
    ("reset_val", T::Text),
];

const ROLES: &[(&str, T)] = &[
    ("oid", T::Oid),
    ("rolname", T::Text),
    ("rolsuper", T::Bool),
    ("rolinherit", T::Bool),
    ("rolcreaterole", T::Bool),
    ("rolcreatedb", T::Bool),
    ("rolcanlogin", T::Bool),
    ("rolreplication", T::Bool),
    ("rolconnlimit", T::I32),
    ("rolpassword", T::Text),
    ("rolvaliduntil", T::Text),
    ("rolbypassrls", T::Bool),
    ("rolconfig", T::TextList),
];

const USER: &[(&str, T)] = &[
    ("usename", T::Text),
    ("usesysid", T::Oid),
    ("usecreatedb", T::Bool),
    ("usesuper", T::Bool),
    ("userepl", T::Bool),
    ("usebypassrls", T::Bool),
    ("passwd", T::Text),
    ("valuntil", T::Text),
    ("useconfig", T::TextList),
];

const TABLES: &[(&str, T)] = &[
    ("schemaname", T::Text),
    ("tablename", T::Text),
    ("tableowner", T::Text),
    ("tablespace", T::Text),
    ("hasindexes", T::Bool),
    ("hasrules", T::Bool),
    ("hastriggers", T::Bool),
    ("rowsecurity", T::Bool),
];

const AM: &[(&str, T)] = &[
    ("oid", T::Oid),
    ("amname", T::Text),
    ("amhandler", T::Text),
    ("amtype", T::Text),
];

/// Catalogs with PostgreSQL's columns and, in Basalt, no rows.
const EMPTY: &[(&str, &[(&str, T)])] = &[
    (
        "pg_index",
        &[
            ("indexrelid", T::Oid),
            ("indrelid", T::Oid),
            ("indnatts", T::I16),
            ("indnkeyatts", T::I16),
            ("indisunique", T::Bool),
            ("indnullsnotdistinct", T::Bool),
            ("indisprimary", T::Bool),
            ("indisexclusion", T::Bool),
            ("indimmediate", T::Bool),
            ("indisclustered", T::Bool),
            ("indisvalid", T::Bool),
            ("indcheckxmin", T::Bool),
            ("indisready", T::Bool),
            ("indislive", T::Bool),
            ("indisreplident", T::Bool),
            ("indkey", T::I16List),
            ("indcollation", T::TextList),
            ("indclass", T::TextList),
            ("indoption", T::I16List),
            ("indexprs", T::Text),
            ("indpred", T::Text),
        ],
    ),
    (
        "pg_constraint",
        &[
            ("oid", T::Oid),
            ("conname", T::Text),
            ("connamespace", T::Oid),
            ("contype", T::Text),
            ("condeferrable", T::Bool),
            ("condeferred", T::Bool),
            ("convalidated", T::Bool),
            ("conrelid", T::Oid),
            ("contypid", T::Oid),
            ("conindid", T::Oid),
            ("conparentid", T::Oid),
            ("confrelid", T::Oid),
            ("confupdtype", T::Text),
            ("confdeltype", T::Text),
            ("confmatchtype", T::Text),
            ("conislocal", T::Bool),
            ("coninhcount", T::I32),
            ("connoinherit", T::Bool),
            ("conkey", T::I16List),
            ("confkey", T::I16List),
            ("conbin", T::Text),
        ],
    ),
    (
        "pg_description",
        &[
            ("objoid", T::Oid),
            ("classoid", T::Oid),
            ("objsubid", T::I32),
            ("description", T::Text),
        ],
    ),
    (
        "pg_shdescription",
        &[
            ("objoid", T::Oid),
            ("classoid", T::Oid),
            ("description", T::Text),
        ],
    ),
    (
        "pg_attrdef",
        &[
            ("oid", T::Oid),
            ("adrelid", T::Oid),
            ("adnum", T::I16),
            ("adbin", T::Text),
        ],
    ),
    (
        // pgcli's function completion joins it (extension membership).
        "pg_depend",
        &[
            ("classid", T::Oid),
            ("objid", T::Oid),
            ("objsubid", T::I32),
            ("refclassid", T::Oid),
            ("refobjid", T::Oid),
            ("refobjsubid", T::I32),
            ("deptype", T::Text),
        ],
    ),
    (
        "pg_inherits",
        &[
            ("inhrelid", T::Oid),
            ("inhparent", T::Oid),
            ("inhseqno", T::I32),
            ("inhdetachpending", T::Bool),
        ],
    ),
    (
        "pg_trigger",
        &[
            ("oid", T::Oid),
            ("tgrelid", T::Oid),
            ("tgparentid", T::Oid),
            ("tgname", T::Text),
            ("tgfoid", T::Oid),
            ("tgtype", T::I16),
            ("tgenabled", T::Text),
            ("tgisinternal", T::Bool),
        ],
    ),
    (
        "pg_rewrite",
        &[
            ("oid", T::Oid),
            ("rulename", T::Text),
            ("ev_class", T::Oid),
            ("ev_type", T::Text),
            ("ev_enabled", T::Text),
            ("is_instead", T::Bool),
        ],
    ),
    (
        "pg_policy",
        &[
            ("oid", T::Oid),
            ("polname", T::Text),
            ("polrelid", T::Oid),
            ("polcmd", T::Text),
            ("polpermissive", T::Bool),
            ("polroles", T::TextList),
            ("polqual", T::Text),
            ("polwithcheck", T::Text),
        ],
    ),
    (
        "pg_statistic_ext",
        &[
            ("oid", T::Oid),
            ("stxrelid", T::Oid),
            ("stxname", T::Text),
            ("stxnamespace", T::Oid),
            ("stxowner", T::Oid),
            ("stxstattarget", T::I32),
            ("stxkeys", T::I16List),
            ("stxkind", T::TextList),
        ],
    ),
    (
        "pg_publication",
        &[
            ("oid", T::Oid),
            ("pubname", T::Text),
            ("pubowner", T::Oid),
            ("puballtables", T::Bool),
            ("pubinsert", T::Bool),
            ("pubupdate", T::Bool),
            ("pubdelete", T::Bool),
            ("pubtruncate", T::Bool),
            ("pubviaroot", T::Bool),
        ],
    ),
    (
        "pg_publication_rel",
        &[("oid", T::Oid), ("prpubid", T::Oid), ("prrelid", T::Oid)],
    ),
    (
        "pg_publication_namespace",
        &[("oid", T::Oid), ("pnpubid", T::Oid), ("pnnspid", T::Oid)],
    ),
    (
        "pg_publication_tables",
        &[
            ("pubname", T::Text),
            ("schemaname", T::Text),
            ("tablename", T::Text),
        ],
    ),
    (
        "pg_subscription",
        &[("oid", T::Oid), ("subname", T::Text), ("subowner", T::Oid)],
    ),
    (
        "pg_opclass",
        &[
            ("oid", T::Oid),
            ("opcmethod", T::Oid),
            ("opcname", T::Text),
            ("opcnamespace", T::Oid),
            ("opcdefault", T::Bool),
            ("opcintype", T::Oid),
        ],
    ),
    (
        "pg_operator",
        &[
            ("oid", T::Oid),
            ("oprname", T::Text),
            ("oprnamespace", T::Oid),
            ("oprleft", T::Oid),
            ("oprright", T::Oid),
            ("oprresult", T::Oid),
        ],
    ),
    (
        "pg_stat_activity",
        &[
            ("datid", T::Oid),
            ("datname", T::Text),
            ("pid", T::I32),
            ("usename", T::Text),
            ("application_name", T::Text),
            ("state", T::Text),
            ("query", T::Text),
        ],
    ),
    (
        "pg_proc",
        &[
            ("oid", T::Oid),
            ("proname", T::Text),
            ("pronamespace", T::Oid),
            ("proowner", T::Oid),
            ("prokind", T::Text),
            ("prorettype", T::Oid),
            ("proargtypes", T::TextList),
            ("proretset", T::Bool),
            // What pgcli's and DBeaver's function lists read.
            ("proargnames", T::TextList),
            ("proallargtypes", T::TextList),
            ("proargmodes", T::TextList),
            ("proargdefaults", T::Text),
            ("pronargs", T::I16),
            ("pronargdefaults", T::I16),
            ("prolang", T::Oid),
            ("prosrc", T::Text),
            ("provolatile", T::Text),
            ("proisstrict", T::Bool),
            ("proisagg", T::Bool),
            ("proiswindow", T::Bool),
        ],
    ),
    (
        "pg_enum",
        &[
            ("oid", T::Oid),
            ("enumtypid", T::Oid),
            ("enumsortorder", T::F32),
            ("enumlabel", T::Text),
        ],
    ),
    (
        "pg_collation",
        &[
            ("oid", T::Oid),
            ("collname", T::Text),
            ("collnamespace", T::Oid),
            ("collowner", T::Oid),
            ("collprovider", T::Text),
            ("collencoding", T::I32),
            ("collcollate", T::Text),
            ("collctype", T::Text),
        ],
    ),
    (
        "pg_extension",
        &[
            ("oid", T::Oid),
            ("extname", T::Text),
            ("extowner", T::Oid),
            ("extnamespace", T::Oid),
            ("extrelocatable", T::Bool),
            ("extversion", T::Text),
        ],
    ),
    (
        "pg_foreign_table",
        &[
            ("ftrelid", T::Oid),
            ("ftserver", T::Oid),
            ("ftoptions", T::TextList),
        ],
    ),
    (
        "pg_partitioned_table",
        &[
            ("partrelid", T::Oid),
            ("partstrat", T::Text),
            ("partnatts", T::I16),
            ("partdefid", T::Oid),
            ("partattrs", T::I16List),
        ],
    ),
    (
        "pg_range",
        &[
            ("rngtypid", T::Oid),
            ("rngsubtype", T::Oid),
            ("rngmultitypid", T::Oid),
        ],
    ),
    (
        "pg_sequence",
        &[
            ("seqrelid", T::Oid),
            ("seqtypid", T::Oid),
            ("seqstart", T::I64),
        ],
    ),
    (
        "pg_views",
        &[
            ("schemaname", T::Text),
            ("viewname", T::Text),
            ("viewowner", T::Text),
            ("definition", T::Text),
        ],
    ),
    (
        "pg_matviews",
        &[
            ("schemaname", T::Text),
            ("matviewname", T::Text),
            ("matviewowner", T::Text),
            ("tablespace", T::Text),
            ("hasindexes", T::Bool),
            ("ispopulated", T::Bool),
            ("definition", T::Text),
        ],
    ),
    (
        "pg_indexes",
        &[
            ("schemaname", T::Text),
            ("tablename", T::Text),
            ("indexname", T::Text),
            ("tablespace", T::Text),
            ("indexdef", T::Text),
        ],
    ),
    (
        "pg_tablespace",
        &[("oid", T::Oid), ("spcname", T::Text), ("spcowner", T::Oid)],
    ),
];

/// Whether `pg_catalog.<name>` never has rows in Basalt (no indexes, constraints, defaults,
/// comments, collations, …).
pub fn always_empty(name: &str) -> bool {
    EMPTY.iter().any(|(n, _)| *n == name)
}

/// Whether `pg_catalog.<name>` exists.
pub fn is_catalog_table(name: &str) -> bool {
    BUILT.contains(&name) || always_empty(name)
}

/// The `pg_catalog` schema of one query.
#[derive(Debug)]
pub struct PgCatalog {
    pub(crate) source: Arc<dyn TableSource>,
    pub(crate) session: Arc<PgSession>,
}

const BUILT: &[&str] = &[
    "pg_namespace",
    "pg_class",
    "pg_attribute",
    "pg_type",
    "pg_database",
    "pg_settings",
    "pg_roles",
    "pg_authid",
    "pg_user",
    "pg_tables",
    "pg_am",
];

impl PgCatalog {
    /// `(name, arrow schema)` of every Basalt table, by name.
    fn user_tables(&self) -> Vec<(String, SchemaRef)> {
        let mut names = self.source.table_names();
        names.sort();
        names
            .into_iter()
            .filter_map(|n| {
                let s = self.source.schema(&n)?;
                Some((n, s.arrow_schema()))
            })
            .collect()
    }

    fn rows(&self, name: &str) -> Option<(Columns, Vec<Row>)> {
        let user = self.session.user.clone();
        Some(match name {
            "pg_namespace" => (
                NAMESPACE,
                vec![
                    vec![
                        ("oid", oid(PG_CATALOG_OID)),
                        ("nspname", text("pg_catalog")),
                        ("nspowner", oid(ROLE_OID)),
                    ],
                    vec![
                        ("oid", oid(PUBLIC_OID)),
                        ("nspname", text("public")),
                        ("nspowner", oid(ROLE_OID)),
                    ],
                    vec![
                        ("oid", oid(INFORMATION_SCHEMA_OID)),
                        ("nspname", text("information_schema")),
                        ("nspowner", oid(ROLE_OID)),
                    ],
                ],
            ),
            "pg_class" => (
                CLASS,
                self.user_tables()
                    .into_iter()
                    .map(|(n, schema)| {
                        vec![
                            ("oid", oid(table_oid(&n))),
                            ("relname", text(n)),
                            ("relnamespace", oid(PUBLIC_OID)),
                            ("relowner", oid(ROLE_OID)),
                            ("relam", oid(2)),
                            ("relpersistence", text("p")),
                            ("relkind", text("r")),
                            ("relnatts", i16v(schema.fields().len() as i16)),
                            ("relispopulated", boolean(true)),
                            ("relreplident", text("d")),
                            ("reltuples", ScalarValue::Float32(Some(-1.0))),
                        ]
                    })
                    .collect(),
            ),
            "pg_attribute" => (ATTRIBUTE, {
                let mut rows = Vec::new();
                for (n, schema) in self.user_tables() {
                    let rel = table_oid(&n);
                    for (i, f) in schema.fields().iter().enumerate() {
                        let ty = pg_type_of(f.data_type());
                        rows.push(vec![
                            ("attrelid", oid(rel)),
                            ("attname", text(f.name().clone())),
                            ("atttypid", oid(ty.oid)),
                            ("attstattarget", i32v(-1)),
                            ("attlen", i16v(ty.len)),
                            ("attnum", i16v(i as i16 + 1)),
                            ("attndims", i32v(if ty.category == 'A' { 1 } else { 0 })),
                            ("attcacheoff", i32v(-1)),
                            ("atttypmod", i32v(-1)),
                            ("attbyval", boolean(ty.len > 0 && ty.len <= 8)),
                            ("attalign", text("i")),
                            ("attstorage", text(if ty.len < 0 { "x" } else { "p" })),
                            ("attcompression", text("")),
                            ("attnotnull", boolean(!f.is_nullable())),
                            ("attidentity", text("")),
                            ("attgenerated", text("")),
                            ("attislocal", boolean(true)),
                            (
                                "attcollation",
                                oid(if ty.category == 'S' { 100 } else { 0 }),
                            ),
                        ]);
                    }
                }
                rows
            }),
            "pg_type" => (
                TYPE,
                types::ALL
                    .iter()
                    .map(|t| {
                        vec![
                            ("oid", oid(t.oid)),
                            ("typname", text(t.name)),
                            ("typnamespace", oid(PG_CATALOG_OID)),
                            ("typowner", oid(ROLE_OID)),
                            ("typlen", i16v(t.len)),
                            ("typbyval", boolean(t.len > 0 && t.len <= 8)),
                            ("typtype", text(if t.oid == 705 { "p" } else { "b" })),
                            ("typcategory", text(t.category.to_string())),
                            ("typisdefined", boolean(true)),
                            ("typdelim", text(",")),
                            ("typelem", oid(t.elem)),
                            ("typarray", oid(t.array)),
                            // Array types share PostgreSQL's `array_in`, `array_out`, …
                            ("typinput", text(format!("{}in", io_prefix(t)))),
                            ("typoutput", text(format!("{}out", io_prefix(t)))),
                            ("typreceive", text(format!("{}recv", io_prefix(t)))),
                            ("typsend", text(format!("{}send", io_prefix(t)))),
                            ("typalign", text("i")),
                            ("typstorage", text(if t.len < 0 { "x" } else { "p" })),
                            ("typtypmod", i32v(-1)),
                            ("typcollation", oid(if t.category == 'S' { 100 } else { 0 })),
                        ]
                    })
                    .collect(),
            ),
            "pg_database" => (
                DATABASE,
                vec![vec![
                    ("oid", oid(DATABASE_OID)),
                    ("datname", text(self.session.database.clone())),
                    ("datdba", oid(ROLE_OID)),
                    ("encoding", i32v(6)),
                    ("datlocprovider", text("c")),
                    ("datallowconn", boolean(true)),
                    ("datconnlimit", i32v(-1)),
                    ("dattablespace", oid(1663)),
                    ("datcollate", text("C")),
                    ("datctype", text("C")),
                ]],
            ),
            "pg_settings" => (
                SETTINGS,
                self.session
                    .settings
                    .iter()
                    .map(|(k, v)| {
                        vec![
                            ("name", text(k.clone())),
                            ("setting", text(v.clone())),
                            ("category", text("Basalt")),
                            ("context", text("user")),
                            ("vartype", text("string")),
                            ("source", text("session")),
                            ("boot_val", text(v.clone())),
                            ("reset_val", text(v.clone())),
                        ]
                    })
                    .collect(),
            ),
            "pg_roles" | "pg_authid" => (
                ROLES,
                vec![vec![
                    ("oid", oid(ROLE_OID)),
                    ("rolname", text(user)),
                    ("rolinherit", boolean(true)),
                    ("rolcanlogin", boolean(true)),
                    ("rolconnlimit", i32v(-1)),
                    ("rolpassword", text("********")),
                ]],
            ),
            "pg_user" => (
                USER,
                vec![vec![
                    ("usename", text(user)),
                    ("usesysid", oid(ROLE_OID)),
                    ("passwd", text("********")),
                ]],
            ),
            "pg_tables" => (
                TABLES,
                self.user_tables()
                    .into_iter()
                    .map(|(n, _)| {
                        vec![
                            ("schemaname", text("public")),
                            ("tablename", text(n)),
                            ("tableowner", text(user.clone())),
                        ]
                    })
                    .collect(),
            ),
            "pg_am" => (
                AM,
                vec![
                    vec![
                        ("oid", oid(2)),
                        ("amname", text("heap")),
                        ("amhandler", text("heap_tableam_handler")),
                        ("amtype", text("t")),
                    ],
                    vec![
                        ("oid", oid(403)),
                        ("amname", text("btree")),
                        ("amhandler", text("bthandler")),
                        ("amtype", text("i")),
                    ],
                ],
            ),
            other => (EMPTY.iter().find(|(n, _)| *n == other)?.1, Vec::new()),
        })
    }
}

#[async_trait]
impl SchemaProvider for PgCatalog {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn table_names(&self) -> Vec<String> {
        BUILT
            .iter()
            .chain(EMPTY.iter().map(|(n, _)| n))
            .map(|s| s.to_string())
            .collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        match self.rows(name) {
            Some((columns, rows)) => build(columns, rows).map(Some),
            None => Ok(None),
        }
    }

    fn table_exist(&self, name: &str) -> bool {
        is_catalog_table(name)
    }
}

/// The prefix of a type's I/O function names (`int4` → `int4in`; arrays → `array_in`).
fn io_prefix(t: &super::types::PgType) -> &'static str {
    match t.category {
        'A' => "array_",
        _ => t.name,
    }
}
