#!/usr/bin/env python3
"""Checks Basalt's Grafana dashboards against a live Basalt.

Usage: dashboards.py PG_HOST PG_PORT HTTP_BASE

Every dashboard in dashboards/grafana/dashboards must be valid JSON with Grafana's dashboard
fields; every SQL target, after template variables and Grafana's PostgreSQL macros are
expanded the way Grafana expands them, must run over the PostgreSQL protocol (extended
protocol, as Grafana's driver sends it) and return rows, time series with a "time" column in
ascending order; every Prometheus target may only name metrics GET /metrics exposes. The
data sources the panels use must be the ones the provisioning file declares.
Run by tests/e2e/dashboards.rs (which loads `events` and a real-time `live_events` table).
"""
import datetime as dt
import json
import pathlib
import re
import sys
import urllib.request

import psycopg

host, port, http = sys.argv[1], int(sys.argv[2]), sys.argv[3].rstrip("/")
root = pathlib.Path(__file__).resolve().parents[2] / "dashboards" / "grafana"
now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
time_from, time_to = now - dt.timedelta(hours=1), now + dt.timedelta(minutes=1)


def seconds(interval):
    m = re.fullmatch(r"'?(\d+)(ms|s|m|h|d)'?", interval.strip())
    if not m:
        raise ValueError(f"bad interval {interval!r}")
    n, unit = int(m.group(1)), m.group(2)
    return max(1, n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[unit])


def rfc3339(t):
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def expand(sql, variables):
    """Grafana's PostgreSQL macros (pkg/tsdb/grafana-postgresql-datasource/macros.go)."""
    for k, v in variables.items():
        sql = sql.replace("${" + k + "}", v).replace("$" + k, v)
    sql = sql.replace("$__interval_ms", "60000").replace("$__interval", "1m")

    def macro(m):
        name, args = m.group(1), [a.strip() for a in m.group(2).split(",")] if m.group(2).strip() else []
        if name == "time":
            return f'{args[0]} AS "time"'
        if name == "timeEpoch":
            return f'extract(epoch from {args[0]}) AS "time"'
        if name == "timeFilter":
            return f"{args[0]} BETWEEN '{rfc3339(time_from)}' AND '{rfc3339(time_to)}'"
        if name == "timeFrom":
            return f"'{rfc3339(time_from)}'"
        if name == "timeTo":
            return f"'{rfc3339(time_to)}'"
        if name in ("timeGroup", "timeGroupAlias"):
            s = int(seconds(args[1]))
            out = f"floor(extract(epoch from {args[0]})/{s})*{s}"
            return out + (' AS "time"' if name == "timeGroupAlias" else "")
        if name == "unixEpochFilter":
            return (f"{args[0]} >= {int(time_from.timestamp())} AND "
                    f"{args[0]} <= {int(time_to.timestamp())}")
        if name in ("unixEpochGroup", "unixEpochGroupAlias"):
            s = int(seconds(args[1]))
            out = f"floor(({args[0]})/{s})*{s}"
            return out + (' AS "time"' if name == "unixEpochGroupAlias" else "")
        raise ValueError(f"unknown macro $__{name}")

    sql = re.sub(r"\$__(\w+)\(([^)]*)\)", macro, sql)
    assert "$" not in sql.replace("$quarantine", ""), f"unexpanded variable in {sql}"
    return sql


def panels(items):
    for p in items:
        yield p
        yield from panels(p.get("panels", []))


provisioning = (root / "provisioning" / "datasources" / "basalt.yaml").read_text()
declared = set(re.findall(r"^\s+uid:\s*(\S+)", provisioning, re.M))
metrics_text = urllib.request.urlopen(f"{http}/metrics").read().decode()
exposed = set(re.findall(r"^(basalt_\w+)", metrics_text, re.M))
checked = 0
conn = psycopg.connect(f"host={host} port={port} user=grafana dbname=basalt", autocommit=True)
files = sorted((root / "dashboards").glob("*.json"))
assert len(files) >= 2, files
for f in files:
    d = json.loads(f.read_text())
    for key in ("uid", "title", "panels", "schemaVersion", "time"):
        assert key in d, f"{f.name}: missing {key}"
    variables = {v["name"]: v["current"]["value"] for v in d.get("templating", {}).get("list", [])}
    ids = [p["id"] for p in panels(d["panels"])]
    assert len(ids) == len(set(ids)), f"{f.name}: duplicate panel ids"
    for p in panels(d["panels"]):
        for t in p.get("targets", []):
            ds = t.get("datasource") or p.get("datasource")
            where = f"{f.name} / {p['title']} / {t['refId']}"
            assert ds["uid"] in declared, f"{where}: data source {ds['uid']} is not provisioned"
            if ds["type"] == "grafana-postgresql-datasource":
                sql = expand(t["rawSql"], variables)
                try:
                    cur = conn.execute(sql)
                    rows = cur.fetchall()
                except psycopg.Error as e:
                    sys.exit(f"FAILED {where}: {e}\n{sql}")
                cols = [c.name for c in cur.description]
                assert rows, f"{where}: no rows\n{sql}"
                if t.get("format") == "time_series":
                    assert cols[0] == "time", f"{where}: first column is {cols[0]}"
                    times = [r[0] for r in rows]
                    assert times == sorted(times), f"{where}: not ordered by time"
                print(f"ok {where}: {len(rows)} rows {cols}", flush=True)
            elif ds["type"] == "prometheus":
                names = set(re.findall(r"\b(basalt_\w+)", t["expr"]))
                for n in names:
                    base = re.sub(r"_(bucket|sum|count)$", "", n)
                    assert n in exposed or base in exposed, f"{where}: {n} is not in /metrics"
                print(f"ok {where}: {sorted(names)}", flush=True)
            else:
                sys.exit(f"FAILED {where}: unexpected data source type {ds['type']}")
            checked += 1
print(f"all {checked} dashboard queries checked", flush=True)
