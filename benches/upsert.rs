//! Key map of upsert and dedup tables: bytes per key and insert/update/lookup cost at 10M
//! distinct 16-byte keys with 30% updates (the shape). The end-to-end figures (ingest
//! ratio against an append table, valid-docs query overhead, startup for 10M keys) are not
//! measured yet.
//!
//! Run: `cargo bench --bench upsert` (figures in BENCHMARKS.md).

use std::time::Instant;

use basalt_ingest::upsert::keymap::{hash_key, Entry, KeyMap, Location};

fn key(i: u64) -> u128 {
    // A 16-byte key as the key columns hash it.
    let k = format!("order-{i:010}");
    hash_key(k.as_bytes())
}

fn main() {
    let keys: u64 = std::env::args()
        .skip_while(|a| a != "--keys")
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let updates = keys * 3 / 7; // 30% of all events are updates
    let hashes: Vec<u128> = (0..keys).map(key).collect();
    let mut m = KeyMap::new();
    let started = Instant::now();
    let mut worst: f64 = 0.0;
    for (i, &h) in hashes.iter().enumerate() {
        m.insert(
            h,
            Entry {
                location: Location {
                    slot: (i / 1_000_000) as u32,
                    doc: (i % 1_000_000) as u32,
                },
                comparison: i as i64,
                deleted: false,
            },
        );
        if i >= 1_000_000 && i % 250_000 == 0 {
            worst = worst.max(m.memory_bytes() as f64 / m.len() as f64);
        }
    }
    let insert = started.elapsed();
    let started = Instant::now();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for u in 0..updates {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let h = hashes[(x % keys) as usize];
        let e = m.get(h).expect("known key");
        m.insert(
            h,
            Entry {
                location: Location {
                    slot: 10,
                    doc: (u % 1_000_000) as u32,
                },
                comparison: e.comparison + 1,
                deleted: false,
            },
        );
    }
    let update = started.elapsed();
    println!(
        "keys {keys}: {:.1} bytes/key at the end, worst {:.1} bytes/key from 1M keys on",
        m.memory_bytes() as f64 / m.len() as f64,
        worst
    );
    println!(
        "insert {:.0} ns/key ({:.1} M keys/s); update (lookup + compare + write) {:.0} ns/update over {updates}",
        insert.as_nanos() as f64 / keys as f64,
        keys as f64 / insert.as_secs_f64() / 1e6,
        update.as_nanos() as f64 / updates as f64
    );
}
