// How long a REVOKE takes to end a subscription, on the database host and through an edge:
// from just before psql runs the REVOKE (so an upper bound) to the client's `unsubscribed`.
//   node --experimental-websocket bench/edge_catalog.mjs ROUNDS PSQL_CONNINFO URL...
import { execFileSync } from 'node:child_process';

const [rounds, conninfo, ...urls] = process.argv.slice(2);
const psql = (sql) => execFileSync('psql', ['-XqtA', conninfo, '-c', sql]);
psql('CREATE TABLE IF NOT EXISTS bench_catalog (id int PRIMARY KEY); SELECT realtime_watch(\'bench_catalog\')');

function subscribed(url) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    ws.onopen = () => ws.send(JSON.stringify({ type: 'subscribe', id: 's', table: 'bench_catalog' }));
    ws.onmessage = (e) => {
      const m = JSON.parse(e.data);
      if (m.type === 'subscribed') resolve(ws);
      else if (m.type === 'error') reject(new Error(e.data));
    };
    ws.onerror = reject;
  });
}

function ended(ws) {
  return new Promise((resolve) => {
    ws.onmessage = (e) => {
      if (JSON.parse(e.data).type === 'unsubscribed') resolve(performance.now());
    };
  });
}

for (const url of urls) {
  const took = [];
  for (let i = 0; i < Number(rounds); i++) {
    const ws = await subscribed(url);
    const end = ended(ws);
    const started = performance.now();
    psql('REVOKE pg_read_all_data FROM bench_reader');
    took.push((await end) - started);
    ws.close();
    psql('GRANT pg_read_all_data TO bench_reader');
    // The GRANT is a catalog change too: let it settle before the next round subscribes.
    await new Promise((r) => setTimeout(r, 500));
  }
  took.sort((a, b) => a - b);
  console.log(`${url}: REVOKE -> unsubscribed in ${took.map((t) => t.toFixed(0)).join(', ')} ms (median ${took[took.length >> 1].toFixed(0)})`);
}
process.exit(0);
