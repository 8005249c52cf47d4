//! Membership by gossip. In: this node's id, role and addresses, seeds, and what it has
//! loaded or is consuming. Out: the live members as every other node sees them.
//!
//! Each node publishes, as chitchat key-values:
//! - `role` (`server` or `broker`), `flight`, `http`, `pg`: its role and addresses;
//! - `state`: `ready`, or `leaving` once it starts a graceful stop (servers that are leaving
//!   get no new work: their keys move to other servers, which load them before this one stops);
//! - `seg:<table>:<segment id>` for each sealed segment it has loaded and answers for (its
//!   external view, the only thing brokers route by);
//! - `part:<table>:<partition>` for each stream partition it consumes, valued with the
//!   partition's checkpoint its in-memory rows start at.
//!
//! A node that stops gossiping is declared dead by chitchat's phi accrual failure detector
//! after about eight of its observed heartbeat intervals (2 s at the default 250 ms gossip
//! interval); a restarted node joins under a new generation, so its old keys do not linger.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use chitchat::transport::UdpTransport;
use chitchat::{
    spawn_chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, NodeState,
};
use tokio::sync::watch;
use tracing::info;

use crate::error::ClusterError;

/// What a node does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Server,
    Broker,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Broker => "broker",
        }
    }

    fn parse(s: &str) -> Option<Role> {
        match s {
            "server" => Some(Role::Server),
            "broker" => Some(Role::Broker),
            _ => None,
        }
    }
}

/// How a node joins.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_id: String,
    pub role: Role,
    /// Cluster name: nodes of another cluster on the same seeds are ignored.
    pub cluster_id: String,
    pub gossip_addr: SocketAddr,
    pub seeds: Vec<String>,
    pub flight_addr: Option<SocketAddr>,
    pub http_addr: Option<SocketAddr>,
    pub pg_addr: Option<SocketAddr>,
    /// Time between gossip rounds (default 250 ms).
    pub gossip_interval: Duration,
}

impl NodeConfig {
    pub fn new(node_id: &str, role: Role, gossip_addr: SocketAddr, seeds: Vec<String>) -> Self {
        NodeConfig {
            node_id: node_id.to_string(),
            role,
            cluster_id: "basalt".into(),
            gossip_addr,
            seeds,
            flight_addr: None,
            http_addr: None,
            pg_addr: None,
            gossip_interval: Duration::from_millis(250),
        }
    }
}

/// Checks a node id: it names objects and gossip keys.
pub fn check_node_id(id: &str) -> Result<(), ClusterError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    match ok {
        true => Ok(()),
        false => Err(ClusterError::NodeId(id.to_string())),
    }
}

/// A live node as gossip describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub node_id: String,
    pub role: Role,
    pub flight_addr: Option<SocketAddr>,
    pub http_addr: Option<SocketAddr>,
    pub pg_addr: Option<SocketAddr>,
    /// Gracefully stopping: takes no new work.
    pub leaving: bool,
    /// Sealed segments loaded, per table.
    pub loaded: HashMap<String, BTreeSet<String>>,
    /// Stream partitions consumed, per table, with the checkpoint their in-memory rows
    /// start at.
    pub consuming: HashMap<String, BTreeMap<i32, i64>>,
}

impl Member {
    fn from_state(id: &ChitchatId, state: &NodeState) -> Option<Member> {
        let role = Role::parse(state.get("role")?)?;
        let addr = |k: &str| state.get(k).and_then(|v| v.parse().ok());
        let mut loaded: HashMap<String, BTreeSet<String>> = HashMap::new();
        let mut consuming: HashMap<String, BTreeMap<i32, i64>> = HashMap::new();
        for (k, v) in state.key_values() {
            if let Some(rest) = k.strip_prefix("seg:") {
                if let Some((table, seg)) = rest.split_once(':') {
                    loaded
                        .entry(table.to_string())
                        .or_default()
                        .insert(seg.to_string());
                }
            } else if let Some(rest) = k.strip_prefix("part:") {
                if let Some((table, p)) = rest.rsplit_once(':') {
                    if let (Ok(p), Ok(from)) = (p.parse(), v.parse()) {
                        consuming
                            .entry(table.to_string())
                            .or_default()
                            .insert(p, from);
                    }
                }
            }
        }
        Some(Member {
            node_id: id.node_id.to_string(),
            role,
            flight_addr: addr("flight"),
            http_addr: addr("http"),
            pg_addr: addr("pg"),
            leaving: state.get("state") == Some("leaving"),
            loaded,
            consuming,
        })
    }

    /// Whether this member reports segment `id` of `table` loaded.
    pub fn has_segment(&self, table: &str, id: &str) -> bool {
        self.loaded.get(table).is_some_and(|s| s.contains(id))
    }
}

/// This node's membership: its gossip and the views of the others.
pub struct Membership {
    handle: ChitchatHandle,
    node_id: String,
    changes: watch::Receiver<BTreeMap<ChitchatId, NodeState>>,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("node_id", &self.node_id)
            .finish()
    }
}

impl Membership {
    /// Starts gossiping as `cfg` describes.
    pub async fn join(cfg: NodeConfig) -> Result<Membership, ClusterError> {
        check_node_id(&cfg.node_id)?;
        // A fresh generation per start: peers treat a restarted node as a new incarnation
        // and forget the keys of the old one.
        let generation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let id = ChitchatId::new(cfg.node_id.clone(), generation, cfg.gossip_addr);
        let interval = cfg.gossip_interval;
        let config = ChitchatConfig {
            chitchat_id: id,
            cluster_id: cfg.cluster_id.clone(),
            gossip_interval: interval,
            listen_addr: cfg.gossip_addr,
            seed_nodes: cfg.seeds.clone(),
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: 8.0,
                sampling_window_size: 1000,
                max_interval: Duration::from_secs(10),
                initial_interval: interval,
                // A dead node's state is kept this long (so its old keys are recognised),
                // then forgotten.
                dead_node_grace_period: Duration::from_secs(3600),
            },
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: chitchat::ProtocolVersion::V0,
        };
        let mut kv = vec![
            ("role".to_string(), cfg.role.as_str().to_string()),
            ("state".to_string(), "ready".to_string()),
        ];
        for (k, a) in [
            ("flight", cfg.flight_addr),
            ("http", cfg.http_addr),
            ("pg", cfg.pg_addr),
        ] {
            if let Some(a) = a {
                kv.push((k.to_string(), a.to_string()));
            }
        }
        let handle = spawn_chitchat(config, kv, &UdpTransport)
            .await
            .map_err(|e| ClusterError::Gossip {
                addr: cfg.gossip_addr,
                source: e.into(),
            })?;
        let changes = handle.chitchat().lock().await.live_nodes_watcher();
        info!(node = %cfg.node_id, role = cfg.role.as_str(), gossip = %cfg.gossip_addr, seeds = ?cfg.seeds, "joined the cluster");
        Ok(Membership {
            handle,
            node_id: cfg.node_id,
            changes,
        })
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The live members, this node included.
    pub async fn members(&self) -> Vec<Member> {
        let chitchat = self.handle.chitchat();
        let guard = chitchat.lock().await;
        let mut out: Vec<Member> = guard
            .live_nodes()
            .filter_map(|id| Member::from_state(id, guard.node_state(id)?))
            .collect();
        out.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        // Two generations of one node id (a restart seen before the old one is declared
        // dead): the newest wins.
        out.dedup_by(|a, b| a.node_id == b.node_id);
        out
    }

    /// A receiver that changes whenever a member joins, leaves or changes its keys.
    pub fn changes(&self) -> watch::Receiver<BTreeMap<ChitchatId, NodeState>> {
        self.changes.clone()
    }

    /// Publishes `segments` as the sealed segments of `table` this node has loaded,
    /// replacing what it published before for the table.
    pub async fn set_loaded(&self, table: &str, segments: &BTreeSet<String>) {
        let wanted = segments
            .iter()
            .map(|s| (s.clone(), "1".to_string()))
            .collect();
        self.replace_keys(&format!("seg:{table}:"), wanted).await;
    }

    /// Publishes the stream partitions of `table` this node consumes, each with the
    /// checkpoint its in-memory rows start at.
    pub async fn set_consuming(&self, table: &str, partitions: &BTreeMap<i32, i64>) {
        let wanted = partitions
            .iter()
            .map(|(p, from)| (p.to_string(), from.to_string()))
            .collect();
        self.replace_keys(&format!("part:{table}:"), wanted).await;
    }

    /// Makes this node's keys under `prefix` exactly `prefix + suffix = value` for each of
    /// `wanted`: others are deleted, unchanged ones left alone (no new gossip version).
    async fn replace_keys(&self, prefix: &str, wanted: BTreeMap<String, String>) {
        let chitchat = self.handle.chitchat();
        let mut guard = chitchat.lock().await;
        let me = guard.self_node_state();
        let old: Vec<String> = me
            .key_values()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.to_string())
            .collect();
        for k in &old {
            if !wanted.contains_key(&k[prefix.len()..]) {
                me.delete(k);
            }
        }
        for (suffix, v) in wanted {
            let k = format!("{prefix}{suffix}");
            if me.get(&k) != Some(v.as_str()) {
                me.set(k, v);
            }
        }
    }

    /// Says this node is stopping: it takes no new work and others take over its keys.
    pub async fn set_leaving(&self) {
        let chitchat = self.handle.chitchat();
        chitchat
            .lock()
            .await
            .self_node_state()
            .set("state", "leaving");
    }

    /// Stops gossiping.
    pub async fn shutdown(self) {
        let _ = self.handle.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids() {
        assert!(check_node_id("s1").is_ok());
        assert!(check_node_id("node-1.eu_west").is_ok());
        for bad in ["", "a:b", "a/b", "x y", &"x".repeat(65)] {
            assert!(check_node_id(bad).is_err(), "{bad}");
        }
    }

    fn free_udp() -> SocketAddr {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap()
    }

    #[tokio::test]
    async fn members_see_each_other_and_a_dead_one_goes() {
        let seed = free_udp();
        let a = Membership::join(NodeConfig::new("a", Role::Broker, seed, vec![]))
            .await
            .unwrap();
        let b_addr = free_udp();
        let mut cfg = NodeConfig::new("b", Role::Server, b_addr, vec![seed.to_string()]);
        cfg.flight_addr = Some("127.0.0.1:7101".parse().unwrap());
        let b = Membership::join(cfg).await.unwrap();
        b.set_loaded("events", &["s1".to_string(), "s2".to_string()].into())
            .await;
        b.set_consuming("events", &[(0, 42)].into()).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let m = a.members().await;
            let seen = m.iter().find(|m| m.node_id == "b");
            if let Some(b) = seen.filter(|b| b.has_segment("events", "s2")) {
                assert_eq!(b.role, Role::Server);
                assert_eq!(b.flight_addr, Some("127.0.0.1:7101".parse().unwrap()));
                assert_eq!(b.consuming["events"][&0], 42);
                break;
            }
            assert!(std::time::Instant::now() < deadline, "b never seen: {m:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        b.set_loaded("events", &["s2".to_string()].into()).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while a
            .members()
            .await
            .iter()
            .any(|m| m.has_segment("events", "s1"))
        {
            assert!(std::time::Instant::now() < deadline, "s1 never dropped");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // A node that stops gossiping is declared dead within 5 s.
        b.shutdown().await;
        let stopped = std::time::Instant::now();
        while a.members().await.iter().any(|m| m.node_id == "b") {
            assert!(stopped.elapsed() < Duration::from_secs(5), "b still live");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
