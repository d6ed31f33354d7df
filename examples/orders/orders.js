// The orders page: the app's own NOTIFY 'orders' messages, relayed by the database
// (realtime_relay('orders', as_json => true)), newest first. Each notification carries the
// order's row as its trigger rendered it; after a reconnect the client resumes where it
// left off, so no update is missed.
import { connect } from '/realtime.js';

const $ = (id) => document.getElementById(id);
const SHOWN = 50;
const orders = new Map(); // id -> latest row

const rt = connect();
window.orders = { rt, orders };

rt.on('status', (status) => {
  $('banner').hidden = status === 'open';
  $('live').classList.toggle('down', status !== 'open');
  $('live').textContent = status === 'open' ? 'live' : status;
});
rt.on('error', (e) => console.warn('realtime:', e.code, e.message));

window.orders.subscription = rt.channel('orders', (m) => {
  if (m.type !== 'message' || typeof m.payload !== 'object' || m.payload === null) return;
  orders.delete(m.payload.id);
  orders.set(m.payload.id, m.payload);
  render();
});

function render() {
  const newest = [...orders.values()].reverse().slice(0, SHOWN);
  const body = document.createElement('tbody');
  for (const o of newest) {
    const tr = body.insertRow();
    for (const text of [o.id, o.customer, o.total, o.status, new Date(o.updated_at).toLocaleTimeString()]) {
      tr.insertCell().textContent = String(text);
    }
  }
  $('orders').tBodies[0].replaceWith(body);
}
