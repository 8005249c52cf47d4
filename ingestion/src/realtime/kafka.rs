//! Kafka as a [`Source`], with rdkafka's `BaseConsumer` (bundled librdkafka). In: the
//! table's `source.kafka` spec. Out: messages of explicitly assigned partitions.
//!
//! Partitions are assigned with the start offsets the metastore checkpoints give — never
//! from Kafka's committed offsets — with auto-commit and the offset store off. Positions are
//! committed to the consumer group only after a seal is published, for lag monitoring.
//! librdkafka reconnects by itself; errors it reports between calls are kept and surfaced
//! by the next [`Source::poll`], so the status shows an unreachable broker.

use std::time::Duration;

use parking_lot::Mutex;
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message as _, Offset, TopicPartitionList};
use tracing::{debug, warn};

use super::source::{Message, Source, SourceError};
use crate::spec::KafkaSource;

/// Keeps the last client-level error librdkafka reported (e.g. all brokers down).
#[derive(Default)]
struct Ctx {
    error: Mutex<Option<(KafkaError, String)>>,
}

impl ClientContext for Ctx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning => warn!(facility = fac, "librdkafka: {message}"),
            _ => debug!(facility = fac, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        debug!(error = %error, reason, "librdkafka client error");
        *self.error.lock() = Some((error, reason.to_string()));
    }
}

impl ConsumerContext for Ctx {}

pub struct KafkaStream {
    consumer: BaseConsumer<Ctx>,
    topic: String,
    start: Offset,
}

fn is_transport(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::OperationTimedOut
                | RDKafkaErrorCode::Resolve
                | RDKafkaErrorCode::BrokerNotAvailable
                | RDKafkaErrorCode::NetworkException
                | RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::LeaderNotAvailable
        )
    )
}

fn classify(e: KafkaError, what: &str) -> SourceError {
    if is_transport(&e) {
        SourceError::Unreachable(format!("{what}: {e}"))
    } else if e.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) {
        SourceError::Fatal(format!("{what}: {e}"))
    } else {
        SourceError::Other(format!("{what}: {e}"))
    }
}

impl KafkaStream {
    /// A consumer for `spec`; `env_prefix` is the operator's prefix for `${env:NAME}`
    /// references in its properties (resolved here, never stored).
    pub fn open(
        table: &str,
        spec: &KafkaSource,
        env_prefix: &str,
    ) -> Result<KafkaStream, SourceError> {
        let properties = super::kafka_config::resolve(&spec.properties, env_prefix)
            .map_err(|e| SourceError::Other(e.to_string()))?;
        let mut cfg = ClientConfig::new();
        // The spec's settings first (an allowlist, checked with the spec), then Basalt's own.
        for (k, v) in &properties {
            cfg.set(k, v);
        }
        cfg.set("bootstrap.servers", &spec.brokers)
            .set("group.id", format!("basalt-{table}"))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", &spec.start)
            .set(
                "client.id",
                properties
                    .get("client.id")
                    .cloned()
                    .unwrap_or_else(|| format!("basalt-{table}")),
            );
        // A caught-up consumer waits at most this long for new data (unless the spec says);
        // brokers that do not answer a fetch as soon as data arrives (tansu) would otherwise
        // add up to 500 ms to every event's freshness. librdkafka's prefetch queue
        // (queued.max.messages.kbytes, 64 MiB) stays at its default: measured against tansu,
        // 16 MiB cut throughput to 0.8 of a plain consumer.
        if !properties.contains_key("fetch.wait.max.ms") {
            cfg.set("fetch.wait.max.ms", "100");
        }
        let consumer: BaseConsumer<Ctx> = cfg.create_with_context(Ctx::default()).map_err(|e| {
            // librdkafka quotes the value it refuses: keep secrets out of the message.
            let msg = super::kafka_config::scrub(&e.to_string(), &properties);
            SourceError::Other(format!("source.kafka.properties: {msg}"))
        })?;
        Ok(KafkaStream {
            consumer,
            topic: spec.topic.clone(),
            start: if spec.start == "latest" {
                Offset::End
            } else {
                Offset::Beginning
            },
        })
    }

    /// A client error librdkafka reported since the last call.
    fn take_client_error(&self) -> Option<SourceError> {
        let (e, reason) = self.consumer.context().error.lock().take()?;
        Some(if is_transport(&e) {
            SourceError::Unreachable(format!("{reason} ({e})"))
        } else if e.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) {
            SourceError::Fatal(format!("{reason} ({e})"))
        } else {
            SourceError::Other(format!("{reason} ({e})"))
        })
    }
}

impl Source for KafkaStream {
    fn partitions(&mut self, timeout: Duration) -> Result<Vec<i32>, SourceError> {
        let md = self
            .consumer
            .fetch_metadata(Some(&self.topic), timeout)
            .map_err(|e| classify(e, "fetching topic metadata"))?;
        let topic = md
            .topics()
            .iter()
            .find(|t| t.name() == self.topic)
            .ok_or_else(|| SourceError::Other(format!("topic {:?} not in metadata", self.topic)))?;
        if let Some(err) = topic.error() {
            return Err(SourceError::Other(format!(
                "topic {:?}: {}",
                self.topic,
                RDKafkaErrorCode::from(err)
            )));
        }
        let mut ids: Vec<i32> = topic.partitions().iter().map(|p| p.id()).collect();
        ids.sort_unstable();
        if ids.is_empty() {
            return Err(SourceError::Other(format!(
                "topic {:?} has no partitions (does it exist?)",
                self.topic
            )));
        }
        Ok(ids)
    }

    fn assign(&mut self, partitions: &[(i32, Option<i64>)]) -> Result<(), SourceError> {
        let mut tpl = TopicPartitionList::new();
        for &(p, pos) in partitions {
            let offset = pos.map(Offset::Offset).unwrap_or(self.start);
            tpl.add_partition_offset(&self.topic, p, offset)
                .map_err(|e| SourceError::Other(format!("partition {p}: {e}")))?;
        }
        self.consumer
            .assign(&tpl)
            .map_err(|e| classify(e, "assigning partitions"))
    }

    fn poll(
        &mut self,
        timeout: Duration,
        f: &mut dyn FnMut(Message<'_>),
    ) -> Result<bool, SourceError> {
        match self.consumer.poll(timeout) {
            None => match self.take_client_error() {
                Some(e) => Err(e),
                None => Ok(false),
            },
            Some(Ok(m)) => {
                f(Message {
                    partition: m.partition(),
                    offset: m.offset(),
                    timestamp: m.timestamp().to_millis(),
                    payload: m.payload(),
                });
                Ok(true)
            }
            Some(Err(e)) => Err(classify(e, "consuming")),
        }
    }

    fn high_watermark(&mut self, partition: i32, timeout: Duration) -> Result<i64, SourceError> {
        self.consumer
            .fetch_watermarks(&self.topic, partition, timeout)
            .map(|(_, high)| high)
            .map_err(|e| classify(e, "fetching watermarks"))
    }

    fn commit(&mut self, positions: &[(i32, i64)]) {
        let mut tpl = TopicPartitionList::new();
        for &(p, pos) in positions {
            if tpl
                .add_partition_offset(&self.topic, p, Offset::Offset(pos))
                .is_err()
            {
                return;
            }
        }
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
            debug!(error = %e, "committing consumed offsets for lag monitoring failed");
        }
    }
}
