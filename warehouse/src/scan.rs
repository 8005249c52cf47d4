//! The Iceberg side of a query, spread over DataFusion partitions. In: the data files a scan
//! of the table planned (after partition, manifest and statistics pruning), the columns to
//! read and the pushed predicate. Out: a leaf [`ExecutionPlan`] whose partitions each read a
//! share of the files (balanced by bytes) through iceberg's Arrow reader — row-group pruning
//! and row filtering by the predicate included — as plain Arrow batches (no field-id
//! metadata, so the plan's physical schema equals the logical one).
//!
//! iceberg-datafusion's own scan is one partition: every file decoded on one thread.

use std::any::Any;
use std::sync::Arc;

use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{EquivalenceProperties, Partitioning};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, SendableRecordBatchStream,
};
use futures::{StreamExt, TryStreamExt};
use iceberg::arrow::ArrowReaderBuilder;
use iceberg::expr::Predicate;
use iceberg::io::FileIO;
use iceberg::scan::FileScanTask;
use iceberg::table::Table;

/// An Iceberg error as DataFusion carries it.
pub(crate) fn ext(e: iceberg::Error) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// Plans the data files of `table` at `snapshot_id` holding rows `predicate` may keep, with
/// `columns` projected.
pub async fn plan(
    table: &Table,
    snapshot_id: i64,
    columns: &[String],
    predicate: Option<Predicate>,
) -> DfResult<Vec<FileScanTask>> {
    let mut b = table
        .scan()
        .snapshot_id(snapshot_id)
        .select(columns.iter().cloned())
        .with_row_selection_enabled(true);
    if let Some(p) = predicate {
        b = b.with_filter(p);
    }
    b.build()
        .map_err(ext)?
        .plan_files()
        .await
        .map_err(ext)?
        .try_collect()
        .await
        .map_err(ext)
}

/// `items` spread over at most `partitions` groups (one per item at most, at least one):
/// the largest first, each to the group with the fewest bytes so far.
pub(crate) fn balance<T>(
    mut items: Vec<T>,
    partitions: usize,
    bytes: impl Fn(&T) -> u64,
) -> Vec<Vec<T>> {
    let n = partitions.clamp(1, items.len().max(1));
    items.sort_by_key(|t| std::cmp::Reverse(bytes(t)));
    let mut groups: Vec<(u64, Vec<T>)> = (0..n).map(|_| (0, Vec::new())).collect();
    for t in items {
        let b = bytes(&t);
        if let Some(g) = groups.iter_mut().min_by_key(|(sum, _)| *sum) {
            g.0 += b;
            g.1.push(t);
        }
    }
    groups.into_iter().map(|(_, g)| g).collect()
}

/// Reads planned Iceberg data files, a share of them per partition.
#[derive(Debug)]
pub struct IcebergFilesExec {
    file_io: FileIO,
    groups: Vec<Vec<FileScanTask>>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl IcebergFilesExec {
    /// `schema`: the projected columns as the files hold them (Iceberg's Arrow types);
    /// `partitions`: at most this many (one per file at most, at least one).
    pub fn new(
        file_io: FileIO,
        tasks: Vec<FileScanTask>,
        schema: SchemaRef,
        partitions: usize,
    ) -> Self {
        let groups = balance(tasks, partitions, |t| t.length);
        let n = groups.len();
        let schema = Arc::new(Schema::new(
            schema
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_metadata(Default::default()))
                .collect::<Vec<_>>(),
        ));
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(n),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        IcebergFilesExec {
            file_io,
            groups,
            schema,
            properties,
        }
    }

    /// Data files the scan reads.
    pub fn files(&self) -> usize {
        self.groups.iter().map(Vec::len).sum()
    }
}

impl DisplayAs for IcebergFilesExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "IcebergFilesExec: files={}, partitions={}",
            self.files(),
            self.groups.len()
        )
    }
}

impl ExecutionPlan for IcebergFilesExec {
    fn name(&self) -> &str {
        "IcebergFilesExec"
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        match children.is_empty() {
            true => Ok(self),
            false => Err(DataFusionError::Internal(
                "IcebergFilesExec has no children".into(),
            )),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let tasks = self.groups.get(partition).cloned().unwrap_or_default();
        let runtime = iceberg::Runtime::try_current().map_err(ext)?;
        let reader = ArrowReaderBuilder::new(self.file_io.clone(), runtime)
            .with_data_file_concurrency_limit(1)
            .with_row_group_filtering_enabled(true)
            .with_row_selection_enabled(true)
            .with_batch_size(context.session_config().batch_size())
            .build();
        let tasks = futures::stream::iter(tasks.into_iter().map(Ok)).boxed();
        let schema = self.schema.clone();
        let out = schema.clone();
        let stream = futures::stream::once(async move { reader.read(tasks).map(|r| r.stream()) })
            .map_err(ext)
            .and_then(|s| async move { Ok(s.map_err(ext)) })
            .try_flatten()
            .map(move |b| {
                let b = b?;
                // The reader's fields carry their Iceberg field ids; these do not.
                let rows = RecordBatchOptions::new().with_row_count(Some(b.num_rows()));
                Ok(RecordBatch::try_new_with_options(
                    out.clone(),
                    b.columns().to_vec(),
                    &rows,
                )?)
            });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}
