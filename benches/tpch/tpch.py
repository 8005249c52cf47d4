#!/usr/bin/env python3
"""TPC-H through Basalt's HTTP SQL endpoint, checked against DuckDB and timed against DuckDB
and ClickHouse (chDB) on the same Parquet data in the same run.

Data: DuckDB's `tpch` extension (`CALL dbgen(sf=...)`, PyPI `duckdb==1.5.5` with
`duckdb-extension-tpch==1.5.5`), written once per scale factor to Parquet under --work.
Columns keep TPC-H's types (DATE, DECIMAL(15,2)). Basalt gets one table per TPC-H table
(`segment.max_rows` 1,000,000, no indexes); tables with
a date get it as their time column, the others are dimension tables without one. The
22 queries are DuckDB's `tpch_queries()` text, unchanged.

  Check (exit 1 on any wrong answer; used by the e2e test `tpch::`):
    python3 benches/tpch/tpch.py --basalt target/debug/basalt --sf 0.1 --check
  Benchmark (per-query medians, geometric mean of Basalt over the fastest peer, load times):
    python3 benches/tpch/tpch.py --basalt target/release/basalt --sf 1 --bench --runs 3

Answers are compared row by row: numbers within a relative 1e-9 (both sides sum the same
DOUBLE values, in different orders), DECIMALs within one unit of their last digit,
timestamps and dates as ISO dates, strings exactly. Queries with ORDER BY keep their order; ties beyond the ORDER BY keys are
compared as multisets.
"""
import argparse, datetime, decimal, glob, json, math, os, shutil, statistics, subprocess, sys
import tempfile, time, urllib.error, urllib.request

TABLES = ["region", "nation", "supplier", "customer", "part", "partsupp", "orders", "lineitem"]
TIME_COLUMN = {"orders": "o_orderdate", "lineitem": "l_shipdate"}


def duckdb_with_tpch():
    import duckdb
    import duckdb_extension_tpch

    root = os.path.dirname(duckdb_extension_tpch.__file__)
    ext = glob.glob(os.path.join(root, "extensions", "*", "tpch.duckdb_extension"))
    if not ext:
        sys.exit(f"no tpch.duckdb_extension under {root}")
    con = duckdb.connect()
    con.execute(f"LOAD '{ext[0]}'")
    return con


def basalt_type(duck_type):
    t = duck_type.upper()
    if t in ("BIGINT", "HUGEINT", "UBIGINT"):
        return "LONG"
    if t in ("INTEGER", "SMALLINT", "TINYINT"):
        return "INT"
    if t.startswith("DECIMAL"):
        return t  # DECIMAL(15,2): exact, as TPC-H defines it
    if t in ("DOUBLE", "FLOAT", "REAL"):
        return "DOUBLE"
    if t == "DATE":
        return "DATE"
    if t == "TIMESTAMP":
        return "TIMESTAMP"
    if t == "VARCHAR":
        return "STRING"
    raise ValueError(f"no Basalt type for {duck_type}")


def generate(work, sf):
    """Writes <work>/sf<sf>/<table>.parquet with Basalt's types; returns the folder and the
    DuckDB connection holding the generated tables."""
    # "-typed": DATE and DECIMAL columns (older folders held TIMESTAMP and DOUBLE).
    folder = os.path.join(work, f"sf{sf}-typed")
    con = duckdb_with_tpch()
    done = os.path.join(folder, "done")
    if os.path.exists(done):
        for t in TABLES:
            con.execute(f"CREATE VIEW {t} AS SELECT * FROM read_parquet('{folder}/{t}.parquet')")
        return folder, con
    os.makedirs(folder, exist_ok=True)
    t0 = time.time()
    con.execute(f"CALL dbgen(sf={sf})")
    for t in TABLES:
        cols = con.execute(f"DESCRIBE {t}").fetchall()
        exprs = []
        for name, ty, *_ in cols:
            bt = basalt_type(ty)
            cast = {"LONG": "BIGINT", "INT": "INTEGER", "DOUBLE": "DOUBLE", "DATE": "DATE",
                    "TIMESTAMP": "TIMESTAMP", "STRING": "VARCHAR"}.get(bt, bt)
            exprs.append(f"CAST({name} AS {cast}) AS {name}")
        con.execute(f"COPY (SELECT {', '.join(exprs)} FROM {t}) TO '{folder}/{t}.parquet' "
                    f"(FORMAT parquet, COMPRESSION zstd)")
    # The reference answers come from the same converted files Basalt loads.
    for t in TABLES:
        con.execute(f"DROP TABLE {t}")
        con.execute(f"CREATE VIEW {t} AS SELECT * FROM read_parquet('{folder}/{t}.parquet')")
    open(done, "w").close()
    print(f"generated TPC-H sf={sf} in {time.time() - t0:.1f}s: {folder}", flush=True)
    return folder, con


def spec_of(con, folder, table, segment_rows=1000000):
    cols = con.execute(f"DESCRIBE SELECT * FROM read_parquet('{folder}/{table}.parquet')").fetchall()
    spec = {"name": table,
            "columns": [{"name": n, "type": basalt_type(ty)} for n, ty, *_ in cols],
            "segment": {"max_rows": segment_rows}}
    if table in TIME_COLUMN:
        spec["time_column"] = TIME_COLUMN[table]
    return spec


def http(url, body=None, ct="application/json", timeout=3600):
    req = urllib.request.Request(url, data=body, headers={"content-type": ct},
                                 method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"{url}: HTTP {e.code}: {e.read()[:2000].decode(errors='replace')}")


class Basalt:
    def __init__(self, binary, work, port, config=None, url=None):
        self.proc, self.data = None, None
        if url:  # a server someone else started (the e2e test)
            self.base = url.rstrip("/")
            return
        self.data = tempfile.mkdtemp(prefix="data-", dir=work)
        args = [binary, "standalone", "--data-dir", self.data,
                "--http-addr", f"127.0.0.1:{port}", "--pg-addr", f"127.0.0.1:{port + 1}"]
        if config:
            path = os.path.join(self.data, "basalt.toml")
            with open(path, "w") as f:
                f.write(config)
            args += ["--config", path]
        self.proc = subprocess.Popen(args, stderr=subprocess.DEVNULL,
                                     env={**os.environ, "RUST_LOG": "warn"})
        self.base = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                http(self.base + "/health")
                return
            except Exception:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{binary} exited with {self.proc.returncode}")
                time.sleep(0.1)
        raise RuntimeError(f"{binary} did not start")

    def load(self, con, folder, segment_rows):
        t0 = time.time()
        for t in TABLES:
            http(self.base + "/tables", json.dumps(spec_of(con, folder, t, segment_rows)).encode())
            with open(os.path.join(folder, f"{t}.parquet"), "rb") as f:
                http(self.base + f"/tables/{t}/ingest", f.read(), "application/vnd.apache.parquet")
        return time.time() - t0

    workload = "dashboard"

    def query(self, sql):
        opts = f"useResultCache=false;timeoutMs=600000;workload={self.workload}"
        body = json.dumps({"sql": sql, "queryOptions": opts})
        return http(self.base + "/query/sql", body.encode())

    def stop(self):
        if self.proc:
            self.proc.kill()
            self.proc.wait()
            shutil.rmtree(self.data, ignore_errors=True)


class Dec(float):
    """A DECIMAL answer of Basalt's (Pinot's BIG_DECIMAL, sent as text) and one unit of its
    last digit: DuckDB answers AVG of a DECIMAL and a DECIMAL division as DOUBLE, DataFusion
    as a DECIMAL truncated to its result scale (AVG: the column's scale + 4)."""

    def __new__(cls, text):
        d = cls.__base__.__new__(cls, float(text))
        frac = text.split(".", 1)[1] if "." in text else ""
        d.tol = 10.0 ** -len(frac)
        return d


def norm(v):
    if isinstance(v, Dec):
        return v
    if v is None:
        return None
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float, decimal.Decimal)):
        return float(v)
    if isinstance(v, (datetime.datetime, datetime.date)):
        return v.strftime("%Y-%m-%d")
    if isinstance(v, str):
        # Basalt answers timestamps as 'YYYY-MM-DD HH:MM:SS.fff' (Pinot's form).
        if len(v) >= 19 and v[4] == "-" and v[7] == "-" and v[10] == " ":
            return v[:10]
        return v
    return v


def rounded(x):
    if isinstance(x, float) and x != 0 and math.isfinite(x):
        return float(f"{x:.6g}")
    return x


def sort_key(row):
    return tuple((x is None, str(type(x)), rounded(x) if x is not None else 0) for x in row)


def same(a, b):
    """Rows equal, numbers within a relative 1e-9 (sums of DOUBLE in another order), and a
    DECIMAL within one unit of its last digit."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if isinstance(x, float) and isinstance(y, float):
            tol = max(getattr(x, "tol", 0), getattr(y, "tol", 0), 1e-9)
            if not math.isclose(x, y, rel_tol=1e-9, abs_tol=tol):
                return False
        elif x != y:
            return False
    return True


def order_keys(sql, names):
    """Output positions of the last ORDER BY's keys, or None when one is not an output column."""
    text = " ".join(sql.split()).rstrip(";")
    up = text.upper()
    i = up.rfind("ORDER BY")
    if i < 0:
        return []
    clause = text[i + len("ORDER BY"):]
    j = clause.upper().find(" LIMIT ")
    if j >= 0:
        clause = clause[:j]
    keys = []
    for part in clause.split(","):
        name = part.strip().split()[0].lower()
        if name not in names:
            return None
        keys.append(names.index(name))
    return keys


def compare(want, got, keys):
    """None when `got` is `want` up to rounding, in the order the ORDER BY `keys` fix (rows
    with equal keys in any order); else what differs."""
    if len(want) != len(got):
        return f"{len(got)} rows, want {len(want)}"
    w = [[norm(x) for x in r] for r in want]
    g = [[norm(x) for x in r] for r in got]
    if keys is None:
        keys = list(range(len(w[0]))) if w else []
    if keys:
        kw = [[r[k] for k in keys] for r in w]
        kg = [[r[k] for k in keys] for r in g]
        for i, (a, b) in enumerate(zip(kw, kg)):
            if not same(a, b):
                return f"row {i}: ORDER BY keys {b}, want {a}"
    sw, sg = sorted(w, key=sort_key), sorted(g, key=sort_key)
    for i, (a, b) in enumerate(zip(sw, sg)):
        if not same(a, b):
            return f"row {i} (sorted): got {b}, want {a}"
    return None


def queries(con, wanted):
    out = con.execute("SELECT query_nr, query FROM tpch_queries() ORDER BY 1").fetchall()
    return [(n, q) for n, q in out if not wanted or n in wanted]


def run_check(con, basalt, qs):
    failed = []
    for n, q in qs:
        cur = con.execute(q)
        names = [d[0].lower() for d in cur.description]
        want = cur.fetchall()
        t0 = time.perf_counter()
        try:
            v = basalt.query(q)
        except RuntimeError as e:
            failed.append((n, str(e)))
            print(f"Q{n:02d} FAILED: {e}", flush=True)
            continue
        ms = (time.perf_counter() - t0) * 1000
        if v.get("exceptions"):
            why = v["exceptions"][0].get("message", "")[:500]
        else:
            types = v["resultTable"]["dataSchema"]["columnDataTypes"]
            rows = [[Dec(x) if t == "BIG_DECIMAL" and isinstance(x, str) else x
                     for x, t in zip(r, types)] for r in v["resultTable"]["rows"]]
            why = compare(want, rows, order_keys(q, names))
        if why:
            failed.append((n, why))
            print(f"Q{n:02d} WRONG ({ms:.0f} ms): {why}", flush=True)
        else:
            print(f"Q{n:02d} ok ({len(want)} rows, {ms:.0f} ms)", flush=True)
    return failed


def median_ms(fn, runs):
    fn()
    xs = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        xs.append((time.perf_counter() - t) * 1000)
    return statistics.median(xs)


def run_bench(con, folder, basalt, qs, runs, load_s, peers=("duckdb", "chdb")):
    import duckdb

    t0 = time.time()
    duck = duckdb.connect(os.path.join(tempfile.mkdtemp(prefix="duck-", dir=folder), "tpch.db"))
    for t in TABLES:
        duck.execute(f"CREATE TABLE {t} AS SELECT * FROM read_parquet('{folder}/{t}.parquet')")
    duck_load = time.time() - t0
    t0 = time.time()
    ch = None
    if "chdb" in peers:
        from chdb import session as chs

        ch = chs.Session(tempfile.mkdtemp(prefix="chdb-", dir=folder))
        ch.query("CREATE DATABASE IF NOT EXISTS tpch")
    for t in TABLES if ch else []:
        ch.query(f"CREATE TABLE tpch.{t} ENGINE = MergeTree ORDER BY tuple() AS "
                 f"SELECT * FROM file('{folder}/{t}.parquet', Parquet)")
        # Merge the inserted parts now: background merges would otherwise run (and take
        # CPU from every engine) during the first queries; counted in chDB's load time.
        ch.query(f"OPTIMIZE TABLE tpch.{t} FINAL")
    ch_load = time.time() - t0
    print(f"load: basalt {load_s:.1f}s, duckdb {duck_load:.1f}s, chdb {ch_load:.1f}s")
    print(f"{'query':6} {'basalt':>9} {'duckdb':>9} {'chdb':>9} {'B/best':>7}")
    ratios = []
    for n, q in qs:
        b = median_ms(lambda: basalt.query(q), runs)
        d = median_ms(lambda: duck.execute(q).fetchall(), runs)
        try:
            c = chdb_time(ch, q, runs) if ch else float("nan")
        except Exception as e:  # a query ClickHouse's dialect does not run
            c = float("nan")
            print(f"  chdb Q{n}: {str(e)[:120]}")
        best = min(x for x in (d, c) if not math.isnan(x))
        ratios.append(b / best)
        cs = "-" if math.isnan(c) else f"{c:9.1f}"
        print(f"Q{n:02d}    {b:9.1f} {d:9.1f} {cs:>9} {b / best:7.2f}", flush=True)
    gm = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
    print(f"geometric mean of basalt / fastest peer: {gm:.2f}")


def chdb_time(ch, q, runs):
    ch.query("USE tpch")
    return median_ms(lambda: ch.query(q, "CSV"), runs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--basalt", help="the basalt binary to start")
    ap.add_argument("--url", help="a running Basalt server instead of --basalt")
    ap.add_argument("--sf", default="0.1")
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "basalt-tpch"))
    ap.add_argument("--port", type=int, default=18511)
    ap.add_argument("--queries", default="", help="comma-separated query numbers (default all)")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--bench", action="store_true")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--config", help="a basalt.toml for the server")
    ap.add_argument("--workload", default="analyst", choices=["analyst", "dashboard"],
                    help="the query class (analyst: a quarter of RAM per query, spilling)")
    ap.add_argument("--segment-rows", type=int, default=1000000,
                    help="segment.max_rows of every table (smaller: more segments, more partitions)")
    ap.add_argument("--peers", default="duckdb,chdb",
                    help="comma-separated peers to time (chDB's join orders take minutes at SF10)")
    ap.add_argument("--loaded", action="store_true",
                    help="with --url: the tables are loaded already (profiling a kept server)")
    a = ap.parse_args()
    if not (a.check or a.bench):
        a.check = True
    wanted = {int(x) for x in a.queries.split(",") if x}
    os.makedirs(a.work, exist_ok=True)
    folder, con = generate(a.work, a.sf)
    # lineitem.parquet at SF10 is 1.6 GB, above the default 1 GiB ingest body limit (the
    # server spools Parquet bodies to a temporary file, so a larger limit costs no memory).
    config = open(a.config).read() if a.config else "[ingest]\nmax_body_bytes = 8589934592\n"
    if not (a.basalt or a.url):
        sys.exit("give --basalt or --url")
    basalt = Basalt(a.basalt, a.work, a.port, config, a.url)
    basalt.workload = a.workload
    try:
        if a.loaded and a.url:
            load_s = float("nan")
        else:
            load_s = basalt.load(con, folder, a.segment_rows)
            print(f"basalt loaded sf={a.sf} in {load_s:.1f}s", flush=True)
        qs = queries(con, wanted)
        if a.check:
            failed = run_check(con, basalt, qs)
            print(f"{len(qs) - len(failed)} of {len(qs)} queries answer as DuckDB does")
            if failed:
                sys.exit(1)
        if a.bench:
            run_bench(con, folder, basalt, qs, a.runs, load_s, a.peers.split(","))
    finally:
        basalt.stop()


if __name__ == "__main__":
    main()
