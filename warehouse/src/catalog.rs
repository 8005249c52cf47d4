//! Iceberg catalogs a spec names, opened once per process. In: a [`CatalogSpec`] (`sql`:
//! a SQLite file in the layout pyiceberg's `SqlCatalog` and Iceberg's JDBC catalog share;
//! `rest`: the REST protocol). Out: an open [`Catalog`] whose files go through
//! [`ObjectStorageFactory`], and the Iceberg table a Basalt table tiers into, created on
//! first use with the layout of [`crate::schema`].

use std::collections::HashMap;
use std::sync::Arc;

use basalt_ingest::warehouse::{CatalogKind, CatalogSpec, IcebergTableRef};
use iceberg::spec::{NullOrder, SortDirection, SortField, SortOrder, Transform};
use iceberg::table::Table;
use iceberg::{Catalog, CatalogBuilder, NamespaceIdent, TableCreation, TableIdent};
use iceberg_catalog_rest::RestCatalogBuilder;
use iceberg_catalog_sql::SqlCatalogBuilder;
use parking_lot::Mutex;

use crate::error::{Result, WarehouseError};
use crate::schema::Layout;
use crate::storage::ObjectStorageFactory;

/// The catalog name Basalt registers tables under in a SQL catalog: pyiceberg's default
/// (`load_catalog("default", type="sql", ...)`) sees them.
pub const SQL_CATALOG_NAME: &str = "default";

/// Open catalogs, keyed by their spec (a catalog's pool is shared by every table naming it).
#[derive(Default)]
pub struct Catalogs {
    open: tokio::sync::Mutex<HashMap<String, Arc<dyn Catalog>>>,
    /// The Iceberg tables loaded last, by catalog and identifier, and when: queries read
    /// them at the snapshot the metastore names (or, for a read-only table, while fresh
    /// enough) without asking the catalog again.
    tables: Mutex<HashMap<String, (std::time::Instant, Table)>>,
    /// Tiered tables' data files, read through DataFusion's Parquet reader.
    pub files: crate::files::ParquetFiles,
}

/// How stale a read-only table's view of its Iceberg table may be: another writer's commit
/// shows within this long.
pub const CURRENT_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(2);

impl std::fmt::Debug for Catalogs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalogs").finish_non_exhaustive()
    }
}

fn key(spec: &CatalogSpec) -> String {
    format!(
        "{}|{}|{}|{}",
        spec.kind,
        spec.uri,
        spec.warehouse.as_deref().unwrap_or(""),
        spec.credential.as_deref().unwrap_or("")
    )
}

impl Catalogs {
    /// The catalog `spec` names, opened (and for SQLite, its file created) on first use.
    pub async fn open(&self, spec: &CatalogSpec) -> Result<Arc<dyn Catalog>> {
        let mut open = self.open.lock().await;
        if let Some(c) = open.get(&key(spec)) {
            return Ok(c.clone());
        }
        let mut props = HashMap::new();
        if let Some(w) = &spec.warehouse {
            props.insert("warehouse".to_string(), w.clone());
        }
        let catalog: Arc<dyn Catalog> = match spec.kind() {
            Some(CatalogKind::Sql) => {
                let path = spec.sqlite_path().ok_or_else(|| {
                    WarehouseError::Invalid(format!("catalog uri {:?} is not sqlite:///", spec.uri))
                })?;
                if let Some(dir) = std::path::Path::new(path).parent() {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        WarehouseError::Invalid(format!("catalog directory {}: {e}", dir.display()))
                    })?;
                }
                props.insert("uri".to_string(), format!("sqlite://{path}?mode=rwc"));
                Arc::new(
                    SqlCatalogBuilder::default()
                        .with_storage_factory(Arc::new(ObjectStorageFactory))
                        .load(SQL_CATALOG_NAME, props)
                        .await?,
                )
            }
            Some(CatalogKind::Rest) => {
                props.insert("uri".to_string(), spec.uri.clone());
                // The spec's policy check allowed this variable (the secret prefix).
                if let Some(name) = spec.credential_env() {
                    let value = std::env::var(name).map_err(|_| {
                        WarehouseError::Invalid(format!(
                            "catalog credential ${{env:{name}}}: the environment variable is \
                             not set"
                        ))
                    })?;
                    props.insert("credential".to_string(), value);
                }
                Arc::new(
                    RestCatalogBuilder::default()
                        .with_storage_factory(Arc::new(ObjectStorageFactory))
                        .load("rest", props)
                        .await?,
                )
            }
            None => {
                return Err(WarehouseError::Invalid(format!(
                    "catalog type {:?} is not sql or rest",
                    spec.kind
                )))
            }
        };
        open.insert(key(spec), catalog.clone());
        Ok(catalog)
    }

    /// The Iceberg table `r` names (`None`: it does not exist).
    pub async fn load(&self, r: &IcebergTableRef) -> Result<Option<Table>> {
        let catalog = self.open(&r.catalog).await?;
        let table = match catalog.load_table(&ident(r)?).await {
            Ok(t) => t,
            Err(e) if e.kind() == iceberg::ErrorKind::TableNotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        self.tables
            .lock()
            .insert(table_key(r), (std::time::Instant::now(), table.clone()));
        Ok(Some(table))
    }

    /// The table `r` names, created with `layout` (and its namespace) if missing.
    pub async fn load_or_create(&self, r: &IcebergTableRef, layout: &Layout) -> Result<Table> {
        if let Some(t) = self.load(r).await? {
            return Ok(t);
        }
        let catalog = self.open(&r.catalog).await?;
        let ns = NamespaceIdent::from_vec(r.namespace_levels())?;
        if !catalog.namespace_exists(&ns).await? {
            match catalog.create_namespace(&ns, HashMap::new()).await {
                Ok(_) => {}
                // Another process created it meanwhile.
                Err(_) if catalog.namespace_exists(&ns).await? => {}
                Err(e) => return Err(e.into()),
            }
        }
        let sort = SortOrder::builder()
            .with_order_id(1)
            .with_sort_field(SortField {
                source_id: layout.time as i32 + 1,
                transform: Transform::Identity,
                direction: SortDirection::Ascending,
                null_order: NullOrder::First,
            })
            .build(&layout.schema)?;
        let creation = TableCreation::builder()
            .name(r.table.clone())
            .schema(layout.schema.clone())
            .partition_spec(layout.partition.clone())
            .sort_order(sort)
            .properties(HashMap::from([
                (
                    "write.parquet.compression-codec".to_string(),
                    "zstd".to_string(),
                ),
                ("basalt.owner".to_string(), "basalt".to_string()),
            ]))
            .build();
        match catalog.create_table(&ns, creation).await {
            Ok(t) => Ok(t),
            Err(e) => match self.load(r).await? {
                Some(t) => Ok(t),
                None => Err(e.into()),
            },
        }
    }

    /// The current state of the table `r` names (a read-only table over it): the one loaded
    /// within the last [`CURRENT_MAX_AGE`], else loaded again.
    pub async fn current(&self, r: &IcebergTableRef) -> Result<Table> {
        if let Some((at, t)) = self.tables.lock().get(&table_key(r)) {
            if at.elapsed() < CURRENT_MAX_AGE {
                return Ok(t.clone());
            }
        }
        self.load(r).await?.ok_or_else(|| {
            WarehouseError::Invalid(format!(
                "Iceberg table {}.{} does not exist in its catalog",
                r.namespace, r.table
            ))
        })
    }

    /// The table `r` names with snapshot `snapshot_id` among its snapshots: the one loaded
    /// last when it has it, else the catalog's current one.
    pub async fn with_snapshot(&self, r: &IcebergTableRef, snapshot_id: i64) -> Result<Table> {
        let cached = self
            .tables
            .lock()
            .get(&table_key(r))
            .map(|(_, t)| t.clone());
        if let Some(t) = cached.filter(|t| t.metadata().snapshot_by_id(snapshot_id).is_some()) {
            return Ok(t);
        }
        let t = self.load(r).await?.ok_or_else(|| {
            WarehouseError::Invalid(format!(
                "Iceberg table {}.{} is gone from its catalog",
                r.namespace, r.table
            ))
        })?;
        if t.metadata().snapshot_by_id(snapshot_id).is_none() {
            return Err(WarehouseError::Invalid(format!(
                "Iceberg table {}.{} has no snapshot {snapshot_id}",
                r.namespace, r.table
            )));
        }
        Ok(t)
    }
}

fn table_key(r: &IcebergTableRef) -> String {
    format!("{}|{}.{}", key(&r.catalog), r.namespace, r.table)
}

/// The Iceberg identifier of `r`.
pub fn ident(r: &IcebergTableRef) -> Result<TableIdent> {
    Ok(TableIdent::new(
        NamespaceIdent::from_vec(r.namespace_levels())?,
        r.table.clone(),
    ))
}
