//! The cluster roles of the binary: `basalt server` and `basalt broker`. In: their flags
//! (the contract in ARCHITECTURE.md) and an optional TOML config. Out: a running server
//! (segments, Flight fragments, health) or broker (HTTP, PostgreSQL, scatter-gather).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use basalt_cluster::{NodeConfig, Role};
use basalt_ingest::StoreConfig;
use basalt_server::{ServerConfig, ServerNode};

use crate::config::Config;

/// Flags both roles share.
#[derive(clap::Args)]
pub struct NodeArgs {
    /// This node's id, unique in the cluster (letters, digits, '-', '_', '.').
    #[arg(long)]
    pub node_id: String,
    /// Directory for local state (segment cache, node lock).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The cluster's deep store (metastore and segments): file:///path or s3://bucket/prefix.
    #[arg(long)]
    pub deep_store: String,
    /// UDP address this node gossips on.
    #[arg(long)]
    pub gossip_addr: SocketAddr,
    /// Gossip addresses of seed nodes (comma-separated or repeated).
    #[arg(long, value_delimiter = ',')]
    pub seeds: Vec<String>,
    /// TOML config file; flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct ServerRoleArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    /// Arrow Flight address brokers send plan fragments to.
    #[arg(long)]
    pub flight_addr: SocketAddr,
    /// HTTP address for /health and /metrics.
    #[arg(long)]
    pub http_addr: Option<SocketAddr>,
}

#[derive(clap::Args)]
pub struct BrokerRoleArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    /// HTTP API listen address.
    #[arg(long, default_value = "127.0.0.1:8099")]
    pub http_addr: String,
    /// PostgreSQL wire protocol listen address.
    #[arg(long, default_value = "127.0.0.1:5433")]
    pub pg_addr: String,
    /// Listen on a non-loopback address without `[auth] tokens`.
    #[arg(long)]
    pub allow_unauthenticated: bool,
}

pub fn load_config(path: &Option<PathBuf>) -> Result<Config, String> {
    match path {
        Some(p) => Config::load(p),
        None => Ok(Config::default()),
    }
}

/// The gossip identity of a node.
pub fn node_config(a: &NodeArgs, role: Role, cfg: &Config) -> NodeConfig {
    let mut n = NodeConfig::new(&a.node_id, role, a.gossip_addr, a.seeds.clone());
    n.cluster_id = cfg.cluster.cluster_id.clone();
    n.gossip_interval = Duration::from_millis(cfg.cluster.gossip_interval_ms.max(10));
    n
}

pub fn store_config(a: &NodeArgs, cfg: &Config) -> StoreConfig {
    StoreConfig {
        data_dir: a.data_dir.clone(),
        deep_store: Some(a.deep_store.clone()),
        build: Default::default(),
        policy: cfg.tables.policy(&cfg.storage),
        ingest: cfg.ingest.limits(),
        consumer_lease: Duration::from_secs(cfg.ingest.consumer_lease_secs),
        placement: std::sync::Arc::new(basalt_ingest::Everything),
    }
}

/// `basalt server`: serves until SIGINT or SIGTERM, then leaves gracefully (its segments
/// loaded elsewhere first).
pub async fn server(a: ServerRoleArgs) -> Result<(), String> {
    let cfg = load_config(&a.node.config)?;
    let token = cfg.cluster.token()?;
    if !a.flight_addr.ip().is_loopback() {
        tracing::info!(flight = %a.flight_addr, "the Flight port accepts only calls carrying the cluster token");
    }
    let node = ServerNode::start(ServerConfig {
        node: node_config(&a.node, Role::Server, &cfg),
        store: store_config(&a.node, &cfg),
        engine: cfg.query.engine(&a.node.data_dir),
        flight_addr: a.flight_addr,
        http_addr: a.http_addr,
        cluster_token: token,
        drain_timeout: Duration::from_secs(cfg.cluster.drain_timeout_secs),
    })
    .await
    .map_err(|e| e.to_string())?;
    // One line, read by the end-to-end tests.
    eprintln!(
        "basalt server {} listening on flight://{} http://{}",
        a.node.node_id,
        node.flight_addr,
        node.http_addr
            .map(|h| h.to_string())
            .unwrap_or_else(|| "-".into())
    );
    stop_signal().await;
    eprintln!("basalt server {} leaving", a.node.node_id);
    node.stop().await;
    Ok(())
}

/// SIGINT or SIGTERM.
pub async fn stop_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
