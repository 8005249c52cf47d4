"""The warehouse tier against independent references (run by tests/e2e/warehouse.rs).

compare: 15 queries spanning both tiers, answered by Basalt over HTTP, against DuckDB over
  the Parquet file every row came from; then the readers check below for the cold range.
make-external / append-external: an Iceberg table written by pyiceberg (`lake.orders`), for
  a Basalt table over it (`source.iceberg`); prints its row count, amount and rows per
  customer as JSON.
readers: the tiered Iceberg table read by pyiceberg (SqlCatalog on the same SQLite file)
  and by DuckDB's iceberg_scan on its metadata file: row counts, distinct event ids and rows
  per device equal what Basalt reports for the range below the boundary (--expect-rows).
  With --rest URI the table is in a REST catalog (credential in ICEBERG_REST_CREDENTIAL,
  files in S3 at AWS_ENDPOINT): pyiceberg's RestCatalog reads it (DuckDB's iceberg_scan
  would need its httpfs extension, which is not packaged on PyPI).

Needs duckdb==1.5.5 with duckdb-extension-iceberg==1.5.5 and duckdb-extension-avro==1.5.5,
and pyiceberg[sql-sqlite,pyarrow].
"""

import argparse
import glob
import json
import os
import sys
import urllib.request

import duckdb


def basalt(url, sql):
    req = urllib.request.Request(
        url + "/query/sql",
        data=json.dumps({"sql": sql}).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        v = json.load(r)
    if v.get("exceptions"):
        sys.exit(f"basalt failed {sql!r}: {v['exceptions']}")
    return [tuple(row) for row in v["resultTable"]["rows"]], v


def close(a, b, tol):
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(a - b) <= tol * max(abs(a), abs(b), 1.0)
    return a == b


def same(rows_a, rows_b, tol):
    return len(rows_a) == len(rows_b) and all(
        len(x) == len(y) and all(close(p, q, tol) for p, q in zip(x, y))
        for x, y in zip(rows_a, rows_b)
    )


def cold_and_boundary(url, table):
    with urllib.request.urlopen(f"{url}/tables/{table}", timeout=30) as r:
        w = json.load(r)["warehouse"]
    if w is None or w["boundary"] is None:
        sys.exit(f"table {table} has not tiered: {w}")
    return w


def queries(boundary_ms, now_ms):
    """(name, Basalt SQL, DuckDB SQL, relative tolerance) over `events`."""
    day = 86_400_000

    def ts(ms):
        return f"to_timestamp_millis({ms})"

    def dts(ms):
        return f"make_timestamp({ms * 1000})"

    b, n = boundary_ms, now_ms
    q = []  # (name, Basalt SQL, DuckDB SQL, tolerance)

    def both(name, sql, tol=0.0):
        """`sql` is a function of the timestamp-literal function."""
        basalt_sql = sql(ts) if callable(sql) else sql
        duck_sql = sql(dts) if callable(sql) else sql
        duck_sql = duck_sql.replace("approx_distinct(", "count(DISTINCT ")
        duck_sql = duck_sql.replace("approx_percentile_cont(", "quantile_cont(")
        q.append((name, basalt_sql, duck_sql, tol))

    both("count all", "SELECT count(*) FROM events")
    both("sum all", "SELECT round(sum(revenue), 2) FROM events", 1e-9)
    both("cold count", lambda t: f"SELECT count(*) FROM events WHERE ts < {t(b - day)}")
    both("hot count", lambda t: f"SELECT count(*) FROM events WHERE ts >= {t(n - day)}")
    both(
        "group by device",
        "SELECT device, count(*) FROM events GROUP BY device ORDER BY device",
    )
    both(
        "filtered group by",
        "SELECT event_type, count(*), round(sum(revenue), 2) FROM events "
        "WHERE country = 'AA' GROUP BY event_type ORDER BY event_type",
        1e-9,
    )
    both(
        "daily series",
        "SELECT extract(month FROM ts) * 100 + extract(day FROM ts) AS d, count(*) "
        "FROM events GROUP BY 1 ORDER BY 1",
    )
    both("distinct users", "SELECT approx_distinct(user_id) FROM events", 0.03)
    both(
        "distinct sessions by device",
        "SELECT device, approx_distinct(session_id) FROM events GROUP BY device ORDER BY device",
        0.03,
    )
    both(
        "p95 latency",
        "SELECT approx_percentile_cont(latency_ms, 0.95) FROM events",
        0.03,
    )
    both(
        "p50 latency by device",
        "SELECT device, approx_percentile_cont(latency_ms, 0.5) FROM events "
        "GROUP BY device ORDER BY device",
        0.03,
    )
    both(
        "cold filter",
        lambda t: "SELECT count(*), round(sum(revenue), 2) FROM events "
        f"WHERE ts >= {t(b - 3 * day)} AND ts < {t(b - day)} AND device = 'mobile'",
        1e-9,
    )
    both(
        "range across the boundary",
        lambda t: "SELECT count(*), round(sum(revenue), 2) FROM events "
        f"WHERE ts >= {t(b - day // 2)} AND ts < {t(b + day // 2)}",
        1e-9,
    )
    both(
        "average by country",
        "SELECT country, round(avg(latency_ms), 6) FROM events GROUP BY country "
        "ORDER BY country LIMIT 10",
        1e-9,
    )
    both(
        "top users",
        "SELECT user_id, count(*) AS n FROM events GROUP BY user_id "
        "ORDER BY n DESC, user_id LIMIT 5",
    )
    return q


def compare(args):
    w = cold_and_boundary(args.basalt, "events")
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"CREATE VIEW events AS SELECT * FROM read_parquet('{args.parquet}')")
    failures = []
    for name, bsql, dsql, tol in queries(w["boundary"], args.now_ms):
        got, _ = basalt(args.basalt, bsql)
        want = [tuple(r) for r in con.execute(dsql).fetchall()]
        want = [tuple(float(v) if hasattr(v, "as_tuple") else v for v in r) for r in want]
        if not same(got, want, tol):
            failures.append(f"{name}: basalt {got[:5]} duckdb {want[:5]}\n  {bsql}\n  {dsql}")
    if failures:
        sys.exit("queries differ:\n" + "\n".join(failures))
    print(f"{len(queries(0, 0))} queries across both tiers equal DuckDB")
    readers(args, w)


def iceberg_extension(con):
    """Loads DuckDB's avro and iceberg extensions from their PyPI packages (no download)."""
    import duckdb_extension_avro
    import duckdb_extension_iceberg

    con.execute("SET autoinstall_known_extensions = false")
    for mod, name in [(duckdb_extension_avro, "avro"), (duckdb_extension_iceberg, "iceberg")]:
        root = os.path.dirname(mod.__file__)
        ext = glob.glob(os.path.join(root, "extensions", "*", f"{name}.duckdb_extension"))
        if not ext:
            sys.exit(f"no {name}.duckdb_extension under {root}")
        con.execute(f"LOAD '{ext[0]}'")


def catalog(args):
    """The catalog Basalt tiered into: the SQL catalog's SQLite file, or a REST catalog."""
    if args.rest:
        from pyiceberg.catalog import load_catalog

        return load_catalog(
            "rest",
            type="rest",
            uri=args.rest,
            credential=os.environ["ICEBERG_REST_CREDENTIAL"],
            warehouse=args.warehouse,
            **{
                "s3.endpoint": os.environ["AWS_ENDPOINT"],
                "s3.access-key-id": os.environ["AWS_ACCESS_KEY_ID"],
                "s3.secret-access-key": os.environ["AWS_SECRET_ACCESS_KEY"],
                "s3.region": os.environ.get("AWS_REGION", "us-east-1"),
            },
        )
    from pyiceberg.catalog.sql import SqlCatalog

    return SqlCatalog(
        "default", uri=f"sqlite:///{args.catalog}", warehouse=f"file://{args.warehouse}"
    )


def readers(args, w=None):
    w = w or cold_and_boundary(args.basalt, "events")
    boundary = w["boundary"]
    cold, _ = basalt(
        args.basalt,
        f"SELECT count(*), count(DISTINCT event_id) FROM events WHERE ts < to_timestamp_millis({boundary})",
    )
    by_device, _ = basalt(
        args.basalt,
        f"SELECT device, count(*) FROM events WHERE ts < to_timestamp_millis({boundary}) "
        "GROUP BY device ORDER BY device",
    )
    expect = args.expect_rows if args.expect_rows is not None else cold[0][0]
    if cold[0][0] != expect or cold[0][1] != expect:
        sys.exit(f"basalt's cold range has {cold[0]} rows/distinct ids, expected {expect}")
    if w["rows"] != expect:
        sys.exit(f"GET /tables/events says {w['rows']} rows tiered, expected {expect}")

    table = catalog(args).load_table(args.iceberg)
    snap = table.current_snapshot()
    if snap is None or snap.snapshot_id != w["snapshot_id"]:
        sys.exit(f"pyiceberg's current snapshot {snap} is not the pinned {w['snapshot_id']}")
    t = table.scan().to_arrow()
    ids = t.column("event_id").to_pylist()
    if len(ids) != expect or len(set(ids)) != expect:
        sys.exit(f"pyiceberg reads {len(ids)} rows, {len(set(ids))} distinct, expected {expect}")
    import pyarrow.compute as pc

    counts = t.group_by("device").aggregate([("device", "count")]).sort_by("device")
    py_devices = list(zip(counts.column("device").to_pylist(), counts.column("device_count").to_pylist()))
    if py_devices != [tuple(r) for r in by_device]:
        sys.exit(f"rows per device: pyiceberg {py_devices}, basalt {by_device}")
    if pc.max(t.column("ts")).value // 1000 >= boundary:
        sys.exit("pyiceberg reads a row at or after the boundary")

    if args.rest:
        print(f"pyiceberg's RestCatalog reads {expect} tiered rows as Basalt does")
        print("warehouse checks passed")
        return
    con = duckdb.connect()
    iceberg_extension(con)
    meta = table.metadata_location
    n, distinct = con.execute(
        f"SELECT count(*), count(DISTINCT event_id) FROM iceberg_scan('{meta}')"
    ).fetchone()
    if (n, distinct) != (expect, expect):
        sys.exit(f"DuckDB iceberg_scan reads {n} rows, {distinct} distinct, expected {expect}")
    duck_devices = con.execute(
        f"SELECT device, count(*) FROM iceberg_scan('{meta}') GROUP BY device ORDER BY device"
    ).fetchall()
    if duck_devices != [tuple(r) for r in by_device]:
        sys.exit(f"rows per device: DuckDB {duck_devices}, basalt {by_device}")
    print(f"pyiceberg and DuckDB read {expect} tiered rows as Basalt does")
    print("warehouse checks passed")


def external(args):
    """Writes `lake.orders` with pyiceberg (a table Basalt did not write) and prints what it
    holds; `append` adds rows to it."""
    import datetime
    import decimal

    import pyarrow as pa
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.schema import Schema
    from pyiceberg.types import (DateType, DecimalType, DoubleType, LongType, NestedField,
                                 StringType, TimestampType)

    catalog = SqlCatalog(
        "default", uri=f"sqlite:///{args.catalog}", warehouse=f"file://{args.warehouse}"
    )
    schema = Schema(
        NestedField(1, "id", LongType(), required=True),
        NestedField(2, "customer", StringType(), required=False),
        NestedField(3, "amount", DoubleType(), required=False),
        NestedField(4, "ordered_at", TimestampType(), required=False),
        NestedField(5, "day", DateType(), required=False),
        NestedField(6, "price", DecimalType(10, 2), required=False),
    )
    if args.mode == "make-external":
        catalog.create_namespace_if_not_exists("lake")
        table = catalog.create_table("lake.orders", schema=schema)
        first, n = 0, 5000
    else:
        table = catalog.load_table("lake.orders")
        first, n = 5000, 1000
    base = datetime.datetime(2026, 11, 1)
    ids = list(range(first, first + n))
    data = pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "customer": pa.array([f"c{i % 7}" for i in ids]),
            "amount": pa.array([(i % 100) * 1.25 for i in ids], pa.float64()),
            "ordered_at": pa.array([base + datetime.timedelta(minutes=i) for i in ids], pa.timestamp("us")),
            "day": pa.array([(base + datetime.timedelta(minutes=i)).date() for i in ids], pa.date32()),
            "price": pa.array([decimal.Decimal(i % 1000) / 100 for i in ids], pa.decimal128(10, 2)),
        },
        schema=schema.as_arrow(),
    )
    table.append(data)
    t = table.scan().to_arrow()
    amount = round(sum(v for v in t.column("amount").to_pylist()), 2)
    counts = {}
    for c in t.column("customer").to_pylist():
        counts[c] = counts.get(c, 0) + 1
    print(json.dumps({"rows": t.num_rows, "amount": amount,
                      "by_customer": sorted([k, v] for k, v in counts.items())}))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["compare", "readers", "make-external", "append-external"])
    p.add_argument("--basalt")
    p.add_argument("--catalog", help="the SQL catalog's SQLite file")
    p.add_argument("--rest", help="a REST catalog's URI (instead of --catalog)")
    p.add_argument("--warehouse", required=True, help="the warehouse directory (REST: s3://bucket)")
    p.add_argument("--iceberg", default="analytics.events")
    p.add_argument("--parquet")
    p.add_argument("--now-ms", type=int, default=0)
    p.add_argument("--expect-rows", type=int)
    args = p.parse_args()
    if args.mode == "compare":
        compare(args)
    elif args.mode == "readers":
        readers(args)
    else:
        external(args)


if __name__ == "__main__":
    main()
