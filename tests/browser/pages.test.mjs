// The pages realtime_ext serves, in headless Chromium against a real server (started by
// tests/browser.rs): the defects dashboard and the inspector. Screenshots go to
// $REALTIME_SCREENSHOTS.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { HTTP_URL, sql, sqlAsync, sqlFile, token, now, terminateWorker, until, sleep } from '../../clients/js/test/server.mjs';

const SHOTS = process.env.REALTIME_SCREENSHOTS;
const examples = (file) => fileURLToPath(new URL(`../../examples/defects/${file}`, import.meta.url));
let browser;

before(async () => {
  sqlFile(examples('schema.sql'));
  sqlFile(examples('generator.sql'));
  sql(`DO $$ BEGIN
         IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'page_user') THEN
           CREATE ROLE page_user NOLOGIN; GRANT page_user TO realtime_authenticator;
         END IF;
       END $$;
       GRANT SELECT ON defects TO page_user`);
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
           '--disable-component-update', '--disable-sync'],
  });
});
after(() => browser?.close());

async function open(path) {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const problems = [];
  page.on('pageerror', (e) => problems.push(String(e)));
  page.on('console', (m) => m.type() === 'error' && problems.push(m.text()));
  await page.goto(`${HTTP_URL}${path}`);
  return { page, problems };
}

async function shot(page, name) {
  const path = `${SHOTS}/${name}.png`;
  await page.screenshot({ path, fullPage: true });
  console.log(`screenshot: ${path}`);
}

/** What the dashboard's table shows: [id, score] of each row, top to bottom. */
const shown = (page) =>
  page.$$eval('#defects tbody tr', (trs) => trs.map((tr) => [Number(tr.cells[0].textContent), tr.cells[4].textContent]));

/** What SQL says it should show for a minimum score. */
function expected(min) {
  const out = sql(`SELECT id, score FROM defects WHERE score >= ${min} ORDER BY id DESC LIMIT 100`);
  return out ? out.split('\n').map((l) => { const [id, s] = l.split('|'); return [Number(id), s]; }) : [];
}

async function showsWhatSqlSays(page, min, what) {
  let last;
  try {
    await until(async () => JSON.stringify((last = await shown(page))) === JSON.stringify(expected(min)), what, 20000);
  } catch (e) {
    assert.deepEqual(last, expected(min), e.message);
  }
}

/** `n` single-row inserts into defects, `ms` apart; their ids. */
async function insertSlowly(n, ms) {
  const ids = [];
  for (let i = 0; i < n; i++) {
    ids.push(Number(await sqlAsync(`INSERT INTO defects (camera, kind, score) VALUES ('qa-1', 'burr', 0.4) RETURNING id`)));
    await sleep(ms);
  }
  return ids;
}

const insert = (camera, kind, score) =>
  sql(`INSERT INTO defects (camera, kind, score) VALUES ('${camera}', '${kind}', ${score}) RETURNING id`);

test('the dashboard shows exactly what SQL says, through inserts, updates into and out of the filter, and deletes', async () => {
  sql('TRUNCATE defects');
  insert('press-1', 'scratch', 0.91);
  insert('weld-1', 'dent', 0.2);
  const { page, problems } = await open('/examples/defects/#min=0.5');
  await until(() => page.evaluate(() => window.dashboard.subscription?.status === 'live'), 'the dashboard to load');
  await showsWhatSqlSays(page, 0.5, 'the snapshot');

  const a = insert('press-2', 'crack', 0.85);
  const b = insert('paint-1', 'stain', 0.3);
  const c = insert('weld-2', 'burr', 0.66);
  await showsWhatSqlSays(page, 0.5, 'inserts');
  sql(`UPDATE defects SET score = 0.7 WHERE id = ${b}`); // into the filter
  sql(`UPDATE defects SET score = 0.1 WHERE id = ${a}`); // out of it
  sql(`UPDATE defects SET score = 0.99, kind = 'dent' WHERE id = ${c}`); // within it
  await showsWhatSqlSays(page, 0.5, 'updates');
  sql(`DELETE FROM defects WHERE id = ${c}`);
  sql(`BEGIN; INSERT INTO defects (camera, kind, score) VALUES ('qa-1', 'crack', 0.95); ROLLBACK`);
  await showsWhatSqlSays(page, 0.5, 'a delete');
  const row = await page.$eval(`#defects tbody tr[data-id="${b}"]`, (tr) => [...tr.cells].map((c) => c.textContent));
  assert.deepEqual(row.slice(2), ['paint-1', 'stain', '0.7000']);

  // Counters agree with SQL too.
  const counted = await page.$$eval('#counters tr[data-camera]', (trs) =>
    Object.fromEntries(trs.map((tr) => [tr.dataset.camera, Number(tr.cells[tr.cells.length - 1].textContent)])));
  const bySql = Object.fromEntries(sql('SELECT camera, count(*) FROM defects WHERE score >= 0.5 GROUP BY 1')
    .split('\n').map((l) => { const [k, n] = l.split('|'); return [k, Number(n)]; }));
  assert.deepEqual(counted, bySql);

  // Lowering the threshold subscribes again, with a new snapshot.
  await page.selectOption('#min-score', '0');
  await showsWhatSqlSays(page, 0, 'the unfiltered view');
  await shot(page, 'dashboard');
  assert.deepEqual(problems, []);
  await page.close();
});

test('the dashboard recovers by itself after the worker is terminated, and ends with exactly the right rows', async () => {
  sql('TRUNCATE defects');
  const { page, problems } = await open('/examples/defects/#min=0.5');
  await page.evaluate(() => {
    window.statusLog = [];
    window.dashboard.rt.on('status', (s) => window.statusLog.push([s, Date.now()]));
  });
  await until(() => page.evaluate(() => window.dashboard.subscription?.status === 'live'), 'the dashboard to load');

  let stop = false;
  let written = 0;
  const writer = (async () => {
    while (!stop) {
      written++;
      await sqlAsync(`INSERT INTO defects (camera, kind, score) VALUES ('press-1', 'scratch', round(random()::numeric, 4));
                      UPDATE defects SET score = round(random()::numeric, 4) WHERE id = (SELECT max(id) - 3 FROM defects);
                      DELETE FROM defects WHERE id = (SELECT max(id) - 7 FROM defects) AND random() < 0.3`);
      await sleep(20);
    }
  })();
  await sleep(1000);
  const terminatedAt = Date.now();
  terminateWorker();
  await until(() => page.evaluate(() => window.statusLog.some(([s]) => s === 'reconnecting')), 'the page to notice');
  const banner = await page.isVisible('#banner');
  await shot(page, 'dashboard-reconnecting');
  const reopenedAt = await until(
    () => page.evaluate(() => window.statusLog.findLast(([s]) => s === 'open')?.[1]),
    'the page to reconnect',
  );
  await sleep(1000);
  stop = true;
  await writer;
  await showsWhatSqlSays(page, 0.5, 'the rows after recovery');
  // It resumed from its last position: the one snapshot it loaded with was all it needed.
  assert.equal(await page.evaluate(() => window.dashboard.snapshots), 1);
  assert.ok(banner, 'the reconnect banner was shown');
  assert.ok(await page.isHidden('#banner'), 'and is gone');
  console.log(`recovery: page reconnected ${reopenedAt - terminatedAt} ms after pg_terminate_backend; ${written} transactions written`);
  // Chromium logs each refused attempt while the worker is away; nothing else may go wrong.
  assert.deepEqual(problems.filter((p) => !p.includes('ERR_CONNECTION_REFUSED')), []);
  await page.close();
});

test('a page whose token expires refreshes it through getToken without losing changes', async () => {
  const { page, problems } = await open('/examples/defects/');
  await page.exposeFunction('mintToken', () => token({ role: 'page_user', exp: now() + 6 }));
  sql('TRUNCATE defects');
  await page.evaluate(async () => {
    const { connect } = await import('/realtime.js');
    window.got = [];
    window.signedIn = 0;
    window.ended = [];
    const rt = connect(undefined, { getToken: () => window.mintToken() });
    rt.on('authenticated', () => window.signedIn++);
    window.sub = rt.subscribe('defects', { events: ['INSERT'] }, (m) => (m.type === 'change' ? window.got.push(m.new.id) : window.ended.push(m)));
  });
  await until(() => page.evaluate(() => window.sub.status === 'live'), 'live');
  const ids = await insertSlowly(130, 100);
  await until(async () => (await page.evaluate(() => window.got.length)) >= ids.length, 'every insert');
  const { got, signedIn, ended } = await page.evaluate(() => ({ got: window.got, signedIn: window.signedIn, ended: window.ended }));
  assert.deepEqual(got, ids);
  assert.deepEqual(ended, []);
  assert.ok(signedIn >= 3, `signed in ${signedIn} times over 13 s of 6 s tokens`);
  assert.deepEqual(problems, []);
  await page.close();
});

test('a token that expires before its refresh arrives: the page signs in again and resumes without loss', async () => {
  const { page, problems } = await open('/examples/defects/');
  await page.exposeFunction('mintShortToken', () => token({ role: 'page_user', exp: now() + 3 }));
  sql('TRUNCATE defects');
  await page.evaluate(async () => {
    const { connect } = await import('/realtime.js');
    window.got = [];
    window.expired = 0;
    let calls = 0;
    // The first refresh takes 8 s: past exp and the server's 5 s of leeway.
    const getToken = async () => {
      if (++calls === 2) await new Promise((r) => setTimeout(r, 8000));
      return window.mintShortToken();
    };
    const rt = connect(undefined, { getToken });
    rt.on('message', (m) => m.type === 'unsubscribed' && m.reason === 'token_expired' && window.expired++);
    window.sub = rt.subscribe('defects', { events: ['INSERT'] }, (m) => window.got.push(m.type === 'change' ? m.new.id : m.type));
  });
  await until(() => page.evaluate(() => window.sub.status === 'live'), 'live');
  const ids = await insertSlowly(140, 100);
  await until(async () => (await page.evaluate(() => window.got.length)) >= ids.length, 'every insert', 30000);
  const { got, expired } = await page.evaluate(() => ({ got: window.got, expired: window.expired }));
  assert.equal(expired, 1, 'the server ended the subscription once');
  assert.deepEqual(got, ids);
  assert.deepEqual(problems, []);
  await page.close();
});

test('the orders page shows the app\'s own pg_notify messages, relayed, and carries on after a worker restart', async () => {
  // The example's relay names web_anon; this server's anonymous role reads through it.
  sql(`DO $$ BEGIN
         IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'web_anon') THEN CREATE ROLE web_anon NOLOGIN; END IF;
       END $$;
       GRANT web_anon TO realtime_reader`);
  sqlFile(fileURLToPath(new URL('../../examples/orders/schema.sql', import.meta.url)));
  const { page, problems } = await open('/examples/orders/');
  const live = () => page.evaluate(() => window.orders?.subscription.status === 'live');
  await until(live, 'the page to subscribe');
  await page.evaluate(() => {
    window.statuses = [];
    window.orders.rt.on('status', (s) => window.statuses.push(s));
  });
  const placed = (customer, total) => sql(`INSERT INTO orders (customer, total) VALUES ('${customer}', ${total}) RETURNING id`);
  const rows = () => page.$$eval('#orders tbody tr', (trs) => trs.map((tr) => [0, 1, 3].map((i) => tr.cells[i].textContent)));
  // What SQL says, newest change first.
  const expected = () => sql(`SELECT id, customer, status FROM orders ORDER BY updated_at DESC, id DESC`)
    .split('\n').filter(Boolean).map((l) => l.split('|'));
  const a = placed('ada', 42.5);
  const b = placed('grace', 17);
  sql(`UPDATE orders SET status = 'paid', updated_at = clock_timestamp() WHERE id = ${a}`);
  await until(async () => JSON.stringify(await rows()) === JSON.stringify(expected()), 'the page to show the orders', 20000);
  assert.deepEqual((await rows()).map((r) => r[0]), [String(a), String(b)]);
  // NOTIFY reaches listeners only: once the next worker listens (the page is subscribed
  // again), orders reach the page again.
  terminateWorker();
  await until(async () => (await page.evaluate(() => window.statuses.includes('reconnecting'))) && (await live()),
    'the page to be back', 30000);
  placed('linus', 99.99);
  await until(async () => JSON.stringify(await rows()) === JSON.stringify(expected()), 'the order placed after the restart', 20000);
  if (SHOTS) await shot(page, 'orders');
  assert.deepEqual(problems.filter((p) => !p.includes('ERR_CONNECTION_REFUSED')), []);
  await page.close();
});

test('the inspector lists readable tables and renders a change of every op', async () => {
  sql(`CREATE TABLE IF NOT EXISTS inspected (id int PRIMARY KEY, label text, n int); SELECT realtime_watch('inspected');
       TRUNCATE inspected`);
  const { page, problems } = await open('/');
  await until(() => page.evaluate(() => document.querySelectorAll('#table option').length > 0), 'the table list');
  const tables = await page.$$eval('#table option', (os) => os.map((o) => o.textContent));
  assert.ok(tables.includes('public.inspected') && tables.includes('public.defects'), tables.join());
  await page.selectOption('#table', 'public.inspected');
  await page.click('#subscribe button[type=submit]');
  await until(() => page.evaluate(() => window.inspector.rt.status === 'open' && document.querySelectorAll('#subscriptions li').length === 1), 'the subscription');
  await sleep(300);
  sql(`INSERT INTO inspected VALUES (1, 'first', 1); UPDATE inspected SET n = 2, label = 'second' WHERE id = 1;
       DELETE FROM inspected WHERE id = 1; TRUNCATE inspected`);
  await until(() => page.evaluate(() => document.querySelectorAll('#changes li[data-op]').length >= 4), 'four changes');
  const ops = await page.$$eval('#changes li[data-op]', (lis) => lis.map((li) => li.dataset.op));
  assert.deepEqual(ops, ['TRUNCATE', 'DELETE', 'UPDATE', 'INSERT']);
  const changed = await page.$$eval('#changes li[data-op=UPDATE] .diff span.changed', (s) => s.map((x) => x.textContent));
  assert.deepEqual(changed, ['label', '"first"', '"second"', 'n', '1', '2']);
  // Search hides what does not match.
  await page.fill('#search', 'second');
  const visible = await page.$$eval('#changes li[data-op]:not(.hidden)', (lis) => lis.map((li) => li.dataset.op));
  assert.deepEqual(visible, ['DELETE', 'UPDATE']);
  await page.fill('#search', '');
  await until(() => page.evaluate(() => document.querySelectorAll('#figures dd').length > 0), 'health figures');
  await shot(page, 'inspector');
  assert.deepEqual(problems, []);
  await page.close();
});

test('the inspector shows only what a token may see', async () => {
  sql(`CREATE TABLE IF NOT EXISTS hidden_from_pages (id int PRIMARY KEY); SELECT realtime_watch('hidden_from_pages')`);
  const t = token({ role: 'page_user', exp: now() + 600 });
  const { page } = await open(`/#token=${t}`);
  await until(() => page.evaluate(() => document.querySelectorAll('#table option').length > 0), 'the table list');
  const tables = await page.$$eval('#table option', (os) => os.map((o) => o.textContent));
  assert.deepEqual(tables, ['public.defects']);
  assert.match(await page.textContent('#role'), /page_user/);
  await page.close();
});

test('realtime.serve_pages = off turns the pages off but not the client library', async () => {
  sql('ALTER SYSTEM SET realtime.serve_pages = off');
  sql('SELECT pg_reload_conf()');
  try {
    await until(async () => (await fetch(`${HTTP_URL}/`)).status === 404, 'the inspector to go');
    assert.equal((await fetch(`${HTTP_URL}/examples/defects/`)).status, 404);
    assert.equal((await fetch(`${HTTP_URL}/realtime.js`)).status, 200);
  } finally {
    sql('ALTER SYSTEM RESET realtime.serve_pages');
    sql('SELECT pg_reload_conf()');
  }
  await until(async () => (await fetch(`${HTTP_URL}/`)).status === 200, 'the inspector to come back');
  const page = await fetch(`${HTTP_URL}/`);
  assert.match(page.headers.get('content-security-policy'), /frame-ancestors 'none'/);
});
