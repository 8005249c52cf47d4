//! The table store: table specs, their segments and the metastore that records them.
//! In: specs from the admin API, decoded batches from ingestion, sealed segments and
//! checkpoint deltas from the real-time ingester. Out: segments in each table's [`Home`]
//! (the server's deep store, or the table's own `deep_store`), their publication in that
//! home's [`crate::metastore`], and per table a [`TableView`] for queries: sealed segments
//! plus the real-time partitions' mutable segments.
//!
//! Invariants: a segment becomes visible only when a metastore commit lists it; an ingest
//! request publishes all of its segments in one commit or none of them; a sealed real-time
//! segment replaces its mutable segment in the view in one step (never both, never neither);
//! segments a failed or crashed request or seal staged are deleted (at once, or at the next
//! start).

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use basalt_segment::{build_segment, BuildOptions, RoaringBitmap, SegmentReader, SegmentSchema};
use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use tracing::{info, warn};

use crate::decode::{
    decode_csv, decode_ndjson, decode_parquet, ingest_schema, DecodeLimits, Format,
};
use crate::error::{IngestError, Result};
pub use crate::home::open_deep_store;
use crate::home::{Home, SegmentKind};
pub use crate::metastore::SegmentMeta;
use crate::metastore::{self, CheckpointDelta, Publish, TableState};
use crate::mutable::MutablePart;
use crate::policy::{file_url, TablePolicy};
use crate::realtime::{Ingester, IngestionStatus};
use crate::spec::TableSpec;
use crate::upsert::{snapshot, KeyedPartition, KeyedTable, BATCH_PARTITION};

#[derive(Debug)]
pub struct LoadedSegment {
    pub meta: SegmentMeta,
    pub reader: Arc<SegmentReader>,
}

/// Valid docs of an upsert table: segment id (a mutable part's is its future segment's) →
/// the docs holding a key's current row. A segment without an entry has none.
pub type ValidDocs = HashMap<String, Arc<RoaringBitmap>>;

/// What a query of a table sees: replaced as a whole, never mutated.
#[derive(Debug, Default, Clone)]
pub struct TableView {
    pub segments: Vec<Arc<LoadedSegment>>,
    pub quarantine: Vec<Arc<LoadedSegment>>,
    /// Real-time rows not sealed yet, per partition (a partition being sealed has two).
    pub mutable: Vec<Arc<MutablePart>>,
    /// Upsert tables only. Rows are appended to a mutable part before the view with their
    /// valid docs is installed, so a query sees either a flush's rows and their valid docs
    /// or neither (rows past the bitmaps it holds are not valid to it).
    pub valid: Option<Arc<ValidDocs>>,
}

impl TableView {
    /// The reader of sealed segment `id`, if the view holds it.
    pub fn segment_reader(&self, id: &str) -> Option<Arc<SegmentReader>> {
        self.segments
            .iter()
            .find(|s| s.meta.id == id)
            .map(|s| s.reader.clone())
    }
}

/// One table: its spec, its home and its current view.
#[derive(Debug)]
pub struct Table {
    pub spec: TableSpec,
    pub schema: SegmentSchema,
    pub(crate) home: Arc<Home>,
    view: RwLock<Arc<TableView>>,
    /// Serialises metastore writes of this table.
    publish: tokio::sync::Mutex<()>,
    realtime: Mutex<Option<Ingester>>,
    /// Upsert and dedup tables without a stream source: the key space of batch ingests
    /// (one ingest at a time). `None` until the first ingest after load restores it.
    batch_keys: tokio::sync::Mutex<Option<BatchKeys>>,
}

/// The keyed state of a table's batch ingests and the snapshot object it was restored
/// from or last persisted to.
#[derive(Debug)]
struct BatchKeys {
    part: KeyedPartition,
    snapshot: Option<String>,
}

impl Table {
    fn new(spec: TableSpec, home: Arc<Home>, view: TableView) -> Table {
        Table {
            schema: spec.segment_schema(),
            spec,
            home,
            view: RwLock::new(Arc::new(view)),
            publish: tokio::sync::Mutex::new(()),
            realtime: Mutex::new(None),
            batch_keys: tokio::sync::Mutex::new(None),
        }
    }

    pub fn view(&self) -> Arc<TableView> {
        self.view.read().clone()
    }

    pub fn segments(&self) -> Vec<Arc<LoadedSegment>> {
        self.view().segments.clone()
    }

    /// Where the table's segments and metastore state live.
    pub fn deep_store(&self) -> String {
        self.home.describe()
    }

    pub fn stats(&self) -> TableStats {
        let v = self.view();
        TableStats {
            rows: v.segments.iter().map(|s| s.meta.rows).sum(),
            segments: v.segments.len() as u64,
            bytes: v.segments.iter().map(|s| s.meta.bytes).sum(),
            mutable_rows: v.mutable.iter().map(|p| p.rows.rows() as u64).sum(),
            quarantined: v.quarantine.iter().map(|s| s.meta.rows).sum::<u64>()
                + v.mutable
                    .iter()
                    .map(|p| p.quarantine.rows() as u64)
                    .sum::<u64>(),
        }
    }

    /// The real-time ingester's status, for a table with a source.
    pub fn ingestion(&self) -> Option<IngestionStatus> {
        self.realtime.lock().as_ref().map(|i| i.status())
    }

    /// Replaces the view with a changed copy of it.
    pub(crate) fn change_view(&self, f: impl FnOnce(&mut TableView)) {
        let mut v = self.view.write();
        let mut next = TableView::clone(&v);
        f(&mut next);
        *v = Arc::new(next);
    }

    /// Adds a partition's new mutable segment to the view (the ingester's rotation).
    pub(crate) fn add_mutable(&self, part: Arc<MutablePart>) {
        self.change_view(|v| v.mutable.push(part));
    }

    /// Removes mutable segments from the view without publishing them (an ingester restart:
    /// their offsets are consumed again from the checkpoint), with `valid` docs replacing
    /// those of their segments in the same swap.
    pub(crate) fn remove_mutable(&self, parts: &[Arc<MutablePart>], valid: Option<ValidDocs>) {
        self.change_view(|v| {
            v.mutable
                .retain(|p| !parts.iter().any(|r| Arc::ptr_eq(p, r)));
            if let Some(valid) = valid {
                let mut docs = v.valid.as_deref().cloned().unwrap_or_default();
                docs.extend(valid);
                v.valid = Some(Arc::new(docs));
            }
        });
    }

    /// Installs changed valid docs (after the rows they cover were appended).
    pub(crate) fn update_valid(&self, changes: Vec<(String, Arc<RoaringBitmap>)>) {
        if changes.is_empty() {
            return;
        }
        self.change_view(|v| {
            let mut valid = v.valid.as_deref().cloned().unwrap_or_default();
            valid.extend(changes);
            v.valid = Some(Arc::new(valid));
        });
    }
}

/// The segments a request staged, or its error with those it staged before failing.
type Staged = std::result::Result<Vec<Arc<LoadedSegment>>, (IngestError, Vec<Arc<LoadedSegment>>)>;

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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TableStats {
    /// Rows in sealed segments.
    pub rows: u64,
    pub segments: u64,
    pub bytes: u64,
    /// Real-time rows not sealed yet.
    pub mutable_rows: u64,
    /// Messages in the quarantine (sealed and not).
    pub quarantined: u64,
}

/// Where segments and the metastore live.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub data_dir: PathBuf,
    /// `None` (default): `<data_dir>/deepstore`. Otherwise a `file://` or `s3://bucket/prefix` URL.
    pub deep_store: Option<String>,
    pub build: BuildOptions,
    /// The operator's limits on table specs.
    pub policy: TablePolicy,
    /// What one ingest request may hold in memory.
    pub ingest: IngestLimits,
}

/// Bounds on one batch ingest request, whatever its format.
#[derive(Debug, Clone, Copy)]
pub struct IngestLimits {
    pub decode: DecodeLimits,
    /// Rows of one segment in memory are capped at this many bytes (default 256 MiB) even
    /// when the spec sets no `segment.max_bytes`; a request holds at most a few segments.
    pub max_segment_bytes: u64,
}

impl Default for IngestLimits {
    fn default() -> Self {
        IngestLimits {
            decode: DecodeLimits::default(),
            max_segment_bytes: 256 << 20,
        }
    }
}

impl StoreConfig {
    /// Everything under `data_dir`, default build options and limits.
    pub fn local(data_dir: &std::path::Path) -> StoreConfig {
        StoreConfig {
            data_dir: data_dir.to_path_buf(),
            deep_store: None,
            build: BuildOptions::default(),
            policy: TablePolicy::default(),
            ingest: IngestLimits::default(),
        }
    }
}

pub struct TableStore {
    data_dir: PathBuf,
    cache_dir: PathBuf,
    /// The server's deep store: tables without a `deep_store` of their own live here.
    default_home: Arc<Home>,
    /// Homes of tables with their own `deep_store`, by URL.
    homes: Mutex<HashMap<String, Arc<Home>>>,
    tables: RwLock<BTreeMap<String, Arc<Table>>>,
    pub(crate) build: BuildOptions,
    seq: AtomicU64,
    /// Serialises table creation and deletion.
    admin: tokio::sync::Mutex<()>,
    pub(crate) policy: TablePolicy,
    ingest_limits: IngestLimits,
    /// Deep stores a spec may name: the configured roots, or the server's own deep store
    /// and data dir.
    allowed_roots: Vec<String>,
}

impl std::fmt::Debug for TableStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableStore")
            .field("store", &self.default_home.describe())
            .finish()
    }
}

/// Hands memory the segment builders freed back to the OS. glibc keeps each thread's freed
/// arena otherwise, so a large ingest would leave the server's RSS at its peak.
pub(crate) fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of the allocator's own heaps to the OS.
    unsafe {
        libc::malloc_trim(0);
    }
}

impl TableStore {
    /// Opens the store and loads every table of the server's deep store and of the tables
    /// with their own deep store (remembered in `<data_dir>/catalog/`); removes segments
    /// that a crashed ingest or seal left unpublished; starts real-time ingestion.
    pub async fn open(cfg: StoreConfig) -> Result<Arc<TableStore>> {
        std::fs::create_dir_all(&cfg.data_dir)?;
        let cache_dir = cfg.data_dir.join("cache");
        std::fs::create_dir_all(&cache_dir)?;
        std::fs::create_dir_all(cfg.data_dir.join("catalog"))?;
        let default_home = Arc::new(
            Home::open(&cfg.data_dir, cfg.deep_store.as_deref(), cache_dir.clone()).await?,
        );
        let ts = Arc::new(TableStore {
            data_dir: cfg.data_dir.clone(),
            cache_dir,
            default_home: default_home.clone(),
            homes: Mutex::new(HashMap::new()),
            tables: RwLock::new(BTreeMap::new()),
            build: cfg.build,
            seq: AtomicU64::new(0),
            admin: tokio::sync::Mutex::new(()),
            allowed_roots: if cfg.policy.allowed_roots.is_empty() {
                let mut roots = vec![file_url(&cfg.data_dir)];
                roots.extend(cfg.deep_store.clone());
                roots
            } else {
                cfg.policy.allowed_roots.clone()
            },
            policy: cfg.policy,
            ingest_limits: cfg.ingest,
        });
        for name in default_home.metastore.list_tables().await? {
            let Some(state) = default_home.metastore.get(&name).await? else {
                continue;
            };
            ts.load_table(default_home.clone(), state.value).await?;
        }
        for (spec, file) in ts.catalog()? {
            let home = ts.home_for(spec.deep_store.as_deref()).await?;
            match home.metastore.get(&spec.name).await? {
                Some(state) => {
                    ts.load_table(home, state.value).await?;
                }
                None => {
                    warn!(table = %spec.name, deep_store = %home.describe(), "table is gone from its deep store; forgetting it");
                    let _ = std::fs::remove_file(file);
                }
            }
        }
        Ok(ts)
    }

    /// Specs of tables with their own deep store.
    fn catalog(&self) -> Result<Vec<(TableSpec, PathBuf)>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(self.data_dir.join("catalog"))? {
            let path = e?.path();
            if path.extension().is_some_and(|x| x == "json") {
                let spec = TableSpec::from_json(&std::fs::read(&path)?)
                    .map_err(|e| IngestError::Metastore(format!("{}: {e}", path.display())))?;
                out.push((spec, path));
            }
        }
        Ok(out)
    }

    fn catalog_file(&self, table: &str) -> PathBuf {
        self.data_dir.join("catalog").join(format!("{table}.json"))
    }

    /// The home for a table's `deep_store` (the server's own when absent or equal).
    async fn home_for(&self, url: Option<&str>) -> Result<Arc<Home>> {
        let Some(url) = url.filter(|u| Some(*u) != self.default_home.url.as_deref()) else {
            return Ok(self.default_home.clone());
        };
        if let Some(h) = self.homes.lock().get(url) {
            return Ok(h.clone());
        }
        let home = Arc::new(Home::open(&self.data_dir, Some(url), self.cache_dir.clone()).await?);
        Ok(self
            .homes
            .lock()
            .entry(url.to_string())
            .or_insert(home)
            .clone())
    }

    /// Opens a table's published segments, cleans up unpublished ones and starts its
    /// real-time ingestion.
    async fn load_table(
        self: &Arc<Self>,
        home: Arc<Home>,
        state: TableState,
    ) -> Result<Arc<Table>> {
        state.spec.validate()?;
        home.cleanup_unpublished(&state).await?;
        let view = TableView {
            segments: load_segments(&home, &state.spec.name, &state.segments, &[]).await?,
            quarantine: load_segments(&home, &state.spec.name, &state.quarantine, &[]).await?,
            mutable: Vec::new(),
            valid: persisted_valid(&home, &state).await?.map(Arc::new),
        };
        info!(table = %state.spec.name, segments = view.segments.len(), deep_store = %home.describe(), "loaded table");
        let table = Arc::new(Table::new(state.spec, home, view));
        self.tables
            .write()
            .insert(table.spec.name.clone(), table.clone());
        self.start_realtime(&table);
        Ok(table)
    }

    fn start_realtime(self: &Arc<Self>, table: &Arc<Table>) {
        if table.spec.source.is_some() {
            let ingester = Ingester::start(self.clone(), table.clone());
            *table.realtime.lock() = Some(ingester);
        }
    }

    pub fn deep_store_description(&self) -> String {
        self.default_home.describe()
    }

    pub fn table(&self, name: &str) -> Option<Arc<Table>> {
        self.tables.read().get(name).cloned()
    }

    pub fn table_names(&self) -> Vec<String> {
        self.tables.read().keys().cloned().collect()
    }

    /// Creates a table. A table whose deep store already holds it under the same spec is
    /// attached instead (its segments and checkpoints are found there): the deep store is
    /// the source of truth, the local data dir only a cache. Returns the table and whether
    /// it was attached.
    pub async fn create_table(self: &Arc<Self>, spec: TableSpec) -> Result<(Arc<Table>, bool)> {
        spec.validate()?;
        self.policy.check(&spec, &self.allowed_roots)?;
        if let Some(k) = spec.source.as_ref().and_then(|s| s.kafka.as_ref()) {
            // librdkafka checks the properties when a client is created (no connection yet);
            // secret references are resolved here too, so a missing variable is a 400.
            crate::realtime::kafka::KafkaStream::open(
                &spec.name,
                k,
                &self.policy.secret_env_prefix,
            )
            .map_err(|e| IngestError::Spec(e.to_string()))?;
        }
        let _g = self.admin.lock().await;
        if self.tables.read().contains_key(&spec.name) {
            return Err(IngestError::TableExists(spec.name));
        }
        let home = self.home_for(spec.deep_store.as_deref()).await?;
        let own_home = !Arc::ptr_eq(&home, &self.default_home);
        let (table, attached) = match home.metastore.get(&spec.name).await? {
            Some(existing) if existing.value.spec == spec => {
                info!(table = %spec.name, deep_store = %home.describe(), "attaching a table found in its deep store");
                (self.load_table(home.clone(), existing.value).await?, true)
            }
            Some(_) => {
                return Err(IngestError::TableExistsElsewhere {
                    table: spec.name.clone(),
                    deep_store: home.describe(),
                })
            }
            None => {
                home.metastore
                    .create(&TableState::new(spec.clone()))
                    .await?;
                info!(table = %spec.name, deep_store = %home.describe(), "created table");
                let t = self
                    .load_table(home.clone(), TableState::new(spec.clone()))
                    .await?;
                (t, false)
            }
        };
        if own_home {
            let json = serde_json::to_vec_pretty(&spec)
                .map_err(|e| IngestError::Metastore(e.to_string()))?;
            let file = self.catalog_file(&spec.name);
            std::fs::write(file.with_extension("json.tmp"), json)?;
            std::fs::rename(file.with_extension("json.tmp"), file)?;
        }
        Ok((table, attached))
    }

    pub async fn drop_table(&self, name: &str) -> Result<()> {
        let _g = self.admin.lock().await;
        let table = self
            .table(name)
            .ok_or_else(|| IngestError::NoSuchTable(name.into()))?;
        let ingester = table.realtime.lock().take();
        if let Some(i) = ingester {
            tokio::task::spawn_blocking(move || i.stop())
                .await
                .map_err(|e| IngestError::Io(std::io::Error::other(e.to_string())))?;
        }
        let _p = table.publish.lock().await;
        table.home.metastore.drop_table(name).await?;
        self.tables.write().remove(name);
        table.home.delete_table_objects(name).await?;
        let _ = std::fs::remove_file(self.catalog_file(name));
        info!(table = %name, "dropped table");
        Ok(())
    }

    /// Stops every real-time ingester (their unsealed rows are consumed again at the next
    /// start, from the checkpoints).
    pub fn shutdown(&self) {
        let tables: Vec<_> = self.tables.read().values().cloned().collect();
        for t in tables {
            if let Some(i) = t.realtime.lock().take() {
                i.stop();
            }
        }
    }

    pub(crate) fn new_segment_id(&self, table: &str) -> String {
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
    ///
    /// Upsert and dedup tables (without a stream source) apply the rows to the key space
    /// of batch ingests, one request at a time; a failed request's changes to it are rolled
    /// back, and a published one commits its keyed snapshot with its segments.
    pub async fn ingest(
        self: &Arc<Self>,
        table: &str,
        format: Format,
        body: Box<dyn Read + Send>,
    ) -> Result<u64> {
        let t = self
            .table(table)
            .ok_or_else(|| IngestError::NoSuchTable(table.into()))?;
        let keyed = KeyedTable::of(&t.spec).map(Arc::new);
        if keyed.is_some() && t.spec.source.is_some() {
            // Its key maps are per stream partition: batch rows could not replace the
            // current row of a key the stream holds.
            return Err(IngestError::NotSupported(format!(
                "table {table:?} is an upsert/dedup table with a stream source; its rows \
                 must come through the stream (the topic keyed by the primary key)"
            )));
        }
        let mut guard = match &keyed {
            Some(_) => Some(t.batch_keys.lock().await),
            None => None,
        };
        let mut keys = match (&keyed, guard.as_deref_mut()) {
            (Some(cfg), Some(slot)) => Some(match slot.take() {
                Some(k) => k,
                None => self.restore_batch_keys(&t, cfg.clone()).await?,
            }),
            _ => None,
        };
        let savepoint = keys.as_mut().map(|k| k.part.savepoint());
        let me = self.clone();
        let t2 = t.clone();
        let handle = tokio::runtime::Handle::current();
        // A panic on the blocking thread loses `keys`; the next ingest restores them.
        let (staged, mut keys) = tokio::task::spawn_blocking(move || {
            let staged = me.decode_and_stage(
                &t2,
                format,
                body,
                &handle,
                keys.as_mut().map(|k| &mut k.part),
            );
            (staged, keys)
        })
        .await
        .map_err(|e| IngestError::Io(std::io::Error::other(e.to_string())))?;
        let result = self.publish_ingest(&t, staged, keys.as_mut()).await;
        if let (Some(mut k), Some(sp), Some(slot)) = (keys, savepoint, guard.as_deref_mut()) {
            match &result {
                Ok(_) => {
                    k.part.commit();
                    k.part.evict();
                }
                Err(_) => k.part.rollback(sp),
            }
            *slot = Some(k);
        }
        result
    }

    /// Publishes a request's staged segments (with the batch key space's snapshot and
    /// changed valid docs, for a keyed table); deletes what it staged when that fails.
    async fn publish_ingest(
        &self,
        t: &Table,
        staged: Staged,
        keys: Option<&mut BatchKeys>,
    ) -> Result<u64> {
        let staged = match staged {
            Ok(s) => s,
            Err((e, staged)) => {
                self.delete_staged(t, &staged).await;
                return Err(e);
            }
        };
        let rows = staged.iter().map(|s| s.meta.rows).sum();
        let mut snapshot = None;
        let mut valid = Vec::new();
        let mut keys = keys.filter(|_| !staged.is_empty());
        if let Some(k) = keys.as_deref_mut() {
            valid = k.part.take_changes();
            let path = format!(
                "{}/batch-{}.snap",
                SegmentKind::KeyedSnapshot.prefix(&t.spec.name),
                self.new_segment_id(&t.spec.name)
            );
            let put = match snapshot::encode(&k.part.snapshot()) {
                Ok(bytes) => t.home.put_object(&path, bytes).await,
                Err(e) => Err(e),
            };
            if let Err(e) = put {
                self.delete_staged(t, &staged).await;
                return Err(e);
            }
            snapshot = Some(path);
        }
        let snapshots: Vec<(i32, String)> = snapshot
            .iter()
            .map(|p| (BATCH_PARTITION, p.clone()))
            .collect();
        let published = self
            .publish(
                t,
                PublishChange {
                    staged: &staged,
                    snapshots: &snapshots,
                    valid,
                    ..Default::default()
                },
            )
            .await;
        release_freed_memory();
        if let Err(e) = published {
            self.delete_staged(t, &staged).await;
            if let Some(path) = &snapshot {
                t.home.delete_object(path).await;
            }
            return Err(e);
        }
        if let Some(k) = keys {
            if let Some(prev) = std::mem::replace(&mut k.snapshot, snapshot) {
                t.home.delete_object(&prev).await;
            }
        }
        Ok(rows)
    }

    /// The batch key space of a keyed table, rebuilt from its last published snapshot.
    async fn restore_batch_keys(&self, t: &Table, cfg: Arc<KeyedTable>) -> Result<BatchKeys> {
        let started = std::time::Instant::now();
        let schema = ingest_schema(&t.schema);
        let state = t
            .home
            .metastore
            .get(&t.spec.name)
            .await?
            .ok_or_else(|| IngestError::NoSuchTable(t.spec.name.clone()))?;
        let Some(path) = state.value.keyed_snapshots.get(&BATCH_PARTITION).cloned() else {
            return Ok(BatchKeys {
                part: KeyedPartition::new(cfg, schema),
                snapshot: None,
            });
        };
        let slots = t.home.read_keyed_snapshot(&path).await?;
        let view = t.view();
        let part = tokio::task::spawn_blocking(move || {
            KeyedPartition::restore(cfg, schema, &slots, |id| view.segment_reader(id))
        })
        .await
        .map_err(|e| IngestError::Io(std::io::Error::other(e.to_string())))?
        .map_err(|e| IngestError::Keyed(format!("keyed snapshot {path}: {e}")))?;
        info!(table = %t.spec.name, keys = part.keys(), elapsed_ms = started.elapsed().as_millis() as u64, "restored the keys of batch ingests");
        Ok(BatchKeys {
            part,
            snapshot: Some(path),
        })
    }

    async fn delete_staged(&self, t: &Table, staged: &[Arc<LoadedSegment>]) {
        let metas: Vec<SegmentMeta> = staged.iter().map(|s| s.meta.clone()).collect();
        t.home.delete_staged(&t.spec.name, &metas).await;
    }

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
                segments: &metas,
                quarantine: &qmetas,
                deltas,
                snapshots,
            },
        )
        .await?;
        // The published lists may hold other writers' segments too: open those.
        // The commit is done: from here on nothing may fail the publish (the caller would
        // delete segments that are published). A segment of another writer that cannot be
        // opened now is left out of the view and logged.
        let cur = t.view();
        let mut known = cur.segments.clone();
        known.extend(staged.iter().cloned());
        let segments = load_published(t, &state.value.segments, known).await;
        let mut known_q = cur.quarantine.clone();
        known_q.extend(staged_quarantine.iter().cloned());
        let quarantine = load_published(t, &state.value.quarantine, known_q).await;
        t.change_view(|v| {
            v.mutable
                .retain(|p| retire.is_none_or(|r| !Arc::ptr_eq(p, r)));
            v.segments = segments;
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

    fn decode_and_stage(
        &self,
        t: &Table,
        format: Format,
        mut body: Box<dyn Read + Send>,
        handle: &tokio::runtime::Handle,
        mut keyed: Option<&mut KeyedPartition>,
    ) -> Staged {
        let max_rows = t.spec.segment.max_rows;
        let limits = self.ingest_limits;
        // A segment's rows in memory are bounded by bytes even without segment.max_bytes.
        let max_bytes = Some(
            t.spec
                .max_bytes()
                .ok()
                .flatten()
                .unwrap_or(u64::MAX)
                .min(limits.max_segment_bytes),
        );
        let batch_rows = max_rows.min(65536);
        // Decoding and sealing overlap: full segments go through a one-slot channel to one
        // builder thread per core, so at most `builders + 2` segments' rows are in memory.
        let builders = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, 4);
        let (tx, rx) = std::sync::mpsc::sync_channel::<(Option<String>, Vec<RecordBatch>)>(1);
        let rx = std::sync::Mutex::new(rx);
        // Keyed tables: built segments go back to the decoding side, which then reads
        // PARTIAL merges' earlier rows from them instead of memory.
        let (built_tx, built_rx) = std::sync::mpsc::channel::<(String, Arc<SegmentReader>)>();
        let built_tx = keyed.is_some().then_some(built_tx);
        let failed = std::sync::atomic::AtomicBool::new(false);
        let (rx, failed) = (&rx, &failed);
        std::thread::scope(move |scope| {
            let workers: Vec<_> = (0..builders)
                .map(|_| {
                    let built_tx = built_tx.clone();
                    scope.spawn(move || {
                        let mut staged: Vec<Arc<LoadedSegment>> = Vec::new();
                        loop {
                            let next = rx.lock().map(|r| r.recv());
                            let Ok(Ok((id, batches))) = next else {
                                return (staged, None);
                            };
                            if failed.load(Ordering::Relaxed) {
                                continue;
                            }
                            match self.stage(t, SegmentKind::Rows, &t.schema, &batches, id, handle)
                            {
                                Ok(s) => {
                                    if let Some(b) = &built_tx {
                                        let _ = b.send((s.meta.id.clone(), s.reader.clone()));
                                    }
                                    staged.push(s)
                                }
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
                let ingest_schema = ingest_schema(&t.schema);
                let mut seal = |batches: Vec<RecordBatch>| -> Result<()> {
                    let job = match keyed.as_deref_mut() {
                        None => (None, batches),
                        Some(k) => {
                            while let Ok((id, reader)) = built_rx.try_recv() {
                                k.sealed(&id, reader);
                            }
                            // Doc ids are the order rows are applied in: one batch per
                            // segment, applied before it is built.
                            let rows = arrow::compute::concat_batches(&ingest_schema, &batches)?;
                            let id = self.new_segment_id(&t.spec.name);
                            match k.apply_segment(id.clone(), &rows)? {
                                Some(kept) => (Some(id), vec![kept]),
                                None => return Ok(()),
                            }
                        }
                    };
                    tx.send(job).map_err(|_| {
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
                        decode_ndjson(&mut body, &t.schema, batch_rows, &limits.decode, &mut sink)?;
                    }
                    Format::Csv => {
                        decode_csv(&mut body, &t.schema, batch_rows, &limits.decode, &mut sink)?;
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
            if let Some(k) = keyed {
                for s in &staged {
                    k.sealed(&s.meta.id, s.reader.clone());
                }
            }
            // A builder's own error explains a "builder stopped" on the decoding side.
            match (decoded, build_error) {
                (_, Some(e)) | (Err(e), None) => Err((e, staged)),
                (Ok(()), None) => Ok(staged),
            }
        })
    }

    /// Builds one segment and uploads it (unpublished). Called from a blocking thread.
    pub(crate) fn stage(
        &self,
        t: &Table,
        kind: SegmentKind,
        schema: &SegmentSchema,
        batches: &[RecordBatch],
        id: Option<String>,
        handle: &tokio::runtime::Handle,
    ) -> Result<Arc<LoadedSegment>> {
        let bytes = Bytes::from(build_segment(schema, batches, &self.build)?);
        let id = id.unwrap_or_else(|| self.new_segment_id(&t.spec.name));
        let (meta, reader) = handle.block_on(t.home.stage(&t.spec.name, kind, id, bytes))?;
        Ok(Arc::new(LoadedSegment { meta, reader }))
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
async fn load_segments(
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
