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
//! [`ObjectStoreMetastore`] keeps one immutable object per version,
//! `_metastore/tables/<table>/<version:020>.json`, written with a create-only conditional put
//! (`If-None-Match: *` on S3, an exclusive hard link on a local directory): the writer that
//! creates version N+1 first wins, the other gets [`IngestError::Conflict`]. The
//! [`contract`] module is the test suite any implementation must pass.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use futures::TryStreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::error::{IngestError, Result};
use crate::spec::TableSpec;

/// Version of the [`TableState`] JSON layout (1 was the single-file manifest).
pub const TABLE_STATE_VERSION: u32 = 2;

/// Versions kept behind the latest (older ones are deleted after a commit).
const KEEP_VERSIONS: u64 = 8;

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
}

/// Everything published about one table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableState {
    pub version: u32,
    pub spec: TableSpec,
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
}

impl TableState {
    pub fn new(spec: TableSpec) -> Self {
        TableState {
            version: TABLE_STATE_VERSION,
            spec,
            segments: Vec::new(),
            checkpoints: BTreeMap::new(),
            quarantine: Vec::new(),
            keyed_snapshots: BTreeMap::new(),
        }
    }
}

/// Offsets `(from, to]` of one partition consumed into the segments being published, as
/// "next offset to consume" positions: `from` is the checkpoint the consumer started at
/// (`None` when the partition had none), `to` the one it reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    /// Tables that exist, sorted.
    async fn list_tables(&self) -> Result<Vec<String>>;
    /// The latest state of a table, or `None` when it does not exist.
    async fn get(&self, table: &str) -> Result<Option<Versioned<TableState>>>;
    /// Creates a table at version 1; [`IngestError::TableExists`] if it exists.
    async fn create(&self, state: &TableState) -> Result<u64>;
    /// Replaces the state if the table is still at `expected`, returning the new version;
    /// [`IngestError::Conflict`] when another writer committed first.
    async fn commit(&self, table: &str, expected: u64, next: &TableState) -> Result<u64>;
    /// Removes the table's state.
    async fn drop_table(&self, table: &str) -> Result<()>;
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
    pub segments: &'a [SegmentMeta],
    pub quarantine: &'a [SegmentMeta],
    pub deltas: &'a [CheckpointDelta],
    /// Keyed snapshots replacing the partitions' previous ones.
    pub snapshots: &'a [(i32, String)],
}

/// Publishes segments and quarantine segments and advances checkpoints by the deltas in one
/// commit. A concurrent change by another writer is re-read and retried; a checkpoint
/// mismatch is not.
pub async fn publish(
    ms: &dyn Metastore,
    table: &str,
    change: Publish<'_>,
) -> Result<Versioned<TableState>> {
    let Publish {
        segments,
        quarantine,
        deltas,
        snapshots,
    } = change;
    const ATTEMPTS: usize = 16;
    for attempt in 1..=ATTEMPTS {
        let cur = ms
            .get(table)
            .await?
            .ok_or_else(|| IngestError::NoSuchTable(table.into()))?;
        let mut next = cur.value.clone();
        apply_deltas(table, &mut next.checkpoints, deltas)?;
        next.segments.extend(segments.iter().cloned());
        next.quarantine.extend(quarantine.iter().cloned());
        next.keyed_snapshots.extend(snapshots.iter().cloned());
        match ms.commit(table, cur.version, &next).await {
            Ok(version) => {
                return Ok(Versioned {
                    version,
                    value: next,
                })
            }
            Err(IngestError::Conflict { .. }) if attempt < ATTEMPTS => {
                debug!(table, attempt, "metastore conflict; retrying publish");
            }
            Err(e) => return Err(e),
        }
    }
    unreachable!("the last attempt returns")
}

/// [`Metastore`] on any object store with create-only conditional puts.
#[derive(Debug)]
pub struct ObjectStoreMetastore {
    store: Arc<dyn ObjectStore>,
}

const ROOT: &str = "_metastore/tables";

fn table_prefix(table: &str) -> ObjPath {
    ObjPath::from(format!("{ROOT}/{table}"))
}

fn version_path(table: &str, version: u64) -> ObjPath {
    ObjPath::from(format!("{ROOT}/{table}/{version:020}.json"))
}

fn parse_version(p: &ObjPath) -> Option<u64> {
    p.filename()?.strip_suffix(".json")?.parse().ok()
}

impl ObjectStoreMetastore {
    /// Opens the metastore in `store`, converting single-file manifests of format 1
    /// (`_metastore/tables/<table>.json`) to versioned state.
    pub async fn open(store: Arc<dyn ObjectStore>) -> Result<Self> {
        let ms = ObjectStoreMetastore { store };
        ms.upgrade_manifests().await?;
        Ok(ms)
    }

    async fn upgrade_manifests(&self) -> Result<()> {
        let listing = self
            .store
            .list_with_delimiter(Some(&ObjPath::from(ROOT)))
            .await?;
        for o in listing.objects {
            let Some(name) = o
                .location
                .filename()
                .and_then(|f| f.strip_suffix(".json"))
                .map(str::to_string)
            else {
                continue;
            };
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct ManifestV1 {
                version: u32,
                spec: TableSpec,
                segments: Vec<SegmentMeta>,
            }
            let bytes = self.store.get(&o.location).await?.bytes().await?;
            let m: ManifestV1 = serde_json::from_slice(&bytes)
                .map_err(|e| IngestError::Metastore(format!("{}: {e}", o.location)))?;
            if m.version != 1 {
                return Err(IngestError::Metastore(format!(
                    "{}: manifest version {} is not supported",
                    o.location, m.version
                )));
            }
            let mut state = TableState::new(m.spec);
            state.segments = m.segments;
            match self.create(&state).await {
                Ok(_) | Err(IngestError::TableExists(_)) => {}
                Err(e) => return Err(e),
            }
            self.store.delete(&o.location).await?;
            info!(table = %name, "converted a format-1 manifest to versioned metastore state");
        }
        Ok(())
    }

    async fn versions(&self, table: &str) -> Result<Vec<u64>> {
        let objects: Vec<_> = self
            .store
            .list(Some(&table_prefix(table)))
            .try_collect()
            .await?;
        let mut v: Vec<u64> = objects
            .iter()
            .filter_map(|o| parse_version(&o.location))
            .collect();
        v.sort_unstable();
        Ok(v)
    }

    async fn put_new(&self, table: &str, version: u64, state: &TableState) -> Result<()> {
        let json =
            serde_json::to_vec_pretty(state).map_err(|e| IngestError::Metastore(e.to_string()))?;
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self
            .store
            .put_opts(&version_path(table, version), PutPayload::from(json), opts)
            .await
        {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => Err(IngestError::Conflict {
                table: table.into(),
                expected: version - 1,
            }),
            Err(e) => Err(e.into()),
        }
    }
}

#[async_trait]
impl Metastore for ObjectStoreMetastore {
    async fn list_tables(&self) -> Result<Vec<String>> {
        let listing = self
            .store
            .list_with_delimiter(Some(&ObjPath::from(ROOT)))
            .await?;
        let mut names = Vec::new();
        for p in &listing.common_prefixes {
            let Some(name) = p.filename() else { continue };
            // A local directory keeps a dropped table's empty folder.
            if !self.versions(name).await?.is_empty() {
                names.push(name.to_string());
            }
        }
        names.sort();
        Ok(names)
    }

    async fn get(&self, table: &str) -> Result<Option<Versioned<TableState>>> {
        let Some(&version) = self.versions(table).await?.last() else {
            return Ok(None);
        };
        let path = version_path(table, version);
        let bytes = match self.store.get(&path).await {
            Ok(r) => r.bytes().await?,
            // Pruned or dropped between listing and reading: the table moved on.
            Err(object_store::Error::NotFound { .. }) => return Box::pin(self.get(table)).await,
            Err(e) => return Err(e.into()),
        };
        let value: TableState = serde_json::from_slice(&bytes)
            .map_err(|e| IngestError::Metastore(format!("{path}: {e}")))?;
        if value.version != TABLE_STATE_VERSION {
            return Err(IngestError::Metastore(format!(
                "{path}: table state version {} is not supported",
                value.version
            )));
        }
        Ok(Some(Versioned { version, value }))
    }

    async fn create(&self, state: &TableState) -> Result<u64> {
        let table = &state.spec.name;
        if !self.versions(table).await?.is_empty() {
            return Err(IngestError::TableExists(table.clone()));
        }
        match self.put_new(table, 1, state).await {
            Ok(()) => Ok(1),
            Err(IngestError::Conflict { .. }) => Err(IngestError::TableExists(table.clone())),
            Err(e) => Err(e),
        }
    }

    async fn commit(&self, table: &str, expected: u64, next: &TableState) -> Result<u64> {
        let version = expected + 1;
        self.put_new(table, version, next).await?;
        // Old versions are history only; losing this cleanup is harmless.
        if version > KEEP_VERSIONS + 1 {
            for v in self.versions(table).await? {
                if v + KEEP_VERSIONS < version {
                    if let Err(e) = self.store.delete(&version_path(table, v)).await {
                        warn!(table, version = v, error = %e, "could not prune an old metastore version");
                    }
                }
            }
        }
        Ok(version)
    }

    async fn drop_table(&self, table: &str) -> Result<()> {
        let versions = self.versions(table).await?;
        if versions.is_empty() {
            return Err(IngestError::NoSuchTable(table.into()));
        }
        for v in versions {
            match self.store.delete(&version_path(table, v)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// The contract every [`Metastore`] must meet, as one async test run against a fresh, empty
/// metastore (tables named `contract_*`).
pub mod contract {
    use super::*;

    fn spec(name: &str) -> TableSpec {
        serde_json::from_value(serde_json::json!({
            "name": name,
            "time_column": "ts",
            "columns": [{"name": "ts", "type": "TIMESTAMP"}, {"name": "v", "type": "LONG"}]
        }))
        .expect("valid spec")
    }

    fn segment(id: &str) -> SegmentMeta {
        SegmentMeta {
            id: id.into(),
            path: format!("segments/contract/{id}.seg"),
            rows: 10,
            bytes: 100,
            time_range: Some((1, 2)),
        }
    }

    /// Runs every check; panics with a message naming the first broken rule.
    pub async fn run(ms: Arc<dyn Metastore>) {
        let t = "contract_a";
        assert!(
            ms.get(t).await.unwrap().is_none(),
            "unknown table reads as None"
        );
        let v1 = ms.create(&TableState::new(spec(t))).await.unwrap();
        assert!(
            matches!(
                ms.create(&TableState::new(spec(t))).await,
                Err(IngestError::TableExists(_))
            ),
            "creating twice is TableExists"
        );
        assert!(ms.list_tables().await.unwrap().contains(&t.to_string()));
        let cur = ms.get(t).await.unwrap().expect("created table reads back");
        assert_eq!(cur.version, v1);
        assert!(cur.value.segments.is_empty());

        // Compare-and-swap: the second writer of the same version loses.
        let mut next = cur.value.clone();
        next.segments.push(segment("s1"));
        let v2 = ms.commit(t, v1, &next).await.unwrap();
        assert!(v2 > v1);
        assert!(
            matches!(
                ms.commit(t, v1, &next).await,
                Err(IngestError::Conflict { .. })
            ),
            "a commit at a stale version is a Conflict"
        );
        assert_eq!(ms.get(t).await.unwrap().unwrap().value, next);

        // Checkpoints: a delta must start where the last one ended.
        let d = |from, to| CheckpointDelta {
            partition: 0,
            from,
            to,
        };
        fn pub_<'a>(segments: &'a [SegmentMeta], deltas: &'a [CheckpointDelta]) -> Publish<'a> {
            Publish {
                segments,
                quarantine: &[],
                deltas,
                snapshots: &[],
            }
        }
        publish(&*ms, t, pub_(&[segment("s2")], &[d(None, 10)]))
            .await
            .unwrap();
        publish(&*ms, t, pub_(&[segment("s3")], &[d(Some(10), 25)]))
            .await
            .unwrap();
        for bad in [d(None, 30), d(Some(9), 30), d(Some(25), 20)] {
            assert!(
                matches!(
                    publish(&*ms, t, pub_(&[segment("bad")], &[bad])).await,
                    Err(IngestError::CheckpointMismatch { .. })
                ),
                "delta {bad:?} after checkpoint 25 is refused"
            );
        }
        let state = ms.get(t).await.unwrap().unwrap().value;
        assert_eq!(state.checkpoints.get(&0), Some(&25));
        let ids: Vec<&str> = state.segments.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["s1", "s2", "s3"], "refused publishes add nothing");

        // Concurrent publishers: every publish lands exactly once.
        let writers = 8;
        let mut handles = Vec::new();
        for w in 0..writers {
            let ms = ms.clone();
            handles.push(tokio::spawn(async move {
                let delta = CheckpointDelta {
                    partition: 100 + w,
                    from: None,
                    to: 1,
                };
                publish(&*ms, t, pub_(&[segment(&format!("w{w}"))], &[delta])).await
            }));
        }
        for h in handles {
            h.await.unwrap().unwrap();
        }
        let state = ms.get(t).await.unwrap().unwrap().value;
        for w in 0..writers {
            let id = format!("w{w}");
            assert_eq!(
                state.segments.iter().filter(|s| s.id == id).count(),
                1,
                "concurrent publish {id} lands once"
            );
            assert_eq!(state.checkpoints.get(&(100 + w)), Some(&1));
        }

        // Many commits: the latest state is always the one read back.
        let mut cur = ms.get(t).await.unwrap().unwrap();
        for i in 0..20 {
            cur.value.segments.push(segment(&format!("m{i}")));
            cur.version = ms.commit(t, cur.version, &cur.value).await.unwrap();
        }
        assert_eq!(ms.get(t).await.unwrap().unwrap(), cur);

        ms.drop_table(t).await.unwrap();
        assert!(
            ms.get(t).await.unwrap().is_none(),
            "dropped table reads as None"
        );
        assert!(!ms.list_tables().await.unwrap().contains(&t.to_string()));
        assert!(matches!(
            ms.drop_table(t).await,
            Err(IngestError::NoSuchTable(_))
        ));
        // A dropped name can be created again, from scratch.
        ms.create(&TableState::new(spec(t))).await.unwrap();
        assert!(ms.get(t).await.unwrap().unwrap().value.segments.is_empty());
        ms.drop_table(t).await.unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::local::LocalFileSystem;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn local_directory_meets_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        let ms = ObjectStoreMetastore::open(store).await.unwrap();
        contract::run(Arc::new(ms)).await;
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
}
