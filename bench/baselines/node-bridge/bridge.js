// The architecture realtime_ext replaces: a separate server that LISTENs on a PostgreSQL
// connection and rebroadcasts every NOTIFY payload to all WebSocket clients.
// Fed by a plpgsql trigger: pg_notify(channel, row_to_json(NEW)::text) (see notify_trigger.sql).
//   node bridge.js <postgres-url> <port> [channel]
const { Client } = require('pg');
const { WebSocketServer } = require('ws');

const [url, port, channel = 'bench'] = process.argv.slice(2);
const wss = new WebSocketServer({ host: '127.0.0.1', port: Number(port), perMessageDeflate: false });
const db = new Client({ connectionString: url });

db.on('notification', (msg) => {
  // Same envelope as realtime_ext's change messages, so one client measures both.
  const frame = `{"type":"change","commit_time":${JSON.stringify(new Date().toISOString())},"new":${msg.payload}}`;
  for (const ws of wss.clients) {
    if (ws.readyState === 1) ws.send(frame);
  }
});
db.on('error', (e) => { console.error('postgres:', e.message); process.exit(1); });

wss.on('connection', (ws) => {
  ws.on('message', () => ws.send('{"type":"subscribed"}'));
});

db.connect()
  .then(() => db.query(`LISTEN ${channel}`))
  .then(() => console.log(`bridge listening on ${port}, channel ${channel}`));
