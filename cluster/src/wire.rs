//! What brokers and servers exchange over Arrow Flight. In (a broker's `DoGet`): a
//! [`FragmentTicket`] — the plan fragment's datafusion-proto bytes, the query's limits, and
//! the stream positions the answer must reach — with the cluster token in the
//! `authorization` metadata. Out (a server's stream): the fragment's record batches, then
//! one last `FlightData` without a payload whose `app_metadata` is a [`FragmentTrailer`]
//! (scan counters, the segments the server does not have, the positions of the stream
//! partitions it read).
//!
//! Segment ids name sealed segments, or a [`StreamRange`]: a stream partition's rows past
//! a checkpoint (`~stream:<partition>:<offset>`) or all of them (`~partition:<partition>`).

use serde::{Deserialize, Serialize};

/// gRPC metadata carrying the cluster token (`Bearer <token>`).
pub const AUTHORIZATION: &str = "authorization";

/// gRPC metadata naming a failed fragment's error kind (`basalt_query::ErrorKind::name`), so
/// the broker answers with the SQLSTATE and status a local query would.
pub const ERROR_KIND: &str = "x-basalt-error-kind";

/// The ticket of a fragment's `DoGet`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FragmentTicket {
    /// The fragment: a datafusion-proto `PhysicalPlanNode`.
    #[prost(bytes = "vec", tag = "1")]
    pub plan: Vec<u8>,
    /// What is left of the query's timeout.
    #[prost(uint64, tag = "2")]
    pub timeout_ms: u64,
    #[prost(uint64, tag = "3")]
    pub max_rows: u64,
    #[prost(uint64, tag = "4")]
    pub memory_limit: u64,
    /// The broker's query id, for logs.
    #[prost(string, tag = "5")]
    pub query_id: String,
    /// Stream partitions whose rows the broker has already shown up to a position: the
    /// server answers for them only once its consumer has made every message before that
    /// position queryable (within a bounded wait; otherwise it reports their ranges
    /// missing), so a count never goes backwards when another replica answers.
    #[prost(message, repeated, tag = "6")]
    pub waits: Vec<StreamWait>,
    /// Pinot's `useStarTree=false`: aggregations read the rows even where a segment's
    /// star-tree could answer (absent from older brokers: trees on).
    #[prost(bool, tag = "7")]
    pub star_tree_off: bool,
}

/// One partition's position a fragment's answer must reach (see [`FragmentTicket::waits`]).
#[derive(Clone, PartialEq, prost::Message)]
pub struct StreamWait {
    #[prost(string, tag = "3")]
    pub table: String,
    #[prost(int32, tag = "1")]
    pub partition: i32,
    /// The offset every message before which must be in the answer.
    #[prost(int64, tag = "2")]
    pub at_least: i64,
}

/// The server's account of a fragment, after its batches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FragmentTrailer {
    /// Segment ids the fragment named that the server does not have.
    pub missing: Vec<String>,
    pub num_docs_scanned: u64,
    pub total_docs: u64,
    pub num_segments_queried: u64,
    pub num_segments_matched: u64,
    pub num_segments_pruned: u64,
    pub index_lookups: u64,
    pub blocks_scanned: u64,
    pub docs_removed_by_dynamic_filters: u64,
    /// Segments answered from a star-tree.
    #[serde(default)]
    pub num_segments_star_tree: u64,
    /// Per stream partition read: the offset after the last message any row of the answer
    /// may come from (what the broker asks later answers to reach).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub positions: std::collections::BTreeMap<i32, i64>,
    /// The batches are partial aggregate states with each group once: when they are the
    /// only answer of a query, the broker finishes them row by row instead of merging.
    #[serde(default)]
    pub groups_unique: bool,
}

/// A stream partition's rows from a checkpoint on, named among a fragment's segment ids: the
/// partition's consumer answers with the sealed segments it holds that chain from `after`
/// plus its in-memory rows. The broker takes `after` from the same metastore state as the
/// sealed segments it routes, so no row is read twice or missed across a seal.
///
/// An upsert table's partition is read whole instead (`whole`): its sealed segments' valid
/// docs change with every row its consumer takes in, and only the consumer's key map knows
/// them, so the consumer answers for every row of the partition from its own view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamRange {
    pub partition: i32,
    /// The checkpoint (`None`: the partition has none yet).
    pub after: Option<i64>,
    /// Every row of the partition, whatever `after` says.
    pub whole: bool,
}

const STREAM_PREFIX: &str = "~stream:";
const PARTITION_PREFIX: &str = "~partition:";

impl StreamRange {
    /// Its name among segment ids (which never start with `~`).
    pub fn id(&self) -> String {
        match (self.whole, self.after) {
            (true, _) => format!("{PARTITION_PREFIX}{}", self.partition),
            (false, Some(a)) => format!("{STREAM_PREFIX}{}:{a}", self.partition),
            (false, None) => format!("{STREAM_PREFIX}{}:-", self.partition),
        }
    }

    /// The range an id names, if it names one.
    pub fn parse(id: &str) -> Option<StreamRange> {
        if let Some(p) = id.strip_prefix(PARTITION_PREFIX) {
            return Some(StreamRange {
                partition: p.parse().ok()?,
                after: None,
                whole: true,
            });
        }
        let (p, after) = id.strip_prefix(STREAM_PREFIX)?.split_once(':')?;
        Some(StreamRange {
            partition: p.parse().ok()?,
            after: match after {
                "-" => None,
                a => Some(a.parse().ok()?),
            },
            whole: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ranges_round_trip_through_their_ids() {
        for r in [
            StreamRange {
                partition: 3,
                after: Some(42),
                whole: false,
            },
            StreamRange {
                partition: 0,
                after: None,
                whole: false,
            },
            StreamRange {
                partition: 7,
                after: None,
                whole: true,
            },
        ] {
            assert_eq!(StreamRange::parse(&r.id()), Some(r));
        }
        for bad in [
            "events__1__000001__ab",
            "~stream:x:1",
            "~stream:1",
            "~stream:1:1:2",
        ] {
            assert_eq!(StreamRange::parse(bad), None, "{bad}");
        }
    }
}
