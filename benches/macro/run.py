#!/usr/bin/env python3
"""Macro benchmark: the same generated events in Basalt, DuckDB and ClickHouse (chDB), each in
its native storage, and the dashboard query set timed on all three in the same run.

Usage: python3 benches/macro/run.py --basalt target/debug/basalt --rows 10000000 [--runs 5]
Needs: pip install duckdb chdb. Prints per query the median latency of each engine and
Basalt's ratio to the fastest peer (ratio < 1 means Basalt is faster), the geometric mean,
ingest throughput, storage bytes and the server's RSS.
"""
import argparse, json, math, os, shutil, statistics, subprocess, sys, tempfile, time, urllib.request
from http.client import HTTPConnection

QUERIES = [
    ("count last 5 min", "SELECT count(*) FROM events WHERE ts >= {now} - INTERVAL '5 minutes'"),
    ("top event types last hour", "SELECT event_type, count(*) AS n FROM events WHERE ts >= {now} - INTERVAL '1 hour' GROUP BY event_type ORDER BY n DESC LIMIT 10"),
    ("per-minute revenue series", "SELECT date_trunc('minute', ts) AS m, count(*) AS n, sum(revenue) AS rev FROM events WHERE ts >= {now} - INTERVAL '1 hour' GROUP BY 1 ORDER BY 1"),
    ("p95 latency, two filters", "SELECT {p95} FROM events WHERE country = 'AB' AND device = 'mobile'"),
    ("approx distinct users by country", "SELECT country, {hll} AS users FROM events GROUP BY country ORDER BY users DESC LIMIT 10"),
    ("one user's latest events", "SELECT ts, event_type, url FROM events WHERE user_id = 'u12345' ORDER BY ts DESC LIMIT 20"),
    ("top urls, two filters", "SELECT url, count(*) AS n FROM events WHERE event_type = 'page_view' AND country = 'AC' GROUP BY url ORDER BY n DESC LIMIT 10"),
    ("substring LIKE", "SELECT count(*) FROM events WHERE url LIKE '%/p/77%'"),
    ("full-scan group by", "SELECT device, os, count(*) AS n, avg(latency_ms) AS lat FROM events GROUP BY device, os ORDER BY n DESC"),
    ("high-cardinality group by", "SELECT user_id, count(*) AS n FROM events GROUP BY user_id ORDER BY n DESC LIMIT 10"),
    ("rare three-filter combination", "SELECT count(*), sum(revenue) FROM events WHERE country = 'BD' AND device = 'tv' AND event_type = 'purchase'"),
]

DIALECT = {
    "basalt": {"p95": "PERCENTILETDIGEST(latency_ms, 95)", "hll": "DISTINCTCOUNTHLL(user_id)"},
    "duckdb": {"p95": "approx_quantile(latency_ms, 0.95)", "hll": "approx_count_distinct(user_id)"},
    "chdb": {"p95": "quantileTDigest(0.95)(latency_ms)", "hll": "uniq(user_id)"},
}


def http(url, body=None, ct="application/json", timeout=600):
    req = urllib.request.Request(url, data=body, headers={"content-type": ct}, method="POST" if body is not None else "GET")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_s(pid):
    """User + system CPU seconds of process `pid` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_quiet(pids, limit_s=60.0):
    """Waits until the processes `pids` together use under 5% of a core over a second (chDB
    merges the parts of a freshly loaded MergeTree in the background for several seconds,
    on the cores the next engine's queries run on); gives up after `limit_s`. Returns the
    seconds waited."""
    t = time.time()
    while time.time() - t < limit_s:
        before = sum(cpu_s(p) for p in pids)
        time.sleep(1.0)
        if sum(cpu_s(p) for p in pids) - before < 0.05:
            break
    return time.time() - t


def median_ms(fn, runs):
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def start_basalt(basalt, work, port):
    """A standalone server on a data dir under `work`, once it answers: (process, base URL)."""
    srv = subprocess.Popen([basalt, "standalone", "--data-dir", os.path.join(work, "basalt"), "--http-addr", f"127.0.0.1:{port}"],
                           stderr=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "warn"})
    base = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            http(base + "/health")
            break
        except Exception:
            time.sleep(0.2)
    return srv, base


def bench_args(port, runs=7):
    """The flags every benchmark script takes: the binary, the row count, runs per query, a port."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--basalt", default="target/debug/basalt")
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--runs", type=int, default=runs)
    ap.add_argument("--port", type=int, default=port)
    return ap.parse_args()


def load_table(base, spec, parquet):
    """Creates the table `spec` names and loads `parquet` into it over HTTP: (seconds, bytes)."""
    http(base + "/tables", json.dumps(spec).encode())
    t = time.time()
    with open(parquet, "rb") as f:
        http(base + f"/tables/{spec['name']}/ingest", f.read(), "application/vnd.apache.parquet", timeout=3600)
    secs = time.time() - t
    info = http(base + f"/tables/{spec['name']}")
    print(f"basalt {spec['name']}: loaded in {secs:.1f}s, {info['stats']['bytes']/1e6:.1f} MB, {info['stats']['segments']} segments")
    return secs, info["stats"]["bytes"]


def index_cost(what, plain, indexed, raw=None):
    """Prints what an index adds: bytes and load time of `indexed` over `plain` (each (s, bytes))."""
    (t0, b0), (t1, b1) = plain, indexed
    of_raw = f"{(b1-b0)/raw*100:.0f}% of the raw column's {raw/1e6:.0f} MB, " if raw else ""
    print(f"{what}: +{(b1-b0)/1e6:.1f} MB ({of_raw}{(b1-b0)/b0*100:.1f}% of the segments), load +{t1-t0:.1f}s ({(t1-t0)/t0*100:.0f}%)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--basalt", default="target/debug/basalt")
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--port", type=int, default=18199)
    ap.add_argument("--fresh-connections", action="store_true",
                    help="open a new HTTP connection per query (before 2026-12-05 the default); "
                         "otherwise one keep-alive connection, as a dashboard's client keeps")
    a = ap.parse_args()
    import duckdb, chdb
    from chdb import session as chs

    work = tempfile.mkdtemp(prefix="basalt-macro-")
    pq = os.path.join(work, "events.parquet")
    t = time.time()
    subprocess.run([a.basalt, "gen-events", "--rows", str(a.rows), "--format", "parquet", "--out", pq], check=True)
    print(f"generated {a.rows} events in {time.time()-t:.1f}s; parquet (zstd) {os.path.getsize(pq)/1e6:.1f} MB")
    # The file just written is still being flushed to disk; Basalt's load (the first) would
    # spool its body into a temporary file against that writeback, the peers' later loads not.
    os.sync()
    now_ms = int(time.time() * 1000)

    srv, base = start_basalt(a.basalt, work, a.port)
    try:
        spec = subprocess.run([a.basalt, "gen-events", "--rows", "0", "--out", "/dev/null", "--print-spec"], capture_output=True, text=True, check=True).stdout
        http(base + "/tables", spec.encode())
        t = time.time()
        with open(pq, "rb") as f:
            r = http(base + "/tables/events/ingest", f.read(), "application/vnd.apache.parquet", timeout=3600)
        basalt_ingest = time.time() - t
        info = http(base + "/tables/events")
        print(f"basalt: ingested {r['rows']} rows from Parquet in {basalt_ingest:.1f}s ({r['rows']/basalt_ingest:,.0f} rows/s); "
              f"segments {info['stats']['segments']}, {info['stats']['bytes']/1e6:.1f} MB ({info['stats']['bytes']/os.path.getsize(pq):.2f}x parquet); RSS {rss_kb(srv.pid)/1024:.0f} MB")

        dpath = os.path.join(work, "duck.db")
        con = duckdb.connect(dpath)
        t = time.time()
        con.execute(f"CREATE TABLE events AS SELECT * FROM read_parquet('{pq}')")
        print(f"duckdb: loaded in {time.time()-t:.1f}s")
        sess = chs.Session(os.path.join(work, "chdb"))
        t = time.time()
        sess.query("CREATE TABLE events ENGINE = MergeTree ORDER BY ts AS SELECT * FROM file('%s', Parquet)" % pq)
        print(f"chdb: loaded in {time.time()-t:.1f}s")
        print(f"waited {wait_quiet([os.getpid(), srv.pid]):.0f}s for background work (chDB's merges) to end")

        # One connection for every query, kept alive, as Grafana's and every HTTP client
        # library's (the peers are called in-process, with no connection at all).
        conn = HTTPConnection("127.0.0.1", a.port, timeout=600)
        now_lit = {"basalt": f"to_timestamp_millis({now_ms})", "duckdb": f"make_timestamp({now_ms * 1000})", "chdb": f"fromUnixTimestamp64Milli({now_ms})"}
        rows = []
        print(f"\n{'query':36} {'basalt ms':>10} {'duckdb ms':>10} {'chdb ms':>10} {'ratio':>7}")
        for name, q in QUERIES:
            res = {}
            for eng in ("basalt", "duckdb", "chdb"):
                sql = q.format(now=now_lit[eng], **DIALECT[eng])
                if eng == "chdb":
                    sql = sql.replace("date_trunc('minute', ts)", "toStartOfMinute(ts)").replace("INTERVAL '5 minutes'", "INTERVAL 5 MINUTE").replace("INTERVAL '1 hour'", "INTERVAL 1 HOUR")
                if eng == "basalt":
                    def run(sql=sql):
                        body = json.dumps({"sql": sql, "queryOptions": "useResultCache=false"}).encode()
                        if a.fresh_connections:
                            v = http(base + "/query/sql", body)
                        else:
                            conn.request("POST", "/query/sql", body, {"content-type": "application/json"})
                            v = json.loads(conn.getresponse().read())
                        if v.get("exceptions"):
                            raise RuntimeError(f"{sql}: {v['exceptions']}")
                elif eng == "duckdb":
                    def run(sql=sql):
                        con.execute(sql).fetchall()
                else:
                    def run(sql=sql):
                        sess.query(sql, "CSV")
                res[eng] = median_ms(run, a.runs)
            ratio = res["basalt"] / min(res["duckdb"], res["chdb"])
            rows.append(ratio)
            print(f"{name:36} {res['basalt']:10.1f} {res['duckdb']:10.1f} {res['chdb']:10.1f} {ratio:7.2f}")
        geo = math.exp(sum(math.log(r) for r in rows) / len(rows))
        print(f"\ngeometric mean of basalt / fastest peer: {geo:.2f}  (rows={a.rows}, runs={a.runs}, median)")
        print(f"basalt RSS after queries: {rss_kb(srv.pid)/1024:.0f} MB")
    finally:
        srv.terminate()
        srv.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
