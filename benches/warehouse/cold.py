#!/usr/bin/env python3
"""Warehouse tier benchmark: cold-range queries against DuckDB reading the same Iceberg table,
hot-range queries with and without a warehouse tier, tiering throughput, and the effect of a
tiering run on a real-time table's freshness.

1. Events over --days days ending now (gen-events), loaded into `events` (spec with a
   warehouse block, SQL catalog on SQLite, file:// warehouse, tier_after --tier-after) and into
   `plain` (the same spec without it); `POST /tables/events/tier` until nothing moves: rows/s
   and MB/s (Parquet written) of tiering.
2. Cold-range queries (the range ends a day below the boundary, so only the Iceberg table
   holds its rows) over HTTP (result cache off), and DuckDB 1.5.5 with its iceberg extension
   (`iceberg_scan` on the table's metadata file, 2 threads, the same process count as the
   machine) in the same run: median ms each and the ratio Basalt/DuckDB.
3. Hot-range queries (last day, at or after the boundary) on `events` and on `plain`: the ratio
   says what the warehouse tier costs a query that never reaches it.
4. With --freshness: a generator-fed real-time table (--rate events/s) that also holds
   --days of batch-loaded older events with a warehouse block; a reader polls
   `max(ts)` every 100 ms for 30 s without tiering and 30 s while a tiering pass moves the
   old segments; p50/p99 of now - max(ts) in each window.

Usage: BASALT_TIER_PYTHON=... python3 benches/warehouse/cold.py --basalt target/release/basalt
       --rows 10000000 [--days 30] [--tier-after 7d] [--runs 5] [--segment-rows 1000000]
       [--freshness --rate 20000] [--explain]
Needs: duckdb==1.5.5, duckdb-extension-iceberg==1.5.5, duckdb-extension-avro==1.5.5.
"""
import argparse, glob, json, os, shutil, statistics, subprocess, sys, tempfile, threading, time, urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "macro"))
from run import http, median_ms  # noqa: E402

DAY = 86_400_000

COLD = [
    ("count", "SELECT count(*) FROM {t} WHERE {range}"),
    ("sum with filter", "SELECT sum(revenue) FROM {t} WHERE {range} AND event_type = 'purchase'"),
    ("group by device", "SELECT device, count(*) AS n FROM {t} WHERE {range} GROUP BY device ORDER BY n DESC"),
    ("top countries", "SELECT country, count(*) AS n FROM {t} WHERE {range} GROUP BY country ORDER BY n DESC LIMIT 10"),
    ("approx distinct users", "SELECT {hll} FROM {t} WHERE {range}"),
    ("p95 latency", "SELECT {p95} FROM {t} WHERE {range} AND device = 'mobile'"),
    ("daily series", "SELECT date_trunc('day', ts) AS d, count(*) AS n, sum(revenue) AS rev FROM {t} WHERE {range} GROUP BY 1 ORDER BY 1"),
    ("one user's events", "SELECT ts, event_type, url FROM {t} WHERE {range} AND user_id = 'u12345' ORDER BY ts DESC LIMIT 20"),
    ("one day, two filters", "SELECT count(*), sum(revenue) FROM {t} WHERE {day} AND country = 'AB' AND device = 'tv'"),
]

HOT = [
    ("hot count", "SELECT count(*) FROM {t} WHERE {hot}"),
    ("hot top event types", "SELECT event_type, count(*) AS n FROM {t} WHERE {hot} GROUP BY event_type ORDER BY n DESC LIMIT 10"),
    ("hot per-minute series", "SELECT date_trunc('minute', ts) AS m, count(*) AS n FROM {t} WHERE {hot} GROUP BY 1 ORDER BY 1"),
    ("hot distinct users by country", "SELECT country, {hll} AS u FROM {t} WHERE {hot} GROUP BY country ORDER BY u DESC LIMIT 10"),
]

DIALECT = {
    "basalt": {"p95": "approx_percentile_cont(latency_ms, 0.95)", "hll": "approx_distinct(user_id)",
               "ts": lambda ms: f"to_timestamp_millis({ms})"},
    "duckdb": {"p95": "approx_quantile(latency_ms, 0.95)", "hll": "approx_count_distinct(user_id)",
               "ts": lambda ms: f"make_timestamp({ms * 1000})"},
}


def sql_for(eng, q, t, boundary, now):
    d = DIALECT[eng]
    ts = d["ts"]
    return q.format(
        t=t, p95=d["p95"], hll=d["hll"],
        range=f"ts < {ts(boundary - DAY)}",
        day=f"ts >= {ts(boundary - 4 * DAY)} AND ts < {ts(boundary - 3 * DAY)}",
        hot=f"ts >= {ts(now - DAY)}",
    )


def spec(name, work, tier_after, warehouse=True, source=None):
    s = json.loads(subprocess.run([ARGS.basalt, "gen-events", "--rows", "0", "--out", "/dev/null", "--print-spec"],
                                  capture_output=True, text=True, check=True).stdout)
    s["name"] = name
    s["segment"] = {"max_rows": ARGS.segment_rows}
    if warehouse:
        s["warehouse"] = {"iceberg": {"catalog": {"type": "sql", "uri": f"sqlite://{work}/iceberg.db",
                                                  "warehouse": f"file://{work}/warehouse"},
                                      "namespace": "bench", "table": name},
                          "tier_after": tier_after}
    if source:
        s["source"] = source
        s["segment"] = {"max_rows": ARGS.segment_rows, "max_age": "10s"}
    return json.dumps(s).encode()


def tier_all(base, table):
    moved = {"rows": 0, "segments": 0, "data_bytes": 0}
    t = time.time()
    while True:
        r = http(f"{base}/tables/{table}/tier", b"")
        if not r.get("moved"):
            break
        for k in moved:
            moved[k] += r[k]
    return moved, time.time() - t


def load_duck_iceberg(con):
    import duckdb_extension_avro, duckdb_extension_iceberg
    con.execute("SET autoinstall_known_extensions = false")
    for mod, name in [(duckdb_extension_avro, "avro"), (duckdb_extension_iceberg, "iceberg")]:
        root = os.path.dirname(mod.__file__)
        con.execute(f"LOAD '{glob.glob(os.path.join(root, 'extensions', '*', name + '.duckdb_extension'))[0]}'")


def start(work, port):
    cfg = os.path.join(work, "basalt.toml")
    with open(cfg, "w") as f:
        f.write(f'[storage]\nallowed_roots = ["file://{work}"]\n[tables]\ntier_interval_secs = 86400\n')
    srv = subprocess.Popen([ARGS.basalt, "standalone", "--data-dir", os.path.join(work, "data"), "--http-addr",
                            f"127.0.0.1:{port}", "--pg-addr", f"127.0.0.1:{port + 1}", "--config", cfg],
                           stderr=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "warn"})
    base = f"http://127.0.0.1:{port}"
    for _ in range(150):
        try:
            http(base + "/health")
            return srv, base
        except Exception:
            time.sleep(0.2)
    raise RuntimeError("basalt did not start")


def query(base, sql):
    v = http(base + "/query/sql", json.dumps({"sql": sql, "queryOptions": "useResultCache=false"}).encode())
    if v.get("exceptions"):
        raise RuntimeError(f"{sql}: {v['exceptions']}")
    return v


def main():
    import duckdb
    work = tempfile.mkdtemp(prefix="basalt-warehouse-")
    pq = os.path.join(work, "events.parquet")
    step = ARGS.days * DAY // ARGS.rows
    subprocess.run([ARGS.basalt, "gen-events", "--rows", str(ARGS.rows), "--format", "parquet",
                    "--step-ms", str(step), "--out", pq], check=True)
    now = int(time.time() * 1000)
    srv, base = start(work, ARGS.port)
    try:
        body = open(pq, "rb").read()
        for name, wh in (("events", True), ("plain", False)):
            http(base + "/tables", spec(name, work, ARGS.tier_after, wh))
            http(f"{base}/tables/{name}/ingest", body, "application/vnd.apache.parquet", timeout=3600)
        moved, secs = tier_all(base, "events")
        w = http(base + "/tables/events")["warehouse"]
        print(f"tiering: {moved['segments']} segments, {moved['rows']:,} rows in {secs:.1f}s: "
              f"{moved['rows']/secs:,.0f} rows/s, {moved['data_bytes']/secs/1e6:.1f} MB/s of Parquet "
              f"({moved['data_bytes']/1e6:.1f} MB, {w['data_files']} files)")
        boundary = w["boundary"]

        con = duckdb.connect()
        con.execute("SET threads = 2")
        con.execute("SET TimeZone = 'UTC'")
        load_duck_iceberg(con)
        meta = sorted(glob.glob(f"{work}/warehouse/bench/events/metadata/*.metadata.json"))[-1]
        con.execute(f"CREATE VIEW events AS SELECT * FROM iceberg_scan('{meta}')")

        print(f"\n{'cold-range query':28} {'basalt ms':>10} {'files':>6} {'duckdb ms':>10} {'ratio':>7}")
        ratios = []
        for name, q in COLD:
            b = sql_for("basalt", q, "events", boundary, now)
            d = sql_for("duckdb", q, "events", boundary, now)
            files = query(base, b)["numWarehouseFilesQueried"]
            bm = median_ms(lambda: query(base, b), ARGS.runs)
            dm = median_ms(lambda: con.execute(d).fetchall(), ARGS.runs)
            ratios.append(bm / dm)
            print(f"{name:28} {bm:10.1f} {files:6} {dm:10.1f} {bm/dm:7.2f}")
        print(f"{'geometric mean':28} {'':10} {'':6} {'':10} {statistics.geometric_mean(ratios):7.2f}")
        if ARGS.hold:
            print(f"holding {base} (pid {srv.pid}) for {ARGS.hold} s", flush=True)
            time.sleep(ARGS.hold)
        if ARGS.explain:
            for name, q in COLD:
                v = query(base, "EXPLAIN ANALYZE " + sql_for("basalt", q, "events", boundary, now))
                print(f"\n--- {name}")
                for row in v["resultTable"]["rows"]:
                    print(row[-1])

        print(f"\n{'hot-range query':28} {'tiered ms':>10} {'untiered ms':>12} {'ratio':>7}")
        for name, q in HOT:
            tq = sql_for("basalt", q, "events", boundary, now)
            pq_ = sql_for("basalt", q, "plain", boundary, now)
            assert query(base, tq)["numWarehouseFilesQueried"] == 0
            tm = median_ms(lambda: query(base, tq), ARGS.runs)
            um = median_ms(lambda: query(base, pq_), ARGS.runs)
            print(f"{name:28} {tm:10.1f} {um:12.1f} {tm/um:7.2f}")
        if ARGS.freshness:
            freshness(base, work, body)
    finally:
        srv.terminate()
        srv.wait()
        shutil.rmtree(work, ignore_errors=True)


def freshness(base, work, body):
    src = {"generator": {"events_per_second": ARGS.rate, "partitions": 2}}
    http(base + "/tables", spec("live", work, ARGS.tier_after, True, src))
    http(base + "/tables/live/ingest", body, "application/vnd.apache.parquet", timeout=3600)
    time.sleep(5)

    def window(seconds, during=None):
        lags, stop = [], time.time() + seconds
        t = threading.Thread(target=during) if during else None
        if t:
            t.start()
        while time.time() < stop:
            v = query(base, "SELECT CAST(max(ts) AS BIGINT) FROM live WHERE ts >= now() - INTERVAL '1' MINUTE")
            newest = v["resultTable"]["rows"][0][0]
            if isinstance(newest, (int, float)):
                lags.append(time.time() * 1000 - newest)
            time.sleep(0.1)
        if t:
            t.join()
        lags.sort()
        return lags[len(lags) // 2], lags[int(len(lags) * 0.99) - 1], len(lags)

    p50, p99, n = window(30)
    print(f"\nfreshness, no tiering: p50 {p50:.0f} ms, p99 {p99:.0f} ms ({n} reads)")
    result = {}

    def tiering():
        result["moved"], result["secs"] = tier_all(base, "live")

    p50, p99, n = window(30, tiering)
    m = result["moved"]
    print(f"freshness while tiering {m['rows']:,} rows ({m['rows']/result['secs']:,.0f} rows/s, "
          f"ingesting {ARGS.rate}/s): p50 {p50:.0f} ms, p99 {p99:.0f} ms ({n} reads)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--basalt", default="target/release/basalt")
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--tier-after", default="7d")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--segment-rows", type=int, default=1_000_000)
    ap.add_argument("--port", type=int, default=18299)
    ap.add_argument("--freshness", action="store_true")
    ap.add_argument("--explain", action="store_true", help="print EXPLAIN ANALYZE of each cold-range query")
    ap.add_argument("--hold", type=int, default=0, help="keep the server up this many seconds (profiling)")
    ap.add_argument("--rate", type=int, default=20000)
    ARGS = ap.parse_args()
    main()
