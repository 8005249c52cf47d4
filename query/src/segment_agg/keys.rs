//! Group-key interning for aggregation inside the scan. In: values of one GROUP BY key — a
//! segment's dictionary entries (each mapped once per segment, not once per row) or the rows
//! of an Arrow array. Out: dense key ids that are equal exactly when the values are equal,
//! across every segment one worker reads, and at the end the distinct values as an Arrow array
//! of the key's output type.
//!
//! Strings live in one byte arena; numbers, booleans and timestamps as 64-bit patterns (floats
//! by their bits, as DataFusion's grouping compares them). NULL is a value of its own.

use std::sync::Arc;

use ahash::RandomState;
use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, StringArray, UInt32Array,
};
use arrow::buffer::{NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use basalt_segment::reader::Dictionary;
use datafusion::error::{DataFusionError, Result as DfResult};
use hashbrown::HashTable;

/// Key id of a value another worker owns (see [`Part`]).
pub(crate) const FOREIGN: u32 = u32::MAX - 1;

/// One of `count` workers that each read every segment but aggregate only the key values
/// they own, chosen by the value's hash: their groups are disjoint, so nothing is merged at
/// the end (on a high-cardinality key, merging two workers' groups by value takes a third of
/// the query, on one core).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Part {
    pub(crate) index: u32,
    pub(crate) count: u32,
}

impl Part {
    /// Whether a value hashed to `hash` is this part's. Bits 24..56 pick the owner: the table
    /// places entries by the low bits and tags them with the top seven, which stay spread.
    fn owns(self, hash: u64) -> bool {
        ((((hash >> 24) as u32) as u64 * self.count as u64) >> 32) as u32 == self.index
    }

    /// NULL belongs to the first part.
    pub(crate) fn owns_null(self) -> bool {
        self.index == 0
    }
}

/// How a key's values are stored while interning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    /// Strings (any Utf8 flavour, dictionary strings included).
    Bytes,
    /// Signed integers, timestamps and dates, as i64.
    Int,
    /// Floating point, as f64 bits.
    Float,
    Bool,
}

impl KeyKind {
    /// The kind for a key of Arrow type `dt`, or `None` when interning does not support it.
    pub(crate) fn of(dt: &DataType) -> Option<KeyKind> {
        match dt {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Some(KeyKind::Bytes),
            DataType::Dictionary(_, v) => match v.as_ref() {
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Some(KeyKind::Bytes),
                _ => None,
            },
            DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::Date32
            | DataType::Timestamp(_, _) => Some(KeyKind::Int),
            DataType::Float32 | DataType::Float64 => Some(KeyKind::Float),
            DataType::Boolean => Some(KeyKind::Bool),
            _ => None,
        }
    }

    /// The type values of this kind are interned as (what [`KeyInterner::values`] gives
    /// without a cast).
    pub(crate) fn native_type(self) -> DataType {
        match self {
            KeyKind::Bytes => DataType::Utf8,
            KeyKind::Int => DataType::Int64,
            KeyKind::Float => DataType::Float64,
            KeyKind::Bool => DataType::Boolean,
        }
    }
}

/// The distinct values of one GROUP BY key, numbered in first-seen order.
pub(crate) struct KeyInterner {
    kind: KeyKind,
    hasher: RandomState,
    /// Values up to [`INLINE`] bytes live in the table entry itself, so a lookup touches one
    /// cache line; longer strings keep a prefix there and are confirmed in the arena.
    table: HashTable<Entry>,
    /// `Bytes`: value `i` is `data[offsets[i]..offsets[i + 1]]`.
    data: Vec<u8>,
    offsets: Vec<usize>,
    /// Other kinds: value `i` is `bits[i]`.
    bits: Vec<u64>,
    null_id: Option<u32>,
    len: u32,
    /// Integer keys of a known, narrow range: the id of value `min + i` at `ids[i]`
    /// (`u32::MAX`: not seen), found without hashing. Values outside the range (bounds are
    /// from segment footers) take the hash table.
    dense: Option<DenseInts>,
}

struct DenseInts {
    min: i64,
    ids: Vec<u32>,
}

/// Most entries a [`DenseInts`] table may have (16 MiB of ids).
pub(crate) const DENSE_INTS_MAX: u64 = 1 << 22;

const INLINE: usize = 11;
/// `Entry::len` of a value longer than [`INLINE`].
const LONG: u8 = u8::MAX;

/// One interned value: its id, its length (or [`LONG`]) and its first bytes, zero-padded.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Entry {
    id: u32,
    len: u8,
    inline: [u8; INLINE],
}

impl Entry {
    fn probe(v: &[u8]) -> Entry {
        let mut inline = [0u8; INLINE];
        let n = v.len().min(INLINE);
        inline[..n].copy_from_slice(&v[..n]);
        Entry {
            id: 0,
            len: if v.len() <= INLINE {
                v.len() as u8
            } else {
                LONG
            },
            inline,
        }
    }

    fn same_prefix(&self, other: &Entry) -> bool {
        self.len == other.len && self.inline == other.inline
    }
}

impl KeyInterner {
    pub(crate) fn new(kind: KeyKind) -> Self {
        KeyInterner {
            kind,
            hasher: RandomState::with_seeds(0x9e37, 0x79b9, 0x7f4a, 0x7c15),
            table: HashTable::new(),
            data: Vec::new(),
            offsets: vec![0],
            bits: Vec::new(),
            null_id: None,
            len: 0,
            dense: None,
        }
    }

    /// An integer interner for values known to lie in `lo..=hi` (a range of at most
    /// [`DENSE_INTS_MAX`] values; wider ranges, and other kinds, are hashed).
    pub(crate) fn with_int_range(mut self, lo: i64, hi: i64) -> Self {
        let span = (hi as i128 - lo as i128 + 1).max(0) as u64;
        if self.kind == KeyKind::Int && span <= DENSE_INTS_MAX {
            self.dense = Some(DenseInts {
                min: lo,
                ids: vec![u32::MAX; span as usize],
            });
        }
        self
    }

    pub(crate) fn kind(&self) -> KeyKind {
        self.kind
    }

    pub(crate) fn len(&self) -> usize {
        self.len as usize
    }

    /// Approximate heap bytes held.
    pub(crate) fn size(&self) -> usize {
        self.data.capacity()
            + self.offsets.capacity() * 8
            + self.bits.capacity() * 8
            + self.table.capacity() * (std::mem::size_of::<Entry>() + 1)
            + self.dense.as_ref().map_or(0, |d| d.ids.capacity() * 4)
    }

    /// The hash of an entry's value, for growing the table.
    fn rehash(hasher: &RandomState, data: &[u8], offsets: &[usize], e: &Entry) -> u64 {
        if e.len == LONG {
            let i = e.id as usize;
            hasher.hash_one(&data[offsets[i]..offsets[i + 1]])
        } else {
            hasher.hash_one(&e.inline[..e.len as usize])
        }
    }

    /// Room for `additional` more values without growing.
    pub(crate) fn reserve(&mut self, additional: usize) {
        if self.dense.is_some() {
            return;
        }
        let (hasher, data, offsets) = (&self.hasher, &self.data, &self.offsets);
        self.table
            .reserve(additional, |e| Self::rehash(hasher, data, offsets, e));
    }

    fn push_entry(&mut self) -> u32 {
        let id = self.len;
        self.len += 1;
        id
    }

    pub(crate) fn intern_null(&mut self) -> u32 {
        if let Some(id) = self.null_id {
            return id;
        }
        match self.kind {
            KeyKind::Bytes => self.offsets.push(self.data.len()),
            _ => self.bits.push(0),
        }
        let id = self.push_entry();
        self.null_id = Some(id);
        id
    }

    /// Finds or adds `v` (hashed to `hash`); `store` appends it to the value storage when it
    /// is new.
    fn intern(&mut self, hash: u64, v: &[u8], store: impl FnOnce(&mut Self)) -> u32 {
        let probe = Entry::probe(v);
        let (data, offsets) = (&self.data, &self.offsets);
        // The NULL entry is never in the table, so the empty string cannot match it.
        let found = self.table.find(hash, |e| {
            e.same_prefix(&probe)
                && (e.len != LONG || {
                    let i = e.id as usize;
                    &data[offsets[i]..offsets[i + 1]] == v
                })
        });
        if let Some(e) = found {
            return e.id;
        }
        let id = self.len;
        store(self);
        let (hasher, data, offsets) = (&self.hasher, &self.data, &self.offsets);
        self.table.insert_unique(hash, Entry { id, ..probe }, |e| {
            Self::rehash(hasher, data, offsets, e)
        });
        self.push_entry()
    }

    pub(crate) fn intern_bytes(&mut self, v: &[u8]) -> u32 {
        self.intern_bytes_hashed(self.hasher.hash_one(v), v)
    }

    fn intern_bytes_hashed(&mut self, hash: u64, v: &[u8]) -> u32 {
        self.intern(hash, v, |me| {
            me.data.extend_from_slice(v);
            me.offsets.push(me.data.len());
        })
    }

    /// Room for `values` more strings of `bytes` bytes in all, appended by
    /// [`Self::push_sorted`].
    pub(crate) fn reserve_sorted(&mut self, values: usize, bytes: usize) {
        self.offsets.reserve(values);
        self.data.reserve(bytes);
    }

    /// Appends string `v`, known to differ from every value interned so far, without entering
    /// it in the hash table: for an interner whose values all come from merging sorted
    /// dictionaries (`sorted_keys`), which nothing looks up by value.
    pub(crate) fn push_sorted(&mut self, v: &[u8]) -> u32 {
        self.data.extend_from_slice(v);
        self.offsets.push(self.data.len());
        self.push_entry()
    }

    /// `v`'s key id, or [`FOREIGN`] when `part` is given and does not own it.
    fn intern_bytes_in(&mut self, v: &[u8], part: Option<Part>) -> u32 {
        let hash = self.hasher.hash_one(v);
        match part {
            Some(p) if !p.owns(hash) => FOREIGN,
            _ => self.intern_bytes_hashed(hash, v),
        }
    }

    /// As [`Self::intern_bytes_in`], for numbers and booleans.
    fn intern_bits_in(&mut self, v: u64, part: Option<Part>) -> u32 {
        match part {
            Some(p) if !p.owns(self.hasher.hash_one(v.to_le_bytes())) => FOREIGN,
            _ => self.intern_bits(v),
        }
    }

    pub(crate) fn intern_bits(&mut self, v: u64) -> u32 {
        if let Some(d) = &mut self.dense {
            let at = (v as i64).wrapping_sub(d.min) as u64;
            if let Some(slot) = d.ids.get_mut(at as usize) {
                if *slot == u32::MAX {
                    *slot = self.len;
                    self.bits.push(v);
                    self.len += 1;
                }
                return *slot;
            }
        }
        // Eight bytes always fit the entry, so the arena is never consulted for numbers.
        let b = v.to_le_bytes();
        self.intern(self.hasher.hash_one(b), &b, |me| me.bits.push(v))
    }

    /// Interns dictionary entry `id` of a segment dictionary (once per entry and segment:
    /// kept out of the per-row loops); [`FOREIGN`] when `part` does not own it.
    #[inline(never)]
    pub(crate) fn intern_dict_entry(
        &mut self,
        dict: &Dictionary,
        id: u32,
        part: Option<Part>,
    ) -> DfResult<u32> {
        let i = id as usize;
        if i >= dict.len() {
            return Err(DataFusionError::Internal(format!(
                "dictionary id {id} past {} entries",
                dict.len()
            )));
        }
        Ok(match (dict, self.kind) {
            (Dictionary::Str(a), KeyKind::Bytes) => {
                self.intern_bytes_in(a.value(i).as_bytes(), part)
            }
            (Dictionary::I64(v), KeyKind::Int | KeyKind::Bool) => {
                self.intern_bits_in(v[i] as u64, part)
            }
            (Dictionary::F64(v), KeyKind::Float) => self.intern_bits_in(v[i].to_bits(), part),
            (_, kind) => {
                return Err(DataFusionError::Internal(format!(
                    "segment dictionary does not match a {kind:?} group key"
                )))
            }
        })
    }

    /// Interns every entry of a segment dictionary in id order, setting `key_ids[id]` to
    /// each one's key id. Reading the dictionary front to back keeps its strings streaming
    /// through the cache; interning them as rows first use them reads it at random (two
    /// cache misses per entry on a large dictionary, before the table's own).
    #[inline(never)]
    pub(crate) fn intern_dict(
        &mut self,
        dict: &Dictionary,
        key_ids: &mut [u32],
        part: Option<Part>,
    ) -> DfResult<()> {
        if key_ids.len() != dict.len() {
            return Err(DataFusionError::Internal(format!(
                "{} key ids for a dictionary of {} entries",
                key_ids.len(),
                dict.len()
            )));
        }
        match (dict, self.kind) {
            (Dictionary::Str(a), KeyKind::Bytes) => {
                for (i, slot) in key_ids.iter_mut().enumerate() {
                    *slot = self.intern_bytes_in(a.value(i).as_bytes(), part);
                }
            }
            _ => {
                for (id, slot) in key_ids.iter_mut().enumerate() {
                    *slot = self.intern_dict_entry(dict, id as u32, part)?;
                }
            }
        }
        Ok(())
    }

    /// Interns value `id` of another interner of the same kind (merging workers).
    pub(crate) fn intern_from(&mut self, other: &KeyInterner, id: u32) -> u32 {
        if other.null_id == Some(id) {
            return self.intern_null();
        }
        match self.kind {
            KeyKind::Bytes => {
                let i = id as usize;
                self.intern_bytes(&other.data[other.offsets[i]..other.offsets[i + 1]])
            }
            _ => self.intern_bits(other.bits[id as usize]),
        }
    }

    /// Interns every row of `arr` (of this key's kind), appending the ids to `out`.
    pub(crate) fn intern_array(&mut self, arr: &ArrayRef, out: &mut Vec<u32>) -> DfResult<()> {
        match self.kind {
            KeyKind::Bytes => {
                let a = cast(arr, &DataType::Utf8)?;
                let a = a.as_string::<i32>();
                for i in 0..a.len() {
                    out.push(if a.is_null(i) {
                        self.intern_null()
                    } else {
                        self.intern_bytes(a.value(i).as_bytes())
                    });
                }
            }
            KeyKind::Int => {
                let a = cast(arr, &DataType::Int64)?;
                let a = a.as_primitive::<Int64Type>();
                self.intern_bit_rows(a, |i| a.value(i) as u64, out);
            }
            KeyKind::Float => {
                let a = cast(arr, &DataType::Float64)?;
                let a = a.as_primitive::<Float64Type>();
                self.intern_bit_rows(a, |i| a.value(i).to_bits(), out);
            }
            KeyKind::Bool => {
                let a = arr.as_boolean_opt().ok_or_else(|| {
                    DataFusionError::Internal(format!("boolean key got {}", arr.data_type()))
                })?;
                self.intern_bit_rows(a, |i| a.value(i) as u64, out);
            }
        }
        Ok(())
    }

    /// Interns the 64-bit pattern `bits(i)` of every non-null row of `arr`. Computed keys
    /// such as truncated timestamps come in runs: the lookup is skipped while a value repeats.
    fn intern_bit_rows(
        &mut self,
        arr: &dyn Array,
        bits: impl Fn(usize) -> u64,
        out: &mut Vec<u32>,
    ) {
        let mut last: Option<(u64, u32)> = None;
        for i in 0..arr.len() {
            out.push(if arr.is_null(i) {
                self.intern_null()
            } else {
                let v = bits(i);
                match last {
                    Some((lv, id)) if lv == v => id,
                    _ => {
                        let id = self.intern_bits(v);
                        last = Some((v, id));
                        id
                    }
                }
            });
        }
    }

    /// The distinct values in id order, as an array of type `dt`.
    pub(crate) fn values(&self, dt: &DataType) -> DfResult<ArrayRef> {
        let n = self.len();
        let nulls = self
            .null_id
            .map(|nid| NullBuffer::from_iter((0..n).map(|i| i != nid as usize)));
        let arr: ArrayRef = match self.kind {
            KeyKind::Bytes => {
                let offsets: Vec<i32> = self
                    .offsets
                    .iter()
                    .map(|&o| {
                        i32::try_from(o).map_err(|_| {
                            DataFusionError::ResourcesExhausted(
                                "group keys exceed 2 GiB of string data".into(),
                            )
                        })
                    })
                    .collect::<DfResult<_>>()?;
                Arc::new(StringArray::try_new(
                    OffsetBuffer::new(ScalarBuffer::from(offsets)),
                    self.data.clone().into(),
                    nulls,
                )?)
            }
            KeyKind::Int => Arc::new(Int64Array::new(
                self.bits.iter().map(|&b| b as i64).collect(),
                nulls,
            )),
            KeyKind::Float => Arc::new(Float64Array::new(
                self.bits.iter().map(|&b| f64::from_bits(b)).collect(),
                nulls,
            )),
            KeyKind::Bool => Arc::new(BooleanArray::new(
                self.bits.iter().map(|&b| b != 0).collect(),
                nulls,
            )),
        };
        match dt {
            _ if arr.data_type() == dt => Ok(arr),
            // Days: narrowed first (Arrow casts Int32, not Int64, to Date32).
            DataType::Date32 => Ok(cast(&cast(&arr, &DataType::Int32)?, dt)?),
            _ => Ok(cast(&arr, dt)?),
        }
    }
}

/// Maps tuples of key ids to dense group ids (one GROUP BY key: the key id is the group id).
pub(crate) struct GroupMap {
    keys: usize,
    hasher: RandomState,
    table: HashTable<u32>,
    /// `keys` key ids per group, when there is more than one key.
    tuples: Vec<u32>,
    /// Groups when there is one key (tracked by the caller through the interner).
    single_len: usize,
}

impl GroupMap {
    pub(crate) fn new(keys: usize) -> Self {
        GroupMap {
            keys,
            hasher: RandomState::with_seeds(0x2545, 0xf491, 0x4f6c, 0xdd1d),
            table: HashTable::new(),
            tuples: Vec::new(),
            single_len: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        if self.keys == 0 {
            // No GROUP BY: one group.
            1
        } else if self.keys == 1 {
            self.single_len
        } else {
            self.tuples.len() / self.keys
        }
    }

    pub(crate) fn size(&self) -> usize {
        self.tuples.capacity() * 4 + self.table.capacity() * 5
    }

    /// With one key, every key id the interner holds is a group.
    pub(crate) fn set_single_len(&mut self, len: usize) {
        self.single_len = len;
    }

    /// The group of a tuple of key ids, created on first sight.
    pub(crate) fn group(&mut self, tuple: &[u32]) -> u32 {
        if self.keys == 0 {
            return 0;
        }
        if self.keys == 1 {
            self.single_len = self.single_len.max(tuple[0] as usize + 1);
            return tuple[0];
        }
        let k = self.keys;
        let hash = self.hasher.hash_one(tuple);
        let tuples = &self.tuples;
        let at = |g: u32| &tuples[g as usize * k..g as usize * k + k];
        if let Some(&g) = self.table.find(hash, |&g| at(g) == tuple) {
            return g;
        }
        let g = (self.tuples.len() / k) as u32;
        self.tuples.extend_from_slice(tuple);
        let (tuples, hasher) = (&self.tuples, &self.hasher);
        self.table.insert_unique(hash, g, |&g| {
            hasher.hash_one(&tuples[g as usize * k..g as usize * k + k])
        });
        g
    }

    /// Key ids of key `k` for every group in group order.
    pub(crate) fn key_column(&self, k: usize) -> UInt32Array {
        if self.keys == 1 {
            return UInt32Array::from_iter_values(0..self.single_len as u32);
        }
        UInt32Array::from_iter_values(self.tuples.iter().skip(k).step_by(self.keys).copied())
    }

    /// The key-id tuple of group `g`.
    pub(crate) fn tuple(&self, g: usize, out: &mut Vec<u32>) {
        out.clear();
        if self.keys == 0 {
            return;
        }
        if self.keys == 1 {
            out.push(g as u32);
        } else {
            out.extend_from_slice(&self.tuples[g * self.keys..(g + 1) * self.keys]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interning_is_stable_and_null_is_its_own_value() {
        let mut k = KeyInterner::new(KeyKind::Bytes);
        let a = k.intern_bytes(b"a");
        let e = k.intern_bytes(b"");
        let n = k.intern_null();
        assert_eq!(k.intern_bytes(b"a"), a);
        assert_ne!(e, n, "empty string and NULL differ");
        assert_eq!(k.intern_null(), n);
        let vals = k.values(&DataType::Utf8).unwrap();
        let vals = vals.as_string::<i32>();
        assert_eq!(vals.value(a as usize), "a");
        assert!(vals.is_null(n as usize));
        assert!(!vals.is_null(e as usize));

        // Values past the inline length that share their first bytes stay distinct, and the
        // table keeps working across growth.
        let long: Vec<String> = (0..5000)
            .map(|i| format!("a-long-common-prefix-{i}"))
            .collect();
        let ids: Vec<u32> = long.iter().map(|v| k.intern_bytes(v.as_bytes())).collect();
        for (v, id) in long.iter().zip(&ids) {
            assert_eq!(k.intern_bytes(v.as_bytes()), *id);
        }
        let vals = k.values(&DataType::Utf8).unwrap();
        assert_eq!(
            vals.as_string::<i32>().value(ids[4321] as usize),
            long[4321]
        );
        assert_eq!(k.len(), 3 + long.len());

        let mut f = KeyInterner::new(KeyKind::Float);
        let arr: ArrayRef = Arc::new(Float64Array::from(vec![Some(1.5), None, Some(1.5)]));
        let mut ids = Vec::new();
        f.intern_array(&arr, &mut ids).unwrap();
        assert_eq!(ids[0], ids[2]);
        assert_ne!(ids[0], ids[1]);

        let mut g = GroupMap::new(2);
        let x = g.group(&[1, 2]);
        let y = g.group(&[2, 1]);
        assert_ne!(x, y);
        assert_eq!(g.group(&[1, 2]), x);
        assert_eq!(g.len(), 2);
        assert_eq!(g.key_column(1).values().to_vec(), vec![2, 1]);
    }

    /// Integers in the dense range and outside it (footer bounds that were wrong) get one id
    /// per value, whichever path finds them, and merge into a hashed interner by value.
    #[test]
    fn dense_integer_keys_match_hashed_ones() {
        let mut dense = KeyInterner::new(KeyKind::Int).with_int_range(-5, 100);
        let mut hashed = KeyInterner::new(KeyKind::Int);
        let values: Vec<i64> = vec![7, -5, 100, 101, -6, 7, i64::MIN, i64::MAX, 0, 101, -5];
        let a: Vec<u32> = values
            .iter()
            .map(|&v| dense.intern_bits(v as u64))
            .collect();
        let b: Vec<u32> = values
            .iter()
            .map(|&v| hashed.intern_bits(v as u64))
            .collect();
        assert_eq!(a, b, "first-seen order gives the same ids");
        let n = dense.intern_null();
        assert_eq!(dense.intern_null(), n);
        assert_eq!(dense.len(), hashed.len() + 1);
        let vals = dense.values(&DataType::Int64).unwrap();
        let vals = vals.as_primitive::<arrow::datatypes::Int64Type>();
        for (&v, &id) in values.iter().zip(&a) {
            assert_eq!(vals.value(id as usize), v);
        }
        assert!(vals.is_null(n as usize));
        let mut merged = KeyInterner::new(KeyKind::Int).with_int_range(0, 10);
        for id in 0..dense.len() as u32 {
            let m = merged.intern_from(&dense, id);
            assert_eq!(m, id, "merging into an empty interner keeps ids");
        }
        // A range too wide is hashed.
        let wide = KeyInterner::new(KeyKind::Int).with_int_range(0, i64::MAX);
        assert!(wide.dense.is_none());
    }
}
