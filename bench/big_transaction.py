#!/usr/bin/env python3
"""One transaction of many rows to a client that reads as fast as it can and to one that reads
slowly, on the demo cluster (./demo.sh). Both are to get every change once, in order, and no
gap: the slow one falls far behind the memory ring and catches up from the history. Prints how
long each took, what each was told of gaps, and the worker's RSS before and at its peak.

    bench/big_transaction.py [rows=2000000] [slow_reader_changes_per_s=20000]
"""
import json, os, re, sys, threading, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from slow_clients import connect, read_frame, sql, subscribe, worker_rss_mib  # noqa: E402


def pong(s, payload):
    """Answer a ping, as any WebSocket library does (a client that does not is closed)."""
    mask = os.urandom(4)
    s.sendall(bytes([0x8A, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

ROWS = int(sys.argv[1]) if len(sys.argv) > 1 else 2_000_000
SLOW_RATE = int(sys.argv[2]) if len(sys.argv) > 2 else 20_000
ID = re.compile(rb'"new":\{"id":(\d+)')


def read(s, buf, pace, out):
    """Count changes, checking they arrive once and in order; note every other message."""
    started, expected, others = None, 1, []
    while expected <= ROWS:
        op, payload, buf = read_frame(s, buf)
        if op == 9:
            pong(s, payload)
        if op != 1:
            continue
        m = ID.search(payload)
        if m is None:
            others.append(json.loads(payload))
            if others[-1].get("type") == "gap":
                break
            continue
        started = started or time.time()
        got = int(m.group(1))
        if got != expected:
            others.append({"out_of_order": got, "expected": expected})
            break
        expected += 1
        if pace and expected % 1000 == 0:
            time.sleep(1000 / pace)
    out.update(received=expected - 1, seconds=round(time.time() - (started or time.time()), 1),
               other_messages=others[:5])


def main():
    sql("DROP TABLE IF EXISTS big; CREATE TABLE big (id int, pad text); SELECT realtime_watch('big'); "
        "DO $$ BEGIN EXECUTE format('GRANT SELECT ON big TO %I', current_setting('realtime.anon_role')); END $$")
    rss_before = worker_rss_mib()
    results = {"fast": {}, "slow": {}}
    readers = []
    for name, pace in (("fast", 0), ("slow", SLOW_RATE)):
        s = connect()
        buf = subscribe(s, "big")
        readers.append(threading.Thread(target=read, args=(s, buf, pace, results[name])))
    for r in readers:
        r.start()
    started = time.time()
    sql(f"INSERT INTO big SELECT g, repeat('x', 100) FROM generate_series(1, {ROWS}) g")
    committed = time.time() - started
    peak = rss_before
    while any(r.is_alive() for r in readers):
        peak = max(peak, worker_rss_mib())
        time.sleep(0.5)
    print(json.dumps({"rows": ROWS, "slow_reader_changes_per_s": SLOW_RATE,
                      "insert_seconds": round(committed, 1), **results,
                      "worker_rss_mib_before": round(rss_before), "worker_rss_mib_peak": round(peak),
                      "catch_ups": sql("SELECT value FROM realtime_stats() WHERE name = 'catch_ups_total'"),
                      "slow_client_gaps": sql("SELECT value FROM realtime_stats() WHERE name = 'slow_client_gaps_total'")}))


if __name__ == "__main__":
    main()
