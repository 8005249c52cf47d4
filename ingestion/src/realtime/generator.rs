//! The built-in generator as a [`Source`]: `events`-shaped JSON messages in any number of
//! partitions at a fixed rate, for the quickstart and benchmarks. No broker is needed and the
//! messages go through the same decode, mutable segment, seal and checkpoint path as Kafka's.
//!
//! The message at (partition, offset) is always the same event ([`MessageGenerator`]), so a
//! restart that resumes from a checkpoint re-reads exactly what was lost, like a Kafka log.
//! A configured fraction of messages is malformed, to show the quarantine.

use std::time::{Duration, Instant};

use super::source::{next_turn, Message, Source, SourceError};
use crate::gen::MessageGenerator;
use crate::spec::GeneratorSource;

struct Part {
    partition: i32,
    next: i64,
    /// Position at assignment; the rate is counted from here.
    base: i64,
}

pub struct GeneratorStream {
    spec: GeneratorSource,
    gen: MessageGenerator,
    parts: Vec<Part>,
    turn: usize,
    assigned: Instant,
    buf: Vec<u8>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A stable pseudo-random fraction in [0, 1) for (partition, offset).
fn unit(partition: i32, offset: i64) -> f64 {
    let mut z = ((partition as u64) << 40 ^ offset as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

impl GeneratorStream {
    pub fn new(spec: GeneratorSource) -> Self {
        GeneratorStream {
            spec,
            gen: MessageGenerator::new(),
            parts: Vec::new(),
            turn: 0,
            assigned: Instant::now(),
            buf: Vec::with_capacity(512),
        }
    }

    /// The first offset a partition has not produced yet (its high watermark).
    fn produced(&self, p: &Part) -> i64 {
        let cap = self.spec.max_events.unwrap_or(i64::MAX);
        let by_rate = if self.spec.events_per_second == 0 {
            i64::MAX
        } else {
            let per_part = self.spec.events_per_second as f64 / self.parts.len().max(1) as f64;
            p.base
                .saturating_add((self.assigned.elapsed().as_secs_f64() * per_part) as i64)
        };
        by_rate.min(cap).max(p.next.min(cap))
    }
}

impl Source for GeneratorStream {
    fn partitions(&mut self, _timeout: Duration) -> Result<Vec<i32>, SourceError> {
        Ok((0..self.spec.partitions).collect())
    }

    fn assign(&mut self, partitions: &[(i32, Option<i64>)]) -> Result<(), SourceError> {
        self.parts = partitions
            .iter()
            .map(|&(partition, pos)| {
                let next = pos.unwrap_or(0);
                Part {
                    partition,
                    next,
                    base: next,
                }
            })
            .collect();
        self.assigned = Instant::now();
        Ok(())
    }

    fn poll(
        &mut self,
        timeout: Duration,
        f: &mut dyn FnMut(Message<'_>),
    ) -> Result<bool, SourceError> {
        let n = self.parts.len();
        let due = next_turn(self.turn, n, |i| {
            self.parts[i].next < self.produced(&self.parts[i])
        });
        if let Some(i) = due {
            self.turn = i + 1;
            let (partition, offset) = (self.parts[i].partition, self.parts[i].next);
            self.parts[i].next += 1;
            let ts = now_ms();
            self.buf.clear();
            let r = unit(partition, offset);
            if r < self.spec.malformed_ratio / 2.0 {
                self.buf.extend_from_slice(b"{\"event_id\":\"broken");
            } else if r < self.spec.malformed_ratio {
                self.buf.extend_from_slice(
                    format!(
                        "{{\"event_id\":\"{}\",\"ts\":\"not a time\"}}",
                        MessageGenerator::event_id(partition, offset)
                    )
                    .as_bytes(),
                );
            } else {
                self.gen.write(partition, offset, ts, &mut self.buf);
            }
            f(Message {
                partition,
                offset,
                timestamp: Some(ts),
                payload: Some(&self.buf),
            });
            return Ok(true);
        }
        // Nothing due: wait for the next event of the rate (or the timeout).
        let wait = if self.spec.events_per_second == 0 {
            timeout
        } else {
            Duration::from_secs_f64(
                (n.max(1) as f64 / self.spec.events_per_second as f64).min(timeout.as_secs_f64()),
            )
        };
        std::thread::sleep(wait);
        Ok(false)
    }

    fn high_watermark(&mut self, partition: i32, _timeout: Duration) -> Result<i64, SourceError> {
        self.parts
            .iter()
            .find(|p| p.partition == partition)
            .map(|p| self.produced(p))
            .ok_or_else(|| SourceError::Other(format!("partition {partition} is not assigned")))
    }

    fn commit(&mut self, _positions: &[(i32, i64)]) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_stable_per_offset_and_rate_limited() {
        let spec = GeneratorSource {
            events_per_second: 0,
            partitions: 2,
            max_events: Some(5),
            malformed_ratio: 0.2,
        };
        let mut g = GeneratorStream::new(spec.clone());
        g.assign(&[(0, None), (1, Some(2))]).unwrap();
        let mut seen = Vec::new();
        while g
            .poll(Duration::from_millis(1), &mut |m| {
                seen.push((m.partition, m.offset, m.payload.unwrap().to_vec()))
            })
            .unwrap()
        {}
        let offsets: Vec<(i32, i64)> = seen.iter().map(|s| (s.0, s.1)).collect();
        assert_eq!(offsets.len(), 5 + 3, "max_events caps each partition");
        assert!(offsets.contains(&(1, 2)) && !offsets.contains(&(1, 1)));
        assert_eq!(g.high_watermark(0, Duration::ZERO).unwrap(), 5);
        // Re-reading an offset yields the same event (timestamps aside).
        let mut again = GeneratorStream::new(spec);
        again.assign(&[(1, Some(3))]).unwrap();
        let mut first = None;
        again
            .poll(Duration::from_millis(1), &mut |m| {
                first = Some(m.payload.unwrap().to_vec())
            })
            .unwrap();
        let strip = |b: &[u8]| {
            let s = String::from_utf8_lossy(b).to_string();
            s.split(",\"ts\":").next().unwrap().to_string()
        };
        let before = seen.iter().find(|s| (s.0, s.1) == (1, 3)).unwrap();
        assert_eq!(strip(&first.unwrap()), strip(&before.2));
        // Some messages are malformed on purpose.
        let bad = (0..1000).filter(|&o| unit(0, o) < 0.2).count();
        assert!((150..250).contains(&bad), "{bad}");

        // A rate-limited generator produces about its rate.
        let mut slow = GeneratorStream::new(GeneratorSource {
            events_per_second: 200,
            partitions: 1,
            max_events: None,
            malformed_ratio: 0.0,
        });
        slow.assign(&[(0, None)]).unwrap();
        let t = Instant::now();
        let mut n = 0;
        while t.elapsed() < Duration::from_millis(200) {
            if slow.poll(Duration::from_millis(5), &mut |_| {}).unwrap() {
                n += 1;
            }
        }
        assert!((20..=60).contains(&n), "{n} events in 200 ms at 200/s");
    }
}
