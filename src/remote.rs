//! The command line's client commands against a running server's HTTP API: `sql`, `tables`,
//! `table` and `ingest`. In: a server URL, an optional token, the command's arguments. Out:
//! results on stdout (a table, CSV or JSON), progress and errors on stderr; an `Err` names
//! what went wrong (the caller prints it and exits 1).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use basalt_ingest::Format;
use comfy_table::{presets, Cell, CellAlignment, ContentArrangement, Table};
use futures::StreamExt;
use serde_json::Value;

/// How `basalt sql` prints a result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// An aligned table with a row count (the default).
    Table,
    /// RFC 4180 CSV with a header row.
    Csv,
    /// One JSON array of objects, column name to value.
    Json,
}

/// A server's HTTP API, as a client of it.
pub struct Remote {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Remote {
    pub fn new(server: &str, token: Option<String>) -> Result<Remote, String> {
        let base = server.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(format!(
                "--server {server:?} is not an http:// or https:// URL (e.g. http://127.0.0.1:8099)"
            ));
        }
        Ok(Remote {
            base,
            token,
            http: reqwest::Client::new(),
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// Sends `req` and reads its JSON answer; a non-2xx status becomes an error carrying the
    /// server's message.
    async fn json(&self, what: &str, req: reqwest::RequestBuilder) -> Result<Value, String> {
        let resp = req
            .send()
            .await
            .map_err(|e| format!("{what}: cannot reach {}: {e}", self.base))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| format!("{what}: reading the answer: {e}"))?;
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if !status.is_success() {
            let message = body
                .get("error")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| body.to_string());
            return Err(format!("{what}: server answered {status}: {message}"));
        }
        Ok(body)
    }

    async fn get(&self, what: &str, path: &str) -> Result<Value, String> {
        self.json(what, self.request(reqwest::Method::GET, path))
            .await
    }
}

/// `basalt sql`: runs `sql` and prints its rows in `format`.
pub async fn sql(remote: &Remote, sql: &str, format: OutputFormat) -> Result<(), String> {
    let started = Instant::now();
    let body = remote
        .json(
            "query",
            remote
                .request(reqwest::Method::POST, "/query/sql")
                .json(&serde_json::json!({ "sql": sql })),
        )
        .await?;
    if let Some(e) = body
        .get("exceptions")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
    {
        let message = e.get("message").and_then(Value::as_str).unwrap_or("failed");
        let code = e.get("errorCode").map(Value::to_string).unwrap_or_default();
        return Err(format!("query failed (error code {code}): {message}"));
    }
    let table = body
        .get("resultTable")
        .ok_or("the answer has no resultTable")?;
    let names: Vec<String> = table["dataSchema"]["columnNames"]
        .as_array()
        .map(|a| a.iter().map(cell_text).collect())
        .unwrap_or_default();
    let types: Vec<String> = table["dataSchema"]["columnDataTypes"]
        .as_array()
        .map(|a| a.iter().map(cell_text).collect())
        .unwrap_or_default();
    let empty = Vec::new();
    let rows = table["rows"].as_array().unwrap_or(&empty);
    let mut out = std::io::stdout().lock();
    let written = match format {
        OutputFormat::Table => {
            let mut t = new_table(&names);
            for row in rows {
                let cells = row.as_array().unwrap_or(&empty);
                t.add_row(cells.iter().zip(&types).map(|(v, ty)| {
                    let c = Cell::new(cell_text(v));
                    match numeric(ty) {
                        true => c.set_alignment(CellAlignment::Right),
                        false => c,
                    }
                }));
            }
            let ms = body["timeUsedMs"].as_u64().unwrap_or(0);
            writeln!(out, "{t}").and_then(|_| {
                writeln!(
                    out,
                    "({} row{}, {} ms on the server, {} ms in all)",
                    rows.len(),
                    if rows.len() == 1 { "" } else { "s" },
                    ms,
                    started.elapsed().as_millis()
                )
            })
        }
        OutputFormat::Csv => {
            let mut w = csv::Writer::from_writer(&mut out);
            let mut result = w.write_record(&names);
            for row in rows {
                if result.is_err() {
                    break;
                }
                let cells = row.as_array().unwrap_or(&empty);
                result = w.write_record(cells.iter().map(cell_text));
            }
            result
                .and_then(|_| w.flush().map_err(csv::Error::from))
                .map_err(std::io::Error::other)
        }
        OutputFormat::Json => {
            let objects: Vec<Value> = rows
                .iter()
                .map(|row| {
                    let cells = row.as_array().unwrap_or(&empty);
                    Value::Object(names.iter().cloned().zip(cells.iter().cloned()).collect())
                })
                .collect();
            serde_json::to_writer_pretty(&mut out, &objects)
                .map_err(std::io::Error::other)
                .and_then(|_| writeln!(out))
        }
    };
    written.map_err(|e| format!("writing the result: {e}"))
}

fn numeric(ty: &str) -> bool {
    matches!(ty, "INT" | "LONG" | "FLOAT" | "DOUBLE" | "BIG_DECIMAL")
}

/// A JSON value as a table cell: strings bare, null empty, the rest as JSON.
fn cell_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn new_table(header: &[String]) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.iter().map(Cell::new));
    t
}

fn stat(stats: &Value, key: &str) -> u64 {
    stats.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// `1234567` → `1,234,567`.
fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn bytes(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}

/// A table's ingestion in one phrase: its state and lag, or how it is loaded.
fn ingestion_summary(detail: &Value) -> String {
    match detail.get("ingestion") {
        Some(i) if !i.is_null() => {
            let lag: u64 = i["partitions"]
                .as_array()
                .map(|p| p.iter().map(|p| stat(p, "lag")).sum())
                .unwrap_or(0);
            let state = i["state"].as_str().unwrap_or("?");
            match i["error"].as_str() {
                Some(e) => format!("{state}: {e}"),
                None => format!("{state}, lag {}", thousands(lag)),
            }
        }
        _ => "batch (POST /tables/{name}/ingest)"
            .replace("{name}", detail["name"].as_str().unwrap_or("NAME")),
    }
}

/// `basalt tables`: every table with its size and ingestion state.
pub async fn tables(remote: &Remote) -> Result<(), String> {
    let list = remote.get("listing tables", "/tables").await?;
    let header: Vec<String> = [
        "table",
        "rows",
        "segments",
        "bytes",
        "mutable rows",
        "quarantined",
        "ingestion",
    ]
    .map(String::from)
    .to_vec();
    let mut t = new_table(&header);
    for name in list["tables"].as_array().into_iter().flatten() {
        let name = cell_text(name);
        let d = remote
            .get(&format!("table {name}"), &format!("/tables/{name}"))
            .await?;
        let s = &d["stats"];
        let right = |s: String| Cell::new(s).set_alignment(CellAlignment::Right);
        t.add_row(vec![
            Cell::new(&name),
            right(thousands(stat(s, "rows"))),
            right(thousands(stat(s, "segments"))),
            right(bytes(stat(s, "bytes"))),
            right(thousands(stat(s, "mutable_rows"))),
            right(thousands(stat(s, "quarantined"))),
            Cell::new(ingestion_summary(&d)),
        ]);
    }
    for u in list["unavailable"].as_array().into_iter().flatten() {
        let name = u
            .get("table")
            .or(u.get("name"))
            .map(cell_text)
            .unwrap_or_else(|| cell_text(u));
        let reason = u.get("reason").map(cell_text).unwrap_or_default();
        t.add_row(vec![
            Cell::new(name),
            Cell::new(""),
            Cell::new(""),
            Cell::new(""),
            Cell::new(""),
            Cell::new(""),
            Cell::new(format!("UNAVAILABLE: {reason}")),
        ]);
    }
    println!("{t}");
    Ok(())
}

/// `basalt table NAME`: a table's columns, statistics and ingestion per partition.
pub async fn table(remote: &Remote, name: &str) -> Result<(), String> {
    let d = remote
        .get(&format!("table {name}"), &format!("/tables/{name}"))
        .await?;
    let spec = &d["spec"];
    let s = &d["stats"];
    println!("table {}", d["name"].as_str().unwrap_or(name));
    if let Some(tc) = spec["time_column"].as_str() {
        println!("time column {tc}");
    }
    println!(
        "{} rows in {} segments ({}), {} mutable rows, {} quarantined",
        thousands(stat(s, "rows")),
        thousands(stat(s, "segments")),
        bytes(stat(s, "bytes")),
        thousands(stat(s, "mutable_rows")),
        thousands(stat(s, "quarantined")),
    );
    if let Some(pk) = spec["primary_key"].as_array().filter(|a| !a.is_empty()) {
        let keys: Vec<String> = pk.iter().map(cell_text).collect();
        println!("primary key ({})", keys.join(", "));
    }
    let header: Vec<String> = ["column", "type", "index", "nullable"]
        .map(String::from)
        .to_vec();
    let mut t = new_table(&header);
    for c in spec["columns"].as_array().into_iter().flatten() {
        let index: Vec<String> = c["index"]
            .as_array()
            .map(|a| a.iter().map(cell_text).collect())
            .unwrap_or_default();
        t.add_row(vec![
            cell_text(&c["name"]),
            cell_text(&c["type"]),
            index.join(", "),
            // The time column never is (whatever the spec says).
            match c["nullable"].as_bool() == Some(false) || c["name"] == spec["time_column"] {
                true => "no".into(),
                false => "yes".into(),
            },
        ]);
    }
    println!("{t}");
    println!("ingestion: {}", ingestion_summary(&d));
    let Some(parts) = d["ingestion"]["partitions"].as_array() else {
        return Ok(());
    };
    if let Some(source) = d["ingestion"]["source"].as_str() {
        println!("source: {source}");
    }
    let header: Vec<String> = [
        "partition",
        "consumed offset",
        "checkpoint",
        "lag",
        "mutable rows",
        "events/s",
        "quarantined",
    ]
    .map(String::from)
    .to_vec();
    let mut t = new_table(&header);
    for p in parts {
        t.add_row(vec![
            cell_text(&p["partition"]),
            cell_text(&p["consumed_offset"]),
            cell_text(&p["checkpoint_offset"]),
            cell_text(&p["lag"]),
            cell_text(&p["mutable_rows"]),
            cell_text(&p["events_per_second"]),
            cell_text(&p["quarantined"]),
        ]);
    }
    println!("{t}");
    Ok(())
}

/// Progress of one upload: a bar on a terminal, a line every few seconds otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    name: String,
    total: u64,
    started: Instant,
    last_line: Instant,
}

impl Progress {
    fn new(name: &str, total: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {msg} ETA {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_prefix(name.to_string());
            bar
        });
        Progress {
            bar,
            name: name.to_string(),
            total,
            started: Instant::now(),
            last_line: Instant::now(),
        }
    }

    fn update(&mut self, sent: u64, lines: Option<u64>) {
        let elapsed = self.started.elapsed().as_secs_f64().max(1e-3);
        let rows = lines.map(|n| format!("{:.0} rows/s", n as f64 / elapsed));
        if let Some(bar) = &self.bar {
            bar.set_position(sent);
            if let Some(r) = rows {
                bar.set_message(r);
            }
            return;
        }
        if self.last_line.elapsed() < Duration::from_secs(2) {
            return;
        }
        self.last_line = Instant::now();
        let rate = sent as f64 / elapsed;
        let eta = match rate > 0.0 {
            true => format!("{:.0}s", (self.total.saturating_sub(sent)) as f64 / rate),
            false => "?".into(),
        };
        eprintln!(
            "{}: {}% ({} of {}, {}/s{}, ETA {eta})",
            self.name,
            (sent * 100).checked_div(self.total).unwrap_or(100),
            bytes(sent),
            bytes(self.total),
            bytes(rate as u64),
            rows.map(|r| format!(", {r}")).unwrap_or_default(),
        );
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// `basalt ingest`: uploads each file (all-or-nothing per file, as the server loads it),
/// showing progress and printing a summary per file; stops at the first failure.
pub async fn ingest(remote: &Remote, table: &str, files: &[PathBuf]) -> Result<(), String> {
    for f in files {
        ingest_file(remote, table, f).await?;
    }
    Ok(())
}

async fn ingest_file(remote: &Remote, table: &str, f: &Path) -> Result<(), String> {
    let shown = f.display().to_string();
    let format = Format::from_path(f).ok_or_else(|| {
        format!("{shown}: unknown extension; use .ndjson, .jsonl, .json, .csv or .parquet")
    })?;
    let file = tokio::fs::File::open(f)
        .await
        .map_err(|e| format!("cannot open {shown}: {e}"))?;
    // Ask for the table first: a server refusing the upload (no such table) answers before
    // reading the body and closes the connection, which a client still streaming sees as a
    // broken connection rather than the server's message.
    remote.get(&shown, &format!("/tables/{table}")).await?;
    let total = file
        .metadata()
        .await
        .map_err(|e| format!("cannot read {shown}: {e}"))?
        .len();
    let sent = Arc::new(AtomicU64::new(0));
    // Rows are counted as they leave for line formats (the server's count is the summary's).
    let lines = Arc::new(AtomicU64::new(0));
    let counts_lines = !matches!(format, Format::Parquet);
    let (s, l) = (sent.clone(), lines.clone());
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20).inspect(move |c| {
        if let Ok(chunk) = c {
            s.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            if counts_lines {
                let n = chunk.iter().filter(|&&b| b == b'\n').count() as u64;
                l.fetch_add(n, Ordering::Relaxed);
            }
        }
    });
    let started = Instant::now();
    let mut progress = Progress::new(&shown, total);
    let request = remote
        .request(reqwest::Method::POST, &format!("/tables/{table}/ingest"))
        .header("content-type", format.content_type())
        .body(reqwest::Body::wrap_stream(stream));
    let answer = remote.json(&shown, request);
    tokio::pin!(answer);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let result = loop {
        tokio::select! {
            r = &mut answer => break r,
            _ = tick.tick() => progress.update(
                sent.load(Ordering::Relaxed),
                counts_lines.then(|| lines.load(Ordering::Relaxed)),
            ),
        }
    };
    progress.finish();
    let body = result?;
    let rows = body["rows"].as_u64().unwrap_or(0);
    let secs = started.elapsed().as_secs_f64().max(1e-3);
    println!(
        "{shown}: {} rows, {} in {secs:.1} s ({} rows/s, {}/s)",
        thousands(rows),
        bytes(total),
        thousands((rows as f64 / secs) as u64),
        bytes((total as f64 / secs) as u64),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_cells_render_for_people() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(cell_text(&Value::Null), "");
        assert_eq!(cell_text(&serde_json::json!("ios")), "ios");
        assert_eq!(cell_text(&serde_json::json!(1.5)), "1.5");
        assert!(Remote::new("127.0.0.1:8099", None).is_err());
        assert!(Remote::new("http://127.0.0.1:8099/", None).is_ok());
    }
}
