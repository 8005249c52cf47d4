//! The `basalt` binary: one process, several roles. In: command-line arguments and an optional
//! TOML config. Out: a running server (`standalone`), or a one-shot tool (`ingest`,
//! `gen-events`, `quickstart`, `inspect`).

mod config;
mod huge_pages;
mod remote;
mod roles;

use std::path::{Path, PathBuf};

use basalt_broker::guard::Guard;
use basalt_broker::{app_state, pg, serve, HttpLimits};
use basalt_ingest::gen::{write_events, GenFormat, EVENTS_SPEC};
use basalt_ingest::{StoreConfig, TableStore};
use clap::{Parser, Subcommand, ValueEnum};

use crate::config::Config;

/// mimalloc instead of the system allocator, as DataFusion's own CLI does: glibc serves
/// buffers of 128 KiB and more (an 8,192-row DECIMAL column) from fresh mappings until its
/// threshold adapts, and page faults showed in TPC-H Q01's profiles. Measured gain at SF10
/// is small (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "basalt", version, about = "Basalt: a real-time columnar OLAP serving store", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Keep transparent huge pages as the system sets them; by default they are off for this
    /// process (zeroing fresh 2 MiB pages made loads 1.4x slower).
    #[arg(long, global = true)]
    transparent_huge_pages: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run every role (HTTP API, ingestion, query) in one process.
    Standalone(StandaloneArgs),
    /// Run a cluster server: load the segments placed on it and run plan fragments for
    /// brokers (Arrow Flight).
    Server(roles::ServerRoleArgs),
    /// Run a cluster broker: HTTP, PostgreSQL and the admin API; queries are scattered to
    /// the servers.
    Broker(roles::BrokerRoleArgs),
    /// Upload NDJSON, CSV or Parquet files to a table on a running server (all-or-nothing per
    /// file), with progress and a summary per file.
    Ingest {
        #[command(flatten)]
        server: ServerArgs,
        /// Table to load into.
        #[arg(long)]
        table: String,
        /// Files; the format comes from the extension (.ndjson/.jsonl/.json, .csv, .parquet).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Run a SQL query on a running server and print the result.
    Sql {
        #[command(flatten)]
        server: ServerArgs,
        /// Output: an aligned table, CSV or JSON.
        #[arg(long, value_enum, default_value = "table")]
        format: remote::OutputFormat,
        /// The query; read from standard input when absent or `-`.
        query: Option<String>,
    },
    /// List the tables of a running server with their size and ingestion state.
    Tables {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Show one table: columns, statistics, ingestion per partition.
    Table {
        #[command(flatten)]
        server: ServerArgs,
        /// The table's name.
        name: String,
    },
    /// Print a shell completion script (e.g. `basalt completions bash > /etc/bash_completion.d/basalt`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write deterministic generated product events (the `events` table's schema).
    GenEvents {
        /// Number of events.
        #[arg(long)]
        rows: u64,
        #[arg(long, value_enum, default_value = "ndjson")]
        format: GenFormatArg,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
        /// Random seed; the same seed gives the same events.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Average milliseconds between events; the last event is near now.
        #[arg(long, default_value_t = 1.0)]
        step_ms: f64,
        /// Print the events table spec instead of generating.
        #[arg(long)]
        print_spec: bool,
    },
    /// Print where a segment file's bytes go, per column and structure.
    Inspect {
        /// A segment file (`.seg`).
        file: PathBuf,
    },
    /// Start a standalone server on a temporary directory, create and load the `events` table,
    /// run a few queries and keep serving.
    Quickstart {
        /// Events to generate and load.
        #[arg(long, default_value_t = 200_000)]
        rows: u64,
        #[arg(long, default_value = "127.0.0.1:8099")]
        http_addr: String,
        /// PostgreSQL wire protocol listen address.
        #[arg(long, default_value = "127.0.0.1:5433")]
        pg_addr: String,
        /// Exit after printing the results instead of serving.
        #[arg(long)]
        exit: bool,
    },
}

/// Where the client commands find the server.
#[derive(clap::Args)]
struct ServerArgs {
    /// Base URL of the server's HTTP API.
    #[arg(long, env = "BASALT_SERVER", default_value = "http://127.0.0.1:8099")]
    server: String,
    /// Token for a server with `[auth] tokens` (sent as a Bearer token).
    #[arg(long, env = "BASALT_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl ServerArgs {
    fn remote(self) -> Result<remote::Remote, String> {
        remote::Remote::new(&self.server, self.token)
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum GenFormatArg {
    Ndjson,
    Parquet,
}

#[derive(clap::Args)]
struct StandaloneArgs {
    /// Directory for local state (segments cache, default deep store).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// HTTP listen address (default 127.0.0.1:8099).
    #[arg(long)]
    http_addr: Option<String>,
    /// PostgreSQL wire protocol listen address (default 127.0.0.1:5433).
    #[arg(long)]
    pg_addr: Option<String>,
    /// Deep store URL (file:///path or s3://bucket/prefix); default <data-dir>/deepstore.
    #[arg(long)]
    deep_store: Option<String>,
    /// TOML config file; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Listen on a non-loopback address without `[auth] tokens` (anyone who reaches the
    /// ports can then create, drop and read every table).
    #[arg(long)]
    allow_unauthenticated: bool,
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn main() {
    let cli = Cli::parse();
    init_tracing();
    huge_pages::set_transparent_huge_pages(cli.transparent_huge_pages);
    // Planning and optimizing recurse over the statement's tree; the statement guards bound
    // its depth, and a roomier stack than tokio's 2 MiB keeps that bound generous.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(16 << 20)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = rt.block_on(run(cli));
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Standalone(a) => standalone(a).await,
        Command::Server(a) => roles::server(a).await,
        Command::Broker(a) => broker(a).await,
        Command::Ingest {
            server,
            table,
            files,
        } => remote::ingest(&server.remote()?, &table, &files).await,
        Command::Sql {
            server,
            format,
            query,
        } => {
            let query = match query.filter(|q| q != "-") {
                Some(q) => q,
                None => {
                    let mut q = String::new();
                    std::io::Read::read_to_string(&mut std::io::stdin(), &mut q)
                        .map_err(|e| format!("reading the query from standard input: {e}"))?;
                    q
                }
            };
            if query.trim().is_empty() {
                return Err("no query: pass it as an argument or on standard input".into());
            }
            remote::sql(&server.remote()?, &query, format).await
        }
        Command::Tables { server } => remote::tables(&server.remote()?).await,
        Command::Table { server, name } => remote::table(&server.remote()?, &name).await,
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "basalt", &mut std::io::stdout());
            Ok(())
        }
        Command::GenEvents {
            rows,
            format,
            out,
            seed,
            step_ms,
            print_spec,
        } => {
            if print_spec {
                println!("{EVENTS_SPEC}");
                return Ok(());
            }
            gen_events(rows, format, &out, seed, step_ms)
        }
        Command::Quickstart {
            rows,
            http_addr,
            pg_addr,
            exit,
        } => quickstart(rows, &http_addr, &pg_addr, exit).await,
        Command::Inspect { file } => inspect(&file),
    }
}

fn inspect(file: &Path) -> Result<(), String> {
    let bytes = std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let footer = basalt_segment::layout::read_footer(&bytes)
        .map_err(|e| format!("{}: {e}", file.display()))?;
    let rows = footer.row_count.max(1) as f64;
    println!(
        "{}: format v{}, {} rows, {} bytes ({:.2} bytes/row)",
        file.display(),
        footer.format_version,
        footer.row_count,
        bytes.len(),
        bytes.len() as f64 / rows
    );
    println!(
        "{:<16} {:<10} {:>9} {:>11} {:>11} {:>9} {:>11} {:>9} {:>9} {:>7} {:>9}",
        "column",
        "encoding",
        "distinct",
        "forward",
        "dictionary",
        "nulls",
        "inverted",
        "range",
        "sorted",
        "bloom",
        "bytes/row"
    );
    for c in basalt_segment::inspect::column_bytes(&footer) {
        println!(
            "{:<16} {:<10} {:>9} {:>11} {:>11} {:>9} {:>11} {:>9} {:>9} {:>7} {:>9.2}",
            c.column,
            c.encoding,
            c.cardinality.map(|n| n.to_string()).unwrap_or_default(),
            c.forward,
            c.dictionary,
            c.nulls,
            c.inverted,
            c.range,
            c.sorted,
            c.bloom,
            c.total() as f64 / rows
        );
    }
    Ok(())
}

fn gen_events(
    rows: u64,
    format: GenFormatArg,
    out: &Path,
    seed: u64,
    step_ms: f64,
) -> Result<(), String> {
    let f =
        std::fs::File::create(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let fmt = match format {
        GenFormatArg::Ndjson => GenFormat::NdJson,
        GenFormatArg::Parquet => GenFormat::Parquet,
    };
    let now = now_ms();
    write_events(f, fmt, rows, seed, now, step_ms).map_err(|e| e.to_string())?;
    eprintln!("wrote {rows} events to {}", out.display());
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A running server: where it listens, and the task that ends when it stops.
struct Running {
    http: std::net::SocketAddr,
    pg: std::net::SocketAddr,
    handle: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn bind(addr: &str, what: &str) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} ({what}): {e}"))
}

/// A broker's membership in a cluster.
struct BrokerCluster {
    node: basalt_cluster::NodeConfig,
    token: String,
    sync_every: std::time::Duration,
    broadcast: basalt_broker::cluster::Broadcast,
}

async fn start_server(
    data_dir: PathBuf,
    deep_store: Option<String>,
    http_addr: &str,
    pg_addr: &str,
    cfg: &Config,
    cluster: Option<BrokerCluster>,
) -> Result<Running, String> {
    let placement: std::sync::Arc<dyn basalt_ingest::Placement> = match cluster {
        Some(_) => std::sync::Arc::new(basalt_broker::cluster::HoldsNothing),
        None => std::sync::Arc::new(basalt_ingest::Everything),
    };
    let store = TableStore::open(StoreConfig {
        data_dir: data_dir.clone(),
        deep_store,
        build: Default::default(),
        policy: cfg.tables.policy(&cfg.storage),
        ingest: cfg.ingest.limits(),
        consumer_lease: std::time::Duration::from_secs(cfg.ingest.consumer_lease_secs),
        placement,
    })
    .await
    .map_err(|e| format!("cannot open the table store in {}: {e}", data_dir.display()))?;
    let limits = HttpLimits {
        max_ingest_bytes: cfg.ingest.max_body_bytes,
        max_concurrent_ingests: cfg.ingest.max_concurrent,
        body_read_timeout: std::time::Duration::from_secs(cfg.ingest.body_read_timeout_secs),
        query: cfg.query.limits(),
        analyst: cfg.query.analyst_limits(),
        tier_interval: std::time::Duration::from_secs(cfg.tables.tier_interval_secs.max(1)),
    };
    let auth = cfg.auth.auth();
    let listener = bind(http_addr, "http").await?;
    let pg_listener = bind(pg_addr, "postgres").await?;
    let http = listener.local_addr().map_err(|e| e.to_string())?;
    let pg = pg_listener.local_addr().map_err(|e| e.to_string())?;
    check_exposure(
        &[http, pg],
        auth.enabled(),
        cfg.server.allow_unauthenticated,
    )?;
    let guard = Guard {
        allowed_hosts: cfg.server.allowed_hosts.clone(),
        allowed_origins: cfg.server.allowed_origins.clone(),
    };
    let engine = cfg.query.engine(&data_dir);
    let state = match cluster {
        None => app_state(store.clone(), limits, engine, auth, guard),
        Some(c) => {
            let mut node = c.node;
            node.http_addr = Some(http);
            node.pg_addr = Some(pg);
            let membership = std::sync::Arc::new(
                basalt_cluster::Membership::join(node)
                    .await
                    .map_err(|e| e.to_string())?,
            );
            let cluster =
                basalt_broker::cluster::Cluster::start(membership, c.token, c.broadcast).await;
            basalt_broker::cluster::start_sync(store.clone(), c.sync_every);
            basalt_broker::cluster_app_state(store.clone(), cluster, limits, engine, auth, guard)
        }
    };
    let pg_server = std::sync::Arc::new(pg::PgServer::new(
        &state,
        state.auth.clone(),
        cfg.pg.limits(),
    ));
    let pg_task = tokio::spawn(pg::serve(pg_listener, pg_server, state.clone(), async {
        let _ = tokio::signal::ctrl_c().await;
    }));
    let handle = tokio::spawn(async move {
        let served = serve(listener, state, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
        pg_task.abort();
        // Stop consuming; unsealed rows are read again from the checkpoints next time.
        let _ = tokio::task::spawn_blocking(move || store.shutdown()).await;
        served
    });
    Ok(Running { http, pg, handle })
}

/// Refuses to listen beyond loopback without authentication unless the operator said so
/// (then says so loudly in the log).
fn check_exposure(
    addrs: &[std::net::SocketAddr],
    auth: bool,
    allow_unauthenticated: bool,
) -> Result<(), String> {
    let exposed: Vec<String> = addrs
        .iter()
        .filter(|a| !a.ip().is_loopback())
        .map(|a| a.to_string())
        .collect();
    if exposed.is_empty() || auth {
        return Ok(());
    }
    if !allow_unauthenticated {
        return Err(format!(
            "refusing to listen on {} without authentication: configure [auth] tokens, or pass \
             --allow-unauthenticated (allow_unauthenticated = true under [server]) to expose \
             every table to anyone who reaches these ports",
            exposed.join(", ")
        ));
    }
    tracing::warn!(addresses = %exposed.join(", "), "UNAUTHENTICATED: listening beyond loopback without [auth] tokens (--allow-unauthenticated); anyone who reaches these ports can create, drop, ingest and read every table");
    eprintln!(
        "WARNING: basalt is listening on {} WITHOUT AUTHENTICATION (--allow-unauthenticated)",
        exposed.join(", ")
    );
    Ok(())
}

async fn standalone(a: StandaloneArgs) -> Result<(), String> {
    let mut cfg = match &a.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    cfg.server.allow_unauthenticated |= a.allow_unauthenticated;
    let data_dir = a
        .data_dir
        .or(cfg.server.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from("basalt-data"));
    let http_addr = a
        .http_addr
        .or(cfg.server.http_addr.clone())
        .unwrap_or_else(|| "127.0.0.1:8099".into());
    let pg_addr = a
        .pg_addr
        .or(cfg.server.pg_addr.clone())
        .unwrap_or_else(|| "127.0.0.1:5433".into());
    let deep_store = a.deep_store.or(cfg.server.deep_store.clone());
    let r = start_server(data_dir, deep_store, &http_addr, &pg_addr, &cfg, None).await?;
    // One line, read by the end-to-end tests: "listening on http://H postgres://P".
    eprintln!(
        "basalt standalone listening on http://{} postgres://{}",
        r.http, r.pg
    );
    r.handle
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("http server failed: {e}"))
}

/// `basalt broker`: the front doors of a cluster; queries run on its servers.
async fn broker(a: roles::BrokerRoleArgs) -> Result<(), String> {
    let mut cfg = roles::load_config(&a.node.config)?;
    cfg.server.allow_unauthenticated |= a.allow_unauthenticated;
    let cluster = BrokerCluster {
        node: roles::node_config(&a.node, basalt_cluster::Role::Broker, &cfg),
        token: cfg.cluster.token()?,
        sync_every: std::time::Duration::from_millis(cfg.cluster.sync_interval_ms.max(50)),
        broadcast: basalt_broker::cluster::Broadcast {
            max_rows: cfg.cluster.broadcast_max_rows,
            max_bytes: cfg.cluster.broadcast_max_bytes,
        },
    };
    let r = start_server(
        a.node.data_dir.clone(),
        Some(a.node.deep_store.clone()),
        &a.http_addr,
        &a.pg_addr,
        &cfg,
        Some(cluster),
    )
    .await?;
    // One line, read by the end-to-end tests.
    eprintln!(
        "basalt broker {} listening on http://{} postgres://{}",
        a.node.node_id, r.http, r.pg
    );
    r.handle
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("http server failed: {e}"))
}

async fn quickstart(rows: u64, http_addr: &str, pg_addr: &str, exit: bool) -> Result<(), String> {
    let dir = tempfile::Builder::new()
        .prefix("basalt-quickstart-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let cfg = Config::default();
    let running = start_server(
        dir.path().join("data"),
        None,
        http_addr,
        pg_addr,
        &cfg,
        None,
    )
    .await?;
    let base = format!("http://{}", running.http);
    let client = reqwest::Client::new();
    let post = |path: &str, body: String, ct: &str| {
        client
            .post(format!("{base}{path}"))
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let query = |sql: &str| {
        let body = serde_json::json!({ "sql": sql }).to_string();
        let r = post("/query/sql", body, "application/json");
        async move {
            r.await
                .map_err(|e| e.to_string())?
                .json::<serde_json::Value>()
                .await
                .map_err(|e| e.to_string())
        }
    };
    let r = post("/tables", EVENTS_SPEC.to_string(), "application/json")
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "created table events: {}",
        r.text().await.unwrap_or_default()
    );
    let file = dir.path().join("events.parquet");
    gen_events(rows, GenFormatArg::Parquet, &file, 42, 1.0)?;
    remote::ingest(&remote::Remote::new(&base, None)?, "events", &[file]).await?;
    let queries = [
        "SELECT count(*) AS events FROM events",
        "SELECT event_type, count(*) AS n FROM events WHERE ts > now() - INTERVAL '1 hour' GROUP BY event_type ORDER BY n DESC LIMIT 5",
        "SELECT country, DISTINCTCOUNTHLL(user_id) AS users FROM events GROUP BY country ORDER BY users DESC LIMIT 5",
        "SELECT device, PERCENTILETDIGEST(latency_ms, 95) AS p95 FROM events WHERE country = 'AA' GROUP BY device ORDER BY p95 DESC",
        "SELECT DATETRUNC('MINUTE', ts) AS minute, sum(revenue) AS revenue FROM events GROUP BY 1 ORDER BY 1 DESC LIMIT 3",
    ];
    for sql in queries {
        let v = query(sql).await?;
        println!("\n{sql}");
        if let Some(ex) = v["exceptions"].as_array().filter(|e| !e.is_empty()) {
            println!("  error: {}", ex[0]["message"]);
            continue;
        }
        println!("  {}", v["resultTable"]["dataSchema"]["columnNames"]);
        for row in v["resultTable"]["rows"].as_array().into_iter().flatten() {
            println!("  {row}");
        }
        println!(
            "  ({} ms, {} docs scanned)",
            v["timeUsedMs"], v["numDocsScanned"]
        );
    }
    // The real-time path: a table fed by the built-in generator source goes through the same
    // decode, mutable segment, seal and checkpoint path as a Kafka topic.
    let mut live: serde_json::Value =
        serde_json::from_str(EVENTS_SPEC).map_err(|e| e.to_string())?;
    live["name"] = "live_events".into();
    live["source"] = serde_json::json!({"generator": {
        "events_per_second": 2000, "partitions": 2, "malformed_ratio": 0.001}});
    live["segment"] = serde_json::json!({"max_rows": 1_000_000, "max_age": "30s"});
    let r = post("/tables", live.to_string(), "application/json")
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "\ncreated real-time table live_events (generator source, 2000 events/s): {}",
        r.text().await.unwrap_or_default()
    );
    for _ in 0..3 {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let sql = "SELECT count(*) AS events, max(ts) AS newest FROM live_events";
        println!("  {sql}: {}", query(sql).await?["resultTable"]["rows"]);
    }
    let sql = r#"SELECT count(*) AS quarantined FROM "live_events$quarantine""#;
    println!("  {sql}: {}", query(sql).await?["resultTable"]["rows"]);
    println!("  ingestion status: curl -s {base}/tables/live_events/ingestion");

    println!("\nBasalt is serving on {base}");
    println!("  web console:  {base}/");
    println!(
        "  psql:         psql -h {} -p {} -U basalt basalt -c 'SELECT count(*) FROM events'",
        running.pg.ip(),
        running.pg.port()
    );
    println!("  curl -s {base}/query/sql -H 'content-type: application/json' -d '{{\"sql\":\"SELECT count(*) FROM events\"}}'");
    if exit {
        return Ok(());
    }
    println!("Press Ctrl-C to stop.");
    running
        .handle
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}
