"""The check helper of the client scripts: prints `ok NAME`, or `FAILED NAME: DETAIL` and
exits 1 at the first failure; `passed(what)` prints the closing line the e2e tests look for.
"""
import sys

count = 0


def check(name, cond, detail=""):
    global count
    count += 1
    if not cond:
        print(f"FAILED {name}: {detail}", flush=True)
        sys.exit(1)
    print(f"ok {name}", flush=True)


def passed(what):
    print(f"all {count} {what} checks passed", flush=True)
