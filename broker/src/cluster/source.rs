//! A broker's [`TableSource`]: names and schemas from the table store (which holds no
//! segment on a broker), and for each table a [`ClusterTable`] whose scans run on servers.

use std::sync::Arc;

use basalt_query::scan::ScanStats;
use basalt_query::{QueryError, TableSnapshot, TableSource};
use basalt_segment::SegmentSchema;
use datafusion::catalog::TableProvider;

use super::table::ClusterTable;
use super::Cluster;
use crate::source::{StoreSource, QUARANTINE_SUFFIX};

#[derive(Debug, Clone)]
pub struct ClusterSource {
    pub store: StoreSource,
    pub cluster: Arc<Cluster>,
}

impl TableSource for ClusterSource {
    fn table_names(&self) -> Vec<String> {
        self.store.table_names()
    }

    fn schema(&self, name: &str) -> Option<SegmentSchema> {
        self.store.schema(name)
    }

    fn snapshot(&self, name: &str) -> Result<Option<TableSnapshot>, QueryError> {
        self.store.snapshot(name)
    }

    /// A batch table's results are reused while its published segments stay the same (the
    /// view is replaced when they change); a real-time table's are not.
    fn data_version(&self, name: &str) -> Option<basalt_query::cache::DataVersion> {
        self.store.data_version(name)
    }

    fn provider(
        &self,
        name: &str,
        stats: Arc<ScanStats>,
    ) -> Result<Option<Arc<dyn TableProvider>>, QueryError> {
        if name.ends_with(QUARANTINE_SUFFIX) {
            return self.store.provider(name, stats);
        }
        let Some(t) = self.store.0.table(name) else {
            // Unknown or unavailable: the store's answer says which.
            return self.store.provider(name, stats);
        };
        Ok(Some(Arc::new(ClusterTable::new(
            t,
            self.cluster.clone(),
            stats,
        ))))
    }
}
