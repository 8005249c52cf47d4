#!/usr/bin/env python3
"""Per-query fixed cost of a running Basalt server: server CPU (utime+stime of its process,
from /proc) and client wall time per query, over PostgreSQL (psycopg 3, simple protocol) and
HTTP (one kept-alive connection). Issue 20's session-setup measurement.

Usage: python3 benches/session_cost.py --pid PID [--pg-port 5432] [--http-port 8080]
           [--queries 3000] [--sql "SELECT 1"]
Run it with `perf record -p PID --call-graph dwarf` around it to see where the time goes.
"""
import argparse, http.client, json, os, time

import psycopg


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--pg-port", type=int, default=5432)
    ap.add_argument("--http-port", type=int, default=8080)
    ap.add_argument("--queries", type=int, default=3000)
    ap.add_argument("--sql", default="SELECT 1")
    a = ap.parse_args()
    tick = os.sysconf("SC_CLK_TCK")

    def cpu():
        f = open(f"/proc/{a.pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / tick

    con = psycopg.connect(f"host=127.0.0.1 port={a.pg_port} user=basalt dbname=basalt", autocommit=True)
    cur = con.cursor()
    h = http.client.HTTPConnection("127.0.0.1", a.http_port)
    body = json.dumps({"sql": a.sql, "queryOptions": "useResultCache=false"})

    def pg():
        cur.execute(a.sql, prepare=False)
        cur.fetchall()

    def ht():
        h.request("POST", "/query/sql", body, {"content-type": "application/json"})
        h.getresponse().read()

    for name, f in (("pg", pg), ("http", ht)):
        for _ in range(50):
            f()
        c, t = cpu(), time.perf_counter()
        for _ in range(a.queries):
            f()
        w, c = time.perf_counter() - t, cpu() - c
        print(f"{name:5} server CPU {c / a.queries * 1e6:7.0f} us/query, wall {w / a.queries * 1e6:7.0f} us/query")


if __name__ == "__main__":
    main()
