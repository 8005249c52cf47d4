//! One JSON object → the raw text of each table column's field, without building a
//! `serde_json::Value`. In: the bytes of one object (a stream message or an NDJSON line) and
//! the table's columns. Out: per column the field's raw JSON text (`None` when absent) and the
//! number of fields the table has no column for; strings are unescaped only when they contain
//! escapes, so most cells are borrowed slices of the input.
//!
//! The parse still validates the whole object (serde_json), so malformed JSON is an error
//! exactly as before; only the allocation of a map and of every string is gone.

use std::borrow::Cow;
use std::collections::HashMap;

use basalt_segment::{ColumnType, SegmentSchema};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// Column positions by name.
#[derive(Debug, Clone)]
pub struct ColumnIndex {
    names: HashMap<String, usize>,
    len: usize,
}

impl ColumnIndex {
    pub fn new(schema: &SegmentSchema) -> Self {
        ColumnIndex {
            names: schema
                .columns
                .iter()
                .enumerate()
                .map(|(i, c)| (c.name.clone(), i))
                .collect(),
            len: schema.columns.len(),
        }
    }
}

/// Why bytes are not a JSON object.
#[derive(Debug, Clone, PartialEq)]
pub enum ObjectError {
    /// Valid JSON of another kind ("an array", "a string", ...).
    NotAnObject(&'static str),
    Invalid(String),
}

/// The kind of JSON value `bytes` starts with, for messages that are not objects.
fn kind_of(bytes: &[u8]) -> Option<&'static str> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace())? {
        b'{' => None,
        b'[' => Some("an array"),
        b'"' => Some("a string"),
        b't' | b'f' => Some("a boolean"),
        b'n' => Some("null"),
        _ => Some("a number"),
    }
}

/// The fields of one object: `fields[i]` is column i's raw value.
pub struct ObjectFields<'a> {
    pub fields: Vec<Option<&'a RawValue>>,
    /// Fields without a column (ignored).
    pub unknown: u64,
}

/// Splits one JSON object into its columns' raw values.
pub fn parse_object<'a>(
    bytes: &'a [u8],
    index: &ColumnIndex,
) -> Result<ObjectFields<'a>, ObjectError> {
    let invalid = |e: serde_json::Error| ObjectError::Invalid(e.to_string());
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let out = match kind_of(bytes) {
        None => de
            .deserialize_map(ObjectVisitor { index })
            .map_err(invalid)?,
        Some(kind) => {
            // Report a syntax error before the kind: `[1,` is invalid JSON, not an array.
            <serde::de::IgnoredAny as serde::Deserialize>::deserialize(&mut de).map_err(invalid)?;
            de.end().map_err(invalid)?;
            return Err(ObjectError::NotAnObject(kind));
        }
    };
    de.end().map_err(invalid)?;
    Ok(out)
}

struct ObjectVisitor<'i> {
    index: &'i ColumnIndex,
}

/// A key, borrowed unless it has escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

impl<'de> Visitor<'de> for ObjectVisitor<'_> {
    type Value = ObjectFields<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = ObjectFields {
            fields: vec![None; self.index.len],
            unknown: 0,
        };
        while let Some(Key(k)) = map.next_key::<Key<'de>>()? {
            match self.index.names.get(k.as_ref()) {
                Some(&i) => out.fields[i] = Some(map.next_value::<&'de RawValue>()?),
                None => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    out.unknown += 1;
                }
            }
        }
        Ok(out)
    }
}

/// A field's value as a cell input: what the raw JSON text holds.
pub enum RawField<'a> {
    Null,
    Bool(bool),
    /// Number text, as written.
    Number(&'a str),
    Str(Cow<'a, str>),
    /// An array or object, as written.
    Nested(&'a str),
}

/// Classifies a raw value (already validated by the parse).
pub fn raw_field(v: &RawValue) -> Result<RawField<'_>, String> {
    let t = v.get();
    Ok(match t.as_bytes().first() {
        None => RawField::Null,
        Some(b'n') => RawField::Null,
        Some(b't') => RawField::Bool(true),
        Some(b'f') => RawField::Bool(false),
        Some(b'"') => {
            let inner = &t[1..t.len() - 1];
            if inner.contains('\\') {
                RawField::Str(Cow::Owned(
                    serde_json::from_str::<String>(t).map_err(|e| e.to_string())?,
                ))
            } else {
                RawField::Str(Cow::Borrowed(inner))
            }
        }
        Some(b'[' | b'{') => RawField::Nested(t),
        Some(_) => RawField::Number(t),
    })
}

/// Whether a column keeps JSON text as a string (`String` keeps scalars' text too).
pub fn is_text(ty: ColumnType) -> bool {
    matches!(ty, ColumnType::String | ColumnType::Json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use basalt_segment::ColumnDef;

    fn index() -> ColumnIndex {
        ColumnIndex::new(&SegmentSchema {
            columns: vec![
                ColumnDef::new("a", ColumnType::String),
                ColumnDef::new("b", ColumnType::Long),
                ColumnDef::new("c", ColumnType::Json),
            ],
            time_column: None,
            star_trees: Vec::new(),
        })
    }

    #[test]
    fn splits_objects_into_column_fields() {
        let ix = index();
        let o = parse_object(
            br#" {"b": -12, "x": {"deep": [1, 2]}, "a": "h\u00e9 \"q\"", "c": {"k": [true]}} "#,
            &ix,
        )
        .unwrap();
        assert_eq!(o.unknown, 1);
        match raw_field(o.fields[0].unwrap()).unwrap() {
            RawField::Str(s) => assert_eq!(s, "hé \"q\""),
            _ => panic!("a is a string"),
        }
        assert!(matches!(
            raw_field(o.fields[1].unwrap()).unwrap(),
            RawField::Number("-12")
        ));
        assert!(
            matches!(raw_field(o.fields[2].unwrap()).unwrap(), RawField::Nested(t) if t == r#"{"k": [true]}"#)
        );
        let o = parse_object(br#"{"a":"plain","b":null}"#, &ix).unwrap();
        assert!(matches!(
            raw_field(o.fields[0].unwrap()).unwrap(),
            RawField::Str(Cow::Borrowed("plain"))
        ));
        assert!(matches!(
            raw_field(o.fields[1].unwrap()).unwrap(),
            RawField::Null
        ));
        assert!(o.fields[2].is_none());
    }

    #[test]
    fn non_objects_and_bad_json_are_errors() {
        let ix = index();
        assert_eq!(
            parse_object(b"[1,2]", &ix).err(),
            Some(ObjectError::NotAnObject("an array"))
        );
        assert_eq!(
            parse_object(b" 12 ", &ix).err(),
            Some(ObjectError::NotAnObject("a number"))
        );
        for bad in [&b"{\"a\":"[..], b"{\"a\":1} x", b"[1,", b"", b"{\"a\":tru}"] {
            assert!(
                matches!(parse_object(bad, &ix), Err(ObjectError::Invalid(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
