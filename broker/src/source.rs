//! Adapts the ingestion side's [`TableStore`] to the query layer's [`TableSource`]: each call
//! to `snapshot` takes the table's current view — sealed segments plus the real-time
//! partitions' mutable segments, frozen into in-memory chunks — which is then fixed for the
//! query. A real-time table also answers as `<table>$quarantine`, its quarantined messages.

use std::sync::Arc;

use basalt_ingest::quarantine::quarantine_schema;
use basalt_ingest::TableStore;
use basalt_query::{TableSnapshot, TableSource};

/// The suffix naming a table's quarantine.
pub const QUARANTINE_SUFFIX: &str = "$quarantine";

#[derive(Debug, Clone)]
pub struct StoreSource(pub Arc<TableStore>);

impl TableSource for StoreSource {
    fn table_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for n in self.0.table_names() {
            let realtime = self.0.table(&n).is_some_and(|t| t.spec.source.is_some());
            if realtime {
                names.push(format!("{n}{QUARANTINE_SUFFIX}"));
            }
            names.push(n);
        }
        names
    }

    fn snapshot(&self, name: &str) -> Result<Option<TableSnapshot>, String> {
        let (base, quarantine) = match name.strip_suffix(QUARANTINE_SUFFIX) {
            Some(b) => (b, true),
            None => (name, false),
        };
        let Some(t) = self.0.table(base) else {
            return Ok(None);
        };
        if quarantine && t.spec.source.is_none() {
            return Ok(None);
        }
        // One view: a part being sealed is either still in `mutable` or already among the
        // segments, never both.
        let view = t.view();
        let (sealed, schema) = if quarantine {
            (&view.quarantine, quarantine_schema())
        } else {
            (&view.segments, t.schema.clone())
        };
        let mut segments: Vec<_> = sealed.iter().map(|s| s.reader.clone()).collect();
        for part in &view.mutable {
            let m = if quarantine {
                &part.quarantine
            } else {
                &part.rows
            };
            segments.extend(m.snapshot().map_err(|e| {
                format!("freezing partition {}'s recent rows: {e}", part.partition)
            })?);
        }
        Ok(Some(TableSnapshot {
            name: name.to_string(),
            schema,
            segments,
        }))
    }
}
