// B: the browser end to end. Headless Chromium shows the defects dashboard served by the
// worker; 1,000 changes are committed at 100/s and the page measures, for each, the time from
// its commit_time to the frame that shows it. Then the worker is terminated while changes keep
// coming, and the time until the page is live again (and until it shows the next change) is
// measured. Prints one JSON line.
//   node bench/browser.mjs HTTP_URL PSQL PGPORT [changes] [rate] [terminations]
import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { chromium } from '../tests/browser/node_modules/playwright-core/index.mjs';

const [http, psql, pgport, changes = '1000', rate = '100', terminations = '5'] = process.argv.slice(2);
const args = (sql) => ['-X', '-q', '-At', '-v', 'ON_ERROR_STOP=1', '-h', '127.0.0.1', '-p', pgport, '-U', 'postgres', '-d', 'postgres', '-c', sql];
const sql = (text) => execFileSync(psql, args(text), { encoding: 'utf8' }).trim();
const sqlAsync = (text) => promisify(execFile)(psql, args(text));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function until(check, what, ms = 60000) {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}
/** `n` single-row transactions at `per_second`, paced against the start, not the last insert. */
const paced = (n, perSecond) => `DO $$
  DECLARE t0 timestamptz := clock_timestamp();
  BEGIN
    FOR i IN 1..${n} LOOP
      INSERT INTO defects (camera, kind, score) VALUES ('bench-' || (i % 8), 'scratch', round(random()::numeric, 4));
      COMMIT;
      PERFORM pg_sleep(greatest(0, extract(epoch FROM t0 + i * interval '1 second' / ${perSecond} - clock_timestamp())));
    END LOOP;
  END $$`;
const pct = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
};

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync'],
});
try {
  sql('TRUNCATE defects');
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  await page.goto(`${http}/examples/defects/`);
  await until(() => page.evaluate(() => window.dashboard.subscription?.status === 'live'), 'the dashboard');
  await page.evaluate(() => {
    window.statusLog = [];
    window.dashboard.rt.on('status', (s) => window.statusLog.push([s, Date.now()]));
  });

  const n = Number(changes);
  await sqlAsync(paced(n, Number(rate)));
  await until(() => page.evaluate((n) => window.dashboard.latencies.length >= n, n), 'every change on screen');
  const latencies = await page.evaluate(() => window.dashboard.latencies.splice(0));

  const recoveries = [];
  for (let i = 0; i < Number(terminations); i++) {
    const writing = sqlAsync(paced(Number(rate) * 4, Number(rate)));
    await sleep(1000);
    const seen = await page.evaluate(() => window.dashboard.renders);
    const at = Date.now();
    sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'realtime_ext'");
    await until(() => page.evaluate((at) => window.statusLog.some(([s, t]) => s === 'open' && t >= at), at), 'reconnected');
    const open = await page.evaluate((at) => window.statusLog.find(([s, t]) => s === 'open' && t >= at)[1], at);
    // The next frame that shows a change committed after the page was live again.
    await until(() => page.evaluate(([seen]) => window.dashboard.renders > seen + 1, [seen]), 'a change after recovery');
    recoveries.push({ live_ms: open - at, shown_ms: Date.now() - at });
    await writing;
    await page.evaluate(() => window.dashboard.latencies.splice(0));
  }
  const rows = Number(sql('SELECT count(*) FROM defects'));
  const shown = await page.evaluate(() => window.dashboard.rows.size);
  console.log(JSON.stringify({
    scenario: 'browser',
    browser: browser.version(),
    changes: latencies.length,
    rate_per_s: Number(rate),
    commit_to_dom_ms: { p50: pct(latencies, 50), p99: pct(latencies, 99), max: Math.max(...latencies) },
    recoveries,
    recover_live_ms_median: pct(recoveries.map((r) => r.live_ms), 50),
    rows_in_table: rows,
    rows_on_page: shown,
  }));
} finally {
  await browser.close();
}
