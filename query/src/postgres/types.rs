//! How Arrow types look to PostgreSQL clients. In: an Arrow [`DataType`] (a result column or
//! a table column). Out: the PostgreSQL type a client is told about (OID, name, byte length),
//! and the rows of `pg_catalog.pg_type`.
//!
//! One mapping serves both result descriptions and the catalog, so a column reflected through
//! `pg_attribute` has the type its values arrive with.

use arrow::datatypes::DataType;

/// A PostgreSQL built-in type: its OID, name, `typlen`, category and array type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PgType {
    pub oid: u32,
    pub name: &'static str,
    /// `pg_type.typlen`: the fixed width in bytes, or -1 for variable width.
    pub len: i16,
    /// `pg_type.typcategory`.
    pub category: char,
    /// The element type of an array type (0 otherwise).
    pub elem: u32,
    /// The array type whose elements are this type (0 if none).
    pub array: u32,
}

const fn t(
    oid: u32,
    name: &'static str,
    len: i16,
    category: char,
    elem: u32,
    array: u32,
) -> PgType {
    PgType {
        oid,
        name,
        len,
        category,
        elem,
        array,
    }
}

pub const BOOL: PgType = t(16, "bool", 1, 'B', 0, 1000);
pub const BYTEA: PgType = t(17, "bytea", -1, 'U', 0, 1001);
pub const NAME: PgType = t(19, "name", 64, 'S', 0, 1003);
pub const INT8: PgType = t(20, "int8", 8, 'N', 0, 1016);
pub const INT2: PgType = t(21, "int2", 2, 'N', 0, 1005);
pub const INT4: PgType = t(23, "int4", 4, 'N', 0, 1007);
pub const TEXT: PgType = t(25, "text", -1, 'S', 0, 1009);
pub const OID: PgType = t(26, "oid", 4, 'N', 0, 1028);
pub const JSON: PgType = t(114, "json", -1, 'U', 0, 199);
pub const FLOAT4: PgType = t(700, "float4", 4, 'N', 0, 1021);
pub const FLOAT8: PgType = t(701, "float8", 8, 'N', 0, 1022);
pub const UNKNOWN: PgType = t(705, "unknown", -2, 'X', 0, 0);
pub const BOOL_ARRAY: PgType = t(1000, "_bool", -1, 'A', 16, 0);
pub const INT2_ARRAY: PgType = t(1005, "_int2", -1, 'A', 21, 0);
pub const INT4_ARRAY: PgType = t(1007, "_int4", -1, 'A', 23, 0);
pub const TEXT_ARRAY: PgType = t(1009, "_text", -1, 'A', 25, 0);
pub const INT8_ARRAY: PgType = t(1016, "_int8", -1, 'A', 20, 0);
pub const FLOAT4_ARRAY: PgType = t(1021, "_float4", -1, 'A', 700, 0);
pub const FLOAT8_ARRAY: PgType = t(1022, "_float8", -1, 'A', 701, 0);
pub const OID_ARRAY: PgType = t(1028, "_oid", -1, 'A', 26, 0);
pub const VARCHAR: PgType = t(1043, "varchar", -1, 'S', 0, 1015);
pub const DATE: PgType = t(1082, "date", 4, 'D', 0, 1182);
pub const TIME: PgType = t(1083, "time", 8, 'D', 0, 1183);
pub const TIMESTAMP: PgType = t(1114, "timestamp", 8, 'D', 0, 1115);
pub const TIMESTAMPTZ: PgType = t(1184, "timestamptz", 8, 'D', 0, 1185);
pub const INTERVAL: PgType = t(1186, "interval", 16, 'T', 0, 1187);
pub const NUMERIC: PgType = t(1700, "numeric", -1, 'N', 0, 1231);
pub const REGCLASS: PgType = t(2205, "regclass", 4, 'N', 0, 2210);
pub const REGTYPE: PgType = t(2206, "regtype", 4, 'N', 0, 2211);
pub const REGPROC: PgType = t(24, "regproc", 4, 'N', 0, 1008);
pub const CHAR: PgType = t(18, "char", 1, 'Z', 0, 1002);

/// The rows of `pg_catalog.pg_type`.
pub const ALL: &[PgType] = &[
    BOOL,
    BYTEA,
    CHAR,
    NAME,
    INT8,
    INT2,
    INT4,
    REGPROC,
    TEXT,
    OID,
    JSON,
    FLOAT4,
    FLOAT8,
    UNKNOWN,
    BOOL_ARRAY,
    INT2_ARRAY,
    INT4_ARRAY,
    TEXT_ARRAY,
    INT8_ARRAY,
    FLOAT4_ARRAY,
    FLOAT8_ARRAY,
    OID_ARRAY,
    VARCHAR,
    DATE,
    TIME,
    TIMESTAMP,
    TIMESTAMPTZ,
    INTERVAL,
    NUMERIC,
    REGCLASS,
    REGTYPE,
];

/// The type with this OID, if it is one of [`ALL`].
pub fn by_oid(oid: u32) -> Option<PgType> {
    ALL.iter().copied().find(|t| t.oid == oid)
}

/// The type a name denotes, as `'int4'::regtype` resolves it: its own name (`int4`,
/// `_text`), its SQL name (`integer`, `double precision`, `text[]`), a few aliases (`int`,
/// `decimal`), optionally `pg_catalog.`-qualified; case-insensitive.
pub fn by_name(name: &str) -> Option<PgType> {
    let lower = name.trim().to_ascii_lowercase();
    let bare = lower.trim_start_matches("pg_catalog.");
    let alias = match bare {
        "int" => "int4",
        "decimal" => "numeric",
        "float" | "double" => "float8",
        "timestamp with time zone" => "timestamptz",
        other => other,
    };
    ALL.iter()
        .copied()
        .find(|t| t.name == alias || format_type(t.oid) == Some(alias))
}

/// The PostgreSQL type a column of Arrow type `dt` is described as. Values of types without a
/// PostgreSQL counterpart (structs, maps, intervals, durations, 256-bit decimals) arrive as
/// their text rendering, typed `text`; decimals are `numeric`.
pub fn pg_type_of(dt: &DataType) -> PgType {
    use DataType as D;
    match dt {
        D::Boolean => BOOL,
        D::Int8 | D::Int16 | D::UInt8 => INT2,
        D::Int32 | D::UInt16 => INT4,
        D::Int64 | D::UInt64 => INT8,
        // Catalog OIDs are unsigned 32-bit, as in PostgreSQL.
        D::UInt32 => OID,
        D::Float16 | D::Float32 => FLOAT4,
        D::Float64 => FLOAT8,
        D::Decimal32(..) | D::Decimal64(..) | D::Decimal128(..) => NUMERIC,
        D::Utf8 | D::LargeUtf8 | D::Utf8View | D::Null => TEXT,
        D::Dictionary(_, v) => pg_type_of(v),
        D::Binary | D::LargeBinary | D::BinaryView | D::FixedSizeBinary(_) => BYTEA,
        D::Timestamp(_, Some(_)) => TIMESTAMPTZ,
        D::Timestamp(_, None) => TIMESTAMP,
        D::Date32 | D::Date64 => DATE,
        D::Time32(_) | D::Time64(_) => TIME,
        D::List(f)
        | D::LargeList(f)
        | D::ListView(f)
        | D::LargeListView(f)
        | D::FixedSizeList(f, _) => match pg_type_of(f.data_type()) {
            BOOL => BOOL_ARRAY,
            INT2 => INT2_ARRAY,
            INT4 => INT4_ARRAY,
            INT8 => INT8_ARRAY,
            FLOAT4 => FLOAT4_ARRAY,
            FLOAT8 => FLOAT8_ARRAY,
            OID => OID_ARRAY,
            TEXT => TEXT_ARRAY,
            _ => TEXT,
        },
        _ => TEXT,
    }
}

/// `format_type(oid, typmod)`: the SQL name psql and SQLAlchemy show for a column type.
pub fn format_type(oid: u32) -> Option<&'static str> {
    Some(match by_oid(oid)? {
        BOOL => "boolean",
        INT2 => "smallint",
        INT4 => "integer",
        INT8 => "bigint",
        FLOAT4 => "real",
        FLOAT8 => "double precision",
        VARCHAR => "character varying",
        TIMESTAMP => "timestamp without time zone",
        TIMESTAMPTZ => "timestamp with time zone",
        TIME => "time without time zone",
        BOOL_ARRAY => "boolean[]",
        INT2_ARRAY => "smallint[]",
        INT4_ARRAY => "integer[]",
        INT8_ARRAY => "bigint[]",
        FLOAT4_ARRAY => "real[]",
        FLOAT8_ARRAY => "double precision[]",
        TEXT_ARRAY => "text[]",
        OID_ARRAY => "oid[]",
        CHAR => "\"char\"",
        other => other.name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{Field, TimeUnit};
    use std::sync::Arc;

    #[test]
    fn basalt_column_types_map_onto_postgres_types() {
        let dict = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
        assert_eq!(pg_type_of(&dict), TEXT);
        assert_eq!(pg_type_of(&DataType::Int32), INT4);
        assert_eq!(pg_type_of(&DataType::Int64), INT8);
        assert_eq!(pg_type_of(&DataType::Float32), FLOAT4);
        assert_eq!(pg_type_of(&DataType::Float64), FLOAT8);
        assert_eq!(pg_type_of(&DataType::Boolean), BOOL);
        assert_eq!(
            pg_type_of(&DataType::Timestamp(TimeUnit::Millisecond, None)),
            TIMESTAMP
        );
        assert_eq!(
            pg_type_of(&DataType::Timestamp(
                TimeUnit::Nanosecond,
                Some("+00:00".into())
            )),
            TIMESTAMPTZ
        );
        let list = |dt| DataType::List(Arc::new(Field::new("item", dt, true)));
        assert_eq!(pg_type_of(&list(dict)), TEXT_ARRAY);
        assert_eq!(pg_type_of(&list(DataType::Int64)), INT8_ARRAY);
        for ty in ALL {
            assert_eq!(by_oid(ty.oid), Some(*ty));
            if ty.array != 0 && ty.category != 'A' {
                // every array type named here points back at its element
                if let Some(a) = by_oid(ty.array) {
                    assert_eq!(a.elem, ty.oid, "{}", ty.name);
                }
            }
        }
        assert_eq!(format_type(1114), Some("timestamp without time zone"));
        for (name, oid) in [
            ("int4", 23),
            ("INTEGER", 23),
            ("int", 23),
            ("pg_catalog.text", 25),
            ("character varying", 1043),
            ("double precision", 701),
            ("text[]", 1009),
            ("_int8", 1016),
            ("timestamp with time zone", 1184),
            ("regclass", 2205),
        ] {
            assert_eq!(by_name(name).map(|t| t.oid), Some(oid), "{name}");
        }
        assert_eq!(by_name("hstore"), None);
    }
}
