#!/usr/bin/env python3
"""The semantic layer through psycopg 3: `MEASURE()` SQL over `semantic.<model>` equals the
hand-written SQL over the table (simple and extended protocol, a bound parameter), and an
unknown measure is SQLSTATE 42703 naming it.

Usage: semantic_psycopg.py HOST PORT
Expects the `events` table and the `events` model of tests/e2e/semantic.rs. Run by that test.
"""
import sys

import psycopg

from checks import check, passed

host, port = sys.argv[1], int(sys.argv[2])
dsn = f"host={host} port={port} user=basalt dbname=analytics"


def close(a, b):
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))
    return a == b


def same(rows_a, rows_b):
    return len(rows_a) == len(rows_b) and all(
        len(x) == len(y) and all(close(p, q) for p, q in zip(x, y)) for x, y in zip(rows_a, rows_b)
    )


pairs = [
    (
        "SELECT device, MEASURE(purchases), MEASURE(revenue), MEASURE(users) FROM semantic.events "
        "GROUP BY 1 ORDER BY 1",
        "SELECT device, sum(CASE WHEN event_type = 'purchase' THEN 1 ELSE 0 END), "
        "sum(CASE WHEN event_type = 'purchase' THEN revenue END), approx_distinct(user_id) "
        "FROM events GROUP BY 1 ORDER BY 1",
    ),
    (
        "SELECT date_trunc('day', ts) AS day, MEASURE(conversion) FROM semantic.events "
        "WHERE country = %s GROUP BY 1 ORDER BY 1",
        "SELECT date_trunc('day', ts) AS day, CAST(sum(CASE WHEN event_type = 'purchase' THEN 1 ELSE 0 END) AS DOUBLE) "
        "/ nullif(CAST(approx_distinct(session_id) AS DOUBLE), 0) FROM events WHERE country = %s GROUP BY 1 ORDER BY 1",
    ),
]

with psycopg.connect(dsn, autocommit=True) as conn:
    for i, (semantic, reference) in enumerate(pairs):
        args = ("AA",) if "%s" in semantic else None
        got = conn.execute(semantic, args).fetchall()
        want = conn.execute(reference, args).fetchall()
        check(f"semantic query {i} has rows", len(want) > 0, want)
        check(f"semantic query {i} equals the hand-written SQL", same(got, want), (got, want))
    # Binary results of the extended protocol, as drivers fetch them.
    with conn.cursor(binary=True) as cur:
        cur.execute(pairs[0][0])
        got = cur.fetchall()
        cur.execute(pairs[0][1])
        check("binary results equal", same(got, cur.fetchall()), got)
    try:
        conn.execute("SELECT MEASURE(profit) FROM semantic.events")
        check("unknown measure is an error", False, "no error")
    except psycopg.errors.UndefinedColumn as e:
        check("unknown measure is 42703 naming it", "profit" in str(e), e)

passed("semantic psycopg")
