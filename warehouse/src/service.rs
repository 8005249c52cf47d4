//! The warehouse tier of one process. In: the table store and the clock. Out: tiering runs
//! every interval for each table with a `warehouse` block (this process must own the
//! table's writes: `standalone`), the DataFusion table spanning both tiers for queries, what
//! `GET /tables/{name}` shows, and Prometheus counters.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use basalt_ingest::store::{Table, TableStore};
use basalt_ingest::warehouse::WarehouseState;
use basalt_ingest::TableSpec;
use basalt_query::scan::ScanStats;
use datafusion::datasource::TableProvider;
use prometheus::{IntCounterVec, IntGaugeVec, Opts};
use tracing::warn;

use crate::catalog::Catalogs;
use crate::table::{ColdSide, FederatedTable};
use crate::tier::{tier_table, TierLimits, TierRun};

/// Prometheus metrics of tiering.
#[derive(Debug, Clone)]
pub struct TierMetrics {
    pub segments: IntCounterVec,
    pub rows: IntCounterVec,
    pub bytes: IntCounterVec,
    pub errors: IntCounterVec,
    pub boundary: IntGaugeVec,
}

impl TierMetrics {
    fn new() -> Self {
        let counter = |name: &str, help: &str| {
            IntCounterVec::new(Opts::new(name, help), &["table"]).expect("valid metric")
        };
        TierMetrics {
            segments: counter(
                "basalt_warehouse_tiered_segments_total",
                "Segments moved to the warehouse tier",
            ),
            rows: counter(
                "basalt_warehouse_tiered_rows_total",
                "Rows moved to the warehouse tier",
            ),
            bytes: counter(
                "basalt_warehouse_tiered_bytes_total",
                "Parquet bytes written to the warehouse tier",
            ),
            errors: counter(
                "basalt_warehouse_tiering_errors_total",
                "Tiering runs that failed (retried at the next interval)",
            ),
            boundary: IntGaugeVec::new(
                Opts::new(
                    "basalt_warehouse_boundary",
                    "The warehouse boundary (the time column's stored value)",
                ),
                &["table"],
            )
            .expect("valid metric"),
        }
    }

    /// Counts a run.
    pub fn record(&self, table: &str, run: &TierRun) {
        self.segments
            .with_label_values(&[table])
            .inc_by(run.segments as u64);
        self.rows.with_label_values(&[table]).inc_by(run.rows);
        self.bytes
            .with_label_values(&[table])
            .inc_by(run.data_bytes);
        self.boundary.with_label_values(&[table]).set(run.boundary);
    }

    /// The collectors, for a registry.
    pub fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.segments.clone()),
            Box::new(self.rows.clone()),
            Box::new(self.bytes.clone()),
            Box::new(self.errors.clone()),
            Box::new(self.boundary.clone()),
        ]
    }
}

/// The warehouse tier of a process.
#[derive(Debug)]
pub struct Warehouse {
    pub catalogs: Arc<Catalogs>,
    pub metrics: TierMetrics,
    pub limits: TierLimits,
    /// One tiering run per table at a time (the interval's and `POST .../tier`'s).
    runs: parking_lot::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Default for Warehouse {
    fn default() -> Self {
        Warehouse {
            catalogs: Arc::new(Catalogs::default()),
            metrics: TierMetrics::new(),
            limits: TierLimits::default(),
            runs: Default::default(),
        }
    }
}

impl Warehouse {
    /// The table a query of `t` reads: `hot` alone until the table has tiered rows, then
    /// both tiers as of `state` (which must come from the same view as `hot`); for a table
    /// over an Iceberg table, that table's current snapshot.
    pub fn provider(
        &self,
        t: &Table,
        hot: Arc<dyn TableProvider>,
        state: Option<Arc<WarehouseState>>,
        stats: Arc<ScanStats>,
    ) -> Arc<dyn TableProvider> {
        if let Some(r) = t.spec.iceberg_source() {
            return Arc::new(FederatedTable::new(
                None,
                ColdSide {
                    catalogs: self.catalogs.clone(),
                    iceberg: r.clone(),
                    state: None,
                },
                t.schema.clone(),
                stats,
            ));
        }
        match (&t.spec.warehouse, state) {
            (Some(w), Some(state)) => Arc::new(FederatedTable::new(
                Some(hot),
                ColdSide {
                    catalogs: self.catalogs.clone(),
                    iceberg: w.iceberg.clone(),
                    state: Some(state),
                },
                t.schema.clone(),
                stats,
            )),
            _ => hot,
        }
    }

    /// A table over an Iceberg table (`source.iceberg`) with its columns left out gets
    /// them from the Iceberg schema; other specs are returned as they are. The spec must
    /// have passed the operator's policy (this opens the catalog it names).
    pub async fn complete_spec(&self, mut spec: TableSpec) -> crate::Result<TableSpec> {
        let Some(r) = spec.iceberg_source().cloned() else {
            return Ok(spec);
        };
        let table = self.catalogs.load(&r).await?.ok_or_else(|| {
            crate::WarehouseError::Invalid(format!(
                "source.iceberg: table {}.{} does not exist in the catalog",
                r.namespace, r.table
            ))
        })?;
        let columns = crate::schema::columns_of(table.metadata().current_schema())?;
        if spec.columns.is_empty() {
            spec.columns = columns;
        } else if let Some(c) = spec
            .columns
            .iter()
            .find(|c| !columns.iter().any(|i| i.name == c.name))
        {
            return Err(crate::WarehouseError::Invalid(format!(
                "columns: {:?} is not a column of Iceberg table {}.{}",
                c.name, r.namespace, r.table
            )));
        }
        Ok(spec)
    }

    /// One tiering run of `t` (one at a time per table), counted in the metrics.
    pub async fn tier_one(
        &self,
        store: &TableStore,
        t: &Arc<Table>,
        now_ms: i64,
    ) -> crate::Result<Option<TierRun>> {
        let name = &t.spec.name;
        let lock = self.runs.lock().entry(name.clone()).or_default().clone();
        let _run = lock.lock().await;
        let r = tier_table(store, &self.catalogs, t, now_ms, self.limits).await;
        match &r {
            Ok(Some(run)) => self.metrics.record(name, run),
            Ok(None) => {}
            Err(_) => self.metrics.errors.with_label_values(&[name]).inc(),
        }
        r
    }

    /// One tiering run over every table with a warehouse block.
    pub async fn tier_all(&self, store: &TableStore, now_ms: i64) -> Vec<(String, TierRun)> {
        let mut done = Vec::new();
        for name in store.table_names() {
            let Some(t) = store.table(&name) else {
                continue;
            };
            if t.spec.warehouse.is_none() {
                continue;
            }
            match self.tier_one(store, &t, now_ms).await {
                Ok(Some(run)) => done.push((name, run)),
                Ok(None) => {}
                Err(e) => {
                    warn!(table = %name, error = %e, "tiering run failed; retrying at the next interval")
                }
            }
        }
        done
    }

    /// Runs [`Warehouse::tier_all`] every `every` until the store shuts down.
    pub fn spawn_tiering(self: &Arc<Self>, store: Arc<TableStore>, every: Duration) {
        let w = self.clone();
        tokio::spawn(async move {
            // The first pass one interval after the start, not at once.
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                // Keep going while tables keep tiering (a backlog goes in several runs).
                while !w
                    .tier_all(&store, chrono::Utc::now().timestamp_millis())
                    .await
                    .is_empty()
                {}
            }
        });
    }
}

/// What `GET /tables/{name}` shows of a table's warehouse tier.
pub fn describe(t: &Table) -> Option<serde_json::Value> {
    let w = t.spec.warehouse.as_ref()?;
    let state = t.view().warehouse.clone();
    Some(serde_json::json!({
        "iceberg": {
            "catalog": w.iceberg.catalog.kind,
            "namespace": w.iceberg.namespace,
            "table": w.iceberg.table,
        },
        "tier_after": w.tier_after,
        "boundary": state.as_ref().map(|s| s.boundary),
        "snapshot_id": state.as_ref().map(|s| s.snapshot_id),
        "segments": state.as_ref().map_or(0, |s| s.segments),
        "rows": state.as_ref().map_or(0, |s| s.rows),
        "segment_bytes": state.as_ref().map_or(0, |s| s.segment_bytes),
        "data_files": state.as_ref().map_or(0, |s| s.data_files),
        "data_bytes": state.as_ref().map_or(0, |s| s.data_bytes),
    }))
}
