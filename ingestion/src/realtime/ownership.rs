//! The ingest thread's side of the consumer lease ([`crate::metastore::lease`]). In: a
//! session about to consume, or consuming. Out: the lease taken before the first poll (or a
//! standby state while another server holds it), renewed a third of the way through its
//! term, given up when the ingester stops; a lost lease ends the session.

use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::{Ctx, IngestionState};
use crate::error::IngestError;
use crate::metastore::{lease, Lease};

/// How long to wait before asking again for a lease another server holds.
const STANDBY_POLL: Duration = Duration::from_millis(500);

fn ttl_ms(ctx: &Ctx) -> i64 {
    ctx.store.consumer_lease.as_millis() as i64
}

/// Takes the table's consumer lease, waiting in standby while another server holds it.
/// `Ok(None)` when the ingester was stopped meanwhile.
pub(super) fn acquire(ctx: &Ctx) -> Result<Option<Lease>, String> {
    let t = &ctx.table;
    let ms = t.home.metastore.as_ref();
    let mut announced = false;
    loop {
        let taken = ctx.handle.block_on(lease::acquire(
            ms,
            &t.spec.name,
            &t.generation,
            &ctx.store.node,
            ttl_ms(ctx),
        ));
        match taken {
            Ok(Ok(l)) => {
                info!(table = %t.spec.name, node = %l.node, epoch = l.epoch, "took the consumer lease");
                *ctx.lease.lock() = Some(l.clone());
                ctx.status.lock().owner = Some(l.clone());
                return Ok(Some(l));
            }
            Ok(Err(other)) => {
                if !announced {
                    info!(table = %t.spec.name, owner = %other.node, epoch = other.epoch, "another server consumes this table; standing by");
                    announced = true;
                }
                ctx.set_state(
                    IngestionState::Standby,
                    Some(format!(
                        "server {} consumes this table (lease epoch {}); taking over if it lapses",
                        other.node, other.epoch
                    )),
                );
                ctx.status.lock().owner = Some(other);
            }
            Err(e @ (IngestError::NoSuchTable(_) | IngestError::Fenced { .. })) => {
                return Err(e.to_string())
            }
            Err(e) => {
                warn!(table = %t.spec.name, error = %e, "could not take the consumer lease; retrying");
                ctx.set_state(
                    IngestionState::Error,
                    Some(format!("taking the consumer lease: {e}")),
                );
            }
        }
        if ctx.pause(STANDBY_POLL) {
            return Ok(None);
        }
    }
}

/// Renews the lease when a third of its term has passed since `last`; a lease another
/// server took ends the session. A store that does not answer is retried: while the lease
/// lapses, publishes of this server are fenced anyway if another takes over.
pub(super) fn renew_if_due(ctx: &Ctx, last: &mut Instant) -> Result<(), String> {
    let term = ctx.store.consumer_lease;
    if last.elapsed() < term / 3 {
        return Ok(());
    }
    let Some(held) = ctx.lease.lock().clone() else {
        return Ok(());
    };
    let t = &ctx.table;
    let renewed = ctx.handle.block_on(lease::renew(
        t.home.metastore.as_ref(),
        &t.spec.name,
        &t.generation,
        &held,
        ttl_ms(ctx),
    ));
    match renewed {
        Ok(l) => {
            *ctx.lease.lock() = Some(l);
            *last = Instant::now();
            Ok(())
        }
        Err(e @ (IngestError::Fenced { .. } | IngestError::NoSuchTable(_))) => Err(e.to_string()),
        Err(e) => {
            warn!(table = %t.spec.name, error = %e, "could not renew the consumer lease; retrying");
            // Try again soon, not a whole third of the term later.
            *last = Instant::now() - term / 3 + Duration::from_secs(1).min(term / 3);
            Ok(())
        }
    }
}

/// Gives the lease up (the ingester stops), so another server can take over at once.
pub(super) fn release(ctx: &Ctx) {
    let Some(held) = ctx.lease.lock().take() else {
        return;
    };
    let t = &ctx.table;
    if let Err(e) = ctx.handle.block_on(lease::release(
        t.home.metastore.as_ref(),
        &t.spec.name,
        &t.generation,
        &held,
    )) {
        warn!(table = %t.spec.name, error = %e, "could not give up the consumer lease; it lapses by itself");
    }
}
