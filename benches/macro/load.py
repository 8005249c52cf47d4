#!/usr/bin/env python3
"""Batch load A/B: each build's fresh server loads the same Parquet file of generated events
over HTTP (one request, as run.py's load), builds alternating, so drift of the machine hits
them alike. Prints per load the wall time, rows/s and the server's CPU seconds; optionally
checks that the builds wrote the same segment files (compared as a set: a segment's sequence
number follows build completion, which varies between runs). With `--peers`, each round also
loads the file into DuckDB (a table in a fresh database file) and chDB (a fresh MergeTree
ordered by ts), as run.py does, between the builds' loads, and the medians per engine close
the run: one load per run.py run is too few to tell engines apart on a noisy machine.

Usage: python3 benches/macro/load.py --basalt A/basalt [--basalt B/basalt] [--rows 10000000]
           [--rounds 2] [--parquet events.parquet] [--same-bytes] [--peers]
"""
import argparse, hashlib, json, os, shutil, statistics, subprocess, sys, tempfile, time
from http.client import HTTPConnection

sys.path.insert(0, os.path.dirname(__file__))
from run import http, start_basalt, wait_quiet  # noqa: E402


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(binary, spec, body, work, port):
    """One fresh server loads `body`: (seconds, rows, CPU seconds, segment file digests)."""
    data = os.path.join(work, "basalt")
    shutil.rmtree(data, ignore_errors=True)
    srv, base = start_basalt(binary, work, port)
    try:
        http(base + "/tables", spec)
        conn = HTTPConnection("127.0.0.1", port, timeout=3600)
        c0, t = cpu_seconds(srv.pid), time.time()
        conn.request("POST", "/tables/events/ingest", body, {"content-type": "application/vnd.apache.parquet"})
        r = conn.getresponse().read()
        secs, cpu = time.time() - t, cpu_seconds(srv.pid) - c0
        rows = int(json.loads(r)["rows"])
    finally:
        srv.terminate()
        srv.wait()
    digests = sorted(hashlib.md5(open(os.path.join(d, f), "rb").read()).hexdigest()
                     for d, _, fs in os.walk(data) for f in fs if f.endswith(".seg"))
    shutil.rmtree(data, ignore_errors=True)
    return secs, rows, cpu, digests


def load_peer(engine, pq, work):
    """`engine` ("duckdb" or "chdb") loads `pq` into fresh native storage, as run.py does:
    seconds, then waits for its background work (chDB's merges) to end."""
    store = os.path.join(work, engine)
    shutil.rmtree(store, ignore_errors=True)
    os.makedirs(store)
    t = time.time()
    if engine == "duckdb":
        import duckdb
        con = duckdb.connect(os.path.join(store, "duck.db"))
        con.execute(f"CREATE TABLE events AS SELECT * FROM read_parquet('{pq}')")
        secs = time.time() - t
        con.close()
    else:
        from chdb import session as chs
        sess = chs.Session(store)
        sess.query("CREATE TABLE events ENGINE = MergeTree ORDER BY ts AS SELECT * FROM file('%s', Parquet)" % pq)
        secs = time.time() - t
        wait_quiet([os.getpid()])
        sess.close()
    shutil.rmtree(store, ignore_errors=True)
    return secs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--basalt", action="append", required=True)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--parquet", help="an existing events file (else generated with the first build)")
    ap.add_argument("--port", type=int, default=18441)
    ap.add_argument("--same-bytes", action="store_true")
    ap.add_argument("--peers", action="store_true", help="also load into DuckDB and chDB each round")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="basalt-load-")
    try:
        pq = a.parquet
        if not pq:
            pq = os.path.join(work, "events.parquet")
            subprocess.run([a.basalt[0], "gen-events", "--rows", str(a.rows), "--format", "parquet", "--out", pq],
                           check=True, stdout=subprocess.DEVNULL)
        os.sync()
        spec = subprocess.run([a.basalt[0], "gen-events", "--rows", "0", "--out", "/dev/null", "--print-spec"],
                              capture_output=True, text=True, check=True).stdout.encode()
        body = open(pq, "rb").read()
        digests = {}
        times = {}
        for r in range(a.rounds):
            for i, b in enumerate(a.basalt):
                secs, rows, cpu, d = load(b, spec, body, work, a.port)
                digests.setdefault(b, d)
                times.setdefault(b, []).append(secs)
                print(f"round {r + 1} {b}: {rows} rows in {secs:.2f}s = {rows / secs:,.0f} rows/s, "
                      f"server CPU {cpu:.1f}s ({cpu / secs:.2f} cores)", flush=True)
                if a.peers and i == 0:
                    for engine in ("duckdb", "chdb"):
                        secs = load_peer(engine, pq, work)
                        times.setdefault(engine, []).append(secs)
                        print(f"round {r + 1} {engine}: loaded in {secs:.2f}s", flush=True)
        for name, ts in times.items():
            print(f"median {name}: {statistics.median(ts):.2f}s over {len(ts)} loads "
                  f"(min {min(ts):.2f}, max {max(ts):.2f})")
        if a.same_bytes and len(a.basalt) > 1:
            first = digests[a.basalt[0]]
            for b in a.basalt[1:]:
                print(f"{b}: {'the same' if digests[b] == first else 'OTHER'} {len(first)} segment files as {a.basalt[0]}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
