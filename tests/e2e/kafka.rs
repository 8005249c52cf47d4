//! Kafka helpers shared by the real-time e2e tests and the real-time benchmark (which
//! includes this file): unique names, topic creation, a producer that counts failed
//! deliveries and waits on a full queue.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;

/// A name unique to this run (letters, digits and underscores: valid for tables and topics).
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}_{nanos}")
}

pub async fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)));
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &opts,
        )
        .await
        .unwrap();
    for r in results {
        r.unwrap();
    }
}

/// Counts failed deliveries, so no caller believes it produced what the broker lost.
#[derive(Default)]
pub struct Deliveries {
    pub failed: AtomicU64,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = r {
            eprintln!("delivery failed: {e}");
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

pub type TestProducer = BaseProducer<Deliveries>;

pub fn producer(brokers: &str) -> TestProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("message.timeout.ms", "60000")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "500000")
        .create_with_context(Deliveries::default())
        .unwrap()
}

/// Queues one message, waiting while the producer's queue is full.
pub fn send(p: &TestProducer, topic: &str, partition: i32, payload: &[u8]) {
    loop {
        let rec = BaseRecord::<(), [u8]>::to(topic)
            .partition(partition)
            .payload(payload);
        match p.send(rec) {
            Ok(()) => return,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                p.poll(Duration::from_millis(10));
            }
            Err((e, _)) => panic!("produce: {e}"),
        }
    }
}

/// Produces the messages (partition, payload) and waits until the broker has them all.
pub fn produce_all(p: &TestProducer, topic: &str, msgs: &[(i32, Vec<u8>)]) {
    for (partition, payload) in msgs {
        send(p, topic, *partition, payload);
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(600)).unwrap();
    assert_eq!(
        p.context().failed.load(Ordering::Relaxed),
        0,
        "every message delivered"
    );
}
