//! The consumer lease of a real-time table: which server consumes its stream. In: a server
//! (its node id) asking for, renewing or giving up the lease. Out: the lease, held in the
//! table's metastore state with an epoch that grows at every change of owner.
//!
//! At most one server consumes a table's partitions: a server takes the lease only when it
//! is free or expired, renews it well before it expires, and gives it up when it stops.
//! Safety does not rest on clocks: every publish names the epoch it consumed under
//! ([`check`]), so a server that lost its lease (a pause, a partition) cannot publish once
//! another took over, even if it still believes it is the owner.

use serde::{Deserialize, Serialize};

use super::{update, Metastore, Versioned};
use crate::error::{IngestError, Result};

/// The owner of a table's real-time consumption.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lease {
    /// The owning server's node id.
    pub node: String,
    /// Grows by one at every change of owner.
    pub epoch: u64,
    /// Until when the owner holds it without renewing (epoch ms).
    pub expires_ms: i64,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Refuses a publish under `held` when the table's owner is someone else or a later epoch.
pub fn check(table: &str, owner: Option<&Lease>, held: &Lease) -> Result<()> {
    match owner {
        Some(o) if o.node == held.node && o.epoch == held.epoch => Ok(()),
        other => Err(IngestError::Fenced {
            table: table.into(),
            reason: format!(
                "consumer lease lost: held by {} at epoch {}, now {}",
                held.node,
                held.epoch,
                match other {
                    Some(o) => format!("held by {} at epoch {}", o.node, o.epoch),
                    None => "free".into(),
                }
            ),
        }),
    }
}

/// Takes the lease for `node` if it is free, expired, or already `node`'s; `Ok(None)` with
/// the current owner when another server holds it.
pub async fn acquire(
    ms: &dyn Metastore,
    table: &str,
    generation: &str,
    node: &str,
    ttl_ms: i64,
) -> Result<Result<Lease, Lease>> {
    let mut held_by_other = None;
    let v: Result<Versioned<_>> = update(ms, table, generation, |s| {
        let now = now_ms();
        match &s.owner {
            Some(o) if o.node != node && o.expires_ms > now => {
                held_by_other = Some(o.clone());
                Err(IngestError::Fenced {
                    table: table.into(),
                    reason: "held".into(),
                })
            }
            prev => {
                let epoch = prev.as_ref().map_or(1, |o| o.epoch + 1);
                s.owner = Some(Lease {
                    node: node.to_string(),
                    epoch,
                    expires_ms: now + ttl_ms,
                });
                Ok(())
            }
        }
    })
    .await;
    match (v, held_by_other) {
        (_, Some(other)) => Ok(Err(other)),
        (Ok(v), None) => Ok(Ok(v.value.owner.expect("set above"))),
        (Err(e), None) => Err(e),
    }
}

/// Extends `held` by `ttl_ms` from now; [`IngestError::Fenced`] if another server took it.
pub async fn renew(
    ms: &dyn Metastore,
    table: &str,
    generation: &str,
    held: &Lease,
    ttl_ms: i64,
) -> Result<Lease> {
    let v = update(ms, table, generation, |s| {
        check(table, s.owner.as_ref(), held)?;
        if let Some(o) = s.owner.as_mut() {
            o.expires_ms = now_ms() + ttl_ms;
        }
        Ok(())
    })
    .await?;
    Ok(v.value.owner.expect("checked above"))
}

/// Gives the lease up (a stopping server), so another can take it at once.
pub async fn release(
    ms: &dyn Metastore,
    table: &str,
    generation: &str,
    held: &Lease,
) -> Result<()> {
    update(ms, table, generation, |s| {
        check(table, s.owner.as_ref(), held)?;
        if let Some(o) = s.owner.as_mut() {
            o.expires_ms = 0;
        }
        Ok(())
    })
    .await
    .map(|_| ())
}
