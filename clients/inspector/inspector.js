// The inspector: connect as a token's principal (or anonymously), subscribe to the tables it
// may read, and watch their changes. Everything from the server is shown as text, never HTML.
import { connect } from '/realtime.js';

const $ = (id) => document.getElementById(id);
const MAX_ROWS = 2000;

let rt = null;
let paused = false;
let held = [];
let total = 0;
const perSecond = new Array(60).fill(0);

function el(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === 'class') e.className = v;
    else if (k.startsWith('data-')) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) e.append(c);
  return e;
}

function setStatus(status, text) {
  $('status').dataset.status = status;
  $('status').textContent = text ?? status;
}

$('connect').addEventListener('submit', (e) => {
  e.preventDefault();
  rt?.close();
  $('subscriptions').replaceChildren();
  const token = $('token').value.trim();
  $('role').textContent = '';
  rt = connect(undefined, token ? { token } : {});
  window.inspector = { rt };
  rt.on('status', (s) => {
    setStatus(s);
    if (s === 'open') loadTables();
  });
  rt.on('authenticated', (m) => {
    const until = m.expires_at ? `, token valid until ${new Date(m.expires_at * 1000).toLocaleTimeString()}` : '';
    $('role').textContent = `Signed in as ${m.role}${until}`;
  });
  rt.on('gap', (g) => add(gapItem(g)));
  rt.on('error', (err) => add(el('li', { class: 'note' }, `error ${err.code}: ${err.message}`)));
});

async function loadTables() {
  if (!$('role').textContent) $('role').textContent = 'Connected as the anonymous role';
  let tables;
  try {
    tables = await rt.tables();
  } catch (e) {
    add(el('li', { class: 'note' }, `could not list the tables: ${e.message}`));
    return;
  }
  const select = $('table');
  const current = select.value;
  select.replaceChildren(
    ...tables.map((t) => {
      const name = `${quote(t.schema)}.${quote(t.table)}`;
      return el('option', { value: name, title: t.events.join(', ') }, `${t.schema}.${t.table}`);
    }),
  );
  if (current) select.value = current;
  $('subscribe').querySelector('button').disabled = tables.length === 0;
  if (tables.length === 0) select.append(el('option', { value: '' }, 'no watched table is readable'));
}

function quote(name) {
  return /^[a-z_][a-z0-9_$]*$/.test(name) ? name : `"${name.replace(/"/g, '""')}"`;
}

$('subscribe').addEventListener('submit', (e) => {
  e.preventDefault();
  if (!rt || !$('table').value) return;
  const events = [...$('events').querySelectorAll('input:checked')].map((i) => i.value);
  const filter = $('filter').value.trim();
  const options = { events };
  if (filter) options.filter = filter;
  const sub = rt.subscribe($('table').value, options, (m) => onMessage(m));
  const label = `${$('table').value}${filter ? ` ${filter}` : ''} [${events.join(',')}]`;
  const stop = el('button', { type: 'button', class: 'quiet', title: 'unsubscribe' }, '×');
  const item = el('li', {}, el('span', {}, label), stop);
  stop.onclick = () => {
    sub.unsubscribe();
    item.remove();
  };
  $('subscriptions').append(item);
});

function onMessage(m) {
  if (m.type === 'change' || m.type === 'leave') {
    total++;
    perSecond[perSecond.length - 1]++;
    add(changeItem(m));
  } else if (m.type === 'unsubscribed') {
    add(el('li', { class: 'note' }, `subscription ended: ${m.reason}`));
  }
}

function add(item) {
  if (paused) {
    held.push(item);
    $('pause').textContent = `Resume (${held.length})`;
    return;
  }
  const list = $('changes');
  applySearch(item);
  list.prepend(item);
  while (list.childElementCount > MAX_ROWS) list.lastElementChild.remove();
  counts();
}

function counts() {
  $('counts').textContent = `${total} changes${paused ? ', paused' : ''}`;
}

function changeItem(m) {
  const op = m.type === 'leave' ? 'LEAVE' : m.op;
  const li = el('li', { 'data-op': op, 'data-position': String(m.position) });
  li.append(
    el(
      'div',
      { class: 'meta' },
      el('span', { class: `op ${op}` }, op),
      el('span', {}, `${m.schema}.${m.table}`),
      el('span', { class: 'muted', title: 'position' }, `#${m.position}`),
      el('span', { class: 'muted', title: 'commit time' }, m.commit_time),
    ),
  );
  if (m.op === 'UPDATE' && m.new && m.old && m.type === 'change') li.append(diff(m.old, m.new));
  for (const [name, row] of [['new', m.new], ['old', m.old]]) {
    if (row) li.append(el('details', {}, el('summary', {}, name), el('pre', {}, JSON.stringify(row, null, 2))));
  }
  return li;
}

/** Columns of an UPDATE side by side, the changed ones highlighted. */
function diff(old, now) {
  const grid = el('div', { class: 'diff' }, el('span', { class: 'head' }, 'column'), el('span', { class: 'head' }, 'old'), el('span', { class: 'head' }, 'new'));
  for (const column of Object.keys({ ...old, ...now })) {
    const a = JSON.stringify(old[column]);
    const b = JSON.stringify(now[column]);
    const cls = a === b ? '' : 'changed';
    grid.append(el('span', { class: cls }, column), el('span', { class: cls }, a ?? ''), el('span', { class: cls }, b ?? ''));
  }
  return grid;
}

function gapItem(g) {
  return el('li', { class: 'gap', 'data-op': 'GAP' }, `gap (${g.reason}): positions ${g.from_position}–${g.to_position} not delivered`);
}

$('pause').addEventListener('click', () => {
  paused = !paused;
  $('pause').textContent = paused ? 'Resume' : 'Pause';
  if (!paused) {
    const items = held;
    held = [];
    for (const item of items) add(item);
  }
  counts();
});

$('clear').addEventListener('click', () => {
  $('changes').replaceChildren();
  total = 0;
  counts();
});

function applySearch(item) {
  const q = $('search').value.trim().toLowerCase();
  item.classList.toggle('hidden', q !== '' && !item.textContent.toLowerCase().includes(q));
}
$('search').addEventListener('input', () => {
  for (const item of $('changes').children) applySearch(item);
});

function drawSparkline() {
  const canvas = $('sparkline');
  const ctx = canvas.getContext('2d');
  const max = Math.max(1, ...perSecond);
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.strokeStyle = '#1f5fbf';
  ctx.beginPath();
  perSecond.forEach((n, i) => {
    const x = (i / (perSecond.length - 1)) * canvas.width;
    const y = canvas.height - 2 - (n / max) * (canvas.height - 4);
    if (i === 0) ctx.moveTo(x, y);
    else ctx.lineTo(x, y);
  });
  ctx.stroke();
  canvas.title = `${perSecond[perSecond.length - 2]} changes/s (peak ${max} in the last minute)`;
}
setInterval(() => {
  perSecond.shift();
  perSecond.push(0);
  drawSparkline();
}, 1000);

async function health() {
  try {
    const h = await (await fetch('/health', { cache: 'no-store' })).json();
    const figures = {
      position: h.position,
      connections: h.connections,
      subscriptions: h.subscriptions,
      'queue used': `${kib(h.queue.used_bytes)} / ${kib(h.queue.capacity_bytes)}`,
      'lost transactions': h.queue.lost_transactions,
      'client backlog': kib(h.backlog_bytes),
      'clients behind': h.clients_backlogged,
    };
    $('figures').replaceChildren(...Object.entries(figures).flatMap(([k, v]) => [el('dt', {}, k), el('dd', {}, String(v))]));
  } catch {
    $('figures').replaceChildren(el('dt', {}, 'health'), el('dd', {}, 'unreachable'));
  }
}
const kib = (n) => `${Math.round(n / 1024).toLocaleString()} KiB`;
health();
setInterval(health, 2000);

// #token=... in the address (never sent to the server as part of it) fills the form.
const fromHash = new URLSearchParams(location.hash.slice(1)).get('token');
if (fromHash) $('token').value = fromHash;
$('connect').requestSubmit();
