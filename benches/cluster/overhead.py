#!/usr/bin/env python3
"""Cluster benchmark: what the broker/server split costs, and how fast a cluster recovers.

1. Overhead: the same generated events in `basalt standalone` and in a cluster of one broker
   and one server (same binary, same deep store kind: a local directory), and the macro
   dashboard query set timed on both in the same run (result cache off). Prints per query the
   median latency of each and the cluster/standalone ratio, and their geometric mean.
2. Fan-out (--fanout 4,16,64): one broker and N servers, replication 1, the same events
   split into 2N segments; a few dashboard queries timed (median), and the CPU time per
   query the broker and the servers together spent (from /proc), for a capacity model.
3. Joins (--joins): star joins of the events with two small dimension tables (countries:
   country, region, pop; devices: device, class) in standalone, in a cluster of one broker
   and two servers sending the small sides to the servers (broadcast, the default), and in
   the same cluster with broadcast off (`broadcast_max_rows = 0`: both sides gathered on the
   broker, the join run there), and DuckDB over the same rows as the peer. Prints the median
   latency of each and the broker's CPU time per query.
4. Failover (--failover): three servers and a broker, replication 2; a reader queries
   count(*) in a loop while one server is killed with SIGKILL. Prints the answers' worst
   latency around the kill, whether any was incomplete or wrong, and the time until every
   segment is on two live servers again. Then a generator-fed real-time table (4 partitions,
   20k events/s, replication 2: two consumers per partition) on 3 servers: SIGKILL of
   partition 0's owner while a reader loops; the answers flagged partial and any count that
   went backwards (both should be none), the worst answer latency after the kill, and the
   time until every partition has two live consumers again.

Usage: python3 benches/cluster/overhead.py --basalt target/release/basalt --rows 10000000 [--runs 5] [--failover]
       [--fanout 4,16,64 --fanout-rows 2000000] [--joins] [--skip-overhead]
"""
import argparse, json, math, os, shutil, signal, socket, statistics, subprocess, sys, tempfile, time, urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "macro"))
from run import QUERIES, DIALECT, http, median_ms  # noqa: E402

TOKEN = "bench-cluster-token-0123456789"


def free_port():
    while True:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            u.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            u.close()


def wait_http(url, timeout=60):
    t = time.time()
    while time.time() - t < timeout:
        try:
            return http(url)
        except Exception:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer")


class Cluster:
    def __init__(self, basalt, work, servers, broker_config=None):
        self.basalt, self.work = basalt, work
        self.deep = "file://" + os.path.join(work, "deep")
        os.makedirs(os.path.join(work, "deep"), exist_ok=True)
        self.seed = f"127.0.0.1:{free_port()}"
        self.env = {**os.environ, "RUST_LOG": "warn", "BASALT_CLUSTER_TOKEN": TOKEN}
        self.procs, self.health = {}, {}
        http_port = free_port()
        self.base = f"http://127.0.0.1:{http_port}"
        self.procs["b1"] = subprocess.Popen([basalt, "broker", "--node-id", "b1", "--data-dir", os.path.join(work, "b1"),
                                             "--deep-store", self.deep, "--http-addr", f"127.0.0.1:{http_port}",
                                             "--pg-addr", f"127.0.0.1:{free_port()}", "--gossip-addr", self.seed,
                                             "--seeds", self.seed]
                                            + (["--config", broker_config] if broker_config else []),
                                            stderr=subprocess.DEVNULL, env=self.env)
        for i in range(servers):
            self.add_server(f"s{i+1}")
        wait_http(self.base + "/health")

    def add_server(self, sid):
        hp = free_port()
        self.procs[sid] = subprocess.Popen([self.basalt, "server", "--node-id", sid, "--data-dir", os.path.join(self.work, sid),
                                            "--deep-store", self.deep, "--flight-addr", f"127.0.0.1:{free_port()}",
                                            "--gossip-addr", f"127.0.0.1:{free_port()}", "--seeds", self.seed,
                                            "--http-addr", f"127.0.0.1:{hp}"], stderr=subprocess.DEVNULL, env=self.env)
        self.health[sid] = f"http://127.0.0.1:{hp}/health"
        wait_http(self.health[sid])

    def loaded(self):
        out = {}
        for sid, url in self.health.items():
            try:
                out[sid] = http(url, timeout=2)["segments"]
            except Exception:
                out[sid] = 0
        return out

    def kill(self, sid):
        self.procs[sid].send_signal(signal.SIGKILL)
        self.procs[sid].wait()
        del self.procs[sid]
        del self.health[sid]

    def stop(self):
        for p in self.procs.values():
            p.kill()
            p.wait()


def load(base, basalt, pq, replication=None, max_rows=None):
    spec = json.loads(subprocess.run([basalt, "gen-events", "--rows", "0", "--out", "/dev/null", "--print-spec"],
                                     capture_output=True, text=True, check=True).stdout)
    if replication:
        spec["replication"] = replication
    if max_rows:
        spec.setdefault("segment", {})["max_rows"] = max_rows
    http(base + "/tables", json.dumps(spec).encode())
    t = time.time()
    with open(pq, "rb") as f:
        r = http(base + "/tables/events/ingest", f.read(), "application/vnd.apache.parquet", timeout=3600)
    return r["rows"], time.time() - t


def query_fn(base, sql):
    def run():
        v = http(base + "/query/sql", json.dumps({"sql": sql, "queryOptions": "useResultCache=false"}).encode())
        if v.get("exceptions"):
            raise RuntimeError(f"{sql}: {v['exceptions']}")
    return run


def overhead(a, work, pq, now_ms):
    port = free_port()
    alone = subprocess.Popen([a.basalt, "standalone", "--data-dir", os.path.join(work, "alone"), "--http-addr", f"127.0.0.1:{port}",
                              "--pg-addr", f"127.0.0.1:{free_port()}"], stderr=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "warn"})
    sbase = f"http://127.0.0.1:{port}"
    c = None
    try:
        wait_http(sbase + "/health")
        rows, secs = load(sbase, a.basalt, pq)
        print(f"standalone: ingested {rows} rows in {secs:.1f}s")
        c = Cluster(a.basalt, os.path.join(work, "cluster"), 1)
        rows, secs = load(c.base, a.basalt, pq)
        print(f"cluster (1 broker, 1 server): ingested {rows} rows in {secs:.1f}s (answered once the server holds them)")
        now = f"to_timestamp_millis({now_ms})"
        ratios = []
        print(f"\n{'query':36} {'standalone ms':>14} {'cluster ms':>11} {'ratio':>7}")
        for name, q in QUERIES:
            sql = q.format(now=now, **DIALECT["basalt"])
            s = median_ms(query_fn(sbase, sql), a.runs)
            k = median_ms(query_fn(c.base, sql), a.runs)
            ratios.append(k / s)
            print(f"{name:36} {s:14.1f} {k:11.1f} {k/s:7.2f}")
        geo = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
        print(f"\ngeometric mean of cluster / standalone: {geo:.2f}  (rows={a.rows}, runs={a.runs}, median)")
    finally:
        alone.kill()
        alone.wait()
        if c:
            c.stop()


def cpu_seconds(pids):
    """User + system CPU seconds the processes have used (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except OSError:
            pass
    return total


FANOUT_QUERIES = [
    ("count(*)", "SELECT count(*) FROM events"),
    ("group by country", "SELECT country, count(*) FROM events GROUP BY country ORDER BY 2 DESC"),
    ("top 10 users by revenue", "SELECT user_id, sum(revenue) FROM events GROUP BY user_id ORDER BY 2 DESC LIMIT 10"),
    ("filtered sum", "SELECT sum(revenue) FROM events WHERE country = 'DE' AND device = 'ios'"),
]


def fanout(a, work, pq, sizes):
    print(f"\nfan-out: one broker, N servers, {a.fanout_rows} rows in 2N segments, replication 1, "
          f"p50 / p99 of {a.fanout_runs} runs (ms); CPU ms per query: broker / all servers")
    print(f"{'servers':>7} " + " ".join(f"{n[:24]:>24}" for n, _ in FANOUT_QUERIES) + f" {'broker cpu':>10} {'server cpu':>10}")
    for n in sizes:
        c = Cluster(a.basalt, os.path.join(work, f"fanout-{n}"), n)
        try:
            rows, _ = load(c.base, a.basalt, pq, max_rows=max(1, a.fanout_rows // (2 * n)) + 1)
            stats = http(c.base + "/tables/events")["stats"]
            segments = stats["segments"]
            t = time.time()
            while sum(c.loaded().values()) < segments and time.time() - t < 300:
                time.sleep(0.5)
            cells = []
            for _, q in FANOUT_QUERIES:
                run = query_fn(c.base, q)
                run()  # warm-up
                lat = []
                for _ in range(a.fanout_runs):
                    t0 = time.perf_counter()
                    run()
                    lat.append((time.perf_counter() - t0) * 1000)
                lat.sort()
                p99 = lat[min(len(lat) - 1, math.ceil(0.99 * len(lat)) - 1)]
                cells.append(f"{statistics.median(lat):.1f} / {p99:.1f}")
            # CPU per query, once warm: the broker's and all servers' together, per query.
            broker = [c.procs["b1"].pid]
            servers = [p.pid for sid, p in c.procs.items() if sid != "b1"]
            cpu = []
            batch = 10
            for _, q in FANOUT_QUERIES:
                b0, s0 = cpu_seconds(broker), cpu_seconds(servers)
                for _ in range(batch):
                    query_fn(c.base, q)()
                cpu.append(((cpu_seconds(broker) - b0) * 1000 / batch, (cpu_seconds(servers) - s0) * 1000 / batch))
            bcpu = sum(b for b, _ in cpu) / len(cpu)
            scpu = sum(s for _, s in cpu) / len(cpu)
            print(f"{n:7d} " + " ".join(f"{cell:>24}" for cell in cells) + f" {bcpu:10.1f} {scpu:10.1f}"
                  f"   ({rows} rows, {segments} segments, {stats['bytes'] / max(rows, 1):.1f} bytes/row)")
            print(f"{'':7} " + " ".join(f"{'cpu ' + format(b, '.0f') + ' / ' + format(s_, '.0f'):>24}" for b, s_ in cpu))
        finally:
            c.stop()


JOIN_QUERIES = [
    ("star join: revenue by region, class",
     "SELECT c.region, d.class, count(*) AS n, sum(e.revenue) AS rev FROM events e JOIN countries c ON e.country = c.country "
     "JOIN devices d ON e.device = d.device GROUP BY 1, 2 ORDER BY 1, 2"),
    ("selective dimension filter",
     "SELECT c.country, count(*) AS n, sum(e.revenue) AS rev FROM events e JOIN countries c ON e.country = c.country "
     "WHERE c.pop < 5000 GROUP BY 1 ORDER BY 1"),
    ("IN subquery over a dimension",
     "SELECT e.event_type, count(*) AS n FROM events e WHERE e.country IN (SELECT country FROM countries WHERE region = 'west') "
     "GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 10"),
    ("top-K over a join",
     "SELECT e.ts, e.event_id, c.region FROM events e JOIN countries c ON e.country = c.country WHERE c.pop < 20000 "
     "ORDER BY e.ts DESC, e.event_id LIMIT 10"),
]

DIMENSIONS = [
    ("countries", "country", {"columns": [{"name": "country", "type": "STRING"}, {"name": "region", "type": "STRING"},
                                          {"name": "pop", "type": "LONG"}]},
     lambda i, v: {"country": v, "region": ["north", "south", "east", "west"][i % 4], "pop": i * 1000}),
    ("devices", "device", {"columns": [{"name": "device", "type": "STRING"}, {"name": "class", "type": "STRING"}]},
     lambda i, v: {"device": v, "class": ["portable", "fixed"][i % 2]}),
]


def dimension_rows(base):
    """Each dimension's rows, over the distinct values of its key in `events` at `base`."""
    out = {}
    for name, key, _, row in DIMENSIONS:
        v = http(base + "/query/sql", json.dumps({"sql": f"SELECT DISTINCT {key} FROM events ORDER BY 1"}).encode())
        out[name] = [row(i, r[0]) for i, r in enumerate(v["resultTable"]["rows"])]
    return out


def load_dimensions(base, dims):
    for name, _, spec, _ in DIMENSIONS:
        http(base + "/tables", json.dumps({"name": name, **spec}).encode())
        body = "".join(json.dumps(r) + "\n" for r in dims[name]).encode()
        http(base + "/tables/" + name + "/ingest", body, "application/x-ndjson")


def rounded(rows):
    """Rows with floats to 4 decimals (sums merged in another order differ in the last bits)."""
    return [[round(x, 4) if isinstance(x, float) else x for x in r] for r in rows]


def answer_rows(base, q, label):
    """The rows of `q` at `base`; a failed answer stops the benchmark, naming it."""
    v = http(base + "/query/sql", json.dumps({"sql": q}).encode())
    if "resultTable" not in v:
        raise RuntimeError(f"{label} failed {q!r}: {v.get('exceptions')}")
    return v["resultTable"]["rows"]


def joins(a, work, pq):
    import duckdb
    port = free_port()
    alone = subprocess.Popen([a.basalt, "standalone", "--data-dir", os.path.join(work, "alone-j"), "--http-addr", f"127.0.0.1:{port}",
                              "--pg-addr", f"127.0.0.1:{free_port()}"], stderr=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "warn"})
    sbase = f"http://127.0.0.1:{port}"
    clusters = []
    try:
        wait_http(sbase + "/health")
        load(sbase, a.basalt, pq)
        dims = dimension_rows(sbase)
        load_dimensions(sbase, dims)
        off = os.path.join(work, "no-broadcast.toml")
        with open(off, "w") as f:
            f.write("[cluster]\nbroadcast_max_rows = 0\n")
        for label, conf in (("broadcast", None), ("on broker", off)):
            c = Cluster(a.basalt, os.path.join(work, "joins-" + label.replace(" ", "-")), 2, conf)
            clusters.append((label, c))
            load(c.base, a.basalt, pq, max_rows=max(1, a.rows // 8) + 1)
            load_dimensions(c.base, dims)
        db = duckdb.connect()
        db.execute(f"CREATE TABLE events AS SELECT * FROM read_parquet('{pq}')")
        for name, _, _, _ in DIMENSIONS:
            path = os.path.join(work, name + ".json")
            with open(path, "w") as f:
                f.write("".join(json.dumps(r) + "\n" for r in dims[name]))
            db.execute(f"CREATE TABLE {name} AS SELECT * FROM read_json_auto('{path}')")
        print(f"\njoins: {a.rows} events, {len(dims['countries'])} countries, {len(dims['devices'])} devices; "
              f"clusters of one broker and two servers (8 segments); median of {a.runs} runs (ms); broker CPU ms per query")
        print(f"{'query':36} {'standalone':>10} {'broadcast':>10} {'on broker':>10} {'duckdb':>8}  "
              f"{'broker cpu: broadcast / on broker':>34}")
        for name, q in JOIN_QUERIES:
            want = answer_rows(sbase, q, "standalone")
            cells, cpu = [median_ms(query_fn(sbase, q), a.runs)], []
            failures = []
            for label, c in clusters:
                try:
                    got = answer_rows(c.base, q, label)
                except RuntimeError as e:
                    # Recorded, not fatal: joining 10M probe rows on the broker can exceed a
                    # query's limits, which is what broadcast joins are for.
                    failures.append(str(e))
                    cells.append(float("nan"))
                    cpu.append(float("nan"))
                    continue
                if rounded(got) != rounded(want):
                    raise RuntimeError(f"{label} answered {name} differently: {got[:3]} vs {want[:3]}")
                cells.append(median_ms(query_fn(c.base, q), a.runs))
                pid = [c.procs["b1"].pid]
                b0 = cpu_seconds(pid)
                for _ in range(a.runs):
                    query_fn(c.base, q)()
                cpu.append((cpu_seconds(pid) - b0) * 1000 / a.runs)
            cells.append(median_ms(lambda: db.execute(q).fetchall(), a.runs))
            print(f"{name:36} " + " ".join(f"{x:10.1f}" for x in cells[:3]) + f" {cells[3]:8.1f}  "
                  f"{cpu[0]:16.1f} / {cpu[1]:.1f}")
            for f in failures:
                print(f"  failed: {f}")
    finally:
        alone.kill()
        alone.wait()
        for _, c in clusters:
            c.stop()


def consuming(c, table):
    out = {}
    for sid, url in c.health.items():
        try:
            out[sid] = http(url, timeout=2).get("consuming", {}).get(table, [])
        except Exception:
            out[sid] = []
    return out


def realtime_failover(a, work):
    """A generator-fed real-time table (4 partitions, 20k events/s, replication 2) on 3
    servers: kill -9 the owner of partition 0 while a reader loops; count partial answers and
    counts going backwards, the worst latency, and the time until every partition has two
    live consumers again."""
    c = Cluster(a.basalt, os.path.join(work, "rt-failover"), 3)
    try:
        spec = json.loads(subprocess.run([a.basalt, "gen-events", "--rows", "0", "--out", "/dev/null", "--print-spec"],
                                         capture_output=True, text=True, check=True).stdout)
        spec["name"] = "live"
        spec["replication"] = 2
        spec["source"] = {"generator": {"events_per_second": 20000, "partitions": 4}}
        spec["segment"] = {"max_rows": 200000, "max_age": "10s"}
        http(c.base + "/tables", json.dumps(spec).encode())

        def doubled():
            per = {}
            for parts in consuming(c, "live").values():
                for p in parts:
                    per[p] = per.get(p, 0) + 1
            return per == {0: 2, 1: 2, 2: 2, 3: 2}
        t = time.time()
        while not doubled() and time.time() - t < 60:
            time.sleep(0.2)
        time.sleep(3)
        owners = consuming(c, "live")
        # The owner ranks first; the broker's /health does not say which one it is, so kill
        # a consumer of partition 0 — either is a consumer the broker may be reading from.
        victim = next(sid for sid, parts in owners.items() if 0 in parts)
        sql = json.dumps({"sql": "SELECT count(*) FROM live", "queryOptions": "useResultCache=false"}).encode()
        last, backwards, partial, answers, worst = 0, 0, 0, 0, 0.0
        for _ in range(20):  # warm
            http(c.base + "/query/sql", sql)
        c.kill(victim)
        killed = time.time()
        again = None
        while time.time() - killed < 15 or again is None:
            if time.time() - killed > 60:
                break
            if again is None and doubled():
                again = time.time() - killed
            q0 = time.time()
            v = http(c.base + "/query/sql", sql)
            worst = max(worst, time.time() - q0)
            answers += 1
            if v.get("partialResult"):
                partial += 1
            else:
                n = v["resultTable"]["rows"][0][0]
                backwards += n < last
                last = max(last, n)
            time.sleep(0.05)
        print(f"\nreal-time failover (replication 2): {victim} (consuming {owners[victim]}) killed; "
              f"{answers} answers in 15 s: {partial} flagged partial, {backwards} went backwards, "
              f"worst {worst * 1000:.0f} ms; every partition had two live consumers again after "
              f"{again if again is None else round(again, 1)} s")
    finally:
        c.stop()


def failover(a, work, pq):
    c = Cluster(a.basalt, os.path.join(work, "failover"), 3)
    try:
        rows, _ = load(c.base, a.basalt, pq, replication=2)
        total = None
        t = time.time()
        while time.time() - t < 120:
            l = c.loaded()
            info = http(c.base + "/tables/events")
            total = 2 * info["stats"]["segments"]
            if sum(l.values()) == total:
                break
            time.sleep(0.5)
        print(f"\nfailover: {rows} rows, {total // 2} segments x 2 replicas on 3 servers")
        sql = json.dumps({"sql": "SELECT count(*) FROM events", "queryOptions": "useResultCache=false"}).encode()
        lat, bad = [], 0
        killed_at, restored = None, None
        start = time.time()
        while time.time() - start < 30:
            q0 = time.perf_counter()
            v = http(c.base + "/query/sql", sql)
            ms = (time.perf_counter() - q0) * 1000
            ok = not v.get("exceptions") and not v.get("partialResult") and v["resultTable"]["rows"][0][0] == rows
            bad += 0 if ok else 1
            if killed_at is not None:
                lat.append(ms)
            if killed_at is None and time.time() - start > 2:
                c.kill("s2")
                killed_at = time.time()
            if killed_at is not None and restored is None and sum(c.loaded().values()) == total:
                restored = time.time() - killed_at
                break
            time.sleep(0.05)
        print(f"answers after the kill: {len(lat)}, incomplete or wrong: {bad}, worst {max(lat):.0f} ms, median {statistics.median(lat):.0f} ms")
        print(f"every segment on two live servers again {restored:.1f} s after the kill" if restored else "replicas not restored within 30 s")
    finally:
        c.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--basalt", default="target/debug/basalt")
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--failover", action="store_true")
    ap.add_argument("--fanout", default="", help="server counts, e.g. 4,16,64")
    ap.add_argument("--fanout-rows", type=int, default=2_000_000)
    ap.add_argument("--fanout-runs", type=int, default=50)
    ap.add_argument("--skip-overhead", action="store_true")
    ap.add_argument("--joins", action="store_true")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="basalt-cluster-bench-")
    try:
        pq = os.path.join(work, "events.parquet")
        if not a.skip_overhead or a.failover or a.joins:
            subprocess.run([a.basalt, "gen-events", "--rows", str(a.rows), "--format", "parquet", "--out", pq], check=True)
        now_ms = int(time.time() * 1000)
        if not a.skip_overhead:
            overhead(a, work, pq, now_ms)
        if a.fanout:
            fpq = os.path.join(work, "fanout.parquet")
            subprocess.run([a.basalt, "gen-events", "--rows", str(a.fanout_rows), "--format", "parquet", "--out", fpq], check=True)
            fanout(a, work, fpq, [int(n) for n in a.fanout.split(",")])
        if a.joins:
            joins(a, work, pq)
        if a.failover:
            failover(a, work, pq)
            realtime_failover(a, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
