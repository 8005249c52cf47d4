//! A JSON document's keys, streamed. In: a document's text. Out: its keys (see
//! [`super::path`]: `path` + `\x01` per non-null node, `path` + `\x00` + text per scalar, array
//! elements under their position and `[*]`) written into a buffer reused across documents,
//! without building the document's tree: serde_json's parser calls back per node.
//!
//! Scalars are spelled as [`super::path::scalar_text`] spells them, so these keys equal the
//! keys of the nodes `nodes_at` finds. A member repeated in one object counts each time.

use serde::de::{DeserializeSeed, Error as _, MapAccess, SeqAccess, Visitor};

use super::path::{push_key, Key, EXISTS_STR, MAX_KEYS_PER_DOC, VALUE_STR};

/// One document's keys, in one string (reused across documents).
#[derive(Debug, Default)]
pub struct KeyBuf {
    text: String,
    ends: Vec<usize>,
    too_large: bool,
}

impl KeyBuf {
    /// The keys, in the order found (a key may repeat).
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let k = &self.text[start..end];
            start = end;
            k
        })
    }

    fn clear(&mut self) {
        self.text.clear();
        self.ends.clear();
        self.too_large = false;
    }

    fn push<E: serde::de::Error>(&mut self, parts: &[&str]) -> Result<(), E> {
        if self.ends.len() >= MAX_KEYS_PER_DOC {
            self.too_large = true;
            return Err(E::custom("too many keys"));
        }
        for p in parts {
            self.text.push_str(p);
        }
        self.ends.push(self.text.len());
        Ok(())
    }
}

/// Writes `text`'s keys into `buf`; false when the document has more than
/// [`MAX_KEYS_PER_DOC`] of them. Text that is not JSON has none.
pub fn flatten_into(text: &str, buf: &mut KeyBuf) -> bool {
    buf.clear();
    let mut paths = vec!["$".to_string()];
    let mut de = serde_json::Deserializer::from_str(text);
    let done = Node {
        paths: &mut paths,
        out: buf,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end());
    if done.is_err() {
        if buf.too_large {
            return false;
        }
        buf.clear();
    }
    true
}

/// The nodes at `paths` (one spelling each) and below.
struct Node<'a> {
    paths: &'a mut Vec<String>,
    out: &'a mut KeyBuf,
}

impl Node<'_> {
    fn exists<E: serde::de::Error>(&mut self) -> Result<(), E> {
        for p in self.paths.iter() {
            self.out.push(&[p, EXISTS_STR])?;
        }
        Ok(())
    }

    fn scalar<E: serde::de::Error>(mut self, text: &str) -> Result<(), E> {
        self.exists()?;
        for p in self.paths.iter() {
            self.out.push(&[p, VALUE_STR, text])?;
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<(), E> {
        self.scalar(if v { "true" } else { "false" })
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.scalar(&v.to_string())
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        self.scalar(&v.to_string())
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        let n = serde_json::Number::from_f64(v).ok_or_else(|| E::custom("not a finite number"))?;
        self.scalar(&n.to_string())
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        self.scalar(v)
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        self.exists()?;
        let mut lens = Vec::with_capacity(self.paths.len());
        while let Some(key) = map.next_key::<Key<'de>>()? {
            lens.clear();
            for p in self.paths.iter_mut() {
                lens.push(p.len());
                push_key(p, &key.0);
            }
            map.next_value_seed(Node {
                paths: &mut *self.paths,
                out: &mut *self.out,
            })?;
            for (p, &len) in self.paths.iter_mut().zip(&lens) {
                p.truncate(len);
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        self.exists()?;
        if self.paths.len() * 2 > MAX_KEYS_PER_DOC {
            self.out.too_large = true;
            return Err(A::Error::custom("too many keys"));
        }
        let mut i = 0usize;
        loop {
            let mut under: Vec<String> = Vec::with_capacity(self.paths.len() * 2);
            for p in self.paths.iter() {
                under.push(format!("{p}[{i}]"));
                under.push(format!("{p}[*]"));
            }
            let seed = Node {
                paths: &mut under,
                out: &mut *self.out,
            };
            if seq.next_element_seed(seed)?.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }
}
