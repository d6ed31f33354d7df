// supabase-js in a page of headless Chromium (its browser build, unmodified), against the
// worker: the browser's own WebSocket, and the REST broadcast from a page of another origin
// (CORS preflight included).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { chromium } from 'playwright-core';
import { createClient } from '@supabase/supabase-js';
import WebSocket from 'ws';
import { HTTP_URL, sql, token, now, until } from '../../clients/js/test/server.mjs';

const require = createRequire(import.meta.url);
const BUNDLE = require.resolve('@supabase/supabase-js/dist/umd/supabase.js');
const anonKey = token({ role: 'realtime_reader', exp: now() + 3600 });
let browser;
let listener;

before(async () => {
  sql(`CREATE TABLE supa_page (id int PRIMARY KEY, camera text, score numeric, meta jsonb);
       SELECT realtime_watch('supa_page');
       GRANT USAGE ON SCHEMA realtime TO realtime_reader;
       GRANT SELECT, INSERT ON realtime.messages TO realtime_reader;
       CREATE POLICY page_rooms ON realtime.messages FOR SELECT TO realtime_reader
         USING (realtime.topic() LIKE 'page:%');
       CREATE POLICY page_send ON realtime.messages FOR INSERT TO realtime_reader
         WITH CHECK (realtime.topic() LIKE 'page:%');`);
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
           '--disable-component-update', '--disable-sync'],
  });
});
after(async () => {
  await browser?.close();
  listener?.realtime.disconnect();
});

test('supabase-js in a page: postgres_changes as SQL has them, and httpSend across origins', async () => {
  // An opaque origin (about:blank): every request to the worker is cross-origin.
  const page = await browser.newPage();
  const problems = [];
  page.on('pageerror', (e) => problems.push(String(e)));
  await page.addScriptTag({ path: BUNDLE });
  await page.evaluate(async ({ url, key }) => {
    window.got = [];
    window.client = window.supabase.createClient(url, key);
    await new Promise((resolve, reject) => window.client
      .channel('page-feed')
      .on('postgres_changes', { event: '*', schema: 'public', table: 'supa_page' }, (p) => window.got.push(p))
      .subscribe((status, err) => {
        if (status === 'SUBSCRIBED') resolve();
        else if (status !== 'CLOSED') reject(new Error(`${status}: ${err?.message}`));
      }));
  }, { url: HTTP_URL, key: anonKey });

  sql(`INSERT INTO supa_page VALUES (1, 'cam-1', 0.9, '{"frame": 42}'), (2, 'cam-2', 0.1, null)`);
  const rows = JSON.parse(sql(`SELECT json_agg(row_to_json(t) ORDER BY id) FROM supa_page t`));
  sql(`UPDATE supa_page SET score = 0.5 WHERE id = 2`);
  const updated = JSON.parse(sql(`SELECT row_to_json(t) FROM supa_page t WHERE id = 2`));
  await page.waitForFunction(() => window.got.length === 3);
  const got = await page.evaluate(() => window.got);
  assert.deepEqual(got.map((p) => [p.eventType, p.new.id]), [['INSERT', 1], ['INSERT', 2], ['UPDATE', 2]]);
  assert.deepEqual(got[0].new, rows[0]);
  assert.deepEqual(got[1].new, rows[1]);
  assert.deepEqual(got[2].new, updated);
  assert.deepEqual(got[2].old, rows[1]);

  // A Node client listens on a room; the page sends to it over REST.
  const heard = [];
  listener = createClient(HTTP_URL, anonKey, { realtime: { transport: WebSocket } });
  await new Promise((resolve, reject) => listener
    .channel('page:1', { config: { private: true } })
    .on('broadcast', { event: 'flag' }, (m) => heard.push(m.payload))
    .subscribe((status, err) => {
      if (status === 'SUBSCRIBED') resolve();
      else if (status !== 'CLOSED') reject(new Error(`${status}: ${err?.message}`));
    }));
  await page.evaluate(() => window.client.channel('page:1', { config: { private: true } })
    .httpSend('flag', { from: 'page' }));
  await until(() => heard.length === 1, 'the page\'s REST broadcast');
  assert.deepEqual(heard[0], { from: 'page' });
  assert.deepEqual(problems, []);
});
