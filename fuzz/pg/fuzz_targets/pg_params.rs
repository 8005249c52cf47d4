//! Bound parameters of the PostgreSQL extended protocol, as a client sends them: any bytes,
//! text or binary format, any declared type of the ones Basalt decodes (or none, or an
//! unknown one), any inferred type. Each decodes or fails with a typed error carrying its
//! SQLSTATE; nothing panics or overflows.
#![no_main]

use arrow::datatypes::{DataType, TimeUnit};
use basalt_broker::pg::params::decode;
use libfuzzer_sys::fuzz_target;
use pgwire::api::Type;

fn declared(b: u8) -> Option<Type> {
    let all = [
        Type::BOOL,
        Type::INT2,
        Type::INT4,
        Type::INT8,
        Type::OID,
        Type::FLOAT4,
        Type::FLOAT8,
        Type::NUMERIC,
        Type::TEXT,
        Type::VARCHAR,
        Type::NAME,
        Type::BPCHAR,
        Type::BYTEA,
        Type::DATE,
        Type::TIMESTAMP,
        Type::TIMESTAMPTZ,
        Type::UNKNOWN,
        Type::INTERVAL,
        Type::JSON,
    ];
    all.get(b as usize % (all.len() + 1)).cloned()
}

fn inferred(b: u8) -> Option<DataType> {
    let all = [
        DataType::Boolean,
        DataType::Int16,
        DataType::Int32,
        DataType::Int64,
        DataType::UInt32,
        DataType::Float32,
        DataType::Float64,
        DataType::Utf8,
        DataType::Binary,
        DataType::Date32,
        DataType::Timestamp(TimeUnit::Microsecond, None),
        DataType::Timestamp(TimeUnit::Millisecond, Some("+00:00".into())),
        DataType::Timestamp(TimeUnit::Nanosecond, None),
        DataType::Null,
    ];
    all.get(b as usize % (all.len() + 1)).cloned()
}

fuzz_target!(|data: &[u8]| {
    let [flags, d, i, raw @ ..] = data else { return };
    let raw = (flags & 2 == 0).then(|| bytes::Bytes::copy_from_slice(raw));
    let declared = declared(*d);
    let inferred = inferred(*i);
    if let Err(e) = decode(0, raw.as_ref(), flags & 1 == 1, declared.as_ref(), inferred.as_ref()) {
        assert!(e.sqlstate().len() == 5, "{e}");
    }
});
