//! Real-time ingestion: a table whose spec names a `source` is consumed continuously. In:
//! messages of every partition of the stream ([`source::Source`]: Kafka or the built-in
//! generator). Out: rows queryable at once in per-partition mutable segments, sealed into
//! immutable segments published with the partition's checkpoint delta in one metastore
//! commit.
//!
//! One ingest thread per table polls the source, decodes each message into its partition's
//! [`MutablePart`] (or its quarantine), and flushes decoded rows into the part at least every
//! [`FLUSH_EVERY`] so they are queryable within a second. A part that reaches
//! `segment.max_rows`, `max_age` or `max_bytes` is rotated out: a fresh part takes the next
//! rows at once while the [`seal`] thread builds, uploads and publishes the old one, and swaps
//! it for its sealed segment in the table's view in one step. Consumption does not wait for a
//! seal, except as back-pressure when seals fall behind.
//!
//! In a cluster the session consumes only the partitions its [`crate::Placement`] assigns to
//! this server, without a consumer lease (the checkpoint compare-and-swap fences a stale
//! consumer's publish), and follows changes of the assignment partition by partition: one
//! given away leaves the view, one taken over starts at the metastore's checkpoint.
//!
//! Exactly once: every session starts at the metastore checkpoints (never at Kafka's
//! committed offsets); messages below a partition's position are skipped; a seal's delta
//! `(from, to]` must start where the partition's checkpoint ends. After an error the session
//! drops its unsealed rows and starts again from the checkpoints.

pub mod generator;
pub mod kafka;
pub mod kafka_config;
pub mod memory;
mod ownership;
pub mod seal;
pub mod source;
pub mod status;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tracing::{info, warn};

use crate::decode::ingest_schema;
use crate::error::IngestError;
use crate::home::SegmentKind;
use crate::metastore::CheckpointDelta;
use crate::metastore::TableState;
use crate::mutable::{MutablePart, MutableSegment, Offsets};
use crate::quarantine::{
    quarantine_batch, quarantine_schema, MessageDecoder, MessageOrigin, QuarantineEntry,
};
use crate::spec::parse_duration;
use crate::store::ValidDocs;
use crate::store::{Table, TableStore};
use crate::upsert::keymap::KeyHash;
use crate::upsert::{KeyedPartition, KeyedTable, BATCH_PARTITION};
use seal::{KeyedSeal, SealJob, SealOutcome, Sealer};
use source::{open_source, Message, Source, SourceError};
pub use status::{IngestionState, IngestionStatus, KeyedStatus, PartitionStatus};

/// Decoded rows become queryable at least this often.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// ... or when a partition has decoded this many rows.
const FLUSH_ROWS: usize = 16_384;
/// How long one poll of the source waits for a message.
const POLL_WAIT: Duration = Duration::from_millis(50);
/// High watermarks and broker reachability are refreshed this often.
const WATERMARKS_EVERY: Duration = Duration::from_secs(2);
/// A cluster's assignment of partitions to this server is checked this often.
const ASSIGNMENT_EVERY: Duration = Duration::from_millis(250);
/// A consuming replica holding more parts than this unsealed by the owner starts the
/// partition again from the checkpoint (its memory stays bounded while an owner is stuck).
const RETAINED_PARTS_MAX: usize = 4;
/// New partitions of the stream are looked for this often.
const PARTITIONS_EVERY: Duration = Duration::from_secs(30);
/// Status is published this often.
const STATUS_EVERY: Duration = Duration::from_millis(250);
/// A real-time segment without `segment.max_age` is sealed after this long (Pinot's default
/// flush threshold time).
const DEFAULT_MAX_AGE: Duration = Duration::from_secs(6 * 3600);

/// A running ingester of one table.
pub struct Ingester {
    stop: Arc<AtomicBool>,
    status: Arc<Mutex<IngestionStatus>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Ingester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingester")
            .field("table", &self.status.lock().table)
            .finish()
    }
}

/// What the ingest and seal threads share.
pub(crate) struct Ctx {
    pub store: Arc<TableStore>,
    pub table: Arc<Table>,
    pub stop: Arc<AtomicBool>,
    pub status: Arc<Mutex<IngestionStatus>>,
    pub handle: tokio::runtime::Handle,
    /// The consumer lease this server holds while a session consumes (seals publish under
    /// it).
    pub lease: Mutex<Option<crate::metastore::Lease>>,
}

impl Ctx {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Sleeps up to `d`, returning early (true) when the ingester is stopped.
    pub(crate) fn pause(&self, d: Duration) -> bool {
        let until = Instant::now() + d;
        while Instant::now() < until {
            if self.stopped() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20).min(until - Instant::now()));
        }
        self.stopped()
    }

    fn set_state(&self, state: IngestionState, error: Option<String>) {
        let mut s = self.status.lock();
        s.state = state;
        s.broker_reachable = match state {
            IngestionState::Consuming => true,
            IngestionState::BrokerUnreachable => false,
            _ => s.broker_reachable,
        };
        if error.is_some() || state == IngestionState::Consuming {
            s.error = error;
        }
    }

    /// The source answered: consuming again if it was not (the error is cleared).
    fn reachable(&self) {
        let mut s = self.status.lock();
        if s.state == IngestionState::Consuming {
            s.broker_reachable = true;
        } else {
            drop(s);
            self.set_state(IngestionState::Consuming, None);
        }
    }
}

impl Ingester {
    /// Starts consuming the table's source on a thread of its own. Must be called from
    /// within the tokio runtime (seals use it for uploads and metastore commits).
    pub fn start(store: Arc<TableStore>, table: Arc<Table>) -> Ingester {
        let describe = table
            .spec
            .source
            .as_ref()
            .map(source::describe)
            .unwrap_or_default();
        let status = Arc::new(Mutex::new(IngestionStatus::new(&table.spec.name, describe)));
        let stop = Arc::new(AtomicBool::new(false));
        let ctx = Arc::new(Ctx {
            store,
            table: table.clone(),
            stop: stop.clone(),
            status: status.clone(),
            handle: tokio::runtime::Handle::current(),
            lease: Mutex::new(None),
        });
        let thread = std::thread::Builder::new()
            .name(format!("ingest-{}", table.spec.name))
            .spawn(move || run(&ctx))
            .expect("spawn the ingest thread");
        Ingester {
            stop,
            status,
            thread: Some(thread),
        }
    }

    pub fn status(&self) -> IngestionStatus {
        self.status.lock().clone()
    }

    /// Stops consuming and waits for the threads. Unsealed rows are dropped; they are
    /// consumed again from the checkpoints at the next start.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Ingester {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Runs sessions until stopped; a failed session is retried from the checkpoints. A panic
/// in a session is caught like an error: its unsealed rows leave the view (they are read
/// again from the checkpoints) and the table is reported in error until the next session
/// consumes.
fn run(ctx: &Arc<Ctx>) {
    let mut backoff = Duration::from_secs(1);
    while !ctx.stopped() {
        let started = Instant::now();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| session(ctx)))
            .unwrap_or_else(|p| {
                let e = IngestError::panicked("the ingest thread", p);
                drop_unsealed(ctx);
                Err(e.to_string())
            });
        match outcome {
            Ok(()) => break,
            Err(e) => {
                warn!(table = %ctx.table.spec.name, error = %e, "real-time ingestion stopped; restarting from the checkpoints");
                ctx.set_state(IngestionState::Error, Some(e));
                if started.elapsed() > Duration::from_secs(60) {
                    backoff = Duration::from_secs(1);
                }
                if ctx.pause(backoff) {
                    break;
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
    ownership::release(ctx);
    ctx.status.lock().state = IngestionState::Stopped;
}

/// After a panic left a session half-way: every mutable part leaves the view (its offsets
/// are read again from the checkpoints), with an upsert table's valid docs back to what
/// its published snapshots say.
fn drop_unsealed(ctx: &Ctx) {
    let t = &ctx.table;
    let parts: Vec<Arc<MutablePart>> = t.view().mutable.clone();
    let valid = match KeyedTable::of(&t.spec) {
        Some(k) if k.is_upsert() => persisted_valid_now(ctx),
        _ => None,
    };
    t.remove_mutable(&parts, valid);
}

/// One partition's consumption state.
struct PartitionIngest {
    partition: i32,
    decoder: MessageDecoder,
    quarantined: Vec<QuarantineEntry>,
    /// The messages decoded since the last flush (rows or quarantine entries).
    offsets: Offsets,
    /// Receives the partition's rows; rotated out at a seal.
    part: Arc<MutablePart>,
    /// Parts rotated out without a seal — this server consumes the partition as a replica,
    /// or is handing it over — oldest first. They stay queryable until the partition's
    /// checkpoint passes their last message.
    retained: Vec<Arc<MutablePart>>,
    /// Whether this server seals the partition (its owner, its parts starting at the
    /// checkpoint); a replica that becomes the owner rebases its parts first.
    sealing: bool,
    /// Messages in `part` plus those decoded but not flushed into it.
    entries: usize,
    /// Memory of `part` at its last flush, plus the payload bytes decoded since: what
    /// `segment.max_bytes` is checked against on every message.
    bytes: u64,
    /// The checkpoint `part` started at.
    from: Option<i64>,
    /// The next offset to read (`None` until the first message when there was no checkpoint).
    next: Option<i64>,
    checkpoint: Option<i64>,
    high_watermark: Option<i64>,
    last_seal: Option<chrono::DateTime<chrono::Utc>>,
    events: u64,
    quarantined_total: u64,
    rate_mark: (Instant, u64),
    events_per_second: f64,
    /// The partition's latest keyed snapshot (published or submitted with a seal).
    snapshot_path: Option<String>,
}

/// Session-wide settings.
struct Limits {
    max_rows: usize,
    max_age: Duration,
    max_bytes: Option<u64>,
}

fn new_part(
    table: &Table,
    store: &TableStore,
    partition: i32,
    from: Option<i64>,
) -> Arc<MutablePart> {
    let qschema = quarantine_schema();
    // Chunks live in memory for seconds: no zstd, no star-trees and no text indexes (the
    // sealed segment has them; `TEXT_MATCH` tokenizes a chunk's values instead).
    let build = basalt_segment::BuildOptions {
        compress: false,
        star_trees: false,
        text_indexes: false,
        ..store.build.clone()
    };
    Arc::new(MutablePart::new(
        partition,
        from,
        store.new_segment_id(&table.spec.name),
        MutableSegment::new(
            table.schema.clone(),
            ingest_schema(&table.schema),
            build.clone(),
        ),
        MutableSegment::new(qschema.clone(), ingest_schema(&qschema), build),
    ))
}

struct Session<'a> {
    ctx: &'a Ctx,
    /// Every partition of the stream (those assigned here are in `parts`).
    partitions: Vec<i32>,
    topic: String,
    limits: Limits,
    parts: BTreeMap<i32, PartitionIngest>,
    sealer: Sealer,
    /// Positions to commit to the broker (lag monitoring) after published seals.
    commits: Vec<(i32, i64)>,
    seals: u64,
    /// Upsert and dedup tables: each partition's keyed state.
    keyed: BTreeMap<i32, KeyedPartition>,
    keyed_table: Option<Arc<KeyedTable>>,
    /// Keyed snapshot objects of partitions at session start.
    snapshots: BTreeMap<i32, String>,
}

fn session(ctx: &Arc<Ctx>) -> Result<(), String> {
    let t = &ctx.table;
    let spec = t.spec.source.as_ref().ok_or("the table has no source")?;
    ctx.set_state(IngestionState::Starting, None);
    // The lease first, then the checkpoints: a previous owner's last publish is read.
    if ctx.store.placement.leases() && ownership::acquire(ctx)?.is_none() {
        return Ok(());
    }
    ctx.set_state(IngestionState::Starting, None);
    // Segments another server published while this one was not the owner come into the
    // view before consuming resumes after them.
    let state = ctx
        .handle
        .block_on(ctx.store.reload(t))
        .map_err(|e| format!("loading the checkpoints and published segments: {e}"))?
        .ok_or_else(|| format!("table {:?} is not in the metastore", t.spec.name))?;
    let checkpoints = state.checkpoints.clone();
    let keyed_table = KeyedTable::of(&t.spec).map(Arc::new);
    let mut source = open_source(&t.spec.name, spec, &ctx.store.policy.secret_env_prefix)
        .map_err(|e| e.to_string())?;
    let max_partitions = ctx.store.policy.max_partitions;
    let partitions = loop {
        match source.partitions(Duration::from_secs(2)) {
            Ok(p) if p.len() > max_partitions => {
                return Err(format!(
                    "the stream has {} partitions, more than this server consumes for one \
                     table ({max_partitions}, tables.max_partitions)",
                    p.len()
                ))
            }
            Ok(p) => break p,
            Err(SourceError::Unreachable(e)) => {
                ctx.set_state(IngestionState::BrokerUnreachable, Some(e));
                if ctx.pause(Duration::from_millis(500)) {
                    return Ok(());
                }
            }
            Err(e) => return Err(e.to_string()),
        }
    };
    // In a cluster, only the partitions assigned here (all of them otherwise).
    let owned: Vec<i32> = partitions
        .iter()
        .copied()
        .filter(|&p| ctx.store.placement.consumes_partition(&t.spec, p))
        .collect();
    let limits = Limits {
        max_rows: t.spec.segment.max_rows,
        max_age: t
            .spec
            .segment
            .max_age
            .as_deref()
            .and_then(|a| parse_duration(a).ok())
            .unwrap_or(DEFAULT_MAX_AGE),
        max_bytes: t.spec.max_bytes().ok().flatten(),
    };
    let topic = match (&spec.kafka, &spec.memory) {
        (Some(k), _) => k.topic.clone(),
        (None, Some(m)) => m.topic.clone(),
        (None, None) => "generator".into(),
    };
    let keyed = match &keyed_table {
        Some(k) => restore_keyed(ctx, k, &state, &owned)?,
        None => BTreeMap::new(),
    };
    let mut s = Session {
        ctx,
        partitions,
        topic,
        limits,
        parts: BTreeMap::new(),
        sealer: Sealer::start(ctx),
        commits: Vec::new(),
        seals: 0,
        keyed,
        keyed_table,
        snapshots: state.keyed_snapshots.clone(),
    };
    for p in owned {
        s.add_partition(p, checkpoints.get(&p).copied())?;
    }
    info!(table = %t.spec.name, source = %source::describe(spec), checkpoints = ?checkpoints, partitions = ?s.parts.keys().collect::<Vec<_>>(), "real-time ingestion started");
    let result = s.consume(source.as_mut());
    // Whatever is not sealed is dropped from the view; it is read again from the checkpoint.
    let retired = s.sealer.stop();
    let mut parts: Vec<Arc<MutablePart>> =
        s.parts.values().flat_map(PartitionIngest::parts).collect();
    parts.extend(retired);
    // Upsert: the dropped rows may have superseded sealed rows; the valid docs go back to
    // what the published snapshots say in the same view swap, so no key is hidden until
    // the next session restores.
    let valid = match &s.keyed_table {
        Some(k) if k.is_upsert() => persisted_valid_now(ctx),
        _ => None,
    };
    t.remove_mutable(&parts, valid);
    result
}

/// The valid docs the table's published keyed snapshots hold (`None`, logged, when they
/// cannot be read: the next session's restore installs them).
fn persisted_valid_now(ctx: &Ctx) -> Option<ValidDocs> {
    let t = &ctx.table;
    let read = ctx.handle.block_on(async {
        match t.home.metastore.get(&t.spec.name).await? {
            Some(state) => crate::store::persisted_valid(&t.home, &state.value).await,
            None => Ok(None), // dropped
        }
    });
    match read {
        Ok(v) => v,
        Err(e) => {
            warn!(table = %t.spec.name, error = %e, "could not read the keyed snapshots at the end of a session");
            None
        }
    }
}

/// Rebuilds each partition's keyed state from its snapshot and the sealed segments, and
/// installs the valid docs (upsert) in the table's view. Slow for many keys: the key columns
/// of every valid doc are read and hashed.
fn restore_keyed(
    ctx: &Ctx,
    cfg: &Arc<KeyedTable>,
    state: &TableState,
    owned: &[i32],
) -> Result<BTreeMap<i32, KeyedPartition>, String> {
    let t = &ctx.table;
    let started = Instant::now();
    let view = t.view();
    let mut out = BTreeMap::new();
    let mut valid = ValidDocs::new();
    for (&partition, path) in &state.keyed_snapshots {
        if partition == BATCH_PARTITION || !owned.contains(&partition) {
            continue;
        }
        let slots = ctx
            .handle
            .block_on(t.home.read_keyed_snapshot(path))
            .map_err(|e| e.to_string())?;
        let k = KeyedPartition::restore(cfg.clone(), ingest_schema(&t.schema), &slots, |id| {
            view.segment_reader(id)
        })
        .map_err(|e| format!("{path}: {e}"))?;
        valid.extend(k.valid_docs());
        out.insert(partition, k);
    }
    if cfg.is_upsert() {
        // The view has these from the load or the last session's end already, unless
        // reading the snapshots failed there.
        t.update_valid(valid.into_iter().collect());
    }
    let keys: usize = out.values().map(|k| k.keys()).sum();
    info!(table = %t.spec.name, keys, partitions = out.len(), elapsed_ms = started.elapsed().as_millis() as u64, "restored keyed state");
    Ok(out)
}

impl Session<'_> {
    fn add_partition(&mut self, partition: i32, checkpoint: Option<i64>) -> Result<(), String> {
        let part = new_part(&self.ctx.table, &self.ctx.store, partition, checkpoint);
        self.ctx.table.add_mutable(part.clone());
        if let Some(cfg) = &self.keyed_table {
            let t = &self.ctx.table;
            self.keyed
                .entry(partition)
                .or_insert_with(|| KeyedPartition::new(cfg.clone(), ingest_schema(&t.schema)))
                .start_part(part.clone())
                .map_err(|e| e.to_string())?;
        }
        // Counters run on across sessions.
        let (events, quarantined_total, keyed_counters) = self
            .ctx
            .status
            .lock()
            .partitions
            .iter()
            .find(|p| p.partition == partition)
            .map(|p| {
                (
                    p.events,
                    p.quarantined,
                    p.keyed.as_ref().map(|k| k.counters),
                )
            })
            .unwrap_or((0, 0, None));
        if let (Some(k), Some(c)) = (self.keyed.get_mut(&partition), keyed_counters) {
            k.counters = c;
        }
        self.parts.insert(
            partition,
            PartitionIngest {
                partition,
                decoder: {
                    let d = MessageDecoder::new(&self.ctx.table.schema, FLUSH_ROWS);
                    // PARTIAL upserts may refuse a decoded row at its merge: keep origins.
                    match &self.keyed_table {
                        Some(k) if k.is_partial() => d.with_origins(),
                        _ => d,
                    }
                },
                quarantined: Vec::new(),
                offsets: Offsets::default(),
                part,
                retained: Vec::new(),
                sealing: self.keyed_table.is_some()
                    || self
                        .ctx
                        .store
                        .placement
                        .seals_partition(&self.ctx.table.spec, partition),
                entries: 0,
                bytes: 0,
                from: checkpoint,
                next: checkpoint,
                checkpoint,
                high_watermark: None,
                last_seal: None,
                events,
                quarantined_total,
                rate_mark: (Instant::now(), events),
                events_per_second: 0.0,
                snapshot_path: self.snapshots.get(&partition).cloned(),
            },
        );
        Ok(())
    }

    /// Makes a partition's decoded rows queryable; on a keyed table they go through the
    /// partition's key map first, and the changed valid docs follow the rows into the view.
    fn flush(&mut self, id: i32) -> Result<(), String> {
        crate::fault::hit("ingest.flush");
        let mut keyed = self.keyed.remove(&id);
        let result = {
            let others = &self.keyed;
            let elsewhere = |h: KeyHash| others.values().any(|k| k.contains(h));
            let p = self.parts.get_mut(&id).expect("known partition");
            p.flush(
                keyed
                    .as_mut()
                    .map(|k| (k, &elsewhere as &dyn Fn(KeyHash) -> bool)),
            )
        };
        if let Some(mut k) = keyed {
            if result.is_ok() {
                self.ctx.table.update_valid(k.take_changes());
            }
            self.keyed.insert(id, k);
        }
        result
    }

    /// A consumer that is not the owner of a non-keyed partition (a consuming replica)
    /// drops its retained parts once the owner's checkpoint passes them, and takes over
    /// sealing when it becomes the owner: its parts are rebased onto the checkpoint first
    /// (rows of messages before it are in the owner's published segments). An owner that
    /// stops being one (a server joined) consumes on as a replica.
    fn follow_roles(&mut self, source: &mut dyn Source) -> Result<(), String> {
        if self.keyed_table.is_some() {
            return Ok(());
        }
        let t = self.ctx.table.clone();
        let view = t.view();
        let ids: Vec<i32> = self.parts.keys().copied().collect();
        for id in ids {
            let seals = self.ctx.store.placement.seals_partition(&t.spec, id);
            let checkpoint = view.checkpoints.get(&id).copied();
            let p = self.parts.get_mut(&id).expect("known partition");
            let (passed, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut p.retained)
                .into_iter()
                .partition(|r| checkpoint.is_some_and(|c| r.recorded_end().is_none_or(|e| e <= c)));
            p.retained = kept;
            if !passed.is_empty() {
                t.remove_mutable(&passed, None);
            }
            if self.bound_retained(id, source)? {
                continue;
            }
            let p = self.parts.get_mut(&id).expect("known partition");
            match (p.sealing, seals) {
                (true, false) => {
                    info!(table = %t.spec.name, partition = id, "no longer the partition's owner: consuming it as a replica");
                    p.sealing = false;
                }
                (false, true) => self.rebase(id)?,
                _ => {}
            }
        }
        Ok(())
    }

    /// A partition this server does not seal, holding more than [`RETAINED_PARTS_MAX`]
    /// parts its owner has not sealed (the owner cannot reach the deep store, or is gone and
    /// not yet detected): rather than hold ever more rows, it starts again from the
    /// checkpoint, as a server taking it over would. True when it did.
    fn bound_retained(&mut self, id: i32, source: &mut dyn Source) -> Result<bool, String> {
        let t = self.ctx.table.clone();
        let Some(p) = self.parts.get(&id) else {
            return Ok(false);
        };
        if p.sealing || p.retained.len() <= RETAINED_PARTS_MAX {
            return Ok(false);
        }
        warn!(table = %t.spec.name, partition = id, retained = p.retained.len(), "the partition's owner has not sealed its rows; consuming it again from the checkpoint");
        let drop: Vec<Arc<MutablePart>> = p.parts().collect();
        t.remove_mutable(&drop, None);
        self.parts.remove(&id);
        let checkpoint = t.view().checkpoints.get(&id).copied();
        self.add_partition(id, checkpoint)?;
        source
            .assign(&self.assignment())
            .map_err(|e| e.to_string())?;
        Ok(true)
    }

    /// Makes a partition's parts start at the metastore's checkpoint, so this server can seal
    /// it: one part holding the rows of every message from the checkpoint on replaces them
    /// in one view swap. Waits (returns, to be called again) while a part of its own is
    /// being sealed: the checkpoint moves past it first.
    fn rebase(&mut self, id: i32) -> Result<(), String> {
        self.flush(id)?;
        let ctx = self.ctx;
        let t = &ctx.table;
        let state = ctx
            .handle
            .block_on(ctx.store.reload(t))
            .map_err(|e| format!("loading the checkpoints: {e}"))?
            .ok_or_else(|| format!("table {:?} is not in the metastore", t.spec.name))?;
        let checkpoint = state.checkpoints.get(&id).copied();
        let p = self.parts.get_mut(&id).expect("known partition");
        let old: Vec<Arc<MutablePart>> = p.parts().collect();
        if old[0].from > checkpoint {
            return Ok(());
        }
        let fresh = new_part(t, &ctx.store, id, checkpoint);
        for part in &old {
            let (offsets, (rows, quarantined)) = match checkpoint {
                Some(c) => (part.offsets_from(c), part.split(c)),
                None => (part.offsets_from(i64::MIN), (0, 0)),
            };
            fresh
                .append(offsets, None, None)
                .map_err(|e| e.to_string())?;
            for b in part.rows.batches_from(rows as usize) {
                fresh.rows.append(b).map_err(|e| e.to_string())?;
            }
            for b in part.quarantine.batches_from(quarantined as usize) {
                fresh.quarantine.append(b).map_err(|e| e.to_string())?;
            }
        }
        // Its chunks are built here, not by the first query that reads it.
        fresh.rows.snapshot().map_err(|e| e.to_string())?;
        t.replace_mutable(&old, fresh.clone());
        info!(table = %t.spec.name, partition = id, checkpoint = ?checkpoint, parts = old.len(), rows = fresh.rows.rows(), "now the partition's owner: its rows rebased onto the checkpoint");
        p.entries = fresh.messages() as usize;
        p.bytes = fresh.memory_bytes() as u64;
        p.part = fresh;
        p.retained.clear();
        p.from = checkpoint;
        p.checkpoint = checkpoint;
        if p.next < checkpoint {
            p.next = checkpoint; // messages before it are skipped as they arrive
        }
        p.sealing = true;
        Ok(())
    }

    fn assignment(&self) -> Vec<(i32, Option<i64>)> {
        self.parts.values().map(|p| (p.partition, p.next)).collect()
    }

    /// Follows a change of the partitions assigned here without touching the others: a
    /// partition given away leaves the view (its new owner consumes it from the checkpoint);
    /// one taken over starts at the metastore's checkpoint, once the segments its previous
    /// owner published are loaded (on a keyed table, with its key map restored from them).
    fn reassign(&mut self, source: &mut dyn Source) -> Result<(), String> {
        let ctx = self.ctx;
        let t = &ctx.table;
        let placement = &ctx.store.placement;
        let gone: Vec<i32> = self
            .parts
            .keys()
            .copied()
            .filter(|&p| !placement.consumes_partition(&t.spec, p))
            .collect();
        let new: Vec<i32> = self
            .partitions
            .iter()
            .copied()
            .filter(|p| !self.parts.contains_key(p))
            .filter(|&p| placement.consumes_partition(&t.spec, p))
            .collect();
        if gone.is_empty() && new.is_empty() {
            return Ok(());
        }
        info!(table = %t.spec.name, given_away = ?gone, taken_over = ?new, "partitions assigned to this server changed");
        for p in &gone {
            self.parts.remove(p);
            self.keyed.remove(p);
        }
        // Its current part and any the sealer left unsealed while handing it over.
        let dropped: Vec<Arc<MutablePart>> = t
            .view()
            .mutable
            .iter()
            .filter(|m| gone.contains(&m.partition))
            .cloned()
            .collect();
        t.remove_mutable(&dropped, None);
        if !new.is_empty() {
            let state = ctx
                .handle
                .block_on(ctx.store.reload(t))
                .map_err(|e| format!("loading the published segments: {e}"))?
                .ok_or_else(|| format!("table {:?} is not in the metastore", t.spec.name))?;
            if let Some(k) = self.keyed_table.clone() {
                let restored = restore_keyed(ctx, &k, &state, &new)?;
                self.keyed.extend(restored);
            }
            for p in new {
                if let Some(path) = state.keyed_snapshots.get(&p) {
                    self.snapshots.insert(p, path.clone());
                }
                self.add_partition(p, state.checkpoints.get(&p).copied())?;
            }
        }
        source.assign(&self.assignment()).map_err(|e| e.to_string())
    }

    fn consume(&mut self, source: &mut dyn Source) -> Result<(), String> {
        source
            .assign(&self.assignment())
            .map_err(|e| e.to_string())?;
        let ctx = self.ctx;
        ctx.set_state(IngestionState::Consuming, None);
        let (mut last_flush, mut last_status) = (Instant::now(), Instant::now());
        let mut last_watermarks = Instant::now() - WATERMARKS_EVERY;
        let mut last_partitions = Instant::now();
        let mut last_renewal = Instant::now();
        let mut last_assignment = Instant::now();
        loop {
            if ctx.stopped() {
                return Ok(());
            }
            ownership::renew_if_due(ctx, &mut last_renewal)?;
            if last_assignment.elapsed() >= ASSIGNMENT_EVERY {
                last_assignment = Instant::now();
                self.reassign(source)?;
                self.follow_roles(source)?;
            }
            self.collect_seals(source)?;
            // Back-pressure: do not run further ahead than a few seals.
            if self.sealer.pending() > 2 * self.parts.len() + 2 {
                if let Some(o) = self.sealer.wait(Duration::from_millis(100)) {
                    self.on_seal(o, source)?;
                }
                continue;
            }
            let mut full: Option<i32> = None;
            let mut flush: Option<i32> = None;
            let polled = {
                let parts = &mut self.parts;
                let topic = &self.topic;
                let max_rows = self.limits.max_rows;
                let max_bytes = self.limits.max_bytes.unwrap_or(u64::MAX);
                source.poll(POLL_WAIT, &mut |m: Message<'_>| {
                    if let Some(p) = parts.get_mut(&m.partition) {
                        if p.accept(topic, m) {
                            if p.entries >= max_rows || p.bytes >= max_bytes {
                                full = Some(p.partition);
                            } else if p.decoder.pending_rows() >= FLUSH_ROWS {
                                flush = Some(p.partition);
                            }
                        }
                    } else {
                        warn!(
                            partition = m.partition,
                            "message of an unassigned partition ignored"
                        );
                    }
                })
            };
            match polled {
                Ok(true) => ctx.reachable(),
                Ok(false) => {}
                Err(SourceError::Unreachable(e)) => {
                    ctx.set_state(IngestionState::BrokerUnreachable, Some(e));
                    ctx.pause(Duration::from_millis(200));
                }
                Err(SourceError::Other(e)) => {
                    warn!(table = %ctx.table.spec.name, error = %e, "source error");
                    ctx.status.lock().error = Some(e);
                    ctx.pause(Duration::from_millis(200));
                }
                Err(e @ SourceError::Fatal(_)) => return Err(e.to_string()),
            }
            if let Some(p) = full {
                self.rotate(p)?;
                self.bound_retained(p, source)?;
            } else if let Some(p) = flush {
                self.flush(p)?;
            }
            if last_flush.elapsed() >= FLUSH_EVERY {
                last_flush = Instant::now();
                let ids: Vec<i32> = self.parts.keys().copied().collect();
                for id in ids {
                    self.flush(id)?;
                    let p = &self.parts[&id];
                    let due = p.entries > 0
                        && (p.part.age() >= self.limits.max_age
                            || self
                                .limits
                                .max_bytes
                                .is_some_and(|b| p.part.memory_bytes() as u64 >= b));
                    if due {
                        self.rotate(id)?;
                        self.bound_retained(id, source)?;
                    }
                }
            }
            if last_watermarks.elapsed() >= WATERMARKS_EVERY {
                last_watermarks = Instant::now();
                self.refresh_watermarks(source);
            }
            if last_partitions.elapsed() >= PARTITIONS_EVERY {
                last_partitions = Instant::now();
                if let Ok(found) = source.partitions(Duration::from_secs(1)) {
                    if found.len() > ctx.store.policy.max_partitions {
                        return Err(format!(
                            "the stream grew to {} partitions, more than this server consumes \
                             for one table ({}, tables.max_partitions)",
                            found.len(),
                            ctx.store.policy.max_partitions
                        ));
                    }
                    let found: Vec<i32> = found
                        .into_iter()
                        .filter(|p| !self.partitions.contains(p))
                        .collect();
                    self.partitions.extend(&found);
                    let t = &ctx.table.spec;
                    let new: Vec<i32> = found
                        .into_iter()
                        .filter(|&p| ctx.store.placement.consumes_partition(t, p))
                        .collect();
                    if !new.is_empty() {
                        info!(table = %ctx.table.spec.name, partitions = ?new, "new partitions");
                        for p in new {
                            self.add_partition(p, None)?;
                        }
                        source
                            .assign(&self.assignment())
                            .map_err(|e| e.to_string())?;
                    }
                }
            }
            if last_status.elapsed() >= STATUS_EVERY {
                last_status = Instant::now();
                self.publish_status();
            }
        }
    }

    /// Hands a partition's part to the sealer and starts a fresh one. A partition this
    /// server does not seal (a replica, or one being handed over) is rotated the same way
    /// but its old part is retained, queryable, instead of sealed.
    fn rotate(&mut self, partition: i32) -> Result<(), String> {
        self.flush(partition)?;
        let seals = self
            .ctx
            .store
            .placement
            .seals_partition(&self.ctx.table.spec, partition);
        if !seals && self.keyed_table.is_some() {
            // Handing a keyed partition over: its new owner seals; its rows stay queryable
            // here in one part, which its key map tracks.
            return Ok(());
        }
        let table = self.ctx.table.spec.name.clone();
        let p = self.parts.get_mut(&partition).expect("known partition");
        let Some(to) = p.next else {
            return Ok(());
        };
        if p.entries == 0 {
            return Ok(());
        }
        let fresh = new_part(&self.ctx.table, &self.ctx.store, partition, Some(to));
        self.ctx.table.add_mutable(fresh.clone());
        let old = std::mem::replace(&mut p.part, fresh.clone());
        if !(seals && p.sealing) {
            p.retained.push(old);
            p.from = Some(to);
            p.entries = 0;
            p.bytes = 0;
            return Ok(());
        }
        let delta = CheckpointDelta {
            partition,
            from: p.from,
            to,
        };
        p.from = Some(to);
        p.entries = 0;
        p.bytes = 0;
        let keyed = match self.keyed.get_mut(&partition) {
            Some(k) => {
                k.evict();
                let path = format!(
                    "{}/p{partition}-{to:020}-{}{}.snap",
                    SegmentKind::KeyedSnapshot.prefix(&table, &self.ctx.table.generation),
                    &uuid::Uuid::new_v4().simple().to_string()[..8],
                    crate::home::node_tag(&self.ctx.store.node)
                );
                let seal = KeyedSeal {
                    slots: k.snapshot(),
                    path: path.clone(),
                    previous: p.snapshot_path.replace(path),
                };
                k.start_part(fresh.clone()).map_err(|e| e.to_string())?;
                Some(seal)
            }
            None => None,
        };
        self.sealer.submit(SealJob {
            part: old,
            delta,
            keyed,
        });
        Ok(())
    }

    fn collect_seals(&mut self, source: &mut dyn Source) -> Result<(), String> {
        while let Some(o) = self.sealer.try_outcome() {
            self.on_seal(o, source)?;
        }
        Ok(())
    }

    fn on_seal(&mut self, o: SealOutcome, source: &mut dyn Source) -> Result<(), String> {
        match o {
            SealOutcome::Published { delta, at, segment } => {
                if let Some(p) = self.parts.get_mut(&delta.partition) {
                    p.checkpoint = Some(delta.to);
                    p.last_seal = Some(at);
                }
                if let (Some(k), Some((id, reader))) =
                    (self.keyed.get_mut(&delta.partition), segment)
                {
                    k.sealed(&id, reader);
                }
                self.seals += 1;
                self.commits.push((delta.partition, delta.to));
                source.commit(&std::mem::take(&mut self.commits));
                Ok(())
            }
            SealOutcome::HandedOver(delta, part) => {
                info!(table = %self.ctx.table.spec.name, partition = delta.partition, "not sealing a partition being handed over; its new owner seals it");
                match self.parts.get_mut(&delta.partition) {
                    Some(p) => {
                        p.retained.push(part);
                        p.retained.sort_by_key(|r| r.from);
                    }
                    None => self.ctx.table.remove_mutable(&[part], None),
                }
                Ok(())
            }
            SealOutcome::Failed(e) => Err(e),
        }
    }

    fn refresh_watermarks(&mut self, source: &mut dyn Source) {
        let ids: Vec<i32> = self.parts.keys().copied().collect();
        for id in ids {
            match source.high_watermark(id, Duration::from_secs(1)) {
                Ok(hw) => {
                    self.parts.get_mut(&id).expect("known").high_watermark = Some(hw);
                    self.ctx.reachable();
                }
                Err(SourceError::Unreachable(e)) => {
                    self.ctx
                        .set_state(IngestionState::BrokerUnreachable, Some(e));
                    return;
                }
                Err(SourceError::Other(e) | SourceError::Fatal(e)) => {
                    self.ctx.status.lock().error = Some(e);
                }
            }
        }
    }

    fn publish_status(&mut self) {
        let mut unknown = 0;
        let keyed = &self.keyed;
        let partitions = self
            .parts
            .values_mut()
            .map(|p| {
                let (at, n) = p.rate_mark;
                let dt = at.elapsed().as_secs_f64();
                if dt >= 1.0 {
                    p.events_per_second = (p.events - n) as f64 / dt;
                    p.rate_mark = (Instant::now(), p.events);
                }
                unknown += p.decoder.unknown_fields;
                PartitionStatus {
                    partition: p.partition,
                    consumed_offset: p.next,
                    checkpoint_offset: p.checkpoint,
                    high_watermark: p.high_watermark,
                    lag: p
                        .high_watermark
                        .map(|hw| (hw - p.next.or(p.checkpoint).unwrap_or(0)).max(0)),
                    mutable_rows: p.part.rows.rows() as u64,
                    mutable_bytes: p.part.memory_bytes() as u64,
                    last_seal_time: p.last_seal.map(|t| t.to_rfc3339()),
                    quarantined: p.quarantined_total,
                    events: p.events,
                    events_per_second: (p.events_per_second * 10.0).round() / 10.0,
                    keyed: keyed.get(&p.partition).map(|k| KeyedStatus {
                        keys: k.keys() as u64,
                        memory_bytes: k.memory_bytes() as u64,
                        counters: k.counters,
                    }),
                }
            })
            .collect();
        let mut s = self.ctx.status.lock();
        s.partitions = partitions;
        s.unknown_fields = unknown;
        s.seals = self.seals;
        s.seals_pending = self.sealer.pending();
    }
}

impl PartitionIngest {
    /// Its parts in the view, oldest first: those retained, then the one taking rows.
    fn parts(&self) -> impl Iterator<Item = Arc<MutablePart>> + '_ {
        self.retained.iter().chain([&self.part]).cloned()
    }

    /// Decodes one message into the partition (or its quarantine). False when the message
    /// was below the partition's position (already consumed) and skipped.
    fn accept(&mut self, topic: &str, m: Message<'_>) -> bool {
        if self.next.is_some_and(|n| m.offset < n) {
            return false;
        }
        let origin = MessageOrigin {
            topic: topic.to_string(),
            partition: m.partition,
            offset: m.offset,
            timestamp: m.timestamp,
        };
        let outcome = match m.payload {
            Some(payload) => self.decoder.decode(payload, origin),
            None => Err(QuarantineEntry {
                origin,
                raw: Vec::new(),
                reason: "message has no payload".into(),
            }),
        };
        self.offsets.push(m.offset, outcome.is_ok());
        if let Err(entry) = outcome {
            self.quarantined.push(entry);
            self.quarantined_total += 1;
        }
        self.next = Some(m.offset + 1);
        self.entries += 1;
        self.bytes += m.payload.map_or(0, |b| b.len()) as u64;
        self.events += 1;
        true
    }

    /// Makes decoded rows and quarantine entries queryable; a keyed table's rows go
    /// through its key map first (what it returns is appended).
    fn flush(
        &mut self,
        keyed: Option<(&mut KeyedPartition, &dyn Fn(KeyHash) -> bool)>,
    ) -> Result<(), String> {
        let mut batch_rows = None;
        if let Some(batch) = self.decoder.take_batch().map_err(|e| e.to_string())? {
            let origins = self.decoder.take_origins();
            let rows = match keyed {
                Some((k, elsewhere)) => {
                    let rows = k.apply(&batch, elsewhere).map_err(|e| e.to_string())?;
                    // Rows whose merge was refused stay in the stream's record: quarantined
                    // with their message, the key keeping its row.
                    for r in k.take_rejected() {
                        if let Some((origin, raw)) = origins.get(r.row) {
                            self.quarantined.push(QuarantineEntry {
                                origin: origin.clone(),
                                raw: raw.clone(),
                                reason: format!("column {:?}: {}", r.column, r.message),
                            });
                            self.quarantined_total += 1;
                        }
                    }
                    rows
                }
                None => Some(batch),
            };
            batch_rows = rows;
        }
        let mut quarantine = None;
        if !self.quarantined.is_empty() {
            let entries = std::mem::take(&mut self.quarantined);
            quarantine = quarantine_batch(&entries).map_err(|e| e.to_string())?;
        }
        let offsets = std::mem::take(&mut self.offsets);
        if !offsets.is_empty() || batch_rows.is_some() || quarantine.is_some() {
            self.part
                .append(offsets, batch_rows, quarantine)
                .map_err(|e| e.to_string())?;
        }
        self.bytes = self.part.memory_bytes() as u64;
        Ok(())
    }
}
