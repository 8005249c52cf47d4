//! Publishing segments into a table: one metastore commit for staged segments, quarantine
//! segments, checkpoint deltas and keyed snapshots, then one swap of the table's view. In: what
//! a batch ingest or a real-time seal staged. Out: the table's new view; on failure nothing
//! visible changed.

use std::sync::Arc;

use basalt_segment::RoaringBitmap;
use tracing::{info, warn};

use super::{LoadedSegment, Table, TableStore, ValidDocs};
use crate::error::{IngestError, Result};
use crate::home::Home;
use crate::metastore::{self, CheckpointDelta, Publish, SegmentMeta, TableState};
use crate::mutable::MutablePart;
use crate::upsert::KeyedTable;

/// What one [`TableStore::publish`] commits and swaps into the view.
#[derive(Default)]
pub(crate) struct PublishChange<'a> {
    pub staged: &'a [Arc<LoadedSegment>],
    pub staged_quarantine: &'a [Arc<LoadedSegment>],
    pub deltas: &'a [CheckpointDelta],
    /// Keyed snapshot objects replacing the partitions' previous ones.
    pub snapshots: &'a [(i32, String)],
    /// The mutable part the staged segments hold the rows of.
    pub retire: Option<&'a Arc<MutablePart>>,
    /// Valid docs to install with the staged segments (a batch ingest into an upsert
    /// table).
    pub valid: Vec<(String, Arc<RoaringBitmap>)>,
    /// The consumer lease a real-time seal publishes under (fenced if lost).
    pub lease: Option<&'a metastore::Lease>,
}

impl TableStore {
    /// Publishes staged segments, quarantine segments, checkpoint deltas and keyed
    /// snapshots in one metastore commit, then swaps the view: the new segments in, the
    /// `retire`d mutable segment (whose rows they hold) out, in one step. An upsert table's
    /// valid docs need no change: they are kept by segment id, which the part already had.
    pub(crate) async fn publish(&self, t: &Table, change: PublishChange<'_>) -> Result<()> {
        let PublishChange {
            staged,
            staged_quarantine,
            deltas,
            snapshots,
            retire,
            valid,
            lease,
        } = change;
        if staged.is_empty() && staged_quarantine.is_empty() && deltas.is_empty() {
            return Ok(());
        }
        let _g = t.publish.lock().await;
        if self
            .table(&t.spec.name)
            .is_none_or(|cur| !std::ptr::eq(cur.as_ref(), t))
        {
            return Err(IngestError::NoSuchTable(t.spec.name.clone()));
        }
        let metas: Vec<SegmentMeta> = staged.iter().map(|s| s.meta.clone()).collect();
        let qmetas: Vec<SegmentMeta> = staged_quarantine.iter().map(|s| s.meta.clone()).collect();
        let state = metastore::publish(
            t.home.metastore.as_ref(),
            &t.spec.name,
            Publish {
                generation: &t.generation,
                lease,
                segments: &metas,
                quarantine: &qmetas,
                deltas,
                snapshots,
            },
        )
        .await?;
        crate::fault::hit("publish.after_commit");
        // The published lists may hold other writers' segments too: open those.
        // The commit is done: from here on nothing may fail the publish (the caller would
        // delete segments that are published). A segment of another writer that cannot be
        // opened now is left out of the view and logged.
        let cur = t.view();
        let mut known = cur.segments.clone();
        known.extend(staged.iter().cloned());
        // What this node built counts as held (a cluster server keeps a segment it sealed
        // until the replicas placed for it have loaded it).
        let placed = self.placed(&t.spec, &state.value.segments, &known);
        let segments = load_published(t, &placed, known).await;
        let mut known_q = cur.quarantine.clone();
        known_q.extend(staged_quarantine.iter().cloned());
        let quarantine = load_published(t, &state.value.quarantine, known_q).await;
        t.change_view(|v| {
            v.mutable
                .retain(|p| retire.is_none_or(|r| !Arc::ptr_eq(p, r)));
            v.segments = segments;
            v.published = Arc::new(state.value.segments.clone());
            v.warehouse = state.value.warehouse.clone().map(Arc::new);
            v.checkpoints = Arc::new(state.value.checkpoints.clone());
            v.quarantine = quarantine;
            if !valid.is_empty() {
                let mut docs = v.valid.as_deref().cloned().unwrap_or_default();
                docs.extend(valid);
                v.valid = Some(Arc::new(docs));
            }
        });
        info!(table = %t.spec.name, segments = staged.len(), quarantine_segments = staged_quarantine.len(), rows = staged.iter().map(|s| s.meta.rows).sum::<u64>(), "published segments");
        Ok(())
    }
}

impl TableStore {
    /// Reads the table's state from the metastore and makes the view's sealed segments
    /// those it lists, under the table's publish lock (a seal publishing meanwhile is not
    /// undone by an older state). `None` when the table is gone from the metastore.
    pub(crate) async fn reload(&self, t: &Table) -> Result<Option<TableState>> {
        let _p = t.publish.lock().await;
        let Some(state) = t.home.metastore.get(&t.spec.name).await? else {
            return Ok(None);
        };
        self.refresh(t, &state.value).await?;
        Ok(Some(state.value))
    }

    /// Makes the view's sealed segments those `state` lists (a consumer taking a table over
    /// loads what the previous owner published). Fails if a listed segment cannot be opened.
    pub(crate) async fn refresh(&self, t: &Table, state: &TableState) -> Result<()> {
        let cur = t.view();
        let placed = self.placed(&t.spec, &state.segments, &cur.segments);
        let segments = load_segments(&t.home, &t.spec.name, &placed, &cur.segments).await?;
        let quarantine =
            load_segments(&t.home, &t.spec.name, &state.quarantine, &cur.quarantine).await?;
        // A table being consumed here (it has in-memory rows) keeps the valid docs its key
        // maps maintain: they are ahead of the persisted snapshots. A session starts with no
        // mutable part, takes the persisted ones and installs its own after restoring.
        let consumed = !cur.mutable.is_empty();
        let valid = match consumed {
            true => None,
            false => persisted_valid(&t.home, state).await?,
        };
        let ids =
            |l: &[Arc<LoadedSegment>]| l.iter().map(|s| s.meta.id.clone()).collect::<Vec<_>>();
        let unchanged = valid.is_none()
            && *cur.published == state.segments
            && *cur.checkpoints == state.checkpoints
            && cur.warehouse.as_deref() == state.warehouse.as_ref()
            && ids(&cur.segments) == ids(&segments)
            && ids(&cur.quarantine) == ids(&quarantine);
        if unchanged {
            // The same view stays: results cached over it stay valid.
            return Ok(());
        }
        for gone in cur
            .segments
            .iter()
            .filter(|c| !segments.iter().any(|s| s.meta.id == c.meta.id))
        {
            t.home.evict(&t.spec.name, &gone.meta.id);
        }
        t.change_view(|v| {
            v.segments = segments;
            v.published = Arc::new(state.segments.clone());
            v.warehouse = state.warehouse.clone().map(Arc::new);
            v.checkpoints = Arc::new(state.checkpoints.clone());
            v.quarantine = quarantine;
            if let Some(valid) = valid {
                let mut docs = v.valid.as_deref().cloned().unwrap_or_default();
                docs.extend(valid);
                v.valid = Some(Arc::new(docs));
            }
        });
        Ok(())
    }
}

/// An upsert table's valid docs as its keyed snapshots persisted them, so that queries
/// after a start see the sealed state at once (the key maps are rebuilt later: the
/// ingester's at its start, the batch one at the first ingest). `None` for other tables.
pub(crate) async fn persisted_valid(home: &Home, state: &TableState) -> Result<Option<ValidDocs>> {
    if !KeyedTable::of(&state.spec).is_some_and(|k| k.is_upsert()) {
        return Ok(None);
    }
    let mut valid = ValidDocs::new();
    for path in state.keyed_snapshots.values() {
        let slots = home.read_keyed_snapshot(path).await?;
        valid.extend(slots.into_iter().map(|s| (s.id, s.valid)));
    }
    Ok(Some(valid))
}

/// Readers for the published list, reusing `known` ones; those that cannot be opened are
/// logged and left out.
async fn load_published(
    t: &Table,
    listed: &[SegmentMeta],
    known: Vec<Arc<LoadedSegment>>,
) -> Vec<Arc<LoadedSegment>> {
    let mut out = Vec::with_capacity(listed.len());
    for s in listed {
        if let Some(k) = known.iter().find(|k| k.meta.id == s.id) {
            out.push(k.clone());
            continue;
        }
        match t.home.open_segment(&t.spec.name, s).await {
            Ok(reader) => out.push(Arc::new(LoadedSegment {
                meta: s.clone(),
                reader,
            })),
            Err(e) => {
                warn!(table = %t.spec.name, segment = %s.id, error = %e, "a published segment could not be opened; it is missing from queries until restart")
            }
        }
    }
    out
}

/// Readers for every segment in `listed`, reusing those in `known`.
pub(super) async fn load_segments(
    home: &Home,
    table: &str,
    listed: &[SegmentMeta],
    known: &[Arc<LoadedSegment>],
) -> Result<Vec<Arc<LoadedSegment>>> {
    let mut loaded = Vec::with_capacity(listed.len());
    for s in listed {
        if let Some(k) = known.iter().find(|k| k.meta.id == s.id) {
            loaded.push(k.clone());
            continue;
        }
        let reader = home.open_segment(table, s).await?;
        loaded.push(Arc::new(LoadedSegment {
            meta: s.clone(),
            reader,
        }));
    }
    Ok(loaded)
}
