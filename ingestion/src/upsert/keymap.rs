//! The key map of one partition of an upsert or dedup table: from a primary key's hash to
//! the location of the key's current row and its comparison value. In: 128-bit key hashes
//! ([`KeyHash`]). Out: the entry of a key, if any.
//!
//! Memory is the point (Pinot documents key bytes + 24 on the JVM heap, and upsert heap is
//! its users' most reported pain). An entry is 26 bytes — 96 bits of the key's hash, 48 bits
//! of location (doc, slot, deleted flag) and the 64-bit comparison value — plus hashbrown's
//! one control byte per bucket. A hash table doubles when it fills, so its load swings
//! between 7/16 and 7/8; one table would cost 31 to 62 bytes per key depending on where the
//! key count falls. The map is split into [`SHARDS`] tables whose shares of the keys grow
//! geometrically (1 : 2^(1/64) : ... : ~2), so the shards double at different key counts
//! and the average load stays near its mean over a doubling (~0.63): 43-46 bytes per key at
//! any size.
//!
//! 96 bits of hash: two distinct keys collide with probability about n² / 2^97 (≈ 6e-16 for
//! 10 million keys).

use hashbrown::HashTable;

/// A primary key's 128-bit hash (xxh3), computed from its column values.
pub type KeyHash = u128;

/// The hash of a key's encoded bytes.
pub fn hash_key(bytes: &[u8]) -> KeyHash {
    twox_hash::XxHash3_128::oneshot(bytes)
}

/// Shards of the map; their shares of the keys grow geometrically.
pub const SHARDS: usize = 64;
/// Resolution of the shard lookup (top bits of the hash → shard).
const SHARD_TABLE_BITS: u32 = 12;

/// Where a key's current row is: a slot (a segment of the partition) and a doc in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// At most [`MAX_SLOT`].
    pub slot: u32,
    /// At most [`MAX_DOC`].
    pub doc: u32,
}

/// One key's entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub location: Location,
    pub comparison: i64,
    /// The key's last accepted row deleted it: hidden, but the entry stays (at the delete
    /// row) so older rows arriving late stay ignored.
    pub deleted: bool,
}

/// Hash bits kept per entry (96) and the bucket hash hashbrown sees.
#[derive(Clone, Copy)]
struct Kept([u16; 6]);

impl Kept {
    fn of(h: KeyHash) -> Kept {
        Kept(std::array::from_fn(|i| (h >> (16 * i)) as u16))
    }

    fn bucket_hash(self) -> u64 {
        bucket_hash(&self.0)
    }

    /// The top 32 of the 96 bits (the bucket hash uses the low 64).
    fn shard_bits(self) -> u32 {
        self.0[4] as u32 | (self.0[5] as u32) << 16
    }
}

fn bucket_hash(w: &[u16]) -> u64 {
    w[..4]
        .iter()
        .enumerate()
        .fold(0, |acc, (i, &x)| acc | (x as u64) << (16 * i))
}

/// An entry as stored: 96 hash bits, 48 bits of location (doc: 28, slot: 19, deleted: 1),
/// 64 bits of comparison value; 26 bytes, 2-byte aligned.
type Raw = [u16; 13];

/// Largest doc id a location holds (segments of keyed tables have at most 2^28 rows).
pub const MAX_DOC: u32 = (1 << 28) - 1;
/// Largest slot number a location holds.
pub const MAX_SLOT: u32 = (1 << 19) - 1;

fn raw(k: Kept, e: Entry) -> Raw {
    let loc = (e.location.doc as u64 & MAX_DOC as u64)
        | (e.location.slot as u64 & MAX_SLOT as u64) << 28
        | (e.deleted as u64) << 47;
    let c = e.comparison as u64;
    let mut r = [0u16; 13];
    r[..6].copy_from_slice(&k.0);
    for i in 0..3 {
        r[6 + i] = (loc >> (16 * i)) as u16;
    }
    for i in 0..4 {
        r[9 + i] = (c >> (16 * i)) as u16;
    }
    r
}

fn word(r: &[u16]) -> u64 {
    r.iter()
        .enumerate()
        .fold(0, |acc, (i, &x)| acc | (x as u64) << (16 * i))
}

fn entry(r: &Raw) -> Entry {
    let loc = word(&r[6..9]);
    Entry {
        location: Location {
            slot: ((loc >> 28) & MAX_SLOT as u64) as u32,
            doc: (loc & MAX_DOC as u64) as u32,
        },
        comparison: word(&r[9..13]) as i64,
        deleted: loc >> 47 != 0,
    }
}

fn rehash(r: &Raw) -> u64 {
    bucket_hash(&r[..4])
}

/// The key map (see the module docs).
pub struct KeyMap {
    shards: Vec<HashTable<Raw>>,
    /// Top [`SHARD_TABLE_BITS`] bits of a hash's third word → shard.
    shard_of: Vec<u8>,
    len: usize,
}

impl Default for KeyMap {
    fn default() -> Self {
        KeyMap::new()
    }
}

impl std::fmt::Debug for KeyMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyMap")
            .field("keys", &self.len)
            .field("bytes", &self.memory_bytes())
            .finish()
    }
}

impl KeyMap {
    pub fn new() -> KeyMap {
        // Shard i's share is proportional to 2^(i / SHARDS).
        let weights: Vec<f64> = (0..SHARDS)
            .map(|i| (i as f64 / SHARDS as f64).exp2())
            .collect();
        let total: f64 = weights.iter().sum();
        let slots = 1usize << SHARD_TABLE_BITS;
        let mut shard_of = Vec::with_capacity(slots);
        let mut cum = 0.0;
        for (i, w) in weights.iter().enumerate() {
            cum += w / total;
            let upto = if i + 1 == SHARDS {
                slots
            } else {
                (cum * slots as f64).round() as usize
            };
            while shard_of.len() < upto {
                shard_of.push(i as u8);
            }
        }
        KeyMap {
            shards: (0..SHARDS).map(|_| HashTable::new()).collect(),
            shard_of,
            len: 0,
        }
    }

    fn shard(&self, k: Kept) -> usize {
        self.shard_of[(k.shard_bits() >> (32 - SHARD_TABLE_BITS)) as usize] as usize
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, h: KeyHash) -> Option<Entry> {
        let k = Kept::of(h);
        self.shards[self.shard(k)]
            .find(k.bucket_hash(), |r| r[..6] == k.0)
            .map(entry)
    }

    /// Sets the key's entry; returns the previous one.
    pub fn insert(&mut self, h: KeyHash, e: Entry) -> Option<Entry> {
        let k = Kept::of(h);
        let s = self.shard(k);
        let table = &mut self.shards[s];
        if let Some(r) = table.find_mut(k.bucket_hash(), |r| r[..6] == k.0) {
            let old = entry(r);
            *r = raw(k, e);
            return Some(old);
        }
        table.insert_unique(k.bucket_hash(), raw(k, e), rehash);
        self.len += 1;
        None
    }

    pub fn remove(&mut self, h: KeyHash) -> Option<Entry> {
        let k = Kept::of(h);
        let s = self.shard(k);
        match self.shards[s].find_entry(k.bucket_hash(), |r| r[..6] == k.0) {
            Ok(o) => {
                let (r, _) = o.remove();
                self.len -= 1;
                Some(entry(&r))
            }
            Err(_) => None,
        }
    }

    /// Removes every key whose comparison value is below `min`; calls `evicted` with each
    /// removed entry. Returns how many were removed.
    pub fn evict_below(&mut self, min: i64, mut evicted: impl FnMut(Entry)) -> usize {
        let mut n = 0;
        for t in &mut self.shards {
            t.retain(|r| {
                let e = entry(r);
                let keep = e.comparison >= min;
                if !keep {
                    evicted(e);
                    n += 1;
                }
                keep
            });
        }
        self.len -= n;
        n
    }

    /// Calls `f` with every entry.
    pub fn for_each(&self, mut f: impl FnMut(Entry)) {
        for t in &self.shards {
            for r in t.iter() {
                f(entry(r));
            }
        }
    }

    /// Keeps the entries `f` returns true for, with the changes `f` made to them.
    pub fn retain_mut(&mut self, mut f: impl FnMut(&mut Entry) -> bool) {
        let mut removed = 0;
        for t in &mut self.shards {
            t.retain(|r| {
                let mut e = entry(r);
                let keep = f(&mut e);
                if keep {
                    let mut k = Kept([0; 6]);
                    k.0.copy_from_slice(&r[..6]);
                    *r = raw(k, e);
                } else {
                    removed += 1;
                }
                keep
            });
        }
        self.len -= removed;
    }

    /// Heap bytes held by the map.
    pub fn memory_bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|t| t.allocation_size())
            .sum::<usize>()
            + self.shard_of.len()
            + self.shards.capacity() * std::mem::size_of::<HashTable<Raw>>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn h(i: u64) -> KeyHash {
        twox_hash::XxHash3_128::oneshot(&i.to_le_bytes())
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8, u32, i64),
        Remove(u8),
        Evict(i64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (any::<u8>(), any::<u32>(), -50i64..50).prop_map(|(k, d, c)| Op::Insert(k, d, c)),
            1 => any::<u8>().prop_map(Op::Remove),
            1 => (-60i64..60).prop_map(Op::Evict),
        ]
    }

    proptest! {
        #[test]
        fn behaves_like_a_hash_map(ops in proptest::collection::vec(op(), 0..300)) {
            let mut m = KeyMap::new();
            let mut r: HashMap<u8, Entry> = HashMap::new();
            for o in ops {
                match o {
                    Op::Insert(k, d, c) => {
                        let e = Entry { location: Location { slot: d % 7, doc: d & MAX_DOC }, comparison: c, deleted: d % 3 == 0 };
                        prop_assert_eq!(m.insert(h(k as u64), e), r.insert(k, e));
                    }
                    Op::Remove(k) => prop_assert_eq!(m.remove(h(k as u64)), r.remove(&k)),
                    Op::Evict(min) => {
                        let before = r.len();
                        r.retain(|_, e| e.comparison >= min);
                        prop_assert_eq!(m.evict_below(min, |_| {}), before - r.len());
                    }
                }
                prop_assert_eq!(m.len(), r.len());
            }
            for k in 0..=255u8 {
                prop_assert_eq!(m.get(h(k as u64)), r.get(&k).copied());
            }
        }
    }

    #[test]
    fn shards_take_geometric_shares() {
        let m = KeyMap::new();
        let mut counts = [0usize; SHARDS];
        for i in 0..200_000u64 {
            counts[m.shard(Kept::of(h(i)))] += 1;
        }
        let ratio = counts[SHARDS - 1] as f64 / counts[0] as f64;
        assert!((1.8..2.2).contains(&ratio), "last/first shard {ratio}");
    }

    #[test]
    fn stays_under_48_bytes_per_key_at_every_size() {
        let mut m = KeyMap::new();
        let mut worst: f64 = 0.0;
        let e = Entry {
            location: Location { slot: 0, doc: 0 },
            comparison: 0,
            deleted: false,
        };
        for i in 0..600_000u64 {
            m.insert(h(i), e);
            if i > 100_000 && i % 10_000 == 0 {
                let b = m.memory_bytes() as f64 / m.len() as f64;
                if std::env::var("KEYMAP_CURVE").is_ok() {
                    eprintln!("{i} {b:.1}");
                }
                worst = worst.max(b);
            }
        }
        assert!(worst <= 48.0, "worst {worst:.1} bytes per key");
    }
}
