//! The stream a real-time table consumes, as the ingester sees it: partitions read from
//! explicit start offsets, one message at a time. In: a table's `source` spec. Out: messages
//! with their partition, offset and timestamp; high watermarks for lag; offset commits for
//! lag monitoring only (the checkpoint of record is the metastore's).
//!
//! Implemented by Kafka ([`super::kafka`]) and the built-in generator ([`super::generator`]).

use std::time::Duration;

use crate::spec::SourceSpec;

/// One message of a partition.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    pub partition: i32,
    pub offset: i64,
    /// Epoch ms, when the stream has one.
    pub timestamp: Option<i64>,
    /// `None` for a message without a payload (a Kafka tombstone).
    pub payload: Option<&'a [u8]>,
}

/// Errors of a stream source, as text for status reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceError {
    /// The broker could not be reached; the source keeps trying.
    Unreachable(String),
    /// Anything else (bad configuration, unknown topic, ...); the session goes on.
    Other(String),
    /// The consumer cannot go on (librdkafka's fatal errors): the session ends and a new
    /// one starts from the checkpoints with a new consumer.
    Fatal(String),
}

impl std::fmt::Display for SourceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceError::Unreachable(m) => write!(f, "broker unreachable: {m}"),
            SourceError::Other(m) => f.write_str(m),
            SourceError::Fatal(m) => write!(f, "fatal consumer error: {m}"),
        }
    }
}

pub trait Source: Send {
    /// The stream's partitions.
    fn partitions(&mut self, timeout: Duration) -> Result<Vec<i32>, SourceError>;
    /// Reads `partitions` from the given positions (`None`: the spec's start position);
    /// replaces any earlier assignment.
    fn assign(&mut self, partitions: &[(i32, Option<i64>)]) -> Result<(), SourceError>;
    /// Waits up to `timeout` for the next message and hands it to `f`; false when none came.
    fn poll(
        &mut self,
        timeout: Duration,
        f: &mut dyn FnMut(Message<'_>),
    ) -> Result<bool, SourceError>;
    /// The offset the next produced message of `partition` will get.
    fn high_watermark(&mut self, partition: i32, timeout: Duration) -> Result<i64, SourceError>;
    /// Records consumed positions with the broker (for lag monitoring; best effort).
    fn commit(&mut self, positions: &[(i32, i64)]);
}

/// The first of `n` assigned partitions, counting from `turn` and wrapping around, that
/// `ready` accepts: how in-process sources take partitions in turns (the caller moves its
/// turn past the answer).
pub(crate) fn next_turn(
    turn: usize,
    n: usize,
    mut ready: impl FnMut(usize) -> bool,
) -> Option<usize> {
    (0..n).map(|k| (turn + k) % n).find(|&i| ready(i))
}

/// What a spec's source consumes, for status reports and logs.
pub fn describe(spec: &SourceSpec) -> String {
    match (&spec.kafka, &spec.generator, &spec.memory) {
        (Some(k), _, _) => format!("kafka topic {:?} at {}", k.topic, k.brokers),
        (None, Some(g), _) => format!(
            "generator of {} events/s in {} partitions",
            g.events_per_second, g.partitions
        ),
        (None, None, Some(m)) => format!("in-memory topic {:?}", m.topic),
        (None, None, None) => "no source".into(),
    }
}

/// Opens the source a spec names; `env_prefix` is the operator's prefix for secret
/// references in Kafka properties.
pub fn open_source(
    table: &str,
    spec: &SourceSpec,
    env_prefix: &str,
) -> Result<Box<dyn Source>, SourceError> {
    match (&spec.kafka, &spec.generator, &spec.memory) {
        (Some(k), _, _) => Ok(Box::new(super::kafka::KafkaStream::open(
            table, k, env_prefix,
        )?)),
        (None, Some(g), _) => Ok(Box::new(super::generator::GeneratorStream::new(g.clone()))),
        (None, None, Some(m)) => Ok(Box::new(super::memory::MemoryStream::new(m))),
        (None, None, None) => Err(SourceError::Other("the spec names no source".into())),
    }
}
