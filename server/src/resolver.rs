//! The segments a fragment names, found among this server's loaded ones. In: a table name
//! and segment ids — sealed segments, or a stream partition's rows past a checkpoint
//! ([`StreamRange`]). Out: a [`TableSnapshot`] of those held here (with an upsert table's
//! valid docs) and the ids that are not (a stream range this server cannot answer exactly
//! is one, and so is one of a partition it has not caught up on: see
//! [`StoreResolver::lagging`]); the positions of the stream ranges it read.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use basalt_cluster::wire::StreamRange;
use basalt_ingest::store::{docs_from, Readers};
use basalt_ingest::upsert::KeyedTable;
use basalt_ingest::TableStore;
use basalt_query::fragment::SegmentResolver;
use basalt_query::{QueryError, TableSnapshot, TableSource};
use basalt_segment::SegmentSchema;
use parking_lot::Mutex;

#[derive(Debug, Clone)]
pub struct StoreResolver {
    store: Arc<TableStore>,
    /// Stream partitions this fragment may not read here: the broker has shown their rows
    /// up to a position this server's consumer has not reached.
    lagging: Arc<BTreeSet<i32>>,
    /// The positions of the stream ranges read (see [`Readers::position`]).
    positions: Arc<Mutex<BTreeMap<i32, i64>>>,
}

impl StoreResolver {
    pub fn new(store: Arc<TableStore>) -> Self {
        StoreResolver {
            store,
            lagging: Arc::default(),
            positions: Arc::default(),
        }
    }

    /// A resolver for one fragment, which reports the ranges of `lagging` partitions
    /// missing and records the positions of those it reads.
    pub fn for_fragment(&self, lagging: BTreeSet<i32>) -> Self {
        StoreResolver {
            store: self.store.clone(),
            lagging: Arc::new(lagging),
            positions: Arc::default(),
        }
    }

    pub fn store(&self) -> &Arc<TableStore> {
        &self.store
    }

    /// The positions of the stream ranges read so far.
    pub fn positions(&self) -> BTreeMap<i32, i64> {
        self.positions.lock().clone()
    }
}

/// Adds `r` to `snap`, keeping one valid-docs bitmap per segment once any reader has one
/// (the others get all their docs).
fn extend_aligned(snap: &mut TableSnapshot, r: Readers) {
    let all = |s: &Arc<basalt_segment::SegmentReader>| docs_from(s, 0);
    if r.valid.is_empty() && snap.valid.is_empty() {
        snap.segments.extend(r.segments);
        return;
    }
    while snap.valid.len() < snap.segments.len() {
        let s = &snap.segments[snap.valid.len()];
        snap.valid.push(all(s));
    }
    for (i, s) in r.segments.into_iter().enumerate() {
        snap.valid
            .push(r.valid.get(i).cloned().unwrap_or_else(|| all(&s)));
        snap.segments.push(s);
    }
}

impl SegmentResolver for StoreResolver {
    fn resolve(
        &self,
        table: &str,
        segments: &[String],
    ) -> Result<(TableSnapshot, Vec<String>), QueryError> {
        let Some(t) = self.store.table(table) else {
            return Err(QueryError::UndefinedTable(table.to_string()));
        };
        let view = t.view();
        let split = KeyedTable::of(&t.spec).is_none();
        let mut snap = TableSnapshot {
            name: table.to_string(),
            schema: t.schema.clone(),
            segments: Vec::with_capacity(segments.len()),
            valid: Vec::new(),
        };
        let mut missing = Vec::new();
        for id in segments {
            if let Some(range) = StreamRange::parse(id) {
                if self.lagging.contains(&range.partition) {
                    missing.push(id.clone());
                    continue;
                }
                let read = match range.whole {
                    true => view.partition_readers(range.partition),
                    false => view.stream_readers(range.partition, range.after, split),
                };
                match read {
                    Some(Ok(r)) => {
                        if let Some(p) = r.position {
                            let mut positions = self.positions.lock();
                            let e = positions.entry(range.partition).or_insert(p);
                            *e = (*e).max(p);
                        }
                        extend_aligned(&mut snap, r);
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
                    let valid = view
                        .valid
                        .as_ref()
                        .map(|v| vec![v.get(id).cloned().unwrap_or_default()]);
                    extend_aligned(
                        &mut snap,
                        Readers {
                            segments: vec![r],
                            valid: valid.unwrap_or_default(),
                            position: None,
                        },
                    );
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
        StoreResolver::new(self.0.clone())
            .resolve(name, &ids)
            .map(|(s, _)| Some(s))
    }
}
