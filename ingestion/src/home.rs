//! A table's home: the deep store its segments live in and the metastore that records them,
//! always the same object store. In: a deep store URL (`None`: the server's data dir,
//! `file://` or `s3://bucket/prefix`). Out: an opened [`Home`] with segment paths, staging
//! uploads and segment opening (memory-mapped in place for a local store, downloaded to the
//! local cache for S3).
//!
//! Because the metastore lives next to the segments, a home is self-describing: a server
//! with an empty data dir that is given the same deep store finds every segment and
//! checkpoint there. The local disk is only a cache: a cached copy that fails its checksums
//! is fetched again.
//!
//! A table's objects live under its generation (`segments/<table>/<generation>/...`; tables
//! from before format 3 directly under `segments/<table>/`), so dropping one incarnation
//! never touches another's. A staged object is named after the node that wrote it: at a
//! start, a node deletes its own unpublished leftovers at once, and another node's only once
//! they are older than [`UNPUBLISHED_GRACE`] (that node may still be about to publish them).
//! Local writes are durable when they return ([`crate::durable`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use basalt_segment::SegmentReader;
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tracing::{debug, warn};

use crate::durable::{write_file_durably, DurableFs};
use crate::error::{IngestError, Result};
use crate::metastore::{Metastore, ObjectStoreMetastore, SegmentMeta, TableState};

/// Unpublished objects of another node are left alone this long: it may still publish them.
pub const UNPUBLISHED_GRACE: std::time::Duration = std::time::Duration::from_secs(3600);

/// The tag in a staged object's name that says which node wrote it.
pub fn node_tag(node: &str) -> String {
    format!("__n{node}")
}

/// Which of a table's object sets an object belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentKind {
    /// The table's rows.
    Rows,
    /// Quarantined messages (`<table>$quarantine`).
    Quarantine,
    /// Keyed snapshots of upsert and dedup tables (not segments).
    KeyedSnapshot,
}

impl SegmentKind {
    const ALL: [SegmentKind; 3] = [
        SegmentKind::Rows,
        SegmentKind::Quarantine,
        SegmentKind::KeyedSnapshot,
    ];

    /// Where a table incarnation's objects of this kind live (`generation` empty: a table
    /// from before format 3, directly under the table's prefix).
    pub fn prefix(self, table: &str, generation: &str) -> ObjPath {
        let kind = match self {
            SegmentKind::Rows => "segments",
            SegmentKind::Quarantine => "quarantine",
            SegmentKind::KeyedSnapshot => "keyed",
        };
        if generation.is_empty() {
            ObjPath::from(format!("{kind}/{table}"))
        } else {
            ObjPath::from(format!("{kind}/{table}/{generation}"))
        }
    }
}

#[derive(Debug)]
pub struct Home {
    /// The URL this home was opened from (`None`: the data dir default).
    pub url: Option<String>,
    pub store: Arc<dyn ObjectStore>,
    pub metastore: Arc<dyn Metastore>,
    object_metastore: Arc<ObjectStoreMetastore>,
    /// Set when the deep store is a local directory: segments are memory-mapped in place.
    local_root: Option<PathBuf>,
    cache_dir: PathBuf,
}

/// Opens the object store named by `url` (None: a local directory under `data_dir`).
pub fn open_deep_store(
    data_dir: &Path,
    url: Option<&str>,
) -> Result<(Arc<dyn ObjectStore>, Option<PathBuf>)> {
    match url {
        None => {
            let root = data_dir.join("deepstore");
            std::fs::create_dir_all(&root)?;
            Ok((Arc::new(DurableFs::new(&root)?), Some(root)))
        }
        Some(u) if u.starts_with("file://") => {
            let root = PathBuf::from(&u["file://".len()..]);
            std::fs::create_dir_all(&root)?;
            Ok((Arc::new(DurableFs::new(&root)?), Some(root)))
        }
        Some(u) if u.starts_with("s3://") => {
            let parsed =
                url::Url::parse(u).map_err(|e| IngestError::DeepStore(u.into(), e.to_string()))?;
            let bucket = parsed
                .host_str()
                .ok_or_else(|| IngestError::DeepStore(u.into(), "no bucket".into()))?;
            let mut b = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
            let endpoint = std::env::var("AWS_ENDPOINT")
                .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
                .ok();
            if let Some(ep) = endpoint {
                if ep.starts_with("http://") {
                    b = b.with_allow_http(true);
                }
                b = b.with_endpoint(ep).with_virtual_hosted_style_request(false);
            }
            if std::env::var("AWS_REGION").is_err() && std::env::var("AWS_DEFAULT_REGION").is_err()
            {
                b = b.with_region("us-east-1");
            }
            let s3 = b
                .build()
                .map_err(|e| IngestError::DeepStore(u.into(), e.to_string()))?;
            let prefix = parsed.path().trim_matches('/').to_string();
            let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
                Arc::new(s3)
            } else {
                Arc::new(object_store::prefix::PrefixStore::new(s3, prefix))
            };
            Ok((store, None))
        }
        Some(u) => Err(IngestError::DeepStore(
            u.into(),
            "expected file:// or s3://".into(),
        )),
    }
}

/// Opens a segment file memory-mapped.
pub(crate) fn map_segment(file: &Path) -> Result<SegmentReader> {
    let f = std::fs::File::open(file)?;
    // SAFETY: segment files are written once, before they are mapped, and never modified.
    let map = unsafe { memmap2::Mmap::map(&f)? };
    Ok(SegmentReader::open(Bytes::from_owner(map))?)
}

impl Home {
    /// The home at `url` with its metastore; `cache_dir` holds downloaded segments. Nothing
    /// is read yet (the store may be unreachable now): see [`Home::prepare`].
    pub fn open(data_dir: &Path, url: Option<&str>, cache_dir: PathBuf) -> Result<Home> {
        let (store, local_root) = open_deep_store(data_dir, url)?;
        let object_metastore = Arc::new(ObjectStoreMetastore::new(store.clone()));
        Ok(Home {
            url: url.map(str::to_string),
            store,
            metastore: object_metastore.clone(),
            object_metastore,
            local_root,
            cache_dir,
        })
    }

    /// Converts old metastore layouts (idempotent); the first thing done once the store
    /// answers.
    pub async fn prepare(&self) -> Result<()> {
        self.object_metastore.upgrade_manifests().await
    }

    pub fn describe(&self) -> String {
        self.url.clone().unwrap_or_else(|| self.store.to_string())
    }

    fn cached_path(&self, table: &str, id: &str) -> PathBuf {
        self.cache_dir.join(table).join(format!("{id}.seg"))
    }

    /// Opens a published segment: memory-mapped in place for a local deep store, otherwise
    /// from the local cache, fetched from the deep store when it is missing or fails its
    /// checksums (a copy truncated or damaged by a crash is fetched again).
    pub async fn open_segment(&self, table: &str, s: &SegmentMeta) -> Result<Arc<SegmentReader>> {
        if let Some(root) = &self.local_root {
            return Ok(Arc::new(map_segment(&root.join(&s.path))?));
        }
        let cached = self.cached_path(table, &s.id);
        if cached.exists() {
            let checked = map_segment(&cached).and_then(|r| {
                r.verify()?;
                Ok(r)
            });
            match checked {
                Ok(r) => return Ok(Arc::new(r)),
                Err(e) => {
                    warn!(path = %cached.display(), error = %e, "a cached segment failed its checks; fetching it again");
                    let _ = std::fs::remove_file(&cached);
                }
            }
        }
        let bytes = self
            .store
            .get(&ObjPath::from(s.path.as_str()))
            .await?
            .bytes()
            .await?;
        write_cache_file(&cached, &bytes)?;
        let r = map_segment(&cached)?;
        r.verify()?;
        Ok(Arc::new(r))
    }

    /// Uploads a built segment (unpublished) and opens it from the stored copy (local) or
    /// the cache (S3), so staged segments do not stay on the heap.
    pub async fn stage(
        &self,
        table: &str,
        generation: &str,
        kind: SegmentKind,
        id: String,
        bytes: Bytes,
    ) -> Result<(SegmentMeta, Arc<SegmentReader>)> {
        let path = format!("{}/{id}.seg", kind.prefix(table, generation));
        let size = bytes.len() as u64;
        self.store
            .put(
                &ObjPath::from(path.as_str()),
                PutPayload::from(bytes.clone()),
            )
            .await?;
        let file = match &self.local_root {
            Some(root) => root.join(&path),
            None => {
                let cached = self.cached_path(table, &id);
                write_cache_file(&cached, &bytes)?;
                cached
            }
        };
        drop(bytes);
        let reader = map_segment(&file)?;
        let meta = SegmentMeta {
            id,
            path,
            rows: reader.row_count() as u64,
            bytes: size,
            time_range: reader.footer().time_range,
            stream: None,
        };
        Ok((meta, Arc::new(reader)))
    }

    /// Removes the local cache file of a segment this node no longer holds (moved to other
    /// servers). Queries still reading it keep their mapping; a local deep store has no
    /// cache.
    pub fn evict(&self, table: &str, id: &str) {
        if self.local_root.is_some() {
            return;
        }
        let cached = self.cached_path(table, id);
        match std::fs::remove_file(&cached) {
            Ok(()) => {
                debug!(path = %cached.display(), "evicted a segment this node no longer holds")
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                warn!(path = %cached.display(), error = %e, "could not evict a cached segment")
            }
        }
    }

    /// Deletes staged segments that were never published (best effort; the rest go at the
    /// next start).
    pub async fn delete_staged(&self, table: &str, staged: &[SegmentMeta]) {
        for s in staged {
            if let Err(e) = self.store.delete(&ObjPath::from(s.path.as_str())).await {
                warn!(path = %s.path, error = %e, "could not delete a staged segment; it is removed at next start");
            }
            let _ = std::fs::remove_file(self.cached_path(table, &s.id));
        }
    }

    /// Writes a small object (a keyed snapshot).
    pub async fn put_object(&self, path: &str, bytes: Vec<u8>) -> Result<()> {
        self.store
            .put(&ObjPath::from(path), PutPayload::from(bytes))
            .await?;
        Ok(())
    }

    pub async fn get_object(&self, path: &str) -> Result<Bytes> {
        Ok(self.store.get(&ObjPath::from(path)).await?.bytes().await?)
    }

    /// Reads and decodes a keyed snapshot object (upsert and dedup tables).
    pub async fn read_keyed_snapshot(
        &self,
        path: &str,
    ) -> Result<Vec<crate::upsert::SlotSnapshot>> {
        let keyed =
            |e: String| crate::error::IngestError::Keyed(format!("keyed snapshot {path}: {e}"));
        let bytes = self
            .get_object(path)
            .await
            .map_err(|e| keyed(e.to_string()))?;
        crate::upsert::snapshot::decode(&bytes).map_err(|e| keyed(e.to_string()))
    }

    /// Deletes an object, logging failure (what is left is removed at the next start).
    pub async fn delete_object(&self, path: &str) {
        if let Err(e) = self.store.delete(&ObjPath::from(path)).await {
            warn!(path, error = %e, "could not delete an object; it is removed at next start");
        }
    }

    /// The objects of kind `kind` of a table incarnation: under its generation's prefix, or
    /// for a legacy incarnation directly under the table's prefix (not in another
    /// generation's folder).
    async fn objects_of(
        &self,
        table: &str,
        generation: &str,
        kind: SegmentKind,
    ) -> Result<Vec<object_store::ObjectMeta>> {
        let prefix = kind.prefix(table, generation);
        if generation.is_empty() {
            Ok(self.store.list_with_delimiter(Some(&prefix)).await?.objects)
        } else {
            Ok(self.store.list(Some(&prefix)).try_collect().await?)
        }
    }

    /// Deletes objects of the table's incarnation that `state` does not list (left by a
    /// crashed ingest or seal): at once when `node` wrote them (its previous run), after
    /// [`UNPUBLISHED_GRACE`] when another node did (it may be about to publish them).
    pub async fn cleanup_unpublished(&self, state: &TableState, node: &str) -> Result<()> {
        let known: std::collections::HashSet<&str> = state
            .segments
            .iter()
            .chain(&state.quarantine)
            .map(|s| s.path.as_str())
            .chain(state.keyed_snapshots.values().map(|p| p.as_str()))
            .collect();
        let mine = node_tag(node);
        let cutoff = chrono::Utc::now()
            - chrono::Duration::from_std(UNPUBLISHED_GRACE).unwrap_or(chrono::Duration::zero());
        for kind in SegmentKind::ALL {
            for o in self
                .objects_of(&state.spec.name, &state.generation, kind)
                .await?
            {
                let path = o.location.as_ref();
                if known.contains(path) {
                    continue;
                }
                if path.contains(&mine) || o.last_modified < cutoff {
                    warn!(path = %o.location, "deleting an unpublished object left by an earlier run");
                    self.store.delete(&o.location).await?;
                }
            }
            // A local put killed half-way leaves a `<name>#<n>` file no listing shows.
            if let Some(root) = &self.local_root {
                let dir = root.join(kind.prefix(&state.spec.name, &state.generation).as_ref());
                for (file, modified) in crate::durable::interrupted_uploads(&dir)? {
                    // A legacy incarnation owns only the files directly in its folder.
                    if state.generation.is_empty() && file.parent() != Some(dir.as_path()) {
                        continue;
                    }
                    let old = chrono::DateTime::<chrono::Utc>::from(modified) < cutoff;
                    if file.to_string_lossy().contains(&mine) || old {
                        warn!(path = %file.display(), "deleting an interrupted upload left by an earlier run");
                        std::fs::remove_file(&file)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Deletes every object of a dropped incarnation: those its tombstone lists and any
    /// unpublished one under its generation. Objects of other incarnations stay.
    pub async fn delete_incarnation(&self, tomb: &TableState) -> Result<()> {
        let table = &tomb.spec.name;
        let listed = tomb
            .segments
            .iter()
            .chain(&tomb.quarantine)
            .map(|s| s.path.clone())
            .chain(tomb.keyed_snapshots.values().cloned());
        for path in listed {
            match self.store.delete(&ObjPath::from(path.as_str())).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        for kind in SegmentKind::ALL {
            for o in self.objects_of(table, &tomb.generation, kind).await? {
                match self.store.delete(&o.location).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        for s in tomb.segments.iter().chain(&tomb.quarantine) {
            let _ = std::fs::remove_file(self.cached_path(table, &s.id));
        }
        Ok(())
    }
}

fn write_cache_file(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(write_file_durably(path, bytes)?)
}
