//! The semantic models a process serves, and where they persist. In: models posted to the
//! admin API, the metastore's `semantic-models` document (all models, versioned and
//! compare-and-swapped like a table's state, so several brokers can write it). Out: the
//! [`SemanticRegistry`] the SQL rewrite reads, model checks against the table (by planning
//! each dimension and measure over it), and answers to semantic queries with the tier that
//! answered each range and how fresh it is.
//!
//! Tiers: a range split at the table's warehouse boundary gets one entry per tier: the part
//! below it answered by the Iceberg table (its newest event is just below the boundary),
//! the part at or after it by segments.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, TimeUnit, TimestampMillisecondType};
use basalt_ingest::metastore::Metastore;
use basalt_ingest::store::TableStore;
use basalt_ingest::IngestError;
use basalt_query::{ErrorKind, QueryEngine, QueryError, QueryLimits, QueryOutput};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::error::{invalid, Result, SemanticError};
use crate::model::{BodyFormat, Dimension, DimensionSpec, Model, ModelSpec};
use crate::request::{compile, SemanticQuery};

/// The metastore document holding every model.
pub const DOCUMENT: &str = "semantic-models";
/// Layout version of that document.
const FORMAT: u32 = 1;
/// Attempts at a model write racing other writers.
const ATTEMPTS: usize = 16;

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    format: u32,
    models: BTreeMap<String, ModelSpec>,
}

/// The models in force, swapped as a whole.
#[derive(Debug, Default)]
pub struct SemanticRegistry {
    models: RwLock<Arc<BTreeMap<String, Arc<Model>>>>,
    /// The document version they came from (0: none read yet).
    version: AtomicU64,
}

impl SemanticRegistry {
    pub fn get(&self, name: &str) -> Option<Arc<Model>> {
        self.models.read().get(name).cloned()
    }

    pub fn all(&self) -> Arc<BTreeMap<String, Arc<Model>>> {
        self.models.read().clone()
    }

    /// Installs the models of document `version` unless newer ones are in force.
    fn install(&self, version: u64, models: BTreeMap<String, Arc<Model>>) {
        let mut cur = self.models.write();
        if version >= self.version.load(Ordering::Acquire) {
            *cur = Arc::new(models);
            self.version.store(version, Ordering::Release);
        }
    }
}

/// A semantic query's answer.
#[derive(Debug)]
pub struct SemanticAnswer {
    pub output: QueryOutput,
    /// The SQL over `semantic.<model>` the request compiled to.
    pub semantic_sql: String,
    /// The SQL over the table that ran.
    pub sql: String,
    pub tiers: Vec<TierAnswer>,
    pub warnings: Vec<String>,
}

/// Which tier answered which part of the requested range, and how fresh it is.
#[derive(Debug, Clone, Serialize)]
pub struct TierAnswer {
    /// `segments`: the serving tier (sealed and real-time segments); `warehouse`: the
    /// Iceberg table older segments were tiered into.
    pub tier: &'static str,
    /// The part of the range it answered (`null`: unbounded).
    pub from: Option<String>,
    pub to: Option<String>,
    /// The newest event time it holds (`null`: none).
    pub newest_event: Option<String>,
    /// How far behind now that is, in milliseconds.
    pub lag_ms: Option<i64>,
}

/// The semantic layer of one process: its registry, the metastore the models persist in, and
/// the engine that checks and answers them.
#[derive(Debug)]
pub struct SemanticLayer {
    registry: Arc<SemanticRegistry>,
    metastore: Arc<dyn Metastore>,
    engine: QueryEngine,
    /// The tables, for their warehouse boundaries (which tier holds which range).
    store: Option<Arc<TableStore>>,
}

fn iso(ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

impl SemanticLayer {
    /// `engine` must rewrite through `registry` (see [`crate::sql::SemanticRewrite`]).
    pub fn new(
        registry: Arc<SemanticRegistry>,
        metastore: Arc<dyn Metastore>,
        engine: QueryEngine,
    ) -> Arc<SemanticLayer> {
        Arc::new(SemanticLayer {
            registry,
            metastore,
            engine,
            store: None,
        })
    }

    /// A layer that reports the tier of each part of a range from the tables' warehouse
    /// boundaries in `store`.
    pub fn with_store(
        registry: Arc<SemanticRegistry>,
        store: Arc<TableStore>,
        engine: QueryEngine,
    ) -> Arc<SemanticLayer> {
        Arc::new(SemanticLayer {
            registry,
            metastore: store.metastore(),
            engine,
            store: Some(store),
        })
    }

    /// The model's table's warehouse boundary in epoch milliseconds (`None`: nothing
    /// tiered), when the model's time dimension is the table's time column.
    fn boundary_ms(&self, model: &Model) -> Option<i64> {
        let t = self.store.as_ref()?.table(&model.spec.table)?;
        if t.spec.time_column.as_deref() != Some(model.spec.time_dimension.as_str()) {
            return None;
        }
        let b = t.view().warehouse.as_ref()?.boundary;
        Some(match t.spec.column_type(&model.spec.time_dimension) {
            Some(basalt_segment::ColumnType::Date) => b.saturating_mul(86_400_000),
            _ => b,
        })
    }

    /// Reads the stored models if they changed. A stored model that no longer checks is
    /// skipped with a warning (the others are served).
    pub async fn refresh(&self) -> Result<()> {
        let Some((version, stored)) = self.read().await? else {
            return Ok(());
        };
        if version <= self.registry.version.load(Ordering::Acquire) {
            return Ok(());
        }
        self.install(version, stored);
        Ok(())
    }

    fn install(&self, version: u64, stored: Stored) {
        let mut models = BTreeMap::new();
        for (name, spec) in stored.models {
            match Model::check(spec) {
                Ok(m) => {
                    models.insert(name, Arc::new(m));
                }
                Err(e) => {
                    warn!(model = %name, error = %e, "a stored semantic model does not check; it is not served")
                }
            }
        }
        self.registry.install(version, models);
    }

    async fn read(&self) -> Result<Option<(u64, Stored)>> {
        let Some(doc) = self.metastore.get_document(DOCUMENT).await? else {
            return Ok(None);
        };
        let stored: Stored = serde_json::from_slice(&doc.value)
            .map_err(|e| SemanticError::Corrupt(format!("version {}: {e}", doc.version)))?;
        if stored.format != FORMAT {
            return Err(SemanticError::Corrupt(format!(
                "version {}: format {} is not supported",
                doc.version, stored.format
            )));
        }
        Ok(Some((doc.version, stored)))
    }

    /// Refreshes every `every` until the runtime stops (brokers see each other's writes).
    pub fn spawn_refresh(self: &Arc<Self>, every: Duration) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(layer) = me.upgrade() else { return };
                if let Err(e) = layer.refresh().await {
                    warn!(error = %e, "could not refresh the semantic models");
                }
                drop(layer);
                tokio::time::sleep(every).await;
            }
        });
    }

    /// Every model in force, by name.
    pub fn list(&self) -> Vec<Arc<Model>> {
        self.registry.all().values().cloned().collect()
    }

    pub fn get(&self, name: &str) -> Result<Arc<Model>> {
        self.registry
            .get(name)
            .ok_or_else(|| SemanticError::UnknownModel(name.to_string()))
    }

    /// Checks a posted model against its table and stores it (replacing one of the same
    /// name). Returns it and whether it is new.
    pub async fn put(&self, body: &[u8], format: BodyFormat) -> Result<(Arc<Model>, bool)> {
        let model = Model::parse(body, format)?;
        self.check_against_table(&model).await?;
        let name = model.spec.model.clone();
        let spec = model.spec.clone();
        let created = self
            .update(|s| Ok(s.models.insert(name.clone(), spec.clone()).is_none()))
            .await?;
        info!(model = %name, table = %model.spec.table, created, "semantic model stored");
        Ok((Arc::new(model), created))
    }

    /// Removes a model.
    pub async fn delete(&self, name: &str) -> Result<()> {
        self.update(|s| {
            s.models
                .remove(name)
                .map(|_| ())
                .ok_or_else(|| SemanticError::UnknownModel(name.to_string()))
        })
        .await?;
        info!(model = %name, "semantic model deleted");
        Ok(())
    }

    /// Applies `change` to the stored models by compare-and-swap, retrying when another
    /// writer committed first, and serves the result.
    async fn update<T>(&self, mut change: impl FnMut(&mut Stored) -> Result<T>) -> Result<T> {
        for _ in 0..ATTEMPTS {
            let (version, mut stored) = self.read().await?.unwrap_or((
                0,
                Stored {
                    format: FORMAT,
                    models: BTreeMap::new(),
                },
            ));
            let out = change(&mut stored)?;
            let bytes = serde_json::to_vec_pretty(&stored)
                .map_err(|e| SemanticError::Corrupt(e.to_string()))?;
            match self.metastore.put_document(DOCUMENT, version, bytes).await {
                Ok(v) => {
                    self.install(v, stored);
                    return Ok(out);
                }
                Err(IngestError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(SemanticError::Contended(ATTEMPTS))
    }

    /// Plans every part of `model` over its table, so a model that is stored answers.
    async fn check_against_table(&self, model: &Model) -> Result<()> {
        let table = crate::model::quoted(&model.spec.table);
        let time = crate::model::quoted(&model.spec.time_dimension);
        let out = self
            .probe(
                "time_dimension",
                &format!("SELECT {time} FROM {table} LIMIT 0"),
            )
            .await?;
        let ty = out.schema.field(0).data_type();
        if !matches!(
            ty,
            DataType::Timestamp(_, _) | DataType::Date32 | DataType::Date64
        ) {
            return Err(invalid(
                "time_dimension",
                format!(
                    "{} is {ty}, not a timestamp or date column of table {}",
                    model.spec.time_dimension, model.spec.table
                ),
            ));
        }
        for (i, d) in model.spec.dimensions.iter().enumerate() {
            let (field, expr) = match (d, &model.dimensions[d.name()]) {
                (DimensionSpec::Expr(_), Dimension::Expr(e)) => {
                    (format!("dimensions[{i}].expr"), format!("({e})"))
                }
                _ => (
                    format!("dimensions[{i}]"),
                    crate::model::quoted(d.name()).to_string(),
                ),
            };
            self.probe(
                &field,
                &format!("SELECT {expr} FROM {table} GROUP BY 1 LIMIT 0"),
            )
            .await?;
        }
        for (i, m) in model.spec.measures.iter().enumerate() {
            let sql = &model.measures[&m.name].sql;
            self.probe(
                &format!("measures[{i}]"),
                &format!("SELECT {sql} FROM {table} LIMIT 0"),
            )
            .await?;
        }
        Ok(())
    }

    /// Plans `sql`; a planning error is the model's fault, named by `field`.
    async fn probe(&self, field: &str, sql: &str) -> Result<QueryOutput> {
        let limits = QueryLimits {
            use_cache: false,
            ..QueryLimits::default()
        };
        match self.engine.execute(sql, &limits).await {
            Ok(out) => Ok(out),
            Err(e) if e.kind() == ErrorKind::UndefinedTable => Err(invalid("table", e.to_string())),
            Err(e) if is_models_fault(&e) => Err(invalid(field, e.to_string())),
            Err(e) => Err(e.into()),
        }
    }

    /// Answers a semantic query within `limits`.
    pub async fn query(&self, q: &SemanticQuery, limits: &QueryLimits) -> Result<SemanticAnswer> {
        let model = self.get(&q.model)?;
        let compiled = compile(&model, q)?;
        let output = self.engine.execute(&compiled.sql, limits).await?;
        let (from, to) = (compiled.from_ms, compiled.to_ms);
        let boundary = self.boundary_ms(&model);
        let mut tiers = Vec::new();
        // The range splits at the boundary: below it from the warehouse (and late events
        // still in segments), at or after it from segments alone.
        if let Some(b) = boundary.filter(|b| from.is_none_or(|f| f < *b)) {
            let now = chrono::Utc::now().timestamp_millis();
            tiers.push(TierAnswer {
                tier: "warehouse",
                from: from.map(iso),
                to: Some(iso(to.map_or(b, |t| t.min(b)))),
                newest_event: Some(iso(b - 1)),
                lag_ms: Some((now - (b - 1)).max(0)),
            });
        }
        let mut warnings = Vec::new();
        if boundary.is_none_or(|b| to.is_none_or(|t| t > b)) {
            let hot_from = match (from, boundary) {
                (Some(f), Some(b)) => Some(f.max(b)),
                (f, b) => f.or(b),
            };
            let (tier, w) = self.hot_tier(&model, hot_from, to, limits).await?;
            tiers.push(tier);
            warnings = w;
        }
        Ok(SemanticAnswer {
            output,
            semantic_sql: compiled.semantic_sql,
            sql: compiled.sql,
            tiers,
            warnings,
        })
    }

    /// The serving tier's part of `[from, to)` and its freshness: the newest event time it
    /// holds; a warning when that lags now by more than the model's `freshness`.
    async fn hot_tier(
        &self,
        model: &Model,
        from: Option<i64>,
        to: Option<i64>,
        limits: &QueryLimits,
    ) -> Result<(TierAnswer, Vec<String>)> {
        let sql = format!(
            "SELECT max({}) FROM {}",
            crate::model::quoted(&model.spec.time_dimension),
            crate::model::quoted(&model.spec.table)
        );
        let out = self.engine.execute(&sql, limits).await?;
        let newest = out.batches.iter().find(|b| b.num_rows() > 0).and_then(|b| {
            let c = arrow::compute::cast(
                b.column(0),
                &DataType::Timestamp(TimeUnit::Millisecond, None),
            )
            .ok()?;
            let c = c.as_primitive::<TimestampMillisecondType>();
            (!c.is_null(0)).then(|| c.value(0))
        });
        let now = chrono::Utc::now().timestamp_millis();
        let lag = newest.map(|n| (now - n).max(0));
        let mut warnings = Vec::new();
        if let Some(limit) = model.freshness {
            match lag {
                Some(l) if l > limit.as_millis() as i64 => warnings.push(format!(
                    "the serving tier of model {} lags: its newest event ({}) is {:.1} s old, beyond the model's freshness of {}",
                    model.spec.model,
                    iso(newest.unwrap_or_default()),
                    l as f64 / 1000.0,
                    model.spec.freshness.as_deref().unwrap_or_default()
                )),
                None => warnings.push(format!(
                    "the serving tier of model {} holds no events yet",
                    model.spec.model
                )),
                _ => {}
            }
        }
        Ok((
            TierAnswer {
                tier: "segments",
                from: from.map(iso),
                to: to.map(iso),
                newest_event: newest.map(iso),
                lag_ms: lag,
            },
            warnings,
        ))
    }
}

/// Errors a model's definition causes (as opposed to the server's state).
fn is_models_fault(e: &QueryError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Syntax
            | ErrorKind::UndefinedColumn
            | ErrorKind::AmbiguousColumn
            | ErrorKind::DuplicateColumn
            | ErrorKind::UndefinedFunction
            | ErrorKind::InvalidQuery
            | ErrorKind::NotSupported
            | ErrorKind::TooComplex
            | ErrorKind::InvalidValue
            | ErrorKind::DataException
            | ErrorKind::InvalidParameter
            | ErrorKind::ReadOnly
    )
}
