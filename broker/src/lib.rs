//! `basalt-broker`: the front door. In: HTTP requests and PostgreSQL connections ([`pg`]). Out: table admin, batch ingestion into
//! the [`basalt_ingest::TableStore`], and SQL through [`basalt_query::QueryEngine`] answered in
//! Apache Pinot's response shape; Prometheus metrics.

pub mod auth;
pub mod cluster;
pub mod console;
pub mod error;
pub mod guard;
pub mod http;
pub mod metrics;
pub mod openapi;
pub mod pg;
pub mod pinot_schema;
pub mod response;
pub mod semantic;
pub mod source;
#[cfg(test)]
mod upsert_tests;

use std::net::SocketAddr;
use std::sync::Arc;

use basalt_ingest::TableStore;
use basalt_query::QueryEngine;

pub use auth::Auth;
pub use error::ApiError;
pub use http::{AppState, HttpLimits};

/// Builds the application state for a store; `auth` guards HTTP and PostgreSQL alike,
/// `guard` the HTTP API against cross-site requests and DNS rebinding.
pub fn app_state(
    store: Arc<TableStore>,
    limits: HttpLimits,
    engine: basalt_query::EngineConfig,
    auth: auth::Auth,
    guard: guard::Guard,
) -> AppState {
    let warehouse = Arc::new(basalt_warehouse::Warehouse::default());
    let source = source::TieredSource {
        store: source::StoreSource(store.clone()),
        warehouse: warehouse.clone(),
    };
    let engine = QueryEngine::with_config(Arc::new(source), engine);
    let mut state = state_with_engine(store, engine, limits, auth, guard);
    for m in warehouse.metrics.collectors() {
        state.metrics.register(m);
    }
    state.warehouse = Some(warehouse);
    state
}

/// A broker's application state: queries of its tables run on the cluster's servers
/// ([`cluster`]).
pub fn cluster_app_state(
    store: Arc<TableStore>,
    cluster: Arc<cluster::Cluster>,
    limits: HttpLimits,
    engine: basalt_query::EngineConfig,
    auth: auth::Auth,
    guard: guard::Guard,
) -> AppState {
    let c = cluster.clone();
    let source = cluster::ClusterSource {
        store: source::StoreSource(store.clone()),
        cluster,
    };
    let engine = QueryEngine::with_config(Arc::new(source), engine)
        .with_scatter_rule(Arc::new(cluster::ScatterRule));
    let mut state = state_with_engine(store, engine, limits, auth, guard);
    for m in c.metrics() {
        state.metrics.register(m);
    }
    state.cluster = Some(c);
    state
}

fn state_with_engine(
    store: Arc<TableStore>,
    engine: QueryEngine,
    limits: HttpLimits,
    auth: auth::Auth,
    guard: guard::Guard,
) -> AppState {
    // Queries over `semantic.<model>` are rewritten by the engine itself, so HTTP and
    // PostgreSQL serve them alike.
    let registry = Arc::new(basalt_semantic::SemanticRegistry::default());
    let engine = engine.with_statement_rewrite(Arc::new(basalt_semantic::sql::SemanticRewrite {
        registry: registry.clone(),
    }));
    let semantic =
        basalt_semantic::SemanticLayer::with_store(registry, store.clone(), engine.clone());
    AppState {
        semantic,
        store,
        engine,
        metrics: metrics::Metrics::new(),
        ingest_slots: Arc::new(tokio::sync::Semaphore::new(
            limits.max_concurrent_ingests.max(1),
        )),
        limits,
        auth,
        guard,
        cluster: None,
        warehouse: None,
    }
}

/// How often a process re-reads the semantic models (another broker may have changed them).
const SEMANTIC_REFRESH: std::time::Duration = std::time::Duration::from_secs(2);

/// Serves the HTTP API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    if let Err(e) = state.semantic.refresh().await {
        tracing::warn!(error = %e, "could not read the semantic models; retrying in the background");
    }
    state.semantic.spawn_refresh(SEMANTIC_REFRESH);
    if let Some(w) = &state.warehouse {
        w.spawn_tiering(state.store.clone(), state.limits.tier_interval);
    }
    tracing::info!(?addr, "http api listening");
    // `into_make_service` resolves the router's routes once; serving the `Router` itself
    // rebuilds them (`with_state`) for every connection, about 6% of a one-shot client's
    // query.
    axum::serve(listener, http::router(state).into_make_service())
        .with_graceful_shutdown(shutdown)
        .await
}
