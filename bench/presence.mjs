// Y: N connections join one channel's presence (realtime.public_topics on), and once all are
// subscribed each tracks itself: how long until each one knows all N are present.
//   node bench/presence.mjs WS_URL N    prints one JSON line
const [url, n] = [process.argv[2], Number(process.argv[3] ?? 10000)];
const LIMIT_MS = 60000;
const clients = [];
let subscribed = 0;
let started = 0;
const done = [];

function percentiles(v) {
  v.sort((a, b) => a - b);
  const p = (q) => (v.length ? v[Math.round((v.length - 1) * q)] : null);
  return { p50: p(0.5), p95: p(0.95), p99: p(0.99), max: v.length ? v[v.length - 1] : null };
}

function finish() {
  console.log(JSON.stringify({ scenario: 'presence', clients: n, complete: done.length, full_state_ms: percentiles(done) }));
  process.exit(0);
}

function open(i) {
  return new Promise((resolve) => {
    const ws = new WebSocket(url);
    const present = new Set();
    const c = { ws, present, finished: false };
    ws.onopen = () => ws.send(JSON.stringify({ type: 'subscribe', id: 'p', channel: 'bench_lobby', presence: true }));
    ws.onmessage = (e) => {
      const m = JSON.parse(e.data);
      if (m.type === 'subscribed') {
        subscribed++;
        return resolve(c);
      }
      for (const k of Object.keys(m.state ?? {})) present.add(k);
      for (const k of Object.keys(m.joins ?? {})) present.add(k);
      for (const k of Object.keys(m.leaves ?? {})) if (!(k in (m.joins ?? {}))) present.delete(k);
      if (!c.finished && started && present.size >= n) {
        c.finished = true;
        done.push(performance.now() - started);
        if (done.length === n) finish();
      }
    };
    ws.onerror = () => resolve(c);
  });
}

// Connect in batches, so the listen queue is not what is measured.
for (let i = 0; i < n; i += 250) {
  const batch = [];
  for (let j = i; j < Math.min(n, i + 250); j++) batch.push(open(j));
  clients.push(...(await Promise.all(batch)));
}
started = performance.now();
clients.forEach((c, i) => c.ws.send(JSON.stringify({ type: 'track', channel: 'bench_lobby', state: { n: i } })));
setTimeout(finish, LIMIT_MS);
