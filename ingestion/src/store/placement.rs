//! Which published segments this node loads, and whether it consumes streams. In: a
//! [`Placement`] (everything, for `standalone`; a cluster's assignment for `server` and
//! `broker` roles) and the metastore. Out: [`TableStore::sync`], which brings every table's
//! view in line with the metastore under the placement — tables created or dropped elsewhere
//! appear or go, segments published elsewhere and now placed here are loaded, segments no
//! longer placed here leave the view.
//!
//! A placement decides per segment; moving a segment safely (the new replica loads before
//! routing switches, the old one drops only after) is the placement's business: it keeps
//! answering `true` for a segment it still must serve.

use std::fmt::Debug;
use std::sync::Arc;

use tracing::{info, warn};

use super::{LoadedSegment, Table, TableStore};
use crate::metastore::SegmentMeta;
use crate::spec::TableSpec;

/// What this node holds.
pub trait Placement: Send + Sync + Debug {
    /// Whether this node loads sealed segment `segment` of `spec`'s table and answers for
    /// it; `held` says whether it holds the segment now.
    fn serves(&self, spec: &TableSpec, segment: &SegmentMeta, held: bool) -> bool;
    /// Whether this node runs an ingester for the table's stream source.
    fn consumes(&self, spec: &TableSpec) -> bool;
    /// Whether this node's ingester consumes `partition` of the table's stream. A partition
    /// assigned elsewhere is left to its owner; a change of assignment restarts the
    /// ingester's session from the metastore checkpoints.
    fn consumes_partition(&self, _spec: &TableSpec, _partition: i32) -> bool {
        true
    }
    /// Whether this node seals the partition it consumes. A partition being handed over is
    /// consumed by its old and new owner for a moment; only the new owner seals it, so the
    /// two do not race to publish the same offsets.
    fn seals_partition(&self, _spec: &TableSpec, _partition: i32) -> bool {
        true
    }
    /// Whether one consumer lease per table decides who consumes (a standby server takes
    /// over when it lapses). A cluster assigns partitions instead and relies on the
    /// checkpoints alone: a publish whose offsets do not start at the partition's
    /// checkpoint is refused, so two consumers of one partition never both publish.
    fn leases(&self) -> bool {
        true
    }
}

/// Every segment and every stream: one process does everything (`standalone`).
#[derive(Debug, Default, Clone, Copy)]
pub struct Everything;

impl Placement for Everything {
    fn serves(&self, _: &TableSpec, _: &SegmentMeta, _: bool) -> bool {
        true
    }

    fn consumes(&self, _: &TableSpec) -> bool {
        true
    }
}

impl TableStore {
    /// The segments of `listed` this node holds, given those it holds now.
    pub(crate) fn placed(
        &self,
        spec: &TableSpec,
        listed: &[SegmentMeta],
        now: &[Arc<LoadedSegment>],
    ) -> Vec<SegmentMeta> {
        listed
            .iter()
            .filter(|s| {
                let held = now.iter().any(|n| n.meta.id == s.id);
                self.placement.serves(spec, s, held)
            })
            .cloned()
            .collect()
    }

    /// Brings every table in line with its deep store's metastore and the placement (see
    /// the module header). Errors are logged; what could not be read keeps its last view.
    pub async fn sync(self: &Arc<Self>) {
        let _g = self.admin.lock().await;
        self.discover().await;
        let tables: Vec<Arc<Table>> = self.tables.read().values().cloned().collect();
        let mut gone = false;
        for t in tables {
            let name = &t.spec.name;
            // Read under the publish lock: a state read before a publish of this node's and
            // applied after it would take the published segments out of the view again.
            let _p = t.publish.lock().await;
            match t.home.metastore.get(name).await {
                Ok(Some(s)) if !s.value.is_dropped() && s.value.generation == t.generation => {
                    if let Err(e) = self.refresh(&t, &s.value).await {
                        warn!(table = %name, error = %e, "could not load the table's placed segments; keeping its current view");
                    }
                }
                Ok(_) => {
                    info!(table = %name, "table dropped or recreated elsewhere; unloading it");
                    self.unload(name);
                    gone = true;
                }
                Err(e) => {
                    warn!(table = %name, error = %e, "cannot read the table's state; keeping its current view")
                }
            }
        }
        if gone {
            // A recreated table's new incarnation.
            self.discover().await;
        }
    }

    /// Forgets a loaded table (its ingestion stopped).
    fn unload(&self, name: &str) {
        let removed = self.tables.write().remove(name);
        self.forget(name);
        if let Some(i) = removed.and_then(|t| t.realtime.lock().take()) {
            std::thread::spawn(move || i.stop());
        }
    }
}
