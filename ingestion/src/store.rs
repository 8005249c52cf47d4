//! The table store: table specs, their sealed segments and the metastore that records them.
//! In: specs from the admin API, decoded batches from ingestion. Out: segments in the deep
//! store (a local directory by default, S3 for an `s3://` URL), their publication in the
//! [`crate::metastore`], and open [`SegmentReader`]s for queries.
//!
//! Invariants: a segment becomes visible only when a metastore commit lists it; an ingest
//! request publishes all of its segments in one commit or none of them;
//! segments a failed or crashed request staged are deleted (at once, or at the next start).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use basalt_segment::{build_segment, BuildOptions, SegmentReader, SegmentSchema};
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parking_lot::RwLock;
use serde::Serialize;
use tracing::{info, warn};

use crate::decode::{decode_csv, decode_ndjson, decode_parquet, Format};
use crate::error::{IngestError, Result};
pub use crate::metastore::SegmentMeta;
use crate::metastore::{self, Metastore, ObjectStoreMetastore, TableState};
use crate::spec::TableSpec;

#[derive(Debug)]
pub struct LoadedSegment {
    pub meta: SegmentMeta,
    pub reader: Arc<SegmentReader>,
}

/// One table: its spec and its current segment list (replaced, never mutated, on publish).
#[derive(Debug)]
pub struct Table {
    pub spec: TableSpec,
    pub schema: SegmentSchema,
    segments: RwLock<Arc<Vec<Arc<LoadedSegment>>>>,
    /// Serialises manifest writes of this table.
    publish: tokio::sync::Mutex<()>,
}

impl Table {
    pub fn segments(&self) -> Arc<Vec<Arc<LoadedSegment>>> {
        self.segments.read().clone()
    }

    pub fn stats(&self) -> TableStats {
        let segs = self.segments();
        TableStats {
            rows: segs.iter().map(|s| s.meta.rows).sum(),
            segments: segs.len() as u64,
            bytes: segs.iter().map(|s| s.meta.bytes).sum(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TableStats {
    pub rows: u64,
    pub segments: u64,
    pub bytes: u64,
}

/// Where segments and the metastore live.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub data_dir: PathBuf,
    /// `None` (default): `<data_dir>/deepstore`. Otherwise a `file://` or `s3://bucket/prefix` URL.
    pub deep_store: Option<String>,
    pub build: BuildOptions,
}

pub struct TableStore {
    store: Arc<dyn ObjectStore>,
    /// The deep store URL the server was started with (`None`: the data dir).
    deep_store_url: Option<String>,
    metastore: Arc<dyn Metastore>,
    /// Set when the deep store is a local directory: segments are memory-mapped in place.
    local_root: Option<PathBuf>,
    cache_dir: PathBuf,
    tables: RwLock<BTreeMap<String, Arc<Table>>>,
    build: BuildOptions,
    seq: AtomicU64,
    /// Serialises table creation and deletion.
    admin: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for TableStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableStore")
            .field("store", &self.store.to_string())
            .finish()
    }
}

fn segments_prefix(table: &str) -> ObjPath {
    ObjPath::from(format!("segments/{table}"))
}

/// Opens the deep store named by `url` (None: a local directory under `data_dir`).
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

/// Hands memory the segment builders freed back to the OS. glibc keeps each thread's freed
/// arena otherwise, so a large ingest would leave the server's RSS at its peak.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of the allocator's own heaps to the OS.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Opens a segment file memory-mapped.
fn map_segment(file: &Path) -> Result<SegmentReader> {
    let f = std::fs::File::open(file)?;
    // SAFETY: segment files are written once, before they are mapped, and never modified.
    let map = unsafe { memmap2::Mmap::map(&f)? };
    Ok(SegmentReader::open(Bytes::from_owner(map))?)
}

impl TableStore {
    /// Opens the store and loads every table the metastore lists; removes segments that a
    /// crashed ingest left unpublished.
    pub async fn open(cfg: StoreConfig) -> Result<Arc<TableStore>> {
        std::fs::create_dir_all(&cfg.data_dir)?;
        let (store, local_root) = open_deep_store(&cfg.data_dir, cfg.deep_store.as_deref())?;
        let cache_dir = cfg.data_dir.join("cache");
        std::fs::create_dir_all(&cache_dir)?;
        let metastore: Arc<dyn Metastore> =
            Arc::new(ObjectStoreMetastore::open(store.clone()).await?);
        let ts = Arc::new(TableStore {
            store,
            deep_store_url: cfg.deep_store.clone(),
            metastore,
            local_root,
            cache_dir,
            tables: RwLock::new(BTreeMap::new()),
            build: cfg.build,
            seq: AtomicU64::new(0),
            admin: tokio::sync::Mutex::new(()),
        });
        for name in ts.metastore.list_tables().await? {
            let Some(state) = ts.metastore.get(&name).await? else {
                continue;
            };
            let state = state.value;
            state.spec.validate()?;
            let loaded = ts.load_segments(&state, &[]).await?;
            ts.cleanup_unpublished(&state).await?;
            info!(table = %state.spec.name, segments = loaded.len(), "loaded table");
            let table = Arc::new(Table {
                schema: state.spec.segment_schema(),
                spec: state.spec,
                segments: RwLock::new(Arc::new(loaded)),
                publish: tokio::sync::Mutex::new(()),
            });
            ts.tables.write().insert(table.spec.name.clone(), table);
        }
        Ok(ts)
    }

    /// Readers for every segment `state` lists, reusing those in `known`.
    async fn load_segments(
        &self,
        state: &TableState,
        known: &[Arc<LoadedSegment>],
    ) -> Result<Vec<Arc<LoadedSegment>>> {
        let mut loaded = Vec::with_capacity(state.segments.len());
        for s in &state.segments {
            if let Some(k) = known.iter().find(|k| k.meta.id == s.id) {
                loaded.push(k.clone());
                continue;
            }
            let reader = self.open_segment(&state.spec.name, s).await?;
            loaded.push(Arc::new(LoadedSegment {
                meta: s.clone(),
                reader,
            }));
        }
        Ok(loaded)
    }

    async fn cleanup_unpublished(&self, state: &TableState) -> Result<()> {
        let known: std::collections::HashSet<&str> =
            state.segments.iter().map(|s| s.path.as_str()).collect();
        let objects: Vec<_> = self
            .store
            .list(Some(&segments_prefix(&state.spec.name)))
            .try_collect()
            .await?;
        for o in objects {
            if !known.contains(o.location.as_ref()) {
                warn!(path = %o.location, "deleting unpublished segment left by an earlier run");
                self.store.delete(&o.location).await?;
            }
        }
        Ok(())
    }

    /// Opens a published segment: memory-mapped in place for a local deep store, otherwise
    /// downloaded to the local cache first.
    async fn open_segment(&self, table: &str, s: &SegmentMeta) -> Result<Arc<SegmentReader>> {
        let file = match &self.local_root {
            Some(root) => root.join(&s.path),
            None => {
                let cached = self.cache_dir.join(table).join(format!("{}.seg", s.id));
                if !cached.exists() {
                    std::fs::create_dir_all(cached.parent().expect("has parent"))?;
                    let bytes = self
                        .store
                        .get(&ObjPath::from(s.path.as_str()))
                        .await?
                        .bytes()
                        .await?;
                    let tmp = cached.with_extension("seg.tmp");
                    std::fs::write(&tmp, &bytes)?;
                    std::fs::rename(&tmp, &cached)?;
                }
                cached
            }
        };
        Ok(Arc::new(map_segment(&file)?))
    }

    pub fn deep_store_description(&self) -> String {
        self.store.to_string()
    }

    pub fn table(&self, name: &str) -> Option<Arc<Table>> {
        self.tables.read().get(name).cloned()
    }

    pub fn table_names(&self) -> Vec<String> {
        self.tables.read().keys().cloned().collect()
    }

    pub async fn create_table(&self, spec: TableSpec) -> Result<Arc<Table>> {
        spec.validate()?;
        if spec.source.is_some() {
            return Err(IngestError::Spec(
                "source: real-time ingestion from Kafka is not available in this build yet; \
                 create the table without `source` and load it with POST /tables/{name}/ingest"
                    .into(),
            ));
        }
        if let Some(d) = &spec.deep_store {
            if Some(d) != self.deep_store_url.as_ref() {
                return Err(IngestError::Spec(format!(
                    "deep_store: per-table deep stores are not supported yet; this server \
                     writes every table to {} (omit deep_store or start the server with \
                     --deep-store {d})",
                    self.store
                )));
            }
        }
        let _g = self.admin.lock().await;
        if self.tables.read().contains_key(&spec.name) {
            return Err(IngestError::TableExists(spec.name));
        }
        self.metastore
            .create(&TableState::new(spec.clone()))
            .await?;
        let table = Arc::new(Table {
            schema: spec.segment_schema(),
            spec,
            segments: RwLock::new(Arc::new(Vec::new())),
            publish: tokio::sync::Mutex::new(()),
        });
        self.tables
            .write()
            .insert(table.spec.name.clone(), table.clone());
        info!(table = %table.spec.name, "created table");
        Ok(table)
    }

    pub async fn drop_table(&self, name: &str) -> Result<()> {
        let _g = self.admin.lock().await;
        let table = self
            .table(name)
            .ok_or_else(|| IngestError::NoSuchTable(name.into()))?;
        let _p = table.publish.lock().await;
        self.metastore.drop_table(name).await?;
        self.tables.write().remove(name);
        let objects: Vec<_> = self
            .store
            .list(Some(&segments_prefix(name)))
            .try_collect()
            .await?;
        for o in objects {
            self.store.delete(&o.location).await?;
        }
        let _ = std::fs::remove_dir_all(self.cache_dir.join(name));
        info!(table = %name, "dropped table");
        Ok(())
    }

    fn new_segment_id(&self, table: &str) -> String {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let rand = uuid::Uuid::new_v4().simple().to_string();
        format!("{table}__{ms}__{seq:06}__{}", &rand[..8])
    }

    /// Decodes `body` in `format`, seals it into segments and publishes them all at once.
    /// All-or-nothing: on any error nothing becomes visible and staged segments are deleted.
    /// Runs the decoding on a blocking thread; `body` is read as it streams in.
    pub async fn ingest(
        self: &Arc<Self>,
        table: &str,
        format: Format,
        body: Box<dyn Read + Send>,
    ) -> Result<u64> {
        let t = self
            .table(table)
            .ok_or_else(|| IngestError::NoSuchTable(table.into()))?;
        let me = self.clone();
        let t2 = t.clone();
        let handle = tokio::runtime::Handle::current();
        let staged =
            tokio::task::spawn_blocking(move || me.decode_and_stage(&t2, format, body, &handle))
                .await
                .map_err(|e| IngestError::Io(std::io::Error::other(e.to_string())))?;
        let staged = match staged {
            Ok(s) => s,
            Err((e, staged)) => {
                self.delete_staged(&staged).await;
                return Err(e);
            }
        };
        let rows = staged.iter().map(|s| s.meta.rows).sum();
        let published = self.publish(&t, &staged).await;
        release_freed_memory();
        if let Err(e) = published {
            self.delete_staged(&staged).await;
            return Err(e);
        }
        Ok(rows)
    }

    async fn delete_staged(&self, staged: &[Arc<LoadedSegment>]) {
        for s in staged {
            if let Err(e) = self
                .store
                .delete(&ObjPath::from(s.meta.path.as_str()))
                .await
            {
                warn!(path = %s.meta.path, error = %e, "could not delete a staged segment; it is removed at next start");
            }
        }
    }

    /// Publishes staged segments in one metastore commit, then swaps the in-memory list.
    async fn publish(&self, t: &Table, staged: &[Arc<LoadedSegment>]) -> Result<()> {
        if staged.is_empty() {
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
        let state = metastore::publish(self.metastore.as_ref(), &t.spec.name, &metas, &[]).await?;
        // The published list may hold other writers' segments too: open those.
        let mut known: Vec<Arc<LoadedSegment>> = t.segments().as_ref().clone();
        known.extend(staged.iter().cloned());
        let next = self.load_segments(&state.value, &known).await?;
        *t.segments.write() = Arc::new(next);
        info!(table = %t.spec.name, segments = staged.len(), rows = staged.iter().map(|s| s.meta.rows).sum::<u64>(), "published segments");
        Ok(())
    }

    #[allow(clippy::type_complexity)]
    fn decode_and_stage(
        &self,
        t: &Table,
        format: Format,
        mut body: Box<dyn Read + Send>,
        handle: &tokio::runtime::Handle,
    ) -> std::result::Result<Vec<Arc<LoadedSegment>>, (IngestError, Vec<Arc<LoadedSegment>>)> {
        let max_rows = t.spec.segment.max_rows;
        let max_bytes = t.spec.max_bytes().ok().flatten();
        let batch_rows = max_rows.min(65536);
        // Decoding and sealing overlap: full segments go through a one-slot channel to one
        // builder thread per core, so at most `builders + 2` segments' rows are in memory.
        let builders = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, 4);
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<RecordBatch>>(1);
        let rx = std::sync::Mutex::new(rx);
        let failed = std::sync::atomic::AtomicBool::new(false);
        let (rx, failed) = (&rx, &failed);
        std::thread::scope(move |scope| {
            let workers: Vec<_> = (0..builders)
                .map(|_| {
                    scope.spawn(move || {
                        let mut staged: Vec<Arc<LoadedSegment>> = Vec::new();
                        loop {
                            let next = rx.lock().map(|r| r.recv());
                            let Ok(Ok(batches)) = next else {
                                return (staged, None);
                            };
                            if failed.load(Ordering::Relaxed) {
                                continue;
                            }
                            match self.stage(t, &batches, handle) {
                                Ok(s) => staged.push(s),
                                Err(e) => {
                                    failed.store(true, Ordering::Relaxed);
                                    return (staged, Some(e));
                                }
                            }
                        }
                    })
                })
                .collect();
            let decoded = (|| -> Result<()> {
                let mut pending: Vec<RecordBatch> = Vec::new();
                let mut pending_rows = 0usize;
                let seal = |batches: Vec<RecordBatch>| -> Result<()> {
                    tx.send(batches).map_err(|_| {
                        IngestError::Io(std::io::Error::other("the segment builder stopped"))
                    })
                };
                let mut sink = |b: RecordBatch| -> Result<()> {
                    let mut b = b;
                    // segment.max_bytes caps a segment's rows by their in-memory size.
                    let limit = match max_bytes {
                        Some(cap) if b.num_rows() > 0 => {
                            // Bytes the rows use, not the decoder's spare capacity.
                            let used: usize = b
                                .columns()
                                .iter()
                                .map(|c| c.to_data().get_slice_memory_size().unwrap_or(0))
                                .sum();
                            let per_row = (used / b.num_rows()).max(1);
                            max_rows.min((cap as usize / per_row).max(1))
                        }
                        _ => max_rows,
                    };
                    while pending_rows + b.num_rows() >= limit {
                        let take = limit.saturating_sub(pending_rows).min(b.num_rows());
                        pending.push(b.slice(0, take));
                        b = b.slice(take, b.num_rows() - take);
                        pending_rows = 0;
                        seal(std::mem::take(&mut pending))?;
                    }
                    if b.num_rows() > 0 {
                        pending_rows += b.num_rows();
                        pending.push(b);
                    }
                    Ok(())
                };
                match format {
                    Format::NdJson => {
                        decode_ndjson(&mut body, &t.schema, batch_rows, &mut sink)?;
                    }
                    Format::Csv => {
                        decode_csv(&mut body, &t.schema, batch_rows, &mut sink)?;
                    }
                    Format::Parquet => {
                        // Parquet keeps its footer at the end: spool to disk, then read.
                        let mut tmp = tempfile::tempfile_in(&self.cache_dir)?;
                        std::io::copy(&mut body, &mut tmp)?;
                        decode_parquet(tmp, &t.schema, batch_rows, &mut sink).map_err(
                            |e| match e {
                                IngestError::Parquet(p) => IngestError::BadInput {
                                    location: "body".into(),
                                    message: format!("not a readable Parquet file: {p}"),
                                },
                                e => e,
                            },
                        )?;
                    }
                }
                if pending_rows > 0 {
                    seal(std::mem::take(&mut pending))?;
                }
                Ok(())
            })();
            drop(tx);
            let mut staged = Vec::new();
            let mut build_error = None;
            for w in workers {
                let (s, e) = w.join().expect("segment builder thread");
                staged.extend(s);
                build_error = build_error.or(e);
            }
            // Segments are published in the order of their ids (creation order).
            staged.sort_by(|a, b| a.meta.id.cmp(&b.meta.id));
            // A builder's own error explains a "builder stopped" on the decoding side.
            match (decoded, build_error) {
                (_, Some(e)) | (Err(e), None) => Err((e, staged)),
                (Ok(()), None) => Ok(staged),
            }
        })
    }

    /// Builds one segment and uploads it (unpublished).
    fn stage(
        &self,
        t: &Table,
        batches: &[RecordBatch],
        handle: &tokio::runtime::Handle,
    ) -> Result<Arc<LoadedSegment>> {
        let bytes = Bytes::from(build_segment(&t.schema, batches, &self.build)?);
        let id = self.new_segment_id(&t.spec.name);
        let path = format!("{}/{id}.seg", segments_prefix(&t.spec.name));
        let size = bytes.len() as u64;
        handle.block_on(self.store.put(
            &ObjPath::from(path.as_str()),
            PutPayload::from(bytes.clone()),
        ))?;
        // Serve from the stored copy where it is local (memory-mapped), so a large request
        // does not hold every staged segment in memory until it is published.
        let reader = match &self.local_root {
            Some(root) => {
                drop(bytes);
                map_segment(&root.join(&path))?
            }
            None => SegmentReader::open(bytes)?,
        };
        let meta = SegmentMeta {
            id,
            path,
            rows: reader.row_count() as u64,
            bytes: size,
            time_range: reader.footer().time_range,
        };
        Ok(Arc::new(LoadedSegment {
            meta,
            reader: Arc::new(reader),
        }))
    }
}
