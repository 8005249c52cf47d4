//! Dashboard load: panels refreshing every second against the `events` table, through the
//! PostgreSQL protocol and through HTTP, open loop (each query is sent at its scheduled time
//! whether or not earlier ones finished; latency counts from that time, so queueing shows).
//!
//! `cargo bench --bench dashboard_load -- [--rows 10000000] [--data DIR] [--seconds 10]
//!  [--rates 50,100,200] [--window 5m] [--panels 200] [--no-cache] [--realtime RATE]
//!  [--protocols postgres,http] [--timeline FILE] [--warmup SECONDS]
//!  [--transparent-huge-pages]`
//!
//! `--timeline FILE`: every query as a CSV line (protocol, target rate, panel, panel kind,
//! scheduled Unix time in ms, latency in ms, ok, step: `warmup` or `measured`), to line slow
//! queries up with what the server did at the time; the server's events go to stderr with
//! `RUST_LOG` (e.g. `RUST_LOG=basalt_ingest=debug` for freezes, chunk merges and seals).
//!
//! `--warmup SECONDS`: before each protocol's steps, a step of that length at the first
//! rate, printed on its own line (`warm-up`): a dashboard opened on a freshly loaded or
//! started server pays for its first computations once, and the steps after it show the
//! steady state. Without it the first step includes that cost.
//!
//! `--realtime RATE`: the table is a real-time one, fed by the built-in generator at RATE
//! events/s for the whole run (through the same decode, mutable segment and seal path as
//! Kafka), after a batch load of `--rows` events spaced at the same rate and ending now
//! (`--data` is emptied first). The panels' range then ends at the wall clock.
//!
//! Loads `--rows` generated events (seed 42) into a Basalt store in `--data` (kept, so later
//! runs skip the load), serves it in this process on loopback (HTTP and PostgreSQL), then for
//! each protocol and target rate opens one connection per panel and runs the product
//! dashboard's panel queries (events per second, top event types, p95 latency by device,
//! revenue per minute, active users, events in range) as Grafana expands them over the last
//! `--window` of data. Prints p50/p99 latency, queries/s completed and errors per step, and
//! the messages the failed queries got.
//! `--no-cache` turns the result cache off: every query computes, as over a real-time table.

use std::sync::Arc;
use std::time::{Duration, Instant};

use basalt_broker::{app_state, pg, serve, Auth, HttpLimits};
use basalt_ingest::gen::{write_events, GenFormat, EVENTS_SPEC};
use basalt_ingest::{Format, StoreConfig, TableSpec, TableStore};

/// The allocator the `basalt` binary ships with (src/main.rs): the server measured here is
/// the one that runs. Before it was set, glibc's malloc and free took ~17% of this
/// process's CPU at 400 queries/s.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The binary's page setting too: transparent huge pages off for this process unless
/// `--transparent-huge-pages`.
#[path = "../src/huge_pages.rs"]
mod huge_pages;

struct Args {
    rows: u64,
    data: std::path::PathBuf,
    seconds: u64,
    rates: Vec<u64>,
    window_s: u64,
    panels: usize,
    cache: bool,
    /// Events/s of a real-time table's generator (0: a batch table).
    realtime: u64,
    postgres: bool,
    http: bool,
    timeline: Option<std::path::PathBuf>,
    /// Seconds of the warm-up step before each protocol's steps (0: none).
    warmup_s: u64,
    /// Keep transparent huge pages as the system sets them (the binary's flag).
    transparent_huge_pages: bool,
}

fn args() -> Args {
    let mut a = Args {
        rows: 10_000_000,
        data: std::env::temp_dir().join("basalt-dashboard-load"),
        seconds: 10,
        rates: vec![50, 100, 200, 300],
        window_s: 300,
        panels: 200,
        cache: true,
        realtime: 0,
        postgres: true,
        http: true,
        timeline: None,
        warmup_s: 0,
        transparent_huge_pages: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().expect("flag value");
        match k.as_str() {
            "--rows" => a.rows = v().parse().unwrap(),
            "--data" => a.data = v().into(),
            "--seconds" => a.seconds = v().parse().unwrap(),
            "--rates" => a.rates = v().split(',').map(|r| r.parse().unwrap()).collect(),
            "--window" => {
                let w = v();
                a.window_s = match w.strip_suffix('m') {
                    Some(m) => m.parse::<u64>().unwrap() * 60,
                    None => w.trim_end_matches('s').parse().unwrap(),
                }
            }
            "--panels" => a.panels = v().parse().unwrap(),
            "--no-cache" => a.cache = false,
            "--realtime" => a.realtime = v().parse().unwrap(),
            "--protocols" => {
                let p = v();
                a.postgres = p.contains("postgres");
                a.http = p.contains("http");
            }
            "--timeline" => a.timeline = Some(v().into()),
            "--warmup" => a.warmup_s = v().parse().unwrap(),
            "--transparent-huge-pages" => a.transparent_huge_pages = true,
            "--bench" => {}
            _ => {}
        }
    }
    a
}

/// How many kinds of panel the dashboard has: panel `i` is of kind `i % PANEL_KINDS`.
const PANEL_KINDS: usize = 6;

/// The product dashboard's panels, macros expanded as Grafana does, over [from, to].
fn panel_sql(i: usize, from: &str, to: &str, s: u64) -> String {
    let filter = format!("ts BETWEEN '{from}' AND '{to}'");
    let group = |secs: u64| format!("floor(extract(epoch from ts)/{secs})*{secs} AS \"time\"");
    match i % PANEL_KINDS {
        0 => format!("SELECT {}, count(*) / 10.0 AS \"events/s\" FROM events WHERE {filter} GROUP BY 1 ORDER BY 1", group(10)),
        1 => format!("SELECT event_type, count(*) AS events FROM events WHERE {filter} GROUP BY event_type ORDER BY events DESC LIMIT 10"),
        2 => format!("SELECT {}, device AS metric, approx_percentile_cont(latency_ms, 0.95) AS p95 FROM events WHERE {filter} GROUP BY 1, 2 ORDER BY 1, 2", group(60.max(s / 30))),
        3 => format!("SELECT {}, sum(revenue) AS revenue FROM events WHERE {filter} GROUP BY 1 ORDER BY 1", group(60)),
        4 => format!("SELECT {}, approx_distinct(user_id) AS \"active users\" FROM events WHERE {filter} GROUP BY 1 ORDER BY 1", group(60)),
        _ => format!("SELECT count(*) AS events FROM events WHERE {filter}"),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn rfc3339(ms: i64) -> String {
    let t = chrono_like(ms);
    format!("{}Z", t)
}

/// `YYYY-MM-DDTHH:MM:SS` of a Unix millisecond time (UTC), without a date crate.
fn chrono_like(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // civil_from_days (Howard Hinnant)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[derive(Clone, Copy, PartialEq)]
enum Protocol {
    Postgres,
    Http,
}

struct Step {
    elapsed: f64,
    /// Every query: panel, scheduled Unix time (ms), latency (ms), and its error if it
    /// failed.
    queries: Vec<(usize, i64, f64, Option<String>)>,
}

impl Step {
    /// Latencies of the queries that succeeded, ascending.
    fn latencies_ms(&self) -> Vec<f64> {
        let mut all: Vec<f64> = self
            .queries
            .iter()
            .filter(|q| q.3.is_none())
            .map(|q| q.2)
            .collect();
        all.sort_by(|a, b| a.total_cmp(b));
        all
    }

    fn errors(&self) -> usize {
        self.queries.iter().filter(|q| q.3.is_some()).count()
    }

    /// Each distinct error message and how many queries failed with it, most frequent first.
    fn error_kinds(&self) -> Vec<(usize, String)> {
        let mut by: std::collections::BTreeMap<&str, usize> = Default::default();
        for e in self.queries.iter().filter_map(|q| q.3.as_deref()) {
            *by.entry(e).or_default() += 1;
        }
        let mut kinds: Vec<(usize, String)> =
            by.into_iter().map(|(e, n)| (n, e.to_string())).collect();
        kinds.sort_by_key(|k| std::cmp::Reverse(k.0));
        kinds
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// A panel's connection: a PostgreSQL client (for `proto` PostgreSQL) and an HTTP client,
/// each used once so that its connection is open.
async fn connect(
    proto: Protocol,
    http: String,
    pg_addr: String,
) -> (Option<tokio_postgres::Client>, reqwest::Client) {
    let http_client = reqwest::Client::new();
    if proto == Protocol::Postgres {
        let (host, port) = pg_addr.rsplit_once(':').unwrap();
        let (client, conn) = tokio_postgres::connect(
            &format!("host={host} port={port} user=grafana dbname=basalt"),
            tokio_postgres::NoTls,
        )
        .await
        .expect("connect");
        tokio::spawn(conn);
        client.simple_query("SELECT 1").await.expect("SELECT 1");
        return (Some(client), http_client);
    }
    http_client
        .post(format!("{http}/query/sql"))
        .json(&serde_json::json!({ "sql": "SELECT 1" }))
        .send()
        .await
        .expect("SELECT 1")
        .bytes()
        .await
        .expect("SELECT 1");
    (None, http_client)
}

async fn run_step(
    proto: Protocol,
    rate: u64,
    seconds: u64,
    a: &Args,
    http: &str,
    pg_addr: &str,
    newest_ms: i64,
) -> Step {
    let panels = a.panels;
    // Each panel refreshes every panels/rate seconds; panel i starts at offset i/rate.
    let period = Duration::from_secs_f64(panels as f64 / rate as f64);
    let deadline = Duration::from_secs(seconds);
    // Every panel's connection is opened (and used once) before the clock starts: a
    // dashboard's connections are pooled, and 200 connections opened at once would otherwise
    // delay the first refresh of many panels and count as query latency.
    let opening = Instant::now();
    let mut clients = Vec::with_capacity(panels);
    for _ in 0..panels {
        clients.push(tokio::spawn(connect(
            proto,
            http.to_string(),
            pg_addr.to_string(),
        )));
    }
    let mut connected = Vec::with_capacity(panels);
    for c in clients {
        connected.push(c.await.unwrap());
    }
    eprintln!(
        "{panels} connections opened and used once in {:.0} ms",
        opening.elapsed().as_secs_f64() * 1000.0
    );
    let started = Instant::now() + Duration::from_millis(500);
    let started_unix_ms = now_ms() + 500;
    let mut tasks = Vec::new();
    for (i, (pg_client, http_client)) in connected.into_iter().enumerate() {
        let http = http.to_string();
        let window = a.window_s;
        let realtime = a.realtime > 0;
        tasks.push(tokio::spawn(async move {
            let mut queries = Vec::new();
            let mut n = 0u32;
            loop {
                let at = started + Duration::from_secs_f64(i as f64 / rate as f64) + period * n;
                if at.duration_since(started) >= deadline {
                    break;
                }
                tokio::time::sleep_until(at.into()).await;
                // The dashboard's time range moves with the clock, by the second.
                let to = match realtime {
                    true => now_ms() / 1000 * 1000,
                    false => {
                        newest_ms + (Instant::now() - started).as_millis() as i64 / 1000 * 1000
                    }
                };
                let sql = panel_sql(i, &rfc3339(to - window as i64 * 1000), &rfc3339(to), window);
                let error = match &pg_client {
                    Some(c) => c
                        .simple_query(&sql)
                        .await
                        .err()
                        .map(|e| match e.as_db_error() {
                            Some(db) => format!("{}: {}", db.code().code(), db.message()),
                            None => e.to_string(),
                        }),
                    None => {
                        let r = http_client
                            .post(format!("{http}/query/sql"))
                            .json(&serde_json::json!({ "sql": sql }))
                            .send()
                            .await;
                        match r {
                            Ok(r) => match r.json::<serde_json::Value>().await {
                                Ok(v) if v["exceptions"] == serde_json::json!([]) => None,
                                Ok(v) => Some(format!("{}{}", v["exceptions"], v["error"])),
                                Err(e) => Some(e.to_string()),
                            },
                            Err(e) => Some(e.to_string()),
                        }
                    }
                };
                let offset_ms = (at - started).as_millis() as i64;
                let latency = (Instant::now() - at).as_secs_f64() * 1000.0;
                queries.push((i, started_unix_ms + offset_ms, latency, error));
                n += 1;
            }
            queries
        }));
    }
    let mut queries = Vec::new();
    for t in tasks {
        queries.extend(t.await.unwrap());
    }
    let elapsed = (Instant::now() - started).as_secs_f64();
    Step { elapsed, queries }
}

fn main() {
    let a = args();
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    huge_pages::set_transparent_huge_pages(a.transparent_huge_pages);
    let mut timeline = a
        .timeline
        .as_ref()
        .map(|p| std::io::BufWriter::new(std::fs::File::create(p).expect("--timeline file")));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        if a.realtime > 0 {
            // A fresh store: the generator's events are stamped with the clock.
            let _ = std::fs::remove_dir_all(&a.data);
        }
        std::fs::create_dir_all(&a.data).unwrap();
        let store = TableStore::open(StoreConfig::local(&a.data)).await.unwrap();
        if store.table("events").is_none() {
            let t = Instant::now();
            let mut spec: serde_json::Value = serde_json::from_str(EVENTS_SPEC).unwrap();
            let step_ms = match a.realtime {
                0 => 1.0,
                rate => {
                    spec["source"] = serde_json::json!({"generator": {
                        "events_per_second": rate, "partitions": 2}});
                    1000.0 / rate as f64
                }
            };
            store
                .create_table(TableSpec::from_json(spec.to_string().as_bytes()).unwrap())
                .await
                .unwrap();
            let file = a.data.join("events.parquet");
            write_events(
                std::fs::File::create(&file).unwrap(),
                GenFormat::Parquet,
                a.rows,
                42,
                now_ms(),
                step_ms,
            )
            .unwrap();
            let f = std::fs::File::open(&file).unwrap();
            let rows = store
                .ingest(
                    "events",
                    Format::Parquet,
                    Box::new(std::io::BufReader::new(f)),
                )
                .await
                .unwrap();
            std::fs::remove_file(&file).unwrap();
            println!("loaded {rows} events in {:.1}s", t.elapsed().as_secs_f64());
        }
        let mut limits = HttpLimits::default();
        limits.query.use_cache = a.cache;
        let state = app_state(
            store.clone(),
            limits,
            Default::default(),
            Auth::default(),
            Default::default(),
        );
        let http_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pg_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = format!("http://{}", http_l.local_addr().unwrap());
        let pg_addr = pg_l.local_addr().unwrap().to_string();
        // One connection per panel (Grafana pools them; the default limit is 100), and room for
        // a step's connections while the previous step's close.
        let mut pg_limits = pg::conn::PgLimits::default();
        pg_limits.max_connections = pg_limits.max_connections.max(2 * a.panels + 10);
        let pg_server = Arc::new(pg::PgServer::new(&state, Auth::default(), pg_limits));
        tokio::spawn(pg::serve(
            pg_l,
            pg_server,
            state.clone(),
            std::future::pending(),
        ));
        tokio::spawn(serve(http_l, state, std::future::pending()));
        let v: serde_json::Value = reqwest::Client::new()
            .post(format!("{http}/query/sql"))
            .json(
                &serde_json::json!({"sql": "SELECT count(*), CAST(max(ts) AS BIGINT) FROM events"}),
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let rows = &v["resultTable"]["rows"][0];
        let newest_ms = rows[1].as_i64().unwrap();
        println!(
            "events: {} rows; {} panels over the last {} s of data; {} s per step{}",
            rows[0],
            a.panels,
            a.window_s,
            a.seconds,
            match a.realtime {
                0 => String::new(),
                r => format!("; real-time table receiving {r} events/s"),
            }
        );
        println!(
            "{:<9} {:>8} {:>10} {:>9} {:>9} {:>9} {:>7}",
            "protocol", "target/s", "achieved/s", "p50 ms", "p99 ms", "max ms", "errors"
        );
        let protocols = [(Protocol::Postgres, a.postgres), (Protocol::Http, a.http)];
        for proto in protocols.iter().filter(|p| p.1).map(|p| p.0) {
            let name = match proto {
                Protocol::Postgres => "postgres",
                Protocol::Http => "http",
            };
            // The warm-up step (if any) at the first rate, then the measured steps.
            let warmup = a.rates.first().filter(|_| a.warmup_s > 0);
            let steps = warmup
                .map(|&r| (r, a.warmup_s, true))
                .into_iter()
                .chain(a.rates.iter().map(|&r| (r, a.seconds, false)));
            for (rate, seconds, warming) in steps {
                let s = run_step(proto, rate, seconds, &a, &http, &pg_addr, newest_ms).await;
                let l = s.latencies_ms();
                let step = if warming { "warmup" } else { "measured" };
                if let Some(w) = timeline.as_mut() {
                    use std::io::Write;
                    for (panel, at, latency, error) in &s.queries {
                        let ok = error.is_none();
                        writeln!(
                            w,
                            "{name},{rate},{panel},{},{at},{latency:.3},{ok},{step}",
                            panel % PANEL_KINDS
                        )
                        .expect("--timeline write");
                    }
                    w.flush().expect("--timeline write");
                }
                println!(
                    "{:<9} {:>8} {:>10.1} {:>9.1} {:>9.1} {:>9.1} {:>7}{}",
                    name,
                    rate,
                    l.len() as f64 / s.elapsed,
                    pct(&l, 0.50),
                    pct(&l, 0.99),
                    l.last().copied().unwrap_or(f64::NAN),
                    s.errors(),
                    if warming { "  (warm-up)" } else { "" }
                );
                // Failed queries never pass silently: what they failed with.
                for (n, e) in s.error_kinds().iter().take(5) {
                    println!("  {n} failed with: {e}");
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_of_known_times() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_795_906_534_802), "2026-11-28T22:55:34Z");
    }
}
