#!/usr/bin/env python3
"""JSON index benchmark: JSON_MATCH (and JSON_EXTRACT_SCALAR filters the index answers) over a
JSON attributes column against the same conditions through DuckDB's and ClickHouse's (chDB)
JSON functions on a string column, on the same generated events in the same run. Also
Basalt without the index (each value parsed), the index's cost (bytes against the raw column,
load time), and a GROUP BY over an extracted value, which no index serves.

Usage: python3 benches/json_index.py --basalt target/release/basalt --rows 5000000 [--runs 7]
Needs: pip install duckdb chdb. Every form of a query is checked to count the same rows. The
result cache is off for every Basalt query.
"""
import json, math, os, shutil, sys, tempfile, time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "macro"))
from run import bench_args, http, index_cost, load_table, median_ms, rss_kb, start_basalt  # noqa: E402

SPEC = {
    "name": "events",
    "time_column": "ts",
    "columns": [
        {"name": "ts", "type": "TIMESTAMP"},
        {"name": "kind", "type": "STRING", "index": ["inverted"]},
        {"name": "attrs", "type": "JSON", "index": ["json"]},
    ],
    "segment": {"max_rows": 1000000},
}

# Attributes: a browser (3 names, 25 versions), a user (near-unique id, a skewed country with
# one in 10,000 rows in 'is', premium one in 10), tags (one row in 1,000 has 'vip') and a score.
GEN = """
COPY (
  SELECT
    make_timestamp(1767225600000000 + i * 10000) AS ts,
    ['click', 'view', 'view', 'purchase'][1 + (hash(i) % 4)::BIGINT] AS kind,
    to_json({{
      'browser': {{'name': ['chrome', 'chrome', 'safari', 'firefox'][1 + (hash(i * 3) % 4)::BIGINT],
                  'version': 100 + (hash(i * 5) % 25)::INT}},
      'user': {{'id': 'u' || (hash(i * 7) % 2000000)::VARCHAR,
               'country': CASE WHEN hash(i * 11) % 10000 = 0 THEN 'is'
                               ELSE ['us', 'us', 'us', 'de', 'fr', 'in', 'br', 'jp', 'gb', 'ca'][1 + (hash(i * 13) % 10)::BIGINT] END,
               'premium': hash(i * 17) % 10 = 0}},
      'tags': CASE WHEN hash(i * 19) % 1000 = 0 THEN ['vip', 'new']
                   WHEN hash(i * 19) % 3 = 0 THEN ['new', 'sale'] ELSE ['sale'] END,
      'score': (hash(i * 23) % 1000)::DOUBLE / 10
    }})::VARCHAR AS attrs
  FROM range({rows}) t(i)
) TO '{out}' (FORMAT parquet)
"""

# (name, JSON_MATCH filter, DuckDB condition, chDB condition); {user} is one user's id.
QUERIES = [
    ("common value", "\"$.browser.name\" = ''safari''",
     "json_extract_string(attrs, '$.browser.name') = 'safari'",
     "JSONExtractString(attrs, 'browser', 'name') = 'safari'"),
    ("rare value", "\"$.user.country\" = ''is''",
     "json_extract_string(attrs, '$.user.country') = 'is'",
     "JSONExtractString(attrs, 'user', 'country') = 'is'"),
    ("one user", "\"$.user.id\" = ''{user}''",
     "json_extract_string(attrs, '$.user.id') = '{user}'",
     "JSONExtractString(attrs, 'user', 'id') = '{user}'"),
    ("numeric range", "\"$.browser.version\" >= 122",
     "CAST(json_extract(attrs, '$.browser.version') AS INTEGER) >= 122",
     "JSONExtractInt(attrs, 'browser', 'version') >= 122"),
    ("array element", "\"$.tags[*]\" = ''vip''",
     "list_contains(json_extract_string(attrs, '$.tags[*]'), 'vip')",
     "has(JSONExtract(attrs, 'tags', 'Array(String)'), 'vip')"),
    ("two paths AND", "\"$.user.premium\" = true AND \"$.browser.name\" = ''firefox''",
     "CAST(json_extract(attrs, '$.user.premium') AS BOOLEAN) AND json_extract_string(attrs, '$.browser.name') = 'firefox'",
     "JSONExtractBool(attrs, 'user', 'premium') AND JSONExtractString(attrs, 'browser', 'name') = 'firefox'"),
]

GROUP = {
    "basalt": "SELECT JSON_EXTRACT_SCALAR(attrs, '$.user.country', 'STRING') AS c, count(*) AS n FROM {t} GROUP BY 1 ORDER BY 1",
    "duckdb": "SELECT json_extract_string(attrs, '$.user.country') AS c, count(*) AS n FROM events GROUP BY 1 ORDER BY 1",
    "chdb": "SELECT JSONExtractString(attrs, 'user', 'country') AS c, count(*) AS n FROM events GROUP BY 1 ORDER BY 1",
}


def main():
    a = bench_args(18297)
    import duckdb
    from chdb import session as chs

    work = tempfile.mkdtemp(prefix="basalt-json-")
    pq = os.path.join(work, "events.parquet")
    con = duckdb.connect(os.path.join(work, "duck.db"))
    t = time.time()
    con.execute(GEN.format(rows=a.rows, out=pq))
    print(f"generated {a.rows} events in {time.time() - t:.1f}s")
    raw = con.execute(f"SELECT sum(strlen(attrs)) FROM read_parquet('{pq}')").fetchone()[0]
    user = con.execute(f"SELECT json_extract_string(attrs, '$.user.id') FROM read_parquet('{pq}') LIMIT 1 OFFSET 12345").fetchone()[0]
    srv, base = start_basalt(a.basalt, work, a.port)
    try:
        loads = {}
        for name, indexed in (("events_plain", False), ("events", True)):
            s = json.loads(json.dumps(SPEC))
            s["name"] = name
            if not indexed:
                s["columns"][2]["index"] = []
            loads[name] = load_table(base, s, pq)
        index_cost("JSON index", loads["events_plain"], loads["events"], raw)
        t = time.time()
        con.execute(f"CREATE TABLE events AS SELECT * FROM read_parquet('{pq}')")
        print(f"duckdb loaded in {time.time() - t:.1f}s")
        sess = chs.Session(os.path.join(work, "chdb"))
        t = time.time()
        sess.query("CREATE TABLE events (ts DateTime64(6), kind String, attrs String) ENGINE = MergeTree ORDER BY ts")
        sess.query(f"INSERT INTO events SELECT * FROM file('{pq}', Parquet)")
        print(f"chdb loaded in {time.time() - t:.1f}s")

        def basalt(sql):
            v = http(base + "/query/sql", json.dumps({"sql": sql, "queryOptions": "useResultCache=false"}).encode())
            if v.get("exceptions"):
                raise RuntimeError(f"{sql}: {v['exceptions']}")
            return v["resultTable"]["rows"]

        cols = ["JSON_MATCH", "no index", "duckdb", "chdb"]
        print(f"\n{'query':16} {'rows':>9} " + " ".join(f"{c:>10}" for c in cols) + "  ratio")
        ratios = []
        for name, jm, duck, ch in QUERIES:
            jm, duck, ch = (x.replace("{user}", user) for x in (jm, duck, ch))
            match_sql = f"SELECT count(*) FROM events WHERE JSON_MATCH(attrs, '{jm}')"
            plain_sql = f"SELECT count(*) FROM events_plain WHERE JSON_MATCH(attrs, '{jm}')"
            duck_sql = f"SELECT count(*) FROM events WHERE {duck}"
            ch_sql = f"SELECT count(*) FROM events WHERE {ch}"
            n = basalt(match_sql)[0][0]
            counts = [n, basalt(plain_sql)[0][0], con.execute(duck_sql).fetchone()[0], int(sess.query(ch_sql, "CSV").bytes())]
            assert len(set(counts)) == 1, (name, counts)
            res = [
                median_ms(lambda: basalt(match_sql), a.runs),
                median_ms(lambda: basalt(plain_sql), a.runs),
                median_ms(lambda: con.execute(duck_sql).fetchall(), a.runs),
                median_ms(lambda: sess.query(ch_sql, "CSV"), a.runs),
            ]
            ratio = res[0] / min(res[2:])
            ratios.append(ratio)
            print(f"{name:16} {n:9d} " + " ".join(f"{r:10.1f}" for r in res) + f"  {ratio:5.2f}")
        # JSON_EXTRACT_SCALAR = 'x' is pushed to the same index.
        ex_sql = "SELECT count(*) FROM events WHERE JSON_EXTRACT_SCALAR(attrs, '$.user.country', 'STRING') = 'is'"
        print(f"{'extract = (idx)':16} {basalt(ex_sql)[0][0]:9d} {median_ms(lambda: basalt(ex_sql), a.runs):10.1f}")
        # GROUP BY an extracted value: every engine parses every value.
        want = [[c, n] for c, n in con.execute(GROUP["duckdb"]).fetchall()]
        assert basalt(GROUP["basalt"].format(t="events")) == want
        res = [
            median_ms(lambda: basalt(GROUP["basalt"].format(t="events")), a.runs),
            median_ms(lambda: con.execute(GROUP["duckdb"]).fetchall(), a.runs),
            median_ms(lambda: sess.query(GROUP["chdb"], "CSV"), a.runs),
        ]
        print(f"{'group by extract':16} {len(want):9d} {res[0]:10.1f} {'':>10} {res[1]:10.1f} {res[2]:10.1f}  {res[0]/min(res[1:]):5.2f}")
        geo = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
        print(f"\ngeometric mean of JSON_MATCH / fastest peer (filters): {geo:.2f}  (rows={a.rows}, runs={a.runs}, median ms); "
              f"RSS {rss_kb(srv.pid)/1024:.0f} MB")
    finally:
        srv.terminate()
        srv.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
