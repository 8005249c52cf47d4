//! This server's share of the cluster. In: the live members (from gossip) and what this
//! server holds now. Out: [`basalt_ingest::Placement`] answers — which sealed segments to
//! load and keep.
//!
//! A segment belongs on the `replication` servers rendezvous hashing ranks first among the
//! live servers that are not leaving ([`basalt_cluster::Placement`]); an upsert or dedup
//! table's real-time segment on its partition's servers, the partition's consumer first. Each
//! stream partition is consumed by the `replication` servers ranked first for it (one for
//! an upsert or dedup table); the first, its owner, seals it, the others are consuming
//! replicas. A server it moves away from keeps consuming it until the new owner reports
//! consuming it. A server keeps a segment
//! it no longer ranks for until every server it now belongs on reports it loaded, so routing
//! always has a loaded replica to switch to: the new replica loads before routing switches,
//! the old one drops only after.

use std::collections::{BTreeSet, HashMap};

use basalt_cluster::{Member, Placement, Role};
use basalt_ingest::metastore::SegmentMeta;
use basalt_ingest::upsert::KeyedTable;
use basalt_ingest::TableSpec;
use parking_lot::RwLock;

#[derive(Debug, Default)]
struct State {
    servers: Placement,
    /// Per table, per segment: the servers that report it loaded.
    loaded: HashMap<String, HashMap<String, BTreeSet<String>>>,
    /// Per table, per stream partition: the servers that report consuming it.
    consuming: HashMap<String, HashMap<i32, BTreeSet<String>>>,
}

#[derive(Debug)]
pub struct ClusterPlacement {
    me: String,
    state: RwLock<State>,
}

impl ClusterPlacement {
    pub fn new(me: &str) -> Self {
        ClusterPlacement {
            me: me.to_string(),
            state: RwLock::new(State::default()),
        }
    }

    /// Takes in the live members (this server included, possibly leaving).
    pub fn update_members(&self, members: &[Member]) {
        let servers = members
            .iter()
            .filter(|m| m.role == Role::Server && !m.leaving)
            .map(|m| m.node_id.clone());
        let mut loaded: HashMap<String, HashMap<String, BTreeSet<String>>> = HashMap::new();
        for m in members.iter().filter(|m| m.role == Role::Server) {
            for (table, segs) in &m.loaded {
                let t = loaded.entry(table.clone()).or_default();
                for s in segs {
                    t.entry(s.clone()).or_default().insert(m.node_id.clone());
                }
            }
        }
        let mut consuming: HashMap<String, HashMap<i32, BTreeSet<String>>> = HashMap::new();
        for m in members.iter().filter(|m| m.role == Role::Server) {
            for (table, parts) in &m.consuming {
                let t = consuming.entry(table.clone()).or_default();
                for p in parts.keys() {
                    t.entry(*p).or_default().insert(m.node_id.clone());
                }
            }
        }
        let mut st = self.state.write();
        st.servers = Placement::new(servers);
        st.loaded = loaded;
        st.consuming = consuming;
    }
}

impl basalt_ingest::Placement for ClusterPlacement {
    fn serves(&self, spec: &TableSpec, segment: &SegmentMeta, held: bool) -> bool {
        let st = self.state.read();
        let ideal = st.servers.home_replicas(
            &spec.name,
            &segment.id,
            KeyedTable::placement_partition(spec, segment),
            spec.replication(),
        );
        if ideal.contains(&self.me.as_str()) {
            return true;
        }
        // Not ours any more: keep it until every server it now belongs on has it.
        if !held {
            return false;
        }
        let reported = st.loaded.get(&spec.name).and_then(|t| t.get(&segment.id));
        !ideal
            .iter()
            .all(|n| reported.is_some_and(|r| r.contains(*n)))
    }

    fn consumes(&self, spec: &TableSpec) -> bool {
        spec.is_realtime()
    }

    /// The partition's `replication` first-ranked servers consume it (consuming replicas,
    /// as Pinot's): the first, its owner, seals; the others keep the same rows queryable so
    /// a broker switches to one at once when the owner fails. An upsert or dedup table's
    /// partition has one consumer: its key map decides which rows stay valid.
    fn consumes_partition(&self, spec: &TableSpec, partition: i32) -> bool {
        let st = self.state.read();
        let consumers = match KeyedTable::of(spec) {
            Some(_) => 1,
            None => spec.replication(),
        };
        let ranked = st
            .servers
            .partition_replicas(&spec.name, partition, consumers);
        if ranked.contains(&self.me.as_str()) {
            return true;
        }
        let owner = ranked.first().copied();
        // A partition moving away is consumed here until its new owner reports consuming it,
        // so its in-memory rows always have a server (the checkpoint compare-and-swap lets
        // only one of the two publish each range).
        let reported = st.consuming.get(&spec.name).and_then(|t| t.get(&partition));
        let here = reported.is_some_and(|r| r.contains(&self.me));
        let there = owner.is_some_and(|o| reported.is_some_and(|r| r.contains(o)));
        here && !there
    }

    fn seals_partition(&self, spec: &TableSpec, partition: i32) -> bool {
        let st = self.state.read();
        st.servers.partition_owner(&spec.name, partition) == Some(self.me.as_str())
    }

    fn leases(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use basalt_ingest::Placement as _;

    fn member(id: &str, leaving: bool, loaded: &[&str]) -> Member {
        Member {
            node_id: id.into(),
            role: Role::Server,
            flight_addr: None,
            http_addr: None,
            pg_addr: None,
            leaving,
            loaded: [(
                "t".to_string(),
                loaded.iter().map(|s| s.to_string()).collect(),
            )]
            .into(),
            consuming: HashMap::new(),
        }
    }

    fn spec() -> TableSpec {
        spec_with(2)
    }

    fn spec_with(replication: usize) -> TableSpec {
        TableSpec::from_json(
            format!(
                r#"{{"name":"t","columns":[{{"name":"a","type":"LONG"}}],"replication":{replication}}}"#
            )
            .as_bytes(),
        )
        .unwrap()
    }

    fn consuming(mut m: Member, parts: &[i32]) -> Member {
        m.consuming = [("t".to_string(), parts.iter().map(|&p| (p, 0i64)).collect())].into();
        m
    }

    #[test]
    fn a_partition_moves_only_once_its_new_owner_consumes_it() {
        let spec = spec_with(1);
        let p3 = Placement::new(["s1", "s2", "s3"].map(String::from));
        let p4 = Placement::new(["s1", "s2", "s3", "s4"].map(String::from));
        let partition = (0..1000)
            .find(|&p| p4.partition_owner("t", p) == Some("s4"))
            .unwrap();
        let old = p3.partition_owner("t", partition).unwrap().to_string();
        let p = ClusterPlacement::new(&old);
        let mut members: Vec<Member> = ["s1", "s2", "s3"]
            .iter()
            .map(|s| member(s, false, &[]))
            .collect();
        p.update_members(&members);
        assert!(p.consumes_partition(&spec, partition));
        // s4 joins: the old owner keeps the partition while s4 does not consume it yet.
        for m in &mut members {
            if m.node_id == old {
                *m = consuming(m.clone(), &[partition]);
            }
        }
        members.push(member("s4", false, &[]));
        p.update_members(&members);
        assert!(
            p.consumes_partition(&spec, partition),
            "dropped before s4 consumes"
        );
        assert!(
            !p.seals_partition(&spec, partition),
            "sealed while handing over"
        );
        let s4 = members.pop().unwrap();
        members.push(consuming(s4, &[partition]));
        p.update_members(&members);
        assert!(
            !p.consumes_partition(&spec, partition),
            "kept after s4 consumes"
        );
        // A server that never consumed a partition does not start because its owner is new.
        let other = ClusterPlacement::new(if old == "s1" { "s2" } else { "s1" });
        other.update_members(&members);
        assert!(!other.consumes_partition(&spec, partition));
    }

    /// With `replication: 2` a partition's two first-ranked servers consume it and only the
    /// first seals; when the first dies the second is the owner at once.
    #[test]
    fn consuming_replicas_follow_the_ranking() {
        let spec = spec();
        let all = ["s1", "s2", "s3"];
        let three = Placement::new(all.map(String::from));
        let members: Vec<Member> = all.iter().map(|s| member(s, false, &[])).collect();
        for partition in 0..8 {
            let ranked = three.partition_replicas("t", partition, 2);
            for s in all {
                let p = ClusterPlacement::new(s);
                p.update_members(&members);
                assert_eq!(p.consumes_partition(&spec, partition), ranked.contains(&s));
                assert_eq!(p.seals_partition(&spec, partition), ranked[0] == s);
            }
            // The owner dies: the replica seals, the third server consumes.
            let survivors: Vec<Member> = members
                .iter()
                .filter(|m| m.node_id != ranked[0])
                .cloned()
                .collect();
            let replica = ClusterPlacement::new(ranked[1]);
            replica.update_members(&survivors);
            assert!(replica.seals_partition(&spec, partition));
            let third = all.iter().find(|s| !ranked.contains(s)).unwrap();
            let third = ClusterPlacement::new(third);
            third.update_members(&survivors);
            assert!(third.consumes_partition(&spec, partition));
            assert!(!third.seals_partition(&spec, partition));
        }
    }

    fn seg(id: &str) -> SegmentMeta {
        SegmentMeta {
            id: id.into(),
            path: String::new(),
            rows: 1,
            bytes: 1,
            time_range: None,
            stream: None,
        }
    }

    /// A server dropped from a segment's replicas keeps it until the new replicas report
    /// it loaded.
    #[test]
    fn hands_over_only_after_the_new_replica_loaded() {
        let spec = spec();
        // Find a segment whose two replicas among s1..s3 do not include s4, but do once s4 joins.
        let three: Vec<Member> = ["s1", "s2", "s3"]
            .iter()
            .map(|s| member(s, false, &[]))
            .collect();
        let (id, old) = (0..1000)
            .map(|i| format!("seg{i}"))
            .find_map(|id| {
                let p3 = Placement::new(["s1", "s2", "s3"].map(String::from));
                let p4 = Placement::new(["s1", "s2", "s3", "s4"].map(String::from));
                let r3 = p3.segment_replicas("t", &id, 2);
                let r4 = p4.segment_replicas("t", &id, 2);
                (r4.contains(&"s4")).then(|| {
                    let old = r3.iter().find(|s| !r4.contains(s)).unwrap().to_string();
                    (id.clone(), old)
                })
            })
            .unwrap();
        let p = ClusterPlacement::new(&old);
        p.update_members(&three);
        assert!(p.serves(&spec, &seg(&id), false));
        let mut four = three.clone();
        four.push(member("s4", false, &[]));
        p.update_members(&four);
        assert!(p.serves(&spec, &seg(&id), true), "dropped before s4 loaded");
        assert!(
            !p.serves(&spec, &seg(&id), false),
            "loaded where it no longer belongs"
        );
        let four: Vec<Member> = four
            .into_iter()
            .map(|mut m| {
                m.loaded.get_mut("t").unwrap().insert(id.clone());
                m
            })
            .collect();
        p.update_members(&four);
        assert!(!p.serves(&spec, &seg(&id), true), "kept after s4 loaded");
    }
}
