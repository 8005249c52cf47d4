#!/usr/bin/env python3
"""A light query's latency beside heavy ones on one Basalt server: two threads run the
full-scan group by back to back while the main thread sends the count over the last 5
minutes every 10 ms, all with the result cache off. Prints the light query's p50 / p90 / p99
and the heavy queries' rate. Run it against a server already holding the macro set's events
(`run.py`'s table), e.g. two builds started in turn on copies of one data dir.

Usage: python3 benches/macro/mixed.py --port 8099 --now-ms NOW [--seconds 15]

NOW: the milliseconds the events' "now" is (the load's time for `run.py`'s events).
"""
import argparse, http.client, json, threading, time

HEAVY = "SELECT device, os, count(*) AS n, avg(latency_ms) AS lat FROM events GROUP BY device, os ORDER BY n DESC"
LIGHT = "SELECT count(*) FROM events WHERE ts >= to_timestamp_millis({now}) - INTERVAL '5 minutes'"


def body(sql):
    return json.dumps({"sql": sql, "queryOptions": "useResultCache=false"})


def ask(conn, sql):
    conn.request("POST", "/query/sql", body(sql), {"content-type": "application/json"})
    v = json.loads(conn.getresponse().read())
    if v.get("exceptions"):
        raise RuntimeError(f"{sql}: {v['exceptions']}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8099)
    ap.add_argument("--now-ms", type=int, required=True)
    ap.add_argument("--seconds", type=float, default=15.0)
    a = ap.parse_args()
    stop = threading.Event()
    heavy_done = [0]

    def heavy():
        conn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=600)
        while not stop.is_set():
            ask(conn, HEAVY)
            heavy_done[0] += 1

    threads = [threading.Thread(target=heavy) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(1)
    conn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=600)
    light = LIGHT.format(now=a.now_ms)
    lat, start, h0 = [], time.time(), heavy_done[0]
    while time.time() - start < a.seconds:
        t = time.perf_counter()
        ask(conn, light)
        lat.append((time.perf_counter() - t) * 1000)
        time.sleep(0.01)
    stop.set()
    for t in threads:
        t.join()
    lat.sort()
    n = len(lat)
    print(f"light: n={n} p50 {lat[n // 2]:.2f} p90 {lat[int(n * 0.9)]:.2f} p99 {lat[int(n * 0.99)]:.2f} ms; "
          f"heavy {(heavy_done[0] - h0) / a.seconds:.1f} queries/s")


if __name__ == "__main__":
    main()
