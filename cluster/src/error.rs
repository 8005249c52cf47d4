//! Errors of membership.

/// Why joining or using the cluster failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot gossip on {addr}: {source}")]
    Gossip {
        addr: std::net::SocketAddr,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("invalid node id {0:?}: use 1-64 characters of letters, digits, '-', '_' and '.'")]
    NodeId(String),
}
