//! [`RemoteScanExec`]: the leaf of a broker's plan over a table whose segments live on
//! servers. In: the table's schema and the scan DataFusion asked for (projection, exact
//! filters, limit). Out: nothing by itself — a broker rule replaces the subtree above it with
//! an operator that sends it to servers; executing it directly is an error.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::common::stats::Precision;
use datafusion::common::Statistics;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};

/// What a server's scan reads.
#[derive(Debug, Clone)]
pub struct ScanSpec {
    pub table: String,
    /// Table columns in output order.
    pub projection: Vec<usize>,
    /// Filters the segment predicate answers exactly ([`crate::filter::to_predicate`]).
    pub filters: Vec<Expr>,
    pub limit: Option<usize>,
    /// The sealed segments to read (empty in the broker's plan until routed).
    pub segments: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct RemoteScanExec {
    pub spec: ScanSpec,
    /// What the broker needs to route the scan (opaque here).
    pub context: Arc<dyn Any + Send + Sync>,
    /// Rows the scanned segments hold (from the metastore), for DataFusion's join planning.
    pub rows: Option<usize>,
    schema: SchemaRef,
    props: Arc<PlanProperties>,
}

impl RemoteScanExec {
    /// `schema` is the projected output schema; `partitions` how many output partitions the
    /// broker's plan above it is built for.
    pub fn new(
        spec: ScanSpec,
        schema: SchemaRef,
        partitions: usize,
        context: Arc<dyn Any + Send + Sync>,
    ) -> Self {
        let props = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(partitions.max(1)),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        RemoteScanExec {
            spec,
            context,
            rows: None,
            schema,
            props,
        }
    }

    /// The same scan reading `segments`.
    pub fn with_segments(&self, segments: Vec<String>) -> Self {
        let mut s = self.clone();
        s.spec.segments = segments;
        s
    }
}

impl DisplayAs for RemoteScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let filters: Vec<String> = self.spec.filters.iter().map(|e| e.to_string()).collect();
        write!(
            f,
            "RemoteScanExec: table={}, projection={:?}, filters=[{}], limit={:?}",
            self.spec.table,
            self.spec.projection,
            filters.join(", "),
            self.spec.limit
        )
    }
}

impl ExecutionPlan for RemoteScanExec {
    fn name(&self) -> &str {
        "RemoteScanExec"
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        match children.is_empty() {
            true => Ok(self),
            false => Err(DataFusionError::Internal(
                "RemoteScanExec has no children".into(),
            )),
        }
    }

    fn partition_statistics(&self, partition: Option<usize>) -> DfResult<Statistics> {
        let mut stats = Statistics::new_unknown(&self.schema);
        if let (None, Some(rows)) = (partition, self.rows) {
            // A pushed filter is taken to keep a fifth, as a local scan without footers does.
            let keep = if self.spec.filters.is_empty() {
                1.0
            } else {
                0.2
            };
            let rows = (rows as f64 * keep) as usize;
            stats.num_rows = Precision::Inexact(match self.spec.limit {
                Some(l) => rows.min(l),
                None => rows,
            });
        }
        Ok(stats)
    }

    fn execute(
        &self,
        _partition: usize,
        _context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        Err(DataFusionError::Internal(format!(
            "the scan of {} must run on servers: no scatter operator took it over",
            self.spec.table
        )))
    }
}
