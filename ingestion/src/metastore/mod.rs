//! The metastore: what is published. In: table creations and drops, and publishes of sealed
//! segments together with the source checkpoint deltas they cover. Out: per table a
//! versioned [`TableState`] (spec, segments, checkpoints) that every reader agrees on.
//!
//! Every change is a compare-and-swap on the table's version: [`Metastore::commit`] succeeds
//! only if the table is still at the version the writer read, so several processes can write
//! one metastore and none loses another's publish. [`publish`] adds segments and advances
//! checkpoints in one commit, and refuses a delta `(from, to]` that does not start where the
//! partition's checkpoint ends — the no-loss, no-duplicate rule of real-time ingestion.
//!
//! A table's incarnation has a `generation`: a writer names the generation it loaded, so a
//! table dropped and created again never takes a stale writer's commit. A drop commits a
//! tombstone first (the table is gone for every reader from that commit on), then its
//! objects are deleted and the tombstone marked purged; a crash in between is finished at
//! the next start ([`drop_table`]). The real-time consumer of a table holds an `owner` lease
//! with an epoch ([`lease`]): at most one server consumes it, and a publish that names an
//! older epoch is refused, fencing a stale owner.
//!
//! [`ObjectStoreMetastore`] keeps one immutable object per version,
//! `_metastore/tables/<table>/<version:020>.json`, written with a create-only conditional put
//! (`If-None-Match: *` on S3, an exclusive hard link on a local directory): the writer that
//! creates version N+1 first wins, the other gets [`IngestError::Conflict`]. The
//! [`contract`] module is the test suite any implementation must pass.
//!
//! Besides tables, the metastore keeps named documents ([`Metastore::get_document`]): state
//! that belongs to no table (the semantic layer's models), versioned and compare-and-swapped
//! the same way, under `_metastore/documents/<name>/<version:020>.json`.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tracing::debug;

use crate::error::{IngestError, Result};
use crate::spec::TableSpec;

pub mod contract;
pub mod lease;
mod objects;

pub use lease::Lease;
pub use objects::ObjectStoreMetastore;

/// Version of the [`TableState`] JSON layout (1 was the single-file manifest; 3 added the
/// generation, tombstones and the consumer lease; 2 is read as generation "").
pub const TABLE_STATE_VERSION: u32 = 3;

/// A sealed segment as the metastore records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentMeta {
    pub id: String,
    /// Object path in the deep store.
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
    pub time_range: Option<(i64, i64)>,
    /// A real-time segment: the partition and offsets its seal covered (with its
    /// quarantine segment, if any). A cluster server answers for a partition's rows past a
    /// broker's checkpoint by chaining these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<CheckpointDelta>,
}

/// A dropped table's tombstone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dropped {
    /// When the drop was committed (epoch ms).
    pub at_ms: i64,
    /// Whether the dropped incarnation's objects were all deleted.
    pub purged: bool,
}

/// Everything published about one table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableState {
    pub version: u32,
    pub spec: TableSpec,
    /// This incarnation of the table (a random id given at creation). Its objects live
    /// under `<kind>/<table>/<generation>/`; empty for tables created before format 3, whose
    /// objects live directly under `<kind>/<table>/`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub generation: String,
    pub segments: Vec<SegmentMeta>,
    /// Per source partition: the next offset to consume; every earlier offset is in
    /// `segments` (or was quarantined).
    #[serde(default)]
    pub checkpoints: BTreeMap<i32, i64>,
    /// Segments of quarantined messages (`<table>$quarantine`), published with the
    /// checkpoints that cover them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quarantine: Vec<SegmentMeta>,
    /// Upsert and dedup tables: per partition, the object holding its keyed snapshot (valid
    /// docs and tombstones of its segments) as of its checkpoint.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub keyed_snapshots: BTreeMap<i32, String>,
    /// Set once the table is dropped: the state is a tombstone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped: Option<Dropped>,
    /// The server consuming the table's stream, and its fencing epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Lease>,
    /// The warehouse tier: the time boundary and the Iceberg snapshot below it (tables
    /// with a `warehouse` block, once a tiering run committed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warehouse: Option<crate::warehouse::WarehouseState>,
}

impl TableState {
    /// A new incarnation of the table, with a fresh generation.
    pub fn new(spec: TableSpec) -> Self {
        TableState {
            version: TABLE_STATE_VERSION,
            spec,
            generation: uuid::Uuid::new_v4().simple().to_string()[..12].to_string(),
            segments: Vec::new(),
            checkpoints: BTreeMap::new(),
            quarantine: Vec::new(),
            keyed_snapshots: BTreeMap::new(),
            dropped: None,
            owner: None,
            warehouse: None,
        }
    }

    pub fn is_dropped(&self) -> bool {
        self.dropped.is_some()
    }

    /// Reads a persisted state (`what` names it in errors): formats 2 and 3 (format 2 reads
    /// as format 3 with the legacy, empty, generation); anything else is an error.
    pub fn decode(bytes: &[u8], what: &str) -> Result<TableState> {
        let value: TableState = serde_json::from_slice(bytes)
            .map_err(|e| IngestError::Metastore(format!("{what}: {e}")))?;
        if value.version != TABLE_STATE_VERSION && value.version != 2 {
            return Err(IngestError::Metastore(format!(
                "{what}: table state version {} is not supported",
                value.version
            )));
        }
        Ok(value)
    }
}

/// Offsets `(from, to]` of one partition consumed into the segments being published, as
/// "next offset to consume" positions: `from` is the checkpoint the consumer started at
/// (`None` when the partition had none), `to` the one it reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointDelta {
    pub partition: i32,
    pub from: Option<i64>,
    pub to: i64,
}

/// A value and the metastore version it was read at.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    pub version: u64,
    pub value: T,
}

#[async_trait]
pub trait Metastore: Send + Sync + std::fmt::Debug {
    /// Tables that exist (not dropped), sorted.
    async fn list_tables(&self) -> Result<Vec<String>>;
    /// Names that have any state, a dropped table's tombstone included, sorted.
    async fn list_all(&self) -> Result<Vec<String>>;
    /// The latest state of a table — a tombstone if it was dropped — or `None` when it never
    /// existed.
    async fn get(&self, table: &str) -> Result<Option<Versioned<TableState>>>;
    /// Creates a table in one conditional write: at version 1, or after a tombstone;
    /// [`IngestError::TableExists`] if a live table has the name (or another create won).
    async fn create(&self, state: &TableState) -> Result<u64>;
    /// Replaces the state if the table is still at `expected`, returning the new version;
    /// [`IngestError::Conflict`] when another writer committed first.
    async fn commit(&self, table: &str, expected: u64, next: &TableState) -> Result<u64>;
    /// The latest version of the named document, or `None` before its first write. Names
    /// are `[a-z0-9_-]{1,64}`.
    async fn get_document(&self, name: &str) -> Result<Option<Versioned<bytes::Bytes>>>;
    /// Writes version `expected + 1` of the named document (`expected` 0: its first) if it
    /// is still at `expected`, returning the new version; [`IngestError::Conflict`] when
    /// another writer committed first.
    async fn put_document(&self, name: &str, expected: u64, body: Vec<u8>) -> Result<u64>;
}

/// Checks a document name: `[a-z0-9_-]{1,64}` (it becomes an object path).
pub fn check_document_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(IngestError::Metastore(format!(
            "document name {name:?} is not [a-z0-9_-]{{1,64}}"
        )))
    }
}

/// The live state of `table` of incarnation `generation`: `NoSuchTable` if it is dropped or
/// gone, [`IngestError::Fenced`] if it is another incarnation.
pub async fn live(
    ms: &dyn Metastore,
    table: &str,
    generation: &str,
) -> Result<Versioned<TableState>> {
    let cur = ms
        .get(table)
        .await?
        .filter(|s| !s.value.is_dropped())
        .ok_or_else(|| IngestError::NoSuchTable(table.into()))?;
    if cur.value.generation != generation {
        return Err(IngestError::Fenced {
            table: table.into(),
            reason: format!(
                "the table was dropped and created again (generation {} is gone, {} is current)",
                display_generation(generation),
                display_generation(&cur.value.generation)
            ),
        });
    }
    Ok(cur)
}

fn display_generation(g: &str) -> &str {
    if g.is_empty() {
        "legacy"
    } else {
        g
    }
}

/// Commits `change` of the live state of `table`/`generation`, re-reading and retrying when
/// another writer committed first; `change` may refuse (its error is returned).
pub async fn update(
    ms: &dyn Metastore,
    table: &str,
    generation: &str,
    mut change: impl FnMut(&mut TableState) -> Result<()>,
) -> Result<Versioned<TableState>> {
    const ATTEMPTS: usize = 16;
    for attempt in 1..=ATTEMPTS {
        let cur = live(ms, table, generation).await?;
        let mut next = cur.value.clone();
        change(&mut next)?;
        match ms.commit(table, cur.version, &next).await {
            Ok(version) => {
                return Ok(Versioned {
                    version,
                    value: next,
                })
            }
            Err(IngestError::Conflict { .. }) if attempt < ATTEMPTS => {
                debug!(table, attempt, "metastore conflict; retrying");
            }
            Err(e) => return Err(e),
        }
    }
    unreachable!("the last attempt returns")
}

/// Drops `table`/`generation` by committing its tombstone (the table is gone for every
/// reader from here on). Returns the tombstone: the objects it lists, and every unpublished
/// one of its generation, are the caller's to delete before [`mark_purged`].
pub async fn drop_table(ms: &dyn Metastore, table: &str, generation: &str) -> Result<TableState> {
    let now = chrono::Utc::now().timestamp_millis();
    let v = update(ms, table, generation, |s| {
        s.dropped = Some(Dropped {
            at_ms: now,
            purged: false,
        });
        s.owner = None;
        Ok(())
    })
    .await?;
    Ok(v.value)
}

/// Records that a dropped incarnation's objects are deleted (a later start has nothing to
/// finish). A newer incarnation or an already purged tombstone is left alone.
pub async fn mark_purged(ms: &dyn Metastore, table: &str, generation: &str) -> Result<()> {
    let Some(cur) = ms.get(table).await? else {
        return Ok(());
    };
    let mut next = cur.value.clone();
    match next.dropped.as_mut() {
        Some(d) if !d.purged && cur.value.generation == generation => d.purged = true,
        _ => return Ok(()),
    }
    match ms.commit(table, cur.version, &next).await {
        Ok(_) | Err(IngestError::Conflict { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Applies checkpoint deltas, refusing any that does not start at the current checkpoint or
/// goes backwards.
pub fn apply_deltas(
    table: &str,
    checkpoints: &mut BTreeMap<i32, i64>,
    deltas: &[CheckpointDelta],
) -> Result<()> {
    for d in deltas {
        let current = checkpoints.get(&d.partition).copied();
        if current != d.from || d.from.is_some_and(|f| d.to < f) {
            return Err(IngestError::CheckpointMismatch {
                table: table.into(),
                partition: d.partition,
                checkpoint: current,
                from: d.from,
                to: d.to,
            });
        }
        checkpoints.insert(d.partition, d.to);
    }
    Ok(())
}

/// What one publish adds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Publish<'a> {
    /// The incarnation the writer loaded; another one refuses the publish.
    pub generation: &'a str,
    /// The consumer lease the writer holds (real-time seals); a publish naming another
    /// owner or an older epoch is refused.
    pub lease: Option<&'a Lease>,
    pub segments: &'a [SegmentMeta],
    pub quarantine: &'a [SegmentMeta],
    pub deltas: &'a [CheckpointDelta],
    /// Keyed snapshots replacing the partitions' previous ones.
    pub snapshots: &'a [(i32, String)],
}

/// Publishes segments and quarantine segments and advances checkpoints by the deltas in one
/// commit. A concurrent change by another writer is re-read and retried; a checkpoint
/// mismatch, another incarnation or a lost lease is not.
pub async fn publish(
    ms: &dyn Metastore,
    table: &str,
    change: Publish<'_>,
) -> Result<Versioned<TableState>> {
    let Publish {
        generation,
        lease,
        segments,
        quarantine,
        deltas,
        snapshots,
    } = change;
    update(ms, table, generation, |next| {
        if let Some(l) = lease {
            lease::check(table, next.owner.as_ref(), l)?;
        }
        apply_deltas(table, &mut next.checkpoints, deltas)?;
        next.segments.extend(segments.iter().cloned());
        next.quarantine.extend(quarantine.iter().cloned());
        next.keyed_snapshots.extend(snapshots.iter().cloned());
        Ok(())
    })
    .await
}

/// Commits a tiering run: the segments named by `moved` leave the table and `warehouse`
/// becomes its warehouse state, in one commit. Refused (a [`IngestError::Tiering`]) when a
/// named segment is no longer listed — another writer moved or dropped it — or when the
/// state's boundary would go backwards.
pub async fn tier(
    ms: &dyn Metastore,
    table: &str,
    generation: &str,
    moved: &[String],
    warehouse: &crate::warehouse::WarehouseState,
) -> Result<Versioned<TableState>> {
    update(ms, table, generation, |next| {
        if let Some(missing) = moved
            .iter()
            .find(|id| !next.segments.iter().any(|s| &s.id == *id))
        {
            return Err(IngestError::Tiering(format!(
                "segment {missing} is no longer in the table"
            )));
        }
        if let Some(cur) = &next.warehouse {
            if warehouse.boundary < cur.boundary {
                return Err(IngestError::Tiering(format!(
                    "the boundary would move back from {} to {}",
                    cur.boundary, warehouse.boundary
                )));
            }
        }
        next.segments.retain(|s| !moved.contains(&s.id));
        next.warehouse = Some(warehouse.clone());
        Ok(())
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use object_store::local::LocalFileSystem;
    use object_store::path::Path as ObjPath;
    use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn local_directory_meets_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        let ms = ObjectStoreMetastore::open(store).await.unwrap();
        contract::run(Arc::new(ms)).await;
    }

    #[tokio::test]
    async fn a_purged_drop_leaves_only_its_tombstone() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> =
            Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        let ms = ObjectStoreMetastore::open(store.clone()).await.unwrap();
        let spec: crate::spec::TableSpec = serde_json::from_value(serde_json::json!({
            "name": "gone", "time_column": "ts", "columns": [{"name": "ts", "type": "TIMESTAMP"}]
        }))
        .unwrap();
        ms.create(&TableState::new(spec)).await.unwrap();
        let g = ms.get("gone").await.unwrap().unwrap().value.generation;
        for _ in 0..3 {
            update(&ms, "gone", &g, |_| Ok(())).await.unwrap();
        }
        drop_table(&ms, "gone", &g).await.unwrap();
        let versions = || async {
            let left: Vec<_> = futures::TryStreamExt::try_collect::<Vec<_>>(
                store.list(Some(&ObjPath::from("_metastore/tables/gone"))),
            )
            .await
            .unwrap();
            left.len()
        };
        assert_eq!(versions().await, 5, "history is kept until the purge");
        mark_purged(&ms, "gone", &g).await.unwrap();
        assert_eq!(versions().await, 1);
        let tomb = ms.get("gone").await.unwrap().unwrap();
        assert_eq!(tomb.version, 6, "version numbers go on after the tombstone");
        assert!(tomb.value.dropped.is_some_and(|d| d.purged));
    }

    #[tokio::test]
    async fn format_1_manifests_are_converted() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> =
            Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        let v1 = serde_json::json!({
            "version": 1,
            "spec": {"name": "old", "time_column": "ts",
                     "columns": [{"name": "ts", "type": "TIMESTAMP"}]},
            "segments": [{"id": "a", "path": "segments/old/a.seg", "rows": 5, "bytes": 50,
                          "time_range": [1, 2]}]
        });
        store
            .put(
                &ObjPath::from("_metastore/tables/old.json"),
                PutPayload::from(serde_json::to_vec(&v1).unwrap()),
            )
            .await
            .unwrap();
        let ms = ObjectStoreMetastore::open(store.clone()).await.unwrap();
        let state = ms.get("old").await.unwrap().unwrap();
        assert_eq!(state.version, 1);
        assert_eq!(state.value.segments.len(), 1);
        assert_eq!(ms.list_tables().await.unwrap(), ["old"]);
        assert!(store
            .head(&ObjPath::from("_metastore/tables/old.json"))
            .await
            .is_err());
    }

    #[tokio::test]
    async fn format_2_states_read_as_the_legacy_generation() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> =
            Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        let v2 = serde_json::json!({
            "version": 2,
            "spec": {"name": "old", "time_column": "ts",
                     "columns": [{"name": "ts", "type": "TIMESTAMP"}]},
            "segments": [{"id": "a", "path": "segments/old/a.seg", "rows": 5, "bytes": 50,
                          "time_range": [1, 2]}],
            "checkpoints": {"0": 17}
        });
        store
            .put(
                &ObjPath::from("_metastore/tables/old/00000000000000000004.json"),
                PutPayload::from(serde_json::to_vec(&v2).unwrap()),
            )
            .await
            .unwrap();
        let ms = ObjectStoreMetastore::open(store).await.unwrap();
        let s = ms.get("old").await.unwrap().unwrap();
        assert_eq!((s.version, s.value.generation.as_str()), (4, ""));
        assert_eq!(s.value.checkpoints.get(&0), Some(&17));
        assert!(!s.value.is_dropped() && s.value.owner.is_none());
        // The legacy incarnation publishes as before.
        publish(
            &ms,
            "old",
            Publish {
                generation: "",
                ..Default::default()
            },
        )
        .await
        .unwrap();
    }
}
