//! Placement by rendezvous hashing (highest random weight). In: a key (a segment id, or a
//! table's stream partition) and the live servers. Out: the `n` servers that should hold it,
//! best first.
//!
//! Every node computes the same answer from the same member list, so placement needs no
//! leader and no stored assignment. When a server joins, only the keys it now ranks first
//! for move to it; when one leaves, only its keys move, each to its next-ranked server.
//! The hash is FNV-1a with a 64-bit finaliser: stable across builds and platforms (the
//! standard library's hasher is not promised to be).

use std::collections::BTreeSet;

/// The weight of `node` for `key`.
fn weight(key: &str, node: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes().chain([0xff]).chain(node.bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64's finaliser: FNV alone leaves the high bits of similar inputs correlated.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The `n` nodes of `nodes` that hold `key`, highest weight first (fewer when there are
/// fewer nodes). Ties break by node id, so the order is total.
pub fn rendezvous<'a, I>(key: &str, nodes: I, n: usize) -> Vec<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let mut ranked: Vec<(u64, &str)> = nodes.into_iter().map(|s| (weight(key, s), s)).collect();
    ranked.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    ranked.dedup_by(|a, b| a.1 == b.1);
    ranked.into_iter().take(n).map(|(_, s)| s).collect()
}

/// The ideal placement over a set of live servers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    servers: BTreeSet<String>,
}

impl Placement {
    pub fn new(servers: impl IntoIterator<Item = String>) -> Self {
        Placement {
            servers: servers.into_iter().collect(),
        }
    }

    pub fn servers(&self) -> &BTreeSet<String> {
        &self.servers
    }

    /// The servers that should hold sealed segment `segment` of `table`, `replication` of
    /// them (all servers when there are fewer).
    pub fn segment_replicas(&self, table: &str, segment: &str, replication: usize) -> Vec<&str> {
        rendezvous(
            &format!("{table}/{segment}"),
            self.servers.iter().map(String::as_str),
            replication.max(1),
        )
    }

    /// The server that consumes stream partition `partition` of `table`, and holds the
    /// partition's sealed segments of a keyed table first.
    pub fn partition_owner(&self, table: &str, partition: i32) -> Option<&str> {
        rendezvous(
            &partition_key(table, partition),
            self.servers.iter().map(String::as_str),
            1,
        )
        .into_iter()
        .next()
    }

    /// The servers that should hold sealed segment `segment`: its partition's (see
    /// [`Placement::partition_replicas`]) for a keyed table's real-time segment, whose
    /// stream partition `partition` is, else by its id ([`Placement::segment_replicas`]).
    pub fn home_replicas(
        &self,
        table: &str,
        segment: &str,
        partition: Option<i32>,
        replication: usize,
    ) -> Vec<&str> {
        match partition {
            Some(p) => self.partition_replicas(table, p, replication),
            None => self.segment_replicas(table, segment, replication),
        }
    }

    /// The servers that hold the sealed segments of a keyed table's partition: the
    /// partition's owner first, then the next-ranked servers (partition-aware placement, so a
    /// partition's segments and its key map stay together).
    pub fn partition_replicas(&self, table: &str, partition: i32, replication: usize) -> Vec<&str> {
        rendezvous(
            &partition_key(table, partition),
            self.servers.iter().map(String::as_str),
            replication.max(1),
        )
    }
}

fn partition_key(table: &str, partition: i32) -> String {
    format!("{table}#partition-{partition}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn nodes(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("s{i}")).collect()
    }

    #[test]
    fn replicas_are_distinct_and_bounded() {
        let p = Placement::new(nodes(3));
        for i in 0..200 {
            let r = p.segment_replicas("events", &format!("seg-{i}"), 2);
            assert_eq!(r.len(), 2);
            assert_ne!(r[0], r[1]);
        }
        assert_eq!(p.segment_replicas("events", "x", 5).len(), 3);
        assert!(Placement::default().partition_owner("t", 0).is_none());
    }

    /// A keyed table's real-time segment is at home with its partition, wherever its id
    /// alone would place it.
    #[test]
    fn keyed_segments_are_at_home_with_their_partition() {
        let p = Placement::new(nodes(5));
        let mut elsewhere = 0;
        for i in 0..200 {
            let id = format!("seg-{i}");
            let by_partition = p.partition_replicas("t", i % 4, 2);
            assert_eq!(p.home_replicas("t", &id, Some(i % 4), 2), by_partition);
            let by_id = p.segment_replicas("t", &id, 2);
            assert_eq!(p.home_replicas("t", &id, None, 2), by_id);
            elsewhere += usize::from(by_id != by_partition);
        }
        // The two placements differ for most segments: asking the wrong one names the wrong
        // servers.
        assert!(elsewhere > 100, "{elsewhere}");
    }

    #[test]
    fn load_is_spread() {
        let p = Placement::new(nodes(4));
        let mut count = std::collections::HashMap::new();
        for i in 0..4000 {
            for s in p.segment_replicas("events", &format!("seg-{i}"), 1) {
                *count.entry(s.to_string()).or_insert(0) += 1;
            }
        }
        for (s, c) in count {
            assert!((700..1300).contains(&c), "{s} got {c} of 4000");
        }
    }

    proptest! {
        /// Removing a server moves only the keys it held; adding one moves only keys to it.
        #[test]
        fn minimal_movement(keys in proptest::collection::vec("[a-z0-9]{1,12}", 1..50),
                            n in 2usize..8, gone in 0usize..8) {
            let all = nodes(n);
            let gone = &all[gone % n];
            let fewer: Vec<String> = all.iter().filter(|s| *s != gone).cloned().collect();
            for k in &keys {
                let before = rendezvous(k, all.iter().map(String::as_str), 1)[0];
                let after = rendezvous(k, fewer.iter().map(String::as_str), 1)[0];
                if before != gone {
                    prop_assert_eq!(before, after);
                }
                // The next-ranked replica takes over.
                let two = rendezvous(k, all.iter().map(String::as_str), 2);
                if before == gone {
                    prop_assert_eq!(two[1], after);
                }
            }
        }

        /// The order of the member list does not change the answer.
        #[test]
        fn order_independent(k in "[a-z0-9]{1,12}", n in 1usize..8, r in 1usize..4) {
            let all = nodes(n);
            let mut rev = all.clone();
            rev.reverse();
            prop_assert_eq!(
                rendezvous(&k, all.iter().map(String::as_str), r),
                rendezvous(&k, rev.iter().map(String::as_str), r)
            );
        }
    }
}
