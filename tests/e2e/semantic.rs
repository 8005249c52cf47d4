//! The semantic layer through the real binary: the issue's model posted as YAML, semantic
//! queries over HTTP and `MEASURE()` SQL over HTTP and PostgreSQL, each compared with the
//! equivalent hand-written SQL (written independently: `CASE WHEN` where the model says
//! `FILTER`); errors naming the field, the unknown measure or dimension; the freshness
//! warning; models surviving a restart; deletion.

use serde_json::{json, Value};

use crate::harness::{get_json, service_env, sql, Server};
use crate::postgres::{load_events_spaced, run_client_script};

const MODEL: &str = r#"
model: events
table: events
time_dimension: ts
freshness: 1ms
dimensions: [country, device, event_type, {name: app_major, expr: "split_part(app_version, '.', 1)"}]
measures:
  - {name: revenue, agg: sum, expr: revenue, filter: "event_type = 'purchase'"}
  - {name: purchases, agg: count, filter: "event_type = 'purchase'"}
  - {name: sessions, agg: count_distinct_approx, expr: session_id}
  - {name: users, agg: count_distinct_approx, expr: user_id}
  - {name: p95_latency, agg: percentile, expr: latency_ms, p: 0.95}
  - {name: conversion, expr: "purchases / nullif(sessions, 0)"}
  - {name: events, agg: count}
"#;

pub(crate) async fn post_model(
    c: &reqwest::Client,
    s: &Server,
    ct: &str,
    body: &str,
) -> (u16, Value) {
    let r = c
        .post(s.url("/semantic/models"))
        .header("content-type", ct)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

pub(crate) async fn semantic(c: &reqwest::Client, s: &Server, q: Value) -> (u16, Value) {
    let r = c
        .post(s.url("/semantic/query"))
        .json(&q)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// Rows of a Pinot answer, floats rounded to 9 significant digits (sums in another order).
fn rows(v: &Value) -> Vec<Vec<Value>> {
    assert_eq!(v["exceptions"], json!([]), "{v}");
    v["resultTable"]["rows"]
        .as_array()
        .unwrap_or_else(|| panic!("no rows: {v}"))
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(round).collect())
        .collect()
}

/// Whether two answers agree: the same shape and values, numbers within a relative `tol`
/// (approximate percentiles are t-digests, whose values depend on the order rows reach them,
/// so two plans over the same rows differ by a little).
fn agree(a: &[Vec<Value>], b: &[Vec<Value>], tol: f64) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|(p, q)| match (p.as_f64(), q.as_f64()) {
                        (Some(p), Some(q)) => (p - q).abs() <= tol * p.abs().max(q.abs()).max(1.0),
                        _ => p == q,
                    })
        })
}

fn round(v: &Value) -> Value {
    match v.as_f64() {
        Some(f) if !v.is_i64() && !v.is_u64() && f != 0.0 => {
            let digits = 9 - f.abs().log10().ceil() as i32;
            let m = 10f64.powi(digits);
            json!((f * m).round() / m)
        }
        _ => v.clone(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semantic_queries_equal_hand_written_sql() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = Server::start(&data, None);
    let c = reqwest::Client::new();
    // 60,000 events 12 s apart: about 8 days up to now.
    load_events_spaced(&c, &s, dir.path(), 60_000, 12_000).await;

    // Errors name the field, and nothing is stored.
    for (body, field) in [
        ("model: m\ntable: events\ntime_dimension: ts\nmeasures: [{name: a, agg: median, expr: x}]", "measures[0]:"),
        ("model: m\ntable: nope\ntime_dimension: ts\nmeasures: [{name: a, agg: count}]", "table:"),
        ("model: m\ntable: events\ntime_dimension: country\nmeasures: [{name: a, agg: count}]", "time_dimension:"),
        ("model: m\ntable: events\ntime_dimension: ts\nmeasures: [{name: a, agg: sum, expr: no_such_column}]", "measures[0]:"),
        ("model: m\ntable: events\ntime_dimension: ts\ndimensions: [country, {name: d, expr: \"sum(revenue)\"}]\nmeasures: [{name: a, agg: count}]", "dimensions[1].expr:"),
        ("model: m\ntable: events\ntime_dimension: ts\nmeasures: [{name: a, agg: count, filter: \"(SELECT 1) = 1\"}]", "measures[0].filter:"),
        ("model: [unclosed", "model:"),
    ] {
        let (status, v) = post_model(&c, &s, "application/yaml", body).await;
        assert_eq!(status, 400, "{body}: {v}");
        let e = v["error"].as_str().unwrap();
        assert!(e.starts_with(field), "{body}: {e}");
    }
    let (status, _) = post_model(&c, &s, "text/plain", MODEL).await;
    assert_eq!(status, 415);
    assert_eq!(
        get_json(&c, &s, "/semantic/models").await,
        json!({"models": []})
    );

    // The model, as YAML; posted again it is replaced.
    let (status, v) = post_model(&c, &s, "application/yaml", MODEL).await;
    assert_eq!(
        (status, v["status"].clone()),
        (201, json!("created")),
        "{v}"
    );
    let (status, v) = post_model(&c, &s, "application/x-yaml", MODEL).await;
    assert_eq!(
        (status, v["status"].clone()),
        (200, json!("replaced")),
        "{v}"
    );
    let listed = get_json(&c, &s, "/semantic/models").await;
    assert_eq!(listed["models"][0]["model"], json!("events"), "{listed}");
    assert_eq!(
        get_json(&c, &s, "/semantic/models/events").await["time_dimension"],
        json!("ts")
    );

    // Semantic queries against hand-written SQL over the table.
    let now = chrono::Utc::now();
    let from = (now - chrono::Duration::days(5))
        .format("%Y-%m-%d")
        .to_string();
    let to = (now - chrono::Duration::days(1))
        .format("%Y-%m-%d")
        .to_string();
    let cases: Vec<(Value, String)> = vec![
        (
            json!({"model": "events", "measures": ["revenue", "conversion"], "dimensions": ["country"],
                   "grain": "day", "from": from, "to": to, "filters": ["device = 'mobile'"]}),
            format!("SELECT date_trunc('day', ts) AS ts, country, sum(CASE WHEN event_type = 'purchase' THEN revenue END), \
                     CAST(sum(CASE WHEN event_type = 'purchase' THEN 1 ELSE 0 END) AS DOUBLE) / nullif(CAST(approx_distinct(session_id) AS DOUBLE), 0) \
                     FROM events WHERE ts >= TIMESTAMP '{from} 00:00:00' AND ts < TIMESTAMP '{to} 00:00:00' AND device = 'mobile' GROUP BY 1, 2 ORDER BY 1, 2"),
        ),
        (
            json!({"model": "events", "measures": ["events", "purchases", "sessions", "users", "p95_latency"]}),
            "SELECT count(*), sum(CASE WHEN event_type = 'purchase' THEN 1 ELSE 0 END), approx_distinct(session_id), \
             approx_distinct(user_id), approx_percentile_cont(latency_ms, 0.95) FROM events".to_string(),
        ),
        (
            json!({"model": "events", "measures": ["p95_latency", "events"], "dimensions": ["device", "app_major"],
                   "filters": ["event_type IN ('click', 'purchase')", "app_major <> '1'"]}),
            "SELECT device, split_part(app_version, '.', 1), approx_percentile_cont(latency_ms, 0.95), count(*) FROM events \
             WHERE event_type IN ('click', 'purchase') AND split_part(app_version, '.', 1) <> '1' GROUP BY 1, 2 ORDER BY 1, 2".to_string(),
        ),
        (
            json!({"model": "events", "measures": ["users"], "grain": "hour", "from": format!("{to}T00:00:00Z"), "limit": 10}),
            format!("SELECT date_trunc('hour', ts), approx_distinct(user_id) FROM events WHERE ts >= TIMESTAMP '{to} 00:00:00' GROUP BY 1 ORDER BY 1 LIMIT 10"),
        ),
        (
            json!({"model": "events", "dimensions": ["event_type"]}),
            "SELECT DISTINCT event_type FROM events ORDER BY 1".to_string(),
        ),
    ];
    for (q, reference) in &cases {
        let (status, v) = semantic(&c, &s, q.clone()).await;
        assert_eq!(status, 200, "{q}: {v}");
        let expected = rows(&sql(&c, &s, reference).await);
        assert!(!expected.is_empty(), "{reference}");
        let tol = if reference.contains("percentile") {
            0.05
        } else {
            0.0
        };
        assert!(
            agree(&rows(&v), &expected, tol),
            "{q}\ncompiled: {}\ngot: {:?}\nwant: {expected:?}",
            v["semantic"]["sql"],
            rows(&v)
        );
        // Dimensions first, then the measures in the order asked.
        let names = v["resultTable"]["dataSchema"]["columnNames"]
            .as_array()
            .unwrap()
            .clone();
        let mut asked: Vec<Value> = Vec::new();
        if q.get("grain").is_some() {
            asked.push(json!("ts"));
        }
        for k in ["dimensions", "measures"] {
            asked.extend(
                q.get(k)
                    .and_then(|a| a.as_array())
                    .cloned()
                    .unwrap_or_default(),
            );
        }
        assert_eq!(names, asked, "{q}");
        // The tier that answered and its freshness; the model allows 1 ms of lag.
        let tiers = &v["semantic"]["tiers"];
        assert_eq!(tiers[0]["tier"], json!("segments"), "{v}");
        assert!(tiers[0]["newest_event"].is_string(), "{v}");
        let warning = v["semantic"]["warnings"][0].as_str().unwrap_or_default();
        assert!(warning.contains("lags") && warning.contains("1ms"), "{v}");
        // The SQL it compiled runs by itself to the same rows.
        let compiled = v["semantic"]["sql"].as_str().unwrap();
        let again = rows(&sql(&c, &s, compiled).await);
        assert!(agree(&again, &expected, tol), "{compiled}");
    }

    // MEASURE() SQL over HTTP.
    let measure_sql = format!(
        "SELECT country, MEASURE(revenue), MEASURE(conversion) FROM semantic.events \
         WHERE ts > TIMESTAMP '{from} 00:00:00' GROUP BY 1 ORDER BY 1"
    );
    let reference = format!("SELECT country, sum(CASE WHEN event_type = 'purchase' THEN revenue END), \
                     CAST(sum(CASE WHEN event_type = 'purchase' THEN 1 ELSE 0 END) AS DOUBLE) / nullif(CAST(approx_distinct(session_id) AS DOUBLE), 0) \
                     FROM events WHERE ts > TIMESTAMP '{from} 00:00:00' GROUP BY 1 ORDER BY 1");
    let v = sql(&c, &s, &measure_sql).await;
    let want = rows(&sql(&c, &s, &reference).await);
    assert!(want.len() > 10 && agree(&rows(&v), &want, 0.0), "{v}");
    // As Grafana writes it: relative to now().
    let recent = "SELECT MEASURE(events) FROM semantic.events WHERE ts > now() - INTERVAL '1' DAY";
    let n = rows(&sql(&c, &s, recent).await)[0][0].as_u64().unwrap();
    assert!(n > 1_000 && n < 60_000, "{n}");
    assert_eq!(
        v["resultTable"]["dataSchema"]["columnNames"],
        json!(["country", "revenue", "conversion"])
    );
    let fixed = "SELECT device, MEASURE(purchases) AS p, MEASURE(p95_latency) FROM semantic.events GROUP BY device HAVING MEASURE(purchases) > 0 ORDER BY p DESC";
    let fixed_reference = "SELECT device, sum(CASE WHEN event_type = 'purchase' THEN 1 ELSE 0 END) AS p, approx_percentile_cont(latency_ms, 0.95) \
                           FROM events GROUP BY device HAVING sum(CASE WHEN event_type = 'purchase' THEN 1 ELSE 0 END) > 0 ORDER BY p DESC";
    let fixed_rows = rows(&sql(&c, &s, fixed).await);
    assert!(!fixed_rows.is_empty());
    assert!(agree(
        &fixed_rows,
        &rows(&sql(&c, &s, fixed_reference).await),
        0.05
    ));
    for (bad, what) in [
        (
            "SELECT MEASURE(profit) FROM semantic.events",
            "\"profit\" is not a measure",
        ),
        (
            "SELECT city, MEASURE(revenue) FROM semantic.events GROUP BY 1",
            "\"city\" is not a dimension",
        ),
        (
            "SELECT MEASURE(revenue) FROM semantic.nope",
            "\"nope\" does not exist",
        ),
    ] {
        let v = sql(&c, &s, bad).await;
        let m = v["exceptions"][0]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("{bad}: {v}"));
        assert!(m.contains(what), "{bad}: {m}");
    }

    // The same over PostgreSQL.
    let pg = crate::harness::pg_connect(&s).await;
    let text_rows = |msgs: Vec<tokio_postgres::SimpleQueryMessage>| -> Vec<Vec<String>> {
        msgs.into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                    (0..r.len())
                        .map(|i| r.get(i).unwrap_or("NULL").to_string())
                        .collect(),
                ),
                _ => None,
            })
            .collect()
    };
    // Devices and purchase counts exactly; the percentile (a t-digest) within 5%.
    let got = text_rows(pg.simple_query(fixed).await.unwrap());
    let want = text_rows(pg.simple_query(fixed_reference).await.unwrap());
    assert!(!got.is_empty());
    let as_json = |rows: &[Vec<String>]| -> Vec<Vec<Value>> {
        rows.iter()
            .map(|r| {
                r.iter()
                    .map(|c| c.parse::<f64>().map_or_else(|_| json!(c), |f| json!(f)))
                    .collect()
            })
            .collect()
    };
    assert!(
        agree(&as_json(&got), &as_json(&want), 0.05),
        "{got:?} vs {want:?}"
    );
    // Extended protocol (prepared statement with a parameter), as BI tools send it.
    let stmt = pg
        .prepare("SELECT event_type, MEASURE(events) FROM semantic.events WHERE device = $1 GROUP BY 1 ORDER BY 1")
        .await
        .unwrap();
    let prepared: Vec<(String, i64)> = pg
        .query(&stmt, &[&"mobile"])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let direct: Vec<(String, i64)> = pg
        .query(
            "SELECT event_type, count(*) FROM events WHERE device = $1 GROUP BY 1 ORDER BY 1",
            &[&"mobile"],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(!prepared.is_empty());
    assert_eq!(prepared, direct);
    // psycopg 3, as Python BI code connects.
    if let Some(python) = service_env(
        "BASALT_TEST_PG_CLIENTS",
        "semantic_queries_equal_hand_written_sql (psycopg)",
    ) {
        let (host, port) = s.pg.rsplit_once(':').unwrap();
        run_client_script(
            &python,
            "semantic_psycopg.py",
            &[host, port],
            "semantic psycopg checks passed",
        );
    }
    let e = pg
        .simple_query("SELECT MEASURE(profit) FROM semantic.events")
        .await
        .expect_err("unknown measure");
    let db = e.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "42703", "{db:?}");
    assert!(db.message().contains("profit"), "{db:?}");

    // Request errors name the field; an unknown model is 404.
    for (q, field) in [
        (
            json!({"model": "events", "measures": ["profit"]}),
            "measures[0]:",
        ),
        (
            json!({"model": "events", "measures": ["revenue"], "dimensions": ["city"]}),
            "dimensions[0]:",
        ),
        (
            json!({"model": "events", "measures": ["revenue"], "filters": ["city = 'x'"]}),
            "filters[0]:",
        ),
        (
            json!({"model": "events", "measures": ["revenue"], "from": "last week"}),
            "from:",
        ),
    ] {
        let (status, v) = semantic(&c, &s, q.clone()).await;
        assert_eq!(status, 400, "{q}: {v}");
        assert!(v["error"].as_str().unwrap().starts_with(field), "{q}: {v}");
    }
    let (status, _) = semantic(&c, &s, json!({"model": "nope", "measures": ["x"]})).await;
    assert_eq!(status, 404);
    let (status, _) = semantic(&c, &s, json!({"model": "events", "mesures": ["x"]})).await;
    assert_eq!(status, 400);

    // A model whose freshness the data meets carries no warning.
    let relaxed = MODEL
        .replace("model: events", "model: relaxed")
        .replace("freshness: 1ms", "freshness: 30d");
    assert_eq!(
        post_model(&c, &s, "application/yaml", &relaxed).await.0,
        201
    );
    let (_, v) = semantic(&c, &s, json!({"model": "relaxed", "measures": ["events"]})).await;
    assert_eq!(v["semantic"]["warnings"], json!([]), "{v}");
    assert_eq!(rows(&v), vec![vec![json!(60_000)]]);

    // Models persist in the metastore: after a restart they answer the same.
    drop(pg);
    s.kill();
    let s = Server::start(&data, None);
    let listed = get_json(&c, &s, "/semantic/models").await;
    assert_eq!(listed["models"].as_array().unwrap().len(), 2, "{listed}");
    assert!(agree(
        &rows(&sql(&c, &s, fixed).await),
        &rows(&sql(&c, &s, fixed_reference).await),
        0.05
    ));

    // Deleted, it is gone.
    let r = c
        .delete(s.url("/semantic/models/relaxed"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .delete(s.url("/semantic/models/relaxed"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let (status, _) = semantic(&c, &s, json!({"model": "relaxed", "measures": ["events"]})).await;
    assert_eq!(status, 404);
}
