//! The seal thread of a real-time table. In: [`SealJob`]s — a rotated-out mutable part and
//! the checkpoint delta `(from, to]` its rows cover — in the order the partitions produced
//! them. Out: the part's rows and quarantine entries built into immutable segments, uploaded
//! unpublished, then published with the delta in one metastore commit that also swaps the
//! part for its segments in the table's view; a [`SealOutcome`] back to the ingest thread.
//!
//! Transient failures (the deep store is unreachable) are retried with back-off while the
//! part stays queryable; staged uploads of a failed attempt are deleted. A failure that
//! retrying cannot fix (the checkpoint moved under us, the consumer lease was lost, a
//! panic) ends the session, which restarts from the metastore's checkpoints.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tracing::{info, warn};

use super::Ctx;
use crate::error::IngestError;
use crate::home::SegmentKind;
use crate::metastore::{CheckpointDelta, SegmentMeta};
use crate::mutable::MutablePart;
use crate::quarantine::quarantine_schema;
use crate::store::{release_freed_memory, LoadedSegment, PublishChange};
use crate::upsert::{snapshot, SlotSnapshot};
use basalt_segment::SegmentReader;

pub struct SealJob {
    pub part: Arc<MutablePart>,
    pub delta: CheckpointDelta,
    /// Upsert and dedup tables: the partition's keyed state at `delta.to`.
    pub keyed: Option<KeyedSeal>,
}

/// The keyed snapshot a seal persists, and the one it replaces.
pub struct KeyedSeal {
    pub slots: Vec<SlotSnapshot>,
    /// Where this snapshot goes.
    pub path: String,
    pub previous: Option<String>,
}

pub enum SealOutcome {
    Published {
        delta: CheckpointDelta,
        at: chrono::DateTime<chrono::Utc>,
        /// The rows segment (id, reader), when the part had rows.
        segment: Option<(String, Arc<SegmentReader>)>,
    },
    /// Not sealed: the partition is being handed over to a server that seals it now. The
    /// part's rows stay queryable here (the session retains it) until the partition's
    /// checkpoint passes them or the session gives the partition up.
    HandedOver(CheckpointDelta, Arc<MutablePart>),
    /// Not retryable; the session must restart from the checkpoints.
    Failed(String),
}

pub struct Sealer {
    jobs: Option<Sender<SealJob>>,
    outcomes: Receiver<SealOutcome>,
    pending: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Arc<MutablePart>>>>,
}

impl Sealer {
    pub(crate) fn start(ctx: &Arc<Ctx>) -> Sealer {
        let (jobs, rx) = channel::<SealJob>();
        let (tx, outcomes) = channel();
        let pending = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (ctx, p, s) = (ctx.clone(), pending.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name(format!("seal-{}", ctx.table.spec.name))
            .spawn(move || seal_loop(&ctx, rx, tx, &p, &s))
            .expect("spawn the seal thread");
        Sealer {
            jobs: Some(jobs),
            outcomes,
            pending,
            stop,
            thread: Some(thread),
        }
    }

    pub fn submit(&self, job: SealJob) {
        self.pending.fetch_add(1, Ordering::Relaxed);
        if let Some(j) = &self.jobs {
            // The thread only goes away after `stop`; a send error then is moot.
            let _ = j.send(job);
        }
    }

    /// Seals submitted and not yet published.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    pub fn try_outcome(&self) -> Option<SealOutcome> {
        self.outcomes.try_recv().ok()
    }

    pub fn wait(&self, timeout: Duration) -> Option<SealOutcome> {
        self.outcomes.recv_timeout(timeout).ok()
    }

    /// Stops the thread after its current seal; returns the parts it did not publish.
    pub fn stop(&mut self) -> Vec<Arc<MutablePart>> {
        self.stop.store(true, Ordering::Relaxed);
        self.jobs = None;
        self.thread
            .take()
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default()
    }
}

impl Drop for Sealer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn seal_loop(
    ctx: &Ctx,
    jobs: Receiver<SealJob>,
    outcomes: Sender<SealOutcome>,
    pending: &AtomicUsize,
    stop: &AtomicBool,
) -> Vec<Arc<MutablePart>> {
    let stopping = || stop.load(Ordering::Relaxed) || ctx.stopped();
    let mut unpublished = Vec::new();
    loop {
        let job = match jobs.recv_timeout(Duration::from_millis(100)) {
            Ok(j) => j,
            Err(RecvTimeoutError::Timeout) if !stopping() => continue,
            Err(_) => break,
        };
        if stopping() {
            unpublished.push(job.part);
            continue;
        }
        let mut backoff = Duration::from_millis(500);
        loop {
            if !ctx
                .store
                .placement
                .seals_partition(&ctx.table.spec, job.delta.partition)
            {
                pending.fetch_sub(1, Ordering::Relaxed);
                let _ = outcomes.send(SealOutcome::HandedOver(job.delta, job.part.clone()));
                break;
            }
            let began = std::time::Instant::now();
            match seal(ctx, &job) {
                Ok(segment) => {
                    info!(table = %ctx.table.spec.name, partition = job.delta.partition, rows = job.part.rows.rows(), elapsed_ms = began.elapsed().as_millis() as u64, "sealed a real-time segment");
                    pending.fetch_sub(1, Ordering::Relaxed);
                    let _ = outcomes.send(SealOutcome::Published {
                        delta: job.delta,
                        at: chrono::Utc::now(),
                        segment,
                    });
                    break;
                }
                Err(e) if retryable(&e) && !stopping() => {
                    warn!(table = %ctx.table.spec.name, partition = job.delta.partition, error = %e, "seal failed; retrying (the rows stay queryable)");
                    ctx.status.lock().error = Some(format!("seal failed, retrying: {e}"));
                    if ctx.pause(backoff) || stop.load(Ordering::Relaxed) {
                        break;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
                Err(e) => {
                    let _ = outcomes.send(SealOutcome::Failed(format!(
                        "sealing partition {} ({:?}, {}]: {e}",
                        job.delta.partition, job.delta.from, job.delta.to
                    )));
                    unpublished.push(job.part);
                    // Later jobs of this session cannot publish past a failed one.
                    unpublished.extend(jobs.try_iter().map(|j| j.part));
                    return unpublished;
                }
            }
        }
        if stopping() {
            unpublished.push(job.part);
        }
    }
    unpublished.extend(jobs.try_iter().map(|j| j.part));
    unpublished
}

fn retryable(e: &IngestError) -> bool {
    matches!(
        e,
        IngestError::Store(_) | IngestError::Io(_) | IngestError::Conflict { .. }
    )
}

/// Builds, uploads and publishes one part (with its keyed snapshot); staged uploads are
/// deleted on failure. Returns the rows segment, if the part had rows.
fn seal(ctx: &Ctx, job: &SealJob) -> Result<Option<(String, Arc<SegmentReader>)>, IngestError> {
    let (store, t) = (&ctx.store, &ctx.table);
    let rows = job.part.rows.batches();
    let quarantined = job.part.quarantine.batches();
    let mut staged = Vec::new();
    let mut staged_q = Vec::new();
    let mut snapshot_uploaded = false;
    let lease = ctx.lease.lock().clone();
    let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        crate::fault::hit("seal.build");
        if !rows.is_empty() {
            staged.push(store.stage(
                t,
                SegmentKind::Rows,
                &t.schema,
                &rows,
                Some(job.part.segment_id.clone()),
                &ctx.handle,
            )?);
        }
        if !quarantined.is_empty() {
            staged_q.push(store.stage(
                t,
                SegmentKind::Quarantine,
                &quarantine_schema(),
                &quarantined,
                None,
                &ctx.handle,
            )?);
        }
        // Both segments carry the offsets they cover (see `SegmentMeta::stream`).
        for s in staged.iter_mut().chain(staged_q.iter_mut()) {
            let mut meta = s.meta.clone();
            meta.stream = Some(job.delta);
            *s = Arc::new(LoadedSegment {
                meta,
                reader: s.reader.clone(),
            });
        }
        let mut snapshots = Vec::new();
        if let Some(k) = &job.keyed {
            let bytes = snapshot::encode(&k.slots)?;
            ctx.handle.block_on(t.home.put_object(&k.path, bytes))?;
            snapshot_uploaded = true;
            snapshots.push((job.delta.partition, k.path.clone()));
        }
        crate::fault::hit("seal.before_publish");
        ctx.handle.block_on(store.publish(
            t,
            PublishChange {
                staged: &staged,
                staged_quarantine: &staged_q,
                deltas: &[job.delta],
                snapshots: &snapshots,
                retire: Some(&job.part),
                valid: Vec::new(),
                lease: lease.as_ref(),
            },
        ))
    }));
    // A panic (a builder's, or anywhere above) fails the seal like an error: what it
    // staged is deleted and the session restarts from the checkpoints.
    let result = attempt.unwrap_or_else(|p| Err(IngestError::panicked("the seal thread", p)));
    drop((rows, quarantined));
    if result.is_err() {
        let metas: Vec<SegmentMeta> = staged
            .iter()
            .chain(&staged_q)
            .map(|s| s.meta.clone())
            .collect();
        ctx.handle
            .block_on(t.home.delete_staged(&t.spec.name, &metas));
        if let Some(k) = job.keyed.as_ref().filter(|_| snapshot_uploaded) {
            ctx.handle.block_on(t.home.delete_object(&k.path));
        }
    }
    release_freed_memory();
    result?;
    if let Some(prev) = job.keyed.as_ref().and_then(|k| k.previous.as_deref()) {
        ctx.handle.block_on(t.home.delete_object(prev));
    }
    Ok(staged
        .first()
        .map(|s| (s.meta.id.clone(), s.reader.clone())))
}
