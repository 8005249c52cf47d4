#!/usr/bin/env python3
"""The Python database clients a user already has, against a live Basalt: asyncpg,
SQLAlchemy 2 over psycopg 3, psycopg2 and asyncpg (connect, reflection, Core select with
bound parameters, pandas.read_sql), pgcli's completion queries, harlequin's PostgreSQL
adapter, and pinotdb (DB-API and SQLAlchemy dialect) over the HTTP API.

Usage: pg_drivers.py PG_HOST PG_PORT HTTP_URL
Expects the `events` table loaded (the quickstart's generator schema). Versions are pinned
in tests/clients/requirements.txt. Exits non-zero naming the first failed check. Run by
tests/e2e/postgres.rs.
"""
import asyncio
import datetime as dt
import decimal
import sys

host, port, http = sys.argv[1], int(sys.argv[2]), sys.argv[3].rstrip("/")
dsn = f"host={host} port={port} user=basalt dbname=analytics"
from checks import check, passed


# The reference answers, from psycopg 3 (tested on its own in pg_clients.py).
import psycopg

with psycopg.connect(dsn, autocommit=True) as conn:
    total = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    per_device = dict(conn.execute("SELECT device, count(*) FROM events GROUP BY device").fetchall())
    slow_mobile = conn.execute(
        "SELECT count(*) FROM events WHERE device = 'mobile' AND latency_ms > 100").fetchone()[0]
    mobile_tablet = per_device["mobile"] + per_device["tablet"]
    # psycopg 3's type registry asks the server with to_regtype().
    from psycopg.types import TypeInfo

    info = TypeInfo.fetch(conn, "int4")
    check("psycopg TypeInfo.fetch (to_regtype)", info is not None and info.oid == 23
          and info.array_oid == 1007, info)
    check("psycopg TypeInfo.fetch of a missing type", TypeInfo.fetch(conn, "hstore") is None)
    row = conn.execute("SELECT 23::regtype::text, to_regtype('bigint')::oid").fetchone()
    check("regtype names", row == ("integer", 20), row)
check("reference counts", total > 0 and slow_mobile > 0 and per_device["tablet"] > 0)

# --- asyncpg: binary parameters typed by the server's ParameterDescription -----------------
import asyncpg


async def asyncpg_checks():
    c = await asyncpg.connect(host=host, port=port, user="basalt", database="analytics")
    n = await c.fetchval("SELECT count(*) FROM events WHERE device = $1 AND latency_ms > $2",
                         "mobile", 100.0)
    check("asyncpg text + float8 parameters", n == slow_mobile, (n, slow_mobile))
    n = await c.fetchval(
        "SELECT count(*) FROM events WHERE ts >= $1 AND is_bot = $2 AND revenue >= $3",
        dt.datetime(2000, 1, 1), False, decimal.Decimal("0"))
    check("asyncpg timestamp, bool and numeric parameters", 0 < n <= total, n)
    n = await c.fetchval("SELECT count(*) FROM events WHERE device = ANY($1)", ["mobile", "tablet"])
    check("asyncpg array parameter (= ANY($1))", n == mobile_tablet, (n, mobile_tablet))
    n = await c.fetchval("SELECT count(*) FROM events WHERE device <> ALL($1)", ["mobile", "tablet"])
    check("asyncpg array parameter (<> ALL($1))", n == total - mobile_tablet, n)
    check("asyncpg cast parameter", await c.fetchval("SELECT $1::int + 1", 41) == 42)
    check("asyncpg untyped parameter is text", await c.fetchval("SELECT $1", "x") == "x")
    rows = await c.fetch("SELECT device, count(*) AS n FROM events GROUP BY device LIMIT $1", 50)
    check("asyncpg LIMIT $1 and records", {r["device"]: r["n"] for r in rows} == per_device, rows)
    stmt = await c.prepare("SELECT count(*) FROM events WHERE device = $1")
    check("asyncpg prepared statement parameter types",
          [t.name for t in stmt.get_parameters()] == ["text"], stmt.get_parameters())
    check("asyncpg prepared statement re-run",
          [await stmt.fetchval(d) for d in ("mobile", "tablet")]
          == [per_device["mobile"], per_device["tablet"]])
    row = await c.fetchrow("SELECT max(ts) AS t, sum(revenue) AS r FROM events")
    check("asyncpg binary results", isinstance(row["t"], dt.datetime), row)
    try:
        await c.fetch("SELECT nope FROM events")
        check("asyncpg undefined column", False, "no error")
    except asyncpg.exceptions.UndefinedColumnError as e:
        check("asyncpg undefined column is 42703", True, e)
    try:
        await c.fetchval("SELECT count(*) FROM events WHERE latency_ms > $1", "fast")
        check("asyncpg wrong parameter type", False, "no error")
    except (asyncpg.exceptions.DataError, ValueError, TypeError) as e:
        check("asyncpg wrong parameter type refused client-side", True, e)
    await c.close()


asyncio.run(asyncpg_checks())

# --- SQLAlchemy 2 with each driver: connect, reflection, Core select, pandas ---------------
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine


def core_query(events):
    return (sa.select(events.c.device, sa.func.count().label("n"))
            .where(events.c.latency_ms > sa.bindparam("lat"))
            .where(events.c.device == sa.bindparam("dev"))
            .group_by(events.c.device))


def reflected(insp_names, cols, driver):
    check(f"sqlalchemy+{driver} get_table_names", "events" in insp_names, insp_names)
    types = {c["name"]: str(c["type"]) for c in cols}
    check(f"sqlalchemy+{driver} get_columns", len(types) == 13
          and types["latency_ms"] == "DOUBLE PRECISION" and types["ts"] == "TIMESTAMP"
          and types["is_bot"] == "BOOLEAN" and types["country"] == "TEXT", types)


for driver in ("psycopg", "psycopg2"):
    engine = sa.create_engine(f"postgresql+{driver}://basalt@{host}:{port}/analytics")
    with engine.connect() as c:
        check(f"sqlalchemy+{driver} connect",
              c.execute(sa.text("SELECT count(*) FROM events")).scalar() == total)
    insp = sa.inspect(engine)
    reflected(insp.get_table_names(), insp.get_columns("events"), driver)
    check(f"sqlalchemy+{driver} has_table", insp.has_table("events") and not insp.has_table("nope"))
    events = sa.Table("events", sa.MetaData(), autoload_with=engine)
    with engine.connect() as c:
        rows = c.execute(core_query(events), {"lat": 100.0, "dev": "mobile"}).fetchall()
        check(f"sqlalchemy+{driver} Core select with parameters",
              rows == [("mobile", slow_mobile)], rows)
        rows = c.execute(sa.select(sa.func.count()).select_from(events)
                         .where(events.c.device.in_(["mobile", "tablet"]))).scalar()
        check(f"sqlalchemy+{driver} IN with a list", rows == mobile_tablet, rows)
    df = pd.read_sql(sa.text("SELECT device, count(*) AS n FROM events WHERE latency_ms > :lat "
                             "GROUP BY device"), engine, params={"lat": 0})
    check(f"sqlalchemy+{driver} pandas.read_sql", dict(zip(df.device, df.n)) == per_device,
          df.to_dict())
    df = pd.read_sql_table("events", engine, columns=["device", "ts"])
    check(f"sqlalchemy+{driver} pandas.read_sql_table", len(df) == total
          and str(df.ts.dtype).startswith("datetime64"), df.dtypes)
    engine.dispose()


async def sqlalchemy_asyncpg():
    engine = create_async_engine(f"postgresql+asyncpg://basalt@{host}:{port}/analytics")
    async with engine.connect() as c:
        check("sqlalchemy+asyncpg connect",
              (await c.execute(sa.text("SELECT count(*) FROM events"))).scalar() == total)
        names = await c.run_sync(lambda s: sa.inspect(s).get_table_names())
        cols = await c.run_sync(lambda s: sa.inspect(s).get_columns("events"))
        reflected(names, cols, "asyncpg")
        events = await c.run_sync(lambda s: sa.Table("events", sa.MetaData(), autoload_with=s))
        rows = (await c.execute(core_query(events), {"lat": 100.0, "dev": "mobile"})).fetchall()
        check("sqlalchemy+asyncpg Core select with parameters",
              rows == [("mobile", slow_mobile)], rows)
        df = await c.run_sync(lambda s: pd.read_sql(
            sa.text("SELECT device, count(*) AS n FROM events GROUP BY device"), s))
        check("sqlalchemy+asyncpg pandas.read_sql", dict(zip(df.device, df.n)) == per_device)
    await engine.dispose()


asyncio.run(sqlalchemy_asyncpg())

# --- pgcli: the catalog queries behind its completion -------------------------------------
from pgcli.completion_refresher import CompletionRefresher
from pgcli.pgcompleter import PGCompleter
from pgcli.pgexecute import PGExecute

executor = PGExecute("analytics", "basalt", None, host, port, "")
completer = PGCompleter()
for name, refresh in CompletionRefresher.refreshers.items():
    try:
        refresh(completer, executor)
    except Exception as e:  # noqa: BLE001 - name the refresher that failed
        check(f"pgcli refresher {name}", False, repr(e))
    check(f"pgcli refresher {name}", True)
tables = completer.dbmetadata["tables"].get("public", {})
check("pgcli completes the table", "events" in tables, tables.keys())
check("pgcli completes its columns", "latency_ms" in [c.name for c in tables["events"].values()]
      if isinstance(tables.get("events"), dict) else "latency_ms" in str(tables["events"]),
      tables.get("events"))
result = list(executor.run("SELECT device, count(*) FROM events GROUP BY device"))
title, cur, headers, status, *_ = result[0]
check("pgcli runs a query", headers == ["device", "count"] and dict(cur) == per_device, headers)

# --- harlequin's PostgreSQL adapter ---------------------------------------------------------
from harlequin_postgres import HarlequinPostgresAdapter

conn = HarlequinPostgresAdapter(conn_str=(dsn,)).connect()
catalog = conn.get_catalog()


def labels(items, depth=0):
    """Every label of the catalog tree, loading lazy children as harlequin's sidebar does."""
    out = []
    for i in items:
        out.append(i.label)
        children = getattr(i, "children", None) or []
        if not children and hasattr(i, "fetch_children") and depth < 3:
            children = i.fetch_children()
        out.extend(labels(children, depth + 1))
    return out


names = labels(catalog.items)
check("harlequin catalog lists events and its columns",
      "events" in names and "latency_ms" in names, names[:20])
cur = conn.execute("SELECT device, count(*) AS n FROM events GROUP BY device")
check("harlequin runs a query", dict(cur.fetchall()) == per_device)

# --- pinotdb over the HTTP API --------------------------------------------------------------
from pinotdb import connect as pinot_connect

scheme, rest = http.split("://")
phost, pport = rest.split(":")
pconn = pinot_connect(host=phost, port=int(pport), path="/query/sql", scheme=scheme)
cur = pconn.cursor()
cur.execute("SELECT device, count(*) FROM events WHERE latency_ms > %(lat)s "
            "AND device = %(dev)s GROUP BY device", {"lat": 100, "dev": "mobile"})
check("pinotdb DB-API with parameters", cur.fetchall() == [["mobile", slow_mobile]])
check("pinotdb description", [d[0] for d in cur.description] == ["device", "count(*)"],
      cur.description)
engine = sa.create_engine(f"pinot+{scheme}://{rest}/query/sql?controller={http}/")
insp = sa.inspect(engine)
check("pinotdb SQLAlchemy table names", "events" in insp.get_table_names())
cols = {c["name"]: str(c["type"]) for c in insp.get_columns("events")}
check("pinotdb SQLAlchemy columns (Pinot schema)", len(cols) == 13 and cols["ts"] == "TIMESTAMP"
      and cols["device"] == "VARCHAR" and cols["is_bot"] == "BOOLEAN", cols)
with engine.connect() as c:
    n = c.execute(sa.text("SELECT count(*) FROM events")).scalar()
    check("pinotdb SQLAlchemy query", n == total, n)

passed("driver")
