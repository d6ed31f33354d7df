// The receiver webhook tests POST to. It verifies every request with the Standard Webhooks
// reference library, prints one JSON line per request on stdout (path, webhook-id, whether
// the signature verified, the body, the how-manieth try of that id it was), and answers as
// the path asks:
//   /ok                  200
//   /status/<code>       that status (500, 410, ...)
//   /fail/<n>            500 for the first n tries of each webhook-id, then 200
//   /retry-after/<s>     429 with Retry-After: <s> for the first try of each id, then 200
//   /stall-first/<ms>    the first try of each id waits <ms> before 200, later ones do not
//   /redirect            302 to http://127.0.0.2:<port>/ok, an address the worker refuses
//   /garbage             bytes that are not HTTP, then the connection closes
// A query string tells webhooks on the same path apart; it does not change the answer.
// Usage: node receiver.mjs <secret> [<key.pem> <cert.pem>] (HTTPS with the two); prints
// {"listening": <port>} first.
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { Webhook } from 'standardwebhooks';

const verifier = new Webhook(process.argv[2]);
const tries = new Map();

const [key, cert] = process.argv.slice(3);
const handle = (req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const body = Buffer.concat(chunks).toString('utf8');
    const id = req.headers['webhook-id'] ?? '';
    const key = `${req.url} ${id}`;
    const n = (tries.get(key) ?? 0) + 1;
    tries.set(key, n);
    let valid = false;
    try {
      verifier.verify(body, req.headers);
      valid = true;
    } catch {}
    console.log(JSON.stringify({
      path: req.url, id, timestamp: req.headers['webhook-timestamp'], valid, n, body,
      extra: req.headers['x-extra'] ?? null,
    }));
    const [, kind, arg] = req.url.split('?')[0].split('/');
    const status = (code, headers = {}) => { res.writeHead(code, headers); res.end(`answered ${code}`); };
    switch (kind) {
      case 'ok': return status(200);
      case 'status': return status(Number(arg));
      case 'fail': return status(n <= Number(arg) ? 500 : 200);
      case 'retry-after': return n === 1 ? status(429, { 'retry-after': arg }) : status(200);
      case 'stall-first': return n === 1 ? setTimeout(() => status(200), Number(arg)) : status(200);
      case 'redirect': return status(302, { location: `http://127.0.0.2:${server.address().port}/ok` });
      case 'garbage':
        req.socket.end('this is not HTTP\r\n\r\n');
        return;
      default: return status(404);
    }
  });
};
const server = key
  ? https.createServer({ key: fs.readFileSync(key), cert: fs.readFileSync(cert) }, handle)
  : http.createServer(handle);
server.listen(0, '127.0.0.1', () => {
  console.log(JSON.stringify({ listening: server.address().port }));
});
