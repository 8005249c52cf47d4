//! An in-process stream as a [`Source`]: named topics of partitions held in memory, written
//! by the embedding program through [`memory_topic`] and consumed by a table whose spec says
//! `"source":{"memory":{"topic":"...","partitions":N}}`. For tests and embedding: it keeps
//! Kafka's contract (per-partition offsets from 0, reads from any position, high
//! watermarks), so everything behind it — decode, key maps, seals, checkpoints, restarts —
//! runs exactly as with Kafka. Messages live as long as the process.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::source::{next_turn, Message, Source, SourceError};
use crate::spec::MemorySource;

/// One in-memory topic.
#[derive(Debug)]
pub struct MemoryTopic {
    partitions: Mutex<Vec<Vec<Arc<[u8]>>>>,
    /// An error the next poll of a consumer returns (as a broker error would).
    fail: Mutex<Option<String>>,
    /// Whether `fail` is set: polls check this, not the lock.
    failing: AtomicBool,
}

impl MemoryTopic {
    /// Appends a message to `partition`; returns its offset.
    pub fn send(&self, partition: i32, payload: &[u8]) -> i64 {
        let mut p = self.partitions.lock();
        let part = &mut p[partition as usize];
        part.push(Arc::from(payload));
        part.len() as i64 - 1
    }

    pub fn partitions(&self) -> i32 {
        self.partitions.lock().len() as i32
    }

    /// Makes the next poll of one consumer of the topic fail with a fatal error (its
    /// ingestion session ends and restarts from the checkpoints, as after librdkafka's).
    pub fn fail_next_poll(&self, message: &str) {
        *self.fail.lock() = Some(message.to_string());
        self.failing.store(true, Ordering::Release);
    }

    fn get(&self, partition: i32, offset: i64) -> Option<Arc<[u8]>> {
        self.partitions
            .lock()
            .get(partition as usize)
            .and_then(|p| p.get(offset as usize).cloned())
    }

    fn len(&self, partition: i32) -> i64 {
        self.partitions
            .lock()
            .get(partition as usize)
            .map_or(0, |p| p.len() as i64)
    }
}

static TOPICS: LazyLock<Mutex<HashMap<String, Arc<MemoryTopic>>>> = LazyLock::new(Default::default);

/// The in-memory topic `name`, created with `partitions` partitions if it does not exist.
pub fn memory_topic(name: &str, partitions: i32) -> Arc<MemoryTopic> {
    TOPICS
        .lock()
        .entry(name.to_string())
        .or_insert_with(|| {
            Arc::new(MemoryTopic {
                partitions: Mutex::new(vec![Vec::new(); partitions.max(1) as usize]),
                fail: Mutex::new(None),
                failing: AtomicBool::new(false),
            })
        })
        .clone()
}

pub struct MemoryStream {
    topic: Arc<MemoryTopic>,
    /// (partition, next offset) per assigned partition.
    assigned: Vec<(i32, i64)>,
    turn: usize,
}

impl MemoryStream {
    pub fn new(spec: &MemorySource) -> Self {
        MemoryStream {
            topic: memory_topic(&spec.topic, spec.partitions),
            assigned: Vec::new(),
            turn: 0,
        }
    }
}

impl Source for MemoryStream {
    fn partitions(&mut self, _timeout: Duration) -> Result<Vec<i32>, SourceError> {
        Ok((0..self.topic.partitions()).collect())
    }

    fn assign(&mut self, partitions: &[(i32, Option<i64>)]) -> Result<(), SourceError> {
        self.assigned = partitions
            .iter()
            .map(|&(p, at)| (p, at.unwrap_or(0)))
            .collect();
        Ok(())
    }

    fn poll(
        &mut self,
        timeout: Duration,
        f: &mut dyn FnMut(Message<'_>),
    ) -> Result<bool, SourceError> {
        if self.topic.failing.swap(false, Ordering::AcqRel) {
            if let Some(m) = self.topic.fail.lock().take() {
                return Err(SourceError::Fatal(m));
            }
        }
        let until = Instant::now() + timeout;
        loop {
            let (topic, assigned) = (&self.topic, &self.assigned);
            let ready = next_turn(self.turn, assigned.len(), |i| {
                assigned[i].1 < topic.len(assigned[i].0)
            });
            if let Some(i) = ready {
                let (partition, next) = self.assigned[i];
                self.assigned[i].1 += 1;
                self.turn = i + 1;
                // Present: partitions only grow.
                let payload = self.topic.get(partition, next);
                f(Message {
                    partition,
                    offset: next,
                    timestamp: None,
                    payload: payload.as_deref(),
                });
                return Ok(true);
            }
            let now = Instant::now();
            if now >= until {
                return Ok(false);
            }
            std::thread::sleep((until - now).min(Duration::from_millis(2)));
        }
    }

    fn high_watermark(&mut self, partition: i32, _timeout: Duration) -> Result<i64, SourceError> {
        Ok(self.topic.len(partition))
    }

    fn commit(&mut self, _positions: &[(i32, i64)]) {}
}
