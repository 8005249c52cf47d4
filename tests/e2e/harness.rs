//! Starts and stops `basalt standalone` on a free port with its own data directory.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Server {
    child: Child,
    pub base: String,
    /// The PostgreSQL protocol address, `host:port`.
    #[allow(dead_code)]
    pub pg: String,
}

impl Server {
    /// Starts a server on `data_dir` with optional extra TOML config.
    pub fn start(data_dir: &Path, config: Option<&str>) -> Server {
        Server::start_with(data_dir, config, &[])
    }

    /// Starts a server with extra TOML config and environment variables.
    pub fn start_with(data_dir: &Path, config: Option<&str>, env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_basalt"));
        cmd.envs(env.iter().copied());
        cmd.arg("standalone")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--http-addr")
            .arg("127.0.0.1:0")
            .arg("--pg-addr")
            .arg("127.0.0.1:0")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(c) = config {
            let p = data_dir.with_extension("toml");
            std::fs::write(&p, c).unwrap();
            cmd.arg("--config").arg(&p);
        }
        let (child, line) = spawn_until_listening(cmd);
        Server::from_listening(child, &line)
    }

    /// A started process that reported "listening on http://H postgres://P".
    pub fn from_listening(child: Child, line: &str) -> Server {
        // "http://H postgres://P"
        let (base, pg) = line
            .split_once(" postgres://")
            .unwrap_or_else(|| panic!("unexpected listening line: {line}"));
        Server {
            child,
            base: base.to_string(),
            pg: pg.to_string(),
        }
    }

    /// Whether the process has exited (a failpoint aborted it), without waiting.
    #[allow(dead_code)]
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The server's process id (the real-time benchmark reads its RSS).
    #[allow(dead_code)]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns `cmd` (its stderr piped) and waits for its "... listening on <rest>" line;
/// returns the child and `<rest>`. Its other stderr lines are shown prefixed.
pub fn spawn_until_listening(mut cmd: Command) -> (Child, String) {
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start basalt");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent {
                if let Some(addr) = line.split("listening on ").nth(1) {
                    let _ = tx.send(addr.trim().to_string());
                    sent = true;
                    continue;
                }
            }
            eprintln!("[basalt] {line}");
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("basalt did not report its address within 60 s");
    (child, line)
}

/// A path in the checkout the tests run from: `cargo test` sets CARGO_MANIFEST_DIR when it
/// runs them (a test binary reused from another checkout has that one's path built in).
pub fn repo_path(rel: &str) -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
        .join(rel)
}

/// Asserts a finished child process succeeded (showing its output if not); its stdout.
pub fn succeeded(out: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Writes `rows` generated events ending now, one every `step_ms`, to
/// `<dir>/events.parquet` (`basalt gen-events`).
pub fn gen_events_parquet(dir: &Path, rows: u64, step_ms: u64) -> std::path::PathBuf {
    let file = dir.join("events.parquet");
    let ok = Command::new(env!("CARGO_BIN_EXE_basalt"))
        .args([
            "gen-events",
            "--rows",
            &rows.to_string(),
            "--format",
            "parquet",
        ])
        .args(["--step-ms", &step_ms.to_string()])
        .arg("--out")
        .arg(&file)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    file
}

/// Creates a table from a JSON `spec`; it must answer 201. Returns the answer.
pub async fn create_table(c: &reqwest::Client, s: &Server, spec: &str) -> serde_json::Value {
    let r = c
        .post(s.url("/tables"))
        .header("content-type", "application/json")
        .body(spec.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, 201, "{text}");
    serde_json::from_str(&text).unwrap()
}

/// Ingests NDJSON `rows` into `table` on `s`, which must accept them all.
pub async fn ingest_ndjson(c: &reqwest::Client, s: &Server, table: &str, rows: Vec<u8>) {
    let r = c
        .post(s.url(&format!("/tables/{table}/ingest")))
        .header("content-type", "application/x-ndjson")
        .body(rows)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
}

/// Sends a request and reads the JSON answer.
async fn json_of(req: reqwest::RequestBuilder) -> serde_json::Value {
    req.send().await.unwrap().json().await.unwrap()
}

pub async fn sql(client: &reqwest::Client, s: &Server, q: &str) -> serde_json::Value {
    sql_at(client, &s.base, q).await
}

/// [`sql`] against the server at `base` (e.g. from a task that does not own the server).
pub async fn sql_at(client: &reqwest::Client, base: &str, q: &str) -> serde_json::Value {
    json_of(
        client
            .post(format!("{base}/query/sql"))
            .json(&serde_json::json!({ "sql": q })),
    )
    .await
}

/// A PostgreSQL client on `s` (user and database `basalt`, no password), its connection
/// driven by a task of its own.
pub async fn pg_connect(s: &Server) -> tokio_postgres::Client {
    let (pg, conn) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=basalt dbname=basalt",
            s.pg.rsplit(':').next().unwrap()
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    pg
}

/// The single value of a one-row, one-column result.
pub async fn scalar(client: &reqwest::Client, s: &Server, q: &str) -> serde_json::Value {
    let v = sql(client, s, q).await;
    assert_eq!(v["exceptions"], serde_json::json!([]), "{q}: {v}");
    v["resultTable"]["rows"][0][0].clone()
}

/// The value of a service's environment variable (set by `tests/services/services.sh env`),
/// or `None` — the test then prints SKIPPED — unless `BASALT_REQUIRE_SERVICES` is set (as in
/// `.ci/run`), where a missing service fails the test.
pub fn service_env(var: &str, test: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) => Some(v),
        Err(_) if std::env::var("BASALT_REQUIRE_SERVICES").is_ok() => {
            panic!("BASALT_REQUIRE_SERVICES is set but {var} is not: start tests/services/services.sh and eval its env")
        }
        Err(_) => {
            eprintln!("SKIPPED {test}: no service ({var} unset; see DEVELOPERS.md)");
            None
        }
    }
}

/// Polls `f` until it returns `Some`, for at most `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn get_text(client: &reqwest::Client, s: &Server, path: &str) -> String {
    client
        .get(s.url(path))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

pub async fn get_json(client: &reqwest::Client, s: &Server, path: &str) -> serde_json::Value {
    json_of(client.get(s.url(path))).await
}

/// Drops a table and checks the server said yes.
pub async fn drop_table(client: &reqwest::Client, s: &Server, table: &str) {
    let r = client
        .delete(s.url(&format!("/tables/{table}")))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "drop {table}: {}", r.status());
}

/// Every file under `dir`.
pub fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(d) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    d.flat_map(|e| {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p)
        } else {
            vec![p]
        }
    })
    .collect()
}
