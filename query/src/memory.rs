//! Query memory: each query's own limit, inside one budget shared by every query of the
//! server. In: DataFusion's reservations (operators' hash tables, sort buffers, the result
//! being collected, the response being encoded). Out: a reservation granted, or
//! `ResourcesExhausted` naming which limit was hit.
//!
//! A query may hold at most its `memory_limit`, and all queries together at most the
//! server's shared budget (default half the machine's memory), so twenty large queries at
//! once fail with memory errors instead of taking the process down.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use datafusion::common::{resources_datafusion_err, Result as DfResult};
use datafusion::execution::memory_pool::{
    MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation,
};

/// The memory every running query shares.
#[derive(Debug)]
pub struct SharedBudget {
    limit: usize,
    used: AtomicUsize,
}

impl SharedBudget {
    pub fn new(limit: usize) -> Arc<SharedBudget> {
        Arc::new(SharedBudget {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes reserved by all running queries.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn try_add(&self, n: usize) -> bool {
        let mut cur = self.used.load(Ordering::Relaxed);
        loop {
            let Some(next) = cur.checked_add(n).filter(|&v| v <= self.limit) else {
                return false;
            };
            match self
                .used
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    fn sub(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

/// The half of physical memory (from `/proc/meminfo`) the shared budget defaults to; 4 GiB
/// when the machine does not say.
pub fn default_shared_budget() -> usize {
    machine_memory().map(|t| t / 2).unwrap_or(4 << 30)
}

/// The default memory limit of an analyst query: a quarter of the machine's memory (4 GiB
/// when it cannot be read).
pub fn default_analyst_limit() -> usize {
    machine_memory().map(|t| t / 4).unwrap_or(4 << 30)
}

/// The machine's memory in bytes, from `/proc/meminfo`.
fn machine_memory() -> Option<usize> {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<usize>().ok())
        })
        .map(|kb| kb.saturating_mul(1024))
}

/// One query's pool: its own limit, drawn from the shared budget.
///
/// A spilling query's pool is also fair, as DataFusion's `FairSpillPool`: the memory not held
/// by consumers that cannot spill is split evenly among those that can (the sorts and
/// aggregations of each partition), so one partition cannot take it all and leave another
/// without the room it needs to sort its state before spilling it.
#[derive(Debug)]
pub struct QueryPool {
    limit: usize,
    used: AtomicUsize,
    shared: Arc<SharedBudget>,
    fair: Option<parking_lot::Mutex<Fair>>,
}

/// What a fair pool tracks: spillable consumers and the bytes of each kind held.
#[derive(Debug, Default)]
struct Fair {
    spillers: usize,
    spillable: usize,
    unspillable: usize,
}

impl Fair {
    /// The bytes `r`'s kind of consumer holds.
    fn held(&mut self, r: &MemoryReservation) -> &mut usize {
        match r.consumer().can_spill() {
            true => &mut self.spillable,
            false => &mut self.unspillable,
        }
    }

    fn add(&mut self, r: &MemoryReservation, bytes: usize) {
        *self.held(r) += bytes;
    }

    fn sub(&mut self, r: &MemoryReservation, bytes: usize) {
        let held = self.held(r);
        *held = held.saturating_sub(bytes);
    }
}

impl QueryPool {
    pub fn new(limit: usize, shared: Arc<SharedBudget>) -> Arc<QueryPool> {
        Self::build(limit, shared, false)
    }

    /// A pool that shares its memory fairly among spilling consumers (analyst queries).
    pub fn fair(limit: usize, shared: Arc<SharedBudget>) -> Arc<QueryPool> {
        Self::build(limit, shared, true)
    }

    fn build(limit: usize, shared: Arc<SharedBudget>, fair: bool) -> Arc<QueryPool> {
        Arc::new(QueryPool {
            limit,
            used: AtomicUsize::new(0),
            shared,
            fair: fair.then(|| parking_lot::Mutex::new(Fair::default())),
        })
    }

    /// A fair pool's check of `additional` more bytes for `r`, recording them if allowed.
    fn fair_grow(&self, fair: &mut Fair, r: &MemoryReservation, additional: usize) -> DfResult<()> {
        if r.consumer().can_spill() {
            let share = self.limit.saturating_sub(fair.unspillable) / fair.spillers.max(1);
            if r.size() + additional > share {
                return Err(resources_datafusion_err!(
                    "{} asked for {additional} more bytes; it holds {} of its fair share {} of the query's {} (query.analyst_memory_limit_bytes)",
                    r.consumer().name(),
                    r.size(),
                    share,
                    self.limit
                ));
            }
        } else if fair.unspillable + fair.spillable + additional > self.limit {
            return Err(resources_datafusion_err!(
                "{} asked for {additional} more bytes; the query holds {} of its {} (query.analyst_memory_limit_bytes)",
                r.consumer().name(),
                fair.unspillable + fair.spillable,
                self.limit
            ));
        }
        fair.add(r, additional);
        Ok(())
    }
}

impl MemoryPool for QueryPool {
    fn register(&self, consumer: &MemoryConsumer) {
        if let (Some(f), true) = (&self.fair, consumer.can_spill()) {
            f.lock().spillers += 1;
        }
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        if let (Some(f), true) = (&self.fair, consumer.can_spill()) {
            let mut f = f.lock();
            f.spillers = f.spillers.saturating_sub(1);
        }
    }

    fn grow(&self, r: &MemoryReservation, additional: usize) {
        if let Some(f) = &self.fair {
            f.lock().add(r, additional);
        }
        self.used.fetch_add(additional, Ordering::AcqRel);
        self.shared.used.fetch_add(additional, Ordering::AcqRel);
    }

    fn shrink(&self, r: &MemoryReservation, shrink: usize) {
        if let Some(f) = &self.fair {
            f.lock().sub(r, shrink);
        }
        self.used.fetch_sub(shrink, Ordering::AcqRel);
        self.shared.sub(shrink);
    }

    fn try_grow(&self, r: &MemoryReservation, additional: usize) -> DfResult<()> {
        let mut fair = self.fair.as_ref().map(|f| f.lock());
        if let Some(f) = fair.as_deref_mut() {
            self.fair_grow(f, r, additional)?;
        }
        let undo = |fair: Option<&mut Fair>| {
            if let Some(f) = fair {
                f.sub(r, additional);
            }
        };
        let mut cur = self.used.load(Ordering::Relaxed);
        loop {
            let Some(next) = cur.checked_add(additional).filter(|&v| v <= self.limit) else {
                undo(fair.as_deref_mut());
                return Err(resources_datafusion_err!(
                    "{} asked for {additional} more bytes; the query holds {cur} of its {} (query.memory_limit_bytes)",
                    r.consumer().name(),
                    self.limit
                ));
            };
            match self
                .used
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        if !self.shared.try_add(additional) {
            self.used.fetch_sub(additional, Ordering::AcqRel);
            undo(fair.as_deref_mut());
            return Err(resources_datafusion_err!(
                "{} asked for {additional} more bytes; all queries hold {} of the server's {} (query.shared_memory_bytes)",
                r.consumer().name(),
                self.shared.used(),
                self.shared.limit
            ));
        }
        Ok(())
    }

    fn reserved(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn memory_limit(&self) -> MemoryLimit {
        MemoryLimit::Finite(self.limit)
    }
}

/// Bytes of `batch`'s buffers not counted yet: slices of one array share its buffers (a
/// sorted or aggregated result is often cut from one array, and every batch of a dictionary
/// column holds the same dictionary), so each buffer is counted once, by address.
pub fn fresh_bytes(
    batch: &arrow::record_batch::RecordBatch,
    seen: &mut std::collections::HashSet<usize>,
) -> usize {
    fn walk(d: &arrow::array::ArrayData, seen: &mut std::collections::HashSet<usize>) -> usize {
        let mut n = 0;
        for b in d.buffers() {
            if seen.insert(b.data_ptr().as_ptr() as usize) {
                n += b.capacity();
            }
        }
        if let Some(nulls) = d.nulls() {
            let b = nulls.buffer();
            if seen.insert(b.data_ptr().as_ptr() as usize) {
                n += b.capacity();
            }
        }
        for c in d.child_data() {
            n += walk(c, seen);
        }
        n
    }
    batch
        .columns()
        .iter()
        .map(|c| walk(&c.to_data(), seen))
        .sum()
}

/// A reservation for what a query hands back (its collected result, the response being
/// encoded), held until the answer is sent.
pub fn result_reservation(pool: &Arc<dyn MemoryPool>) -> MemoryReservation {
    MemoryConsumer::new("query result").register(pool)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_share_one_budget() {
        let shared = SharedBudget::new(1000);
        let a: Arc<dyn MemoryPool> = QueryPool::new(700, shared.clone());
        let b: Arc<dyn MemoryPool> = QueryPool::new(700, shared.clone());
        let ra = MemoryConsumer::new("a").register(&a);
        let rb = MemoryConsumer::new("b").register(&b);
        ra.try_grow(600).unwrap();
        let e = ra.try_grow(200).unwrap_err().to_string();
        assert!(e.contains("query.memory_limit_bytes"), "{e}");
        let e = rb.try_grow(500).unwrap_err().to_string();
        assert!(e.contains("query.shared_memory_bytes"), "{e}");
        assert_eq!(b.reserved(), 0, "a refused grow holds nothing");
        rb.try_grow(400).unwrap();
        assert_eq!(shared.used(), 1000);
        drop(ra);
        assert_eq!(shared.used(), 400);
        drop(rb);
        assert_eq!(shared.used(), 0);
    }

    /// A fair pool splits what unspillable consumers leave among spillable ones.
    #[test]
    fn a_fair_pool_splits_memory_among_spillers() {
        let shared = SharedBudget::new(10_000);
        let p: Arc<dyn MemoryPool> = QueryPool::fair(1000, shared.clone());
        let result = MemoryConsumer::new("result").register(&p);
        let s1 = MemoryConsumer::new("sort 1")
            .with_can_spill(true)
            .register(&p);
        let s2 = MemoryConsumer::new("sort 2")
            .with_can_spill(true)
            .register(&p);
        result.try_grow(200).unwrap();
        s1.try_grow(400).unwrap();
        let e = s1.try_grow(1).unwrap_err().to_string();
        assert!(e.contains("fair share 400"), "{e}");
        s2.try_grow(400).unwrap();
        // Unspillable memory can still take what is left.
        assert!(result.try_grow(1).is_err());
        drop(s2);
        s1.try_grow(400).unwrap();
        assert_eq!(p.reserved(), 1000);
        assert_eq!(shared.used(), 1000);
        drop((s1, result));
        assert_eq!((p.reserved(), shared.used()), (0, 0));
    }
}
