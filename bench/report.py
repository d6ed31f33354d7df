"""Render bench/run.sh's raw results as the markdown table in BENCHMARKS.md.

python3 bench/report.py RESULTS.jsonl OUT.json QUICK(0|1)
A scenario that failed or is missing shows as such; it never stops the report.
"""
import json, os, platform, statistics, sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
meta = {"quick": sys.argv[3] == "1", "cores": os.cpu_count(), "machine": platform.platform(),
        "commit": os.environ.get("BENCH_COMMIT", "unknown"),
        "dirty": os.environ.get("BENCH_DIRTY", "unknown") == "true",
        "scenarios": os.environ.get("BENCH_SCENARIOS", "WLFCTP"),
        "sched_autogroup": os.environ.get("BENCH_AUTOGROUP_SETTING", "unknown")}
json.dump({"meta": meta, "results": rows}, open(sys.argv[2], "w"), indent=1)


def find(**want):
    # Rows from before the Supabase endpoint have no "endpoint": they were the native one's.
    return next((r for r in rows if all(r.get(k, "native" if k == "endpoint" else None) == v
                                        for k, v in want.items())), None)


def f(x, d=2):
    return "—" if x is None else f"{x:,.{d}f}"


def lat(r):
    if r is None:
        return "missing"
    if r.get("error"):
        return f"FAILED: {r['error'][:60]}"
    if r.get("failed_writes"):
        return f"FAILED: {r['write_error']}"
    l = r["latency_ms"]
    written = r.get("written_per_s")
    held = f"; written at {f(written, 0)}/s" if written and written < 0.9 * r["rate_per_s"] else ""
    return f"{f(l['p50'])} / {f(l['p99'])} ms ({r['delivered']:,}/{r['expected']:,}{held})"


def ok(cond):
    return "yes" if cond else "no"


print(f"commit {meta['commit'][:12]}{' (dirty tree)' if meta['dirty'] else ''}, {meta['cores']} cores, "
      f"kernel.sched_autogroup_enabled = {meta['sched_autogroup']}{', quick' if meta['quick'] else ''}\n")
print("| # | scenario | plain | pg_notify + Node bridge | realtime_ext | target | met |")
print("|---|---|---:|---:|---:|---|---|")
def ratios(t, base):
    """Per-round ratios: each round runs the tables back to back, so a round's ratio is less
    exposed to this machine's drift than the ratio of means."""
    return [a / b for a, b in zip(t, base)]


def spread(rs):
    return f"rounds {min(rs):.2f}–{max(rs):.2f}" if len(rs) > 1 else ""


for writers in (1, 8, 32):
    for sync in ("on", "off"):
        tps = {}
        for t in ("plain", "notify", "realtime", "realtime_subscribed", "send"):
            tps[t] = [r["tps"] for r in rows if r.get("scenario") == "writers" and r["target"] == t and r["writers"] == writers and r["synchronous_commit"] == sync]
        sends = tps.pop("send")
        if not all(tps.values()):
            print(f"| W | {writers} writers, sync {sync} | missing | | | | |")
            continue
        mean = {t: statistics.mean(v) for t, v in tps.items()}
        notify = mean["notify"] / mean["plain"]
        for t, clients in (("realtime", "no client"), ("realtime_subscribed", "1 subscribed client")):
            ratio = mean[t] / mean["plain"]
            print(f"| W | {writers} writers, sync {sync}, {clients}: tps (× plain) | {f(mean['plain'], 0)} "
                  f"| {f(mean['notify'], 0)} ({notify:.2f}×; {spread(ratios(tps['notify'], tps['plain']))}) "
                  f"| {f(mean[t], 0)} ({ratio:.2f}×; {spread(ratios(tps[t], tps['plain']))}) | ≥ 0.85× plain | {ok(ratio >= 0.85)} |")
        if sends:
            ratio = statistics.mean(sends) / mean["plain"]
            print(f"| W | {writers} writers, sync {sync}, a row trigger calling realtime_send(): tps (× plain) | {f(mean['plain'], 0)} "
                  f"| {f(mean['notify'], 0)} ({notify:.2f}×) | {f(statistics.mean(sends), 0)} ({ratio:.2f}×; {spread(ratios(sends, tps['plain']))}) "
                  f"| above pg_notify | {ok(ratio > notify)} |")
for clients in (1, 100, 1000):
    rt = find(scenario="latency", target="Realtime", clients=clients, payload_bytes=16, endpoint="native")
    br = find(scenario="latency", target="Bridge", clients=clients, payload_bytes=16)
    fl = find(scenario="latency", target="Floor", clients=clients)
    p99 = lambda r: (r or {}).get("latency_ms", {}).get("p99") if r and not r.get("error") else None
    met = p99(rt) is not None and (p99(br) is None or p99(rt) < p99(br)) and (clients < 1000 or p99(rt) <= 5)
    cf = find(scenario="latency", target="CommittedFloor", clients=clients)
    floor = f"; p99 {p99(rt) / p99(fl):.1f}× the floor's" if p99(rt) and p99(fl) else ""
    floor += f", {p99(rt) / p99(cf):.2f}× the committed floor's" if p99(rt) and p99(cf) else ""
    committed = f"; committed: {lat(cf)}" if cf else ""
    print(f"| L | {clients:,} clients, 1,000 events/s: p50 / p99 (delivered/expected) | no database: {lat(fl)}{committed} | {lat(br)} | {lat(rt)}{floor} | p99 below bridge{', ≤ 5 ms' if clients == 1000 else ''} | {ok(met)} |")
    relay = find(scenario="latency", target="Relay", clients=clients, payload_bytes=16)
    if relay:
        met = p99(relay) is not None and (p99(br) is None or p99(relay) < p99(br))
        print(f"| L | {clients:,} clients, the bridge's own pg_notify trigger, relayed (realtime_relay): p50 / p99 | | {lat(br)} | {lat(relay)} | p99 below bridge | {ok(met)} |")
    supa = find(scenario="latency", target="Realtime", clients=clients, payload_bytes=16, endpoint="supabase")
    if supa:
        print(f"| L | {clients:,} clients, the same table through the Supabase endpoint (supabase-js's protocol): p50 / p99 | | {lat(rt)} (native) | {lat(supa)} | | |")
rt, br = find(scenario="fanout", target="Realtime", tls=False, endpoint="native"), find(scenario="fanout", target="Bridge")
def fan(r):
    if r is None:
        return "missing"
    if r.get("error"):
        return f"FAILED: {r['error'][:60]}"
    return f"{f(r['delivered_per_s'], 0)}/s ({r['delivered_messages']:,} of {r['expected_messages']:,})"
met = rt and not rt.get("error") and rt["delivered_per_s"] >= 200_000 and (br is None or br.get("error") or rt["delivered_per_s"] >= 5 * br["delivered_per_s"])
print(f"| F | {(rt or {}).get('clients', 0):,} clients, 100-row transactions: delivered messages/s | | {fan(br)} | {fan(rt)} | ≥ 5× bridge, ≥ 200,000/s | {ok(met)} |")
def paced_fanout(endpoint):
    return next((r for r in rows if r.get("scenario") == "fanout" and r.get("target") == "Realtime"
                 and r.get("endpoint") == endpoint and r.get("rate_rows_per_s")), None)
paced = paced_fanout("native")
if paced:
    offered = paced["rate_rows_per_s"] * paced["clients"]
    met = not paced.get("error") and paced["delivered_per_s"] >= 2_700_000 and paced["delivered_messages"] == paced["expected_messages"]
    print(f"| F | {paced.get('clients', 0):,} clients, the writer held to {f(paced['rate_rows_per_s'], 0)} rows/s ({f(offered, 0)} messages/s offered): delivered messages/s | | | "
          f"{fan(paced)}, {paced.get('gap_messages', 0)} gaps | ≥ 2.7 M/s, all delivered | {ok(met)} |")
supa = find(scenario="fanout", target="Realtime", tls=False, endpoint="supabase")
if supa:
    writer = lambda r: f"writer {f(r.get('writer_rows_per_s'), 0)} rows/s" if r and not r.get("error") else ""
    print(f"| F | {supa.get('clients', 0):,} clients through the Supabase endpoint: delivered messages/s | | {fan(rt)} (native, {writer(rt)}) | {fan(supa)} ({writer(supa)}) | | |")
supa_paced = paced_fanout("supabase")
if paced and supa_paced:
    print(f"| F | {supa_paced.get('clients', 0):,} clients through the Supabase endpoint, the writer held to {f(supa_paced['rate_rows_per_s'], 0)} rows/s: delivered messages/s | | "
          f"{fan(paced)} (native) | {fan(supa_paced)}, {supa_paced.get('gap_messages', 0)} gaps | | |")
idle, want = find(scenario="idle"), find(scenario="idle_target")
if idle and not idle.get("error") and want:
    met = idle["worker_kib_per_connection"] <= 10 and idle["new_subscribe_ms"]["max"] < 50 and idle["clients"] >= want["requested_clients"]
    print(f"| C | idle clients held: {idle['clients']:,} of {want['requested_clients']:,} asked (fd limit {want['fd_hard_limit']:,}) | | | "
          f"{f(idle['worker_kib_per_connection'])} KiB/connection; new subscribe p50 {f(idle['new_subscribe_ms']['p50'])} ms, max {f(idle['new_subscribe_ms']['max'])} ms "
          f"| ≤ 10 KiB, < 50 ms, 50,000 held | {ok(met)} |")
else:
    print(f"| C | idle clients | | | {(idle or {}).get('error', 'missing')} | | no |")
bulks = [r for r in rows if r.get("scenario") == "bulk"]
counts = [r for r in rows if r.get("scenario") == "count"]
if bulks and counts:
    n = bulks[0]["rows"]
    plain = statistics.median(b["plain_seconds"] for b in bulks)
    watched = statistics.median(b["watched_seconds"] for b in bulks)
    rs = [b["watched_seconds"] / b["plain_seconds"] for b in bulks]
    ratio = statistics.median(rs)
    delivered = "; ".join(f"{c['delivered']:,}" for c in counts)
    all_in = all(c["delivered"] == n for c in counts) and len(counts) == len(bulks)
    peak = max(b["worker_peak_rss_kib"] for b in bulks) / 1024
    print(f"| T | {n:,}-row transaction: writer time (median of {len(bulks)}), delivered | {f(plain)} s | | {f(watched)} s ({ratio:.2f}×; {spread(rs)}), "
          f"delivered {delivered}; worker peak RSS during T {peak:,.0f} MiB | all delivered, ≤ 1.15× plain | {ok(all_in and ratio <= 1.15)} |")
for size in (1000, 10000, 100000, 1000000):
    rt = find(scenario="latency", target="Realtime", clients=1, payload_bytes=size)
    br = find(scenario="latency", target="Bridge", clients=1, payload_bytes=size)
    met = rt is not None and not rt.get("error") and not rt.get("failed_writes") and rt["delivered"] == rt["expected"]
    print(f"| P | {size:,}-byte rows, 1 client: p50 / p99 | | {lat(br)} | {lat(rt)} | delivered at every size | {ok(met)} |")
k = find(scenario="shout")
if k and not k.get("error"):
    lk = k["latency_ms"]
    print(f"| K | client broadcast, 1 sender at {k['rate']:.0f}/s to {k['clients']:,} subscribers: delivered/s; p50 / p99 | | | "
          f"{f(k['delivered_per_s'], 0)}/s ({k['delivered_messages']:,} of {k['expected_messages']:,}); {lk['p50']:.2f} / {lk['p99']:.2f} ms | beside F | |")
y = find(scenario="presence")
if y and not y.get("error"):
    t = y["full_state_ms"]
    took = f"{t['p50']:,.0f} / {t['max']:,.0f} ms" if t["max"] is not None else "none in time"
    print(f"| Y | {y['clients']:,} clients join one channel's presence: until each knows all are present, p50 / max | | | "
          f"{took} ({y['complete']:,} of {y['clients']:,} complete; {y['bytes_received'] / 2**20:,.0f} MiB received; load generator at {y['client_cpu_share']:.0%} of the cores) | | |")
fans = [r for r in rows if r.get("scenario") == "fanout" and r.get("target") == "Realtime"
        and r.get("endpoint", "native") == "native"]
plain = [r for r in fans if not r.get("tls")][-1:]
tls = [r for r in fans if r.get("tls")]
if plain and tls:
    p_, t_ = plain[0], tls[0]
    x = t_["delivered_per_s"] / p_["delivered_per_s"]
    print(f"| S | {t_['clients']:,} clients, 100-row transactions, wss:// vs ws:// (just before it) | | | {f(t_['delivered_per_s'], 0)} vs {f(p_['delivered_per_s'], 0)} messages/s "
          f"({x:.2f}×), {t_['gap_messages']} gaps | ≥ 0.7× ws | {ok(x >= 0.7)} |")
base = find(scenario="rls", mode="filter", endpoint="native")
for mode, endpoint, label in (("filter", "native", "no RLS, each client filtered to its rows (baseline)"),
                              ("policy", "native", "owner policy on a claim (compiled)"),
                              ("policy", "supabase", "owner policy on a claim, through the Supabase endpoint"),
                              ("subselect", "native", "policy with a sub-select (judged per batch)")):
    r = find(scenario="rls", mode=mode, endpoint=endpoint)
    if r is None or r.get("error"):
        print(f"| R | {label} | | | {'missing' if r is None else 'FAILED: ' + r['error'][:60]} | | |")
        continue
    l = r["latency_ms"]
    exact = r["missing"] == 0 and r["wrong_rows"] == 0
    cpu = r["worker_cpu_share"] * 100
    if mode == "filter" or base is None:
        target, met = "every client gets exactly its rows", exact
    else:
        p99_x = l["p99"] / base["latency_ms"]["p99"]
        cpu_x = r["worker_cpu_share"] / base["worker_cpu_share"]
        target = f"p99 ≤ 2× baseline ({p99_x:.2f}×), worker CPU ≤ 1.5× ({cpu_x:.2f}×)"
        met = exact and p99_x <= 2 and cpu_x <= 1.5
    print(f"| R | {r['clients']:,} users, {r['rate_per_s']:,.0f} changes/s: {label} | | | {f(l['p50'])} / {f(l['p99'])} ms, "
          f"worker CPU {cpu:.1f}%, {r['delivered']:,} delivered, {r['missing']} missing, {r['wrong_rows']} wrong | {target} | {ok(met)} |")
pq = find(scenario="rls", mode="perquery")
if pq and pq.get("per_query"):
    q = pq["per_query"]
    print(f"| R | one query per subscriber per change (Supabase's method), {pq['clients']:,} subscribers | | | "
          f"{q['changes_per_s']:,.1f} changes/s judged ({f(q['ms_per_change']['p50'])} ms each), {q['wrong_answers']} wrong | for comparison | |")
d = find(scenario="resume")
if d is not None and not d.get("error"):
    c, dur, bef = d["catch_up_s"], d["steady_latency_ms_during_catch_up"], d["steady_latency_ms_before_drop"]
    # Gaps are slow_client ones the clients resumed from again (`resume_from`): not losses.
    exact = d["rows_lost"] == 0 and d["rows_twice"] == 0 and d["not_caught_up"] == 0 and d["errors"] == 0
    print(f"| D | {d['clients']:,} clients away {d['away_s']:.0f} s at {d['rate_per_s']:,.0f} changes/s, then resume: time to catch up p50 / max; "
          f"{d['steady']} steady clients' p50 / p99 during it (before the drop) | | | {f(c['p50'])} / {f(c['max'])} s; {f(dur['p50'])} / {f(dur['p99'])} ms "
          f"({f(bef['p50'])} / {f(bef['p99'])} ms); {d['rows_lost']} lost, {d['rows_twice']} twice, {d['partial_resumes']} partial, {d['gaps']} resumed again from a gap, {d.get('closed_by_server', 0)} closed by the server and resumed | "
          f"nothing lost or twice | {ok(exact)} |")
elif d is not None:
    print(f"| D | resume after a disconnect | | | FAILED: {d['error'][:60]} | | |")
n = find(scenario="snapshot")
if n is not None and not n.get("error"):
    b, du = n["steady_latency_ms_before"], n["steady_latency_ms_during"]
    met = n["rows_received"] == n["rows"] and du["p99"] <= 2 * b["p99"]
    print(f"| N | {n['rows']:,}-row snapshot while {n['steady']} clients get {n['rate_per_s']:,.0f} changes/s: rows/s; their p50 / p99 during it (before) | | | "
          f"{n['rows_per_s']:,.0f} rows/s ({n['rows_received']:,} rows in {n['snapshot_seconds']:.1f} s, {n['mib_per_s']:.0f} MiB/s); "
          f"{f(du['p50'])} / {f(du['p99'])} ms ({f(b['p50'])} / {f(b['p99'])} ms) | all rows; p99 within 2x | {ok(met)} |")
elif n is not None:
    print(f"| N | snapshot then stream | | | FAILED: {n['error'][:60]} | | |")
b = find(scenario="browser")
if b is not None and not b.get("error"):
    lat, rec = b["commit_to_dom_ms"], [r["live_ms"] for r in b["recoveries"]]
    print(f"| B | headless Chromium ({b['browser']}), defects dashboard: commit to DOM p50 / p99 over {b['changes']:,} changes at {b['rate_per_s']}/s; "
          f"live again after pg_terminate_backend of the worker ({len(rec)} times) | | | {f(lat['p50'])} / {f(lat['p99'])} ms (max {f(lat['max'])}); "
          f"{min(rec):,} / {b['recover_live_ms_median']:,} / {max(rec):,} ms min / median / max; page shows {b['rows_on_page']:,} of {b['rows_in_table']:,} rows | | |")
h = find(scenario="webhooks")
if h is not None and not h.get("error"):
    fw = h.get("forwarder_latency", {}).get("latency_ms")
    for run in h["latency"]:
        l = run["latency_ms"]
        base = f"{f(fw['p50'])} / {f(fw['p99'])} ms (one receiver)" if fw and run["receivers"] == 1 and run["batch_size"] == 1 else ""
        print(f"| H | commit -> receiver p50 / p99 at {h['rate_per_s']:,}/s, {run['receivers']} webhook(s) and receiver(s), batch size {run['batch_size']} | | {base} | "
              f"{f(l['p50'])} / {f(l['p99'])} ms ({l['n']:,} changes, {run['requests']:,} requests{'' if run['complete'] else ', INCOMPLETE'}) | | |")
    for run in h["drain"]:
        print(f"| H | draining {run['changes']:,} committed changes: deliveries/s, {run['receivers']} webhook(s), batch size {run['batch_size']} | | | "
              f"{run['deliveries_per_s']:,.0f}/s ({run['seconds']:.1f} s, {run['requests']:,} requests{'' if run['complete'] else ', INCOMPLETE'}) | | |")
    w = h["writers"]
    plain = statistics.mean(w["plain"])
    zero, batched, ten = (statistics.mean(w[k]) for k in ("webhooks_0", "webhooks_10_batched", "webhooks_10"))
    cpu = {k: (statistics.mean(c["worker"] for c in v) * 100, statistics.mean(c["receivers"] for c in v) * 100)
           for k, v in h.get("writers_cpu", {}).items() if v}
    shares = " / ".join(f"{cpu[k][0]:.0f}%" for k in ("webhooks_0", "webhooks_10_batched", "webhooks_10") if k in cpu)
    receiving = " / ".join(f"{cpu[k][1]:.0f}%" for k in ("webhooks_10_batched", "webhooks_10") if k in cpu)
    print(f"| H | 8 writers on a watched table, receivers on the same 2 cores: tps with 0 webhooks / 10 batched (100) / 10 unbatched (× plain); "
          f"the worker's CPU (of one core); the receivers' | {plain:,.0f} | | "
          f"{zero:,.0f} ({zero / plain:.2f}×) / {batched:,.0f} ({batched / plain:.2f}×) / {ten:,.0f} ({ten / plain:.2f}×); worker {shares}; receivers {receiving} | for comparison | |")
    fr, rr = h["forwarder_restart"], h["realtime_restart"]
    print(f"| H | changes lost when the process is restarted mid-stream (forwarder killed and started again; worker terminated) | | "
          f"{fr['lost']:,} of {fr['written']:,} | {rr['lost']:,} of {rr['written']:,} | nothing | {ok(rr['lost'] == 0)} |")
    rc = h.get("realtime_crash")
    if rc:
        print(f"| H | changes lost when the worker is killed with SIGKILL mid-stream (the server restarts every process); sent twice | | | "
              f"{rc['lost']:,} of {rc['written']:,}; {rc['sent_again']:,} sent twice | nothing | {ok(rc['lost'] == 0)} |")
elif h is not None:
    print(f"| H | webhooks | | | FAILED: {h['error'][:60]} | | |")
for r in rows:
    if r.get("scenario") == "bridge_crashed":
        print(f"\nThe Node bridge had died before \"{r['before']}\" and was restarted; its log ended: `{r['log'].strip()[-160:]}`")
print(f"\nraw results: {sys.argv[2]}")
