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
//! start by the node that wrote them). A table is created with one conditional write and
//! dropped through a tombstone ([`crate::metastore::drop_table`]); a drop a crash
//! interrupted is finished at the next start. A table that cannot be loaded (its deep store
//! unreachable, a segment that cannot be opened) does not stop the server: it is
//! [`Unavailable`], named in errors and health, and loaded again in the background
//! ([`recovery`]). The data dir belongs to one process at a time (a lock file) and has a
//! node id, which names the objects this node stages.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use basalt_segment::{BuildOptions, RoaringBitmap, SegmentReader, SegmentSchema};
use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use tracing::info;

use crate::decode::DecodeLimits;
use crate::error::{IngestError, Result};
pub use crate::home::open_deep_store;
use crate::home::{node_tag, Home};
pub use crate::metastore::SegmentMeta;
use crate::metastore::{self, TableState};
use crate::mutable::MutablePart;
use crate::policy::{file_url, TablePolicy};
use crate::realtime::{Ingester, IngestionStatus};
use crate::spec::TableSpec;

mod batch;
mod lock;
mod placement;
mod publish;
mod read;
pub mod recovery;
mod tier;

use batch::BatchKeys;
pub use placement::{Everything, Placement};
use publish::load_segments;
pub(crate) use publish::{persisted_valid, PublishChange};
pub use read::{docs_from, Readers};
pub use recovery::Unavailable;

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
    /// The sealed segments this node holds (all of them unless a cluster placement says
    /// otherwise: [`Placement`]).
    pub segments: Vec<Arc<LoadedSegment>>,
    /// Every sealed segment the metastore lists for the table, held here or not (what a
    /// broker routes).
    pub published: Arc<Vec<SegmentMeta>>,
    /// The checkpoints of the same metastore state as `published`: every offset of a
    /// partition below its checkpoint is in `published` (or its quarantine).
    pub checkpoints: Arc<BTreeMap<i32, i64>>,
    pub quarantine: Vec<Arc<LoadedSegment>>,
    /// Real-time rows not sealed yet, per partition (a partition being sealed has two).
    pub mutable: Vec<Arc<MutablePart>>,
    /// Upsert tables only. Rows are appended to a mutable part before the view with their
    /// valid docs is installed, so a query sees either a flush's rows and their valid docs
    /// or neither (rows past the bitmaps it holds are not valid to it).
    pub valid: Option<Arc<ValidDocs>>,
    /// The warehouse tier of the same metastore state as `published`: rows below its
    /// boundary that are not in `published` are in its Iceberg snapshot.
    pub warehouse: Option<Arc<crate::warehouse::WarehouseState>>,
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
    /// The incarnation loaded (see [`TableState::generation`]).
    pub generation: String,
    pub(crate) home: Arc<Home>,
    view: RwLock<Arc<TableView>>,
    /// Serialises metastore writes of this table.
    publish: tokio::sync::Mutex<()>,
    realtime: Mutex<Option<Ingester>>,
    /// Upsert and dedup tables without a stream source: the key space of batch ingests
    /// (one ingest at a time). `None` until the first ingest after load restores it.
    batch_keys: tokio::sync::Mutex<Option<BatchKeys>>,
}

impl Table {
    fn new(spec: TableSpec, generation: String, home: Arc<Home>, view: TableView) -> Table {
        Table {
            schema: spec.segment_schema(),
            spec,
            generation,
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

    /// The published segments and checkpoints as the metastore holds them now (one state),
    /// without changing the view: a broker whose view is behind a seal catches up for one
    /// query. `None` when the table was dropped or recreated meanwhile.
    pub async fn published_now(&self) -> Result<Option<(Vec<SegmentMeta>, BTreeMap<i32, i64>)>> {
        Ok(self
            .home
            .metastore
            .get(&self.spec.name)
            .await?
            .filter(|s| !s.value.is_dropped() && s.value.generation == self.generation)
            .map(|s| (s.value.segments, s.value.checkpoints)))
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
            // Every published segment, held here or not (a broker holds none).
            rows: v.published.iter().map(|s| s.rows).sum(),
            segments: v.published.len() as u64,
            bytes: v.published.iter().map(|s| s.bytes).sum(),
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

    /// Replaces mutable segments with one holding the same rows from a later start in one
    /// view swap (a consuming replica taking over a partition rebases onto its checkpoint).
    pub(crate) fn replace_mutable(&self, old: &[Arc<MutablePart>], new: Arc<MutablePart>) {
        self.change_view(|v| {
            v.mutable.retain(|p| !old.iter().any(|r| Arc::ptr_eq(p, r)));
            v.mutable.push(new);
        });
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
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
    /// How long a real-time consumer's lease lasts without renewal (default 30 s).
    pub consumer_lease: std::time::Duration,
    /// Which segments this node loads and whether it consumes streams (default: all).
    pub placement: Arc<dyn Placement>,
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
            consumer_lease: std::time::Duration::from_secs(30),
            placement: Arc::new(Everything),
        }
    }
}

pub struct TableStore {
    data_dir: PathBuf,
    /// This data dir's node id (`<data_dir>/node_id`): names the objects it stages.
    pub(crate) node: String,
    /// Held while the store is open: one process per data dir.
    _lock: lock::DataDirLock,
    cache_dir: PathBuf,
    /// The server's deep store: tables without a `deep_store` of their own live here.
    default_home: Arc<Home>,
    /// Homes of tables with their own `deep_store`, by URL.
    homes: Mutex<HashMap<String, Arc<Home>>>,
    tables: RwLock<BTreeMap<String, Arc<Table>>>,
    /// Tables that exist but could not be loaded yet, with why.
    unavailable: RwLock<BTreeMap<String, Unavailable>>,
    /// Why the server's own deep store could not be listed, while it cannot.
    store_error: RwLock<Option<String>>,
    pub(crate) build: BuildOptions,
    seq: AtomicU64,
    /// Serialises table creation, deletion and loading.
    admin: tokio::sync::Mutex<()>,
    pub(crate) policy: TablePolicy,
    ingest_limits: IngestLimits,
    pub(crate) consumer_lease: std::time::Duration,
    pub(crate) placement: Arc<dyn Placement>,
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
    /// Opens the store: takes the data dir's lock, then loads every table of the server's
    /// deep store and of the tables with their own deep store (remembered in
    /// `<data_dir>/catalog/`), removing objects a crashed ingest or seal left unpublished and
    /// finishing interrupted drops, and starts real-time ingestion. A table (or the deep
    /// store) that cannot be read now is marked unavailable and loaded again in the
    /// background: the server starts either way.
    pub async fn open(cfg: StoreConfig) -> Result<Arc<TableStore>> {
        std::fs::create_dir_all(&cfg.data_dir)?;
        let lock = lock::DataDirLock::take(&cfg.data_dir)?;
        let node = lock::node_id(&cfg.data_dir)?;
        let cache_dir = cfg.data_dir.join("cache");
        std::fs::create_dir_all(&cache_dir)?;
        std::fs::create_dir_all(cfg.data_dir.join("catalog"))?;
        let default_home = Arc::new(Home::open(
            &cfg.data_dir,
            cfg.deep_store.as_deref(),
            cache_dir.clone(),
        )?);
        let ts = Arc::new(TableStore {
            data_dir: cfg.data_dir.clone(),
            node,
            _lock: lock,
            cache_dir,
            default_home,
            homes: Mutex::new(HashMap::new()),
            tables: RwLock::new(BTreeMap::new()),
            unavailable: RwLock::new(BTreeMap::new()),
            store_error: RwLock::new(None),
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
            consumer_lease: cfg.consumer_lease,
            placement: cfg.placement,
        });
        {
            let _g = ts.admin.lock().await;
            ts.discover().await;
        }
        ts.start_recovery();
        Ok(ts)
    }

    /// The home for a table's `deep_store` (the server's own when absent or equal).
    async fn home_for(&self, url: Option<&str>) -> Result<Arc<Home>> {
        let Some(url) = url.filter(|u| Some(*u) != self.default_home.url.as_deref()) else {
            return Ok(self.default_home.clone());
        };
        if let Some(h) = self.homes.lock().get(url) {
            return Ok(h.clone());
        }
        let home = Arc::new(Home::open(
            &self.data_dir,
            Some(url),
            self.cache_dir.clone(),
        )?);
        Ok(self
            .homes
            .lock()
            .entry(url.to_string())
            .or_insert(home)
            .clone())
    }

    /// Opens a table's published segments, cleans up unpublished ones and starts its
    /// real-time ingestion. On failure nothing is registered (the caller marks the table
    /// unavailable).
    async fn load_table(
        self: &Arc<Self>,
        home: Arc<Home>,
        state: TableState,
    ) -> Result<Arc<Table>> {
        state.spec.validate()?;
        home.cleanup_unpublished(&state, &self.node).await?;
        let placed = self.placed(&state.spec, &state.segments, &[]);
        let view = TableView {
            segments: load_segments(&home, &state.spec.name, &placed, &[]).await?,
            published: Arc::new(state.segments.clone()),
            checkpoints: Arc::new(state.checkpoints.clone()),
            quarantine: load_segments(&home, &state.spec.name, &state.quarantine, &[]).await?,
            mutable: Vec::new(),
            valid: persisted_valid(&home, &state).await?.map(Arc::new),
            warehouse: state.warehouse.clone().map(Arc::new),
        };
        info!(table = %state.spec.name, segments = view.segments.len(), deep_store = %home.describe(), "loaded table");
        let table = Arc::new(Table::new(state.spec, state.generation, home, view));
        self.unavailable.write().remove(&table.spec.name);
        self.tables
            .write()
            .insert(table.spec.name.clone(), table.clone());
        self.start_realtime(&table);
        Ok(table)
    }

    fn start_realtime(self: &Arc<Self>, table: &Arc<Table>) {
        if table.spec.is_realtime() && self.placement.consumes(&table.spec) {
            let ingester = Ingester::start(self.clone(), table.clone());
            *table.realtime.lock() = Some(ingester);
        }
    }

    /// The metastore of the server's own deep store, where state that belongs to no table
    /// lives (its documents: the semantic layer's models).
    pub fn metastore(&self) -> Arc<dyn crate::metastore::Metastore> {
        self.default_home.metastore.clone()
    }

    pub fn deep_store_description(&self) -> String {
        self.default_home.describe()
    }

    pub fn table(&self, name: &str) -> Option<Arc<Table>> {
        self.tables.read().get(name).cloned()
    }

    /// Loaded tables.
    pub fn table_names(&self) -> Vec<String> {
        self.tables.read().keys().cloned().collect()
    }

    /// Tables that exist but cannot be used now, with why.
    pub fn unavailable(&self) -> Vec<Unavailable> {
        self.unavailable.read().values().cloned().collect()
    }

    /// The reason a table cannot be used now, if it exists but is unavailable.
    pub fn unavailable_table(&self, name: &str) -> Option<Unavailable> {
        self.unavailable.read().get(name).cloned()
    }

    /// Why the server's own deep store cannot be read now, if it cannot.
    pub fn store_error(&self) -> Option<String> {
        self.store_error.read().clone()
    }

    /// Creates a table. A table whose deep store already holds it under the same spec is
    /// attached instead (its segments and checkpoints are found there): the deep store is
    /// the source of truth, the local data dir only a cache. Returns the table and whether
    /// it was attached. Creation is one conditional write: of two servers creating the same
    /// table, one wins and the other gets [`IngestError::TableExists`].
    /// Checks `spec` against the operator's limits (as [`TableStore::create_table`] does
    /// first), for callers that act on a spec before creating its table.
    pub fn check_policy(&self, spec: &TableSpec) -> Result<()> {
        self.policy.check(spec, &self.allowed_roots)
    }

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
        if self.tables.read().contains_key(&spec.name)
            || self.unavailable.read().contains_key(&spec.name)
        {
            return Err(IngestError::TableExists(spec.name));
        }
        let home = self.home_for(spec.deep_store.as_deref()).await?;
        let existing = home
            .metastore
            .get(&spec.name)
            .await?
            .filter(|s| !s.value.is_dropped());
        let (table, attached) = match existing {
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
                let state = TableState::new(spec.clone());
                home.metastore.create(&state).await?;
                info!(table = %spec.name, generation = %state.generation, deep_store = %home.describe(), "created table");
                (self.load_table(home.clone(), state).await?, false)
            }
        };
        self.remember(&spec)?;
        Ok((table, attached))
    }

    /// Drops a table: stops its ingestion, commits its tombstone (from then on it is gone
    /// for every reader), deletes its incarnation's objects and marks the tombstone purged.
    /// A crash between the steps is finished at the next start; objects of another
    /// incarnation of the same name are never touched.
    pub async fn drop_table(&self, name: &str) -> Result<()> {
        let _g = self.admin.lock().await;
        let Some(table) = self.table(name) else {
            return self.drop_unavailable(name).await;
        };
        let ingester = table.realtime.lock().take();
        if let Some(i) = ingester {
            tokio::task::spawn_blocking(move || i.stop())
                .await
                .map_err(|e| IngestError::Io(std::io::Error::other(e.to_string())))?;
        }
        let _p = table.publish.lock().await;
        let ms = table.home.metastore.as_ref();
        let tomb = match metastore::drop_table(ms, name, &table.generation).await {
            Ok(t) => t,
            // Dropped or replaced elsewhere: this server just forgets it.
            Err(IngestError::NoSuchTable(_) | IngestError::Fenced { .. }) => {
                self.tables.write().remove(name);
                self.forget(name);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        self.tables.write().remove(name);
        self.forget(name);
        crate::fault::hit("drop.after_tombstone");
        self.purge(&table.home, &tomb).await?;
        info!(table = %name, "dropped table");
        Ok(())
    }

    /// Deletes a dropped incarnation's objects and marks its tombstone purged.
    pub(crate) async fn purge(&self, home: &Home, tomb: &TableState) -> Result<()> {
        home.delete_incarnation(tomb).await?;
        crate::fault::hit("drop.after_delete");
        metastore::mark_purged(home.metastore.as_ref(), &tomb.spec.name, &tomb.generation).await
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

    /// A new segment id: unique, in creation order, and naming this node (see
    /// [`crate::home::node_tag`]).
    pub(crate) fn new_segment_id(&self, table: &str) -> String {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let rand = uuid::Uuid::new_v4().simple().to_string();
        format!(
            "{table}__{ms}__{seq:06}__{}{}",
            &rand[..8],
            node_tag(&self.node)
        )
    }
}
