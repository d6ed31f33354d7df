"""Render bench/run.sh's raw results as the markdown table in BENCHMARKS.md.

python3 bench/report.py RESULTS.jsonl OUT.json QUICK(0|1)
"""
import json, sys, statistics, platform, os
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
meta = {"quick": sys.argv[3] == "1", "cores": os.cpu_count(), "machine": platform.platform()}
json.dump({"meta": meta, "results": rows}, open(sys.argv[2], "w"), indent=1)
def f(x, d=2): return "—" if x is None else f"{x:,.{d}f}"
print(f"| # | scenario | plain | pg_notify + Node bridge | realtime_ext | target | met |")
print(f"|---|---|---:|---:|---:|---|---|")
for writers in (1, 8, 32):
    for sync in ("on", "off"):
        tps = {t: statistics.mean(r["tps"] for r in rows if r["scenario"] == "writers" and r["target"] == t and r["writers"] == writers and r["synchronous_commit"] == sync) for t in ("plain", "notify", "realtime")}
        ratio = tps["realtime"] / tps["plain"]
        print(f"| W | {writers} writers, sync {sync}: tps (× plain) | {f(tps['plain'],0)} | {f(tps['notify'],0)} ({tps['notify']/tps['plain']:.2f}×) | {f(tps['realtime'],0)} ({ratio:.2f}×) | ≥ 0.85× plain | {'yes' if ratio >= 0.85 else 'no'} |")
lat = [r for r in rows if r["scenario"] == "latency" and r["payload_bytes"] == 16]
for clients in (1, 100, 1000):
    rt = next(r for r in lat if r["clients"] == clients and r["target"] == "Realtime")
    br = next(r for r in lat if r["clients"] == clients and r["target"] == "Bridge")
    ok = rt["latency_ms"]["p99"] is not None and rt["latency_ms"]["p99"] < (br["latency_ms"]["p99"] or 1e9) and (clients < 1000 or rt["latency_ms"]["p99"] <= 5)
    print(f"| L | {clients} clients, 1,000 events/s: p50 / p99 ms (delivered) | | {f(br['latency_ms']['p50'])} / {f(br['latency_ms']['p99'])} ({br['delivered']:,}/{br['expected']:,}) | {f(rt['latency_ms']['p50'])} / {f(rt['latency_ms']['p99'])} ({rt['delivered']:,}/{rt['expected']:,}) | p99 below bridge{', ≤ 5 ms' if clients == 1000 else ''} | {'yes' if ok else 'no'} |")
fo = {r["target"]: r for r in rows if r["scenario"] == "fanout"}
rt, br = fo["Realtime"], fo["Bridge"]
ok = rt["delivered_per_s"] >= 5 * br["delivered_per_s"] and rt["delivered_per_s"] >= 200000
print(f"| F | {rt['clients']:,} clients: delivered messages/s (gaps) | | {f(br['delivered_per_s'],0)} ({br['gap_messages']}) | {f(rt['delivered_per_s'],0)} ({rt['gap_messages']}) | ≥ 5× bridge, ≥ 200,000/s | {'yes' if ok else 'no'} |")
idle = next(r for r in rows if r["scenario"] == "idle"); want = next(r for r in rows if r["scenario"] == "idle_target")
ok = idle["worker_kib_per_connection"] <= 10 and idle["new_subscribe_ms"]["max"] < 50 and idle["clients"] >= want["requested_clients"]
print(f"| C | {idle['clients']:,} idle clients held (asked {want['requested_clients']:,}; fd limit {want['fd_hard_limit']:,}): KiB/conn, new subscribe p50/max ms | | | {f(idle['worker_kib_per_connection'])} KiB, {f(idle['new_subscribe_ms']['p50'])} / {f(idle['new_subscribe_ms']['max'])} ms | ≤ 10 KiB, < 50 ms, 50,000 held | {'yes' if ok else 'no'} |")
bulk = next(r for r in rows if r["scenario"] == "bulk"); cnt = next(r for r in rows if r["scenario"] == "count")
ratio = bulk["watched_seconds"] / bulk["plain_seconds"]
ok = cnt["delivered"] == bulk["rows"] and ratio <= 1.15
print(f"| T | {bulk['rows']:,}-row transaction: writer s, delivered, worker peak RSS | {f(bulk['plain_seconds'])} s | | {f(bulk['watched_seconds'])} s ({ratio:.2f}×), {cnt['delivered']:,} delivered, peak {bulk['worker_peak_rss_kib']/1024:,.0f} MiB (queue 64 MiB) | all delivered, ≤ 1.15× plain | {'yes' if ok else 'no'} |")
for size in (1000, 10000, 100000, 1000000):
    rt = next(r for r in rows if r["scenario"] == "latency" and r["payload_bytes"] == size and r["target"] == "Realtime")
    br = next(r for r in rows if r["scenario"] == "latency" and r["payload_bytes"] == size and r["target"] == "Bridge")
    brs = f"FAILED: {br['write_error']}" if br["failed_writes"] else f"{f(br['latency_ms']['p50'])} / {f(br['latency_ms']['p99'])} ms"
    ok = rt["failed_writes"] == 0 and rt["delivered"] == rt["expected"]
    print(f"| P | {size:,}-byte rows: p50 / p99 ms | | {brs} | {f(rt['latency_ms']['p50'])} / {f(rt['latency_ms']['p99'])} ms ({rt['delivered']}/{rt['expected']}) | delivered at every size | {'yes' if ok else 'no'} |")
print(f"\nraw results: {sys.argv[2]}")
