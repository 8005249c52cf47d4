//! The broker's side of a cluster. In: gossip (the live servers and what each has loaded),
//! the metastore (every table's published segments, through a [`TableStore`] that holds
//! none of them), and SQL. Out: plans whose scans run on servers — [`ClusterSource`] gives
//! DataFusion a [`table::ClusterTable`] per table, whose scan is a
//! [`basalt_query::fragment::RemoteScanExec`]; [`ScatterRule`] cuts the plan above it
//! (at the partial aggregate, a sort with a fetch, or the scan itself) and puts a
//! [`ScatterExec`] there, which routes each segment to one live replica that reports it
//! loaded, sends every server its fragment over Arrow Flight, retries what a server could
//! not answer on another replica, and flags the result partial when no replica is left.
//!
//! ```text
//! SQL ─► DataFusion plan ─► ScatterRule ─► final aggregate / sort / limit (broker)
//!                                              └─ ScatterExec ─Flight─► servers: scan + filter + partial aggregate
//!                                                   └─ small join sides (broker) ──► sent with the fragment, joined on servers
//! ```

mod conn;
mod finish;
mod scatter;
mod source;
mod table;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use basalt_cluster::wire::{StreamRange, StreamWait};
use basalt_cluster::{Member, Membership, Role};
use basalt_ingest::TableStore;
use parking_lot::{Mutex, RwLock};

pub use scatter::{ScatterExec, ScatterRule};
pub use source::ClusterSource;

/// What a broker knows of the cluster.
pub struct Cluster {
    membership: Arc<Membership>,
    token: String,
    broadcast: Broadcast,
    /// Fragments with broadcast joins, by outcome: `sent` (the small sides went to the
    /// servers) or `joined_on_broker` (one turned out larger than [`Broadcast`] allows).
    broadcast_joins: prometheus::IntCounterVec,
    /// The live servers, refreshed at every membership change.
    servers: RwLock<Arc<Vec<Member>>>,
    connections: Mutex<HashMap<SocketAddr, conn::Connection>>,
    /// Per table (name and generation: a table created again restarts its offsets) and
    /// stream partition: the position up to which answers have shown rows.
    shown: Mutex<HashMap<(String, String, i32), i64>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.membership.node_id())
            .finish()
    }
}

impl Cluster {
    /// Follows `membership`; `token` is presented to servers on every call.
    pub async fn start(
        membership: Arc<Membership>,
        token: String,
        broadcast: Broadcast,
    ) -> Arc<Cluster> {
        let cluster = Arc::new(Cluster {
            membership,
            token,
            broadcast,
            broadcast_joins: prometheus::IntCounterVec::new(
                prometheus::Opts::new(
                    "basalt_broker_broadcast_joins_total",
                    "Query fragments with broadcast joins, by outcome: sent (the small sides \
                     went to every server) or joined_on_broker (a small side was larger than \
                     the broadcast limits)",
                ),
                &["outcome"],
            )
            .expect("a valid metric"),
            servers: RwLock::new(Arc::new(Vec::new())),
            connections: Mutex::new(HashMap::new()),
            shown: Mutex::new(HashMap::new()),
        });
        cluster.refresh().await;
        let weak = Arc::downgrade(&cluster);
        let mut changes = cluster.membership.changes();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = changes.changed() => if r.is_err() { return },
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
                let Some(c) = weak.upgrade() else { return };
                c.refresh().await;
            }
        });
        cluster
    }

    /// Reads the live members again.
    pub async fn refresh(&self) {
        let servers: Vec<Member> = self
            .membership
            .members()
            .await
            .into_iter()
            .filter(|m| m.role == Role::Server && m.flight_addr.is_some())
            .collect();
        *self.servers.write() = Arc::new(servers);
    }

    /// Waits until every segment of `table`'s published list is loaded on a live server
    /// (a batch ingest answers once its rows can be read), at most `timeout`; false when
    /// that did not happen.
    pub async fn wait_routable(&self, table: &basalt_ingest::Table, timeout: Duration) -> bool {
        let until = tokio::time::Instant::now() + timeout;
        loop {
            self.refresh().await;
            let servers = self.servers();
            let published = table.view().published.clone();
            let name = &table.spec.name;
            if published
                .iter()
                .all(|s| servers.iter().any(|m| m.has_segment(name, &s.id)))
            {
                return true;
            }
            if servers.is_empty() || tokio::time::Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The live servers as last read.
    pub fn servers(&self) -> Arc<Vec<Member>> {
        self.servers.read().clone()
    }

    pub fn membership(&self) -> &Arc<Membership> {
        &self.membership
    }

    /// The broker's cluster metrics, for its registry.
    pub fn metrics(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![Box::new(self.broadcast_joins.clone())]
    }

    /// A client of the server at `addr`: its open connection, or a new one.
    async fn client(&self, addr: SocketAddr) -> Result<conn::Client, String> {
        if let Some(c) = self.connections.lock().get(&addr) {
            if !c.is_closed() {
                return Ok(c.client());
            }
        }
        let c = conn::connect(addr).await?;
        let client = c.client();
        self.connections.lock().insert(addr, c);
        Ok(client)
    }

    /// The positions a fragment over `segments` of `table` must reach: those shown before
    /// for each stream range's partition.
    fn waits(&self, table: &basalt_ingest::Table, segments: &[String]) -> Vec<StreamWait> {
        let shown = self.shown.lock();
        let name = &table.spec.name;
        segments
            .iter()
            .filter_map(|s| StreamRange::parse(s))
            .filter_map(|r| {
                let key = (name.clone(), table.generation.clone(), r.partition);
                let at_least = *shown.get(&key)?;
                Some(StreamWait {
                    table: name.clone(),
                    partition: r.partition,
                    at_least,
                })
            })
            .collect()
    }

    /// Records the positions an answer over `table` showed rows up to.
    fn shown(
        &self,
        table: &basalt_ingest::Table,
        positions: &std::collections::BTreeMap<i32, i64>,
    ) {
        if positions.is_empty() {
            return;
        }
        let mut shown = self.shown.lock();
        for (&p, &at) in positions {
            let key = (table.spec.name.clone(), table.generation.clone(), p);
            let e = shown.entry(key).or_insert(at);
            *e = (*e).max(at);
        }
    }

    /// Forgets a server's connection (after it failed), so the next call reconnects.
    fn forget_client(&self, addr: SocketAddr) {
        self.connections.lock().remove(&addr);
    }
}

/// How large a join's small side may be to be sent to servers (see [`ScatterExec`]).
#[derive(Debug, Clone, Copy)]
pub struct Broadcast {
    pub max_rows: usize,
    pub max_bytes: usize,
}

impl Default for Broadcast {
    fn default() -> Self {
        Broadcast {
            max_rows: 100_000,
            max_bytes: 16 << 20,
        }
    }
}

/// Keeps a broker's table store in line with the metastore (tables and segments other
/// brokers and servers publish), every `every`.
pub fn start_sync(store: Arc<TableStore>, every: Duration) {
    let weak = Arc::downgrade(&store);
    drop(store);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let Some(s) = weak.upgrade() else { return };
            s.sync().await;
        }
    });
}

/// A broker's placement: it loads no segment and consumes no stream.
#[derive(Debug, Default, Clone, Copy)]
pub struct HoldsNothing;

impl basalt_ingest::Placement for HoldsNothing {
    fn serves(
        &self,
        _: &basalt_ingest::TableSpec,
        _: &basalt_ingest::metastore::SegmentMeta,
        _: bool,
    ) -> bool {
        false
    }

    fn consumes(&self, _: &basalt_ingest::TableSpec) -> bool {
        false
    }
}
