#!/usr/bin/env python3
"""Star-tree benchmark: the dashboard GROUP BYs a star-tree covers, on the same generated
events in Basalt (one table with the tree, one without), DuckDB and ClickHouse (chDB), in the
same run. Also the tree's cost: bytes added to the segments and load time added.

Usage: python3 benches/star_tree.py --basalt target/release/basalt --rows 10000000 [--runs 7]
Needs: pip install duckdb chdb. Per query it prints the median latency of Basalt answering
from the tree, Basalt on the same table with `useStarTree=false` (the rows), DuckDB and chDB,
and Basalt's ratio to the fastest peer; both Basalt answers are checked to be equal. The
result cache is off for every Basalt query.
"""
import json, math, os, shutil, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "macro"))
from run import bench_args, http, index_cost, load_table, median_ms, rss_kb, start_basalt  # noqa: E402

TREE = {
    "dimensions": ["country", "device", "event_type"],
    "metrics": ["count(*)", "sum(revenue)", "approx_distinct(user_id)", "max(latency_ms)"],
    "max_leaf_records": 10000,
}

QUERIES = [
    ("revenue by country", "SELECT country, count(*) AS n, sum(revenue) AS rev FROM {t} GROUP BY country ORDER BY rev DESC NULLS LAST, country LIMIT 10"),
    ("device x event type, 3 countries", "SELECT device, event_type, count(*) AS n FROM {t} WHERE country IN ('US', 'FR', 'DE') GROUP BY device, event_type ORDER BY n DESC, device, event_type"),
    ("approx distinct users by country", "SELECT country, {hll} AS users FROM {t} GROUP BY country ORDER BY users DESC, country LIMIT 10"),
    ("max latency by type, mobile", "SELECT event_type, max(latency_ms) AS m FROM {t} WHERE device = 'mobile' GROUP BY event_type ORDER BY event_type"),
    ("avg revenue by device, last day", "SELECT device, avg(revenue) AS r FROM {t} WHERE ts >= {now} - INTERVAL '1 day' GROUP BY device ORDER BY device"),
    ("rare combination count", "SELECT event_type, count(*) AS n FROM {t} WHERE country = 'BD' AND device = 'tv' GROUP BY event_type ORDER BY event_type"),
]

HLL = {"basalt": "approx_distinct(user_id)", "duckdb": "approx_count_distinct(user_id)", "chdb": "uniq(user_id)"}


def rounded(rows):
    out = []
    for r in rows:
        out.append([round(x, 6) if isinstance(x, float) else x for x in r])
    return sorted(json.dumps(r) for r in out)


def main():
    a = bench_args(18299)
    import duckdb
    from chdb import session as chs

    work = tempfile.mkdtemp(prefix="basalt-star-")
    pq = os.path.join(work, "events.parquet")
    subprocess.run([a.basalt, "gen-events", "--rows", str(a.rows), "--format", "parquet", "--out", pq], check=True)
    now_ms = int(time.time() * 1000)
    srv, base = start_basalt(a.basalt, work, a.port)
    try:
        spec = json.loads(subprocess.run([a.basalt, "gen-events", "--rows", "0", "--out", "/dev/null", "--print-spec"],
                                         capture_output=True, text=True, check=True).stdout)
        loads = {}
        for name, tree in (("events", None), ("events_st", TREE)):
            s = dict(spec, name=name)
            if tree:
                s["star_tree"] = [tree]
            loads[name] = load_table(base, s, pq)
        index_cost("star-tree", loads["events"], loads["events_st"])
        con = duckdb.connect(os.path.join(work, "duck.db"))
        con.execute(f"CREATE TABLE events AS SELECT * FROM read_parquet('{pq}')")
        sess = chs.Session(os.path.join(work, "chdb"))
        sess.query("CREATE TABLE events ENGINE = MergeTree ORDER BY ts AS SELECT * FROM file('%s', Parquet)" % pq)
        now = {"basalt": f"to_timestamp_millis({now_ms})", "duckdb": f"make_timestamp({now_ms * 1000})", "chdb": f"fromUnixTimestamp64Milli({now_ms})"}

        def basalt(sql, options):
            v = http(base + "/query/sql", json.dumps({"sql": sql, "queryOptions": options}).encode())
            if v.get("exceptions"):
                raise RuntimeError(f"{sql}: {v['exceptions']}")
            return v

        print(f"\n{'query':36} {'tree ms':>8} {'rows ms':>8} {'duckdb':>8} {'chdb':>8} {'ratio':>6}  records/rows read")
        ratios = []
        for name, q in QUERIES:
            sql = q.format(t="events_st", now=now["basalt"], hll=HLL["basalt"])
            tree = basalt(sql, "useResultCache=false")
            raw = basalt(sql, "useResultCache=false;useStarTree=false")
            assert rounded(tree["resultTable"]["rows"]) == rounded(raw["resultTable"]["rows"]), (name, tree, raw)
            res = {
                "tree": median_ms(lambda: basalt(sql, "useResultCache=false"), a.runs),
                "rows": median_ms(lambda: basalt(sql, "useResultCache=false;useStarTree=false"), a.runs),
            }
            dsql = q.format(t="events", now=now["duckdb"], hll=HLL["duckdb"])
            res["duckdb"] = median_ms(lambda: con.execute(dsql).fetchall(), a.runs)
            csql = q.format(t="events", now=now["chdb"], hll=HLL["chdb"]).replace("INTERVAL '1 day'", "INTERVAL 1 DAY")
            res["chdb"] = median_ms(lambda: sess.query(csql, "CSV"), a.runs)
            ratio = res["tree"] / min(res["duckdb"], res["chdb"])
            ratios.append(ratio)
            print(f"{name:36} {res['tree']:8.1f} {res['rows']:8.1f} {res['duckdb']:8.1f} {res['chdb']:8.1f} {ratio:6.2f}  "
                  f"{tree['numDocsScanned']}/{raw['numDocsScanned']} ({tree['numSegmentsStarTree']} segments from the tree)")
        geo = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
        print(f"\ngeometric mean of basalt (tree) / fastest peer: {geo:.2f}  (rows={a.rows}, runs={a.runs}, median); RSS {rss_kb(srv.pid)/1024:.0f} MB")
    finally:
        srv.terminate()
        srv.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
