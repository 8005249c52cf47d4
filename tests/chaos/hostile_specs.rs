//! Table specs as an attacker writes them, through the real binary: nothing in a spec loads
//! code, reads another team's store, leaks a secret or makes the server spin without bound.

use serde_json::{json, Value};

use crate::harness::{get_json, Server};

const SPEC: &str = include_str!("../../ingestion/src/gen_events_spec.json");

fn spec(name: &str) -> Value {
    let mut v: Value = serde_json::from_str(SPEC).unwrap();
    v["name"] = name.into();
    v
}

fn kafka(name: &str, properties: Value) -> Value {
    let mut v = spec(name);
    // Nothing listens there: creating the table makes a consumer but connects later.
    v["source"] = json!({"kafka": {"brokers": "127.0.0.1:1", "topic": "t",
        "properties": properties}});
    v
}

async fn create(c: &reqwest::Client, s: &Server, v: &Value) -> (u16, Value) {
    let r = c.post(s.url("/tables")).json(v).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Asserts a 400 whose message names `field` and says `says`.
async fn refused(c: &reqwest::Client, s: &Server, v: &Value, field: &str, says: &str) {
    let (st, body) = create(c, s, v).await;
    let msg = body["error"].as_str().unwrap_or_default().to_string();
    assert_eq!(st, 400, "{field}: {body}");
    assert!(
        msg.contains(field) && msg.contains(says),
        "{field} / {says}: {msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_properties_are_an_allowlist_and_secrets_stay_hidden() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with(
        &dir.path().join("data"),
        None,
        &[("BASALT_SECRET_KAFKA_PASSWORD", "from-the-environment")],
    );
    let c = reqwest::Client::new();
    for (key, value, says) in [
        ("plugin.library.paths", "/tmp/evil.so", "loads code"),
        ("interceptor.test.config1", "x", "loads code"),
        ("ssl.engine.location", "/tmp/engine.so", "names a file"),
        ("ssl.ca.location", "/etc/shadow", "names a file"),
        (
            "sasl.kerberos.kinit.cmd",
            "touch /tmp/pwned",
            "runs a command",
        ),
        ("oauthbearer_token_refresh_cb", "x", "callback"),
        (
            "group.id",
            "another-teams-group",
            "Basalt owns the consumer group",
        ),
        ("enable.auto.commit", "true", "auto-committed"),
        ("debug", "all", "not an allowed consumer setting"),
        ("queued.max.messages.kbytes", "2097151", "at most"),
    ] {
        let field = format!("source.kafka.properties.{key}");
        refused(&c, &s, &kafka("k", json!({ key: value })), &field, says).await;
    }
    // A reference may only name the operator's secret variables, and must be set.
    refused(
        &c,
        &s,
        &kafka("k", json!({"sasl.username": "${env:HOME}"})),
        "source.kafka.properties.sasl.username",
        "BASALT_SECRET_*",
    )
    .await;
    refused(
        &c,
        &s,
        &kafka("k", json!({"sasl.password": "${env:BASALT_SECRET_UNSET}"})),
        "source.kafka.properties.sasl.password",
        "not set",
    )
    .await;
    assert_eq!(get_json(&c, &s, "/tables").await["tables"], json!([]));

    // Accepted: tunables and a literal secret, shown as ***; a reference, shown as written.
    let sasl = |password: &str| {
        json!({"security.protocol": "SASL_PLAINTEXT", "sasl.mechanisms": "PLAIN",
               "sasl.username": "svc", "sasl.password": password,
               "session.timeout.ms": "6000"})
    };
    let (st, body) = create(&c, &s, &kafka("k", sasl("literal-secret"))).await;
    assert_eq!(st, 201, "{body}");
    let (st, body) = create(
        &c,
        &s,
        &kafka("k_ref", sasl("${env:BASALT_SECRET_KAFKA_PASSWORD}")),
    )
    .await;
    assert_eq!(st, 201, "{body}");
    let got = get_json(&c, &s, "/tables/k").await;
    let props = &got["spec"]["source"]["kafka"]["properties"];
    assert_eq!(props["sasl.password"], "***", "{got}");
    assert_eq!(props["sasl.username"], "svc");
    let got_ref = get_json(&c, &s, "/tables/k_ref").await;
    assert_eq!(
        got_ref["spec"]["source"]["kafka"]["properties"]["sasl.password"],
        "${env:BASALT_SECRET_KAFKA_PASSWORD}"
    );
    let text = format!("{got}{got_ref}");
    assert!(
        !text.contains("literal-secret") && !text.contains("from-the-environment"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_stores_widths_and_sources_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = Server::start(
        &data,
        Some("[tables]\nmax_columns = 20\nmax_partitions = 8\n"),
    );
    let c = reqwest::Client::new();

    // Another team's store, a path outside the server's, `..` tricks: all refused.
    let other = dir.path().join("other-team");
    for d in [
        format!("file://{}", other.display()),
        format!("file://{}/../other-team", data.display()),
        "s3://another-teams-bucket/basalt".to_string(),
        "file://relative/dir".to_string(),
    ] {
        let mut v = spec("t");
        v["deep_store"] = d.clone().into();
        let (st, body) = create(&c, &s, &v).await;
        assert_eq!(st, 400, "{d}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains("deep_store"),
            "{body}"
        );
    }
    assert!(
        !other.exists(),
        "nothing was created outside the allowed roots"
    );
    // Under the server's own data dir: allowed.
    let mut v = spec("own_store");
    v["deep_store"] = format!("file://{}/tables/own", data.display()).into();
    assert_eq!(create(&c, &s, &v).await.0, 201);

    // Width.
    let mut wide = spec("wide");
    let cols = wide["columns"].as_array_mut().unwrap();
    for i in 0..10 {
        cols.push(json!({"name": format!("extra_{i}"), "type": "LONG"}));
    }
    refused(&c, &s, &wide, "columns", "tables.max_columns").await;

    // Generators: partitions over the cap, or unthrottled without an end.
    let mut g = spec("gen");
    g["source"] = json!({"generator": {"partitions": 9}});
    refused(
        &c,
        &s,
        &g,
        "source.generator.partitions",
        "tables.max_partitions",
    )
    .await;
    g["source"] = json!({"generator": {"partitions": 2, "events_per_second": 0}});
    refused(
        &c,
        &s,
        &g,
        "source.generator.events_per_second",
        "max_events",
    )
    .await;
    g["source"] = json!({"generator": {"partitions": 2, "events_per_second": 50_000_000}});
    refused(&c, &s, &g, "source.generator.events_per_second", "at most").await;
    let h: Value = get_json(&c, &s, "/health").await;
    assert_eq!(h["status"], "ok", "{h}");
}
