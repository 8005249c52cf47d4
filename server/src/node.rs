//! A running server: gossip, placement, the table store, the Flight service and a small
//! HTTP port for health and metrics. In: [`ServerConfig`]. Out: a [`ServerNode`] that serves
//! until [`ServerNode::stop`].
//!
//! The placement loop runs at every membership change and at least every second: it feeds
//! the live members to the placement, syncs the store with the metastore (loading segments
//! placed here, dropping those handed over), and publishes what is loaded. A graceful stop
//! first says `leaving` and keeps serving until every segment it holds is loaded elsewhere
//! (or `drain_timeout` passes), so answers stay complete while a server leaves.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use arrow_flight::flight_service_server::FlightServiceServer;
use basalt_cluster::{Membership, NodeConfig, Role};
use basalt_ingest::{StoreConfig, TableStore};
use basalt_query::{EngineConfig, QueryEngine};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::error::ServerError;
use crate::flight::{FlightCounters, FragmentService};
use crate::placement::ClusterPlacement;
use crate::resolver::{HeldTables, StoreResolver};

/// How a server starts.
pub struct ServerConfig {
    pub node: NodeConfig,
    /// The store (its `placement` is replaced by the cluster's).
    pub store: StoreConfig,
    pub engine: EngineConfig,
    pub flight_addr: SocketAddr,
    pub http_addr: Option<SocketAddr>,
    /// Brokers must present it on every Flight call.
    pub cluster_token: String,
    /// How long a graceful stop waits for its segments to be loaded elsewhere.
    pub drain_timeout: Duration,
}

pub struct ServerNode {
    pub flight_addr: SocketAddr,
    pub http_addr: Option<SocketAddr>,
    pub store: Arc<TableStore>,
    membership: Arc<Membership>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    drain_timeout: Duration,
}

impl ServerNode {
    pub async fn start(mut cfg: ServerConfig) -> Result<ServerNode, ServerError> {
        let flight_listener = bind(cfg.flight_addr, "flight").await?;
        let flight_addr = flight_listener
            .local_addr()
            .map_err(|e| ServerError::Listen {
                addr: cfg.flight_addr.to_string(),
                what: "flight",
                source: e,
            })?;
        let http_listener = match cfg.http_addr {
            Some(a) => Some(bind(a, "http").await?),
            None => None,
        };
        let http_addr = http_listener.as_ref().and_then(|l| l.local_addr().ok());
        let placement = Arc::new(ClusterPlacement::new(&cfg.node.node_id));
        cfg.store.placement = placement.clone();
        // Until gossip says otherwise this server is alone: it loads nothing it would have to
        // drop a second later.
        let store = TableStore::open(cfg.store).await?;
        cfg.node.role = Role::Server;
        cfg.node.flight_addr = Some(flight_addr);
        cfg.node.http_addr = http_addr;
        let membership = Arc::new(Membership::join(cfg.node).await?);
        let (stop, stopped) = watch::channel(false);
        let counters = Arc::new(FlightCounters::default());
        let engine = QueryEngine::with_config(Arc::new(HeldTables(store.clone())), cfg.engine);
        let service = FragmentService {
            engine,
            resolver: StoreResolver::new(store.clone()),
            token: Arc::new(cfg.cluster_token),
            counters: counters.clone(),
        };
        let mut tasks = Vec::new();
        let mut s = stopped.clone();
        // Served from the query threads, where fragments run: a fragment is not handed to
        // another runtime and back (the broker's deadline bounds it). The listener is
        // registered with that runtime's reactor, so its connections are too.
        let flight_listener = flight_listener
            .into_std()
            .map_err(|e| ServerError::Listen {
                addr: flight_addr.to_string(),
                what: "flight",
                source: e,
            })?;
        tasks.push(basalt_query::serve_on_query_threads(async move {
            let flight_listener = match tokio::net::TcpListener::from_std(flight_listener) {
                Ok(l) => l,
                Err(e) => {
                    warn!(error = %e, "flight service could not start");
                    return;
                }
            };
            // No Nagle: a fragment's answer is a few small messages, and waiting for the
            // broker's delayed ACK cost 40 ms per query.
            let incoming = tonic::transport::server::TcpIncoming::from(flight_listener)
                .with_nodelay(Some(true));
            let served = tonic::transport::Server::builder()
                .add_service(
                    FlightServiceServer::new(service)
                        .max_decoding_message_size(64 << 20)
                        .max_encoding_message_size(64 << 20),
                )
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = s.wait_for(|v| *v).await;
                })
                .await;
            if let Err(e) = served {
                warn!(error = %e, "flight service stopped");
            }
        }));
        tasks.push(tokio::spawn(placement_loop(
            store.clone(),
            membership.clone(),
            placement,
            stopped.clone(),
        )));
        if let Some(l) = http_listener {
            let app = crate::node::health_router(store.clone(), membership.clone(), counters);
            let mut s = stopped.clone();
            tasks.push(tokio::spawn(async move {
                let _ = axum::serve(l, app.into_make_service())
                    .with_graceful_shutdown(async move {
                        let _ = s.wait_for(|v| *v).await;
                    })
                    .await;
            }));
        }
        info!(node = %membership.node_id(), flight = %flight_addr, http = ?http_addr, "server started");
        Ok(ServerNode {
            flight_addr,
            http_addr,
            store,
            membership,
            stop,
            tasks,
            drain_timeout: cfg.drain_timeout,
        })
    }

    /// Leaves gracefully: says `leaving`, waits until every segment it holds is loaded
    /// by the servers it now belongs on (or the drain timeout), then stops.
    pub async fn stop(self) {
        self.membership.set_leaving().await;
        let deadline = tokio::time::Instant::now() + self.drain_timeout;
        loop {
            let held: usize = self
                .store
                .table_names()
                .iter()
                .filter_map(|t| self.store.table(t))
                .map(|t| t.view().segments.len())
                .sum();
            if held == 0 {
                info!("every segment handed over; stopping");
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                warn!(
                    segments = held,
                    "drain timeout: stopping with segments not handed over"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        let store = self.store.clone();
        let _ = tokio::task::spawn_blocking(move || store.shutdown()).await;
        if let Ok(m) = Arc::try_unwrap(self.membership) {
            m.shutdown().await;
        }
    }
}

async fn bind(
    addr: SocketAddr,
    what: &'static str,
) -> Result<tokio::net::TcpListener, ServerError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| ServerError::Listen {
            addr: addr.to_string(),
            what,
            source: e,
        })
}

/// Keeps the store in line with the cluster (see the module header).
async fn placement_loop(
    store: Arc<TableStore>,
    membership: Arc<Membership>,
    placement: Arc<ClusterPlacement>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut changes = membership.changes();
    let mut published: HashSet<String> = HashSet::new();
    loop {
        placement.update_members(&membership.members().await);
        store.sync().await;
        let mut tables = HashSet::new();
        for name in store.table_names() {
            let Some(t) = store.table(&name) else {
                continue;
            };
            let ids: BTreeSet<String> = t
                .view()
                .segments
                .iter()
                .map(|s| s.meta.id.clone())
                .collect();
            membership.set_loaded(&name, &ids).await;
            // The stream partitions it consumes: those it has in-memory rows of.
            let mut consuming: BTreeMap<i32, i64> = BTreeMap::new();
            for part in &t.view().mutable {
                let from = part.from.unwrap_or(-1);
                let e = consuming.entry(part.partition).or_insert(from);
                *e = (*e).min(from);
            }
            membership.set_consuming(&name, &consuming).await;
            tables.insert(name);
        }
        for gone in published.difference(&tables) {
            membership.set_loaded(gone, &BTreeSet::new()).await;
            membership.set_consuming(gone, &BTreeMap::new()).await;
        }
        published = tables;
        tokio::select! {
            _ = stopped.wait_for(|v| *v) => return,
            _ = changes.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// `/health` (200 once the store answers) and `/metrics` (Prometheus text).
fn health_router(
    store: Arc<TableStore>,
    membership: Arc<Membership>,
    counters: Arc<FlightCounters>,
) -> axum::Router {
    use axum::routing::get;
    let health_store = store.clone();
    axum::Router::new()
        .route(
            "/health",
            get(move || {
                let store = health_store.clone();
                let membership = membership.clone();
                async move {
                    let segments: usize = store
                        .table_names()
                        .iter()
                        .filter_map(|t| store.table(t))
                        .map(|t| t.view().segments.len())
                        .sum();
                    // Per table, the stream partitions this server consumes.
                    let mut consuming = serde_json::Map::new();
                    for name in store.table_names() {
                        let Some(t) = store.table(&name) else {
                            continue;
                        };
                        let parts: BTreeSet<i32> =
                            t.view().mutable.iter().map(|p| p.partition).collect();
                        if !parts.is_empty() {
                            consuming.insert(name, serde_json::json!(parts));
                        }
                    }
                    let body = serde_json::json!({
                        "status": if store.store_error().is_none() { "ok" } else { "degraded" },
                        "role": "server",
                        "node": membership.node_id(),
                        "members": membership.members().await.len(),
                        "segments": segments,
                        "consuming": consuming,
                    });
                    axum::Json(body)
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let store = store.clone();
                let counters = counters.clone();
                async move { metrics_text(&store, &counters) }
            }),
        )
}

fn metrics_text(store: &TableStore, c: &FlightCounters) -> String {
    use prometheus::{Encoder, IntCounter, IntGaugeVec, Opts, Registry, TextEncoder};
    let registry = Registry::new();
    let loaded = IntGaugeVec::new(
        Opts::new(
            "basalt_server_segments_loaded",
            "Sealed segments this server holds",
        ),
        &["table"],
    )
    .expect("valid metric");
    for name in store.table_names() {
        if let Some(t) = store.table(&name) {
            loaded
                .with_label_values(&[name.as_str()])
                .set(t.view().segments.len() as i64);
        }
    }
    let _ = registry.register(Box::new(loaded));
    for (name, help, v) in [
        (
            "basalt_server_fragments_total",
            "Plan fragments received",
            &c.fragments,
        ),
        (
            "basalt_server_fragments_failed_total",
            "Plan fragments that failed",
            &c.failed,
        ),
        (
            "basalt_server_flight_refused_total",
            "Flight calls refused for a missing or wrong cluster token",
            &c.refused,
        ),
    ] {
        let counter = IntCounter::new(name, help).expect("valid metric");
        counter.inc_by(v.load(Ordering::Relaxed));
        let _ = registry.register(Box::new(counter));
    }
    let mut out = Vec::new();
    let _ = TextEncoder::new().encode(&registry.gather(), &mut out);
    String::from_utf8(out).unwrap_or_default()
}
