// realtime.js: the client of realtime_ext's WebSocket protocol, for browsers, Node 22+, Deno
// and Bun. One ES module, no dependencies, no build step. Types: realtime.d.ts.
//
//   import { connect } from '/realtime.js';
//   const rt = connect('ws://db.example.com:8080/realtime', { getToken });
//   rt.subscribe('defects', { snapshot: true }, (m) => render(m));
//
// It reconnects by itself (exponential backoff with jitter), signs in again, and resumes every
// subscription from the last position it saw, so a worker restart or a dropped network loses
// nothing while the server's history holds what was missed. What cannot be recovered arrives
// as a gap; a snapshot subscription then reads its snapshot again.

/** @typedef {import('./realtime').Status} Status */
/** @typedef {import('./realtime').Options} Options */
/** @typedef {import('./realtime').SubscribeOptions} SubscribeOptions */
/** @typedef {import('./realtime').Message} Message */

const RETRYABLE = new Set(['snapshot_failed', 'unavailable', 'internal']);

/**
 * Open a connection. `url` may be `ws(s)://host:port/realtime`, `http(s)://host:port` (the
 * WebSocket path is added), or omitted in a page served by the worker (same host). A list of
 * URLs names servers of one database (they number changes alike): each attempt after a failure
 * goes to the next, and subscriptions resume there where they left off.
 * @param {string | string[]} [url]
 * @param {Options} [options]
 * @returns {Realtime}
 */
export function connect(url, options = {}) {
  return new Realtime(url, options);
}

/**
 * The WebSocket address for `url` (see `connect`).
 * @param {string} [url]
 */
export function websocketUrl(url) {
  const base = globalThis.location?.href;
  const u = new URL(url ?? '/realtime', base);
  if (u.protocol === 'http:') u.protocol = 'ws:';
  if (u.protocol === 'https:') u.protocol = 'wss:';
  if (u.pathname === '/' || u.pathname === '') u.pathname = '/realtime';
  return u.href;
}

export class Realtime {
  /** @type {Status} */
  status = 'connecting';
  /** Position of the last change received on any subscription. */
  position = 0;

  /** The servers to try, and which of them the next attempt goes to. */
  #urls;
  #next = 0;
  #options;
  #WebSocket;
  #ws = null;
  #token;
  #expiresAt = null;
  #subs = new Map();
  #nextId = 1;
  #listeners = new Map();
  #attempt = 0;
  #timers = { reconnect: null, heartbeat: null, refresh: null };
  #lastHeard = 0;
  #signedIn = false;
  #requests = new Map();
  #nextRef = 1;
  /** Channels this client is tracked on, and its state there: tracked again after a reconnect. */
  #tracked = new Map();
  /** Subscriptions the server ended when the token expired: subscribed again once signed in. */
  #awaitingToken = new Set();
  #refreshing = false;

  /**
   * @param {string | string[] | undefined} url
   * @param {Options} options
   */
  constructor(url, options = {}) {
    this.#urls = (Array.isArray(url) ? url : [url]).map(websocketUrl);
    if (this.#urls.length === 0) throw new Error('realtime.js: an empty list of URLs');
    /** @type {Options & Required<Pick<Options, 'heartbeat' | 'minBackoff' | 'maxBackoff' | 'refreshMargin'>>} */
    this.#options = {
      heartbeat: 15000,
      minBackoff: 250,
      maxBackoff: 10000,
      refreshMargin: 30,
      ...options,
    };
    this.#token = options.token ?? null;
    this.#WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (!this.#WebSocket) {
      throw new Error('realtime.js: no WebSocket here; pass options.WebSocket (Node 22+ has one)');
    }
    this.#open();
  }

  /** The server this client is connected to, or tries next. */
  get url() {
    return this.#urls[this.#next];
  }

  /**
   * Listen for 'status', 'gap', 'error', 'authenticated' or 'message' (every server message).
   * @returns {() => void} stops listening
   */
  on(event, callback) {
    if (!this.#listeners.has(event)) this.#listeners.set(event, new Set());
    this.#listeners.get(event).add(callback);
    return () => this.#listeners.get(event)?.delete(callback);
  }

  /**
   * Subscribe to a watched table. `onMessage` gets `change` and `leave` messages as the server
   * sends them, `snapshot` once with every row of a snapshot (`{type:'snapshot', rows, position}`),
   * `gap`s, and `unsubscribed` when the server ends the subscription.
   * @param {string} table
   * @param {SubscribeOptions | ((m: Message) => void)} [options]
   * @param {(m: Message) => void} [onMessage]
   */
  subscribe(table, options = {}, onMessage = () => {}) {
    if (typeof options === 'function') [options, onMessage] = [{}, options];
    return this.#add(new Subscription(this, String(this.#nextId++), table, options, onMessage));
  }

  /**
   * Subscribe to a channel: a NOTIFY channel the database relays, or a topic realtime_send()
   * sends to. `onMessage` gets each `message` (`{channel, event, payload, pid, position}`),
   * `gap`s, and `unsubscribed` when the server ends the subscription; after a reconnect it
   * resumes where it left off, as a table's subscription does. With `{presence: true}` it
   * also gets `presence_state` (everyone present, by key) and then `presence_diff`s.
   * @param {string} name
   * @param {{ presence?: boolean } | ((m: Message) => void)} [options]
   * @param {(m: Message) => void} [onMessage]
   */
  channel(name, options = {}, onMessage = () => {}) {
    if (typeof options === 'function') [options, onMessage] = [{}, options];
    const id = String(this.#nextId++);
    return this.#add(new Subscription(this, id, name, options, onMessage, true));
  }

  /**
   * Be present on `channel` (subscribed to it) with `state`, replacing the last; tracked
   * again after a reconnect. Resolves with this connection's presence key.
   * @param {string} channel
   * @param {unknown} state
   * @returns {Promise<string>}
   */
  async track(channel, state) {
    this.#tracked.set(channel, state);
    const reply = await this.#request({ type: 'track', channel, state });
    if (reply.type === 'error') throw Object.assign(new Error(reply.message), { code: reply.code });
    return reply.key;
  }

  /** No longer be present on `channel`. @param {string} channel */
  async untrack(channel) {
    this.#tracked.delete(channel);
    await this.#request({ type: 'untrack', channel });
  }

  /**
   * Broadcast `payload` as `event` to the other subscribers of `channel` (this connection
   * must be subscribed to it, with the right to send); `self: true` sends it here too.
   * Resolves with how many connections it reached. Ephemeral: not kept, not resumable.
   * @param {string} channel
   * @param {string} event
   * @param {unknown} [payload]
   * @param {{ self?: boolean }} [options]
   * @returns {Promise<number>}
   */
  async send(channel, event, payload = null, options = {}) {
    const reply = await this.#request({ type: 'broadcast', channel, event, payload, self: options.self === true });
    if (reply.type === 'error') throw Object.assign(new Error(reply.message), { code: reply.code });
    return reply.receivers;
  }

  #add(sub) {
    this.#subs.set(sub.id, sub);
    if (this.#ready()) this.#send(sub.request());
    return sub;
  }

  /** Sign in with a new token now (and whenever reconnecting). */
  setToken(token) {
    this.#token = token;
    if (this.#ws?.readyState === 1) this.#send({ type: 'auth', token });
  }

  /** The watched tables this connection's principal may subscribe to. */
  tables() {
    return this.#request({ type: 'tables' }).then((m) => m.tables);
  }

  /** Round trip to the server; resolves with its `pong`. */
  ping() {
    return this.#request({ type: 'ping' });
  }

  /** Close for good: no reconnecting. */
  close() {
    this.#setStatus('closed');
    for (const t of Object.values(this.#timers)) clearTimeout(t);
    this.#drop(1000);
    for (const { reject } of this.#requests.values()) reject(new Error('closed'));
    this.#requests.clear();
  }

  // ---- internals shared with Subscription ----

  /** @internal The server ended it: nothing to tell the server. */
  _drop(sub) {
    this.#subs.delete(sub.id);
  }

  /** @internal The token expired before a new one came: resume once signed in again. */
  _awaitToken(sub) {
    if (!this.#options.getToken) return false;
    this.#awaitingToken.add(sub);
    this.#refresh();
    return true;
  }

  /** @internal */
  _forget(sub) {
    this.#subs.delete(sub.id);
    if (this.#awaitingToken.delete(sub)) return;
    if (this.#ready()) this.#send({ type: 'unsubscribe', id: sub.id });
  }

  /** @internal Subscribe again under a new id (a re-read), ending the old one on the server. */
  _renew(sub) {
    if (this.#subs.delete(sub.id) && this.#ready()) {
      this.#send({ type: 'unsubscribe', id: sub.id });
    }
    sub.id = String(this.#nextId++);
    this.#subs.set(sub.id, sub);
    if (this.#ready()) this.#send(sub.request());
  }

  /** @internal */
  _emit(event, value) {
    for (const cb of this.#listeners.get(event) ?? []) {
      try {
        cb(value);
      } catch (e) {
        console.error(e);
      }
    }
  }

  // ---- connection ----

  #ready() {
    return this.#ws?.readyState === 1 && this.#signedIn;
  }

  #setStatus(status) {
    if (this.status === status) return;
    this.status = status;
    this._emit('status', status);
  }

  async #open() {
    if (this.status === 'closed') return;
    if (this.#options.getToken && this.#tokenDue()) {
      try {
        this.#token = await this.#options.getToken();
      } catch (e) {
        this._emit('error', { code: 'token_unavailable', message: String(e?.message ?? e) });
        return this.#retry();
      }
      // close() may have been called while getToken ran.
      if (/** @type {Status} */ (this.status) === 'closed') return;
    }
    let ws;
    try {
      ws = new this.#WebSocket(this.url);
    } catch (e) {
      this._emit('error', { code: 'connect_failed', message: String(e?.message ?? e) });
      return this.#retry();
    }
    this.#ws = ws;
    this.#signedIn = false;
    ws.onopen = () => {
      this.#heard();
      if (this.#token) this.#send({ type: 'auth', token: this.#token });
      else this.#ready_();
      this.#heartbeat();
    };
    ws.onmessage = (e) => {
      this.#heard();
      let m;
      try {
        m = JSON.parse(e.data);
      } catch {
        return;
      }
      this._emit('message', m);
      this.#receive(m);
    };
    ws.onclose = () => {
      if (ws === this.#ws) this.#lost();
    };
    // Node 20 reports a refused connection with an error alone, still CONNECTING.
    ws.onerror = () => {
      if (ws === this.#ws && ws.readyState !== 1) {
        this.#drop(1000);
        this.#lost();
      }
    };
  }

  /** Signed in (or anonymous): subscribe everything again, resuming where each left off. */
  #ready_() {
    this.#signedIn = true;
    this.#attempt = 0;
    this.#setStatus('open');
    for (const sub of this.#subs.values()) this.#send(sub.request());
  }

  /** The connection is gone (or given up on): reconnect after a while. */
  #lost() {
    this.#ws = null;
    this.#signedIn = false;
    this.#awaitingToken.clear();
    clearTimeout(this.#timers.heartbeat);
    for (const sub of this.#subs.values()) sub._disconnected();
    for (const { reject } of this.#requests.values()) reject(new Error('connection lost'));
    this.#requests.clear();
    this.#retry();
  }

  #retry() {
    if (this.status === 'closed') return;
    this.#next = (this.#next + 1) % this.#urls.length;
    this.#setStatus('reconnecting');
    const { minBackoff, maxBackoff } = this.#options;
    const ceiling = Math.min(maxBackoff, minBackoff * 2 ** this.#attempt++);
    const delay = ceiling / 2 + Math.random() * (ceiling / 2);
    clearTimeout(this.#timers.reconnect);
    this.#timers.reconnect = setTimeout(() => this.#open(), delay);
  }

  #drop(code) {
    const ws = this.#ws;
    if (!ws) return;
    this.#ws = null;
    ws.onopen = ws.onmessage = ws.onclose = null;
    try {
      ws.close(code);
    } catch {
      /* already closing */
    }
  }

  #send(message) {
    if (this.#ws?.readyState === 1) this.#ws.send(JSON.stringify(message));
  }

  /** Send `message` with a fresh `ref`; resolves with the reply carrying it. A refusal carries
   * no ref, so a request unanswered for 10 s is rejected. */
  #request(message) {
    return new Promise((resolve, reject) => {
      if (this.#ws?.readyState !== 1) return reject(new Error('not connected'));
      const ref = this.#nextRef++;
      const timer = setTimeout(() => {
        this.#requests.delete(ref);
        reject(new Error(`no answer to ${message.type}`));
      }, 10000);
      const settle = (f) => (value) => {
        clearTimeout(timer);
        f(value);
      };
      this.#requests.set(ref, { resolve: settle(resolve), reject: settle(reject) });
      this.#send({ ...message, ref });
    });
  }

  #heard() {
    this.#lastHeard = Date.now();
  }

  /** Ping every `heartbeat` ms (acknowledging what was handled); a connection that has been
   * silent for two intervals is dead even if the socket has not noticed. */
  #heartbeat() {
    const every = this.#options.heartbeat;
    clearTimeout(this.#timers.heartbeat);
    this.#timers.heartbeat = setTimeout(() => {
      const ws = this.#ws;
      if (!ws || ws.readyState !== 1) return;
      if (Date.now() - this.#lastHeard > 2 * every) {
        this.#drop(4000);
        return this.#lost();
      }
      this.#send({ type: 'ping' });
      if (this.position) this.#send({ type: 'ack', position: this.position });
      this.#heartbeat();
    }, every);
  }

  // ---- tokens ----

  #tokenDue() {
    if (!this.#token) return true;
    const exp = this.#expiresAt ?? jwtExpiry(this.#token);
    return exp !== null && exp - this.#options.refreshMargin <= Date.now() / 1000;
  }

  /** Refresh before `exp`: a quarter of the remaining lifetime early, at most refreshMargin s. */
  #scheduleRefresh() {
    clearTimeout(this.#timers.refresh);
    if (!this.#options.getToken || this.#expiresAt === null) return;
    const left = this.#expiresAt * 1000 - Date.now();
    const early = Math.min(this.#options.refreshMargin * 1000, left / 4);
    this.#timers.refresh = setTimeout(() => this.#refresh(), Math.max(0, left - early));
  }

  async #refresh() {
    if (this.#refreshing) return;
    this.#refreshing = true;
    try {
      const token = await this.#options.getToken();
      if (this.status !== 'closed') this.setToken(token);
    } catch (e) {
      this._emit('error', { code: 'token_unavailable', message: String(e?.message ?? e) });
      clearTimeout(this.#timers.refresh);
      this.#timers.refresh = setTimeout(() => this.#refresh(), 1000);
    } finally {
      this.#refreshing = false;
    }
  }

  // ---- messages ----

  #receive(m) {
    if (m.ref !== undefined && this.#requests.has(m.ref)) {
      const { resolve } = this.#requests.get(m.ref);
      this.#requests.delete(m.ref);
      return resolve(m);
    }
    switch (m.type) {
      case 'authenticated':
        this.#expiresAt = m.expires_at ?? null;
        this.#scheduleRefresh();
        this._emit('authenticated', m);
        if (!this.#signedIn) this.#ready_();
        else for (const sub of this.#awaitingToken) this.#send(sub.request());
        this.#awaitingToken.clear();
        return;
      case 'change':
      case 'leave':
      case 'message':
        this.position = Math.max(this.position, m.position);
        return this.#route(m);
      case 'broadcast':
      case 'presence_state':
      case 'presence_diff':
        for (const sub of this.#subs.values()) sub._broadcast(m);
        return;
      case 'subscribed': {
        const sub = this.#subs.get(String(m.id));
        sub?._receive(m);
        // Presence does not survive a reconnect: track again where it was tracked.
        if (m.channel !== undefined && this.#tracked.has(m.channel)) {
          this.#send({ type: 'track', channel: m.channel, state: this.#tracked.get(m.channel) });
        }
        return;
      }
      case 'gap':
        this.position = Math.max(this.position, m.to_position);
        this._emit('gap', m);
        for (const sub of [...this.#subs.values()]) sub._gap(m);
        return;
      case 'error':
        return this.#error(m);
      default: {
        const sub = m.id !== undefined ? this.#subs.get(String(m.id)) : undefined;
        if (sub) sub._receive(m);
      }
    }
  }

  #error(m) {
    const sub = m.id !== undefined ? this.#subs.get(String(m.id)) : undefined;
    this._emit('error', sub ? { ...m, subscription: sub } : m);
    if (!sub) {
      // A refused sign-in: with getToken, ask for another and try again; a fixed token
      // will not get better.
      if (!this.#signedIn && (m.code === 'token_expired' || m.code === 'unauthorized')) {
        if (!this.#options.getToken) return this.close();
        this.#token = null;
        this.#drop(1000);
        this.#lost();
      }
      return;
    }
    this.#subs.delete(sub.id);
    if (RETRYABLE.has(m.code)) {
      setTimeout(() => {
        if (this.status !== 'closed' && sub.status !== 'ended') this._renew(sub);
      }, 1000);
    } else {
      sub._end(m.code);
    }
  }

  /** A change is sent once per connection, however many subscriptions want it: hand it to
   * each subscription of its table that wants it. */
  #route(m) {
    const mine = [...this.#subs.values()].filter((s) => s._isFor(m));
    for (const sub of mine) sub._change(m, mine.length > 1);
  }
}

export class Subscription {
  /** 'subscribing' | 'snapshot' | 'live' | 'ended' */
  status = 'subscribing';
  /** Position of the last change this subscription saw: where it resumes from. */
  position = 0;

  #rt;
  #options;
  #onMessage;
  #rows = [];
  #token = null;
  #schema;
  #table;
  #filter;
  /** A channel's subscription: `table` is the channel's name. */
  #channel;

  constructor(rt, id, table, options, onMessage, channel = false) {
    this.#rt = rt;
    this.id = id;
    this.table = table;
    this.#channel = channel;
    this.#options = options;
    this.#onMessage = onMessage;
    this.#filter = options.filter ? parseFilter(options.filter) : null;
  }

  unsubscribe() {
    if (this.status === 'ended') return;
    this.status = 'ended';
    this.#rt._forget(this);
  }

  /** @internal The subscribe message: resuming when it has seen anything. */
  request() {
    const o = this.#options;
    if (this.#channel) {
      const m = { type: 'subscribe', id: this.id, channel: this.table };
      if (o.presence) m.presence = true;
      if (this.position > 0) m.since = this.position;
      return m;
    }
    const m = { type: 'subscribe', id: this.id, table: this.table };
    if (o.events) m.events = o.events;
    if (o.filter) m.filter = o.filter;
    if (this.position > 0 && (!o.snapshot || this.#token)) {
      m.since = this.position;
      if (this.#token) m.after_snapshot = this.#token;
    } else if (o.snapshot) {
      m.snapshot = true;
      if (o.order) m.order = o.order;
      if (o.limit !== undefined) m.limit = o.limit;
      this.#rows = [];
    }
    return m;
  }

  _receive(m) {
    switch (m.type) {
      case 'subscribed':
        this.#schema = m.schema;
        this.#table = m.table;
        // Resuming, the missed changes (at or below m.position) are on their way.
        if (m.resume === undefined) this.position = Math.max(this.position, m.position);
        this.status = this.#options.snapshot && !this.#token ? 'snapshot' : 'live';
        return;
      case 'snapshot':
        for (const row of m.rows) this.#rows.push(row);
        return;
      case 'snapshot_end': {
        this.#token = m.token;
        this.position = Math.max(this.position, m.position);
        this.status = 'live';
        const rows = this.#rows;
        this.#rows = [];
        return this.#deliver({ type: 'snapshot', rows, position: m.position });
      }
      case 'unsubscribed':
        if (!m.reason) return;
        if (m.reason === 'token_expired' && this.#rt._awaitToken(this)) {
          this.status = 'subscribing';
          return;
        }
        this._end(m.reason);
        this.#rt._drop(this);
        return;
    }
  }

  _isFor(m) {
    if (this.status === 'ended' || this.#channel !== (m.type === 'message')) return false;
    if (this.#channel) return m.channel === this.table;
    return m.schema === this.#schema && m.table === this.#table;
  }

  _change(m, shared) {
    if (m.position <= this.position || this.status === 'snapshot') return;
    this.position = m.position;
    if (this.#options.events && !this.#options.events.includes(m.op)) return;
    if (!shared || !this.#filter) return this.#deliver(m);
    // Several subscriptions to this table share the message: judge this one's filter here.
    const now = m.new && matches(this.#filter, m.new);
    const before = m.old && matches(this.#filter, m.old);
    if (m.type === 'change' && (now || m.op === 'TRUNCATE' || (m.op === 'DELETE' && before))) {
      return this.#deliver(m);
    }
    if (before) this.#deliver({ ...m, type: 'leave', new: undefined });
  }

  /** A client broadcast or presence: to each subscription of its channel, outside the
   * positions. */
  _broadcast(m) {
    if (this.#channel && this.status !== 'ended' && m.channel === this.table) this.#deliver(m);
  }

  /** What was lost cannot be told apart by table: a snapshot subscription reads again. */
  _gap(m) {
    this.position = Math.max(this.position, m.to_position);
    this.#deliver(m);
    if (this.#options.snapshot && this.status !== 'ended' && this.#options.resync !== false) {
      this.#token = null;
      this.position = 0;
      this.#rt._renew(this);
    }
  }

  _disconnected() {
    if (this.status !== 'ended') this.status = 'subscribing';
  }

  _end(reason) {
    this.status = 'ended';
    this.#deliver({ type: 'unsubscribed', id: this.id, reason });
  }

  #deliver(m) {
    try {
      this.#onMessage(m);
    } catch (e) {
      console.error(e);
    }
  }
}

/** `exp` of a JWT, without verifying it (the server does), or null. */
export function jwtExpiry(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const exp = JSON.parse(atob(part)).exp;
    return typeof exp === 'number' ? exp : null;
  } catch {
    return null;
  }
}

/** `col=op.value` as the server reads it; `in.(a,"b,c")` lists. */
export function parseFilter(text) {
  const m = /^([^=]+)=(eq|neq|lt|lte|gt|gte|in)\.(.*)$/s.exec(text);
  if (!m) return null;
  const [, column, op, raw] = m;
  let values = [raw];
  if (op === 'in') {
    values = [];
    const list = raw.replace(/^\(/, '').replace(/\)$/, '');
    const re = /\s*("((?:[^"\\]|\\.)*)"|[^,]*)\s*(,|$)/gy;
    let part;
    while (re.lastIndex < list.length && (part = re.exec(list))) {
      values.push(part[2] !== undefined ? part[2].replace(/\\(.)/g, '$1') : part[1].trim());
      if (part[3] === '') break;
    }
  }
  return { column, op, values };
}

/** Whether `row` passes `filter`, for routing only: numbers as numbers, the rest as text. An
 * exact answer needs the server; with one subscription per table the server's answer is used. */
export function matches(filter, row) {
  if (!filter) return true;
  const v = row?.[filter.column];
  if (v === null || v === undefined) return false;
  const cmp = (value) => {
    const a = typeof v === 'object' ? JSON.stringify(v) : String(v);
    const x = Number(a);
    const y = Number(value);
    if (a.trim() !== '' && value.trim() !== '' && !Number.isNaN(x) && !Number.isNaN(y)) {
      return x < y ? -1 : x > y ? 1 : 0;
    }
    return a < value ? -1 : a > value ? 1 : 0;
  };
  const c = cmp(filter.values[0]);
  switch (filter.op) {
    case 'eq':
      return c === 0;
    case 'neq':
      return c !== 0;
    case 'lt':
      return c < 0;
    case 'lte':
      return c <= 0;
    case 'gt':
      return c > 0;
    case 'gte':
      return c >= 0;
    case 'in':
      return filter.values.some((value) => cmp(value) === 0);
  }
  return true;
}
