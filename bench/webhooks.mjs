// H: webhooks. Local receivers on loopback record, for every change, the time from the
// writer's timestamp in the row (taken just before its single-row transaction commits) to
// the request's arrival, on the same clock. Measured:
//   - commit -> receiver p50 / p99 at a steady rate, to 1 and to 10 receivers (a webhook
//     each), unbatched and batched (batch_size 100);
//   - deliveries per second draining a burst of committed rows, the same four ways;
//   - writer throughput (pgbench, 8 writers) on a watched table with 0 and 10 webhooks (batched
//     and not), beside the same table unwatched; the receivers run on the same two cores;
//   - beside the design it replaces: a row trigger's pg_notify and a Node LISTEN -> fetch
//     forwarder (bench/baselines/webhook-forwarder), its latency, and what each loses when its
//     process is restarted in the middle of a stream (the forwarder killed and started again;
//     the worker terminated, as pg_terminate_backend does, and killed with SIGKILL, after
//     which the server restarts every process).
// Prints one JSON line. Usage:
//   node bench/webhooks.mjs <postgres url> <pgbench> <events> <rate> <burst> <seconds>
import http from 'node:http';
import { createRequire } from 'node:module';
import { spawn, execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';

const require = createRequire(new URL('./baselines/webhook-forwarder/package.json', import.meta.url));
const { Client } = require('pg');
const [pgUrl, pgbench, EVENTS, RATE, BURST, SECONDS] = process.argv.slice(2)
  .map((a, i) => (i >= 2 ? Number(a) : a));

const nowUs = () => (performance.timeOrigin + performance.now()) * 1000;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
// A connection made again when a crash of the server closed it.
const lostConnection = (e) => !e.code || /^(57P|08|ECONN)/.test(e.code);
async function connected() {
  for (;;) {
    const client = new Client({ connectionString: pgUrl });
    client.on('error', () => {});
    try {
      await client.connect();
      return client;
    } catch (e) {
      if (!lostConnection(e)) throw e;
      await sleep(100);
    }
  }
}
let db = await connected();
async function sql(text, params) {
  for (;;) {
    try {
      return await db.query(text, params);
    } catch (e) {
      if (!lostConnection(e)) throw e;
      db = await connected();
    }
  }
}

// A receiver: every change it is sent, once, with its latency; how many requests it took, and
// how many changes came again.
function receiver() {
  const r = { seen: new Set(), latencies: [], requests: 0, again: 0, port: 0 };
  r.server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const at = nowUs();
      r.requests++;
      const body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
      for (const e of body.events ?? [body]) {
        const row = e.record ?? e;
        if (!r.seen.has(row.id)) {
          r.seen.add(row.id);
          r.latencies.push((at - Number(row.sent_at_us)) / 1000);
        } else {
          r.again++;
        }
      }
      res.writeHead(204).end();
    });
  });
  r.reset = () => { r.seen.clear(); r.latencies = []; r.requests = 0; r.again = 0; };
  r.url = (path) => `http://127.0.0.1:${r.port}${path}`;
  return new Promise((ok) => r.server.listen(0, '127.0.0.1', () => { r.port = r.server.address().port; ok(r); }));
}

function quantiles(values) {
  const v = [...values].sort((a, b) => a - b);
  const q = (p) => (v.length ? v[Math.min(v.length - 1, Math.floor(p * v.length))] : null);
  return { p50: q(0.5), p99: q(0.99), max: v.length ? v[v.length - 1] : null, n: v.length };
}

async function until(what, limitMs, condition) {
  const deadline = Date.now() + limitMs;
  while (!condition()) {
    if (Date.now() > deadline) return false;
    await sleep(10);
  }
  return true;
}

// `events` single-row transactions into `table` at `rate` a second; the ids written.
async function write(table, events, rate, during) {
  let writer = await connected();
  const ids = [];
  const start = Date.now();
  for (let i = 0; i < events; i++) {
    const due = start + (i * 1000) / rate;
    if (due > Date.now()) await sleep(due - Date.now());
    if (during) await during(i);
    for (;;) {
      try {
        const r = await writer.query(
          `INSERT INTO ${table} (sent_at_us, note) VALUES ((extract(epoch FROM clock_timestamp()) * 1e6)::int8, 'x') RETURNING id`);
        ids.push(Number(r.rows[0].id));
        break;
      } catch (e) {
        // Cut off by a crash: whether it committed, the table says (see `crash` below).
        if (!lostConnection(e)) throw e;
        writer = await connected();
      }
    }
  }
  await writer.end();
  return ids;
}

await sql(`DROP TABLE IF EXISTS h_rows, h_notify, h_plain`);
await sql(`CREATE TABLE h_rows (id bigserial PRIMARY KEY, sent_at_us int8, note text, created_at timestamptz DEFAULT now())`);
await sql(`CREATE TABLE h_notify (LIKE h_rows INCLUDING ALL)`);
await sql(`CREATE TABLE h_plain (LIKE h_rows INCLUDING ALL)`);
await sql(`SELECT realtime_watch('h_rows')`);
await sql(`CREATE TRIGGER notify AFTER INSERT ON h_notify FOR EACH ROW EXECUTE FUNCTION bench_notify('bench_h')`);
const receivers = await Promise.all(Array.from({ length: 10 }, receiver));

async function webhooks(count, batch) {
  for (let i = 0; i < count; i++) {
    await sql(`SELECT realtime_webhook_create($1, $2, tables => '{h_rows}', acts_as => 'bench_user', batch_size => $3)`,
      [`bench_h_${i}`, receivers[i].url('/h'), batch]);
  }
}
async function dropWebhooks() {
  await sql(`SELECT realtime_webhook_drop(name) FROM realtime_webhooks WHERE name LIKE 'bench_h_%'`);
  // The worker reads the webhooks once a second.
  await sleep(1500);
  receivers.forEach((r) => r.reset());
}

const result = { scenario: 'webhooks', events: EVENTS, rate_per_s: RATE, burst: BURST, latency: [], drain: [] };
await sql(`GRANT SELECT ON h_rows TO bench_user`);

for (const count of [1, 10]) {
  for (const batch of [1, 100]) {
    await webhooks(count, batch);
    await sleep(1500);
    const ids = await write('h_rows', EVENTS, RATE);
    const used = receivers.slice(0, count);
    const all = await until('every change', 60000, () => used.every((r) => r.seen.size >= ids.length));
    const l = quantiles(used.flatMap((r) => r.latencies));
    result.latency.push({ receivers: count, batch_size: batch, latency_ms: l, complete: all,
      requests: used.reduce((s, r) => s + r.requests, 0) });
    receivers.forEach((r) => r.reset());

    // A burst committed as fast as one writer can (transactions of 100 rows), then drained.
    const t0 = Date.now();
    for (let done = 0; done < BURST; done += 100) {
      await sql(`INSERT INTO h_rows (sent_at_us, note) SELECT (extract(epoch FROM clock_timestamp()) * 1e6)::int8, 'b' FROM generate_series(1, 100)`);
    }
    const committed = (Date.now() - t0) / 1000;
    const drained = await until('the burst', 300000, () => used.every((r) => r.seen.size >= BURST));
    const seconds = (Date.now() - t0) / 1000;
    result.drain.push({ receivers: count, batch_size: batch, changes: BURST, complete: drained,
      commit_seconds: committed, seconds, deliveries_per_s: (count * BURST) / seconds,
      requests: used.reduce((s, r) => s + r.requests, 0) });
    await dropWebhooks();
  }
}

// Writers with 0 and 10 webhooks, beside the unwatched table; rounds alternate the order.
// CPU seconds the worker process has used (utime + stime, in clock ticks of 1/100 s).
const workerCpu = async () => {
  const pid = (await sql(`SELECT pid FROM pg_stat_activity WHERE backend_type = 'realtime_ext'`)).rows[0].pid;
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
};
const pgbenchRun = async (table, key) => {
  const file = `${tmpdir()}/h_${table}.sql`;
  writeFileSync(file, `INSERT INTO ${table} (sent_at_us, note) VALUES (0, 'w');\n`);
  const [worker, receiving] = [await workerCpu(), process.cpuUsage()];
  const { stdout } = await promisify(execFile)(pgbench, ['-n', '-c', '8', '-j', '2', '-T', String(SECONDS), '-f', file, pgUrl]);
  const used = process.cpuUsage(receiving);
  result.writers_cpu[key].push({
    worker: (await workerCpu() - worker) / SECONDS,
    receivers: (used.user + used.system) / 1e6 / SECONDS,
  });
  return Number(/^tps = ([\d.]+)/m.exec(stdout)[1]);
};
result.writers = { plain: [], webhooks_0: [], webhooks_10_batched: [], webhooks_10: [] };
result.writers_cpu = { plain: [], webhooks_0: [], webhooks_10_batched: [], webhooks_10: [] };
for (let round = 0; round < 2; round++) {
  result.writers.plain.push(await pgbenchRun('h_plain', 'plain'));
  result.writers.webhooks_0.push(await pgbenchRun('h_rows', 'webhooks_0'));
  for (const [batch, key] of [[100, 'webhooks_10_batched'], [1, 'webhooks_10']]) {
    await webhooks(10, batch);
    await sleep(1500);
    result.writers[key].push(await pgbenchRun('h_rows', key));
    await dropWebhooks();
  }
  await sql(`TRUNCATE h_rows, h_plain`);
}

// The forwarder: latency, then a restart in the middle of a stream.
const forwarderDir = new URL('./baselines/webhook-forwarder/', import.meta.url).pathname;
const startForwarder = async () => {
  const child = spawn('node', [`${forwarderDir}forwarder.js`, pgUrl, 'bench_h', receivers[0].url('/f')], { stdio: ['ignore', 'pipe', 'ignore'] });
  await new Promise((ok) => child.stdout.once('data', ok));
  return child;
};
let forwarder = await startForwarder();
{
  const ids = await write('h_notify', EVENTS, RATE);
  const all = await until('every change', 30000, () => receivers[0].seen.size >= ids.length);
  result.forwarder_latency = { latency_ms: quantiles(receivers[0].latencies), complete: all };
  receivers[0].reset();
}
const restartAt = Math.floor(EVENTS / 2);
{
  // The writer goes on while the forwarder is down for a second.
  let restarted;
  const ids = await write('h_notify', EVENTS, RATE, async (i) => {
    if (i === restartAt) {
      forwarder.kill('SIGKILL');
      restarted = sleep(1000).then(startForwarder).then((child) => { forwarder = child; });
    }
  });
  await restarted;
  await until('stragglers', 3000, () => receivers[0].seen.size >= ids.length);
  result.forwarder_restart = { written: ids.length, received: receivers[0].seen.size, lost: ids.length - receivers[0].seen.size };
  forwarder.kill('SIGKILL');
  receivers[0].reset();
}
{
  await webhooks(1, 1);
  await sleep(1500);
  let terminated;
  const ids = await write('h_rows', EVENTS, RATE, async (i) => {
    if (i === restartAt) {
      terminated = sql(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'realtime_ext'`);
    }
  });
  await terminated;
  const all = await until('every change', 60000, () => receivers[0].seen.size >= ids.length);
  result.realtime_restart = { written: ids.length, received: receivers[0].seen.size, lost: ids.length - receivers[0].seen.size,
    complete: all, requests: receivers[0].requests };
  await dropWebhooks();
}
{
  // kill -9 of the worker: the server restarts every process with new shared memory.
  await webhooks(1, 1);
  await sleep(1500);
  const before = Number((await sql(`SELECT coalesce(max(id), 0) AS id FROM h_rows`)).rows[0].id);
  await write('h_rows', EVENTS, RATE, async (i) => {
    if (i === restartAt) {
      const pid = (await sql(`SELECT pid FROM pg_stat_activity WHERE backend_type = 'realtime_ext'`)).rows[0].pid;
      process.kill(pid, 'SIGKILL');
    }
  });
  const committed = (await sql(`SELECT id FROM h_rows WHERE id > $1`, [before])).rows.map((r) => Number(r.id));
  const all = await until('every change', 60000, () => committed.every((id) => receivers[0].seen.has(id)));
  result.realtime_crash = { written: committed.length, received: committed.filter((id) => receivers[0].seen.has(id)).length,
    lost: committed.filter((id) => !receivers[0].seen.has(id)).length, sent_again: receivers[0].again, complete: all,
    requests: receivers[0].requests };
  await dropWebhooks();
}

console.log(JSON.stringify(result));
await db.end();
receivers.forEach((r) => r.server.close());
process.exit(0);
