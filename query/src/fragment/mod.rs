//! Plan fragments: the part of a query a server runs over its own segments. In (broker): a
//! physical plan whose leaf is a [`RemoteScanExec`] naming a table, its pushed filters and
//! the segment ids one server must read. Out: bytes — DataFusion's own protobuf plan
//! serialization (`datafusion-proto`), with [`FragmentCodec`] encoding Basalt's scan leaf.
//! In (server): those bytes and a [`SegmentResolver`] over the server's loaded segments. Out:
//! the same plan over a [`crate::scan::SegmentScanExec`] of exactly the named segments, and
//! the ids the server does not have (reported to the broker, which asks another replica: a
//! segment is never counted twice nor silently dropped).
//!
//! A server runs only fragments of the shape [`shape`] defines, whatever the bytes decode to.
//!
//! The fragment boundary is the leaf: everything above it is a standard DataFusion operator
//! (filter, projection, partial aggregate, a sort with a fetch), so any DataFusion-based
//! executor — `datafusion-distributed`'s workers included — can run it.

mod codec;
mod remote_scan;
pub mod shape;

pub use codec::{decode, encode, FragmentCodec};
pub use remote_scan::{RemoteScanExec, ScanSpec};

use crate::table::TableSnapshot;

/// Finds the segments a fragment names, on the server that runs it.
pub trait SegmentResolver: Send + Sync + std::fmt::Debug {
    /// A snapshot of `table` holding exactly those of `segments` this server has loaded (in
    /// the order asked), and the ids it does not have.
    fn resolve(
        &self,
        table: &str,
        segments: &[String],
    ) -> Result<(TableSnapshot, Vec<String>), crate::QueryError>;
}

#[cfg(test)]
mod tests;
