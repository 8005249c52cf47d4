#!/usr/bin/env python3
"""Apache Superset against a live Basalt, through Superset's REST API only.

Usage: superset_check.py SUPERSET_URL PG_HOST PG_PORT HTTP_URL
Expects the `events` table loaded and a Superset (admin/admin) running at SUPERSET_URL with
psycopg2 and pinotdb installed (tests/clients/superset.sh sets one up). Registers Basalt
twice, as a PostgreSQL database and as an Apache Pinot one (pinotdb's dialect over Basalt's
HTTP API), adds the `events` dataset on each, runs a chart's query (events per device, and
average latency per country with a filter) through `/api/v1/chart/data`, and checks the rows
against the same query sent to Basalt directly. Exits non-zero naming the first failure.
"""
import json
import sys
import time
import urllib.request

superset, pg_host, pg_port, http = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
http = http.rstrip("/")
from checks import check, passed


def call(method, path, body=None, token=None, base=superset):
    req = urllib.request.Request(base + path, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    data = json.dumps(body).encode() if body is not None else None
    try:
        with urllib.request.urlopen(req, data, timeout=120) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


status, login = call("POST", "/api/v1/security/login",
                     {"username": "admin", "password": "admin", "provider": "db", "refresh": True})
check("superset login", status == 200, login)
token = login["access_token"]


def basalt_rows(sql):
    status, r = call("POST", "/query/sql", {"sql": sql}, base=http)
    assert status == 200, r
    return r


def rows_of(sql):
    r = basalt_rows(sql)
    names = [c for c in r["resultTable"]["dataSchema"]["columnNames"]]
    return [dict(zip(names, row)) for row in r["resultTable"]["rows"]]


by_device = {r["device"]: r["n"] for r in rows_of(
    "SELECT device, count(*) AS n FROM events GROUP BY device")}
latency = {r["country"]: r["a"] for r in rows_of(
    "SELECT country, avg(latency_ms) AS a FROM events WHERE device = 'mobile' GROUP BY country")}

engines = {
    "postgresql": f"postgresql+psycopg2://basalt@{pg_host}:{pg_port}/analytics",
    "pinot": f"pinot+{http.split('://')[0]}://{http.split('://')[1]}/query/sql?controller={http}/",
}
for engine, uri in engines.items():
    name = f"basalt-{engine}-{pg_port}-{int(time.time())}"
    status, r = call("POST", "/api/v1/database/test_connection/",
                     {"database_name": name, "sqlalchemy_uri": uri}, token)
    check(f"{engine}: test connection", status == 200, r)
    status, r = call("POST", "/api/v1/database/",
                     {"database_name": name, "sqlalchemy_uri": uri, "expose_in_sqllab": True},
                     token)
    check(f"{engine}: database registered", status == 201, r)
    db = r["id"]
    status, r = call("GET", f"/api/v1/database/{db}/tables/?q=(schema_name:{'public' if engine == 'postgresql' else 'default'})", token=token)
    tables = [t["value"] for t in r.get("result", [])] if status == 200 else r
    check(f"{engine}: table list has events", "events" in tables, tables)
    # A dataset `events` left by an earlier run would clash (names are unique in SQLite).
    status, r = call("GET", "/api/v1/dataset/?q=(filters:!((col:table_name,opr:eq,value:events)))",
                     token=token)
    for old in (r.get("result", []) if status == 200 else []):
        call("DELETE", f"/api/v1/dataset/{old['id']}", token=token)
    status, r = call("POST", "/api/v1/dataset/",
                     {"database": db, "schema": "public" if engine == "postgresql" else None,
                      "table_name": "events"}, token)
    check(f"{engine}: dataset created (columns reflected)", status == 201, r)
    ds = r["id"]
    status, r = call("GET", f"/api/v1/dataset/{ds}", token=token)
    cols = {c["column_name"] for c in r["result"]["columns"]} if status == 200 else r
    check(f"{engine}: dataset columns", {"device", "latency_ms", "ts"} <= set(cols), cols)

    # A bar chart: count per device (the dataset's default COUNT(*) metric).
    count = {"expressionType": "SQL", "sqlExpression": "COUNT(*)", "label": "n"}
    status, r = call("POST", "/api/v1/chart/data", {
        "datasource": {"id": ds, "type": "table"},
        "queries": [{"columns": ["device"], "metrics": [count], "orderby": [[count, False]],
                     "row_limit": 100}],
        "result_format": "json", "result_type": "full"}, token)
    check(f"{engine}: chart query ran", status == 200, r)
    got = {row["device"]: row["n"] for row in r["result"][0]["data"]}
    check(f"{engine}: events per device match Basalt", got == by_device, (got, by_device))

    # A table chart with a filter and an average.
    avg = {"expressionType": "SIMPLE", "column": {"column_name": "latency_ms"},
           "aggregate": "AVG", "label": "a"}
    status, r = call("POST", "/api/v1/chart/data", {
        "datasource": {"id": ds, "type": "table"},
        "queries": [{"columns": ["country"], "metrics": [avg],
                     "filters": [{"col": "device", "op": "==", "val": "mobile"}],
                     "row_limit": 1000}],
        "result_format": "json", "result_type": "full"}, token)
    check(f"{engine}: filtered chart query ran", status == 200, r)
    got = {row["country"]: row["a"] for row in r["result"][0]["data"]}
    check(f"{engine}: filtered averages match Basalt",
          got.keys() == latency.keys()
          and all(abs(got[k] - latency[k]) < 1e-6 * max(1, abs(latency[k])) for k in got),
          (got, latency))
    # Superset's SQLite metadata keeps dataset names unique across databases: drop this one
    # before the next engine adds its own `events`.
    status, r = call("DELETE", f"/api/v1/dataset/{ds}", token=token)
    check(f"{engine}: dataset deleted", status == 200, r)

passed("superset")
