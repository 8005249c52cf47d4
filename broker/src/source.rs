//! Adapts the ingestion side's [`TableStore`] to the query layer's [`TableSource`]: each call
//! to `snapshot` copies the table's current segment list, which is then fixed for the query.

use std::sync::Arc;

use basalt_ingest::TableStore;
use basalt_query::{TableSnapshot, TableSource};

#[derive(Debug, Clone)]
pub struct StoreSource(pub Arc<TableStore>);

impl TableSource for StoreSource {
    fn table_names(&self) -> Vec<String> {
        self.0.table_names()
    }

    fn snapshot(&self, name: &str) -> Option<TableSnapshot> {
        let t = self.0.table(name)?;
        Some(TableSnapshot {
            name: name.to_string(),
            schema: t.schema.clone(),
            segments: t.segments().iter().map(|s| s.reader.clone()).collect(),
        })
    }
}
