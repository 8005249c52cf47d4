//! [`Metastore`] on any object store with create-only conditional puts: one immutable
//! object per version, `_metastore/tables/<table>/<version:020>.json` (documents:
//! `_metastore/documents/<name>/<version:020>.json`).

use std::sync::Arc;

use async_trait::async_trait;
use futures::TryStreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::Deserialize;
use tracing::{info, warn};

use super::{Metastore, SegmentMeta, TableState, Versioned};
use crate::error::{IngestError, Result};
use crate::spec::TableSpec;

/// Versions kept behind the latest (older ones are deleted after a commit).
const KEEP_VERSIONS: u64 = 8;

/// [`Metastore`] on any object store with create-only conditional puts.
#[derive(Debug)]
pub struct ObjectStoreMetastore {
    store: Arc<dyn ObjectStore>,
}

const ROOT: &str = "_metastore/tables";

const DOCUMENTS: &str = "_metastore/documents";

fn table_prefix(table: &str) -> ObjPath {
    ObjPath::from(format!("{ROOT}/{table}"))
}

fn version_path(table: &str, version: u64) -> ObjPath {
    ObjPath::from(format!("{ROOT}/{table}/{version:020}.json"))
}

fn document_path(name: &str, version: u64) -> ObjPath {
    ObjPath::from(format!("{DOCUMENTS}/{name}/{version:020}.json"))
}

fn parse_version(p: &ObjPath) -> Option<u64> {
    p.filename()?.strip_suffix(".json")?.parse().ok()
}

impl ObjectStoreMetastore {
    /// The metastore in `store`, without touching the store (it may be unreachable now).
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        ObjectStoreMetastore { store }
    }

    /// Opens the metastore in `store`, converting single-file manifests of format 1
    /// (`_metastore/tables/<table>.json`) to versioned state.
    pub async fn open(store: Arc<dyn ObjectStore>) -> Result<Self> {
        let ms = ObjectStoreMetastore::new(store);
        ms.upgrade_manifests().await?;
        Ok(ms)
    }

    /// Converts single-file manifests of format 1 to versioned state (idempotent).
    pub async fn upgrade_manifests(&self) -> Result<()> {
        let listing = self
            .store
            .list_with_delimiter(Some(&ObjPath::from(ROOT)))
            .await?;
        for o in listing.objects {
            let Some(name) = o
                .location
                .filename()
                .and_then(|f| f.strip_suffix(".json"))
                .map(str::to_string)
            else {
                continue;
            };
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct ManifestV1 {
                version: u32,
                spec: TableSpec,
                segments: Vec<SegmentMeta>,
            }
            let bytes = self.store.get(&o.location).await?.bytes().await?;
            let m: ManifestV1 = serde_json::from_slice(&bytes)
                .map_err(|e| IngestError::Metastore(format!("{}: {e}", o.location)))?;
            if m.version != 1 {
                return Err(IngestError::Metastore(format!(
                    "{}: manifest version {} is not supported",
                    o.location, m.version
                )));
            }
            let mut state = TableState::new(m.spec);
            // Format-1 tables keep their objects directly under the table's prefixes.
            state.generation = String::new();
            state.segments = m.segments;
            match self.create(&state).await {
                Ok(_) | Err(IngestError::TableExists(_)) => {}
                Err(e) => return Err(e),
            }
            self.store.delete(&o.location).await?;
            info!(table = %name, "converted a format-1 manifest to versioned metastore state");
        }
        Ok(())
    }

    async fn versions(&self, table: &str) -> Result<Vec<u64>> {
        self.versions_under(&table_prefix(table)).await
    }

    /// The versions stored under `prefix`, ascending.
    async fn versions_under(&self, prefix: &ObjPath) -> Result<Vec<u64>> {
        let objects: Vec<_> = self.store.list(Some(prefix)).try_collect().await?;
        let mut v: Vec<u64> = objects
            .iter()
            .filter_map(|o| parse_version(&o.location))
            .collect();
        v.sort_unstable();
        Ok(v)
    }

    async fn put_new(&self, table: &str, version: u64, state: &TableState) -> Result<()> {
        let json =
            serde_json::to_vec_pretty(state).map_err(|e| IngestError::Metastore(e.to_string()))?;
        self.create_only(&version_path(table, version), table, version, json)
            .await
    }

    /// Refuses a write after `expected` once `expected` is pruned: versions are pruned only
    /// after [`KEEP_VERSIONS`] newer ones exist, so the version after it may be pruned too,
    /// and a create-only write would then succeed unseen by every reader (the latest wins).
    async fn check_not_pruned(
        &self,
        expected_path: &ObjPath,
        name: &str,
        expected: u64,
    ) -> Result<()> {
        if expected == 0 {
            return Ok(());
        }
        match self.store.head(expected_path).await {
            Ok(_) => Ok(()),
            Err(object_store::Error::NotFound { .. }) => Err(IngestError::Conflict {
                table: name.into(),
                expected,
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes `body` at `path` unless it exists: [`IngestError::Conflict`] (for `name`, at
    /// `version - 1`) when another writer created it first.
    async fn create_only(
        &self,
        path: &ObjPath,
        name: &str,
        version: u64,
        body: Vec<u8>,
    ) -> Result<()> {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self
            .store
            .put_opts(path, PutPayload::from(body), opts)
            .await
        {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => Err(IngestError::Conflict {
                table: name.into(),
                expected: version - 1,
            }),
            Err(e) => Err(e.into()),
        }
    }
}

#[async_trait]
impl Metastore for ObjectStoreMetastore {
    async fn list_tables(&self) -> Result<Vec<String>> {
        let mut live = Vec::new();
        for name in self.list_all().await? {
            if self
                .get(&name)
                .await?
                .is_some_and(|s| !s.value.is_dropped())
            {
                live.push(name);
            }
        }
        Ok(live)
    }

    async fn list_all(&self) -> Result<Vec<String>> {
        let listing = self
            .store
            .list_with_delimiter(Some(&ObjPath::from(ROOT)))
            .await?;
        let mut names = Vec::new();
        for p in &listing.common_prefixes {
            let Some(name) = p.filename() else { continue };
            // A local directory may keep an empty folder.
            if !self.versions(name).await?.is_empty() {
                names.push(name.to_string());
            }
        }
        names.sort();
        Ok(names)
    }

    async fn get(&self, table: &str) -> Result<Option<Versioned<TableState>>> {
        let Some(&version) = self.versions(table).await?.last() else {
            return Ok(None);
        };
        let path = version_path(table, version);
        let bytes = match self.store.get(&path).await {
            Ok(r) => r.bytes().await?,
            // Pruned or dropped between listing and reading: the table moved on.
            Err(object_store::Error::NotFound { .. }) => return Box::pin(self.get(table)).await,
            Err(e) => return Err(e.into()),
        };
        let value = TableState::decode(&bytes, path.as_ref())?;
        Ok(Some(Versioned { version, value }))
    }

    async fn create(&self, state: &TableState) -> Result<u64> {
        let table = &state.spec.name;
        // One conditional write decides: version 1 of a new name, or the version after a
        // tombstone. Two creates racing for it cannot both win.
        let version = match self.get(table).await? {
            None => 1,
            Some(cur) if cur.value.is_dropped() => cur.version + 1,
            Some(_) => return Err(IngestError::TableExists(table.clone())),
        };
        match self.put_new(table, version, state).await {
            Ok(()) => Ok(version),
            Err(IngestError::Conflict { .. }) => Err(IngestError::TableExists(table.clone())),
            Err(e) => Err(e),
        }
    }

    async fn commit(&self, table: &str, expected: u64, next: &TableState) -> Result<u64> {
        let version = expected + 1;
        self.check_not_pruned(&version_path(table, expected), table, expected)
            .await?;
        self.put_new(table, version, next).await?;
        // Old versions are history only; losing this cleanup is harmless. A purged
        // tombstone keeps no history: it alone remains, so version numbers never go back
        // (a writer that read a version before the drop cannot commit over a new
        // incarnation's history).
        let keep = if next.dropped.as_ref().is_some_and(|d| d.purged) {
            0
        } else {
            KEEP_VERSIONS
        };
        if version > keep + 1 {
            for v in self.versions(table).await? {
                if v + keep < version {
                    if let Err(e) = self.store.delete(&version_path(table, v)).await {
                        warn!(table, version = v, error = %e, "could not prune an old metastore version");
                    }
                }
            }
        }
        Ok(version)
    }

    async fn get_document(&self, name: &str) -> Result<Option<Versioned<bytes::Bytes>>> {
        super::check_document_name(name)?;
        let prefix = ObjPath::from(format!("{DOCUMENTS}/{name}"));
        let Some(&version) = self.versions_under(&prefix).await?.last() else {
            return Ok(None);
        };
        match self.store.get(&document_path(name, version)).await {
            Ok(r) => Ok(Some(Versioned {
                version,
                value: r.bytes().await?,
            })),
            // Pruned between listing and reading: a newer version exists.
            Err(object_store::Error::NotFound { .. }) => Box::pin(self.get_document(name)).await,
            Err(e) => Err(e.into()),
        }
    }

    async fn put_document(&self, name: &str, expected: u64, body: Vec<u8>) -> Result<u64> {
        super::check_document_name(name)?;
        let version = expected + 1;
        self.check_not_pruned(&document_path(name, expected), name, expected)
            .await?;
        self.create_only(&document_path(name, version), name, version, body)
            .await?;
        if version > KEEP_VERSIONS + 1 {
            let prefix = ObjPath::from(format!("{DOCUMENTS}/{name}"));
            for v in self.versions_under(&prefix).await? {
                if v + KEEP_VERSIONS < version {
                    if let Err(e) = self.store.delete(&document_path(name, v)).await {
                        warn!(document = name, version = v, error = %e, "could not prune an old document version");
                    }
                }
            }
        }
        Ok(version)
    }
}
