//! [`FragmentCodec`]: datafusion-proto's extension codec for Basalt's scan leaf. In (encode):
//! a [`RemoteScanExec`]. Out: a `ScanNode` protobuf message (table, projection, filters as
//! datafusion-proto logical expressions, limit, segment ids). In (decode, on a server): that
//! message and the server's [`SegmentResolver`]. Out: a [`SegmentScanExec`] over exactly the
//! named segments the server holds; the others are collected as missing.

use std::sync::Arc;

use bytes::Bytes;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::bytes::Serializeable;
use datafusion_proto::physical_plan::PhysicalExtensionCodec;
use parking_lot::Mutex;
use prost::Message;

use super::{RemoteScanExec, SegmentResolver};
use crate::filter::to_predicate;
use crate::scan::{ScanStats, SegmentScanExec};

/// The wire form of a scan leaf.
#[derive(Clone, PartialEq, prost::Message)]
struct ScanNode {
    #[prost(string, tag = "1")]
    table: String,
    #[prost(uint32, repeated, tag = "2")]
    projection: Vec<u32>,
    /// Each filter as datafusion-proto's `LogicalExprNode` bytes.
    #[prost(bytes = "vec", repeated, tag = "3")]
    filters: Vec<Vec<u8>>,
    #[prost(uint64, optional, tag = "4")]
    limit: Option<u64>,
    #[prost(string, repeated, tag = "5")]
    segments: Vec<String>,
}

/// What a server needs to turn scan leaves into scans of its segments.
#[derive(Debug)]
struct ServerSide {
    resolver: Arc<dyn SegmentResolver>,
    stats: Arc<ScanStats>,
    target_partitions: usize,
    batch_size: usize,
    missing: Mutex<Vec<String>>,
}

/// Encodes [`RemoteScanExec`] leaves (on brokers) and decodes them into segment scans (on
/// servers).
#[derive(Debug)]
pub struct FragmentCodec {
    server: Option<ServerSide>,
}

impl FragmentCodec {
    /// A codec that only encodes.
    pub fn broker() -> Self {
        FragmentCodec { server: None }
    }

    /// A codec that decodes scan leaves over `resolver`'s segments, counting into `stats`.
    pub fn server(
        resolver: Arc<dyn SegmentResolver>,
        stats: Arc<ScanStats>,
        target_partitions: usize,
        batch_size: usize,
    ) -> Self {
        FragmentCodec {
            server: Some(ServerSide {
                resolver,
                stats,
                target_partitions,
                batch_size,
                missing: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The segment ids decoded leaves named that the server does not have.
    pub fn missing(&self) -> Vec<String> {
        self.server
            .as_ref()
            .map(|s| s.missing.lock().clone())
            .unwrap_or_default()
    }
}

fn codec_error(what: impl std::fmt::Display) -> DataFusionError {
    DataFusionError::Plan(format!("plan fragment: {what}"))
}

impl PhysicalExtensionCodec for FragmentCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let Some(side) = &self.server else {
            return Err(codec_error("this node does not run fragments"));
        };
        if !inputs.is_empty() {
            return Err(codec_error("a scan leaf has no inputs"));
        }
        let node = ScanNode::decode(buf).map_err(codec_error)?;
        let (snapshot, missing) = side
            .resolver
            .resolve(&node.table, &node.segments)
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        side.missing.lock().extend(missing);
        let mut preds = Vec::with_capacity(node.filters.len());
        for f in &node.filters {
            let expr = Expr::from_bytes_with_registry(f, ctx)?;
            let p = to_predicate(&expr, &snapshot.schema).ok_or_else(|| {
                codec_error(format!("filter {expr} cannot be evaluated on segments"))
            })?;
            preds.push(p);
        }
        let predicate = match preds.len() {
            0 => None,
            1 => preds.pop(),
            _ => Some(basalt_segment::Predicate::And(preds)),
        };
        let width = snapshot.schema.arrow_schema().fields().len();
        let projection: Vec<usize> = node.projection.iter().map(|&i| i as usize).collect();
        if let Some(bad) = projection.iter().find(|&&i| i >= width) {
            return Err(codec_error(format!(
                "column {bad} of {} does not exist",
                node.table
            )));
        }
        let scan = SegmentScanExec::new(
            Arc::new(snapshot),
            projection,
            predicate,
            node.limit.map(|l| l as usize),
            side.target_partitions,
            side.batch_size,
            side.stats.clone(),
        )?;
        Ok(Arc::new(scan))
    }

    fn try_encode(&self, node: Arc<dyn ExecutionPlan>, buf: &mut Vec<u8>) -> DfResult<()> {
        let Some(scan) = node.as_any().downcast_ref::<RemoteScanExec>() else {
            return Err(codec_error(format!(
                "{} cannot run on a server",
                node.name()
            )));
        };
        let s = &scan.spec;
        let filters = s
            .filters
            .iter()
            .map(|f| f.to_bytes().map(|b: Bytes| b.to_vec()))
            .collect::<DfResult<Vec<_>>>()?;
        ScanNode {
            table: s.table.clone(),
            projection: s.projection.iter().map(|&i| i as u32).collect(),
            filters,
            limit: s.limit.map(|l| l as u64),
            segments: s.segments.clone(),
        }
        .encode(buf)
        .map_err(codec_error)
    }
}

/// A fragment's bytes.
pub fn encode(plan: Arc<dyn ExecutionPlan>) -> DfResult<Bytes> {
    datafusion_proto::bytes::physical_plan_to_bytes_with_extension_codec(
        plan,
        &FragmentCodec::broker(),
    )
}

/// A fragment from its bytes, its scan leaves resolved by `codec`; refused unless it has the
/// [`super::shape`] of a fragment.
pub fn decode(
    bytes: &[u8],
    ctx: &TaskContext,
    codec: &FragmentCodec,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    let plan =
        datafusion_proto::bytes::physical_plan_from_bytes_with_extension_codec(bytes, ctx, codec)?;
    super::shape::check(&plan)?;
    Ok(plan)
}
