//! JSON paths and the nodes they name. In: a path as users write it (`$.a.b`, `$.tags[0]`,
//! `$.items[*].sku`, `$['odd key']`) or a JSON document's text. Out: the path's steps and
//! its canonical spelling; the key spelling — one key per node that is not JSON `null`
//! (`path` + [`EXISTS`]) and one per scalar (`path` + [`VALUE`] + its text), which the index
//! stores for every node ([`super::flatten`]) and the per-value test ([`super::filter`])
//! builds for the nodes its paths name ([`nodes_at`]), so the two always agree; and those
//! nodes, found in the text without parsing the rest.
//!
//! Canonical paths: `$`, then `.key` for keys of ASCII letters, digits and `_`, `["key"]`
//! (the key as a JSON string, so control characters are escaped) for any other key, `[n]`
//! for array element `n` and `[*]` for any element. An array element is flattened under both
//! its position and `[*]`. Scalar text: strings as they are, numbers as serde_json writes
//! them (`5`, `5.0`, `1e20` is `1e20`), `true` / `false`. Text that is not JSON, or nests
//! deeper than serde_json's limit, is a document with no keys.

use serde_json::Value as Json;

/// Separates a path from a scalar's text in a key.
pub const VALUE: char = '\0';
/// Ends the key saying a path holds a non-null node.
pub const EXISTS: char = '\u{1}';
pub(crate) const VALUE_STR: &str = "\0";
pub(crate) const EXISTS_STR: &str = "\u{1}";
/// A document yielding more keys than this is not flattened into the index; queries test
/// it from its text (see [`super::index::JsonIndex::unindexed`]).
pub const MAX_KEYS_PER_DOC: usize = 65_536;
/// The longest path accepted in a query, in bytes.
const MAX_PATH_BYTES: usize = 4096;

/// One step of a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Key(String),
    Index(usize),
    /// Any element of an array.
    Any,
}

/// A parsed path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath {
    steps: Vec<Step>,
    canonical: String,
}

fn plain(key: &str) -> bool {
    !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Appends `key` to a canonical path.
pub(crate) fn push_key(path: &mut String, key: &str) {
    if plain(key) {
        path.push('.');
        path.push_str(key);
    } else {
        path.push('[');
        path.push_str(&Json::String(key.to_string()).to_string());
        path.push(']');
    }
}

impl JsonPath {
    /// Parses `$` followed by `.key`, `['key']`, `["key"]`, `[n]` and `[*]` steps.
    pub fn parse(text: &str) -> Result<JsonPath, String> {
        let bad = |why: &str| Err(format!("JSON path {text:?}: {why}"));
        if text.len() > MAX_PATH_BYTES {
            return bad(&format!("longer than {MAX_PATH_BYTES} bytes"));
        }
        let Some(mut rest) = text.strip_prefix('$') else {
            return bad("a path starts with `$`");
        };
        let mut steps = Vec::new();
        while let Some(c) = rest.chars().next() {
            match c {
                '.' => {
                    let end = rest[1..].find(['.', '[']).map_or(rest.len(), |i| i + 1);
                    let key = &rest[1..end];
                    if key.is_empty() {
                        return bad("a `.` must be followed by a key");
                    }
                    if key == "*" {
                        return bad("`.*` (any key) is not supported; name the key");
                    }
                    steps.push(Step::Key(key.to_string()));
                    rest = &rest[end..];
                }
                '[' => {
                    let (step, used) = match bracket(&rest[1..]) {
                        Ok(v) => v,
                        Err(e) => return bad(&e),
                    };
                    steps.push(step);
                    rest = &rest[1 + used..];
                }
                _ => return bad(&format!("unexpected {c:?}; steps are `.key` or `[...]`")),
            }
        }
        let mut canonical = String::from("$");
        for s in &steps {
            match s {
                Step::Key(k) => push_key(&mut canonical, k),
                Step::Index(i) => canonical.push_str(&format!("[{i}]")),
                Step::Any => canonical.push_str("[*]"),
            }
        }
        Ok(JsonPath { steps, canonical })
    }

    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// The path as the index spells it.
    pub fn canonical(&self) -> &str {
        &self.canonical
    }

    pub fn has_wildcard(&self) -> bool {
        self.steps.contains(&Step::Any)
    }
}

/// Parses what follows a `[`: the step and the bytes used, including the `]`.
fn bracket(s: &str) -> Result<(Step, usize), String> {
    let close = |at: usize| match s[at..].starts_with(']') {
        true => Ok(at + 1),
        false => Err("a `[` step must end with `]`".to_string()),
    };
    if s.starts_with('*') {
        return Ok((Step::Any, close(1)?));
    }
    if let Some(q @ ('\'' | '"')) = s.chars().next() {
        let mut key = String::new();
        let mut chars = s[1..].char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, e)) => key.push(e),
                    None => break,
                },
                c if c == q => return Ok((Step::Key(key), close(i + 2)?)),
                c => key.push(c),
            }
        }
        return Err("a quoted key must end with its quote".to_string());
    }
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let n: usize = s[..digits]
        .parse()
        .map_err(|_| "a `[` step holds `*`, an array position or a quoted key".to_string())?;
    Ok((Step::Index(n), close(digits)?))
}

/// A scalar's text in keys and comparisons; `None` for null, objects and arrays.
pub fn scalar_text(v: &Json) -> Option<String> {
    match v {
        Json::String(s) => Some(s.clone()),
        Json::Number(n) => Some(n.to_string()),
        Json::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A document's keys, sorted and distinct; `None` when there would be more than
/// [`MAX_KEYS_PER_DOC`] (see [`super::flatten`]).
pub fn flatten(text: &str) -> Option<Vec<String>> {
    let mut buf = super::flatten::KeyBuf::default();
    if !super::flatten::flatten_into(text, &mut buf) {
        return None;
    }
    let mut keys: Vec<String> = buf.iter().map(str::to_string).collect();
    keys.sort_unstable();
    keys.dedup();
    Some(keys)
}

/// The nodes `steps` name in the JSON text `text` (every element at a `[*]` step), parsed;
/// none when `text` is not JSON (the whole text is checked, as [`flatten`] does). Only the
/// nodes on the way are materialised: other members and elements are skipped unparsed.
pub fn nodes_at(text: &str, steps: &[Step], out: &mut Vec<Json>) {
    use serde::de::DeserializeSeed;
    let Some((step, rest)) = steps.split_first() else {
        if let Ok(v) = serde_json::from_str::<Json>(text) {
            out.push(v);
        }
        return;
    };
    let mut de = serde_json::Deserializer::from_str(text);
    let found = Children(step).deserialize(&mut de);
    // The rest of the text must be whitespace, as for a whole document.
    let Ok(found) = found.and_then(|f| de.end().map(|()| f)) else {
        return;
    };
    for raw in found {
        nodes_at(raw.get(), rest, out);
    }
}

/// The children a step names, their text unparsed: the members of an object with the
/// step's key (JSON allows a name to repeat; each counts), or an array's element at the
/// step's position or all of them. Every other child is skipped unparsed; a value of another
/// kind has none.
struct Children<'s>(&'s Step);

type Raw<'de> = &'de serde_json::value::RawValue;

impl<'de> serde::de::DeserializeSeed<'de> for Children<'_> {
    type Value = Vec<Raw<'de>>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Children<'_> {
    type Value = Vec<Raw<'de>>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = Vec::new();
        while let Some(key) = map.next_key::<Key<'de>>()? {
            match self.0 {
                Step::Key(k) if key.0 == k.as_str() => found.push(map.next_value::<Raw<'de>>()?),
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(found)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut found = Vec::new();
        for i in 0.. {
            let wanted = match self.0 {
                Step::Index(want) => *want == i,
                Step::Any => true,
                Step::Key(_) => false,
            };
            let more = match wanted {
                true => seq.next_element::<Raw<'de>>()?.map(|v| found.push(v)),
                false => seq.next_element::<serde::de::IgnoredAny>()?.map(|_| ()),
            };
            if more.is_none() {
                break;
            }
        }
        Ok(found)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }
}

/// An object key, borrowed from the text unless it holds escapes.
pub(crate) struct Key<'a>(pub(crate) std::borrow::Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(s.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}
