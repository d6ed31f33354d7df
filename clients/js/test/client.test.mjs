// realtime.js against a real realtime_ext server (started by tests/browser.rs), plus the parts
// that need a misbehaving peer (silence, refusals, gaps), played by stand-ins.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:net';
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { connect, matches, parseFilter, jwtExpiry, websocketUrl } from '../realtime.js';
import { WS_URL, HTTP_URL, sql, sqlAsync, token, now, terminateWorker, until, sleep } from './server.mjs';

before(() => {
  sql(`CREATE TABLE IF NOT EXISTS js_items (id int PRIMARY KEY, label text, n int);
       SELECT realtime_watch('js_items');
       CREATE TABLE IF NOT EXISTS js_secret (id int PRIMARY KEY);
       SELECT realtime_watch('js_secret');
       DO $$ BEGIN
         IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'js_user') THEN
           CREATE ROLE js_user NOLOGIN; GRANT js_user TO realtime_authenticator;
         END IF;
       END $$;
       GRANT SELECT ON js_items TO js_user;`);
});

/** A fresh table of `js_items`' shape, watched. */
let tables = 0;
function table() {
  const name = `js_t${++tables}_${process.pid}`;
  sql(`CREATE TABLE ${name} (id int PRIMARY KEY, label text, n int); SELECT realtime_watch('${name}');
       GRANT SELECT ON ${name} TO js_user`);
  return name;
}

function collect(rt, name, options = {}) {
  const got = [];
  const sub = rt.subscribe(name, options, (m) => got.push(m));
  return { got, sub };
}

const live = (sub) => until(() => sub.status === 'live', 'the subscription to be live');

test('changes arrive in commit order with their rows', async () => {
  const name = table();
  const rt = connect(WS_URL);
  const { got, sub } = collect(rt, name);
  await live(sub);
  sql(`INSERT INTO ${name} VALUES (1, 'a', 1), (2, 'b', 2); UPDATE ${name} SET n = 10 WHERE id = 1;
       DELETE FROM ${name} WHERE id = 2`);
  await until(() => got.length === 4, '4 changes');
  assert.deepEqual(got.map((m) => m.op), ['INSERT', 'INSERT', 'UPDATE', 'DELETE']);
  assert.deepEqual(got[2].new, { id: 1, label: 'a', n: 10 });
  assert.deepEqual(got[2].old, { id: 1, label: 'a', n: 1 });
  assert.deepEqual(got[3].old, { id: 2, label: 'b', n: 2 });
  assert.ok(got.every((m, i) => i === 0 || m.position > got[i - 1].position));
  assert.equal(sub.position, got[3].position);
  rt.close();
});

test('a snapshot arrives as one message, then only the changes after it', async () => {
  const name = table();
  sql(`INSERT INTO ${name} SELECT g, 'row ' || g, g FROM generate_series(1, 1200) g`);
  const rt = connect(WS_URL);
  const { got, sub } = collect(rt, name, { snapshot: true, order: 'id.desc', filter: 'n=gt.100' });
  await live(sub);
  sql(`INSERT INTO ${name} VALUES (5000, 'late', 5000), (5001, 'filtered out', 1)`);
  await until(() => got.length === 2, 'the snapshot and one change');
  assert.equal(got[0].type, 'snapshot');
  assert.equal(got[0].rows.length, 1100);
  assert.equal(got[0].rows[0].id, 1200, 'ordered as asked');
  assert.equal(got[1].new.id, 5000);
  rt.close();
});

test('tables() lists what the principal may read', async () => {
  const anon = connect(WS_URL);
  await until(() => anon.status === 'open', 'open');
  const all = (await anon.tables()).map((t) => `${t.schema}.${t.table}`);
  assert.ok(all.includes('public.js_items') && all.includes('public.js_secret'), all.join());
  anon.close();

  const user = connect(WS_URL, { token: token({ role: 'js_user', exp: now() + 600 }) });
  await until(() => user.status === 'open', 'open');
  const mine = await user.tables();
  const names = mine.map((t) => t.table);
  assert.ok(names.includes('js_items'));
  assert.ok(!names.includes('js_secret'), 'no SELECT on js_secret');
  assert.deepEqual(mine.find((t) => t.table === 'js_items').events, ['INSERT', 'UPDATE', 'DELETE', 'TRUNCATE']);
  user.close();
});

test('after the worker is terminated it reconnects and resumes without loss or duplicates', async () => {
  const name = table();
  const rt = connect(WS_URL, { minBackoff: 50, maxBackoff: 500 });
  const statuses = [];
  rt.on('status', (s) => statuses.push(s));
  const gaps = [];
  rt.on('gap', (g) => gaps.push(g));
  const { got, sub } = collect(rt, name);
  await live(sub);
  let id = 0;
  const writer = (async () => {
    while (id < 300) {
      id++;
      await sqlAsync(`INSERT INTO ${name} VALUES (${id}, 'x', ${id})`);
    }
  })();
  await until(() => got.length >= 50, 'some changes');
  terminateWorker();
  await writer;
  await until(() => got.length >= 300, 'every change', 30000);
  await sleep(300);
  assert.deepEqual(got.map((m) => m.new.id), Array.from({ length: 300 }, (_, i) => i + 1));
  assert.ok(statuses.includes('reconnecting'), statuses.join());
  assert.equal(rt.status, 'open');
  assert.deepEqual(gaps, []);
  rt.close();
});

test('a list of servers skips the one that is down and resumes on the next', async () => {
  const name = table();
  // A port nothing listens on stands for a server that is down.
  const down = await new Promise((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(`ws://127.0.0.1:${port}/realtime`));
    });
  });
  const rt = connect([down, WS_URL], { minBackoff: 50, maxBackoff: 200 });
  const { got, sub } = collect(rt, name);
  await live(sub);
  assert.equal(rt.url, websocketUrl(WS_URL));
  sql(`INSERT INTO ${name} SELECT g, 'x', g FROM generate_series(1, 100) g`);
  await until(() => got.length === 100, '100 changes');
  // The server restarts its worker: the client tries the next (down), then comes back.
  terminateWorker();
  sql(`INSERT INTO ${name} SELECT g, 'y', g FROM generate_series(101, 200) g`);
  await until(() => got.length >= 200, 'every change', 30000);
  await sleep(300);
  assert.deepEqual(got.map((m) => m.new.id), Array.from({ length: 200 }, (_, i) => i + 1));
  rt.close();
});

test('channel() receives relayed notifications and realtime_send, and resumes after a restart', async () => {
  const channel = `js_orders_${process.pid}`;
  sql(`SELECT realtime_relay('${channel}', as_json => true, readers => '{realtime_reader}')`);
  const rt = connect(WS_URL, { minBackoff: 50, maxBackoff: 500 });
  const got = [];
  const sub = rt.channel(channel, (m) => got.push(m));
  await live(sub);
  sql(`SELECT pg_notify('${channel}', '{"id": 1}')`);
  sql(`SELECT realtime_send('${channel}', 'shipped', '{"id": 1}')`);
  await until(() => got.length === 2, 'two messages');
  terminateWorker();
  // Sent while the client is away: the next worker publishes it, the client resumes to it.
  sql(`SELECT realtime_send('${channel}', 'delivered', '{"id": 1}')`);
  await until(() => got.length === 3, 'the third message', 30000);
  await sleep(300);
  assert.deepEqual(
    got.map((m) => [m.type, m.event, m.payload]),
    [
      ['message', 'notify', { id: 1 }],
      ['message', 'shipped', { id: 1 }],
      ['message', 'delivered', { id: 1 }],
    ],
  );
  assert.ok(got.every((m) => m.channel === channel && m.pid > 0));
  assert.equal(sub.position, got[2].position);
  rt.close();
});

test('send() broadcasts to the other subscribers of a channel, as its policies allow', async () => {
  sql(`GRANT USAGE ON SCHEMA realtime TO realtime_reader;
       GRANT SELECT, INSERT ON realtime.messages TO realtime_reader;
       DROP POLICY IF EXISTS js_rooms_read ON realtime.messages;
       DROP POLICY IF EXISTS js_rooms_write ON realtime.messages;
       CREATE POLICY js_rooms_read ON realtime.messages FOR SELECT TO realtime_reader
         USING (realtime.topic() LIKE 'js_room%');
       CREATE POLICY js_rooms_write ON realtime.messages FOR INSERT TO realtime_reader
         WITH CHECK (realtime.topic() = 'js_room_open')`);
  const [a, b] = [connect(WS_URL), connect(WS_URL)];
  const heard = [];
  const subs = [
    a.channel('js_room_open', () => {}),
    b.channel('js_room_open', (m) => heard.push(m)),
    a.channel('js_room_closed', () => {}),
  ];
  await Promise.all(subs.map(live));
  assert.equal(await a.send('js_room_open', 'cursor', { x: 1 }), 1);
  await until(() => heard.length === 1, 'the broadcast');
  assert.deepEqual(heard[0], { type: 'broadcast', channel: 'js_room_open', event: 'cursor', payload: { x: 1 } });
  // The write policy allows one room only; a refusal rejects with its code.
  await assert.rejects(a.send('js_room_closed', 'cursor', {}), { code: 'forbidden' });
  await assert.rejects(a.send('js_nowhere', 'cursor', {}), { code: 'not_subscribed' });
  a.close();
  b.close();
});

test('track() makes a connection present; channel(..., {presence: true}) follows who is', async () => {
  sql(`DROP POLICY IF EXISTS js_presence_read ON realtime.messages;
       DROP POLICY IF EXISTS js_presence_write ON realtime.messages;
       CREATE POLICY js_presence_read ON realtime.messages FOR SELECT TO realtime_reader
         USING (realtime.topic() = 'js_lobby');
       CREATE POLICY js_presence_write ON realtime.messages FOR INSERT TO realtime_reader
         WITH CHECK (realtime.topic() = 'js_lobby' AND extension = 'presence')`);
  const [a, b] = [connect(WS_URL), connect(WS_URL)];
  const seen = [];
  const subs = [a.channel('js_lobby', () => {}), b.channel('js_lobby', { presence: true }, (m) => seen.push(m))];
  await Promise.all(subs.map(live));
  const key = await a.track('js_lobby', { name: 'ada' });
  await until(() => seen.some((m) => m.type === 'presence_diff'), 'the join');
  assert.deepEqual(seen.map((m) => m.type), ['presence_state', 'presence_diff']);
  assert.deepEqual(seen[1].joins, { [key]: { name: 'ada' } });
  a.close();
  await until(() => seen.length === 3, 'the leave');
  assert.deepEqual(seen[2].leaves, { [key]: { name: 'ada' } });
  b.close();
});

test('tokens are refreshed with getToken before they expire, without losing changes', async () => {
  const name = table();
  let minted = 0;
  // Lifetime 6 s; the server ends subscriptions 5 s after exp without a fresh one.
  const getToken = () => {
    minted++;
    return token({ role: 'js_user', exp: now() + 6 });
  };
  const rt = connect(WS_URL, { getToken });
  const signedIn = [];
  rt.on('authenticated', (m) => signedIn.push(m));
  const { got, sub } = collect(rt, name);
  await live(sub);
  for (let i = 1; i <= 140; i++) {
    await sqlAsync(`INSERT INTO ${name} VALUES (${i}, 'x', ${i})`);
    await sleep(100);
  }
  await until(() => got.length >= 140, 'every change');
  assert.ok(minted >= 3, `minted ${minted} tokens`);
  assert.ok(signedIn.length >= 3, `signed in ${signedIn.length} times`);
  assert.ok(got.every((m) => m.type === 'change'), JSON.stringify(got.find((m) => m.type !== 'change')));
  assert.deepEqual(got.map((m) => m.new.id), Array.from({ length: 140 }, (_, i) => i + 1));
  rt.close();
});

test('a fixed token that is refused closes the client with an error', async () => {
  const rt = connect(WS_URL, { token: token({ role: 'js_user', exp: now() - 60 }) });
  const errors = [];
  rt.on('error', (e) => errors.push(e));
  await until(() => rt.status === 'closed', 'closed');
  assert.equal(errors[0].code, 'token_expired');
});

test('two subscriptions to one table each get the changes their filters select', async () => {
  const name = table();
  const rt = connect(WS_URL);
  const low = collect(rt, name, { filter: 'n=lt.10' });
  const high = collect(rt, name, { filter: 'n=gte.10' });
  await live(low.sub);
  await live(high.sub);
  sql(`INSERT INTO ${name} VALUES (1, 'a', 5), (2, 'b', 50); UPDATE ${name} SET n = 20 WHERE id = 1`);
  await until(() => high.got.length === 2 && low.got.length === 2, 'routed changes');
  assert.deepEqual(low.got.map((m) => [m.type, m.op, (m.new ?? m.old).id]), [['change', 'INSERT', 1], ['leave', 'UPDATE', 1]]);
  assert.deepEqual(high.got.map((m) => [m.type, m.op, m.new.id]), [['change', 'INSERT', 2], ['change', 'UPDATE', 1]]);
  rt.close();
});

test('unsubscribe stops delivery; server errors reach the error listeners', async () => {
  const name = table();
  const rt = connect(WS_URL);
  const errors = [];
  rt.on('error', (e) => errors.push(e));
  const { got, sub } = collect(rt, name);
  const bad = collect(rt, 'no_such_table');
  await live(sub);
  await until(() => errors.length === 1, 'the error');
  assert.equal(errors[0].code, 'unknown_table');
  assert.equal(errors[0].subscription, bad.sub);
  assert.equal(bad.sub.status, 'ended');
  sub.unsubscribe();
  sql(`INSERT INTO ${name} VALUES (1, 'a', 1)`);
  await rt.ping();
  await sleep(200);
  assert.deepEqual(got, []);
  rt.close();
});

test('/realtime.js is the module under test, cacheable and loadable from any origin', async () => {
  const res = await fetch(`${HTTP_URL}/realtime.js`, { headers: { Origin: 'https://elsewhere.example' } });
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type'), /^text\/javascript/);
  assert.equal(res.headers.get('access-control-allow-origin'), '*');
  assert.match(res.headers.get('cache-control'), /max-age=\d+/);
  const { readFile } = await import('node:fs/promises');
  assert.equal(await res.text(), await readFile(new URL('../realtime.js', import.meta.url), 'utf8'));
  const again = await fetch(`${HTTP_URL}/realtime.js`, { headers: { 'If-None-Match': res.headers.get('etag') } });
  assert.equal(again.status, 304);
});

// ---- stand-ins ----

/** A server that completes the WebSocket handshake and then never says anything. */
async function silentServer() {
  let accepted = 0;
  const sockets = [];
  const server = createServer((socket) => {
    accepted++;
    sockets.push(socket);
    socket.once('data', (data) => {
      const key = /Sec-WebSocket-Key: (.*)\r\n/i.exec(data.toString())[1].trim();
      const accept = createHash('sha1').update(`${key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest('base64');
      socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`);
    });
    socket.on('error', () => {});
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const stop = () => {
    for (const socket of sockets) socket.destroy();
    server.close();
  };
  return { stop, url: `ws://127.0.0.1:${server.address().port}/realtime`, accepted: () => accepted };
}

test('a connection that goes silent is replaced after two heartbeat intervals', async () => {
  const silent = await silentServer();
  const rt = connect(silent.url, { heartbeat: 150, minBackoff: 10, maxBackoff: 20 });
  const statuses = [];
  rt.on('status', (s) => statuses.push(s));
  await until(() => silent.accepted() >= 2, 'a second connection', 5000);
  assert.deepEqual(statuses.slice(0, 2), ['open', 'reconnecting']);
  rt.close();
  silent.stop();
});

/** A WebSocket stand-in that records what is sent and lets a test play the server. */
function fakeSockets() {
  const made = [];
  class FakeSocket {
    readyState = 0;
    sent = [];
    constructor(url) {
      this.url = url;
      this.at = Date.now();
      made.push(this);
    }
    send(text) {
      this.sent.push(JSON.parse(text));
    }
    close() {
      this.readyState = 3;
    }
    open() {
      this.readyState = 1;
      this.onopen?.();
    }
    serve(m) {
      this.onmessage?.({ data: JSON.stringify(m) });
    }
    fail() {
      this.readyState = 3;
      this.onclose?.({ code: 1006 });
    }
  }
  return { made, FakeSocket };
}

test('with a list of servers each attempt after a failure goes to the next', async () => {
  const { made, FakeSocket } = fakeSockets();
  const urls = ['ws://a/realtime', 'ws://b/realtime', 'ws://c/realtime'];
  const rt = connect(urls, { WebSocket: FakeSocket, minBackoff: 10, maxBackoff: 20 });
  for (let i = 1; i <= 4; i++) {
    await until(() => made.length === i, `attempt ${i}`, 2000);
    made[i - 1].fail();
  }
  await until(() => made.length === 5, 'attempt 5', 2000);
  made[4].open();
  assert.equal(rt.status, 'open');
  assert.equal(rt.url, 'ws://b/realtime');
  // Once connected it stays; when that connection is lost, the next server is tried.
  made[4].fail();
  await until(() => made.length === 6, 'attempt 6', 2000);
  assert.deepEqual(made.map((s) => s.url.split('/')[2]), ['a', 'b', 'c', 'a', 'b', 'c']);
  rt.close();
});

test('reconnects back off exponentially with jitter', async () => {
  const { made, FakeSocket } = fakeSockets();
  const rt = connect('ws://stand-in/realtime', { WebSocket: FakeSocket, minBackoff: 40, maxBackoff: 320 });
  for (let i = 1; i <= 6; i++) {
    await until(() => made.length === i, `attempt ${i}`, 2000);
    made[i - 1].fail();
  }
  await until(() => made.length === 7, 'attempt 7', 2000);
  const waits = made.slice(1).map((s, i) => s.at - made[i].at);
  // Attempt n waits between half and all of min(max, min * 2^n).
  const ceilings = [40, 80, 160, 320, 320, 320];
  waits.forEach((w, i) => {
    assert.ok(w >= ceilings[i] / 2 - 5 && w <= ceilings[i] + 40, `wait ${i}: ${w} ms, ceiling ${ceilings[i]}`);
  });
  rt.close();
});

test('a gap is surfaced, and a snapshot subscription reads its snapshot again', async () => {
  const { made, FakeSocket } = fakeSockets();
  const rt = connect('ws://stand-in/realtime', { WebSocket: FakeSocket });
  const gaps = [];
  rt.on('gap', (g) => gaps.push(g));
  const got = [];
  rt.subscribe('items', { snapshot: true }, (m) => got.push(m));
  await until(() => made.length === 1, 'a socket');
  const ws = made[0];
  ws.open();
  assert.deepEqual(ws.sent[0], { type: 'subscribe', id: '1', table: 'items', snapshot: true });
  ws.serve({ type: 'subscribed', id: '1', schema: 'public', table: 'items', events: ['INSERT'], position: 10 });
  ws.serve({ type: 'snapshot', id: '1', rows: [{ id: 1 }] });
  ws.serve({ type: 'snapshot_end', id: '1', rows: 1, position: 10, token: '5:5:' });
  ws.serve({ type: 'change', position: 11, op: 'INSERT', schema: 'public', table: 'items', new: { id: 2 }, old: null });
  const gap = { type: 'gap', reason: 'slow_client', from_position: 12, to_position: 20 };
  ws.serve(gap);
  assert.deepEqual(gaps, [gap]);
  assert.deepEqual(got.map((m) => m.type), ['snapshot', 'change', 'gap']);
  assert.deepEqual(ws.sent.slice(1), [
    { type: 'unsubscribe', id: '1' },
    { type: 'subscribe', id: '2', table: 'items', snapshot: true },
  ]);
  // A reconnect resumes the new subscription from where it got to, without its snapshot.
  ws.serve({ type: 'subscribed', id: '2', schema: 'public', table: 'items', events: ['INSERT'], position: 21 });
  ws.serve({ type: 'snapshot_end', id: '2', rows: 0, position: 21, token: '7:7:' });
  ws.fail();
  await until(() => made.length === 2, 'a second socket', 2000);
  made[1].open();
  assert.deepEqual(made[1].sent[0], { type: 'subscribe', id: '2', table: 'items', since: 21, after_snapshot: '7:7:' });
  rt.close();
});

test('helpers: filters, token expiry, addresses', () => {
  const f = parseFilter('kind=in.(scratch,"a,b",dent)');
  assert.deepEqual(f, { column: 'kind', op: 'in', values: ['scratch', 'a,b', 'dent'] });
  assert.ok(matches(f, { kind: 'a,b' }));
  assert.ok(!matches(f, { kind: 'stain' }));
  assert.ok(matches(parseFilter('score=gte.0.5'), { score: '0.75' }));
  assert.ok(!matches(parseFilter('score=gte.0.5'), { score: 0.25 }));
  assert.ok(!matches(parseFilter('score=gte.0.5'), { score: null }));
  assert.equal(jwtExpiry(token({ exp: 1234 })), 1234);
  assert.equal(jwtExpiry('garbage'), null);
  assert.equal(websocketUrl('http://db:8080'), 'ws://db:8080/realtime');
  assert.equal(websocketUrl('https://db/'), 'wss://db/realtime');
  assert.equal(websocketUrl('ws://db:1/realtime'), 'ws://db:1/realtime');
});

test('realtime.d.ts types the API, and realtime.js checks against its own JSDoc', () => {
  const path = (p) => fileURLToPath(new URL(p, import.meta.url));
  // TypeScript comes with the browser tests' tooling (tests/browser/package.json).
  const tsc = (...args) =>
    execFileSync(process.execPath, [path('../../../tests/browser/node_modules/typescript/bin/tsc'), '--noEmit',
      '--target', 'es2022', '--lib', 'es2022,dom', '--module', 'es2022', '--moduleResolution', 'bundler', ...args],
    { encoding: 'utf8' });
  tsc('--strict', path('usage.ts'));
  tsc('--allowJs', '--checkJs', path('../realtime.js'));
});
