// The line-defects dashboard: every defect at or above the chosen score, live. It loads the
// matching rows in one snapshot and then applies each change in place; after a reconnect the
// client resumes where it left off, and after a gap it reads the snapshot again.
import { connect } from '/realtime.js';

const $ = (id) => document.getElementById(id);
const SHOWN = 100;
const SVG = 'http://www.w3.org/2000/svg';

const rows = new Map(); // id -> row
const fresh = new Set(); // ids changed since the last render
const highlighted = new Map(); // id -> until when (ms) its row stays highlighted
const HIGHLIGHT_MS = 1500;
const pending = []; // commit times (ms) of changes waiting for the next render
const latencies = []; // commit -> DOM, ms
let subscription = null;
let renderQueued = false;

const token = new URLSearchParams(location.hash.slice(1)).get('token');
const rt = connect(undefined, token ? { token } : {});
window.dashboard = { rt, rows, latencies, renders: 0, snapshots: 0 };

rt.on('status', (status) => {
  $('banner').hidden = status === 'open';
  $('banner').textContent = status === 'closed' ? 'Disconnected.' : 'Connection lost — reconnecting…';
  $('live').classList.toggle('down', status !== 'open');
  $('live').textContent = status === 'open' ? 'live' : status;
});
rt.on('error', (e) => console.warn('realtime:', e.code, e.message));

function subscribe() {
  subscription?.unsubscribe();
  rows.clear();
  const min = $('min-score').value;
  const options = { snapshot: true };
  if (Number(min) > 0) options.filter = `score=gte.${min}`;
  subscription = rt.subscribe('defects', options, apply);
  window.dashboard.subscription = subscription;
  schedule();
}

function apply(m) {
  switch (m.type) {
    case 'snapshot':
      window.dashboard.snapshots++;
      rows.clear();
      for (const row of m.rows) rows.set(row.id, row);
      break;
    case 'change':
      if (m.op === 'TRUNCATE') rows.clear();
      else if (m.op === 'DELETE') rows.delete(m.old.id);
      else {
        // An UPDATE may change the key: drop the row under its old one.
        if (m.old && m.old.id !== m.new.id) rows.delete(m.old.id);
        rows.set(m.new.id, m.new);
        fresh.add(m.new.id);
      }
      pending.push(commitMs(m.commit_time));
      break;
    case 'leave':
      rows.delete(m.old.id);
      pending.push(commitMs(m.commit_time));
      break;
    default:
      return;
  }
  schedule();
}

/** `2026-01-01T00:00:00.123456Z` in milliseconds, keeping the microseconds. */
function commitMs(text) {
  const micros = Number((text.match(/\.(\d+)/)?.[1] ?? '0').padEnd(6, '0').slice(0, 6));
  return Date.parse(text.replace(/\.\d+/, '')) + micros / 1000;
}

function schedule() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(render);
}

function render() {
  renderQueued = false;
  const sorted = [...rows.values()].sort((a, b) => b.id - a.id);
  renderTable(sorted.slice(0, SHOWN));
  renderCounters(sorted);
  renderHistogram(sorted);
  renderMinutes(sorted);
  $('summary').textContent = `${rows.size.toLocaleString()} defects`;
  fresh.clear();
  // The DOM now shows every change received so far.
  const now = performance.timeOrigin + performance.now();
  for (const t of pending.splice(0)) latencies.push(now - t);
  window.dashboard.renders++;
  if (latencies.length) {
    const recent = latencies.slice(-200).sort((a, b) => a - b);
    $('latency').textContent = `commit → screen: median ${recent[recent.length >> 1].toFixed(1)} ms over the last ${recent.length} changes`;
  }
}

function cell(text, cls) {
  const td = document.createElement('td');
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

/** Rows are kept by id and only rebuilt when they changed. */
function renderTable(shown) {
  const body = $('defects').tBodies[0];
  const now = Date.now();
  for (const id of fresh) highlighted.set(id, now + HIGHLIGHT_MS);
  for (const [id, until] of highlighted) if (until <= now) highlighted.delete(id);
  const existing = new Map([...body.rows].map((tr) => [Number(tr.dataset.id), tr]));
  const wanted = shown.map((row) => {
    let tr = existing.get(row.id);
    if (!tr || fresh.has(row.id)) {
      const next = document.createElement('tr');
      next.dataset.id = row.id;
      const score = Number(row.score);
      const bar = document.createElement('span');
      bar.className = `score ${score >= 0.8 ? 'hot' : score >= 0.5 ? 'warm' : 'ok'}`;
      bar.style.width = `${Math.round(score * 40)}px`;
      const scoreCell = cell(score.toFixed(4));
      scoreCell.prepend(bar);
      next.append(
        cell(String(row.id)),
        cell(new Date(row.created_at).toLocaleTimeString()),
        cell(row.camera),
        cell(row.kind),
        scoreCell,
      );
      tr?.replaceWith(next);
      tr = next;
    }
    const lit = highlighted.has(row.id);
    if (tr.classList.contains('fresh') !== lit) tr.classList.toggle('fresh', lit);
    return tr;
  });
  body.replaceChildren(...wanted);
}

function renderCounters(all) {
  const cameras = [...new Set(all.map((r) => r.camera))].sort();
  const kinds = [...new Set(all.map((r) => r.kind))].sort();
  const count = new Map();
  for (const r of all) count.set(`${r.camera}\u0000${r.kind}`, (count.get(`${r.camera}\u0000${r.kind}`) ?? 0) + 1);
  const head = document.createElement('tr');
  for (const name of ['camera', ...kinds, 'all']) {
    const th = document.createElement('th');
    th.textContent = name;
    head.append(th);
  }
  const lines = cameras.map((c) => {
    const tr = document.createElement('tr');
    let sum = 0;
    tr.append(cell(c));
    for (const k of kinds) {
      const n = count.get(`${c}\u0000${k}`) ?? 0;
      sum += n;
      tr.append(cell(String(n), n ? '' : 'zero'));
    }
    tr.append(cell(String(sum)));
    tr.dataset.camera = c;
    return tr;
  });
  $('counters').replaceChildren(head, ...lines);
}

function bars(svg, values, labels) {
  const max = Math.max(1, ...values);
  const w = 300 / values.length;
  const nodes = [];
  values.forEach((v, i) => {
    const h = (v / max) * 100;
    const rect = document.createElementNS(SVG, 'rect');
    rect.setAttribute('x', String(i * w + 1));
    rect.setAttribute('y', String(105 - h));
    rect.setAttribute('width', String(Math.max(1, w - 2)));
    rect.setAttribute('height', String(h));
    const title = document.createElementNS(SVG, 'title');
    title.textContent = `${labels[i]}: ${v}`;
    rect.append(title);
    nodes.push(rect);
    if (labels.length <= 10 || i % 5 === 0) {
      const text = document.createElementNS(SVG, 'text');
      text.setAttribute('x', String(i * w + 1));
      text.setAttribute('y', '118');
      text.textContent = labels[i];
      nodes.push(text);
    }
  });
  svg.replaceChildren(...nodes);
}

function renderHistogram(all) {
  const bins = new Array(10).fill(0);
  for (const r of all) bins[Math.min(9, Math.floor(Number(r.score) * 10))]++;
  bars($('histogram'), bins, bins.map((_, i) => (i / 10).toFixed(1)));
}

function renderMinutes(all) {
  const now = Math.floor(Date.now() / 60000);
  const counts = new Array(30).fill(0);
  for (const r of all) {
    const ago = now - Math.floor(Date.parse(r.created_at) / 60000);
    if (ago >= 0 && ago < 30) counts[29 - ago]++;
  }
  bars($('minutes'), counts, counts.map((_, i) => `-${29 - i}m`));
}

$('min-score').addEventListener('change', subscribe);
const fromHash = new URLSearchParams(location.hash.slice(1)).get('min');
if (fromHash) $('min-score').value = fromHash;
subscribe();
// Highlights fade and the per-minute chart moves on even when nothing happens.
setInterval(schedule, 500);
