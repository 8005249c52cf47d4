//! Batch ingestion into a table: a request body decoded, cut into segments, built and
//! uploaded while decoding goes on, then published all at once. In: a body in NDJSON, CSV or
//! Parquet. Out: the rows published in one metastore commit, or nothing (staged segments
//! deleted).
//!
//! Memory is bounded whatever the body holds: the decoder's limits ([`DecodeLimits`]), a
//! segment's rows capped by bytes, and a one-slot channel to at most four builder threads.
//! A panic in a builder or the decoder is caught: what was staged is deleted and the request
//! fails with the panic named.

use std::io::Read;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use basalt_segment::{build_segment, SegmentReader, SegmentSchema};
use bytes::Bytes;
use tracing::info;

use super::{release_freed_memory, LoadedSegment, PublishChange, Table, TableStore};
use crate::decode::{decode_csv, decode_ndjson, decode_parquet, ingest_schema, Format};
use crate::error::{IngestError, Result};
use crate::home::SegmentKind;
use crate::metastore::SegmentMeta;
use crate::upsert::{snapshot, KeyedPartition, KeyedTable, BATCH_PARTITION};

/// The keyed state of a table's batch ingests and the snapshot object it was restored
/// from or last persisted to.
#[derive(Debug)]
pub(super) struct BatchKeys {
    part: KeyedPartition,
    snapshot: Option<String>,
}

/// The segments a request staged, or its error with those it staged before failing.
type Staged = std::result::Result<Vec<Arc<LoadedSegment>>, (IngestError, Vec<Arc<LoadedSegment>>)>;

impl TableStore {
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
        if t.spec.iceberg_source().is_some() {
            return Err(IngestError::NotSupported(format!(
                "table {table:?} reads an Iceberg table (source.iceberg) and is read-only"
            )));
        }
        if keyed.is_some() && t.spec.is_realtime() {
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
                SegmentKind::KeyedSnapshot.prefix(&t.spec.name, &t.generation),
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
        // Keyed tables apply rows as plain strings (their key maps read them); other tables'
        // Parquet string columns may stay dictionary-encoded up to the segment builder.
        let keep_dictionaries = keyed.is_none();
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
                        let mut error = None;
                        // Every builder receives until the decoding side hangs up, even
                        // after a failure: the one-slot channel's receiver outlives the
                        // builders, so a send with none left to receive would wait forever.
                        loop {
                            let next = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                            let Ok((id, batches)) = next else {
                                return (staged, error);
                            };
                            if failed.load(Ordering::Relaxed) {
                                continue;
                            }
                            // A panic while building is this request's error; what this
                            // builder staged stays listed for deletion.
                            let built =
                                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                    crate::fault::hit("batch.build");
                                    self.stage(
                                        t,
                                        SegmentKind::Rows,
                                        &t.schema,
                                        &batches,
                                        id,
                                        handle,
                                    )
                                }))
                                .unwrap_or_else(|p| {
                                    Err(IngestError::panicked("a segment builder", p))
                                });
                            match built {
                                Ok(s) => {
                                    if let Some(b) = &built_tx {
                                        let _ = b.send((s.meta.id.clone(), s.reader.clone()));
                                    }
                                    staged.push(s)
                                }
                                Err(e) => {
                                    failed.store(true, Ordering::Relaxed);
                                    error = Some(e);
                                }
                            }
                        }
                    })
                })
                .collect();
            let decoded =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> Result<()> {
                    let mut pending: Vec<RecordBatch> = Vec::new();
                    let mut pending_rows = 0usize;
                    let ingest_schema = ingest_schema(&t.schema);
                    let stopped =
                        || IngestError::Io(std::io::Error::other("the segment builder stopped"));
                    let mut seal = |batches: Vec<RecordBatch>| -> Result<()> {
                        // A builder failed: the request fails, so stop decoding.
                        if failed.load(Ordering::Relaxed) {
                            return Err(stopped());
                        }
                        let job = match keyed.as_deref_mut() {
                            None => (None, batches),
                            Some(k) => {
                                while let Ok((id, reader)) = built_rx.try_recv() {
                                    k.sealed(&id, reader);
                                }
                                // Doc ids are the order rows are applied in: one batch per
                                // segment, applied before it is built.
                                let rows =
                                    arrow::compute::concat_batches(&ingest_schema, &batches)?;
                                let id = self.new_segment_id(&t.spec.name);
                                match k.apply_segment(id.clone(), &rows)? {
                                    Some(kept) => (Some(id), vec![kept]),
                                    None => return Ok(()),
                                }
                            }
                        };
                        tx.send(job).map_err(|_| stopped())
                    };
                    let mut rows_in_body = 0u64;
                    let mut sink = |b: RecordBatch| -> Result<()> {
                        rows_in_body += b.num_rows() as u64;
                        if rows_in_body > limits.decode.max_rows {
                            return Err(IngestError::BadInput {
                                location: "body".into(),
                                message: format!(
                                    "the body holds more than {} rows, the most one request \
                                     may hold (ingest.max_rows_per_request)",
                                    limits.decode.max_rows
                                ),
                            });
                        }
                        let mut b = b;
                        // segment.max_bytes caps a segment's rows by their in-memory size.
                        let limit = match max_bytes {
                            Some(cap) if b.num_rows() > 0 => {
                                // Bytes the rows use, not the decoder's spare capacity.
                                let used: usize = b.columns().iter().map(held_bytes).sum();
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
                            decode_ndjson(
                                &mut body,
                                &t.schema,
                                batch_rows,
                                &limits.decode,
                                &mut sink,
                            )?;
                        }
                        Format::Csv => {
                            decode_csv(
                                &mut body,
                                &t.schema,
                                batch_rows,
                                &limits.decode,
                                &mut sink,
                            )?;
                        }
                        Format::Parquet => {
                            // Parquet keeps its footer at the end: spool to disk, then read
                            // it mapped (pages and footer sliced in place, not read() into
                            // buffers).
                            let mut tmp = tempfile::tempfile_in(&self.cache_dir)?;
                            std::io::copy(&mut body, &mut tmp)?;
                            let file = match tmp.metadata()?.len() {
                                // (Nothing to map: the reader says why it is no Parquet file.)
                                0 => Bytes::new(),
                                // SAFETY: an unnamed temporary file only this request holds,
                                // not written again once mapped.
                                _ => Bytes::from_owner(unsafe { memmap2::Mmap::map(&tmp)? }),
                            };
                            decode_parquet(
                                file,
                                &t.schema,
                                batch_rows,
                                keep_dictionaries,
                                &limits.decode,
                                &mut sink,
                            )
                            .map_err(|e| match e {
                                IngestError::Parquet(p) => IngestError::BadInput {
                                    location: "body".into(),
                                    message: format!("not a readable Parquet file: {p}"),
                                },
                                e => e,
                            })?;
                        }
                    }
                    if pending_rows > 0 {
                        seal(std::mem::take(&mut pending))?;
                    }
                    Ok(())
                }))
                .unwrap_or_else(|p| Err(IngestError::panicked("the decoder", p)));
            drop(tx);
            let mut staged = Vec::new();
            let mut build_error = None;
            for w in workers {
                let (s, e) = w.join().unwrap_or_else(|p| {
                    (
                        Vec::new(),
                        Some(IngestError::panicked("a segment builder", p)),
                    )
                });
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
        let (meta, reader) =
            handle.block_on(t.home.stage(&t.spec.name, &t.generation, kind, id, bytes))?;
        Ok(Arc::new(LoadedSegment { meta, reader }))
    }
}

/// The bytes a decoded column holds for its rows: a dictionary-encoded string column counts
/// as the plain strings it stands for (an offset and the value per row), so `max_bytes` cuts
/// a segment where it would for the plain strings (the null bitmap's share counted to the
/// byte).
fn held_bytes(c: &arrow::array::ArrayRef) -> usize {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::Int32Type;
    let Some(d) = c.as_dictionary_opt::<Int32Type>() else {
        return c.to_data().get_slice_memory_size().unwrap_or(0);
    };
    let Some(values) = d.values().as_string_opt::<i32>() else {
        return c.to_data().get_slice_memory_size().unwrap_or(0);
    };
    let offsets = values.value_offsets();
    let strings: usize = d
        .keys()
        .iter()
        .flatten()
        .filter_map(|k| {
            let k = usize::try_from(k).ok()?;
            Some((offsets.get(k + 1)? - offsets.get(k)?) as usize)
        })
        .sum();
    let nulls = d.nulls().map_or(0, |_| d.len().div_ceil(8));
    (d.len() + 1) * 4 + strings + nulls
}
