//! A deterministic, seeded generator of product events in the shape of the `events` table
//! spec. In: a seed, a row count, a start time. Out: Arrow batches (and NDJSON or Parquet
//! files through [`write_events`]). The same seed always yields the same events.
//!
//! Distribution: zipf-distributed users (2M) and urls (20k), 30 event types, 200 countries,
//! 5 devices, ~2% bots, revenue only on purchases, timestamps increasing by ~1 ms per event
//! on average with up to 5 s of jitter (late events).

use std::io::Write;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, StringBuilder, TimestampMillisecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use rand::rngs::{SmallRng, StdRng};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal, Zipf};

use crate::error::Result;

/// The events table spec the generator matches (as accepted by `POST /tables`).
pub const EVENTS_SPEC: &str = include_str!("gen_events_spec.json");

pub const EVENT_TYPES: [&str; 30] = [
    "page_view",
    "click",
    "scroll",
    "search",
    "add_to_cart",
    "remove_from_cart",
    "purchase",
    "login",
    "logout",
    "signup",
    "share",
    "like",
    "comment",
    "video_play",
    "video_pause",
    "video_complete",
    "download",
    "upload",
    "form_submit",
    "error",
    "notification_open",
    "notification_dismiss",
    "checkout_start",
    "checkout_step",
    "coupon_apply",
    "wishlist_add",
    "rating",
    "review",
    "settings_change",
    "app_open",
];
/// Relative weights: page views and clicks dominate, purchases are rare.
const EVENT_WEIGHTS: [u32; 30] = [
    300, 200, 120, 60, 40, 10, 15, 30, 10, 5, 8, 25, 6, 20, 10, 8, 4, 2, 6, 5, 12, 8, 10, 8, 3, 6,
    4, 2, 3, 40,
];
pub const DEVICES: [&str; 5] = ["mobile", "desktop", "tablet", "tv", "watch"];
const DEVICE_WEIGHTS: [u32; 5] = [55, 35, 7, 2, 1];
const OSES: [&str; 6] = ["android", "ios", "windows", "macos", "linux", "other"];
pub const USERS: u64 = 2_000_000;
pub const URLS: u64 = 20_000;
pub const COUNTRIES: u64 = 200;

pub fn events_arrow_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("event_id", DataType::Utf8, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("user_id", DataType::Utf8, false),
        Field::new("session_id", DataType::Utf8, false),
        Field::new("event_type", DataType::Utf8, false),
        Field::new("country", DataType::Utf8, false),
        Field::new("device", DataType::Utf8, false),
        Field::new("os", DataType::Utf8, false),
        Field::new("app_version", DataType::Utf8, false),
        Field::new("url", DataType::Utf8, false),
        Field::new("revenue", DataType::Float64, true),
        Field::new("latency_ms", DataType::Float64, false),
        Field::new("is_bot", DataType::Boolean, false),
    ]))
}

/// Country codes: two letters, the first 200 in a fixed order.
pub fn country(i: u64) -> String {
    let a = (b'A' + (i / 26 % 26) as u8) as char;
    let b = (b'A' + (i % 26) as u8) as char;
    format!("{a}{b}")
}

pub struct EventGenerator {
    rng: StdRng,
    next_ts: f64,
    emitted: u64,
    dists: Distributions,
}

/// The distributions every generated event is drawn from.
struct Distributions {
    users: Zipf<f64>,
    urls: Zipf<f64>,
    countries: Zipf<f64>,
    latency: LogNormal<f64>,
    event_cdf: Vec<u32>,
    device_cdf: Vec<u32>,
}

/// One event's attributes (everything but its id and time).
struct Draw {
    user: u64,
    event_type: &'static str,
    country: String,
    /// Index into [`DEVICES`].
    device: usize,
    url: u64,
    revenue: Option<f64>,
    latency: f64,
}

impl Draw {
    fn os(&self) -> &'static str {
        let u = self.user;
        let o = match self.device {
            0 => (u % 2) as usize,
            1 => 2 + (u % 3) as usize,
            _ => 5 - (u % 2) as usize * 4,
        };
        OSES[o.min(OSES.len() - 1)]
    }

    fn app_version(&self) -> String {
        let u = self.user;
        format!("{}.{}.{}", 3 + u % 3, u % 10, u % 4)
    }

    fn is_bot(&self) -> bool {
        self.user % 50 == 7
    }
}

impl Distributions {
    fn new() -> Self {
        Distributions {
            users: Zipf::new(USERS as f64, 1.05).expect("valid zipf"),
            urls: Zipf::new(URLS as f64, 1.1).expect("valid zipf"),
            countries: Zipf::new(COUNTRIES as f64, 1.2).expect("valid zipf"),
            latency: LogNormal::new(4.0, 0.8).expect("valid lognormal"),
            event_cdf: cdf(&EVENT_WEIGHTS),
            device_cdf: cdf(&DEVICE_WEIGHTS),
        }
    }

    /// Draws one event's attributes (in a fixed order, so a seeded generator repeats).
    fn draw(&self, r: &mut impl Rng) -> Draw {
        let user = self.users.sample(r) as u64;
        let event_type = EVENT_TYPES[pick(&self.event_cdf, r)];
        let country = country(self.countries.sample(r) as u64 - 1);
        let device = pick(&self.device_cdf, r);
        let url = self.urls.sample(r) as u64;
        let revenue =
            (event_type == "purchase").then(|| (r.random_range(100..50_000) as f64) / 100.0);
        let latency = (self.latency.sample(r) * 100.0).round() / 100.0;
        Draw {
            user,
            event_type,
            country,
            device,
            url,
            revenue,
            latency,
        }
    }
}

fn cdf(w: &[u32]) -> Vec<u32> {
    w.iter()
        .scan(0, |acc, x| {
            *acc += x;
            Some(*acc)
        })
        .collect()
}

fn pick(cdf: &[u32], rng: &mut impl Rng) -> usize {
    let total = *cdf.last().expect("non-empty");
    let x = rng.random_range(0..total);
    cdf.partition_point(|&c| c <= x)
}

impl EventGenerator {
    /// `start_ms`: timestamp of the first event; events advance ~`step_ms` each.
    pub fn new(seed: u64, start_ms: i64) -> Self {
        EventGenerator {
            rng: StdRng::seed_from_u64(seed),
            next_ts: start_ms as f64,
            emitted: 0,
            dists: Distributions::new(),
        }
    }

    /// The next `n` events as one batch, advancing time by `step_ms` per event on average.
    pub fn batch(&mut self, n: usize, step_ms: f64) -> RecordBatch {
        let mut event_id = StringBuilder::with_capacity(n, n * 32);
        let mut ts = TimestampMillisecondBuilder::with_capacity(n);
        let mut user = StringBuilder::with_capacity(n, n * 8);
        let mut session = StringBuilder::with_capacity(n, n * 12);
        let mut etype = StringBuilder::with_capacity(n, n * 10);
        let mut ctry = StringBuilder::with_capacity(n, n * 2);
        let mut device = StringBuilder::with_capacity(n, n * 7);
        let mut os = StringBuilder::with_capacity(n, n * 7);
        let mut ver = StringBuilder::with_capacity(n, n * 6);
        let mut url = StringBuilder::with_capacity(n, n * 10);
        let mut revenue = Float64Builder::with_capacity(n);
        let mut latency = Float64Builder::with_capacity(n);
        let mut bot = BooleanBuilder::with_capacity(n);
        for _ in 0..n {
            let r = &mut self.rng;
            self.emitted += 1;
            let id: u128 = r.random();
            event_id.append_value(format!("{id:032x}"));
            self.next_ts += step_ms * r.random_range(0.0..2.0);
            let jitter = if r.random_bool(0.05) {
                r.random_range(0.0..5000.0)
            } else {
                0.0
            };
            ts.append_value((self.next_ts - jitter) as i64);
            let d = self.dists.draw(r);
            let u = d.user;
            user.append_value(format!("u{u}"));
            session.append_value(format!("s{u}_{}", (self.next_ts as i64) / 1_800_000));
            etype.append_value(d.event_type);
            ctry.append_value(&d.country);
            device.append_value(DEVICES[d.device]);
            os.append_value(d.os());
            ver.append_value(d.app_version());
            url.append_value(format!("/p/{}", d.url));
            revenue.append_option(d.revenue);
            latency.append_value(d.latency);
            bot.append_value(d.is_bot());
        }
        let cols: Vec<ArrayRef> = vec![
            Arc::new(event_id.finish()),
            Arc::new(ts.finish()),
            Arc::new(user.finish()),
            Arc::new(session.finish()),
            Arc::new(etype.finish()),
            Arc::new(ctry.finish()),
            Arc::new(device.finish()),
            Arc::new(os.finish()),
            Arc::new(ver.finish()),
            Arc::new(url.finish()),
            Arc::new(revenue.finish()),
            Arc::new(latency.finish()),
            Arc::new(bot.finish()),
        ];
        RecordBatch::try_new(events_arrow_schema(), cols).expect("schema matches")
    }
}

/// Stateless generator of JSON event messages for stream sources: the message at
/// (partition, offset) is always the same event (same `event_id`, user, type, ...), so a
/// consumer that re-reads an offset after a restart sees the message it saw before. Only the
/// timestamp is the caller's (the time of production).
pub struct MessageGenerator {
    dists: Distributions,
}

impl Default for MessageGenerator {
    fn default() -> Self {
        Self::new()
    }
}

impl MessageGenerator {
    pub fn new() -> Self {
        MessageGenerator {
            dists: Distributions::new(),
        }
    }

    /// The `event_id` of the message at (partition, offset).
    pub fn event_id(partition: i32, offset: i64) -> String {
        format!("p{partition}-{offset:012}")
    }

    /// Writes the event at (partition, offset) as one JSON object, stamped `ts_ms`.
    pub fn write(&self, partition: i32, offset: i64, ts_ms: i64, out: &mut Vec<u8>) {
        let seed = (partition as u64) << 48 ^ offset as u64;
        let mut r = SmallRng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let d = self.dists.draw(&mut r);
        let u = d.user;
        let _ = write!(
            out,
            "{{\"event_id\":\"{}\",\"ts\":{ts_ms},\"user_id\":\"u{u}\",\"session_id\":\"s{u}_{}\",\"event_type\":\"{}\",\"country\":\"{}\",\"device\":\"{}\",\"os\":\"{}\",\"app_version\":\"{}\",\"url\":\"/p/{}\",",
            Self::event_id(partition, offset),
            ts_ms / 1_800_000,
            d.event_type,
            d.country,
            DEVICES[d.device],
            d.os(),
            d.app_version(),
            d.url,
        );
        if let Some(revenue) = d.revenue {
            let _ = write!(out, "\"revenue\":{revenue},");
        }
        let _ = write!(
            out,
            "\"latency_ms\":{},\"is_bot\":{}}}",
            d.latency,
            d.is_bot()
        );
    }
}

/// Output formats of `basalt gen-events`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GenFormat {
    NdJson,
    Parquet,
}

/// Writes `rows` events to `out` in `format`. Timestamps end near `end_ms` (so "the last 5
/// minutes" has data when `end_ms` is now) with one event per `step_ms` on average.
pub fn write_events(
    out: impl Write + Send,
    format: GenFormat,
    rows: u64,
    seed: u64,
    end_ms: i64,
    step_ms: f64,
) -> Result<()> {
    let start = end_ms - (rows as f64 * step_ms) as i64;
    let mut g = EventGenerator::new(seed, start);
    let mut left = rows;
    match format {
        GenFormat::NdJson => {
            let mut w = std::io::BufWriter::with_capacity(1 << 20, out);
            let mut jw = arrow::json::LineDelimitedWriter::new(&mut w);
            while left > 0 {
                let n = left.min(65536) as usize;
                jw.write(&g.batch(n, step_ms))?;
                left -= n as u64;
            }
            jw.finish()?;
            drop(jw);
            w.flush()?;
        }
        GenFormat::Parquet => {
            let props = parquet::file::properties::WriterProperties::builder()
                .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
                .build();
            let mut w =
                parquet::arrow::ArrowWriter::try_new(out, events_arrow_schema(), Some(props))?;
            while left > 0 {
                let n = left.min(65536) as usize;
                w.write(&g.batch(n, step_ms))?;
                left -= n as u64;
            }
            w.close()?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_shaped() {
        let a = EventGenerator::new(7, 0).batch(5000, 1.0);
        let b = EventGenerator::new(7, 0).batch(5000, 1.0);
        assert_eq!(a, b);
        let types = a
            .column(4)
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .unwrap();
        let rev = a.column(10);
        for i in 0..a.num_rows() {
            assert_eq!(types.value(i) == "purchase", !rev.is_null(i));
        }
    }
}
