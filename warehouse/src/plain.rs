//! Iceberg's Arrow fields carry their field ids as metadata (`PARQUET:field_id`); the
//! table's logical schema has none, and DataFusion refuses a plan whose physical schema
//! differs from the logical one even by metadata. In: a plan. Out: the same batches under
//! its schema with the field metadata dropped.

use std::any::Any;
use std::sync::Arc;

use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::error::Result as DfResult;
use datafusion::execution::TaskContext;
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
    SendableRecordBatchStream,
};
use futures::StreamExt;

/// `input` with its fields' metadata dropped.
#[derive(Debug)]
pub struct PlainSchemaExec {
    input: Arc<dyn ExecutionPlan>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl PlainSchemaExec {
    pub fn new(input: Arc<dyn ExecutionPlan>) -> Self {
        let fields: Vec<Field> = input
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_metadata(Default::default()))
            .collect();
        let schema = Arc::new(Schema::new(fields));
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            input.output_partitioning().clone(),
            input.pipeline_behavior(),
            input.boundedness(),
        ));
        PlainSchemaExec {
            input,
            schema,
            properties,
        }
    }
}

impl DisplayAs for PlainSchemaExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "PlainSchemaExec")
    }
}

impl ExecutionPlan for PlainSchemaExec {
    fn name(&self) -> &str {
        "PlainSchemaExec"
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        match children.len() {
            1 => Ok(Arc::new(PlainSchemaExec::new(children.remove(0)))),
            n => Err(datafusion::error::DataFusionError::Internal(format!(
                "PlainSchemaExec takes one child, got {n}"
            ))),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let schema = self.schema.clone();
        let out = schema.clone();
        let stream = self.input.execute(partition, context)?.map(move |b| {
            let b = b?;
            // A batch of no columns (`count(*)`) keeps its row count.
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
