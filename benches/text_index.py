#!/usr/bin/env python3
"""Text index benchmark: TEXT_MATCH over a log-message column against LIKE '%term%' in Basalt,
DuckDB and ClickHouse (chDB: LIKE, hasToken, and hasToken on a table with a tokenbf_v1 skip
index), on the same generated log events in the same run. Also the index's cost: bytes added
to the segments (against the raw column) and load time added.

Usage: python3 benches/text_index.py --basalt target/release/basalt --rows 10000000 [--runs 7]
Needs: pip install duckdb chdb. Messages are lowercase, and the searched words are whole words
that are not part of other words, so every form counts the same rows (checked). The result
cache is off for every Basalt query.
"""
import json, math, os, shutil, sys, tempfile, time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "macro"))
from run import bench_args, http, index_cost, load_table, median_ms, rss_kb, start_basalt  # noqa: E402

SPEC = {
    "name": "logs",
    "time_column": "ts",
    "columns": [
        {"name": "ts", "type": "TIMESTAMP"},
        {"name": "level", "type": "STRING", "index": ["inverted"]},
        {"name": "service", "type": "STRING", "index": ["inverted"]},
        {"name": "message", "type": "STRING", "index": ["text"]},
        {"name": "agent", "type": "STRING"},
    ],
    "segment": {"max_rows": 1000000},
}

# Log lines: a request line, a trace id (near-unique), and an event phrase with skewed
# frequencies (the rarest about 1 in 10,000 lines).
GEN = """
COPY (
  SELECT
    make_timestamp(1767225600000000 + i * 10000) AS ts,
    ['info', 'info', 'info', 'warn', 'error', 'debug'][1 + (hash(i) % 6)::BIGINT] AS level,
    ['checkout', 'payments', 'search', 'auth', 'catalog'][1 + (hash(i * 3) % 5)::BIGINT] AS service,
    concat(
      ['get', 'post', 'put', 'delete'][1 + (hash(i * 5) % 4)::BIGINT], ' /api/v1/',
      ['orders', 'users', 'carts', 'items', 'sessions', 'invoices'][1 + (hash(i * 7) % 6)::BIGINT], '/',
      (hash(i * 11) % 100000)::VARCHAR, ' status ',
      ['200', '200', '200', '201', '404', '500', '503'][1 + (hash(i * 13) % 7)::BIGINT],
      ' in ', (hash(i * 17) % 900)::VARCHAR, 'ms trace ', printf('%x', hash(i * 19) % 4294967296),
      ' ',
      CASE
        WHEN hash(i * 23) % 10000 = 0 THEN 'oomkiller invoked on worker'
        WHEN hash(i * 23) % 100 < 10 THEN 'upstream timeout waiting for payments gateway'
        WHEN hash(i * 23) % 100 < 15 THEN 'connection reset by peer'
        WHEN hash(i * 23) % 100 < 20 THEN 'user login failed bad password'
        WHEN hash(i * 23) % 100 < 30 THEN 'cache miss for key'
        WHEN hash(i * 23) % 100 < 33 THEN 'disk nearly full on volume data'
        ELSE 'request served'
      END) AS message,
    ['mozilla/5.0 (windows nt 10.0; win64; x64) chrome/120.0',
     'mozilla/5.0 (macintosh; intel mac os x 14_1) safari/605.1',
     'mozilla/5.0 (linux; android 14) chrome/119.0 mobile',
     'curl/8.4.0', 'python-requests/2.31'][1 + (hash(i * 29) % 5)::BIGINT] AS agent
  FROM range({rows}) t(i)
) TO '{out}' (FORMAT parquet)
"""

# (name, TEXT_MATCH query, LIKE condition, ClickHouse hasToken condition); {t} is the table.
QUERIES = [
    ("rare word", "oomkiller", "message LIKE '%oomkiller%'", "hasToken(message, 'oomkiller')"),
    ("common word", "timeout", "message LIKE '%timeout%'", "hasToken(message, 'timeout')"),
    ("phrase", '"connection reset"', "message LIKE '%connection reset%'",
     "hasToken(message, 'connection') AND hasToken(message, 'reset') AND message LIKE '%connection reset%'"),
    ("two words AND", "payments AND timeout", "message LIKE '%payments%' AND message LIKE '%timeout%'",
     "hasToken(message, 'payments') AND hasToken(message, 'timeout')"),
    ("word OR word", "oomkiller OR password", "(message LIKE '%oomkiller%' OR message LIKE '%password%')",
     "(hasToken(message, 'oomkiller') OR hasToken(message, 'password'))"),
    ("one trace id", "{trace}", "message LIKE '%trace {trace} %'", "hasToken(message, '{trace}')"),
]


def main():
    a = bench_args(18298)
    import duckdb
    from chdb import session as chs

    work = tempfile.mkdtemp(prefix="basalt-text-")
    pq = os.path.join(work, "logs.parquet")
    con = duckdb.connect(os.path.join(work, "duck.db"))
    t = time.time()
    con.execute(GEN.format(rows=a.rows, out=pq))
    print(f"generated {a.rows} log lines in {time.time() - t:.1f}s")
    raw = con.execute(f"SELECT sum(strlen(message)) FROM read_parquet('{pq}')").fetchone()[0]
    # A trace id with a letter (an all-digit one could also be a path id or a duration).
    trace = con.execute(f"SELECT tr FROM (SELECT split_part(split_part(message, 'trace ', 2), ' ', 1) AS tr "
                        f"FROM read_parquet('{pq}') LIMIT 10000) WHERE regexp_matches(tr, '^[0-9a-f]*[a-f][0-9a-f]*$') "
                        f"AND length(tr) >= 6 LIMIT 1").fetchone()[0]
    srv, base = start_basalt(a.basalt, work, a.port)
    try:
        loads = {}
        for name, text in (("logs_plain", False), ("logs", True)):
            s = json.loads(json.dumps(SPEC))
            s["name"] = name
            if not text:
                s["columns"][3]["index"] = []
            loads[name] = load_table(base, s, pq)
        index_cost("text index", loads["logs_plain"], loads["logs"], raw)
        con.execute(f"CREATE TABLE logs AS SELECT * FROM read_parquet('{pq}')")
        sess = chs.Session(os.path.join(work, "chdb"))
        cols = "ts DateTime64(6), level String, service String, message String, agent String"
        for table, extra in (("logs", ""), ("logs_bf", ", INDEX tok message TYPE tokenbf_v1(32768, 3, 0) GRANULARITY 1")):
            t = time.time()
            sess.query(f"CREATE TABLE {table} ({cols}{extra}) ENGINE = MergeTree ORDER BY ts")
            sess.query(f"INSERT INTO {table} SELECT * FROM file('{pq}', Parquet)")
            print(f"chdb {table} loaded in {time.time() - t:.1f}s")

        def basalt(sql):
            v = http(base + "/query/sql", json.dumps({"sql": sql, "queryOptions": "useResultCache=false"}).encode())
            if v.get("exceptions"):
                raise RuntimeError(f"{sql}: {v['exceptions']}")
            return v["resultTable"]["rows"][0][0]

        cols = ["TEXT_MATCH", "b. LIKE", "duckdb", "chdb LIKE", "hasToken", "tokenbf"]
        print(f"\n{'query':16} {'rows':>9} " + " ".join(f"{c:>10}" for c in cols) + "  ratio")
        ratios = []
        for name, tq, like, token in QUERIES:
            tq, like, token = (x.replace("{trace}", trace) for x in (tq, like, token))
            text_sql = f"SELECT count(*) FROM logs WHERE TEXT_MATCH(message, '{tq}')"
            like_b = f"SELECT count(*) FROM logs_plain WHERE {like}"
            like_sql = f"SELECT count(*) FROM logs WHERE {like}"
            tok_sql = f"SELECT count(*) FROM logs WHERE {token}"
            bf_sql = f"SELECT count(*) FROM logs_bf WHERE {token}"
            n = basalt(text_sql)
            counts = [n, basalt(like_b), con.execute(like_sql).fetchone()[0],
                      int(sess.query(like_sql, "CSV").bytes()), int(sess.query(tok_sql, "CSV").bytes()),
                      int(sess.query(bf_sql, "CSV").bytes())]
            assert len(set(counts)) == 1, (name, counts)
            res = [
                median_ms(lambda: basalt(text_sql), a.runs),
                median_ms(lambda: basalt(like_b), a.runs),
                median_ms(lambda: con.execute(like_sql).fetchall(), a.runs),
                median_ms(lambda: sess.query(like_sql, "CSV"), a.runs),
                median_ms(lambda: sess.query(tok_sql, "CSV"), a.runs),
                median_ms(lambda: sess.query(bf_sql, "CSV"), a.runs),
            ]
            ratio = res[0] / min(res[2:])
            ratios.append(ratio)
            print(f"{name:16} {n:9d} " + " ".join(f"{r:10.1f}" for r in res) + f"  {ratio:5.2f}")
        geo = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
        print(f"\ngeometric mean of TEXT_MATCH / fastest peer form: {geo:.2f}  (rows={a.rows}, runs={a.runs}, median ms); "
              f"RSS {rss_kb(srv.pid)/1024:.0f} MB")
    finally:
        srv.terminate()
        srv.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
