//! What the real-time ingester reports: per table and per partition, for
//! `GET /tables/{name}/ingestion`, `/health` and the Prometheus metrics.

use serde::Serialize;

use crate::upsert::KeyedCounters;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IngestionState {
    /// Connecting, reading checkpoints.
    Starting,
    Consuming,
    /// The broker cannot be reached; the ingester keeps retrying by itself.
    BrokerUnreachable,
    /// Consumption stopped on an error and restarts from the checkpoints after a pause.
    Error,
    /// Another server holds the table's consumer lease; this one takes over when it lapses.
    Standby,
    Stopped,
}

#[derive(Debug, Clone, Serialize)]
pub struct IngestionStatus {
    pub table: String,
    pub source: String,
    pub state: IngestionState,
    pub broker_reachable: bool,
    /// The latest error (cleared when consumption recovers).
    pub error: Option<String>,
    /// Fields messages carried that the table has no column for (ignored).
    pub unknown_fields: u64,
    /// Seals published since the server started.
    pub seals: u64,
    /// Seals built or waiting to publish.
    pub seals_pending: usize,
    /// The consumer lease this server holds (node and epoch), or the one it waits for.
    pub owner: Option<crate::metastore::Lease>,
    pub partitions: Vec<PartitionStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PartitionStatus {
    pub partition: i32,
    /// The next offset the ingester will read.
    pub consumed_offset: Option<i64>,
    /// The next offset after the last published seal (the metastore checkpoint).
    pub checkpoint_offset: Option<i64>,
    /// The offset the next message produced to the partition will get.
    pub high_watermark: Option<i64>,
    /// Messages produced but not consumed yet.
    pub lag: Option<i64>,
    /// Rows consumed and queryable but not sealed yet.
    pub mutable_rows: u64,
    /// Memory the partition's mutable segments hold (rows and their queryable chunks).
    pub mutable_bytes: u64,
    /// RFC 3339 time of the last published seal.
    pub last_seal_time: Option<String>,
    /// Messages sent to the quarantine since the server started.
    pub quarantined: u64,
    /// Messages consumed since the server started.
    pub events: u64,
    pub events_per_second: f64,
    /// Upsert and dedup tables: the partition's key map.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keyed: Option<KeyedStatus>,
}

/// One partition's key map and what it did (upsert and dedup tables).
#[derive(Debug, Clone, Serialize)]
pub struct KeyedStatus {
    pub keys: u64,
    /// Key map and bitmap bytes.
    pub memory_bytes: u64,
    #[serde(flatten)]
    pub counters: KeyedCounters,
}

impl IngestionStatus {
    pub fn new(table: &str, source: String) -> Self {
        IngestionStatus {
            table: table.into(),
            source,
            state: IngestionState::Starting,
            broker_reachable: false,
            error: None,
            unknown_fields: 0,
            seals: 0,
            seals_pending: 0,
            owner: None,
            partitions: Vec::new(),
        }
    }

    /// True when the table is not consuming normally.
    pub fn degraded(&self) -> bool {
        matches!(
            self.state,
            IngestionState::BrokerUnreachable | IngestionState::Error
        )
    }
}
