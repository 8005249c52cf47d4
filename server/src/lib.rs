//! `basalt-server`: the server role of a cluster. In: the deep store's metastore and
//! segments, the cluster's gossip, and plan fragments from brokers over Arrow Flight. Out:
//! the sealed segments placed on this server loaded into its local cache and announced by
//! gossip (its external view), and fragment results.
//!
//! ```text
//! gossip (members) ─► placement ─► TableStore::sync ─► loaded segments ─► gossip (seg:… keys)
//! broker ─Flight DoGet(ticket: fragment)─► flight ─► QueryEngine::execute_fragment ─► batches + trailer
//! ```
//! Invariants: a server answers a fragment for exactly the segment ids it names, reporting
//! those it does not hold; it keeps a segment it no longer should hold until every server
//! that should hold it reports it loaded; the Flight port refuses calls without the cluster
//! token.

pub mod error;
pub mod flight;
pub mod node;
pub mod placement;
pub mod resolver;

pub use error::ServerError;
pub use node::{ServerConfig, ServerNode};
