//! One tiering run of one table. In: the table's view (its sealed segments, an upsert
//! table's valid docs, the warehouse state) and the clock. Out: the segments whose whole
//! time range is older than `tier_after` written as Parquet into the table's Iceberg table,
//! appended in one Iceberg snapshot whose summary names them, then removed from serving by
//! one metastore commit that also pins that snapshot and advances the boundary.
//!
//! Crash safety: queries read the Iceberg table at the snapshot the metastore pins, so rows
//! appended by an Iceberg commit whose metastore commit did not happen are not read, and
//! the segments still serve them. A run first looks for such a snapshot — later than the
//! pinned one, written for this table's incarnation — and, when every segment its summary
//! names is still listed, commits the metastore side for it instead of writing again.
//! Parquet files written before a crash and never committed are not referenced by any
//! snapshot (they are left behind; see ARCHITECTURE.md).

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, RecordBatch};
use arrow::compute::{sort_to_indices, take_record_batch, SortOptions};
use basalt_ingest::store::{LoadedSegment, Table, TableStore};
use basalt_ingest::warehouse::WarehouseState;
use basalt_segment::layout::Encoding as SegEncoding;
use basalt_segment::IndexKind;
use basalt_segment::RoaringBitmap;
use iceberg::spec::{DataFile, DataFileFormat, PartitionKey, Struct};
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::file_writer::location_generator::{
    DefaultFileNameGenerator, DefaultLocationGenerator,
};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use tracing::info;

use crate::catalog::Catalogs;
use crate::error::{Result, WarehouseError};
use crate::schema::{cast_batch, layout, Layout};

/// Snapshot summary keys a tiering run writes.
pub const SUMMARY_TABLE: &str = "basalt.table";
pub const SUMMARY_GENERATION: &str = "basalt.generation";
pub const SUMMARY_SEGMENTS: &str = "basalt.segments";
pub const SUMMARY_BOUNDARY: &str = "basalt.boundary";
pub const SUMMARY_ROWS: &str = "basalt.segment-rows";
pub const SUMMARY_BYTES: &str = "basalt.segment-bytes";

/// Rows a Parquet row group holds: small enough for row-group pruning by time.
const ROW_GROUP_ROWS: usize = 128 * 1024;
/// Docs read from a segment at a time.
const READ_DOCS: usize = 64 * 1024;
/// A looked-up string column with more distinct values than this in a segment gets Parquet
/// bloom filters: below it, min/max statistics of sorted-by-time row groups prune as well.
const BLOOM_MIN_VALUES: u64 = 4096;
/// The bloom filters' false-positive rate: a lookup reads ~2% of the row groups without the
/// value.
const BLOOM_FPP: f64 = 0.02;

/// What one run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierRun {
    pub segments: usize,
    pub rows: u64,
    pub segment_bytes: u64,
    pub data_files: u64,
    pub data_bytes: u64,
    pub snapshot_id: i64,
    pub boundary: i64,
    /// The Iceberg side was committed by an earlier, interrupted run; this one only
    /// committed the metastore side.
    pub recovered: bool,
}

/// Limits of one run.
#[derive(Debug, Clone, Copy)]
pub struct TierLimits {
    /// Segments moved per run at most (the rest go in the next runs).
    pub max_segments: usize,
}

impl Default for TierLimits {
    fn default() -> Self {
        TierLimits { max_segments: 64 }
    }
}

/// The stored time value `now_ms - tier_after` is, in the time column's unit.
fn cutoff(l: &Layout, now_ms: i64, tier_after: std::time::Duration) -> i64 {
    let ms = now_ms.saturating_sub(tier_after.as_millis().min(i64::MAX as u128) as i64);
    match l.time_type {
        basalt_segment::ColumnType::Date => ms.div_euclid(crate::schema::DAY_MS),
        _ => ms,
    }
}

/// Runs one tiering pass over `t` (a table with a `warehouse` block); `Ok(None)` when
/// nothing was old enough.
pub async fn tier_table(
    store: &TableStore,
    catalogs: &Catalogs,
    t: &Arc<Table>,
    now_ms: i64,
    limits: TierLimits,
) -> Result<Option<TierRun>> {
    let Some(w) = &t.spec.warehouse else {
        return Ok(None);
    };
    let l = layout(&t.schema)?;
    let view = t.view();
    let table = catalogs.load_or_create(&w.iceberg, &l).await?;
    let pinned = view.warehouse.as_deref().cloned();
    if let Some(run) = recover(store, t, &table, pinned.as_ref()).await? {
        return Ok(Some(run));
    }
    check_owned(t, &table, pinned.as_ref())?;
    // Appending on top of anything but the pinned snapshot would give readers of the
    // current snapshot rows the metastore does not account for.
    let current = table.metadata().current_snapshot_id();
    if current != pinned.as_ref().map(|p| p.snapshot_id) && pinned.is_some() {
        return Err(WarehouseError::Inconsistent {
            table: t.spec.name.clone(),
            reason: format!(
                "the Iceberg table's current snapshot {current:?} is not the pinned one"
            ),
        });
    }

    let cut = cutoff(&l, now_ms, w.tier_after()?);
    let eligible: Vec<Arc<LoadedSegment>> = view
        .segments
        .iter()
        .filter(|s| s.meta.time_range.is_some_and(|(_, hi)| hi < cut))
        .filter(|s| view.published.iter().any(|p| p.id == s.meta.id))
        .take(limits.max_segments)
        .cloned()
        .collect();
    if eligible.is_empty() {
        return Ok(None);
    }
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let mut files: Vec<DataFile> = Vec::new();
    let mut rows = 0u64;
    for s in &eligible {
        let valid = view.valid.as_ref().and_then(|v| v.get(&s.meta.id)).cloned();
        let (written, n) = write_segment(&table, &l, s, valid.as_deref(), &run_id).await?;
        files.extend(written);
        rows += n;
    }
    basalt_ingest::fault::hit("tier.after_parquet");

    let ids: Vec<String> = eligible.iter().map(|s| s.meta.id.clone()).collect();
    let max_time = eligible
        .iter()
        .filter_map(|s| s.meta.time_range.map(|(_, hi)| hi))
        .max()
        .unwrap_or(i64::MIN);
    let boundary = pinned
        .as_ref()
        .map_or(i64::MIN, |p| p.boundary)
        .max(max_time.saturating_add(1));
    let segment_bytes: u64 = eligible.iter().map(|s| s.meta.bytes).sum();
    let data_bytes: u64 = files.iter().map(|f| f.file_size_in_bytes()).sum();
    let data_files = files.len() as u64;
    let props = HashMap::from([
        (SUMMARY_TABLE.to_string(), t.spec.name.clone()),
        (SUMMARY_GENERATION.to_string(), t.generation.clone()),
        (SUMMARY_SEGMENTS.to_string(), ids.join(",")),
        (SUMMARY_BOUNDARY.to_string(), boundary.to_string()),
        (SUMMARY_ROWS.to_string(), rows.to_string()),
        (SUMMARY_BYTES.to_string(), segment_bytes.to_string()),
    ]);
    let tx = Transaction::new(&table);
    let tx = tx
        .fast_append()
        .add_data_files(files)
        .set_snapshot_properties(props)
        .apply(tx)?;
    let catalog = catalogs.open(&w.iceberg.catalog).await?;
    let committed = tx.commit(catalog.as_ref()).await?;
    let snapshot_id = committed.metadata().current_snapshot_id().ok_or_else(|| {
        WarehouseError::Invalid("the Iceberg commit left no current snapshot".into())
    })?;
    basalt_ingest::fault::hit("tier.after_iceberg_commit");

    let run = TierRun {
        segments: ids.len(),
        rows,
        segment_bytes,
        data_files,
        data_bytes,
        snapshot_id,
        boundary,
        recovered: false,
    };
    commit_metastore(store, t, pinned.as_ref(), &ids, run).await
}

/// Commits the metastore side of `run`, whose Iceberg snapshot holds segments `ids`: the
/// segments leave serving and the warehouse state adds the run to `prev`.
async fn commit_metastore(
    store: &TableStore,
    t: &Table,
    prev: Option<&WarehouseState>,
    ids: &[String],
    run: TierRun,
) -> Result<Option<TierRun>> {
    let p = prev.cloned().unwrap_or(WarehouseState {
        boundary: i64::MIN,
        snapshot_id: run.snapshot_id,
        segments: 0,
        rows: 0,
        segment_bytes: 0,
        data_files: 0,
        data_bytes: 0,
    });
    let state = WarehouseState {
        boundary: p.boundary.max(run.boundary),
        snapshot_id: run.snapshot_id,
        segments: p.segments + ids.len() as u64,
        rows: p.rows + run.rows,
        segment_bytes: p.segment_bytes + run.segment_bytes,
        data_files: p.data_files + run.data_files,
        data_bytes: p.data_bytes + run.data_bytes,
    };
    store.tier(t, ids, &state).await?;
    info!(table = %t.spec.name, segments = ids.len(), rows = run.rows, data_files = run.data_files, data_bytes = run.data_bytes, snapshot_id = run.snapshot_id, boundary = state.boundary, recovered = run.recovered, "tiering run committed");
    Ok(Some(TierRun {
        boundary: state.boundary,
        ..run
    }))
}

/// Snapshots of `table` after `pinned` (oldest first), following the current snapshot's
/// parents back to it.
fn snapshots_after(
    table: &iceberg::table::Table,
    pinned: Option<i64>,
) -> Vec<iceberg::spec::SnapshotRef> {
    let meta = table.metadata();
    let mut out = Vec::new();
    let mut cur = meta.current_snapshot().cloned();
    while let Some(s) = cur {
        if Some(s.snapshot_id()) == pinned {
            break;
        }
        cur = s
            .parent_snapshot_id()
            .and_then(|p| meta.snapshot_by_id(p).cloned());
        out.push(s);
    }
    out.reverse();
    out
}

/// Commits the metastore side of an Iceberg snapshot an interrupted run appended for this
/// incarnation, if there is one. Any other snapshot after the pinned one is an error: its
/// rows are not accounted for.
async fn recover(
    store: &TableStore,
    t: &Arc<Table>,
    table: &iceberg::table::Table,
    pinned: Option<&WarehouseState>,
) -> Result<Option<TierRun>> {
    let view = t.view();
    // The oldest unaccounted snapshot first; a later one (if any) in the next run.
    if let Some(s) = snapshots_after(table, pinned.map(|p| p.snapshot_id))
        .into_iter()
        .next()
    {
        let props = &s.summary().additional_properties;
        let ours = props.get(SUMMARY_TABLE) == Some(&t.spec.name)
            && props.get(SUMMARY_GENERATION) == Some(&t.generation);
        if !ours {
            return Err(WarehouseError::Inconsistent {
                table: t.spec.name.clone(),
                reason: format!(
                    "Iceberg snapshot {} after the pinned one was not written by this table's \
                     tiering; only Basalt may append to a table it tiers into",
                    s.snapshot_id()
                ),
            });
        }
        let ids: Vec<String> = props
            .get(SUMMARY_SEGMENTS)
            .map(|v| {
                v.split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let listed = ids
            .iter()
            .filter(|id| view.published.iter().any(|p| &p.id == *id))
            .count();
        if listed != ids.len() {
            return Err(WarehouseError::Inconsistent {
                table: t.spec.name.clone(),
                reason: format!(
                    "Iceberg snapshot {} after the pinned one holds segments of which {listed} \
                     of {} are still served (the rest were tiered already: its rows would be \
                     counted twice by readers of the current snapshot)",
                    s.snapshot_id(),
                    ids.len()
                ),
            });
        }
        let num = |k: &str| props.get(k).and_then(|v| v.parse::<i64>().ok());
        let boundary = num(SUMMARY_BOUNDARY).ok_or_else(|| WarehouseError::Inconsistent {
            table: t.spec.name.clone(),
            reason: format!(
                "Iceberg snapshot {} has no {SUMMARY_BOUNDARY}",
                s.snapshot_id()
            ),
        })?;
        let rows = num(SUMMARY_ROWS).unwrap_or(0) as u64;
        let segment_bytes = num(SUMMARY_BYTES).unwrap_or(0) as u64;
        let data_files = props
            .get("added-data-files")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let data_bytes = props
            .get("added-files-size")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let run = TierRun {
            segments: ids.len(),
            rows,
            segment_bytes,
            data_files,
            data_bytes,
            snapshot_id: s.snapshot_id(),
            boundary,
            recovered: true,
        };
        return commit_metastore(store, t, pinned, &ids, run).await;
    }
    Ok(None)
}

/// Refuses to tier into an Iceberg table whose rows Basalt cannot account for: before the
/// first run, the table must hold no rows other than this incarnation's (queries would
/// read them once a snapshot is pinned).
fn check_owned(
    t: &Table,
    table: &iceberg::table::Table,
    pinned: Option<&WarehouseState>,
) -> Result<()> {
    if pinned.is_some() {
        return Ok(());
    }
    let foreign = table.metadata().snapshots().any(|s| {
        let p = &s.summary().additional_properties;
        p.get(SUMMARY_GENERATION) != Some(&t.generation)
            && p.get("added-records").is_some_and(|n| n != "0")
    });
    match foreign {
        true => Err(WarehouseError::Inconsistent {
            table: t.spec.name.clone(),
            reason: "its Iceberg table already holds rows this table did not tier; name a new \
                     Iceberg table in warehouse.iceberg"
                .into(),
        }),
        false => Ok(()),
    }
}

/// Writes one segment's rows (its valid docs) sorted by time, one data file per day.
async fn write_segment(
    table: &iceberg::table::Table,
    l: &Layout,
    s: &LoadedSegment,
    valid: Option<&RoaringBitmap>,
    run_id: &str,
) -> Result<(Vec<DataFile>, u64)> {
    let reader = s.reader.clone();
    let docs: Vec<u32> = match valid {
        Some(v) => v.iter().collect(),
        None => (0..reader.row_count()).collect(),
    };
    if docs.is_empty() {
        return Ok((Vec::new(), 0));
    }
    let target = l.arrow.clone();
    let columns: Vec<usize> = (0..target.fields().len()).collect();
    let time = l.time;
    // Decoding and sorting are CPU work: off the async threads.
    let sorted = tokio::task::spawn_blocking(move || -> Result<RecordBatch> {
        let mut parts = Vec::new();
        for chunk in docs.chunks(READ_DOCS) {
            let b = reader.read_batch(&columns, chunk)?;
            parts.push(cast_batch(&b, &target)?);
        }
        let all = arrow::compute::concat_batches(&target, &parts)?;
        let order = sort_to_indices(all.column(time), Some(SortOptions::default()), None)?;
        Ok(take_record_batch(&all, &order)?)
    })
    .await
    .map_err(|e| WarehouseError::Invalid(format!("tiering task failed: {e}")))??;
    let rows = sorted.num_rows() as u64;
    let days = day_runs(l, &sorted)?;
    let spec = table.metadata().default_partition_spec().as_ref().clone();
    let schema = table.metadata().current_schema().clone();
    let props = writer_properties(l, &s.reader)?;
    let mut out = Vec::new();
    for (day, start, len) in days {
        let key = PartitionKey::new(
            spec.clone(),
            schema.clone(),
            Struct::from_iter([Some(l.partition_value(day))]),
        );
        let names = DefaultFileNameGenerator::new(
            format!("{}-{run_id}", s.meta.id),
            None,
            DataFileFormat::Parquet,
        );
        let rolling = RollingFileWriterBuilder::new_with_default_file_size(
            ParquetWriterBuilder::new(props.clone(), schema.clone()),
            table.file_io().clone(),
            DefaultLocationGenerator::new(table.metadata())?,
            names,
        );
        let mut w = DataFileWriterBuilder::new(rolling).build(Some(key)).await?;
        w.write(sorted.slice(start, len)).await?;
        out.extend(w.close().await?);
    }
    Ok((out, rows))
}

/// How a segment's rows are written: zstd; the time column (sorted) delta-encoded, without a
/// dictionary; a bloom filter on each string column the spec indexes for lookups
/// (`inverted` or `bloom`) that has too many values for min/max statistics to prune
/// (the segment's dictionary holds more than [`BLOOM_MIN_VALUES`]), sized for one row group.
fn writer_properties(l: &Layout, seg: &basalt_segment::SegmentReader) -> Result<WriterProperties> {
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3)
                .map_err(|e| WarehouseError::Invalid(format!("zstd level: {e}")))?,
        ))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS));
    for (i, f) in l.arrow.fields().iter().enumerate() {
        let path = ColumnPath::from(f.name().as_str());
        if i == l.time {
            b = b
                .set_column_dictionary_enabled(path.clone(), false)
                .set_column_encoding(path, Encoding::DELTA_BINARY_PACKED);
            continue;
        }
        // The segment's own column of that name (its schema is the one it was sealed with).
        let Ok(c) = seg.column_index(f.name()) else {
            continue;
        };
        let def = seg.column_def(c);
        let lookups = def
            .indexes
            .iter()
            .any(|k| matches!(k, IndexKind::Inverted | IndexKind::Bloom));
        let values = match &seg.column_meta(c).encoding {
            SegEncoding::Dictionary { cardinality, .. } => u64::from(*cardinality),
            _ => seg.row_count() as u64,
        };
        if lookups && !def.multi_value && values > BLOOM_MIN_VALUES {
            b = b
                .set_column_bloom_filter_enabled(path.clone(), true)
                .set_column_bloom_filter_fpp(path.clone(), BLOOM_FPP)
                .set_column_bloom_filter_ndv(path, values.min(ROW_GROUP_ROWS as u64));
        }
    }
    Ok(b.build())
}

/// `(day, first row, rows)` of each day in a batch sorted by time.
fn day_runs(l: &Layout, sorted: &RecordBatch) -> Result<Vec<(i64, usize, usize)>> {
    let col = sorted.column(l.time);
    let values: Vec<i64> = match col.data_type() {
        arrow::datatypes::DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, _) => {
            let a = col
                .as_any()
                .downcast_ref::<arrow::array::TimestampMicrosecondArray>()
                .ok_or_else(|| WarehouseError::Invalid("time column type".into()))?;
            a.values().iter().map(|v| v.div_euclid(1000)).collect()
        }
        arrow::datatypes::DataType::Date32 => {
            let a = col
                .as_any()
                .downcast_ref::<arrow::array::Date32Array>()
                .ok_or_else(|| WarehouseError::Invalid("time column type".into()))?;
            a.values().iter().map(|v| *v as i64).collect()
        }
        arrow::datatypes::DataType::Int64 => {
            let a = col
                .as_any()
                .downcast_ref::<arrow::array::Int64Array>()
                .ok_or_else(|| WarehouseError::Invalid("time column type".into()))?;
            a.values().to_vec()
        }
        other => {
            return Err(WarehouseError::Invalid(format!(
                "time column of type {other} cannot be tiered"
            )))
        }
    };
    if col.null_count() > 0 {
        return Err(WarehouseError::Invalid(
            "the time column holds nulls".into(),
        ));
    }
    let mut runs: Vec<(i64, usize, usize)> = Vec::new();
    for (i, v) in values.iter().enumerate() {
        let day = l.day_of(*v);
        match runs.last_mut() {
            Some((d, _, len)) if *d == day => *len += 1,
            _ => runs.push((day, i, 1)),
        }
    }
    Ok(runs)
}
