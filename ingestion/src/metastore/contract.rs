//! The contract every [`Metastore`] must meet, as one async test run against a fresh, empty
//! metastore (tables named `contract_*`).

use std::sync::Arc;

use super::*;
use crate::spec::TableSpec;

fn spec(name: &str) -> TableSpec {
    serde_json::from_value(serde_json::json!({
        "name": name,
        "time_column": "ts",
        "columns": [{"name": "ts", "type": "TIMESTAMP"}, {"name": "v", "type": "LONG"}]
    }))
    .expect("valid spec")
}

fn segment(id: &str) -> SegmentMeta {
    SegmentMeta {
        id: id.into(),
        path: format!("segments/contract/{id}.seg"),
        rows: 10,
        bytes: 100,
        time_range: Some((1, 2)),
        stream: None,
    }
}

fn pub_<'a>(
    generation: &'a str,
    segments: &'a [SegmentMeta],
    deltas: &'a [CheckpointDelta],
) -> Publish<'a> {
    Publish {
        generation,
        segments,
        deltas,
        ..Default::default()
    }
}

/// Runs every check; panics with a message naming the first broken rule.
pub async fn run(ms: Arc<dyn Metastore>) {
    documents(&*ms).await;
    let t = "contract_a";
    assert!(
        ms.get(t).await.unwrap().is_none(),
        "unknown table reads as None"
    );
    let v1 = ms.create(&TableState::new(spec(t))).await.unwrap();
    assert!(
        matches!(
            ms.create(&TableState::new(spec(t))).await,
            Err(IngestError::TableExists(_))
        ),
        "creating twice is TableExists"
    );
    assert!(ms.list_tables().await.unwrap().contains(&t.to_string()));
    let cur = ms.get(t).await.unwrap().expect("created table reads back");
    assert_eq!(cur.version, v1);
    assert!(cur.value.segments.is_empty());
    let g = cur.value.generation.clone();
    assert!(!g.is_empty(), "a new table has a generation");

    // Compare-and-swap: the second writer of the same version loses.
    let mut next = cur.value.clone();
    next.segments.push(segment("s1"));
    let v2 = ms.commit(t, v1, &next).await.unwrap();
    assert!(v2 > v1);
    assert!(
        matches!(
            ms.commit(t, v1, &next).await,
            Err(IngestError::Conflict { .. })
        ),
        "a commit at a stale version is a Conflict"
    );
    assert_eq!(ms.get(t).await.unwrap().unwrap().value, next);

    // A writer so far behind that the version it read is pruned cannot commit either (the
    // version after it may be pruned too, and would be written unseen).
    let mut latest = v2;
    for _ in 0..12 {
        latest = ms.commit(t, latest, &next).await.unwrap();
    }
    assert!(
        matches!(
            ms.commit(t, v1, &next).await,
            Err(IngestError::Conflict { .. })
        ),
        "a commit at a long-pruned version is a Conflict"
    );
    assert_eq!(ms.get(t).await.unwrap().unwrap().version, latest);

    // Checkpoints: a delta must start where the last one ended.
    let d = |from, to| CheckpointDelta {
        partition: 0,
        from,
        to,
    };
    publish(&*ms, t, pub_(&g, &[segment("s2")], &[d(None, 10)]))
        .await
        .unwrap();
    publish(&*ms, t, pub_(&g, &[segment("s3")], &[d(Some(10), 25)]))
        .await
        .unwrap();
    for bad in [d(None, 30), d(Some(9), 30), d(Some(25), 20)] {
        assert!(
            matches!(
                publish(&*ms, t, pub_(&g, &[segment("bad")], &[bad])).await,
                Err(IngestError::CheckpointMismatch { .. })
            ),
            "delta {bad:?} after checkpoint 25 is refused"
        );
    }
    let state = ms.get(t).await.unwrap().unwrap().value;
    assert_eq!(state.checkpoints.get(&0), Some(&25));
    let ids: Vec<&str> = state.segments.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["s1", "s2", "s3"], "refused publishes add nothing");

    // Concurrent publishers: every publish lands exactly once.
    let writers = 8;
    let mut handles = Vec::new();
    for w in 0..writers {
        let (ms, g) = (ms.clone(), g.clone());
        handles.push(tokio::spawn(async move {
            let delta = [CheckpointDelta {
                partition: 100 + w,
                from: None,
                to: 1,
            }];
            let seg = [segment(&format!("w{w}"))];
            publish(&*ms, t, pub_(&g, &seg, &delta)).await
        }));
    }
    for h in handles {
        h.await.unwrap().unwrap();
    }
    let state = ms.get(t).await.unwrap().unwrap().value;
    for w in 0..writers {
        let id = format!("w{w}");
        assert_eq!(
            state.segments.iter().filter(|s| s.id == id).count(),
            1,
            "concurrent publish {id} lands once"
        );
        assert_eq!(state.checkpoints.get(&(100 + w)), Some(&1));
    }

    // Many commits: the latest state is always the one read back.
    let mut cur = ms.get(t).await.unwrap().unwrap();
    for i in 0..20 {
        cur.value.segments.push(segment(&format!("m{i}")));
        cur.version = ms.commit(t, cur.version, &cur.value).await.unwrap();
    }
    assert_eq!(ms.get(t).await.unwrap().unwrap(), cur);

    // The consumer lease: one owner at a time; a publish under a lost lease is fenced.
    let a = match lease::acquire(&*ms, t, &g, "node-a", 60_000).await.unwrap() {
        Ok(l) => l,
        Err(o) => panic!("a free lease is taken, not held by {o:?}"),
    };
    assert!(
        lease::acquire(&*ms, t, &g, "node-b", 60_000)
            .await
            .unwrap()
            .is_err(),
        "an unexpired lease is not taken by another node"
    );
    let under = |l: &Lease, id: &str| {
        let (ms, g, l, id) = (ms.clone(), g.clone(), l.clone(), id.to_string());
        async move {
            let seg = [segment(&id)];
            let p = Publish {
                generation: &g,
                lease: Some(&l),
                segments: &seg,
                ..Default::default()
            };
            publish(&*ms, t, p).await
        }
    };
    under(&a, "leased-1").await.unwrap();
    // Another node takes the lease once it expires: a's publish is then refused.
    let a = lease::renew(&*ms, t, &g, &a, -1).await.unwrap();
    let b = match lease::acquire(&*ms, t, &g, "node-b", 60_000).await.unwrap() {
        Ok(l) => l,
        Err(o) => panic!("an expired lease is taken, not held by {o:?}"),
    };
    assert_eq!(b.epoch, a.epoch + 1, "a new owner has the next epoch");
    assert!(
        matches!(under(&a, "stale").await, Err(IngestError::Fenced { .. })),
        "a stale owner's publish is fenced"
    );
    assert!(matches!(
        lease::renew(&*ms, t, &g, &a, 60_000).await,
        Err(IngestError::Fenced { .. })
    ));
    under(&b, "leased-2").await.unwrap();
    lease::release(&*ms, t, &g, &b).await.unwrap();

    // Drop: a tombstone at once, the name free for a new incarnation.
    let tomb = drop_table(&*ms, t, &g).await.unwrap();
    assert!(tomb.is_dropped() && tomb.segments.iter().any(|s| s.id == "m19"));
    assert!(
        ms.get(t).await.unwrap().unwrap().value.is_dropped(),
        "a dropped table reads as its tombstone"
    );
    assert!(!ms.list_tables().await.unwrap().contains(&t.to_string()));
    assert!(ms.list_all().await.unwrap().contains(&t.to_string()));
    assert!(matches!(
        drop_table(&*ms, t, &g).await,
        Err(IngestError::NoSuchTable(_))
    ));
    assert!(matches!(
        publish(&*ms, t, pub_(&g, &[segment("late")], &[])).await,
        Err(IngestError::NoSuchTable(_))
    ));
    // Concurrent creates of the dropped name: exactly one wins, with one write.
    let mut creates = Vec::new();
    for _ in 0..6 {
        let ms = ms.clone();
        creates.push(tokio::spawn(async move {
            ms.create(&TableState::new(spec(t))).await
        }));
    }
    let mut won = 0;
    for c in creates {
        match c.await.unwrap() {
            Ok(_) => won += 1,
            Err(IngestError::TableExists(_)) => {}
            Err(e) => panic!("create failed: {e}"),
        }
    }
    assert_eq!(won, 1, "one of six concurrent creates wins");
    let fresh = ms.get(t).await.unwrap().unwrap().value;
    assert!(fresh.segments.is_empty() && !fresh.is_dropped());
    assert_ne!(
        fresh.generation, g,
        "a new incarnation has a new generation"
    );
    // A writer of the dropped incarnation never commits into the new one.
    assert!(matches!(
        publish(&*ms, t, pub_(&g, &[segment("stale-writer")], &[])).await,
        Err(IngestError::Fenced { .. })
    ));
    mark_purged(&*ms, t, &g).await.unwrap();
    assert!(
        !ms.get(t).await.unwrap().unwrap().value.is_dropped(),
        "marking the old incarnation purged leaves the new one alone"
    );
    drop_table(&*ms, t, &fresh.generation).await.unwrap();
    mark_purged(&*ms, t, &fresh.generation).await.unwrap();
    assert_eq!(
        ms.get(t).await.unwrap().unwrap().value.dropped,
        Some(Dropped {
            at_ms: ms
                .get(t)
                .await
                .unwrap()
                .unwrap()
                .value
                .dropped
                .unwrap()
                .at_ms,
            purged: true
        })
    );
}

/// Documents: versioned, compare-and-swapped, names checked.
async fn documents(ms: &dyn Metastore) {
    let d = "contract-doc";
    assert!(
        ms.get_document(d).await.unwrap().is_none(),
        "unwritten reads as None"
    );
    let v1 = ms.put_document(d, 0, b"one".to_vec()).await.unwrap();
    assert!(
        matches!(
            ms.put_document(d, 0, b"lost".to_vec()).await,
            Err(IngestError::Conflict { .. })
        ),
        "a second first write is a Conflict"
    );
    let cur = ms.get_document(d).await.unwrap().unwrap();
    assert_eq!((cur.version, &cur.value[..]), (v1, &b"one"[..]));
    let mut v = v1;
    for i in 0..12 {
        v = ms
            .put_document(d, v, format!("n{i}").into_bytes())
            .await
            .unwrap();
    }
    let cur = ms.get_document(d).await.unwrap().unwrap();
    assert_eq!(
        (cur.version, &cur.value[..]),
        (v, &b"n11"[..]),
        "the latest version wins"
    );
    assert!(
        matches!(
            ms.put_document(d, v1, b"stale".to_vec()).await,
            Err(IngestError::Conflict { .. })
        ),
        "a write at a stale version is a Conflict"
    );
    for bad in ["", "../x", "A", "a/b", &"x".repeat(65)] {
        assert!(ms.get_document(bad).await.is_err(), "{bad:?} is refused");
        assert!(
            ms.put_document(bad, 0, Vec::new()).await.is_err(),
            "{bad:?} is refused"
        );
    }
}
