#!/usr/bin/env python3
"""PostgreSQL clients against a live Basalt: psql, psycopg 3, psycopg2, SQLAlchemy, and the
SQL Grafana's PostgreSQL data source sends (its macros expanded as Grafana expands them).

Usage: pg_clients.py HOST PORT [USER PASSWORD]
Expects the `events` table loaded (the quickstart's generator schema). Exits non-zero with
the failing check named on the first failure. Run by tests/e2e/postgres.rs.
"""
import datetime as dt
import subprocess
import sys

host, port = sys.argv[1], int(sys.argv[2])
user = sys.argv[3] if len(sys.argv) > 3 else "basalt"
password = sys.argv[4] if len(sys.argv) > 4 else None
dsn = f"host={host} port={port} user={user} dbname=analytics" + (
    f" password={password}" if password else ""
)
from checks import check, passed


def psql(*args):
    env = {"PGPASSWORD": password} if password else {}
    import os

    env.update(os.environ)
    return subprocess.run(
        ["psql", "-X", "-h", host, "-p", str(port), "-U", user, "analytics", "-v",
         "ON_ERROR_STOP=1", *args],
        capture_output=True, text=True, env=env, timeout=60,
    )


# --- psql: the simple query protocol and its backslash commands ---------------------------
r = psql("-At", "-c", "SELECT count(*) FROM events")
check("psql count", r.returncode == 0 and int(r.stdout.strip()) > 0, r.stdout + r.stderr)
total = int(r.stdout.strip())
r = psql("-At", "-c", "SELECT country FROM events GROUP BY country ORDER BY count(*) DESC LIMIT 1")
top = r.stdout.strip()
check("psql top country", r.returncode == 0 and len(top) > 0, r.stdout + r.stderr)
r = psql("-c", r"\dt")
check("psql \\dt lists events", r.returncode == 0 and "events" in r.stdout, r.stdout + r.stderr)
r = psql("-c", r"\d events")
check("psql \\d events shows columns and types",
      r.returncode == 0 and "latency_ms" in r.stdout and "double precision" in r.stdout
      and "timestamp without time zone" in r.stdout, r.stdout + r.stderr)
r = psql("-c", "SELECT nope FROM events")
check("psql error names the column", r.returncode != 0 and "nope" in r.stderr, r.stderr)
r = psql("-c", "INSERT INTO events (event_id) VALUES ('x')")
check("psql write refused as read-only", r.returncode != 0 and "read-only" in r.stderr, r.stderr)

# --- psycopg 3: extended protocol, server-side parameters, binary results -----------------
import psycopg

with psycopg.connect(dsn, autocommit=True) as conn:
    check("psycopg server_version", conn.info.server_version >= 160000, conn.info.server_version)
    row = conn.execute("SELECT count(*) AS n FROM events WHERE country = %s", [top]).fetchone()
    us = row[0]
    check("psycopg parameter", isinstance(us, int) and 0 < us < total, row)
    rows = conn.execute(
        "SELECT event_type, count(*) AS n FROM events WHERE latency_ms > %s AND ts < %s "
        "GROUP BY event_type ORDER BY n DESC LIMIT %s",
        [100.0, dt.datetime(2100, 1, 1), 3],
    ).fetchall()
    check("psycopg typed parameters", len(rows) == 3 and all(isinstance(r[1], int) for r in rows), rows)
    cur = conn.cursor(binary=True)
    cur.execute("SELECT ts, revenue, is_bot, user_id, latency_ms FROM events ORDER BY ts DESC LIMIT 5")
    rows = cur.fetchall()
    check("psycopg binary results",
          len(rows) == 5 and isinstance(rows[0][0], dt.datetime) and isinstance(rows[0][2], bool)
          and isinstance(rows[0][3], str), rows)
    desc = [(d.name, d.type_code) for d in cur.description]
    check("psycopg type oids", [t for _, t in desc] == [1114, 701, 16, 25, 701], desc)
    try:
        conn.execute("SELECT * FROM no_such_table")
        check("psycopg undefined table", False, "no error")
    except psycopg.errors.UndefinedTable as e:
        check("psycopg undefined table sqlstate 42P01", True, e)
    with conn.cursor() as c:
        c.execute("SELECT setting FROM pg_settings WHERE name = 'server_version'")
        check("psycopg pg_settings", c.fetchone()[0].startswith("16"))

# Cancel requests and statement_timeout stop a long query (a 400M-pair self-join).
import threading
import time

slow = "SELECT count(*) FROM events a, events b WHERE a.latency_ms > b.latency_ms"
with psycopg.connect(dsn, autocommit=True) as conn:
    threading.Timer(0.5, conn.cancel).start()
    started = time.time()
    try:
        conn.execute(slow)
        check("psycopg cancel", False, "the query finished")
    except psycopg.errors.QueryCanceled as e:
        check("psycopg cancel request stops the query", time.time() - started < 5, e)
    check("connection usable after cancel", conn.execute("SELECT 1").fetchone()[0] == 1)
    conn.execute("SET statement_timeout = 300")
    try:
        conn.execute(slow)
        check("statement_timeout", False, "the query finished")
    except psycopg.errors.QueryCanceled as e:
        check("statement_timeout ends the query with 57014", "timed out" in str(e), e)

with psycopg.connect(dsn) as conn:  # not autocommit: BEGIN ... COMMIT around queries
    n = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    check("psycopg in a transaction", n == total, n)
    conn.commit()

# --- psycopg2: client-side parameters over the simple protocol --------------------------
import psycopg2

conn = psycopg2.connect(dsn)
cur = conn.cursor()
cur.execute("SELECT count(*) FROM events WHERE country = %s AND is_bot = %s", (top, False))
n = cur.fetchone()[0]
check("psycopg2 parameters", 0 < n <= us, n)
cur.execute("SELECT max(ts) FROM events")
check("psycopg2 timestamp", isinstance(cur.fetchone()[0], dt.datetime))
conn.rollback()
conn.close()

# --- SQLAlchemy: dialect startup, reflection, text queries -------------------------------
import sqlalchemy as sa

url = f"postgresql+psycopg2://{user}{':' + password if password else ''}@{host}:{port}/analytics"
engine = sa.create_engine(url)
with engine.connect() as c:
    check("sqlalchemy count", c.execute(sa.text("SELECT count(*) FROM events")).scalar() == total)
    rows = c.execute(
        sa.text("SELECT device, avg(latency_ms) AS avg_latency FROM events "
                "WHERE country = :c GROUP BY device ORDER BY device"), {"c": top}).fetchall()
    check("sqlalchemy bound parameters", len(rows) > 0 and rows[0].avg_latency > 0, rows)
insp = sa.inspect(engine)
check("sqlalchemy table names", "events" in insp.get_table_names(), insp.get_table_names())
check("sqlalchemy has_table", insp.has_table("events") and not insp.has_table("nope"))
cols = {c["name"]: str(c["type"]) for c in insp.get_columns("events")}
check("sqlalchemy columns", cols.get("latency_ms") == "DOUBLE PRECISION"
      and cols.get("ts") == "TIMESTAMP" and cols.get("country") == "TEXT", cols)
events = sa.Table("events", sa.MetaData(), autoload_with=engine)
with engine.connect() as c:
    q = sa.select(events.c.country, sa.func.count().label("n")).where(
        events.c.latency_ms > 50).group_by(events.c.country).order_by(sa.desc("n")).limit(3)
    rows = c.execute(q).fetchall()
    check("sqlalchemy core select", len(rows) == 3, rows)

# --- Grafana: macro-expanded panel SQL, run as Grafana's data source runs it --------------
now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
frm = (now - dt.timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
to = (now + dt.timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
grafana = {
    "timeGroupAlias": f"""SELECT floor(extract(epoch from ts)/60)*60 AS "time", count(*) AS "events"
        FROM events WHERE ts BETWEEN '{frm}' AND '{to}' GROUP BY 1 ORDER BY 1""",
    "timeGroup + metric": f"""SELECT floor(extract(epoch from ts)/300)*300 AS time, device AS metric,
        avg(latency_ms) AS value FROM events WHERE ts BETWEEN '{frm}' AND '{to}'
        GROUP BY 1, 2 ORDER BY 1, 2""",
    "time column": f"""SELECT ts AS "time", latency_ms FROM events
        WHERE ts BETWEEN '{frm}' AND '{to}' ORDER BY 1 DESC LIMIT 10""",
    "timeEpoch": f"""SELECT extract(epoch from ts) AS "time", revenue FROM events
        WHERE ts BETWEEN '{frm}' AND '{to}' AND revenue > 0 ORDER BY 1 LIMIT 10""",
    # Grafana's query-builder pickers: its table list and column list, as Grafana sends them.
    "picker tables": """SELECT CASE WHEN quote_ident(table_schema) IN (
          SELECT CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
          FROM generate_series(
            array_lower(string_to_array(current_setting('search_path'),','),1),
            array_upper(string_to_array(current_setting('search_path'),','),1)) as i,
            string_to_array(current_setting('search_path'),',') s)
        THEN quote_ident(table_name)
        ELSE quote_ident(table_schema) || '.' || quote_ident(table_name) END AS "table"
        FROM information_schema.tables
        WHERE quote_ident(table_schema) NOT IN ('information_schema', 'pg_catalog',
          '_timescaledb_cache', '_timescaledb_catalog', '_timescaledb_internal',
          '_timescaledb_config', 'timescaledb_information', 'timescaledb_experimental')
        ORDER BY CASE WHEN quote_ident(table_schema) IN (
          SELECT CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
          FROM generate_series(
            array_lower(string_to_array(current_setting('search_path'),','),1),
            array_upper(string_to_array(current_setting('search_path'),','),1)) as i,
            string_to_array(current_setting('search_path'),',') s) THEN 0 ELSE 1 END, 1""",
    "picker columns": """SELECT quote_ident(column_name) AS "column", data_type AS "type"
        FROM information_schema.columns
        WHERE CASE WHEN array_length(parse_ident('public.events'),1) = 2
          THEN quote_ident(table_schema) = (parse_ident('public.events'))[1]
            AND quote_ident(table_name) = (parse_ident('public.events'))[2]
          ELSE quote_ident(table_name) = 'public.events'
            AND quote_ident(table_schema) IN (
            SELECT CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
            FROM generate_series(
              array_lower(string_to_array(current_setting('search_path'),','),1),
              array_upper(string_to_array(current_setting('search_path'),','),1)) as i,
              string_to_array(current_setting('search_path'),',') s)
        END""",
    # Table and column lists over information_schema, as Grafana's code-mode helpers ask.
    "information_schema table list": """SELECT quote_ident(table_name) AS "table" FROM information_schema.tables
        WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' ORDER BY 1""",
    "information_schema column list": """SELECT quote_ident(column_name) AS "column", data_type AS "type"
        FROM information_schema.columns WHERE quote_ident(table_name) = 'events'""",
}
with psycopg.connect(dsn, autocommit=True) as conn:
    for name, sql in grafana.items():
        rows = conn.execute(sql).fetchall()
        check(f"grafana {name}", len(rows) > 0, rows[:3])
        if name == "picker tables":
            check("grafana picker lists events unqualified", ("events",) in [tuple(r) for r in rows], rows)
        if name == "picker columns":
            check("grafana picker lists the columns", len(rows) == 13, rows)
        if name == "timeGroupAlias":
            times = [r[0] for r in rows]
            check("grafana series ordered by time", times == sorted(times), times[:5])
            check("grafana series sums to the range",
                  sum(r[1] for r in rows) <= total and sum(r[1] for r in rows) > 0)

passed("client")
