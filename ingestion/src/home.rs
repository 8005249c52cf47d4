//! A table's home: the deep store its segments live in and the metastore that records them,
//! always the same object store. In: a deep store URL (`None`: the server's data dir,
//! `file://` or `s3://bucket/prefix`). Out: an opened [`Home`] with segment paths, staging
//! uploads and segment opening (memory-mapped in place for a local store, downloaded to the
//! local cache for S3).
//!
//! Because the metastore lives next to the segments, a home is self-describing: a server
//! with an empty data dir that is given the same deep store finds every segment and
//! checkpoint there. The local disk is only a cache.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use basalt_segment::SegmentReader;
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tracing::warn;

use crate::error::{IngestError, Result};
use crate::metastore::{Metastore, ObjectStoreMetastore, SegmentMeta, TableState};

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

    pub fn prefix(self, table: &str) -> ObjPath {
        match self {
            SegmentKind::Rows => ObjPath::from(format!("segments/{table}")),
            SegmentKind::Quarantine => ObjPath::from(format!("quarantine/{table}")),
            SegmentKind::KeyedSnapshot => ObjPath::from(format!("keyed/{table}")),
        }
    }
}

#[derive(Debug)]
pub struct Home {
    /// The URL this home was opened from (`None`: the data dir default).
    pub url: Option<String>,
    pub store: Arc<dyn ObjectStore>,
    pub metastore: Arc<dyn Metastore>,
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
            Ok((
                Arc::new(LocalFileSystem::new_with_prefix(&root)?),
                Some(root),
            ))
        }
        Some(u) if u.starts_with("file://") => {
            let root = PathBuf::from(&u["file://".len()..]);
            std::fs::create_dir_all(&root)?;
            Ok((
                Arc::new(LocalFileSystem::new_with_prefix(&root)?),
                Some(root),
            ))
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
    /// Opens the home at `url` with its metastore; `cache_dir` holds downloaded segments.
    pub async fn open(data_dir: &Path, url: Option<&str>, cache_dir: PathBuf) -> Result<Home> {
        let (store, local_root) = open_deep_store(data_dir, url)?;
        let metastore: Arc<dyn Metastore> =
            Arc::new(ObjectStoreMetastore::open(store.clone()).await?);
        Ok(Home {
            url: url.map(str::to_string),
            store,
            metastore,
            local_root,
            cache_dir,
        })
    }

    pub fn describe(&self) -> String {
        self.url.clone().unwrap_or_else(|| self.store.to_string())
    }

    fn cached_path(&self, table: &str, id: &str) -> PathBuf {
        self.cache_dir.join(table).join(format!("{id}.seg"))
    }

    /// Opens a published segment: memory-mapped in place for a local deep store, otherwise
    /// downloaded to the local cache first.
    pub async fn open_segment(&self, table: &str, s: &SegmentMeta) -> Result<Arc<SegmentReader>> {
        let file = match &self.local_root {
            Some(root) => root.join(&s.path),
            None => {
                let cached = self.cached_path(table, &s.id);
                if !cached.exists() {
                    let bytes = self
                        .store
                        .get(&ObjPath::from(s.path.as_str()))
                        .await?
                        .bytes()
                        .await?;
                    write_cache_file(&cached, &bytes)?;
                }
                cached
            }
        };
        Ok(Arc::new(map_segment(&file)?))
    }

    /// Uploads a built segment (unpublished) and opens it from the stored copy (local) or
    /// the cache (S3), so staged segments do not stay on the heap.
    pub async fn stage(
        &self,
        table: &str,
        kind: SegmentKind,
        id: String,
        bytes: Bytes,
    ) -> Result<(SegmentMeta, Arc<SegmentReader>)> {
        let path = format!("{}/{id}.seg", kind.prefix(table));
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
        };
        Ok((meta, Arc::new(reader)))
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

    /// Deletes segment objects of the table that `state` does not list (left by a crashed
    /// ingest or seal).
    pub async fn cleanup_unpublished(&self, state: &TableState) -> Result<()> {
        let known: std::collections::HashSet<&str> = state
            .segments
            .iter()
            .chain(&state.quarantine)
            .map(|s| s.path.as_str())
            .chain(state.keyed_snapshots.values().map(|p| p.as_str()))
            .collect();
        for kind in SegmentKind::ALL {
            let objects: Vec<_> = self
                .store
                .list(Some(&kind.prefix(&state.spec.name)))
                .try_collect()
                .await?;
            for o in objects {
                if !known.contains(o.location.as_ref()) {
                    warn!(path = %o.location, "deleting unpublished segment left by an earlier run");
                    self.store.delete(&o.location).await?;
                }
            }
        }
        Ok(())
    }

    /// Deletes every segment object of a table and its local cache.
    pub async fn delete_table_objects(&self, table: &str) -> Result<()> {
        for kind in SegmentKind::ALL {
            let objects: Vec<_> = self
                .store
                .list(Some(&kind.prefix(table)))
                .try_collect()
                .await?;
            for o in objects {
                self.store.delete(&o.location).await?;
            }
        }
        let _ = std::fs::remove_dir_all(self.cache_dir.join(table));
        Ok(())
    }
}

fn write_cache_file(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::create_dir_all(path.parent().expect("cache files have a parent"))?;
    let tmp = path.with_extension("seg.tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
