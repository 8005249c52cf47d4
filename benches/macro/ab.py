#!/usr/bin/env python3
"""A/B check of two Basalt builds on the macro query set: both servers load the same
generated events, then each query runs alternately on A and B for many rounds, so drift of the
machine hits both alike. Prints per query the median of each build and B/A, and the geometric
mean of B/A (1.00 = no change; the hardening target is <= 1.03).

Usage: python3 benches/macro/ab.py --a OLD/basalt --b NEW/basalt --rows 10000000 [--rounds 30]
           [--keep-alive] [--per-round 20]

`--keep-alive` sends every query of a build over one connection (as a dashboard's client does)
instead of one connection per query; `--per-round N` runs a query N times in a row on each
build per round when its warm-up took under 20 ms (sub-millisecond queries need many samples).
"""
from http.client import HTTPConnection
import argparse, json, math, os, statistics, subprocess, sys, tempfile, time, urllib.request

sys.path.insert(0, os.path.dirname(__file__))
from run import QUERIES, DIALECT, http  # noqa: E402


def start(binary, work, name, port, pg_port):
    srv = subprocess.Popen([binary, "standalone", "--data-dir", os.path.join(work, name),
                            "--http-addr", f"127.0.0.1:{port}", "--pg-addr", f"127.0.0.1:{pg_port}"],
                           stderr=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "warn"})
    base = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            http(base + "/health")
            return srv, base
        except Exception:
            time.sleep(0.2)
    raise RuntimeError(f"{binary} did not start")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--a", required=True)
    ap.add_argument("--b", required=True)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--keep-alive", action="store_true")
    ap.add_argument("--per-round", type=int, default=1)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="basalt-ab-")
    pq = os.path.join(work, "events.parquet")
    subprocess.run([a.b, "gen-events", "--rows", str(a.rows), "--format", "parquet", "--out", pq], check=True)
    spec = subprocess.run([a.b, "gen-events", "--rows", "0", "--out", "/dev/null", "--print-spec"],
                          capture_output=True, text=True, check=True).stdout
    now_ms = int(time.time() * 1000)
    servers = []
    try:
        for name, binary, port in (("a", a.a, 18301), ("b", a.b, 18302)):
            srv, base = start(binary, work, name, port, port + 100)
            servers.append(srv)
            http(base + "/tables", spec.encode())
            t = time.time()
            with open(pq, "rb") as f:
                http(base + "/tables/events/ingest", f.read(), "application/vnd.apache.parquet", timeout=3600)
            print(f"{name}: loaded in {time.time() - t:.1f}s ({binary})")
        bases = {"a": "http://127.0.0.1:18301", "b": "http://127.0.0.1:18302"}
        conns = {"a": HTTPConnection("127.0.0.1", 18301, timeout=600), "b": HTTPConnection("127.0.0.1", 18302, timeout=600)}
        now = f"to_timestamp_millis({now_ms})"
        ratios = []
        print(f"\n{'query':36} {'A ms':>8} {'B ms':>8} {'B/A':>6}")
        for name, q in QUERIES:
            sql = q.format(now=now, **DIALECT["basalt"])
            body = json.dumps({"sql": sql, "queryOptions": "useResultCache=false"}).encode()
            times = {"a": [], "b": []}
            t = time.perf_counter()
            for k in ("a", "b"):  # warm-up
                http(bases[k] + "/query/sql", body)
            repeat = a.per_round if (time.perf_counter() - t) * 500 < 20 else 1
            for r in range(a.rounds):
                order = ("a", "b") if r % 2 == 0 else ("b", "a")
                for k in order:
                    for _ in range(repeat):
                        t = time.perf_counter()
                        if a.keep_alive:
                            conns[k].request("POST", "/query/sql", body, {"content-type": "application/json"})
                            v = json.loads(conns[k].getresponse().read())
                        else:
                            v = http(bases[k] + "/query/sql", body)
                        times[k].append((time.perf_counter() - t) * 1000)
                        if v.get("exceptions"):
                            raise RuntimeError(f"{k}: {sql}: {v['exceptions']}")
            ma, mb = statistics.median(times["a"]), statistics.median(times["b"])
            ratios.append(mb / ma)
            print(f"{name:36} {ma:8.2f} {mb:8.2f} {mb / ma:6.3f}")
        g = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
        print(f"\ngeometric mean B/A: {g:.3f}  (rows={a.rows}, rounds={a.rounds}, per round {a.per_round}, "
              f"{'keep-alive' if a.keep_alive else 'a connection per query'}, median)")
    finally:
        for s in servers:
            s.terminate()


if __name__ == "__main__":
    main()
