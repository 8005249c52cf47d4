#!/usr/bin/env python3
"""How soon a query past its deadline stops: for each query shape, run it with
timeoutMs=DEADLINE many times and measure (1) when the answer (error 250) arrives after the
deadline and (2) when the server's CPU use stops after the deadline (sampling
/proc/<pid>/stat every 5 ms until two samples in a row show no CPU spent). Prints p50, p95
and max of both per shape. DuckDB and ClickHouse have no comparable server-side stop to
measure in-process, so this reports Basalt alone.

Usage: python3 benches/stop_tail.py --basalt target/release/basalt [--rows 2000000]
       [--runs 20] [--deadline-ms 300]
"""
import argparse, json, os, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "macro"))
from run import http  # noqa: E402

TICK_S = 1 / os.sysconf("SC_CLK_TCK")

SHAPES = [
    ("scan and count distinct (generate_series)",
     "SELECT count(DISTINCT v) FROM generate_series(1, 500000000) AS g(v)"),
    ("four-key group by and sort over events",
     "SELECT user_id, session_id, url, event_id, count(*) FROM events GROUP BY 1, 2, 3, 4 ORDER BY 5 DESC"),
    ("self-join of events (hash build)",
     "SELECT a.user_id, count(*) FROM events a JOIN events b ON a.session_id = b.session_id "
     "GROUP BY 1 ORDER BY 2 DESC"),
]


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def cpu_stop_after(pid, deadline_at):
    """Seconds after `deadline_at` (perf_counter) at which the process stopped using CPU."""
    last, last_change = cpu_ticks(pid), time.perf_counter()
    quiet = 0
    while quiet < 2 and time.perf_counter() - deadline_at < 30:
        time.sleep(0.005)
        now = cpu_ticks(pid)
        if now != last:
            last, last_change, quiet = now, time.perf_counter(), 0
        else:
            quiet += 1
    return max(0.0, last_change - deadline_at)


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--basalt", required=True)
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--deadline-ms", type=int, default=300)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="basalt-stop-")
    pq = os.path.join(work, "events.parquet")
    subprocess.run([a.basalt, "gen-events", "--rows", str(a.rows), "--format", "parquet", "--out", pq],
                   check=True)
    spec = subprocess.run([a.basalt, "gen-events", "--rows", "0", "--out", "/dev/null", "--print-spec"],
                          capture_output=True, text=True, check=True).stdout
    port = 18411
    srv = subprocess.Popen([a.basalt, "standalone", "--data-dir", os.path.join(work, "data"),
                            "--http-addr", f"127.0.0.1:{port}", "--pg-addr", f"127.0.0.1:{port + 1}"],
                           stderr=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "warn"})
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                http(base + "/health")
                break
            except Exception:
                time.sleep(0.2)
        http(base + "/tables", spec.encode())
        with open(pq, "rb") as f:
            http(base + "/tables/events/ingest", f.read(), "application/vnd.apache.parquet", timeout=3600)
        print(f"{a.rows} events, deadline {a.deadline_ms} ms, {a.runs} runs per shape\n")
        print(f"{'shape':44} {'answer after deadline ms (p50/p95/max)':>40} {'CPU stops after deadline ms (p50/p95/max)':>44} {'timed out':>9}")
        for name, q in SHAPES:
            answers, stops, timed_out = [], [], 0
            body = json.dumps({"sql": q, "queryOptions": f"timeoutMs={a.deadline_ms};useResultCache=false"}).encode()
            for _ in range(a.runs):
                time.sleep(0.3)
                t0 = time.perf_counter()
                v = http(base + "/query/sql", body)
                answered = time.perf_counter()
                deadline_at = t0 + a.deadline_ms / 1000
                if not (v.get("exceptions") and v["exceptions"][0].get("errorCode") == 250):
                    continue
                timed_out += 1
                answers.append((answered - deadline_at) * 1000)
                stops.append(cpu_stop_after(srv.pid, deadline_at) * 1000)
            if not answers:
                print(f"{name:44} finished within the deadline every time")
                continue
            fmt = lambda xs: f"{pct(xs, 50):.0f} / {pct(xs, 95):.0f} / {max(xs):.0f}"
            print(f"{name:44} {fmt(answers):>40} {fmt(stops):>44} {timed_out:>9}")
        print(f"\n(CPU sampled every 5 ms from /proc; a clock tick is {TICK_S * 1000:.0f} ms, so stop times are "
              f"at that resolution)")
    finally:
        srv.terminate()


if __name__ == "__main__":
    main()
