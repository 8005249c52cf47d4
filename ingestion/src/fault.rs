//! Fault injection for the chaos tests. In: named points in the ingestion and drop paths,
//! and `BASALT_FAILPOINTS` in the environment, e.g.
//! `seal.before_publish=abort@2;ingest.flush=panic@3`. Out: at the named hit, a panic (to
//! test that it is caught and cleaned up) or an abort (a crash at an exact step, as a
//! `kill -9` there would be).
//!
//! Only built with the `failpoints` feature, which the test build turns on (the workspace
//! root's dev-dependency); a release binary has no failpoints and [`hit`] compiles to
//! nothing.

#[cfg(feature = "failpoints")]
mod imp {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    #[derive(Debug)]
    enum Action {
        Panic,
        Abort,
    }

    #[derive(Debug)]
    struct Point {
        name: String,
        action: Action,
        /// Fire on this hit only (1-based); 0: on every hit.
        at: u64,
        hits: AtomicU64,
    }

    fn points() -> &'static Vec<Point> {
        static POINTS: OnceLock<Vec<Point>> = OnceLock::new();
        POINTS.get_or_init(|| {
            let spec = std::env::var("BASALT_FAILPOINTS").unwrap_or_default();
            spec.split(';')
                .filter_map(|p| {
                    let (name, action) = p.trim().split_once('=')?;
                    let (action, at) = match action.split_once('@') {
                        Some((a, n)) => (a, n.parse().ok()?),
                        None => (action, 0),
                    };
                    let action = match action {
                        "panic" => Action::Panic,
                        "abort" => Action::Abort,
                        _ => return None,
                    };
                    Some(Point {
                        name: name.to_string(),
                        action,
                        at,
                        hits: AtomicU64::new(0),
                    })
                })
                .collect()
        })
    }

    pub fn hit(name: &str) {
        for p in points().iter().filter(|p| p.name == name) {
            let n = p.hits.fetch_add(1, Ordering::Relaxed) + 1;
            if p.at == 0 || p.at == n {
                eprintln!("failpoint {name} hit {n}: {:?}", p.action);
                match p.action {
                    Action::Panic => panic!("failpoint {name}"),
                    Action::Abort => std::process::abort(),
                }
            }
        }
    }
}

/// Fires the failpoint `name` if `BASALT_FAILPOINTS` names it (test builds only).
#[cfg(feature = "failpoints")]
pub fn hit(name: &str) {
    imp::hit(name)
}

/// Fires the failpoint `name` if `BASALT_FAILPOINTS` names it (test builds only).
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_name: &str) {}
