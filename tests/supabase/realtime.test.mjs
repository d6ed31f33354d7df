// The official Supabase Realtime clients (@supabase/supabase-js and @supabase/realtime-js from
// npm, unmodified) against realtime_ext's /realtime/v1 endpoint. Every callback payload is
// compared with what SQL says about the row.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createClient } from '@supabase/supabase-js';
import { RealtimeClient } from '@supabase/realtime-js';
import WebSocket from 'ws';
import { HTTP_URL, sql, token, now, until } from '../../clients/js/test/server.mjs';

const READER = 'realtime_reader';
const anonKey = token({ role: READER, exp: now() + 3600 });
const userToken = (sub) => token({ role: 'supa_user', sub, exp: now() + 3600 });
const clients = [];

before(() => {
  sql(`CREATE TABLE supa_defects (id int PRIMARY KEY, camera text, score numeric, meta jsonb,
                                   seen boolean, tags text[], at timestamptz);
       SELECT realtime_watch('supa_defects');
       CREATE TABLE supa_owned (id int PRIMARY KEY, owner text, note text);
       ALTER TABLE supa_owned ENABLE ROW LEVEL SECURITY;
       CREATE POLICY mine ON supa_owned FOR SELECT
         USING (owner = current_setting('request.jwt.claims', true)::json->>'sub');
       SELECT realtime_watch('supa_owned');
       CREATE ROLE supa_user NOLOGIN;
       GRANT supa_user TO realtime_authenticator;
       GRANT SELECT ON supa_owned TO supa_user;
       -- Rooms "line:*" as a Supabase project authorizes private channels: anyone with the
       -- anon key may receive and broadcast there; nobody may use any other room.
       GRANT USAGE ON SCHEMA realtime TO ${READER};
       GRANT SELECT, INSERT ON realtime.messages TO ${READER};
       CREATE POLICY line_read ON realtime.messages FOR SELECT TO ${READER}
         USING (realtime.topic() LIKE 'line:%');
       CREATE POLICY line_send ON realtime.messages FOR INSERT TO ${READER}
         WITH CHECK (realtime.topic() LIKE 'line:%' AND extension IN ('broadcast', 'presence'));`);
});

after(async () => {
  for (const c of clients) await c.removeAllChannels?.();
  for (const c of clients) (c.realtime ?? c).disconnect();
});

/** supabase-js pointed at the worker, as an application would point it at a project. */
function supabase(key = anonKey) {
  const client = createClient(HTTP_URL, key, {
    realtime: { transport: WebSocket, heartbeatIntervalMs: 500 },
    auth: { persistSession: false, autoRefreshToken: false },
  });
  clients.push(client);
  return client;
}

/** Subscribe `channel`; resolve when SUBSCRIBED, fail on any other end. */
function subscribed(channel) {
  return new Promise((resolve, reject) => {
    channel.subscribe((status, err) => {
      if (status === 'SUBSCRIBED') resolve(channel);
      else if (status !== 'CLOSED') reject(new Error(`${status}: ${err?.message}`));
    });
  });
}

/** The row as SQL renders it (row_to_json), for comparing with a callback's record. */
const row = (table, id) => JSON.parse(sql(`SELECT row_to_json(t) FROM ${table} t WHERE id = ${id}`));

test('postgres_changes through supabase-js: INSERT, UPDATE and DELETE as SQL has them', async () => {
  const got = [];
  const systems = [];
  const client = supabase();
  const channel = client
    .channel('defects-feed')
    .on('postgres_changes', { event: '*', schema: 'public', table: 'supa_defects' }, (p) => got.push(p))
    .on('system', {}, (m) => systems.push(m));
  await subscribed(channel);
  await until(() => systems.some((m) => m.message === 'Subscribed to PostgreSQL'), 'the system message');

  sql(`INSERT INTO supa_defects VALUES (1, 'cam-1', 0.9, '{"frame": 42}', true, '{a,b}', '2026-11-23 02:16:19.158+00')`);
  const inserted = row('supa_defects', 1);
  sql(`UPDATE supa_defects SET camera = 'cam-2' WHERE id = 1`);
  const updated = row('supa_defects', 1);
  sql(`DELETE FROM supa_defects WHERE id = 1`);
  await until(() => got.length >= 3, 'three changes');

  assert.deepEqual(got.map((p) => p.eventType), ['INSERT', 'UPDATE', 'DELETE']);
  for (const p of got) {
    assert.equal(p.schema, 'public');
    assert.equal(p.table, 'supa_defects');
    assert.equal(p.errors, null);
    assert.match(p.commit_timestamp, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
  }
  assert.deepEqual(got[0].new, inserted);
  assert.deepEqual(got[0].old, {});
  assert.deepEqual(got[1].new, updated);
  // The old row whole, not only its key (Supabase sends the key unless REPLICA IDENTITY FULL).
  assert.deepEqual(got[1].old, inserted);
  assert.deepEqual(got[2].new, {});
  assert.deepEqual(got[2].old, updated);
});

test('a filtered binding fires only for rows SQL says match, and only its event', async () => {
  const got = { hot: [], updates: [] };
  const client = supabase();
  const channel = client
    .channel('hot')
    .on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'supa_defects', filter: 'score=gte.0.5' },
      (p) => got.hot.push(p.new.id))
    .on('postgres_changes', { event: 'UPDATE', schema: 'public', table: 'supa_defects' },
      (p) => got.updates.push(p.new.id));
  await subscribed(channel);
  sql(`INSERT INTO supa_defects (id, score) SELECT g, g / 10.0 FROM generate_series(10, 1, -1) g`);
  sql(`UPDATE supa_defects SET camera = 'x' WHERE id = 3`);
  const expected = sql(`SELECT string_agg(id::text, ',' ORDER BY id DESC) FROM supa_defects WHERE score >= 0.5`);
  await until(() => got.updates.length === 1, 'the update');
  assert.deepEqual(got.hot.join(','), expected);
  assert.deepEqual(got.updates, [3]);
  sql('DELETE FROM supa_defects');
});

test('a binding with select gets only those columns', async () => {
  const got = [];
  const client = supabase();
  const channel = client
    .channel('narrow')
    .on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'supa_defects', select: ['id', 'camera'] },
      (p) => got.push(p));
  await subscribed(channel);
  sql(`INSERT INTO supa_defects (id, camera, score) VALUES (200, 'narrow', 0.7)`);
  await until(() => got.length === 1, 'the insert');
  assert.deepEqual(got[0].new, { id: 200, camera: 'narrow' });
  sql('DELETE FROM supa_defects');
});

test('every filter operator through supabase-js selects what SQL selects', async () => {
  const filters = [
    ['score=gte.0.5', 'score >= 0.5'], ['camera=neq.cam-1', 'camera <> \'cam-1\''],
    ['id=in.(3,4,5)', 'id IN (3, 4, 5)'], ['camera=like.cam-%', 'camera LIKE \'cam-%\''],
    ['camera=ilike.CAM-1%', 'camera ILIKE \'CAM-1%\''], ['seen=is.true', 'seen IS TRUE'],
    ['camera=is.null', 'camera IS NULL'], ['score=isdistinct.0.5', 'score IS DISTINCT FROM 0.5'],
    ['id=not.in.(3,4,5)', 'NOT (id IN (3, 4, 5))'], ['id=gt.2,score=lt.0.8', 'id > 2 AND score < 0.8'],
    ['id=lte.3', 'id <= 3'], ['id=lt.3', 'id < 3'], ['id=gt.8', 'id > 8'], ['id=eq.7', 'id = 7'],
  ];
  const got = filters.map(() => []);
  const client = supabase();
  let channel = client.channel('every-filter');
  filters.forEach(([filter], i) => {
    channel = channel.on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'supa_defects', filter },
      (p) => got[i].push(p.new.id));
  });
  await subscribed(channel);
  sql(`INSERT INTO supa_defects (id, camera, score, seen)
       SELECT g, CASE WHEN g % 4 = 0 THEN NULL ELSE 'cam-' || g END, g / 10.0,
              CASE WHEN g % 3 = 0 THEN NULL ELSE g % 2 = 0 END
         FROM generate_series(1, 12) g`);
  for (const [i, [filter, condition]] of filters.entries()) {
    const want = sql(`SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM supa_defects WHERE ${condition}`);
    assert.notEqual(want, '', `${filter}: a case that selects nothing proves little`);
    await until(() => got[i].length === want.split(',').length, `${filter}'s rows`);
    assert.equal([...got[i]].sort((a, b) => a - b).join(','), want, filter);
  }
  sql('DELETE FROM supa_defects');
});

test('bad bindings leave the channel joined and are told in system messages', async () => {
  const systems = [];
  const client = supabase();
  const channel = client
    .channel('bad')
    .on('postgres_changes', { event: '*', schema: 'public', table: 'no_such_table' }, () => {})
    .on('postgres_changes', { event: '*', schema: 'public', table: 'supa_defects', filter: 'nope=eq.1' }, () => {})
    .on('postgres_changes', { event: '*', schema: 'public', table: 'supa_defects', filter: 'camera=match.^c' }, () => {})
    .on('postgres_changes', { event: '*', schema: 'public', table: 'supa_defects', select: ['id', 'nope2'] }, () => {})
    .on('system', {}, (m) => systems.push(m));
  await subscribed(channel);
  await until(() => systems.filter((m) => m.status === 'error').length === 4, 'four system errors');
  const errors = systems.filter((m) => m.status === 'error').map((m) => m.message).join(' | ');
  assert.match(errors, /no_such_table.*does not exist/);
  assert.match(errors, /column "nope" does not exist/);
  assert.match(errors, /match \(regular expressions\) is not supported/);
  assert.match(errors, /column "nope2" does not exist/);
  assert.equal(channel.state, 'joined');
});

test('heartbeats are answered, and a channel removed is left', async () => {
  const beats = [];
  const realtime = new RealtimeClient(`${HTTP_URL.replace('http', 'ws')}/realtime/v1`, {
    params: { apikey: anonKey },
    transport: WebSocket,
    heartbeatIntervalMs: 200,
    heartbeatCallback: (status) => beats.push(status),
  });
  clients.push(realtime);
  const channel = realtime.channel('leaving');
  await subscribed(channel);
  await until(() => beats.filter((s) => s === 'ok').length >= 2, 'two answered heartbeats');
  assert.ok(!beats.includes('timeout'), `heartbeats: ${beats}`);
  assert.equal(await realtime.removeChannel(channel), 'ok');
  assert.equal(channel.state, 'closed');
});

test('vsn 1.0.0: the same changes in JSON-object frames', async () => {
  const got = [];
  const realtime = new RealtimeClient(`${HTTP_URL.replace('http', 'ws')}/realtime/v1`, {
    params: { apikey: anonKey },
    transport: WebSocket,
    vsn: '1.0.0',
  });
  clients.push(realtime);
  const channel = realtime
    .channel('v1')
    .on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'supa_defects' }, (p) => got.push(p));
  await subscribed(channel);
  sql(`INSERT INTO supa_defects (id, camera) VALUES (100, 'v1')`);
  await until(() => got.length === 1, 'the insert');
  assert.deepEqual(got[0].new, row('supa_defects', 100));
  sql('DELETE FROM supa_defects');
});

test('two users with an owner policy each see exactly their rows; setAuth switches user', async () => {
  const seen = { alice: [], bob: [] };
  for (const who of ['alice', 'bob']) {
    const client = supabase(userToken(who));
    client.realtime.setAuth(userToken(who));
    const channel = client
      .channel(`owned-${who}`)
      .on('postgres_changes', { event: '*', schema: 'public', table: 'supa_owned' }, (p) => seen[who].push(p));
    await subscribed(channel);
  }
  sql(`INSERT INTO supa_owned SELECT g, CASE WHEN g % 3 = 0 THEN 'alice' ELSE 'bob' END, 'n' || g
         FROM generate_series(1, 30) g`);
  const ids = (owner) => sql(`SELECT string_agg(id::text, ',' ORDER BY id) FROM supa_owned WHERE owner = '${owner}'`);
  await until(() => seen.alice.length === 10 && seen.bob.length === 20, 'each user\'s rows');
  assert.equal(seen.alice.map((p) => p.new.id).join(','), ids('alice'));
  assert.equal(seen.bob.map((p) => p.new.id).join(','), ids('bob'));
  for (const p of seen.alice) assert.deepEqual(p.new, row('supa_owned', p.new.id));
});

test('a token the server refuses fails the join with its reason', async () => {
  const forged = anonKey.slice(0, -4) + 'AAAA';
  const client = supabase();
  client.realtime.setAuth(forged);
  const channel = client.channel('forged');
  const status = await new Promise((resolve) => channel.subscribe((s, err) => s !== 'CLOSED' && resolve([s, err?.message])));
  assert.equal(status[0], 'CHANNEL_ERROR');
  assert.match(status[1], /signature|token/i);
  await client.removeChannel(channel);
});

/** A private channel on `room` with `broadcast` config, subscribed, recording what it hears. */
async function room(client, name, broadcast, heard) {
  const channel = client
    .channel(name, { config: { private: true, broadcast } })
    .on('broadcast', { event: 'defect-flag' }, (m) => heard.push(m));
  return subscribed(channel);
}

test('broadcast between two clients, binary (vsn 2.0.0) and JSON (vsn 1.0.0), with self and ack', async () => {
  const heard = { a: [], b: [], v1: [] };
  const a = await room(supabase(), 'line:3', { self: true, ack: true }, heard.a);
  const b = await room(supabase(), 'line:3', { self: false }, heard.b);
  const v1client = new RealtimeClient(`${HTTP_URL.replace('http', 'ws')}/realtime/v1`, {
    params: { apikey: anonKey }, transport: WebSocket, vsn: '1.0.0',
  });
  clients.push(v1client);
  const v1 = await room(v1client, 'line:3', { self: false }, heard.v1);

  assert.equal(await a.send({ type: 'broadcast', event: 'defect-flag', payload: { id: 7, note: 'recheck' } }), 'ok');
  await until(() => heard.a.length === 1 && heard.b.length === 1 && heard.v1.length === 1, 'the broadcast everywhere');
  for (const m of [heard.a[0], heard.b[0], heard.v1[0]]) {
    assert.equal(m.event, 'defect-flag');
    assert.deepEqual(m.payload, { id: 7, note: 'recheck' });
  }
  // From the vsn 1.0.0 client, as JSON; not back to itself (self: false).
  assert.equal(await v1.send({ type: 'broadcast', event: 'defect-flag', payload: { id: 8 } }), 'ok');
  await until(() => heard.a.length === 2 && heard.b.length === 2, 'the JSON broadcast');
  assert.deepEqual(heard.b[1].payload, { id: 8 });
  assert.equal(heard.v1.length, 1);
});

test('realtime_send() from SQL reaches the channel as a broadcast, at commit', async () => {
  const heard = [];
  await room(supabase(), 'line:4', {}, heard);
  sql(`BEGIN; SELECT realtime_send('line:4', 'defect-flag', '{"id": 9}'); ROLLBACK;
       SELECT realtime_send('line:4', 'defect-flag', '{"id": 10}');`);
  await until(() => heard.length === 1, 'the committed message');
  assert.deepEqual(heard[0].payload, { id: 10 });
});

test('broadcast replay: the newest messages sent since a time, in order, then live ones', async () => {
  const since = Date.now() - 1;
  // 30 messages on line:7 in one transaction, two on another topic, then one more later.
  sql(`SELECT realtime_send('line:7', 'defect-flag', jsonb_build_object('id', g)) FROM generate_series(1, 30) g;
       SELECT realtime_send('line:8', 'defect-flag', '{"id": 99}') FROM generate_series(1, 2);
       SELECT realtime_send('line:7', 'defect-flag', '{"id": 31}');`);
  const ids = (heard) => heard.map((m) => m.payload.id);
  const seq = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);
  // As Supabase: 25 unless a limit is given; beyond Supabase: any limit, from the history.
  const heard = { unlimited: [], newest: [], all: [], future: [] };
  await room(supabase(), 'line:7', { replay: { since } }, heard.unlimited);
  await room(supabase(), 'line:7', { replay: { since, limit: 3 } }, heard.newest);
  await room(supabase(), 'line:7', { replay: { since, limit: 1000 } }, heard.all);
  await room(supabase(), 'line:7', { replay: { since: Date.now() + 60_000 } }, heard.future);
  await until(() => heard.all.length === 31 && heard.newest.length === 3 && heard.unlimited.length === 25, 'the replays');
  sql(`SELECT realtime_send('line:7', 'defect-flag', '{"id": 32}')`);
  await until(() => Object.values(heard).every((h) => ids(h).includes(32)), 'the live message after them');
  assert.deepEqual(ids(heard.unlimited), seq(7, 32));
  assert.deepEqual(ids(heard.newest), [29, 30, 31, 32]);
  assert.deepEqual(ids(heard.all), seq(1, 32));
  assert.deepEqual(ids(heard.future), [32]);
  assert.deepEqual(heard.all[0].payload, { id: 1 });
});

test('a binding with since resumes from a commit_timestamp: what was committed while away, then live', async () => {
  sql(`CREATE TABLE supa_resume (id int PRIMARY KEY, note text); SELECT realtime_watch('supa_resume');`);
  const client = supabase();
  // The application keeps the binding and moves its since along; a rejoin sends it as it is.
  const binding = { event: 'INSERT', schema: 'public', table: 'supa_resume' };
  const first = [];
  const channel = client.channel('resume-1').on('postgres_changes', binding, (p) => {
    first.push(p);
    binding.since = p.commit_timestamp;
  });
  await subscribed(channel);
  sql(`INSERT INTO supa_resume VALUES (1, 'a')`);
  sql(`INSERT INTO supa_resume VALUES (2, 'b')`);
  await until(() => first.length === 2, 'the first two');
  await client.removeChannel(channel);
  sql(`INSERT INTO supa_resume VALUES (3, 'while away')`);
  sql(`INSERT INTO supa_resume VALUES (4, 'while away')`);
  const since = binding.since;
  const again = [];
  await subscribed(client.channel('resume-2').on('postgres_changes', binding, (p) => again.push(p)));
  sql(`INSERT INTO supa_resume VALUES (5, 'live')`);
  await until(() => again.some((p) => p.new.id === 5), 'the live change');
  // Nothing missed, in order; only a change committed in the very millisecond resumed from may
  // come again (a commit_timestamp is only that precise).
  const ids = again.map((p) => p.new.id);
  assert.deepEqual(ids.filter((id) => id > 2), [3, 4, 5]);
  for (const p of again.filter((p) => p.new.id <= 2)) assert.equal(p.commit_timestamp, since);
  for (const p of again) assert.deepEqual(p.new, row('supa_resume', p.new.id));
});

test('a private channel its policies do not grant fails to join; broadcast where sending is not granted is refused', async () => {
  const client = supabase();
  const secret = client.channel('secret:1', { config: { private: true } });
  const [status, message] = await new Promise((resolve) =>
    secret.subscribe((s, err) => s !== 'CLOSED' && resolve([s, err?.message])));
  assert.equal(status, 'CHANNEL_ERROR');
  assert.match(message, /Unauthorized: You do not have permissions to read from this Channel topic: secret:1/);
  await client.removeChannel(secret);

  // A public channel joins (its postgres_changes work), but its room is not open to broadcast
  // unless realtime.public_topics is on.
  const open = await subscribed(client.channel('open:1', { config: { broadcast: { ack: true } } }));
  assert.equal(await open.send({ type: 'broadcast', event: 'x', payload: {} }), 'error');
});

test('presence: track, sync, join and leave events, untrack and disconnect', async () => {
  const events = { a: [], b: [] };
  const join = async (client, key, log) => {
    const channel = client
      .channel('line:5', { config: { private: true, presence: { key } } })
      .on('presence', { event: 'sync' }, () => log.push(['sync']))
      .on('presence', { event: 'join' }, ({ key, newPresences }) => log.push(['join', key, newPresences]))
      .on('presence', { event: 'leave' }, ({ key, leftPresences }) => log.push(['leave', key, leftPresences]));
    return subscribed(channel);
  };
  const a = await join(supabase(), 'inspector-1', events.a);
  const bClient = supabase();
  const b = await join(bClient, 'inspector-2', events.b);

  assert.equal(await a.track({ station: 3 }), 'ok');
  await until(() => Object.keys(b.presenceState()).length === 1, 'b to see a');
  const seen = b.presenceState()['inspector-1'];
  assert.equal(seen.length, 1);
  assert.equal(seen[0].station, 3);
  assert.ok(seen[0].presence_ref, 'each meta has its ref');
  assert.ok(events.b.some(([e, key]) => e === 'join' && key === 'inspector-1'));
  await until(() => Object.keys(a.presenceState()).length === 1, 'a to see itself');

  assert.equal(await b.track({ station: 4 }), 'ok');
  await until(() => Object.keys(a.presenceState()).sort().join() === 'inspector-1,inspector-2', 'a to see both');
  // A new state under the same key replaces the old one.
  assert.equal(await b.track({ station: 5 }), 'ok');
  await until(() => a.presenceState()['inspector-2']?.[0]?.station === 5, 'the new state');
  assert.equal(a.presenceState()['inspector-2'].length, 1);

  assert.equal(await a.untrack(), 'ok');
  await until(() => !b.presenceState()['inspector-1'], 'a to leave');
  assert.ok(events.b.some(([e, key]) => e === 'leave' && key === 'inspector-1'));
  // Disconnecting leaves too.
  bClient.realtime.disconnect();
  await until(() => Object.keys(a.presenceState()).length === 0, 'b to leave on disconnect');
});

test('REST broadcast: httpSend() and send() on a channel not joined reach the joined ones', async () => {
  const heard = [];
  await room(supabase(), 'line:6', {}, heard);
  const sender = supabase();
  const restChannel = sender.channel('line:6', { config: { private: true } });
  await restChannel.httpSend('defect-flag', { id: 11, via: 'httpSend' });
  // Not joined: the client falls back to POST /realtime/v1/api/broadcast.
  const warn = console.warn;
  console.warn = () => {};
  try {
    assert.equal(await restChannel.send({ type: 'broadcast', event: 'defect-flag', payload: { id: 12 } }), 'ok');
  } finally {
    console.warn = warn;
  }
  await until(() => heard.length === 2, 'both REST broadcasts');
  assert.deepEqual(heard.map((m) => m.payload.id), [11, 12]);

  // Where sending is not granted, or without a valid key, nothing is sent.
  await assert.rejects(sender.channel('secret:2', { config: { private: true } }).httpSend('x', {}), /forbidden/);
  const url = `${HTTP_URL}/realtime/v1/api/broadcast`;
  const post = (headers, body) => fetch(url, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body });
  const messages = JSON.stringify({ messages: [{ topic: 'line:6', event: 'defect-flag', payload: { id: 13 } }] });
  assert.equal((await post({ apikey: anonKey.slice(0, -4) + 'AAAA' }, messages)).status, 401);
  assert.equal((await post({ apikey: anonKey }, '{"messages": 3}')).status, 400);
  assert.equal((await post({ apikey: anonKey }, messages)).status, 202);
  await until(() => heard.length === 3, 'the batch form');
  assert.equal(heard.length, 3);

  // Pages may call it from any origin.
  const preflight = await fetch(url, { method: 'OPTIONS', headers: { origin: 'https://app.example', 'access-control-request-method': 'POST' } });
  assert.equal(preflight.status, 204);
  assert.equal(preflight.headers.get('access-control-allow-origin'), '*');
  assert.match(preflight.headers.get('access-control-allow-headers'), /apikey.*authorization.*content-type.*x-client-info/);
});

test('realtime_auth_helpers(): policies written with auth.uid() work unchanged', async () => {
  sql(`SELECT realtime_auth_helpers();
       CREATE TABLE supa_notes (id int PRIMARY KEY, owner uuid, body text);
       ALTER TABLE supa_notes ENABLE ROW LEVEL SECURITY;
       CREATE POLICY own_notes ON supa_notes FOR SELECT USING (owner = auth.uid());
       GRANT SELECT ON supa_notes TO supa_user;
       SELECT realtime_watch('supa_notes');`);
  assert.throws(() => sql('SELECT realtime_auth_helpers()'), /schema "auth" already exists/);
  const ids = ['11111111-1111-1111-1111-111111111111', '22222222-2222-2222-2222-222222222222'];
  const seen = [[], []];
  for (const [i, sub] of ids.entries()) {
    const client = supabase(userToken(sub));
    client.realtime.setAuth(userToken(sub));
    await subscribed(client.channel(`notes-${i}`).on('postgres_changes',
      { event: 'INSERT', schema: 'public', table: 'supa_notes' }, (p) => seen[i].push(p.new.id)));
  }
  sql(`INSERT INTO supa_notes SELECT g, ('{${ids.join(',')}}'::uuid[])[1 + g % 2], 'n' FROM generate_series(1, 20) g`);
  for (const [i, sub] of ids.entries()) {
    const want = sql(`SELECT string_agg(id::text, ',' ORDER BY id) FROM supa_notes WHERE owner = '${sub}'`);
    await until(() => seen[i].length === 10, `${sub}'s notes`);
    assert.equal(seen[i].join(','), want);
  }
});
