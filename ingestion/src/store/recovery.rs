//! Finding and loading tables, and loading again those that failed. In: the server's deep
//! store, the homes of tables with their own deep store, and the local catalog
//! (`<data_dir>/catalog/<table>.json`, the spec of every table this server has held). Out:
//! each table loaded, or [`Unavailable`] with why; interrupted drops finished.
//!
//! The deep store is the source of truth, but it may be unreachable when the server starts:
//! the local catalog then says which tables exist, so they are reported unavailable (in
//! `/health`, `GET /tables/{name}` and query errors) rather than missing. A background task
//! tries again every few seconds until every table loads; a table recovers alone once its
//! deep store answers and its segments open (a damaged cached copy is fetched again).

use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde::Serialize;
use tracing::{info, warn};

use super::TableStore;
use crate::durable::write_file_durably;
use crate::error::{IngestError, Result};
use crate::home::Home;
use crate::metastore::{self, TableState};
use crate::spec::TableSpec;

/// How often unavailable tables are tried again.
const RETRY_EVERY: Duration = Duration::from_secs(3);

/// A table that exists but cannot be used now.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Unavailable {
    pub table: String,
    /// Its spec, when known (from its state or the local catalog).
    #[serde(skip)]
    pub spec: Option<TableSpec>,
    pub deep_store: String,
    pub reason: String,
    /// Since when (RFC 3339).
    pub since: String,
}

impl TableStore {
    fn catalog_file(&self, table: &str) -> PathBuf {
        self.data_dir.join("catalog").join(format!("{table}.json"))
    }

    /// Specs of the tables this server held, from the local catalog.
    fn catalog(&self) -> Vec<TableSpec> {
        let Ok(dir) = std::fs::read_dir(self.data_dir.join("catalog")) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in dir.flatten() {
            let path = e.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            match std::fs::read(&path)
                .map_err(IngestError::from)
                .and_then(|b| TableSpec::from_json(&b))
            {
                Ok(spec) => out.push(spec),
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "ignoring an unreadable catalog entry")
                }
            }
        }
        out
    }

    /// Records a table in the local catalog (durably).
    pub(crate) fn remember(&self, spec: &TableSpec) -> Result<()> {
        let json =
            serde_json::to_vec_pretty(spec).map_err(|e| IngestError::Metastore(e.to_string()))?;
        Ok(write_file_durably(&self.catalog_file(&spec.name), &json)?)
    }

    pub(crate) fn forget(&self, table: &str) {
        let _ = std::fs::remove_file(self.catalog_file(table));
        self.unavailable.write().remove(table);
    }

    fn mark_unavailable(&self, table: &str, spec: Option<TableSpec>, home: &Home, e: &IngestError) {
        warn!(table, deep_store = %home.describe(), error = %e, "table unavailable; trying again in the background");
        let mut u = self.unavailable.write();
        let since = u
            .get(table)
            .map(|x| x.since.clone())
            .unwrap_or_else(|| chrono::Utc::now().to_rfc3339());
        u.insert(
            table.to_string(),
            Unavailable {
                table: table.to_string(),
                spec,
                deep_store: home.describe(),
                reason: e.to_string(),
                since,
            },
        );
    }

    /// Loads every table of `names` in `home` that is not loaded yet, finishing drops that
    /// a crash interrupted and forgetting tables dropped elsewhere.
    async fn discover_in(
        self: &Arc<Self>,
        home: &Arc<Home>,
        names: Vec<(String, Option<TableSpec>)>,
    ) {
        for (name, known) in names {
            if self.table(&name).is_some() {
                continue;
            }
            let state = match home.metastore.get(&name).await {
                Ok(Some(s)) => s.value,
                Ok(None) => {
                    info!(table = %name, deep_store = %home.describe(), "table is gone from its deep store; forgetting it");
                    self.forget(&name);
                    continue;
                }
                Err(e) => {
                    self.mark_unavailable(&name, known, home, &e);
                    continue;
                }
            };
            if let Some(d) = &state.dropped {
                self.forget(&name);
                if !d.purged {
                    self.finish_drop(home, &state).await;
                }
                continue;
            }
            let spec = state.spec.clone();
            match self.load_table(home.clone(), state).await {
                Ok(_) => {
                    if let Err(e) = self.remember(&spec) {
                        warn!(table = %name, error = %e, "could not record the table in the local catalog");
                    }
                }
                Err(e) => self.mark_unavailable(&name, Some(spec), home, &e),
            }
        }
    }

    async fn finish_drop(&self, home: &Home, tomb: &TableState) {
        info!(table = %tomb.spec.name, generation = %tomb.generation, "finishing a drop an earlier run did not");
        if let Err(e) = self.purge(home, tomb).await {
            warn!(table = %tomb.spec.name, error = %e, "could not finish the drop; trying again at the next start");
        }
    }

    /// Finds and loads every table not loaded yet (caller holds the admin lock).
    pub(crate) async fn discover(self: &Arc<Self>) {
        let catalog = self.catalog();
        let default = self.default_home.clone();
        let listed = match default.prepare().await {
            Ok(()) => default.metastore.list_all().await,
            Err(e) => Err(e),
        };
        match listed {
            Ok(names) => {
                let mut names: Vec<(String, Option<TableSpec>)> =
                    names.into_iter().map(|n| (n, None)).collect();
                // Remembered here but gone from the deep store: dropped elsewhere.
                for spec in catalog.iter().filter(|s| self.lives_in_default(s)) {
                    if !names.iter().any(|(n, _)| *n == spec.name) {
                        names.push((spec.name.clone(), Some(spec.clone())));
                    }
                }
                self.discover_in(&default, names).await;
                // Only now: until the listed tables are loaded (or marked unavailable),
                // health must not say `ok` for a server that cannot answer for them yet.
                *self.store_error.write() = None;
            }
            Err(e) => {
                warn!(deep_store = %default.describe(), error = %e, "the deep store cannot be listed; trying again in the background");
                *self.store_error.write() = Some(e.to_string());
                for spec in catalog.iter().filter(|s| self.lives_in_default(s)) {
                    if self.table(&spec.name).is_none() {
                        self.mark_unavailable(&spec.name, Some(spec.clone()), &default, &e);
                    }
                }
            }
        }
        for spec in catalog.iter().filter(|s| !self.lives_in_default(s)) {
            if self.table(&spec.name).is_some() {
                continue;
            }
            match self.home_for(spec.deep_store.as_deref()).await {
                Ok(home) => {
                    let prepared = home.prepare().await;
                    match prepared {
                        Ok(()) => {
                            self.discover_in(&home, vec![(spec.name.clone(), Some(spec.clone()))])
                                .await
                        }
                        Err(e) => self.mark_unavailable(&spec.name, Some(spec.clone()), &home, &e),
                    }
                }
                Err(e) => {
                    warn!(table = %spec.name, error = %e, "cannot open the table's deep store")
                }
            }
        }
    }

    fn lives_in_default(&self, spec: &TableSpec) -> bool {
        spec.deep_store.is_none() || spec.deep_store == self.default_home.url
    }

    /// Tries the unavailable tables (and the deep store listing) again every few seconds.
    pub(crate) fn start_recovery(self: &Arc<Self>) {
        let weak: Weak<TableStore> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RETRY_EVERY).await;
                let Some(ts) = weak.upgrade() else { return };
                let pending = !ts.unavailable.read().is_empty() || ts.store_error.read().is_some();
                if !pending {
                    continue;
                }
                let _g = ts.admin.lock().await;
                ts.discover().await;
            }
        });
    }

    /// Drops a table that is not loaded: it must exist in its deep store (the store must
    /// answer).
    pub(crate) async fn drop_unavailable(&self, name: &str) -> Result<()> {
        let Some(u) = self.unavailable_table(name) else {
            return Err(IngestError::NoSuchTable(name.into()));
        };
        let spec = u.spec.ok_or_else(|| IngestError::Unavailable {
            table: name.into(),
            reason: u.reason.clone(),
        })?;
        let home = self.home_for(spec.deep_store.as_deref()).await?;
        let state = home
            .metastore
            .get(name)
            .await?
            .filter(|s| !s.value.is_dropped())
            .ok_or_else(|| IngestError::NoSuchTable(name.into()))?;
        let tomb =
            metastore::drop_table(home.metastore.as_ref(), name, &state.value.generation).await?;
        self.forget(name);
        self.purge(&home, &tomb).await?;
        info!(table = %name, "dropped an unavailable table");
        Ok(())
    }
}
