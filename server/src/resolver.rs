//! The segments a fragment names, found among this server's loaded ones. In: a table name
//! and segment ids — sealed segments, or a stream partition's rows past a checkpoint
//! ([`StreamRange`]). Out: a [`TableSnapshot`] of those held here (with an upsert table's
//! valid docs) and the ids that are not (a stream range this server cannot answer exactly
//! is one).

use std::sync::Arc;

use basalt_cluster::wire::StreamRange;
use basalt_ingest::TableStore;
use basalt_query::fragment::SegmentResolver;
use basalt_query::{QueryError, TableSnapshot, TableSource};
use basalt_segment::{RoaringBitmap, SegmentSchema};

#[derive(Debug, Clone)]
pub struct StoreResolver(pub Arc<TableStore>);

impl SegmentResolver for StoreResolver {
    fn resolve(
        &self,
        table: &str,
        segments: &[String],
    ) -> Result<(TableSnapshot, Vec<String>), QueryError> {
        let Some(t) = self.0.table(table) else {
            return Err(QueryError::UndefinedTable(table.to_string()));
        };
        let view = t.view();
        let none = Arc::new(RoaringBitmap::new());
        let mut snap = TableSnapshot {
            name: table.to_string(),
            schema: t.schema.clone(),
            segments: Vec::with_capacity(segments.len()),
            valid: Vec::new(),
        };
        let mut missing = Vec::new();
        for id in segments {
            if let Some(range) = StreamRange::parse(id) {
                let read = match range.whole {
                    true => view.partition_readers(range.partition),
                    false => view.stream_readers(range.partition, range.after),
                };
                match read {
                    Some(Ok(r)) => {
                        snap.segments.extend(r.segments);
                        snap.valid.extend(r.valid);
                    }
                    Some(Err(e)) => {
                        return Err(QueryError::Snapshot {
                            table: table.to_string(),
                            source: Box::new(e),
                        })
                    }
                    None => missing.push(id.clone()),
                }
                continue;
            }
            match view.segment_reader(id) {
                Some(r) => {
                    snap.segments.push(r);
                    if let Some(valid) = &view.valid {
                        snap.valid.push(valid.get(id).unwrap_or(&none).clone());
                    }
                }
                None => missing.push(id.clone()),
            }
        }
        Ok((snap, missing))
    }
}

/// The tables of this server, each as the segments it holds: what its engine's sessions
/// see (fragments name their segments through [`StoreResolver`] instead).
#[derive(Debug, Clone)]
pub struct HeldTables(pub Arc<TableStore>);

impl TableSource for HeldTables {
    fn table_names(&self) -> Vec<String> {
        self.0.table_names()
    }

    fn schema(&self, name: &str) -> Option<SegmentSchema> {
        self.0.table(name).map(|t| t.schema.clone())
    }

    fn snapshot(&self, name: &str) -> Result<Option<TableSnapshot>, QueryError> {
        let Some(t) = self.0.table(name) else {
            return Ok(None);
        };
        let ids: Vec<String> = t
            .view()
            .segments
            .iter()
            .map(|s| s.meta.id.clone())
            .collect();
        StoreResolver(self.0.clone())
            .resolve(name, &ids)
            .map(|(s, _)| Some(s))
    }
}
