//! Table specs: what a data engineer posts to `POST /tables`. In: JSON. Out: a validated
//! [`TableSpec`] and the [`SegmentSchema`] segments of the table are built with.
//!
//! Unknown fields are rejected (serde `deny_unknown_fields`); types and index kinds are checked
//! here so the error names the offending field, e.g. `columns[3].type`.

use basalt_segment::star_tree::{StarMetric, StarTreeDef};
use basalt_segment::{ColumnDef, ColumnType, IndexKind, SegmentSchema};
use serde::{Deserialize, Serialize};

use crate::error::{IngestError, Result};

/// Most servers a sealed segment may be replicated to.
pub const MAX_REPLICATION: u32 = 16;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TableSpec {
    pub name: String,
    /// The column rows are placed in time by; must be TIMESTAMP or LONG (epoch ms) or DATE (a
    /// segment's time range then covers its days). A table without one is a dimension table
    /// (Pinot's): its segments carry no time range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_column: Option<String>,
    /// The table's columns (may be left out for a table over an Iceberg table, which reads
    /// them from the Iceberg schema).
    #[serde(default)]
    pub columns: Vec<ColumnSpec>,
    #[serde(default)]
    pub segment: SegmentConfig,
    /// A stream the table consumes continuously (real-time table).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceSpec>,
    /// Where this table's segments and metastore state live (`file://` or `s3://`); default:
    /// the server's deep store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deep_store: Option<String>,
    /// Columns whose values identify an entity (upsert and dedup tables).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub primary_key: Vec<String>,
    /// Keep one current row per primary key (Pinot's upsert).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upsert: Option<UpsertSpec>,
    /// Drop rows whose primary key was already seen (Pinot's dedup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup: Option<DedupSpec>,
    /// In a cluster, how many servers hold each sealed segment (1-16, default 1); a query
    /// stays complete while one of them is up. `standalone` holds one copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 16)]
    pub replication: Option<u32>,
    /// Move sealed segments older than `tier_after` into an Iceberg table; queries span both
    /// (see `crate::warehouse`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warehouse: Option<crate::warehouse::WarehouseSpec>,
    /// Star-trees (Pinot's pre-aggregation index) built into each sealed segment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub star_tree: Vec<StarTreeSpec>,
}

/// A star-tree: aggregates kept per combination of some dimensions, and summed over any of
/// them ("star"), so a GROUP BY and filters over those dimensions read pre-aggregated
/// records instead of rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StarTreeSpec {
    /// Single-value columns, in the order the tree splits on them (1-16).
    pub dimensions: Vec<String>,
    /// `count(*)`, `sum(col)`, `min(col)`, `max(col)` (numeric columns) and
    /// `approx_distinct(col)` (string columns). `count(*)` is always kept.
    pub metrics: Vec<String>,
    /// A node with at most this many records is not split further (default 10,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1000000)]
    pub max_leaf_records: Option<u32>,
}

/// Star-trees a table may have.
pub const MAX_STAR_TREES: usize = 4;

impl StarTreeSpec {
    /// The segment format's definition: metrics parsed, `count(*)` first.
    fn def(&self) -> std::result::Result<StarTreeDef, String> {
        let mut metrics = vec![StarMetric::Count];
        for m in &self.metrics {
            let m = StarMetric::parse(m)?;
            if !metrics.contains(&m) {
                metrics.push(m);
            }
        }
        Ok(StarTreeDef {
            dimensions: self.dimensions.clone(),
            metrics,
            max_leaf_records: self.max_leaf_records.unwrap_or(10_000),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpsertSpec {
    /// `FULL` (a new row replaces the key's row) or `PARTIAL` (merged column by column).
    pub mode: String,
    /// The column that orders a key's rows (default: the time column): a row with a smaller
    /// value than the key's current row is ignored; on equal values the later arrival wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comparison_column: Option<String>,
    /// A BOOLEAN column: a row with `true` hides its key until the next accepted row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_column: Option<String>,
    /// PARTIAL only: column → OVERWRITE, IGNORE, INCREMENT, MAX, MIN, APPEND or UNION.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub partial_strategies: std::collections::BTreeMap<String, String>,
    /// Forget keys whose comparison value is older than the largest seen minus this, e.g.
    /// `7d` (the comparison column must be the time column or hold epoch milliseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_ttl: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DedupSpec {
    pub enabled: bool,
    /// Keys are remembered this long after the largest time seen, e.g. `1d` (default:
    /// forever).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// Consume a Kafka topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaSource>,
    /// Built-in generator of `events`-shaped JSON messages (quickstart, benchmarks): needs no
    /// broker and goes through the same decode, mutable segment, seal and checkpoint path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generator: Option<GeneratorSource>,
    /// An in-process topic written by the embedding program (tests, embedding).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemorySource>,
    /// A read-only table over an existing Iceberg table (any writer's): queries read its
    /// current snapshot; nothing is ingested. `columns` may be left empty: they are read
    /// from the Iceberg schema when the table is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iceberg: Option<crate::warehouse::IcebergTableRef>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemorySource {
    pub topic: String,
    #[serde(default = "default_generator_partitions")]
    pub partitions: i32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GeneratorSource {
    /// Events per second over all partitions (at most 1,000,000); 0 = as fast as ingestion
    /// goes, allowed only with `max_events`.
    #[serde(default = "default_generator_rate")]
    pub events_per_second: u64,
    #[serde(default = "default_generator_partitions")]
    pub partitions: i32,
    /// Stop after this many events per partition (default: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_events: Option<i64>,
    /// Fraction of messages that are malformed (to show the quarantine), 0.0..=1.0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub malformed_ratio: f64,
}

/// Fastest generator a spec may ask for, events per second over all partitions.
pub const MAX_GENERATOR_RATE: u64 = 1_000_000;
/// Most events per partition a generator may produce.
pub const MAX_GENERATOR_EVENTS: i64 = 1_000_000_000;

fn is_zero(f: &f64) -> bool {
    *f == 0.0
}

fn default_generator_rate() -> u64 {
    1000
}

fn default_generator_partitions() -> i32 {
    2
}

#[derive(Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaSource {
    /// Bootstrap servers, `host:port[,host:port...]`.
    pub brokers: String,
    pub topic: String,
    /// Message format; `json` (one object per message).
    #[serde(default = "default_format")]
    pub format: String,
    /// Where a partition without a checkpoint starts: `earliest` or `latest`.
    #[serde(default = "default_start")]
    pub start: String,
    /// librdkafka settings from an allowlist (e.g. `session.timeout.ms`, `sasl.*`); secrets
    /// may be `${env:NAME}` references (see [`crate::realtime::kafka_config`]).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub properties: std::collections::BTreeMap<String, String>,
}

impl KafkaSource {
    fn validate(&self) -> Result<()> {
        if self.brokers.trim().is_empty() {
            return Err(spec_err(
                "source.kafka.brokers: must name at least one broker",
            ));
        }
        if self.topic.trim().is_empty() {
            return Err(spec_err("source.kafka.topic: must not be empty"));
        }
        if self.format != "json" {
            return Err(spec_err(format!(
                "source.kafka.format: {:?} is not supported (json)",
                self.format
            )));
        }
        if self.start != "earliest" && self.start != "latest" {
            return Err(spec_err(format!(
                "source.kafka.start: {:?} must be \"earliest\" or \"latest\"",
                self.start
            )));
        }
        crate::realtime::kafka_config::validate(&self.properties)
            .map_err(|e| spec_err(e.to_string()))
    }

    /// The spec as responses and logs show it: literal secrets as `***`.
    pub fn redacted(&self) -> KafkaSource {
        KafkaSource {
            properties: crate::realtime::kafka_config::redacted(&self.properties),
            ..self.clone()
        }
    }
}

/// Secrets in `properties` are shown as `***`.
impl std::fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSource")
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .field("format", &self.format)
            .field("start", &self.start)
            .field(
                "properties",
                &crate::realtime::kafka_config::redacted(&self.properties),
            )
            .finish()
    }
}

impl GeneratorSource {
    fn validate(&self) -> Result<()> {
        if !(1..=1024).contains(&self.partitions) {
            return Err(spec_err(
                "source.generator.partitions: must be between 1 and 1024",
            ));
        }
        if !(0.0..=1.0).contains(&self.malformed_ratio) {
            return Err(spec_err(
                "source.generator.malformed_ratio: must be between 0.0 and 1.0",
            ));
        }
        if self
            .max_events
            .is_some_and(|m| !(0..=MAX_GENERATOR_EVENTS).contains(&m))
        {
            return Err(spec_err(format!(
                "source.generator.max_events: must be between 0 and {MAX_GENERATOR_EVENTS}"
            )));
        }
        if self.events_per_second > MAX_GENERATOR_RATE {
            return Err(spec_err(format!(
                "source.generator.events_per_second: must be at most {MAX_GENERATOR_RATE}"
            )));
        }
        if self.events_per_second == 0 && self.max_events.is_none() {
            return Err(spec_err(
                "source.generator.events_per_second: 0 (unthrottled) needs max_events, so the \
                 generator cannot run without bound",
            ));
        }
        Ok(())
    }
}

fn default_format() -> String {
    "json".into()
}

fn default_start() -> String {
    "earliest".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ColumnSpec {
    pub name: String,
    /// One of STRING, INT, LONG, FLOAT, DOUBLE, BOOLEAN, TIMESTAMP, DATE, DECIMAL(p, s), JSON,
    /// STRING_ARRAY, LONG_ARRAY.
    #[serde(rename = "type")]
    pub ty: String,
    /// Index kinds: inverted, range, sorted, bloom, text (full-text search with
    /// `TEXT_MATCH`, STRING columns only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub index: Vec<String>,
    /// Whether the column may be null (default true; the time column never is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nullable: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SegmentConfig {
    /// Rows per sealed segment (default 1,000,000).
    #[serde(default = "default_max_rows")]
    pub max_rows: usize,
    /// Seal a real-time segment this long after its first row, e.g. `10m` (units ms, s, m,
    /// h, d).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<String>,
    /// Seal a segment once its rows hold this much memory, e.g. `256MB` (B, KB, MB, GB, TB
    /// as powers of 1024; KiB.. also accepted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<String>,
}

/// Why a duration (`30s`) or size (`256MB`) setting does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("{input:?} has no unit ({units})")]
    NoUnit { input: String, units: &'static str },
    #[error("{input:?} does not start with a whole number")]
    NotANumber { input: String },
    #[error("{input:?}: unknown unit {unit:?} ({units})")]
    UnknownUnit {
        input: String,
        unit: String,
        units: &'static str,
    },
    #[error("{input:?} must be positive and {bound}")]
    OutOfRange { input: String, bound: &'static str },
}

const DURATION_UNITS: &str = "ms, s, m, h, d";
const SIZE_UNITS: &str = "B, KB, MB, GB, TB";

/// Splits `s` into its leading whole number and the unit after it.
fn number_and_unit(s: &str) -> std::result::Result<(u64, &str), UnitError> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n = num.parse().map_err(|_| UnitError::NotANumber {
        input: s.to_string(),
    })?;
    Ok((n, unit.trim()))
}

/// Parses a duration such as `500ms`, `30s`, `10m`, `1h` or `7d`.
pub fn parse_duration(s: &str) -> std::result::Result<std::time::Duration, UnitError> {
    let (n, unit) = number_and_unit(s)?;
    let ms = match unit {
        "" => {
            return Err(UnitError::NoUnit {
                input: s.to_string(),
                units: DURATION_UNITS,
            })
        }
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        u => {
            return Err(UnitError::UnknownUnit {
                input: s.to_string(),
                unit: u.to_string(),
                units: DURATION_UNITS,
            })
        }
    };
    n.checked_mul(ms)
        .map(std::time::Duration::from_millis)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| UnitError::OutOfRange {
            input: s.to_string(),
            bound: "below 584 million years",
        })
}

/// Parses a size such as `256MB`, `1GiB` or `4096` (bytes).
pub fn parse_bytes(s: &str) -> std::result::Result<u64, UnitError> {
    let (n, unit) = number_and_unit(s)?;
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "KB" | "KIB" | "K" => 10,
        "MB" | "MIB" | "M" => 20,
        "GB" | "GIB" | "G" => 30,
        "TB" | "TIB" | "T" => 40,
        u => {
            return Err(UnitError::UnknownUnit {
                input: s.to_string(),
                unit: u.to_string(),
                units: SIZE_UNITS,
            })
        }
    };
    n.checked_mul(1u64 << shift)
        .filter(|&b| b > 0)
        .ok_or_else(|| UnitError::OutOfRange {
            input: s.to_string(),
            bound: "fit in 64 bits",
        })
}

fn default_max_rows() -> usize {
    1_000_000
}

impl Default for SegmentConfig {
    fn default() -> Self {
        SegmentConfig {
            max_rows: default_max_rows(),
            max_age: None,
            max_bytes: None,
        }
    }
}

fn spec_err(msg: impl Into<String>) -> IngestError {
    IngestError::Spec(msg.into())
}

impl TableSpec {
    /// Parses and validates a spec from JSON bytes.
    pub fn from_json(bytes: &[u8]) -> Result<TableSpec> {
        let spec: TableSpec = serde_json::from_slice(bytes).map_err(|e| spec_err(e.to_string()))?;
        spec.validate()?;
        Ok(spec)
    }

    pub fn validate(&self) -> Result<()> {
        let valid_name = |s: &str| {
            !s.is_empty()
                && s.len() <= 128
                && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !s.starts_with(|c: char| c.is_ascii_digit())
        };
        if !valid_name(&self.name) {
            return Err(spec_err(format!(
                "name: {:?} must be 1-128 letters, digits or underscores, not starting with a digit",
                self.name
            )));
        }
        if let Some(r) = self.iceberg_source() {
            r.validate("source.iceberg")?;
            let extra = [
                (self.warehouse.is_some(), "warehouse"),
                (!self.primary_key.is_empty(), "primary_key"),
                (self.upsert.is_some(), "upsert"),
                (self.dedup.is_some(), "dedup"),
                (self.deep_store.is_some(), "deep_store"),
            ];
            if let Some((_, field)) = extra.iter().find(|(set, _)| *set) {
                return Err(spec_err(format!(
                    "{field}: a table over an Iceberg table (source.iceberg) is read-only and \
                     cannot have one"
                )));
            }
        }
        // A table over an Iceberg table may leave its columns to the Iceberg schema.
        if self.columns.is_empty() && self.iceberg_source().is_none() {
            return Err(spec_err("columns: a table needs at least one column"));
        }
        if self
            .replication
            .is_some_and(|r| !(1..=MAX_REPLICATION).contains(&r))
        {
            return Err(spec_err(format!(
                "replication: must be between 1 and {MAX_REPLICATION}"
            )));
        }
        let mut seen = std::collections::HashSet::new();
        let mut sorted = 0;
        for (i, c) in self.columns.iter().enumerate() {
            if !valid_name(&c.name) {
                return Err(spec_err(format!(
                    "columns[{i}].name: {:?} must be 1-128 letters, digits or underscores",
                    c.name
                )));
            }
            if !seen.insert(c.name.as_str()) {
                return Err(spec_err(format!(
                    "columns[{i}].name: duplicate column {:?}",
                    c.name
                )));
            }
            let (ty, multi_value) = column_kind(&c.ty).ok_or_else(|| {
                let why = match ColumnType::parse_checked(&c.ty) {
                    Err(e) if e.starts_with("unknown") => format!(
                        "unknown type {:?} (expected one of STRING, INT, LONG, FLOAT, DOUBLE, BOOLEAN, TIMESTAMP, DATE, DECIMAL(precision, scale), JSON, STRING_ARRAY, LONG_ARRAY)",
                        c.ty
                    ),
                    Err(e) => e,
                    Ok(t) => format!("unknown type {t}"),
                };
                spec_err(format!("columns[{i}].type: {why}"))
            })?;
            for (j, k) in c.index.iter().enumerate() {
                let kind = parse_index(k).ok_or_else(|| {
                    spec_err(format!(
                        "columns[{i}].index[{j}]: unknown index kind {k:?} (expected inverted, range, sorted, bloom, text or json)"
                    ))
                })?;
                match kind {
                    IndexKind::Range | IndexKind::Sorted if multi_value => {
                        return Err(spec_err(format!(
                            "columns[{i}].index[{j}]: a {} index does not apply to {}, an array column (inverted and bloom do)",
                            kind.name(),
                            c.name
                        )))
                    }
                    IndexKind::Text if multi_value || ty != ColumnType::String => {
                        return Err(spec_err(format!(
                            "columns[{i}].index[{j}]: a text index needs a STRING column, {} is {}",
                            c.name, c.ty
                        )))
                    }
                    IndexKind::Json if multi_value || ty != ColumnType::Json => {
                        return Err(spec_err(format!(
                            "columns[{i}].index[{j}]: a json index needs a JSON column, {} is {}",
                            c.name, c.ty
                        )))
                    }
                    IndexKind::Range if matches!(ty, ColumnType::String | ColumnType::Json | ColumnType::Boolean) => {
                        return Err(spec_err(format!(
                            "columns[{i}].index[{j}]: a range index needs a numeric or TIMESTAMP column, {} is {}",
                            c.name,
                            ty.name()
                        )))
                    }
                    IndexKind::Sorted => sorted += 1,
                    _ => {}
                }
            }
        }
        if sorted > 1 {
            return Err(spec_err(
                "columns: at most one column can have a sorted index",
            ));
        }
        if let Some(time_column) = &self.time_column {
            let time = self
                .columns
                .iter()
                .position(|c| c.name == *time_column)
                .ok_or_else(|| {
                    spec_err(format!(
                        "time_column: {time_column:?} is not one of the columns"
                    ))
                })?;
            match column_kind(&self.columns[time].ty) {
                Some((ColumnType::Timestamp | ColumnType::Long | ColumnType::Date, false)) => {}
                _ => {
                    return Err(spec_err(format!(
                        "time_column: {time_column:?} must be TIMESTAMP, DATE or LONG, not {}",
                        self.columns[time].ty
                    )))
                }
            }
            if self.columns[time].nullable == Some(true) {
                return Err(spec_err(format!(
                    "columns[{time}].nullable: the time column cannot be nullable"
                )));
            }
        }
        self.validate_star_trees()?;
        if self.segment.max_rows == 0 || self.segment.max_rows > u32::MAX as usize {
            return Err(spec_err(
                "segment.max_rows: must be between 1 and 4294967295",
            ));
        }
        if let Some(a) = &self.segment.max_age {
            parse_duration(a).map_err(|e| spec_err(format!("segment.max_age: {e}")))?;
        }
        self.max_bytes()?;
        if let Some(src) = &self.source {
            match (&src.kafka, &src.generator, &src.memory, &src.iceberg) {
                (Some(k), None, None, None) => k.validate()?,
                (None, Some(g), None, None) => g.validate()?,
                (None, None, Some(m), None) if (1..=1024).contains(&m.partitions) => {}
                (None, None, Some(_), None) => {
                    return Err(spec_err(
                        "source.memory.partitions: must be between 1 and 1024",
                    ))
                }
                (None, None, None, Some(_)) => {}
                _ => {
                    return Err(spec_err(
                        "source: name exactly one of \"kafka\", \"generator\", \"memory\" or \"iceberg\"",
                    ))
                }
            }
        }
        if let Some(d) = &self.deep_store {
            if !(d.starts_with("s3://") || d.starts_with("file:///")) {
                return Err(spec_err(format!(
                    "deep_store: {d:?} must be an s3:// or file:/// URL (an absolute path)"
                )));
            }
        }
        crate::upsert::config::validate(self)?;
        if let Some(w) = &self.warehouse {
            w.validate()?;
            if self.time_column.is_none() {
                return Err(spec_err(
                    "warehouse: a table without a time_column has nothing to tier by",
                ));
            }
        }
        Ok(())
    }

    /// Whether the table consumes a stream (Kafka, the generator, a memory topic): a
    /// real-time table. A table over an Iceberg table has a source but no stream.
    pub fn is_realtime(&self) -> bool {
        self.source.as_ref().is_some_and(|s| s.iceberg.is_none())
    }

    /// The Iceberg table a read-only table reads (`source.iceberg`).
    pub fn iceberg_source(&self) -> Option<&crate::warehouse::IcebergTableRef> {
        self.source.as_ref().and_then(|s| s.iceberg.as_ref())
    }

    /// Servers holding each sealed segment in a cluster.
    pub fn replication(&self) -> usize {
        self.replication.unwrap_or(1) as usize
    }

    /// The spec as responses and logs show it: literal secrets as `***`.
    pub fn redacted(&self) -> TableSpec {
        let mut s = self.clone();
        if let Some(k) = s.source.as_mut().and_then(|src| src.kafka.as_mut()) {
            *k = k.redacted();
        }
        s
    }

    /// The column's declared type (an array column's element type), for a validated spec.
    pub fn column_type(&self, name: &str) -> Option<ColumnType> {
        self.columns
            .iter()
            .find(|c| c.name == name)
            .and_then(|c| column_kind(&c.ty))
            .map(|(t, _)| t)
    }

    /// Whether column `i` is an array (multi-value) column.
    pub fn is_array(&self, i: usize) -> bool {
        self.columns
            .get(i)
            .and_then(|c| column_kind(&c.ty))
            .is_some_and(|(_, mv)| mv)
    }

    /// `segment.max_bytes` in bytes, if set.
    pub fn max_bytes(&self) -> Result<Option<u64>> {
        self.segment
            .max_bytes
            .as_deref()
            .map(|b| parse_bytes(b).map_err(|e| spec_err(format!("segment.max_bytes: {e}"))))
            .transpose()
    }

    fn validate_star_trees(&self) -> Result<()> {
        if self.star_tree.is_empty() {
            return Ok(());
        }
        if self.star_tree.len() > MAX_STAR_TREES {
            return Err(spec_err(format!(
                "star_tree: at most {MAX_STAR_TREES} star-trees per table"
            )));
        }
        if self.upsert.is_some() || self.dedup.is_some() || self.iceberg_source().is_some() {
            return Err(spec_err(
                "star_tree: not available on upsert, dedup or Iceberg tables (a sealed \
                 segment's rows must be final for its pre-aggregates to hold)",
            ));
        }
        let schema = SegmentSchema {
            star_trees: Vec::new(),
            ..self.segment_schema()
        };
        for (i, t) in self.star_tree.iter().enumerate() {
            if t.max_leaf_records
                .is_some_and(|n| !(1..=1_000_000).contains(&n))
            {
                return Err(spec_err(format!(
                    "star_tree[{i}].max_leaf_records: must be between 1 and 1000000"
                )));
            }
            let def = t
                .def()
                .map_err(|e| spec_err(format!("star_tree[{i}].metrics: {e}")))?;
            basalt_segment::star_tree::validate(&schema, &def).map_err(|e| match e {
                basalt_segment::SegmentError::Schema { column, message } if column.is_empty() => {
                    spec_err(format!("star_tree[{i}]: {message}"))
                }
                e => spec_err(format!("star_tree[{i}]: {e}")),
            })?;
        }
        Ok(())
    }

    /// The segment schema; call only on a validated spec. The time column, primary key
    /// columns and an upsert's comparison column are never null.
    pub fn segment_schema(&self) -> SegmentSchema {
        let comparison = self
            .upsert
            .as_ref()
            .and_then(|u| u.comparison_column.as_deref());
        let required = |name: &str| {
            self.time_column.as_deref() == Some(name)
                || self.primary_key.iter().any(|k| k == name)
                || comparison == Some(name)
        };
        SegmentSchema {
            columns: self
                .columns
                .iter()
                .map(|c| {
                    let (ty, multi_value) = column_kind(&c.ty).expect("validated type");
                    ColumnDef {
                        name: c.name.clone(),
                        ty,
                        nullable: !required(&c.name) && c.nullable.unwrap_or(true),
                        indexes: c.index.iter().filter_map(|k| parse_index(k)).collect(),
                        multi_value,
                    }
                })
                .collect(),
            time_column: self.time_column.clone(),
            star_trees: self.star_tree.iter().filter_map(|t| t.def().ok()).collect(),
        }
    }
}

/// A spec `type`: the element type, and whether the column holds arrays (STRING_ARRAY,
/// LONG_ARRAY: multi-value columns, Pinot's `singleValueField: false`).
pub fn column_kind(s: &str) -> Option<(ColumnType, bool)> {
    match s.to_ascii_uppercase().as_str() {
        "STRING_ARRAY" => Some((ColumnType::String, true)),
        "LONG_ARRAY" => Some((ColumnType::Long, true)),
        _ => ColumnType::parse(s).map(|t| (t, false)),
    }
}

fn parse_index(s: &str) -> Option<IndexKind> {
    IndexKind::ALL
        .into_iter()
        .find(|k| k.name().eq_ignore_ascii_case(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const EVENTS: &str = r#"{"name":"events",
 "time_column":"ts",
 "columns":[
   {"name":"event_id","type":"STRING"},
   {"name":"ts","type":"TIMESTAMP"},
   {"name":"user_id","type":"STRING","index":["inverted"]},
   {"name":"session_id","type":"STRING"},
   {"name":"event_type","type":"STRING","index":["inverted"]},
   {"name":"country","type":"STRING","index":["inverted"]},
   {"name":"device","type":"STRING","index":["inverted"]},
   {"name":"os","type":"STRING"},
   {"name":"app_version","type":"STRING"},
   {"name":"url","type":"STRING","index":["inverted"]},
   {"name":"revenue","type":"DOUBLE"},
   {"name":"latency_ms","type":"DOUBLE","index":["range"]},
   {"name":"is_bot","type":"BOOLEAN"}],
 "segment":{"max_rows":1000000}}"#;

    #[test]
    fn accepts_the_events_spec() {
        let s = TableSpec::from_json(EVENTS.as_bytes()).unwrap();
        assert_eq!(s.columns.len(), 13);
        assert_eq!(
            s.segment_schema().columns[2].indexes,
            vec![IndexKind::Inverted]
        );
    }

    fn err(json: &str) -> String {
        TableSpec::from_json(json.as_bytes())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn accepts_the_real_time_additions_as_written() {
        let rt = EVENTS.replace(
            "\"segment\":{\"max_rows\":1000000}}",
            r#""source":{"kafka":{"brokers":"127.0.0.1:9092","topic":"events","format":"json",
            "start":"earliest","properties":{"session.timeout.ms":"6000"}}},
 "segment":{"max_rows":1000000,"max_age":"10m","max_bytes":"256MB"},
 "deep_store":"s3://basalt/segments"}"#,
        );
        let s = TableSpec::from_json(rt.as_bytes()).unwrap();
        let k = s.source.as_ref().unwrap().kafka.as_ref().unwrap();
        assert_eq!(k.properties["session.timeout.ms"], "6000");
        assert_eq!(s.max_bytes().unwrap(), Some(256 << 20));
        assert_eq!(
            parse_duration(s.segment.max_age.as_deref().unwrap()).unwrap(),
            std::time::Duration::from_secs(600)
        );
        // Round trip: what GET returns parses to the same spec.
        let back = TableSpec::from_json(&serde_json::to_vec(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        for (from, to, field) in [
            ("\"10m\"", "\"10 minutes\"", "segment.max_age"),
            ("\"256MB\"", "\"lots\"", "segment.max_bytes"),
            ("\"earliest\"", "\"yesterday\"", "source.kafka.start"),
            (
                "\"format\":\"json\"",
                "\"format\":\"avro\"",
                "source.kafka.format",
            ),
            ("s3://basalt/segments", "ftp://x", "deep_store"),
            (
                "\"session.timeout.ms\"",
                "\"enable.auto.commit\"",
                "source.kafka.properties.enable.auto.commit",
            ),
            ("\"brokers\"", "\"brokerz\"", "brokerz"),
        ] {
            let e = err(&rt.replace(from, to));
            assert!(e.contains(field), "{from} -> {to}: {e}");
        }
        assert_eq!(parse_bytes("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_duration("500ms").unwrap().as_millis(), 500);
        assert!(matches!(
            parse_duration("0s"),
            Err(UnitError::OutOfRange { .. })
        ));
        assert!(matches!(parse_duration("5"), Err(UnitError::NoUnit { .. })));
        assert!(matches!(
            parse_duration("s"),
            Err(UnitError::NotANumber { .. })
        ));
        assert!(matches!(
            parse_bytes("3 parsecs"),
            Err(UnitError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_bytes("99999999TB"),
            Err(UnitError::OutOfRange { .. })
        ));
    }

    /// A table without a time column is a dimension table: its segments have no time
    /// range; upsert needs a comparison column then, and dedup (ordered by time) is refused.
    #[test]
    fn the_time_column_is_optional() {
        let dim = TableSpec::from_json(
            br#"{"name":"nation","columns":[{"name":"n_nationkey","type":"LONG"},
                 {"name":"n_name","type":"STRING"}]}"#,
        )
        .unwrap();
        assert_eq!(dim.time_column, None);
        assert_eq!(dim.segment_schema().time_column, None);
        assert!(!serde_json::to_string(&dim).unwrap().contains("time_column"));
        let upsert = r#"{"name":"dim","columns":[{"name":"k","type":"LONG"},
            {"name":"v","type":"LONG"}],"primary_key":["k"],"upsert":{"mode":"FULL"}}"#;
        let e = err(upsert);
        assert!(e.contains("upsert.comparison_column"), "{e}");
        TableSpec::from_json(
            upsert
                .replace(
                    r#""mode":"FULL""#,
                    r#""mode":"FULL","comparison_column":"v""#,
                )
                .as_bytes(),
        )
        .unwrap();
        let e = err(r#"{"name":"dim","columns":[{"name":"k","type":"LONG"}],
            "primary_key":["k"],"dedup":{"enabled":true}}"#);
        assert!(e.contains("time_column"), "{e}");
    }

    #[test]
    fn errors_name_the_field() {
        let e = err(&EVENTS.replace("\"os\",\"type\":\"STRING\"", "\"os\",\"type\":\"STRNG\""));
        assert!(e.contains("columns[7].type") && e.contains("STRNG"), "{e}");
        let e = err(&EVENTS.replace("\"range\"", "\"ranged\""));
        assert!(e.contains("columns[11].index[0]"), "{e}");
        let e = err(&EVENTS.replace("\"time_column\":\"ts\"", "\"time_column\":\"tz\""));
        assert!(e.contains("time_column"), "{e}");
        let e = err(&EVENTS.replace("\"time_column\":\"ts\"", "\"time_column\":\"os\""));
        assert!(e.contains("TIMESTAMP, DATE or LONG"), "{e}");
        let e = err(&EVENTS.replace("\"segment\"", "\"segmnt\""));
        assert!(e.contains("unknown field `segmnt`"), "{e}");
        let e = err(&EVENTS.replace("{\"max_rows\":1000000}", "{\"max_rows\":1000000,\"x\":1}"));
        assert!(e.contains("unknown field `x`"), "{e}");
        let e = err("{\"name\":\"t\",\"time_column\":\"ts\",\"columns\":[{\"name\":\"ts\"}]}");
        assert!(e.contains("missing field `type`"), "{e}");
    }
}
