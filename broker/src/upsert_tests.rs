//! Upsert tables against a reference model: random streams of inserts, updates, deletes and
//! out-of-order rows over keyed partitions, with seals (tiny `max_rows`) and restarts of the
//! store interleaved; after each step every query through the SQL engine must equal what a
//! plain map from key to current row says, and no query may ever show a key twice.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::Array;
use arrow::util::display::array_value_to_string;
use basalt_ingest::realtime::memory::memory_topic;
use basalt_ingest::{Format, StoreConfig, TableSpec, TableStore};
use basalt_query::{QueryEngine, QueryLimits};
use proptest::prelude::*;

use crate::source::StoreSource;

const PARTITIONS: i32 = 3;

#[derive(Debug, Clone)]
struct Event {
    key: u8,
    cmp: i64,
    delete: bool,
    status: Option<u8>,
    amount: Option<i64>,
    max_seen: Option<i64>,
    note: Option<u8>,
    city: Option<u8>,
}

#[derive(Debug, Clone)]
enum Step {
    Send(Vec<Event>),
    Restart,
    /// Batch tables: a request whose last row is bad; none of it may take effect.
    BadRequest(Vec<Event>),
}

fn event() -> impl Strategy<Value = Event> {
    (
        0u8..24,
        0i64..40,
        prop::bool::weighted(0.12),
        prop::option::weighted(0.8, 0u8..4),
        prop::option::weighted(0.8, 1i64..100),
        prop::option::weighted(0.8, 0i64..50),
        prop::option::weighted(0.5, 0u8..4),
        prop::option::weighted(0.8, 0u8..3),
    )
        .prop_map(
            |(key, cmp, delete, status, amount, max_seen, note, city)| Event {
                key,
                cmp,
                delete,
                status,
                amount,
                max_seen,
                note,
                city,
            },
        )
}

fn steps(batch: bool) -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        prop_oneof![
            5 => prop::collection::vec(event(), 1..40).prop_map(Step::Send),
            1 => Just(Step::Restart),
            if batch { 2 } else { 0 } => prop::collection::vec(event(), 8..40).prop_map(Step::BadRequest),
        ],
        1..7,
    )
}

/// The key's current row: column values as the query prints them ("NULL" for null).
#[derive(Debug, Clone, PartialEq)]
struct Row {
    cmp: i64,
    status: Option<String>,
    amount: Option<i64>,
    max_seen: Option<f64>,
    note: Option<String>,
    city: Option<String>,
}

#[derive(Debug, Default)]
struct Model {
    /// key → (comparison value, deleted, row)
    keys: BTreeMap<u8, (i64, bool, Option<Row>)>,
}

fn keep<T: Clone>(old: &Option<T>, new: Option<T>) -> Option<T> {
    new.or_else(|| old.clone())
}

impl Model {
    fn apply(&mut self, e: &Event, partial: bool) {
        if let Some((cmp, _, _)) = self.keys.get(&e.key) {
            if e.cmp < *cmp {
                return;
            }
        }
        let new = Row {
            cmp: e.cmp,
            status: e.status.map(|s| format!("s{s}")),
            amount: e.amount,
            max_seen: e.max_seen.map(|m| m as f64 + 0.5),
            note: e.note.map(|n| format!("n{n}")),
            city: e.city.map(|c| format!("c{c}")),
        };
        if e.delete {
            self.keys.insert(e.key, (e.cmp, true, None));
            return;
        }
        let prev = self
            .keys
            .get(&e.key)
            .and_then(|(_, d, r)| (!d).then(|| r.clone()).flatten());
        let row = match (partial, prev) {
            (true, Some(old)) => Row {
                cmp: e.cmp,
                // OVERWRITE (listed and default), IGNORE, INCREMENT, MAX.
                status: keep(&old.status, new.status),
                amount: match (old.amount, new.amount) {
                    (Some(a), Some(b)) => Some(a + b),
                    (a, b) => b.or(a),
                },
                max_seen: match (old.max_seen, new.max_seen) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => b.or(a),
                },
                note: old.note.clone().or(new.note),
                city: keep(&old.city, new.city),
            },
            _ => new,
        };
        self.keys.insert(e.key, (e.cmp, false, Some(row)));
    }

    fn live(&self) -> impl Iterator<Item = (u8, &Row)> {
        self.keys
            .iter()
            .filter_map(|(k, (_, d, r))| (!d).then_some((*k, r.as_ref()?)))
    }

    /// What `SELECT order_id, updated_at, status, amount, max_seen, note, city ... ORDER BY
    /// order_id` prints.
    fn rows(&self) -> Vec<String> {
        let s = |v: &Option<String>| v.clone().unwrap_or_else(|| "NULL".into());
        let mut out: Vec<String> = self
            .live()
            .map(|(k, r)| {
                format!(
                    "k{k:02}|{}|{}|{}|{}|{}|{}",
                    r.cmp,
                    s(&r.status),
                    r.amount.map_or("NULL".into(), |a| a.to_string()),
                    r.max_seen.map_or("NULL".into(), |m| m.to_string()),
                    s(&r.note),
                    s(&r.city)
                )
            })
            .collect();
        out.sort();
        out
    }

    /// `SELECT count(*), sum(amount) ... WHERE city = 'c1'`.
    fn city1(&self) -> Vec<String> {
        let rows: Vec<&Row> = self
            .live()
            .map(|(_, r)| r)
            .filter(|r| r.city.as_deref() == Some("c1"))
            .collect();
        let sum: Option<i64> = rows.iter().filter_map(|r| r.amount).reduce(|a, b| a + b);
        vec![format!(
            "{}|{}",
            rows.len(),
            sum.map_or("NULL".into(), |s| s.to_string())
        )]
    }
}

/// A stream table reads `name`'s memory topic; a batch table (no source) takes ingests.
fn spec(name: &str, partial: bool, max_rows: usize, batch: bool) -> TableSpec {
    let upsert = if partial {
        serde_json::json!({"mode":"PARTIAL","comparison_column":"updated_at",
            "delete_column":"is_deleted",
            "partial_strategies":{"amount":"INCREMENT","max_seen":"MAX","note":"IGNORE",
                                  "status":"OVERWRITE"}})
    } else {
        serde_json::json!({"mode":"FULL","comparison_column":"updated_at",
            "delete_column":"is_deleted"})
    };
    let v = serde_json::json!({
        "name": name, "time_column": "ts",
        "columns": [
            {"name":"order_id","type":"STRING"},
            {"name":"updated_at","type":"LONG"},
            {"name":"ts","type":"TIMESTAMP"},
            {"name":"status","type":"STRING"},
            {"name":"amount","type":"LONG"},
            {"name":"max_seen","type":"DOUBLE"},
            {"name":"note","type":"STRING"},
            {"name":"is_deleted","type":"BOOLEAN"},
            {"name":"city","type":"STRING","index":["inverted"]}],
        "primary_key": ["order_id"],
        "upsert": upsert,
        "source": {"memory": {"topic": name, "partitions": PARTITIONS}},
        "segment": {"max_rows": max_rows, "max_age": "2s"}
    });
    let mut v = v;
    if batch {
        let o = v.as_object_mut().unwrap();
        o.remove("source");
        o["segment"] = serde_json::json!({ "max_rows": max_rows });
    }
    TableSpec::from_json(v.to_string().as_bytes()).unwrap()
}

fn message(e: &Event, seq: usize) -> Vec<u8> {
    let mut m = serde_json::json!({
        "order_id": format!("k{:02}", e.key),
        "updated_at": e.cmp,
        "ts": 1_790_000_000_000i64 + seq as i64,
        "is_deleted": e.delete,
    });
    if let Some(s) = e.status {
        m["status"] = format!("s{s}").into();
    }
    if let Some(a) = e.amount {
        m["amount"] = a.into();
    }
    if let Some(x) = e.max_seen {
        m["max_seen"] = (x as f64 + 0.5).into();
    }
    if let Some(n) = e.note {
        m["note"] = format!("n{n}").into();
    }
    if let Some(c) = e.city {
        m["city"] = format!("c{c}").into();
    }
    m.to_string().into_bytes()
}

async fn rows(engine: &QueryEngine, sql: &str) -> Vec<String> {
    let out = engine
        .execute(sql, &QueryLimits::default())
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let mut rows = Vec::new();
    for b in &out.batches {
        for i in 0..b.num_rows() {
            let cells: Vec<String> = b
                .columns()
                .iter()
                .map(|c| {
                    if c.is_null(i) {
                        "NULL".to_string()
                    } else {
                        array_value_to_string(c, i).unwrap()
                    }
                })
                .collect();
            rows.push(cells.join("|"));
        }
    }
    rows
}

async fn open(dir: &std::path::Path) -> Arc<TableStore> {
    TableStore::open(StoreConfig::local(dir)).await.unwrap()
}

/// Queries until they equal the model (the stream is consumed asynchronously); every answer
/// on the way must show each key at most once.
async fn check(engine: &QueryEngine, table: &str, model: &Model) -> Result<(), String> {
    let all = format!(
        "SELECT order_id, updated_at, status, amount, max_seen, note, city FROM {table} \
         ORDER BY order_id"
    );
    let city = format!("SELECT count(*), sum(amount) FROM {table} WHERE city = 'c1'");
    let count = format!("SELECT count(*), count(DISTINCT order_id) FROM {table}");
    let (want_rows, want_city) = (model.rows(), model.city1());
    let start = Instant::now();
    loop {
        let got = rows(engine, &all).await;
        let got_city = rows(engine, &city).await;
        let c = rows(engine, &count).await;
        let parts: Vec<&str> = c[0].split('|').collect();
        if parts[0] != parts[1] {
            return Err(format!("a key shows twice: count(*) | distinct = {}", c[0]));
        }
        if got == want_rows && got_city == want_city && parts[0] == want_rows.len().to_string() {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(20) {
            return Err(format!(
                "rows:\n got {got:?}\nwant {want_rows:?}\ncity: got {got_city:?} want {want_city:?}; count {c:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
}

/// NDJSON of `events` (and a row with a bad comparison value after them when `bad`).
fn ndjson(events: &[Event], seq: &mut usize, bad: bool) -> Vec<u8> {
    let mut body = Vec::new();
    for e in events {
        body.extend(message(e, *seq));
        body.push(b'\n');
        *seq += 1;
    }
    if bad {
        body.extend(br#"{"order_id":"k00","updated_at":"yesterday","ts":1,"is_deleted":false}"#);
        body.push(b'\n');
    }
    body
}

fn run_case(
    case: usize,
    partial: bool,
    max_rows: usize,
    batch: bool,
    steps: &[Step],
) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let name = format!("upsert_prop_{}_{case}_{}", std::process::id(), uuid_like());
        let topic = memory_topic(&name, PARTITIONS);
        let mut store = open(dir.path()).await;
        store
            .create_table(spec(&name, partial, max_rows, batch))
            .await
            .map_err(|e| e.to_string())?;
        let mut model = Model::default();
        let mut seq = 0;
        for step in steps {
            match step {
                Step::Send(events) if batch => {
                    let body = ndjson(events, &mut seq, false);
                    store
                        .ingest(&name, Format::NdJson, Box::new(std::io::Cursor::new(body)))
                        .await
                        .map_err(|e| format!("ingest: {e}"))?;
                    for e in events {
                        model.apply(e, partial);
                    }
                }
                Step::BadRequest(events) => {
                    let body = ndjson(events, &mut seq, true);
                    let r = store
                        .ingest(&name, Format::NdJson, Box::new(std::io::Cursor::new(body)))
                        .await;
                    match r {
                        Err(e) if e.to_string().contains("updated_at") => {}
                        r => return Err(format!("a request with a bad row answered {r:?}")),
                    }
                }
                Step::Send(events) => {
                    for e in events {
                        topic.send(e.key as i32 % PARTITIONS, &message(e, seq));
                        seq += 1;
                        model.apply(e, partial);
                    }
                }
                Step::Restart => {
                    store.shutdown();
                    drop(store);
                    store = open(dir.path()).await;
                }
            }
            let engine = QueryEngine::new(Arc::new(StoreSource(store.clone())));
            check(&engine, &name, &model).await?;
        }
        if batch {
            store.shutdown();
            return Ok(());
        }
        let t = store.table(&name).unwrap();
        let status = t.ingestion().unwrap();
        let conflicts: u64 = status
            .partitions
            .iter()
            .filter_map(|p| p.keyed.as_ref())
            .map(|k| k.counters.key_conflicts)
            .sum();
        if conflicts != 0 {
            return Err(format!("{conflicts} key conflicts on a keyed topic"));
        }
        store.shutdown();
        Ok(())
    })
}

fn uuid_like() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10, max_shrink_iters: 20, ..ProptestConfig::default() })]
    #[test]
    fn upsert_queries_match_the_reference_model(
        partial in any::<bool>(),
        max_rows in 3usize..40,
        steps in steps(false),
    ) {
        let case = uuid_like() as usize;
        if let Err(e) = run_case(case, partial, max_rows, false, &steps) {
            prop_assert!(false, "{}", e);
        }
    }
}

proptest! {
    // Batch cases need no waiting for a stream: more of them.
    #![proptest_config(ProptestConfig { cases: 40, max_shrink_iters: 20, ..ProptestConfig::default() })]
    /// The same through batch ingests: requests split into several segments, requests with
    /// a bad last row (rolled back), restarts (the batch keys restored from the snapshot).
    #[test]
    fn batch_upsert_queries_match_the_reference_model(
        partial in any::<bool>(),
        max_rows in 3usize..40,
        steps in steps(true),
    ) {
        let case = uuid_like() as usize;
        if let Err(e) = run_case(case, partial, max_rows, true, &steps) {
            prop_assert!(false, "{}", e);
        }
    }
}

/// Dedup: the first row of each key is kept, later ones are dropped — across seals and a
/// restart that replays from the checkpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_keeps_the_first_row_of_each_key_through_seals_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let name = format!("dedup_{}", std::process::id());
    let topic = memory_topic(&name, PARTITIONS);
    let mut v: serde_json::Value =
        serde_json::from_str(&serde_json::to_string(&spec(&name, false, 7, false)).unwrap())
            .unwrap();
    v.as_object_mut().unwrap().remove("upsert");
    v["dedup"] = serde_json::json!({"enabled": true, "ttl": "1d"});
    let spec = TableSpec::from_json(v.to_string().as_bytes()).unwrap();
    let mut store = open(dir.path()).await;
    store.create_table(spec).await.unwrap();
    let mut first: BTreeMap<u8, i64> = BTreeMap::new();
    let mut x: u64 = 7;
    for round in 0..3 {
        for i in 0..150 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let key = (x >> 33) as u8 % 40;
            let e = Event {
                key,
                cmp: (round * 150 + i) as i64,
                delete: false,
                status: None,
                amount: Some(1),
                max_seen: None,
                note: None,
                city: Some(key % 3),
            };
            topic.send(key as i32 % PARTITIONS, &message(&e, round * 150 + i));
            first.entry(key).or_insert(e.cmp);
        }
        if round == 1 {
            store.shutdown();
            drop(store);
            store = open(dir.path()).await;
        }
        let engine = QueryEngine::new(Arc::new(StoreSource(store.clone())));
        let want: Vec<String> = first.iter().map(|(k, c)| format!("k{k:02}|{c}")).collect();
        let sql = format!("SELECT order_id, updated_at FROM {name} ORDER BY order_id");
        let start = Instant::now();
        loop {
            let got = rows(&engine, &sql).await;
            let distinct: std::collections::BTreeSet<_> = got.iter().map(|r| &r[..3]).collect();
            assert_eq!(distinct.len(), got.len(), "a key shows twice: {got:?}");
            if got == want {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "got {got:?}\nwant {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    }
    let start = Instant::now();
    loop {
        let status = store.table(&name).unwrap().ingestion().unwrap();
        let keyed: Vec<_> = status
            .partitions
            .iter()
            .filter_map(|p| p.keyed.clone())
            .collect();
        let dropped: u64 = keyed.iter().map(|k| k.counters.duplicates).sum();
        let keys: u64 = keyed.iter().map(|k| k.keys).sum();
        if dropped > 0 && keys == first.len() as u64 {
            let m = crate::metrics::Metrics::new();
            m.ingestion.observe(&status);
            let text = m.render();
            let dup = format!("basalt_upsert_rows_total{{outcome=\"duplicate\",partition=\"0\",table=\"{name}\"}}");
            assert!(text.contains(&dup), "{text}");
            assert!(text.contains("basalt_upsert_keys{"), "{text}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "duplicates and keys are reported: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    store.shutdown();
}

/// A session that ends on an error drops its unsealed rows; the sealed rows they had
/// superseded must be visible again at once (from the published snapshots), not hidden
/// until the next session has restored the keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_session_hides_no_key_while_it_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let name = format!("upsert_fail_{}", std::process::id());
    let topic = memory_topic(&name, PARTITIONS);
    let store = open(dir.path()).await;
    store
        .create_table(spec(&name, false, 5, false))
        .await
        .unwrap();
    let engine = QueryEngine::new(Arc::new(StoreSource(store.clone())));
    let mut model = Model::default();
    let send = |key: u8, cmp: i64, model: &mut Model| {
        let e = Event {
            key,
            cmp,
            delete: false,
            status: Some(cmp as u8),
            amount: Some(1),
            max_seen: None,
            note: None,
            city: Some(1),
        };
        topic.send(key as i32 % PARTITIONS, &message(&e, key as usize));
        model.apply(&e, false);
    };
    // 10 keys per partition, max_rows 5: everything sealed.
    (0..30).for_each(|k| send(k, 1, &mut model));
    check(&engine, &name, &model).await.unwrap();
    let t = store.table(&name).unwrap();
    let start = Instant::now();
    while t.stats().rows < 30 {
        assert!(start.elapsed() < Duration::from_secs(20), "{:?}", t.stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Updates that stay unsealed: they supersede sealed rows.
    (0..6).for_each(|k| send(k, 2, &mut model));
    check(&engine, &name, &model).await.unwrap();
    topic.fail_next_poll("injected broker error");
    let count = format!("SELECT count(*), count(DISTINCT order_id) FROM {name}");
    let mut saw_error = false;
    let start = Instant::now();
    loop {
        let state = t.ingestion().unwrap().state;
        saw_error |= state == basalt_ingest::realtime::IngestionState::Error;
        assert_eq!(
            rows(&engine, &count).await,
            vec!["30|30".to_string()],
            "state {state:?}"
        );
        if saw_error && state == basalt_ingest::realtime::IngestionState::Consuming {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "no restart seen");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The restarted session replays the updates.
    check(&engine, &name, &model).await.unwrap();
    store.shutdown();
}

/// PARTIAL merges of array columns — UNION of tags, APPEND of codes — through the stream
/// (rows read back from mutable parts and sealed segments) and through batch ingests, with
/// a restart; the issue's spec with `"tags":"UNION"` as written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_union_and_append_merge_arrays() {
    for batch in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let name = format!("arrays_{}_{batch}", std::process::id());
        let mut v = serde_json::json!({
            "name": name, "time_column": "ts",
            "columns": [
                {"name":"order_id","type":"STRING"}, {"name":"ts","type":"TIMESTAMP"},
                {"name":"updated_at","type":"LONG"}, {"name":"is_deleted","type":"BOOLEAN"},
                {"name":"amount","type":"DOUBLE"}, {"name":"status","type":"STRING"},
                {"name":"max_seen","type":"LONG"},
                {"name":"tags","type":"STRING_ARRAY","index":["inverted"]},
                {"name":"codes","type":"LONG_ARRAY"}],
            "primary_key":["order_id"],
            "upsert":{"mode":"PARTIAL","comparison_column":"updated_at","delete_column":"is_deleted",
                      "partial_strategies":{"amount":"INCREMENT","tags":"UNION","status":"OVERWRITE",
                                            "max_seen":"MAX","codes":"APPEND"},
                      "metadata_ttl":"7d"},
            "segment": {"max_rows": 2, "max_age": "2s"}
        });
        if !batch {
            v["source"] = serde_json::json!({"memory": {"topic": name, "partitions": 1}});
        }
        let spec = TableSpec::from_json(v.to_string().as_bytes()).unwrap();
        let topic = memory_topic(&name, 1);
        let mut store = open(dir.path()).await;
        store.create_table(spec).await.unwrap();
        let events = [
            r#"{"order_id":"o1","ts":1,"updated_at":1,"amount":1.5,"tags":["new"],"codes":[1]}"#,
            r#"{"order_id":"o2","ts":2,"updated_at":1,"tags":"gift","codes":[]}"#,
            r#"{"order_id":"o1","ts":3,"updated_at":2,"amount":2,"tags":["sale","new"],"codes":[2,1]}"#,
            r#"{"order_id":"o1","ts":4,"updated_at":0,"tags":["late"],"codes":[9]}"#,
            r#"{"order_id":"o2","ts":5,"updated_at":2,"tags":["gift","vip"]}"#,
            r#"{"order_id":"o1","ts":6,"updated_at":3,"status":"paid","tags":["vip"],"codes":[3]}"#,
        ];
        for (i, chunk) in events.chunks(2).enumerate() {
            if batch {
                let body = chunk.join("\n").into_bytes();
                store
                    .ingest(&name, Format::NdJson, Box::new(std::io::Cursor::new(body)))
                    .await
                    .unwrap();
            } else {
                chunk.iter().for_each(|r| {
                    topic.send(0, r.as_bytes());
                });
            }
            if i == 1 {
                store.shutdown();
                drop(store);
                store = open(dir.path()).await;
            }
        }
        let engine = QueryEngine::new(Arc::new(StoreSource(store.clone())));
        let sql =
            format!("SELECT order_id, amount, status, tags, codes FROM {name} ORDER BY order_id");
        let want = vec![
            "o1|3.5|paid|[new, sale, vip]|[1, 2, 1, 3]".to_string(),
            "o2|NULL|NULL|[gift, vip]|[]".to_string(),
        ];
        let start = Instant::now();
        loop {
            let got = rows(&engine, &sql).await;
            if got == want {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "batch {batch}: {got:?}"
            );
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        let f = format!("SELECT order_id FROM {name} WHERE array_has(tags, 'sale')");
        assert_eq!(rows(&engine, &f).await, vec!["o1".to_string()]);
        store.shutdown();
    }
}

/// A PARTIAL INCREMENT past an INT column's range is never truncated or wrapped: a stream's
/// row is quarantined with its message and the key keeps its row; a batch request fails
/// naming the column, and nothing of it takes effect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn increments_out_of_range_are_refused_not_truncated() {
    for batch in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let name = format!("overflow_{}_{batch}", std::process::id());
        let mut v = serde_json::json!({
            "name": name, "time_column": "ts",
            "columns": [
                {"name":"k","type":"STRING"}, {"name":"ts","type":"TIMESTAMP"},
                {"name":"n","type":"INT"}],
            "primary_key":["k"],
            "upsert":{"mode":"PARTIAL","partial_strategies":{"n":"INCREMENT"}},
            "segment": {"max_rows": 1000}
        });
        if !batch {
            v["source"] = serde_json::json!({"memory": {"topic": name, "partitions": 1}});
        }
        let spec = TableSpec::from_json(v.to_string().as_bytes()).unwrap();
        let topic = memory_topic(&name, 1);
        let store = open(dir.path()).await;
        store.create_table(spec).await.unwrap();
        let first = [
            r#"{"k":"a","ts":1,"n":2147483000}"#,
            r#"{"k":"b","ts":1,"n":5}"#,
        ];
        let second = [r#"{"k":"a","ts":2,"n":1000}"#, r#"{"k":"b","ts":2,"n":1}"#];
        let engine = QueryEngine::new(Arc::new(StoreSource(store.clone())));
        let sql = format!("SELECT k, n FROM {name} ORDER BY k");
        if batch {
            for (chunk, ok) in [(&first, true), (&second, false)] {
                let body = chunk.join("\n").into_bytes();
                let r = store
                    .ingest(&name, Format::NdJson, Box::new(std::io::Cursor::new(body)))
                    .await;
                assert_eq!(r.is_ok(), ok, "{r:?}");
                if let Err(e) = r {
                    let m = e.to_string();
                    assert!(m.contains("\"n\"") && m.contains("overflows INT"), "{m}");
                }
            }
            assert_eq!(
                rows(&engine, &sql).await,
                vec!["a|2147483000".to_string(), "b|5".to_string()],
                "the failed request changed nothing"
            );
        } else {
            for r in first.iter().chain(&second) {
                topic.send(0, r.as_bytes());
            }
            let want = vec!["a|2147483000".to_string(), "b|6".to_string()];
            let q = format!("SELECT reason FROM \"{name}$quarantine\"");
            let start = Instant::now();
            loop {
                let got = rows(&engine, &sql).await;
                let quarantined = rows(&engine, &q).await;
                if got == want && quarantined.len() == 1 {
                    assert!(quarantined[0].contains("overflows INT"), "{quarantined:?}");
                    break;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "{got:?} {quarantined:?}"
                );
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        }
        store.shutdown();
    }
}
