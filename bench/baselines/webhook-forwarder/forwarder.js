// The database webhook as people build it beside PostgreSQL: a row trigger calls pg_notify
// (notify_trigger.sql in ../node-bridge), and this process LISTENs and POSTs each payload to
// the receiver with fetch. No queue, no retries, no signature: what it does not receive while
// it is down, or fails to post, is gone.
//   node forwarder.js <postgres url> <channel> <receiver url>
const { Client } = require('pg');

const [url, channel, target] = process.argv.slice(2);
const client = new Client({ connectionString: url });
client.on('notification', (msg) => {
  fetch(target, { method: 'POST', headers: { 'content-type': 'application/json' }, body: msg.payload })
    .catch((e) => console.error(`post failed: ${e.message}`));
});
client.on('error', (e) => { console.error(e.message); process.exit(1); });
client.connect().then(() => client.query(`LISTEN ${channel}`)).then(() => console.log('listening'));
