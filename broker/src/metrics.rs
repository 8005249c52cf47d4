//! Prometheus metrics of the broker, served at `GET /metrics` in the text format.

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub queries: IntCounterVec,
    pub query_seconds: HistogramVec,
    pub docs_scanned: IntCounterVec,
    pub ingested_rows: IntCounterVec,
    pub ingest_requests: IntCounterVec,
    pub table_rows: IntGaugeVec,
    pub table_segments: IntGaugeVec,
    pub table_bytes: IntGaugeVec,
    pub ingestion: IngestionMetrics,
    /// Open PostgreSQL protocol connections.
    pub pg_connections: prometheus::IntGauge,
    /// Requests and connections a limit or a guard refused. Labels: door (http, postgres),
    /// reason.
    pub refused: IntCounterVec,
}

/// Real-time ingestion, per table and partition; refreshed from the ingesters' status at
/// each scrape.
#[derive(Clone)]
pub struct IngestionMetrics {
    pub consumed_offset: IntGaugeVec,
    pub checkpoint_offset: IntGaugeVec,
    pub high_watermark: IntGaugeVec,
    pub lag: IntGaugeVec,
    pub mutable_rows: IntGaugeVec,
    pub events: IntCounterVec,
    pub quarantined: IntCounterVec,
    pub events_per_second: GaugeVec,
    pub last_seal: IntGaugeVec,
    pub broker_up: IntGaugeVec,
    pub unknown_fields: IntCounterVec,
    pub seals: IntCounterVec,
    /// Upsert and dedup tables.
    pub keys: IntGaugeVec,
    pub key_map_bytes: IntGaugeVec,
    /// Labels: table, partition, outcome (out_of_order, delete, duplicate, key_conflict,
    /// evicted, rejected).
    pub keyed_rows: IntCounterVec,
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

impl IngestionMetrics {
    fn new(r: &Registry) -> Self {
        let tp = &["table", "partition"];
        let events_per_second = GaugeVec::new(
            Opts::new(
                "basalt_ingestion_events_per_second",
                "Messages consumed per second, per partition",
            ),
            tp,
        )
        .expect("valid metric");
        r.register(Box::new(events_per_second.clone()))
            .expect("unique metric");
        IngestionMetrics {
            consumed_offset: gauge(
                r,
                "basalt_ingestion_consumed_offset",
                "Next offset the ingester reads",
                tp,
            ),
            checkpoint_offset: gauge(
                r,
                "basalt_ingestion_checkpoint_offset",
                "Next offset after the last published seal (metastore checkpoint)",
                tp,
            ),
            high_watermark: gauge(
                r,
                "basalt_ingestion_high_watermark",
                "Offset the next produced message gets",
                tp,
            ),
            lag: gauge(
                r,
                "basalt_ingestion_lag",
                "Messages produced and not consumed yet",
                tp,
            ),
            mutable_rows: gauge(
                r,
                "basalt_ingestion_mutable_rows",
                "Rows consumed and queryable but not sealed yet",
                tp,
            ),
            events: counter(r, "basalt_ingestion_events_total", "Messages consumed", tp),
            quarantined: counter(
                r,
                "basalt_ingestion_quarantined_total",
                "Messages sent to the quarantine",
                tp,
            ),
            events_per_second,
            last_seal: gauge(
                r,
                "basalt_ingestion_last_seal_timestamp_seconds",
                "Unix time of the last published seal",
                tp,
            ),
            broker_up: gauge(
                r,
                "basalt_ingestion_broker_up",
                "1 when the table's source is reachable",
                &["table"],
            ),
            unknown_fields: counter(
                r,
                "basalt_ingestion_unknown_fields_total",
                "Message fields the table has no column for (ignored)",
                &["table"],
            ),
            seals: counter(
                r,
                "basalt_ingestion_seals_total",
                "Seals published",
                &["table"],
            ),
            keys: gauge(
                r,
                "basalt_upsert_keys",
                "Primary keys in a partition's key map (upsert and dedup tables)",
                tp,
            ),
            key_map_bytes: gauge(
                r,
                "basalt_upsert_key_map_bytes",
                "Memory of a partition's key map and valid-docs bitmaps",
                tp,
            ),
            keyed_rows: counter(
                r,
                "basalt_upsert_rows_total",
                "Rows of upsert/dedup tables by outcome: out_of_order (ignored), delete, \
                 duplicate (dedup, dropped), key_conflict (key already in another partition), \
                 evicted (keys forgotten by the TTL), rejected (PARTIAL merges out of range, \
                 quarantined)",
                &["table", "partition", "outcome"],
            ),
        }
    }

    /// Sets the metrics from one table's status.
    pub fn observe(&self, st: &basalt_ingest::IngestionStatus) {
        let t = st.table.as_str();
        let up = i64::from(st.broker_reachable);
        self.broker_up.with_label_values(&[t]).set(up);
        advance(&self.unknown_fields, &[t], st.unknown_fields);
        advance(&self.seals, &[t], st.seals);
        for p in &st.partitions {
            let part = p.partition.to_string();
            let l = [t, part.as_str()];
            let set = |g: &IntGaugeVec, v: Option<i64>| match v {
                Some(v) => g.with_label_values(&l).set(v),
                None => {
                    let _ = g.remove_label_values(&l);
                }
            };
            set(&self.consumed_offset, p.consumed_offset);
            set(&self.checkpoint_offset, p.checkpoint_offset);
            set(&self.high_watermark, p.high_watermark);
            set(&self.lag, p.lag);
            set(&self.mutable_rows, Some(p.mutable_rows as i64));
            set(
                &self.last_seal,
                p.last_seal_time
                    .as_deref()
                    .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
                    .map(|d| d.timestamp()),
            );
            self.events_per_second
                .with_label_values(&l)
                .set(p.events_per_second);
            advance(&self.events, &l, p.events);
            advance(&self.quarantined, &l, p.quarantined);
            if let Some(k) = &p.keyed {
                set(&self.keys, Some(k.keys as i64));
                set(&self.key_map_bytes, Some(k.memory_bytes as i64));
                for (outcome, n) in keyed_outcomes(&k.counters) {
                    advance(&self.keyed_rows, &[t, part.as_str(), outcome], n);
                }
            }
        }
    }
}

fn keyed_outcomes(c: &basalt_ingest::upsert::KeyedCounters) -> [(&'static str, u64); 6] {
    [
        ("out_of_order", c.out_of_order),
        ("delete", c.deletes),
        ("duplicate", c.duplicates),
        ("key_conflict", c.key_conflicts),
        ("evicted", c.evicted),
        ("rejected", c.rejected),
    ]
}

impl IngestionMetrics {
    /// Removes a dropped table's series.
    pub fn forget(&self, st: &basalt_ingest::IngestionStatus) {
        let t = st.table.as_str();
        let _ = self.broker_up.remove_label_values(&[t]);
        let _ = self.unknown_fields.remove_label_values(&[t]);
        let _ = self.seals.remove_label_values(&[t]);
        for p in &st.partitions {
            let part = p.partition.to_string();
            let l = [t, part.as_str()];
            for g in [
                &self.consumed_offset,
                &self.checkpoint_offset,
                &self.high_watermark,
                &self.lag,
                &self.mutable_rows,
                &self.last_seal,
                &self.keys,
                &self.key_map_bytes,
            ] {
                let _ = g.remove_label_values(&l);
            }
            if let Some(k) = &p.keyed {
                for (outcome, _) in keyed_outcomes(&k.counters) {
                    let _ = self
                        .keyed_rows
                        .remove_label_values(&[t, part.as_str(), outcome]);
                }
            }
            let _ = self.events_per_second.remove_label_values(&l);
            let _ = self.events.remove_label_values(&l);
            let _ = self.quarantined.remove_label_values(&l);
        }
    }
}

/// Moves a counter up to `total` (the ingester keeps the running totals).
fn advance(c: &IntCounterVec, labels: &[&str], total: u64) {
    let c = c.with_label_values(labels);
    let cur = c.get();
    if total > cur {
        c.inc_by(total - cur);
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let http_requests = IntCounterVec::new(
            Opts::new(
                "basalt_http_requests_total",
                "HTTP requests by route and status",
            ),
            &["route", "status"],
        )
        .expect("valid metric");
        let queries = IntCounterVec::new(
            Opts::new(
                "basalt_queries_total",
                "SQL queries by protocol (http, postgres) and outcome",
            ),
            &["protocol", "outcome"],
        )
        .expect("valid metric");
        let query_seconds = HistogramVec::new(
            HistogramOpts::new(
                "basalt_query_duration_seconds",
                "SQL query latency by protocol (http, postgres) and outcome",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["protocol", "outcome"],
        )
        .expect("valid metric");
        let docs_scanned = IntCounterVec::new(
            Opts::new(
                "basalt_query_docs_scanned_total",
                "Docs matched by query filters",
            ),
            &["table"],
        )
        .expect("valid metric");
        let ingested_rows = IntCounterVec::new(
            Opts::new(
                "basalt_ingested_rows_total",
                "Rows accepted by batch ingestion",
            ),
            &["table"],
        )
        .expect("valid metric");
        let ingest_requests = IntCounterVec::new(
            Opts::new(
                "basalt_ingest_requests_total",
                "Batch ingest requests by outcome",
            ),
            &["table", "outcome"],
        )
        .expect("valid metric");
        let table_rows = IntGaugeVec::new(
            Opts::new("basalt_table_rows", "Rows in sealed segments"),
            &["table"],
        )
        .expect("valid metric");
        let table_segments = IntGaugeVec::new(
            Opts::new("basalt_table_segments", "Sealed segments"),
            &["table"],
        )
        .expect("valid metric");
        let table_bytes = IntGaugeVec::new(
            Opts::new("basalt_table_bytes", "Bytes of sealed segments"),
            &["table"],
        )
        .expect("valid metric");
        for c in [
            &http_requests,
            &queries,
            &docs_scanned,
            &ingested_rows,
            &ingest_requests,
        ] {
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
        }
        registry
            .register(Box::new(query_seconds.clone()))
            .expect("unique metric");
        for g in [&table_rows, &table_segments, &table_bytes] {
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
        }
        let ingestion = IngestionMetrics::new(&registry);
        let pg_connections = prometheus::IntGauge::new(
            "basalt_pg_connections",
            "Open PostgreSQL protocol connections",
        )
        .expect("valid metric");
        registry
            .register(Box::new(pg_connections.clone()))
            .expect("unique metric");
        let refused = counter(
            &registry,
            "basalt_refused_total",
            "Requests and connections refused by a limit or a guard, by door and reason",
            &["door", "reason"],
        );
        Metrics {
            ingestion,
            pg_connections,
            refused,
            registry,
            http_requests,
            queries,
            query_seconds,
            docs_scanned,
            ingested_rows,
            ingest_requests,
            table_rows,
            table_segments,
            table_bytes,
        }
    }

    /// Adds metrics kept elsewhere (the cluster's) to the registry.
    pub fn register(&self, m: Box<dyn prometheus::core::Collector>) {
        if let Err(e) = self.registry.register(m) {
            tracing::warn!(error = %e, "a metric could not be registered");
        }
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// The `outcome` label of a failed query, from its kind.
pub fn outcome(e: &basalt_query::QueryError) -> &'static str {
    use basalt_query::ErrorKind::*;
    match e.kind() {
        Timeout => "timeout",
        Overloaded => "overloaded",
        Memory | RowLimit | ResponseTooLarge => "limit",
        _ if e.is_client_error() => "invalid",
        _ => "error",
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
