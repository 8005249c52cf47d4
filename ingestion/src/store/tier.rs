//! The metastore side of a tiering run. In: the segments a run wrote to the warehouse and the
//! warehouse state that now covers them. Out: one metastore commit removing the segments and
//! recording the state, then one view swap; the segments' objects are deleted afterwards.

use std::sync::Arc;

use tracing::info;

use super::{Table, TableStore};
use crate::error::{IngestError, Result};
use crate::metastore;
use crate::warehouse::WarehouseState;

impl TableStore {
    /// Removes `moved` from the table and records `state`, in one commit; the view then holds
    /// neither the segments nor the old state. On an error nothing changed (or, for an error
    /// after the commit was sent, the next [`TableStore::sync`] or restart shows the outcome).
    pub async fn tier(&self, t: &Table, moved: &[String], state: &WarehouseState) -> Result<()> {
        let _g = t.publish.lock().await;
        if self
            .table(&t.spec.name)
            .is_none_or(|cur| !std::ptr::eq(cur.as_ref(), t))
        {
            return Err(IngestError::NoSuchTable(t.spec.name.clone()));
        }
        let committed = metastore::tier(
            t.home.metastore.as_ref(),
            &t.spec.name,
            &t.generation,
            moved,
            state,
        )
        .await?;
        crate::fault::hit("tier.after_metastore_commit");
        let gone: Vec<_> = t
            .view()
            .segments
            .iter()
            .filter(|s| moved.contains(&s.meta.id))
            .map(|s| s.meta.clone())
            .collect();
        t.change_view(|v| {
            v.segments.retain(|s| !moved.contains(&s.meta.id));
            v.published = Arc::new(committed.value.segments.clone());
            v.warehouse = committed.value.warehouse.clone().map(Arc::new);
            if let Some(valid) = v.valid.as_deref() {
                let mut docs = valid.clone();
                docs.retain(|id, _| !moved.contains(id));
                v.valid = Some(Arc::new(docs));
            }
        });
        info!(table = %t.spec.name, segments = moved.len(), boundary = state.boundary, snapshot_id = state.snapshot_id, "tiered segments to the warehouse");
        // Queries that took the old view keep their readers (mapped or cached); the objects
        // are no longer listed, so deleting them now is safe. What a failure leaves is
        // removed at the next start as unpublished.
        for s in &gone {
            t.home.evict(&t.spec.name, &s.id);
        }
        t.home.delete_staged(&t.spec.name, &gone).await;
        Ok(())
    }
}
