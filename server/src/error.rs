//! Errors of the server role.

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cluster: {0}")]
    Cluster(#[from] basalt_cluster::ClusterError),
    #[error("table store: {0}")]
    Store(#[from] basalt_ingest::IngestError),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Listen {
        addr: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}
