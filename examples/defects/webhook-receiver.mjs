// The function a database webhook used to call, reduced to what matters: a local HTTP
// receiver for realtime_ext's webhook of the defects table, which checks every request with
// the Standard Webhooks reference library before it believes a byte of it.
//
//   npm ci --prefix examples/defects
//   WEBHOOK_SECRET=whsec_... node examples/defects/webhook-receiver.mjs    # PORT=9000 by default
//
// The secret is what realtime_webhook_create() returned (SELECT secret FROM realtime_webhooks).
import http from 'node:http';
import { Webhook } from 'standardwebhooks';

const secret = process.env.WEBHOOK_SECRET;
if (!secret) {
  console.error('Set WEBHOOK_SECRET to the secret realtime_webhook_create() returned.');
  process.exit(2);
}
const verifier = new Webhook(secret);
const seen = new Set();

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const body = Buffer.concat(chunks).toString('utf8');
    let change;
    try {
      change = verifier.verify(body, req.headers);
    } catch (e) {
      console.log(`rejected: ${e.message}`);
      res.writeHead(401).end();
      return;
    }
    // A retry of a request already taken carries the same webhook-id: take it once.
    const id = req.headers['webhook-id'];
    if (!seen.has(id)) {
      seen.add(id);
      const d = change.record ?? change.old_record;
      console.log(`verified ${change.type} defect ${d.id} at ${d.camera}: ${d.kind} (${d.score}), position ${change.position}`);
    }
    res.writeHead(204).end();
  });
});
server.listen(Number(process.env.PORT ?? 9000), '127.0.0.1', () => {
  console.log(`listening on http://127.0.0.1:${server.address().port}/defects`);
});
