//! Prometheus metrics of the broker, served at `GET /metrics` in the text format.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
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
            Opts::new("basalt_queries_total", "SQL queries by outcome"),
            &["outcome"],
        )
        .expect("valid metric");
        let query_seconds = HistogramVec::new(
            HistogramOpts::new("basalt_query_duration_seconds", "SQL query latency").buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["outcome"],
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
        Metrics {
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

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
