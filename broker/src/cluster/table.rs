//! [`ClusterTable`]: DataFusion's view of a table whose segments live on servers. In: the
//! table's published segments and stream checkpoints as of planning (one metastore view,
//! fixed for the query) and the servers consuming its stream partitions.
//! Out: a [`RemoteScanExec`] carrying the pushed filters, projection and limit, and what
//! [`super::ScatterExec`] needs to route it.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::datatypes::{Schema, SchemaRef};
use async_trait::async_trait;
use basalt_cluster::wire::StreamRange;
use basalt_cluster::Member;
use basalt_ingest::metastore::SegmentMeta;
use basalt_ingest::upsert::KeyedTable;
use basalt_ingest::Table;
use basalt_query::filter::to_predicate;
use basalt_query::fragment::{RemoteScanExec, ScanSpec};
use basalt_query::scan::ScanStats;
use datafusion::catalog::Session;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;

use super::Cluster;

/// What a scan's scatter routes: fixed when the query is planned.
#[derive(Debug)]
pub(super) struct ScanRoute {
    pub cluster: Arc<Cluster>,
    pub table: String,
    pub segments: Arc<Vec<SegmentMeta>>,
    /// A real-time table: each stream partition's rows past the checkpoint of the same
    /// metastore state as `segments`, read from the partition's consumer.
    pub streams: Vec<StreamRange>,
    /// The table, for reading the metastore again when a consumer is ahead of `segments`.
    pub source: Arc<Table>,
    /// The table's replication factor (where its segments belong).
    pub replication: usize,
    pub stats: Arc<ScanStats>,
}

#[derive(Debug)]
pub struct ClusterTable {
    table: Arc<Table>,
    segments: Arc<Vec<SegmentMeta>>,
    streams: Vec<StreamRange>,
    arrow_schema: SchemaRef,
    cluster: Arc<Cluster>,
    stats: Arc<ScanStats>,
}

impl ClusterTable {
    pub fn new(table: Arc<Table>, cluster: Arc<Cluster>, stats: Arc<ScanStats>) -> Self {
        let view = table.view();
        let mut segments = view.published.clone();
        let mut streams = match table.spec.is_realtime() {
            true => streams(&table.spec.name, &view.checkpoints, &cluster.servers()),
            false => Vec::new(),
        };
        // An upsert table's real-time partitions are read whole from their consumers (see
        // `StreamRange::whole`), not segment by segment.
        if table.spec.is_realtime() && KeyedTable::of(&table.spec).is_some_and(|k| k.is_upsert()) {
            for s in &mut streams {
                s.whole = true;
            }
            segments = Arc::new(
                segments
                    .iter()
                    .filter(|s| s.stream.is_none())
                    .cloned()
                    .collect(),
            );
        }
        ClusterTable {
            arrow_schema: table.schema.arrow_schema(),
            table,
            segments,
            streams,
            cluster,
            stats,
        }
    }
}

/// The stream partitions of `table` to read past `checkpoints`: those with a checkpoint and
/// those a server announces consuming (a partition not sealed yet has no checkpoint).
pub(super) fn streams(
    table: &str,
    checkpoints: &BTreeMap<i32, i64>,
    servers: &[Member],
) -> Vec<StreamRange> {
    let mut partitions: BTreeSet<i32> = checkpoints.keys().copied().collect();
    for m in servers {
        if let Some(c) = m.consuming.get(table) {
            partitions.extend(c.keys());
        }
    }
    partitions
        .into_iter()
        .map(|partition| StreamRange {
            partition,
            after: checkpoints.get(&partition).copied(),
            whole: false,
        })
        .collect()
}

#[async_trait]
impl TableProvider for ClusterTable {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema(&self) -> SchemaRef {
        self.arrow_schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(basalt_query::filter::pushdown(filters, &self.table.schema))
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let pushed: Vec<Expr> = filters
            .iter()
            .filter(|f| to_predicate(f, &self.table.schema).is_some())
            .cloned()
            .collect();
        let projection = projection
            .cloned()
            .unwrap_or_else(|| (0..self.arrow_schema.fields().len()).collect());
        let fields = projection
            .iter()
            .map(|&i| {
                self.arrow_schema.fields().get(i).cloned().ok_or_else(|| {
                    DataFusionError::Plan(format!("projection index {i} out of range"))
                })
            })
            .collect::<DfResult<Vec<_>>>()?;
        let spec = ScanSpec {
            table: self.table.spec.name.clone(),
            projection,
            filters: pushed,
            limit,
            segments: Vec::new(),
        };
        let route = ScanRoute {
            cluster: self.cluster.clone(),
            table: self.table.spec.name.clone(),
            segments: self.segments.clone(),
            streams: self.streams.clone(),
            source: self.table.clone(),
            replication: self.table.spec.replication(),
            stats: self.stats.clone(),
        };
        // At least two partitions, so DataFusion splits aggregates into partial and final
        // stages (the cut the scatter rule makes).
        let partitions = state.config().target_partitions().max(2);
        let rows: u64 = self.segments.iter().map(|s| s.rows).sum();
        let mut scan = RemoteScanExec::new(
            spec,
            Arc::new(Schema::new(fields)),
            partitions,
            Arc::new(route),
        );
        scan.rows = Some(rows as usize);
        Ok(Arc::new(scan))
    }
}
