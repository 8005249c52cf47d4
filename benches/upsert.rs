//! Upsert tables (issue 4), two parts:
//!
//! - `keymap`: the key map alone — bytes per key and insert/update cost at 10M distinct
//!   16-byte keys with 30% updates;
//! - `stream`: the same shape end to end in one process, through an in-memory stream source
//!   (no broker, so the figures are Basalt's): 10M distinct 16-byte keys, 30% of events
//!   updates, 4 partitions, the events schema. The same stream goes into an append table and
//!   into a FULL upsert table keyed by `event_id`; the ratio of their ingest rates, the key
//!   map's bytes per key, the dashboard query set's latency on the append table, the upsert
//!   table, and the upsert table's segments without its valid-docs filter (the filter's
//!   overhead on the same data), and the time a restart takes to restore 10M keys.
//!
//! Run: `cargo bench --bench upsert -- --keys 10000000 [--part keymap|stream]`
//! (figures in BENCHMARKS.md).

use std::sync::Arc;
use std::time::{Duration, Instant};

use basalt_broker::source::StoreSource;
use basalt_ingest::gen::{MessageGenerator, EVENTS_SPEC};
use basalt_ingest::realtime::memory::memory_topic;
use basalt_ingest::realtime::IngestionStatus;
use basalt_ingest::upsert::keymap::{hash_key, Entry, KeyMap, Location};
use basalt_ingest::{StoreConfig, TableSpec, TableStore};
use basalt_query::{QueryEngine, QueryLimits, TableSnapshot, TableSource};

fn key(i: u64) -> u128 {
    // A 16-byte key as the key columns hash it.
    let k = format!("order-{i:010}");
    hash_key(k.as_bytes())
}

fn arg(name: &str) -> Option<String> {
    std::env::args().skip_while(|a| a != name).nth(1)
}

fn main() {
    let keys: u64 = arg("--keys")
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let part = arg("--part");
    if part.as_deref().is_none_or(|p| p == "keymap") {
        keymap(keys);
    }
    if part.as_deref().is_none_or(|p| p == "stream") {
        let runs = arg("--runs").and_then(|v| v.parse().ok()).unwrap_or(5);
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(stream(keys, runs));
    }
}

fn keymap(keys: u64) {
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

const PARTITIONS: i32 = 4;
/// Event spacing: 14.3M events span about 4 hours, ending now.
const STEP_MS: i64 = 1;

/// The stream: `keys` distinct keys, 30% of events updates of a key seen before (uniformly
/// chosen), in time order; a key's events all go to one partition. Returns the event count
/// of each partition.
fn produce(topic: &str, keys: u64, now_ms: i64) -> Vec<i64> {
    let total = keys * 10 / 7;
    let t = memory_topic(topic, PARTITIONS);
    let g = MessageGenerator::new();
    let mut offsets = [0i64; PARTITIONS as usize];
    let (mut next_key, mut x) = (0u64, 0x2545_F491_4F6C_DD1Du64);
    let mut buf = Vec::with_capacity(512);
    for i in 0..total {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // Exactly `keys` new keys: an update only while enough events are left for the rest.
        let must_create = keys - next_key >= total - i;
        let key = if !must_create && ((x % 1000 < 300 && next_key > 0) || next_key == keys) {
            (x >> 20) % next_key
        } else {
            next_key += 1;
            next_key - 1
        };
        let p = (hash_key(&key.to_le_bytes()) % PARTITIONS as u128) as i32;
        buf.clear();
        let ts = now_ms - (total - i) as i64 * STEP_MS;
        g.write(p, offsets[p as usize], ts, &mut buf);
        offsets[p as usize] += 1;
        // A 16-byte key in place of the generated event id.
        let start = b"{\"event_id\":\"".len();
        let end = start + buf[start..].iter().position(|&b| b == b'"').unwrap();
        buf.splice(start..end, format!("k{key:015}").into_bytes());
        t.send(p, &buf);
    }
    offsets.to_vec()
}

fn spec(name: &str, topic: &str, upsert: bool) -> TableSpec {
    let mut v: serde_json::Value = serde_json::from_str(EVENTS_SPEC).unwrap();
    v["name"] = name.into();
    v["source"] = serde_json::json!({"memory": {"topic": topic, "partitions": PARTITIONS}});
    if upsert {
        v["primary_key"] = serde_json::json!(["event_id"]);
        v["upsert"] = serde_json::json!({"mode": "FULL"});
    }
    TableSpec::from_json(v.to_string().as_bytes()).unwrap()
}

fn status(store: &TableStore, table: &str) -> IngestionStatus {
    store.table(table).unwrap().ingestion().unwrap()
}

async fn count(engine: &QueryEngine, table: &str) -> u64 {
    let out = engine
        .execute(
            &format!("SELECT count(*) FROM {table}"),
            &QueryLimits::default(),
        )
        .await
        .unwrap();
    let c = out.batches[0].column(0);
    arrow::array::cast::as_primitive_array::<arrow::datatypes::Int64Type>(c).value(0) as u64
}

/// Polls until the table has consumed each partition's `ends` and answers `count(*) = rows`.
async fn wait_ingested(
    store: &TableStore,
    engine: &QueryEngine,
    table: &str,
    ends: &[i64],
    rows: u64,
) {
    let start = Instant::now();
    loop {
        let st = status(store, table);
        let done = ends.iter().enumerate().all(|(i, &end)| {
            st.partitions
                .iter()
                .any(|p| p.partition == i as i32 && p.consumed_offset == Some(end))
        });
        let n = count(engine, table).await;
        if done && n == rows {
            return;
        }
        if start.elapsed().as_secs() % 30 == 29 && start.elapsed().subsec_millis() < 50 {
            eprintln!(
                "{table}: count {n} of {rows}; consumed {:?} of {ends:?}; state {:?} {:?}",
                st.partitions
                    .iter()
                    .map(|p| p.consumed_offset)
                    .collect::<Vec<_>>(),
                st.state,
                st.error
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(3600),
            "{table} stalled: {:?}",
            st.partitions
                .iter()
                .map(|p| p.consumed_offset)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

/// The upsert table's segments without its valid docs (every row, superseded ones too).
#[derive(Debug)]
struct Unfiltered(StoreSource);

impl TableSource for Unfiltered {
    fn table_names(&self) -> Vec<String> {
        self.0.table_names()
    }
    fn snapshot(&self, name: &str) -> Result<Option<TableSnapshot>, basalt_query::QueryError> {
        Ok(self.0.snapshot(name)?.map(|mut s| {
            s.valid.clear();
            s
        }))
    }
}

/// The dashboard query set of `benches/macro/run.py`.
const QUERIES: [(&str, &str); 11] = [
    ("count last 5 min", "SELECT count(*) FROM {t} WHERE ts >= {now} - INTERVAL '5 minutes'"),
    ("top event types last hour", "SELECT event_type, count(*) AS n FROM {t} WHERE ts >= {now} - INTERVAL '1 hour' GROUP BY event_type ORDER BY n DESC LIMIT 10"),
    ("per-minute revenue series", "SELECT date_trunc('minute', ts) AS m, count(*) AS n, sum(revenue) AS rev FROM {t} WHERE ts >= {now} - INTERVAL '1 hour' GROUP BY 1 ORDER BY 1"),
    ("p95 latency, two filters", "SELECT PERCENTILETDIGEST(latency_ms, 95) FROM {t} WHERE country = 'AB' AND device = 'mobile'"),
    ("approx distinct users by country", "SELECT country, DISTINCTCOUNTHLL(user_id) AS users FROM {t} GROUP BY country ORDER BY users DESC LIMIT 10"),
    ("one user's latest events", "SELECT ts, event_type, url FROM {t} WHERE user_id = 'u12345' ORDER BY ts DESC LIMIT 20"),
    ("top urls, two filters", "SELECT url, count(*) AS n FROM {t} WHERE event_type = 'page_view' AND country = 'AC' GROUP BY url ORDER BY n DESC LIMIT 10"),
    ("substring LIKE", "SELECT count(*) FROM {t} WHERE url LIKE '%/p/77%'"),
    ("full-scan group by", "SELECT device, os, count(*) AS n, avg(latency_ms) AS lat FROM {t} GROUP BY device, os ORDER BY n DESC"),
    ("high-cardinality group by", "SELECT user_id, count(*) AS n FROM {t} GROUP BY user_id ORDER BY n DESC LIMIT 10"),
    ("rare three-filter combination", "SELECT count(*), sum(revenue) FROM {t} WHERE country = 'BD' AND device = 'tv' AND event_type = 'purchase'"),
];

async fn median_ms(engine: &QueryEngine, sql: &str, runs: usize) -> f64 {
    let limits = QueryLimits::default();
    engine.execute(sql, &limits).await.unwrap(); // warm-up
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        engine.execute(sql, &limits).await.unwrap();
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    times[runs / 2]
}

async fn stream(keys: u64, runs: usize) {
    let dir = tempfile::tempdir().unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let t = Instant::now();
    let ends = produce("bench_upsert", keys, now_ms);
    let events = ends.iter().sum::<i64>() as u64;
    println!(
        "\nstream: {events} events ({keys} keys, {} updates) generated in {:.1}s; RSS {:.0} MB",
        events - keys,
        t.elapsed().as_secs_f64(),
        rss_mb()
    );
    let store = TableStore::open(StoreConfig::local(dir.path()))
        .await
        .unwrap();
    let engine = QueryEngine::new(Arc::new(StoreSource(store.clone())));
    let mut rates = Vec::new();
    for (table, upsert, rows) in [("append", false, events), ("upserted", true, keys)] {
        let rss = rss_mb();
        let t = Instant::now();
        store
            .create_table(spec(table, "bench_upsert", upsert))
            .await
            .unwrap();
        wait_ingested(&store, &engine, table, &ends, rows).await;
        let secs = t.elapsed().as_secs_f64();
        rates.push(events as f64 / secs);
        let st = status(&store, table);
        let keyed: Vec<_> = st
            .partitions
            .iter()
            .filter_map(|p| p.keyed.as_ref())
            .collect();
        let key_bytes: u64 = keyed.iter().map(|k| k.memory_bytes).sum();
        let n_keys: u64 = keyed.iter().map(|k| k.keys).sum();
        println!(
            "{table:>9}: {events} events in {secs:.1}s = {:.0} events/s; seals {}; RSS +{:.0} MB{}",
            events as f64 / secs,
            st.seals,
            rss_mb() - rss,
            if upsert {
                format!(
                    "; {n_keys} keys, key map + bitmaps {:.0} MB = {:.1} B/key",
                    key_bytes as f64 / 1e6,
                    key_bytes as f64 / n_keys as f64
                )
            } else {
                String::new()
            }
        );
    }
    println!("ingest rate upsert / append: {:.2}", rates[1] / rates[0]);

    let unfiltered = QueryEngine::new(Arc::new(Unfiltered(StoreSource(store.clone()))));
    let now = format!("to_timestamp_millis({now_ms})");
    println!(
        "\n{:34} {:>10} {:>10} {:>12} {:>9}",
        "query (median ms)", "append", "upsert", "no filter", "overhead"
    );
    let mut overheads = Vec::new();
    for (name, q) in QUERIES {
        let sql = |t: &str| q.replace("{t}", t).replace("{now}", &now);
        let a = median_ms(&engine, &sql("append"), runs).await;
        let u = median_ms(&engine, &sql("upserted"), runs).await;
        let n = median_ms(&unfiltered, &sql("upserted"), runs).await;
        overheads.push(u / n);
        println!("{name:34} {a:10.1} {u:10.1} {n:12.1} {:9.2}", u / n);
    }
    let geo = (overheads.iter().map(|r| r.ln()).sum::<f64>() / overheads.len() as f64).exp();
    println!("geometric mean of upsert / same segments without the filter: {geo:.2}");

    // Restart: the store reopens; the upsert table restores its keys from the snapshots and
    // replays what was not sealed.
    store.drop_table("append").await.unwrap();
    store.shutdown();
    drop((engine, unfiltered, store));
    let t = Instant::now();
    let store = TableStore::open(StoreConfig::local(dir.path()))
        .await
        .unwrap();
    let opened = t.elapsed().as_secs_f64();
    loop {
        let st = status(&store, "upserted");
        if st.state == basalt_ingest::realtime::IngestionState::Consuming {
            break;
        }
        assert!(st.error.is_none(), "{:?}", st.error);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let restored = t.elapsed().as_secs_f64();
    let engine = QueryEngine::new(Arc::new(StoreSource(store.clone())));
    wait_ingested(&store, &engine, "upserted", &ends, keys).await;
    let replay: u64 = status(&store, "upserted")
        .partitions
        .iter()
        .map(|p| p.events)
        .sum();
    println!(
        "\nrestart with {keys} keys: store open (sealed valid docs queryable) {opened:.1}s, key maps restored {restored:.1}s, \
         caught up (replayed {replay} unsealed events) {:.1}s",
        t.elapsed().as_secs_f64()
    );
    store.shutdown();
}
