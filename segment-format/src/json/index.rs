//! The JSON index section (format 10). In: a JSON column's values in row order. Out: the
//! section's bytes, and, opened, the docs a [`JsonFilter`] matches.
//!
//! Each value is flattened into keys ([`super::path::flatten`]); every distinct key of the
//! segment is stored once, sorted, with the docs holding it:
//!
//! ```text
//! json     := key_count:u32 keys_len:u32 keys postings
//! keys     := a string block (see string_block.rs) of key_count sorted, distinct keys
//! postings := a posting table (see postings.rs) of key_count + 1 entries: one per key, then
//!             the docs too large to flatten (over MAX_KEYS_PER_DOC keys)
//! ```
//!
//! A filter runs over the keys ([`super::filter::eval`]): `=` and `IN` look their keys up,
//! other tests scan the keys of their path, and the doc sets combine as bitmaps. Docs too
//! large to flatten are answered from their text by the caller.

use arrow::array::{Array, StringArray};
use roaring::RoaringBitmap;

use super::filter::{eval, JsonFilter, KeyTable, SortedKeys, Truth};
use crate::error::{corrupt, Result};
use crate::postings::{decode_entry, encode_table, parse_table, TableKind};
use crate::string_block;

/// Posting tables in this section use the format-4 entry forms.
const POSTINGS_VERSION: u32 = 4;

/// Builds the section from a column's values (`None`: NULL).
pub fn build<'a>(values: impl Iterator<Item = Option<&'a str>>) -> Result<Vec<u8>> {
    let mut docs_of: std::collections::HashMap<String, Vec<u32>, ahash::RandomState> =
        Default::default();
    let mut unindexed = RoaringBitmap::new();
    let mut buf = super::flatten::KeyBuf::default();
    for (doc, v) in values.enumerate() {
        let doc = doc as u32;
        let Some(v) = v else { continue };
        if !super::flatten::flatten_into(v, &mut buf) {
            unindexed.insert(doc);
            continue;
        }
        for k in buf.iter() {
            match docs_of.get_mut(k) {
                // A key repeats within a document under `[*]`.
                Some(docs) if docs.last() == Some(&doc) => {}
                Some(docs) => docs.push(doc),
                None => {
                    docs_of.insert(k.to_string(), vec![doc]);
                }
            }
        }
    }
    let mut entries: Vec<(String, Vec<u32>)> = docs_of.into_iter().collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let keys = string_block::encode(entries.iter().map(|(k, _)| Some(k.as_str())), Some(3))?;
    let mut bitmaps: Vec<RoaringBitmap> = entries
        .into_iter()
        .map(|(_, docs)| RoaringBitmap::from_sorted_iter(docs).expect("docs ascend"))
        .collect();
    bitmaps.push(unindexed);
    let postings = encode_table(&bitmaps, TableKind::Inverted)?;
    let mut raw = Vec::with_capacity(8 + keys.len() + postings.len());
    raw.extend_from_slice(&((bitmaps.len() - 1) as u32).to_le_bytes());
    raw.extend_from_slice(
        &u32::try_from(keys.len())
            .map_err(|_| corrupt("JSON index keys over 4 GiB cannot be written"))?
            .to_le_bytes(),
    );
    raw.extend_from_slice(&keys);
    raw.extend_from_slice(&postings);
    Ok(raw)
}

/// An opened JSON index.
pub struct JsonIndex {
    keys: StringArray,
    postings: Vec<u8>,
    /// Where entries start in `postings`, and their offsets from there.
    entries: (usize, Vec<u64>),
    rows: u32,
    unindexed: RoaringBitmap,
}

impl std::fmt::Debug for JsonIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JsonIndex({} keys, {} rows)", self.keys.len(), self.rows)
    }
}

impl JsonIndex {
    /// Opens the index in `section`, built over `rows` docs.
    pub fn open(section: &[u8], rows: u32) -> Result<JsonIndex> {
        let word = |at: usize| -> Result<usize> {
            section
                .get(at..at + 4)
                .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
                .ok_or_else(|| corrupt("JSON index is shorter than its header"))
        };
        let (count, keys_len) = (word(0)?, word(4)?);
        let keys_end = 8usize
            .checked_add(keys_len)
            .filter(|&e| e <= section.len())
            .ok_or_else(|| corrupt("JSON index keys run past the section"))?;
        let keys = string_block::decode(&section[8..keys_end], count, "JSON index keys")?;
        if keys.null_count() > 0 || (1..keys.len()).any(|i| keys.value(i - 1) >= keys.value(i)) {
            return Err(corrupt("JSON index keys are not sorted and distinct"));
        }
        let postings = section[keys_end..].to_vec();
        let entries = parse_table(&postings, POSTINGS_VERSION, "JSON index postings")?;
        if entries.1.len() != count + 2 {
            return Err(corrupt(format!(
                "JSON index has {} posting entries for {count} keys",
                entries.1.len().saturating_sub(1)
            )));
        }
        let mut index = JsonIndex {
            keys,
            postings,
            entries,
            rows,
            unindexed: RoaringBitmap::new(),
        };
        index.unindexed = index.entry(count)?;
        Ok(index)
    }

    fn entry(&self, i: usize) -> Result<RoaringBitmap> {
        let (start, offs) = &self.entries;
        let (a, b) = (offs[i] as usize, offs[i + 1] as usize);
        decode_entry(
            &self.postings[start + a..start + b],
            POSTINGS_VERSION,
            self.rows as u64,
        )
    }

    /// Docs whose values had too many keys to index: the caller tests their text.
    pub fn unindexed(&self) -> &RoaringBitmap {
        &self.unindexed
    }

    /// The indexed docs (not in `nulls`, not [`Self::unindexed`]) where `filter` holds.
    pub fn search(&self, filter: &JsonFilter, nulls: &RoaringBitmap) -> Result<RoaringBitmap> {
        let mut all = RoaringBitmap::new();
        all.insert_range(0..self.rows);
        all -= nulls;
        all -= &self.unindexed;
        eval(filter, &Table { index: self, all })
    }

    /// Whether any doc may match: false when a key every match needs is in no doc.
    pub fn may_match(&self, filter: &JsonFilter) -> Result<bool> {
        if !self.unindexed.is_empty() {
            return Ok(true);
        }
        let any = Truth {
            keys: self,
            presence: true,
        };
        eval(filter, &any)
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }
}

impl SortedKeys for JsonIndex {
    fn count(&self) -> usize {
        self.keys.len()
    }
    fn key_at(&self, i: usize) -> &str {
        self.keys.value(i)
    }
}

struct Table<'a> {
    index: &'a JsonIndex,
    all: RoaringBitmap,
}

impl KeyTable for Table<'_> {
    type Set = RoaringBitmap;
    fn len(&self) -> usize {
        self.index.keys.len()
    }
    fn key(&self, i: usize) -> &str {
        self.index.keys.value(i)
    }
    /// Keys come from indexed docs only, so every entry lies within `all`.
    fn docs(&self, i: usize) -> Result<RoaringBitmap> {
        self.index.entry(i)
    }
    fn none(&self) -> RoaringBitmap {
        RoaringBitmap::new()
    }
    fn all(&self) -> RoaringBitmap {
        self.all.clone()
    }
    fn union(&self, a: &mut RoaringBitmap, b: RoaringBitmap) {
        *a |= b
    }
    fn intersect(&self, a: &mut RoaringBitmap, b: RoaringBitmap) {
        *a &= b
    }
    fn complement(&self, b: RoaringBitmap) -> RoaringBitmap {
        &self.all - b
    }
    fn is_none(&self, s: &RoaringBitmap) -> bool {
        s.is_empty()
    }
}
