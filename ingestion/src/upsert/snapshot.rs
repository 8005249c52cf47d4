//! The persisted keyed state of one partition, written with each seal and read at start.
//! In: the partition's [`SlotSnapshot`]s at the sealed checkpoint. Out: bytes, and back.
//!
//! ```text
//! snapshot := "BKS1" slots:u32 slot* crc32:u32        (little-endian; crc over all before)
//! slot     := id_len:u16 id:u8[id_len] docs:u32
//!             valid_len:u32 roaring:u8[valid_len] tomb_len:u32 roaring:u8[tomb_len]
//! ```
//! Reading checks the magic, every length and the checksum: damaged bytes are an error,
//! never a panic.

use std::sync::Arc;

use basalt_segment::RoaringBitmap;

use super::partition::SlotSnapshot;
use crate::error::{IngestError, Result};

const MAGIC: &[u8; 4] = b"BKS1";

pub fn encode(slots: &[SlotSnapshot]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(slots.len() as u32).to_le_bytes());
    for s in slots {
        let id = s.id.as_bytes();
        let id_len = u16::try_from(id.len())
            .map_err(|_| IngestError::Spec(format!("segment id {:?} too long", s.id)))?;
        out.extend_from_slice(&id_len.to_le_bytes());
        out.extend_from_slice(id);
        out.extend_from_slice(&s.docs.to_le_bytes());
        for bm in [&s.valid, &s.tombstones] {
            out.extend_from_slice(&(bm.serialized_size() as u32).to_le_bytes());
            bm.serialize_into(&mut out)?;
        }
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

fn bad(what: &str) -> IngestError {
    IngestError::Corrupt(format!("keyed snapshot: {what}"))
}

struct Cursor<'a> {
    b: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if self.b.len() < n {
            return Err(bad(&format!("truncated in {what}")));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

pub fn decode(bytes: &[u8]) -> Result<Vec<SlotSnapshot>> {
    if bytes.len() < 12 || &bytes[..4] != MAGIC {
        return Err(bad("not a keyed snapshot (bad magic or too short)"));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32fast::hash(body) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
        return Err(bad("checksum mismatch"));
    }
    let mut c = Cursor { b: &body[4..] };
    let n = c.u32("slot count")?;
    let mut out = Vec::new();
    for _ in 0..n {
        let l = c.take(2, "id length")?;
        let id_len = u16::from_le_bytes([l[0], l[1]]) as usize;
        let id = std::str::from_utf8(c.take(id_len, "id")?)
            .map_err(|_| bad("segment id is not UTF-8"))?
            .to_string();
        let docs = c.u32("docs")?;
        let mut bms = Vec::with_capacity(2);
        for what in ["valid docs", "tombstones"] {
            let len = c.u32(what)? as usize;
            let raw = c.take(len, what)?;
            let bm = RoaringBitmap::deserialize_from(raw)
                .map_err(|e| bad(&format!("{what} of {id}: {e}")))?;
            if bm.max().is_some_and(|m| m >= docs) {
                return Err(bad(&format!("{what} of {id} name a doc past {docs}")));
            }
            bms.push(Arc::new(bm));
        }
        let tombstones = bms.pop().expect("two bitmaps");
        let valid = bms.pop().expect("two bitmaps");
        out.push(SlotSnapshot {
            id,
            docs,
            valid,
            tombstones,
        });
    }
    if !c.b.is_empty() {
        return Err(bad("trailing bytes"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trips_and_never_panics_on_damage(
            slots in proptest::collection::vec(
                (proptest::collection::btree_set(0u32..5000, 0..200), proptest::collection::btree_set(0u32..5000, 0..20)),
                0..4),
            flip in any::<(usize, u8)>(),
            cut in any::<usize>(),
        ) {
            let snaps: Vec<SlotSnapshot> = slots.into_iter().enumerate().map(|(i, (v, t))| SlotSnapshot {
                id: format!("seg{i}"),
                docs: 5000,
                valid: Arc::new(v.into_iter().collect()),
                tombstones: Arc::new(t.into_iter().collect()),
            }).collect();
            let bytes = encode(&snaps).unwrap();
            let back = decode(&bytes).unwrap();
            prop_assert_eq!(back.len(), snaps.len());
            for (a, b) in back.iter().zip(&snaps) {
                prop_assert_eq!(&a.id, &b.id);
                prop_assert_eq!(&a.valid, &b.valid);
                prop_assert_eq!(&a.tombstones, &b.tombstones);
            }
            let mut damaged = bytes.clone();
            let at = flip.0 % damaged.len();
            damaged[at] ^= flip.1.max(1);
            prop_assert!(decode(&damaged).is_err());
            prop_assert!(decode(&bytes[..cut % bytes.len()]).is_err());
        }
    }
}
