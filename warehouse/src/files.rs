//! The Iceberg side of a tiered table, read by DataFusion's Parquet reader. In: the data
//! files a scan of the pinned snapshot planned (files Basalt wrote: field names and ids are
//! the table's, no delete files), the columns a query needs in the table's own types, and a
//! predicate for pruning. Out: a `DataSourceExec` whose partitions each read a share of the
//! files (balanced by bytes), skipping row groups and pages by their statistics and bloom
//! filters, with every
//! string column the table holds dictionary-encoded decoded straight into dictionary arrays:
//! the file's Arrow schema hint is replaced by one with the table's dictionary types, so the
//! reader keeps each column chunk's Parquet dictionary instead of materialising the strings
//! and hashing them again per row. Timestamps are adapted to the table's unit by DataFusion.
//!
//! Footers are cached per store (files are immutable once committed), hinted: a hinted
//! footer carries the fingerprint of the table's dictionary columns it was hinted for (and
//! the file's own Arrow schema, to hint again for another), so the hint is built once per
//! file, not per query.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use arrow::datatypes::{DataType, Schema, SchemaRef};
use bytes::Bytes;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::parquet::metadata::CachedParquetMetaData;
use datafusion::datasource::physical_plan::parquet::CachedParquetFileReaderFactory;
use datafusion::datasource::physical_plan::{
    FileGroup, FileScanConfigBuilder, ParquetFileReaderFactory, ParquetSource,
};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::cache::cache_manager::CachedFileMetadataEntry;
use datafusion::execution::cache::{CacheAccessor, DefaultFilesMetadataCache};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use datafusion::physical_plan::ExecutionPlan;
use futures::future::BoxFuture;
use futures::FutureExt;
use iceberg::scan::FileScanTask;
use object_store::ObjectMeta;
use parking_lot::Mutex;
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::arrow::{encode_arrow_schema, parquet_to_arrow_schema, ARROW_SCHEMA_META_KEY};
use parquet::file::metadata::{FileMetaData, KeyValue, ParquetMetaData, ParquetMetaDataBuilder};

use crate::scan::{balance, ext};
use crate::storage::ObjectStorage;

/// Footer bytes cached per store.
const FOOTER_CACHE_BYTES: usize = 64 << 20;

/// Data files read through DataFusion: the stores they live in and a footer cache for each.
#[derive(Default)]
pub struct ParquetFiles {
    storage: ObjectStorage,
    footers: Mutex<HashMap<String, Arc<DefaultFilesMetadataCache>>>,
}

impl std::fmt::Debug for ParquetFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParquetFiles").finish_non_exhaustive()
    }
}

/// Whether `t` reads its whole file (from its first byte, for its full length): what the
/// manifest's row count counts.
pub(crate) fn whole_file(t: &FileScanTask) -> bool {
    t.start == 0 && (t.length == 0 || t.length == t.file_size_in_bytes)
}

impl ParquetFiles {
    /// Whether `tasks`' files all live in one store (what [`ParquetFiles::scan`] reads).
    pub fn one_store(&self, tasks: &[FileScanTask]) -> bool {
        let mut roots = tasks.iter().map(|t| {
            self.storage
                .locate(&t.data_file_path)
                .map(|(root, _, _)| root)
        });
        match roots.next() {
            None => true,
            Some(Err(_)) => false,
            Some(Ok(first)) => roots.all(|r| r.is_ok_and(|r| r == first)),
        }
    }

    /// A scan of `tasks` producing `schema` (some of `table`'s columns in its types; a file's
    /// column is found by name), row groups and pages pruned by `predicate` (bloom filters
    /// included; rows are not filtered by it), over at most `partitions` partitions. The
    /// files must all be in one store ([`ParquetFiles::one_store`]); an internal error if not.
    pub fn scan(
        &self,
        tasks: &[FileScanTask],
        table: SchemaRef,
        schema: SchemaRef,
        predicate: Option<Arc<dyn PhysicalExpr>>,
        partitions: usize,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let mut place: Option<(String, Arc<dyn object_store::ObjectStore>)> = None;
        let mut files = Vec::with_capacity(tasks.len());
        for t in tasks {
            let (root, store, path) = self.storage.locate(&t.data_file_path).map_err(ext)?;
            match &place {
                None => place = Some((root, store)),
                Some((r, _)) if *r == root => {}
                Some(_) => {
                    return Err(DataFusionError::Internal(format!(
                        "a direct Parquet scan of files in two stores ({})",
                        t.data_file_path
                    )))
                }
            }
            let size = t.file_size_in_bytes;
            let mut f = PartitionedFile::new_from_meta(ObjectMeta {
                location: path,
                last_modified: chrono::DateTime::<chrono::Utc>::UNIX_EPOCH,
                size,
                e_tag: None,
                version: None,
            });
            if !whole_file(t) {
                f = f.with_range(t.start as i64, (t.start + t.length) as i64);
            }
            files.push(f);
        }
        let Some((root, store)) = place else {
            return Ok(Arc::new(EmptyExec::new(schema)));
        };
        let footers = self
            .footers
            .lock()
            .entry(root)
            .or_insert_with(|| Arc::new(DefaultFilesMetadataCache::new(FOOTER_CACHE_BYTES)))
            .clone();
        let factory = DictionaryHint {
            inner: CachedParquetFileReaderFactory::new(store, footers.clone()),
            hint: Arc::new(Hint::of(table)),
            footers,
        };
        // The predicate prunes only: evaluating it while decoding (late materialisation) made
        // filters keeping half the rows 1.6x slower (selections of short runs) and gained
        // little on needles, whose values are spread over most row groups.
        let mut source = ParquetSource::new(schema)
            .with_parquet_file_reader_factory(Arc::new(factory))
            .with_enable_page_index(true);
        if let Some(p) = predicate {
            source = source.with_predicate(p);
        }
        let groups = balance(files, partitions, |f| f.object_meta.size)
            .into_iter()
            .map(FileGroup::new)
            .collect();
        let config =
            FileScanConfigBuilder::new(ObjectStoreUrl::local_filesystem(), Arc::new(source))
                .with_file_groups(groups)
                .build();
        Ok(DataSourceExec::from_data_source(config))
    }
}

/// The footer hint for one table: its schema and the fingerprint of its dictionary columns.
#[derive(Debug)]
struct Hint {
    table: SchemaRef,
    fingerprint: String,
}

/// Footer entries a hinted footer carries: the fingerprint it was hinted for, and the file's
/// own Arrow schema hint (empty: it had none).
const HINTED_FOR: &str = "basalt.hinted_for";
const FILE_ARROW_SCHEMA: &str = "basalt.file_arrow_schema";

impl Hint {
    fn of(table: SchemaRef) -> Hint {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for f in table.fields() {
            if let DataType::Dictionary(..) = f.data_type() {
                (f.name(), f.data_type()).hash(&mut h);
            }
        }
        Hint {
            table,
            fingerprint: format!("{:016x}", h.finish()),
        }
    }

    /// Whether `meta` is a footer hinted for this table already.
    fn hinted(&self, meta: &ParquetMetaData) -> bool {
        meta.file_metadata()
            .key_value_metadata()
            .into_iter()
            .flatten()
            .any(|k| k.key == HINTED_FOR && k.value.as_deref() == Some(&self.fingerprint))
    }
}

/// Readers whose footer carries the table's dictionary types as its Arrow schema hint; a
/// footer hinted once goes back to the cache in place of the file's own.
struct DictionaryHint {
    inner: CachedParquetFileReaderFactory,
    hint: Arc<Hint>,
    footers: Arc<DefaultFilesMetadataCache>,
}

impl std::fmt::Debug for DictionaryHint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DictionaryHint")
            .field("hint", &self.hint)
            .finish_non_exhaustive()
    }
}

impl ParquetFileReaderFactory for DictionaryHint {
    fn create_reader(
        &self,
        partition_index: usize,
        file: PartitionedFile,
        metadata_size_hint: Option<usize>,
        metrics: &ExecutionPlanMetricsSet,
    ) -> DfResult<Box<dyn AsyncFileReader + Send>> {
        let object = file.object_meta.clone();
        Ok(Box::new(HintedReader {
            inner: self
                .inner
                .create_reader(partition_index, file, metadata_size_hint, metrics)?,
            hint: self.hint.clone(),
            footers: self.footers.clone(),
            object,
        }))
    }
}

struct HintedReader {
    inner: Box<dyn AsyncFileReader + Send>,
    hint: Arc<Hint>,
    footers: Arc<DefaultFilesMetadataCache>,
    object: ObjectMeta,
}

impl AsyncFileReader for HintedReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        self.inner.get_bytes(range)
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        self.inner.get_byte_ranges(ranges)
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let meta = self.inner.get_metadata(options).await?;
            if self.hint.hinted(&meta) {
                return Ok(meta);
            }
            let hinted = with_dictionary_hint(&meta, &self.hint)?;
            self.footers.put(
                &self.object.location,
                CachedFileMetadataEntry::new(
                    self.object.clone(),
                    Arc::new(CachedParquetMetaData::new(hinted.clone())),
                ),
            );
            Ok(hinted)
        }
        .boxed()
    }
}

/// `meta` with an Arrow schema hint asking for the table's dictionary type wherever the file
/// holds that dictionary's value type under the same name, marked as hinted for `hint`.
/// A footer hinted for another table's columns is hinted again from the file's own schema.
fn with_dictionary_hint(
    meta: &ParquetMetaData,
    hint: &Hint,
) -> parquet::errors::Result<Arc<ParquetMetaData>> {
    let fm = meta.file_metadata();
    let kv: Vec<KeyValue> = fm.key_value_metadata().cloned().unwrap_or_default();
    let value = |key: &str| kv.iter().find(|k| k.key == key).map(|k| k.value.clone());
    // The file's own Arrow schema hint, wherever an earlier hint put it.
    let own: Option<String> = match value(FILE_ARROW_SCHEMA) {
        Some(v) => v.filter(|v| !v.is_empty()),
        None => value(ARROW_SCHEMA_META_KEY).flatten(),
    };
    let mut out: Vec<KeyValue> = kv
        .iter()
        .filter(|k| {
            ![ARROW_SCHEMA_META_KEY, FILE_ARROW_SCHEMA, HINTED_FOR].contains(&k.key.as_str())
        })
        .cloned()
        .collect();
    let mut with_own = out.clone();
    if let Some(own) = &own {
        with_own.push(KeyValue::new(
            ARROW_SCHEMA_META_KEY.to_string(),
            own.clone(),
        ));
    }
    let file = parquet_to_arrow_schema(fm.schema_descr(), Some(&with_own))?;
    let mut hinted = false;
    let fields: Vec<_> = file
        .fields()
        .iter()
        .map(
            |f| match hint.table.field_with_name(f.name()).map(|t| t.data_type()) {
                Ok(t @ DataType::Dictionary(_, value)) if value.as_ref() == f.data_type() => {
                    hinted = true;
                    Arc::new(f.as_ref().clone().with_data_type(t.clone()))
                }
                _ => f.clone(),
            },
        )
        .collect();
    match hinted {
        true => {
            let schema = Schema::new_with_metadata(fields, file.metadata().clone());
            out.push(KeyValue::new(
                ARROW_SCHEMA_META_KEY.to_string(),
                encode_arrow_schema(&schema),
            ));
        }
        false => {
            if let Some(own) = &own {
                out.push(KeyValue::new(
                    ARROW_SCHEMA_META_KEY.to_string(),
                    own.clone(),
                ));
            }
        }
    }
    out.push(KeyValue::new(
        FILE_ARROW_SCHEMA.to_string(),
        own.unwrap_or_default(),
    ));
    out.push(KeyValue::new(
        HINTED_FOR.to_string(),
        hint.fingerprint.clone(),
    ));
    let file_meta = FileMetaData::new(
        fm.version(),
        fm.num_rows(),
        fm.created_by().map(str::to_string),
        Some(out),
        fm.schema_descr_ptr(),
        fm.column_orders().cloned(),
    );
    let out = ParquetMetaDataBuilder::new(file_meta)
        .set_row_groups(meta.row_groups().to_vec())
        .set_column_index(meta.column_index().cloned())
        .set_offset_index(meta.offset_index().cloned())
        .build();
    Ok(Arc::new(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray, RecordBatch, StringArray};
    use arrow::datatypes::{Field, Int32Type};
    use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ParquetRecordBatchReaderBuilder};
    use parquet::arrow::ArrowWriter;

    #[test]
    fn strings_the_table_holds_as_dictionaries_decode_as_dictionaries() {
        let file_schema = Arc::new(Schema::new(vec![
            Field::new("device", DataType::Utf8, true),
            Field::new("url", DataType::Utf8, true),
        ]));
        let device = StringArray::from(vec![Some("ios"), None, Some("tv"), Some("ios")]);
        let url = StringArray::from(vec!["a", "b", "c", "d"]);
        let batch = RecordBatch::try_new(
            file_schema.clone(),
            vec![Arc::new(device.clone()), Arc::new(url)],
        )
        .unwrap();
        let mut bytes = Vec::new();
        let mut w = ArrowWriter::try_new(&mut bytes, file_schema, None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let bytes = Bytes::from(bytes);
        let dict = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
        // The table: `device` dictionary-encoded, `url` plain, and a column no file has.
        let table = Schema::new(vec![
            Field::new("device", dict.clone(), true),
            Field::new("url", DataType::Utf8, true),
            Field::new("other", dict.clone(), true),
        ]);
        let meta = ArrowReaderMetadata::load(&bytes, Default::default())
            .unwrap()
            .metadata()
            .clone();
        let hint = Hint::of(Arc::new(table));
        assert!(!hint.hinted(&meta));
        let hinted = with_dictionary_hint(&meta, &hint).unwrap();
        assert!(
            hint.hinted(&hinted),
            "marked: the next query takes it as it is"
        );
        let opts = ArrowReaderMetadata::try_new(hinted.clone(), Default::default()).unwrap();
        assert_eq!(opts.schema().field(0).data_type(), &dict);
        assert_eq!(opts.schema().field(1).data_type(), &DataType::Utf8);
        let mut reader = ParquetRecordBatchReaderBuilder::new_with_metadata(bytes.clone(), opts)
            .build()
            .unwrap();
        let got = reader.next().unwrap().unwrap();
        let d = got.column(0).as_dictionary::<Int32Type>();
        let plain = arrow::compute::cast(d, &DataType::Utf8).unwrap();
        assert_eq!(plain.as_string::<i32>(), &device);
        assert_eq!(d.null_count(), 1);
        // A table whose columns changed since (`device` now plain) hints the hinted footer
        // again from the file's own schema: plain strings, as the file holds them.
        let plain_table = Hint::of(Arc::new(Schema::new(vec![Field::new(
            "device",
            DataType::Utf8,
            true,
        )])));
        assert_ne!(plain_table.fingerprint, hint.fingerprint);
        assert!(!plain_table.hinted(&hinted));
        let again = with_dictionary_hint(&hinted, &plain_table).unwrap();
        assert!(plain_table.hinted(&again) && !hint.hinted(&again));
        let opts = ArrowReaderMetadata::try_new(again, Default::default()).unwrap();
        assert_eq!(opts.schema().field(0).data_type(), &DataType::Utf8);
        let own = ArrowReaderMetadata::try_new(meta, Default::default()).unwrap();
        assert_eq!(
            opts.schema().fields(),
            own.schema().fields(),
            "the file's own schema back"
        );
    }
}
