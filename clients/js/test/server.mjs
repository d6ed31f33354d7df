// The real server these tests run against, as the harness that started it describes it in the
// environment (tests/browser.rs): its WebSocket and HTTP addresses, SQL through psql, and
// tokens signed with its secret.
import { execFile, execFileSync } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { promisify } from 'node:util';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run these tests through cargo test --test browser`);
  return value;
};

export const WS_URL = env('REALTIME_WS_URL');
export const HTTP_URL = env('REALTIME_HTTP_URL');
const PSQL = env('REALTIME_PSQL');
const PGPORT = env('REALTIME_PGPORT');
const SECRET = env('REALTIME_JWT_SECRET');

const psqlArgs = (sql) => ['-X', '-q', '-At', '-v', 'ON_ERROR_STOP=1', '-h', '127.0.0.1', '-p', PGPORT, '-U', 'postgres', '-d', 'postgres', '-c', sql];

/** Run SQL and return psql's unaligned output. */
export function sql(text) {
  return execFileSync(PSQL, psqlArgs(text), { encoding: 'utf8' }).trim();
}

/** The same, without blocking the event loop (for steady writers running beside a client). */
export async function sqlAsync(text) {
  const { stdout } = await promisify(execFile)(PSQL, psqlArgs(text), { encoding: 'utf8' });
  return stdout.trim();
}

/** Run a file of SQL. */
export function sqlFile(path) {
  execFileSync(PSQL, [...psqlArgs('SELECT 1').slice(0, -2), '-f', path], { encoding: 'utf8' });
}

/** A JWT for `claims`, signed with the server's secret (HS256). */
export function token(claims) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
  return `${body}.${createHmac('sha256', SECRET).update(body).digest('base64url')}`;
}

export const now = () => Math.floor(Date.now() / 1000);

/** Terminate the realtime worker; the postmaster starts it again. */
export function terminateWorker() {
  return sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'realtime_ext'");
}

/** Resolve when `check()` is truthy, polling; fail with `what` after `ms`. */
export async function until(check, what, ms = 15000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
