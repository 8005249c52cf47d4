//! `basalt-cluster`: who is in the cluster and who should hold what.
//!
//! In: this node's identity and addresses, seed addresses to gossip with, and what it has
//! loaded. Out: the live members with their roles, addresses and external views
//! ([`membership`]), and the ideal placement of segments and stream partitions over the live
//! servers ([`assign`]), which every node computes alike from the same inputs, so no leader
//! is elected.
//!
//! Membership and failure detection are chitchat's (Quickwit's scuttlebutt gossip with a phi
//! accrual failure detector); this crate only chooses the keys nodes publish.

pub mod assign;
pub mod error;
pub mod membership;
pub mod wire;

pub use assign::{rendezvous, Placement};
pub use error::ClusterError;
pub use membership::{Member, Membership, NodeConfig, Role};
