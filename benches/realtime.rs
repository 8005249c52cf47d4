//! Real-time ingestion benchmark (issue 3). Runs against a local Kafka-compatible broker
//! (tansu, `tests/services/services.sh start`) and the `basalt` binary:
//!
//! 1. decode + index without a broker: JSON messages in memory through the per-partition
//!    decoder into a mutable segment, then a snapshot (indexes built), on one thread;
//! 2. the broker's ceiling: a plain rdkafka consumer reading the whole topic and discarding;
//! 3. Basalt consuming the same topic into queryable mutable segments (events/s, MB/s), and
//!    the server's RSS and memory per million rows once everything is in mutable segments;
//! 4. freshness: a probe producing timestamped events under a steady background load and
//!    polling SQL until each is visible (p50/p99).
//!
//! ```sh
//! tests/services/services.sh start
//! cargo bench --bench realtime -- --events 1000000   # runs the release `basalt` binary
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use basalt_ingest::decode::ingest_schema;
use basalt_ingest::gen::{MessageGenerator, EVENTS_SPEC};
use basalt_ingest::mutable::MutableSegment;
use basalt_ingest::quarantine::{MessageDecoder, MessageOrigin};
use basalt_ingest::TableSpec;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::Producer;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};

#[allow(dead_code)]
#[path = "../tests/e2e/harness.rs"]
mod harness;
#[allow(dead_code)]
#[path = "../tests/e2e/kafka.rs"]
mod kafka;

use harness::{drop_table, get_json, sql, Server};
use kafka::{create_topic, send};

const PARTITIONS: i32 = 4;

struct Args {
    brokers: String,
    events: u64,
    probes: usize,
    background_rate: u64,
}

fn args() -> Args {
    let mut a = Args {
        brokers: std::env::var("BASALT_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into()),
        events: 1_000_000,
        probes: 100,
        background_rate: 5_000,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let v = argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--brokers" => a.brokers = v,
            "--events" => a.events = v.parse().expect("--events N"),
            "--probes" => a.probes = v.parse().expect("--probes N"),
            "--background-rate" => a.background_rate = v.parse().expect("--background-rate N"),
            "--bench" => {
                i += 1;
                continue;
            }
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    a
}

fn payloads(from: u64, n: u64, ts: i64) -> Vec<(i32, Vec<u8>)> {
    let g = MessageGenerator::new();
    (from..from + n)
        .map(|i| {
            let p = (i % PARTITIONS as u64) as i32;
            let mut buf = Vec::with_capacity(320);
            g.write(p, i as i64, ts, &mut buf);
            (p, buf)
        })
        .collect()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// 1. Decode + index on one thread, no broker.
fn decode_and_index(events: u64) {
    let spec = TableSpec::from_json(EVENTS_SPEC.as_bytes()).unwrap();
    let schema = spec.segment_schema();
    let msgs = payloads(0, events, now_ms());
    let bytes: usize = msgs.iter().map(|m| m.1.len()).sum();
    let start = Instant::now();
    let mut dec = MessageDecoder::new(&schema, 16_384);
    let build = basalt_segment::BuildOptions {
        compress: false,
        ..Default::default()
    };
    let seg = MutableSegment::new(schema.clone(), ingest_schema(&schema), build);
    for (i, (p, payload)) in msgs.iter().enumerate() {
        let origin = MessageOrigin {
            topic: "bench".into(),
            partition: *p,
            offset: i as i64,
            timestamp: None,
        };
        dec.decode(payload, origin).expect("valid message");
        if dec.pending_rows() >= 16_384 {
            seg.append(dec.take_batch().unwrap().unwrap()).unwrap();
        }
    }
    if let Some(b) = dec.take_batch().unwrap() {
        seg.append(b).unwrap();
    }
    let decoded = start.elapsed();
    let chunks = seg.snapshot().unwrap();
    let total = start.elapsed();
    assert_eq!(
        chunks.iter().map(|c| c.row_count() as u64).sum::<u64>(),
        events
    );
    println!(
        "decode+index (1 thread, in-process): {events} events, {:.1} MB JSON: decode {:.2} s, +index {:.2} s = {:.0} events/s per core ({:.1} MB/s); mutable segment holds {:.1} MB",
        bytes as f64 / 1e6,
        decoded.as_secs_f64(),
        (total - decoded).as_secs_f64(),
        events as f64 / total.as_secs_f64(),
        bytes as f64 / 1e6 / total.as_secs_f64(),
        seg.memory_bytes() as f64 / 1e6,
    );
}

/// 2. The broker's ceiling: a plain consumer reading everything and discarding it.
fn ceiling(brokers: &str, topic: &str, events: u64) -> f64 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "bench-ceiling")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let start = Instant::now();
    let (mut n, mut bytes) = (0u64, 0usize);
    while n < events {
        if let Some(m) = c.poll(Duration::from_secs(5)) {
            let m = m.expect("consume");
            bytes += rdkafka::Message::payload(&m).map_or(0, |p| p.len());
            n += 1;
        }
        assert!(
            start.elapsed() < Duration::from_secs(900),
            "ceiling consumer stuck at {n}"
        );
    }
    let s = start.elapsed().as_secs_f64();
    println!(
        "broker ceiling (plain rdkafka consumer, discard): {:.0} events/s, {:.1} MB/s",
        n as f64 / s,
        bytes as f64 / 1e6 / s
    );
    n as f64 / s
}

fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

async fn ingestion_sum(c: &reqwest::Client, s: &Server, table: &str, field: &str) -> i64 {
    let v = get_json(c, s, &format!("/tables/{table}/ingestion")).await;
    v["partitions"]
        .as_array()
        .map(|ps| ps.iter().filter_map(|p| p[field].as_i64()).sum())
        .unwrap_or(0)
}

fn table_spec(table: &str, brokers: &str, topic: &str, max_rows: u64) -> String {
    let mut v: Value = serde_json::from_str(EVENTS_SPEC).unwrap();
    v["name"] = table.into();
    v["source"] = json!({"kafka": {"brokers": brokers, "topic": topic, "format": "json",
        "start": "earliest", "properties": {"session.timeout.ms": "6000"}}});
    v["segment"] = json!({"max_rows": max_rows, "max_age": "10m"});
    v.to_string()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = args();
    println!(
        "real-time benchmark: {} events, brokers {}",
        a.events, a.brokers
    );
    if std::env::var("BENCH_SKIP_DECODE").is_err() {
        tokio::task::block_in_place(|| decode_and_index(a.events.min(1_000_000)));
    }

    // Produce the topic once.
    let stamp = now_ms();
    let topic = format!("bench_{stamp}");
    create_topic(&a.brokers, &topic, PARTITIONS).await;
    let msgs = payloads(0, a.events, now_ms());
    let bytes: usize = msgs.iter().map(|m| m.1.len()).sum();
    let p = kafka::producer(&a.brokers);
    let start = Instant::now();
    tokio::task::block_in_place(|| {
        for (part, m) in &msgs {
            send(&p, &topic, *part, m);
            p.poll(Duration::ZERO);
        }
        p.flush(Duration::from_secs(600)).unwrap();
    });
    println!(
        "produced {} events ({:.1} MB) in {:.1} s",
        a.events,
        bytes as f64 / 1e6,
        start.elapsed().as_secs_f64()
    );
    drop(msgs);

    let ceiling = tokio::task::block_in_place(|| ceiling(&a.brokers, &topic, a.events));

    // Basalt consumes the same topic; max_rows keeps every row in mutable segments so the
    // memory figures are the mutable segments'.
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), None);
    let pid = s.pid();
    let c = reqwest::Client::new();
    let rss_idle = rss_mb(pid);
    let table = format!("rt_{stamp}");
    let start = Instant::now();
    let r = c
        .post(s.url("/tables"))
        .body(table_spec(&table, &a.brokers, &topic, 4_000_000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap());
    while ingestion_sum(&c, &s, &table, "consumed_offset").await < a.events as i64 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            start.elapsed() < Duration::from_secs(900),
            "basalt did not consume the topic"
        );
    }
    let took = start.elapsed().as_secs_f64();
    let v = sql(&c, &s, &format!("SELECT count(*) FROM {table}")).await;
    let queryable = start.elapsed().as_secs_f64();
    assert_eq!(v["resultTable"]["rows"][0][0], json!(a.events), "{v}");
    let rate = a.events as f64 / took;
    println!(
        "basalt: consumed into mutable segments at {:.0} events/s, {:.1} MB/s ({:.2} of the ceiling); all {} queryable after {:.1} s",
        rate,
        bytes as f64 / 1e6 / took,
        rate / ceiling,
        a.events,
        queryable
    );
    tokio::time::sleep(Duration::from_millis(300)).await; // the status refreshes every 250 ms
    let held = ingestion_sum(&c, &s, &table, "mutable_bytes").await;
    let rss_full = rss_mb(pid);
    let millions = a.events as f64 / 1e6;
    println!(
        "memory: mutable segments hold {:.0} MB per million rows (rows + queryable chunks); RSS {:.0} MB idle, {:.0} MB with {} rows in mutable segments = {:.0} MB per million rows",
        held as f64 / 1e6 / millions,
        rss_idle,
        rss_full,
        a.events,
        (rss_full - rss_idle) / millions
    );
    drop_table(&c, &s, &table).await;

    if a.probes == 0 {
        return;
    }
    // Freshness under a steady background load, with regular seals (max_rows 200k).
    let topic = format!("fresh_{stamp}");
    create_topic(&a.brokers, &topic, PARTITIONS).await;
    let table = format!("fresh_{stamp}");
    let r = c
        .post(s.url("/tables"))
        .body(table_spec(&table, &a.brokers, &topic, 200_000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let stop = Arc::new(AtomicBool::new(false));
    let background = {
        let (brokers, topic, stop, rate) = (
            a.brokers.clone(),
            topic.clone(),
            stop.clone(),
            a.background_rate,
        );
        std::thread::spawn(move || {
            let p = kafka::producer(&brokers);
            let g = MessageGenerator::new();
            let start = Instant::now();
            let mut i = 0u64;
            let mut buf = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
                while i < due {
                    let part = (i % PARTITIONS as u64) as i32;
                    buf.clear();
                    g.write(part, i as i64, now_ms(), &mut buf);
                    send(&p, &topic, part, &buf);
                    i += 1;
                }
                p.poll(Duration::from_millis(1));
            }
            p.flush(Duration::from_secs(30)).unwrap();
            i
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let probe = kafka::producer(&a.brokers);
    let mut lat = Vec::new();
    for k in 0..a.probes {
        let id = format!("probe-{stamp}-{k}");
        let body = format!(
            "{{\"event_id\":\"{id}\",\"ts\":{},\"user_id\":\"probe\",\"event_type\":\"probe\"}}",
            now_ms()
        );
        let sent = Instant::now();
        send(
            &probe,
            &topic,
            (k % PARTITIONS as usize) as i32,
            body.as_bytes(),
        );
        probe.poll(Duration::ZERO);
        probe.flush(Duration::from_secs(10)).unwrap();
        let q = format!("SELECT count(*) FROM {table} WHERE event_id = '{id}'");
        loop {
            let v = sql(&c, &s, &q).await;
            if v["resultTable"]["rows"][0][0] == json!(1) {
                break;
            }
            assert!(
                sent.elapsed() < Duration::from_secs(30),
                "probe {id} never visible"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        lat.push(sent.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let produced = background.join().unwrap();
    lat.sort_by(|x, y| x.partial_cmp(y).unwrap());
    let pct = |q: f64| lat[((lat.len() as f64 * q).ceil() as usize).clamp(1, lat.len()) - 1];
    println!(
        "freshness (produce -> visible in SQL) under {} events/s background ({} produced): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms over {} probes",
        a.background_rate,
        produced,
        pct(0.5),
        pct(0.99),
        lat.last().unwrap(),
        lat.len()
    );
    println!("RSS at steady state under that load: {:.0} MB", rss_mb(pid));
}
