// Types of realtime.js, the client of realtime_ext's WebSocket protocol.

export type Status = 'connecting' | 'open' | 'reconnecting' | 'closed';
export type Op = 'INSERT' | 'UPDATE' | 'DELETE' | 'TRUNCATE';
export type Row = Record<string, unknown>;

export interface Options {
  /** A JWT to sign in with; without one (and without getToken) the connection is anonymous. */
  token?: string;
  /** Called for a token before connecting and before the current one expires. */
  getToken?: () => string | Promise<string>;
  /** Ping interval in ms; a connection silent for two intervals is replaced. Default 15000. */
  heartbeat?: number;
  /** Reconnect delays grow from minBackoff to maxBackoff ms (jittered). Defaults 250, 10000. */
  minBackoff?: number;
  maxBackoff?: number;
  /** Refresh a token this many seconds before it expires, at most. Default 30. */
  refreshMargin?: number;
  /** A WebSocket constructor, where the platform has none. */
  WebSocket?: typeof WebSocket;
}

export interface SubscribeOptions {
  /** Defaults to the events the table is watched for. */
  events?: Op[];
  /** `column=op.value`: eq, neq, lt, lte, gt, gte, in.(a,b). */
  filter?: string;
  /** First deliver the current rows (one `snapshot` message), then the changes after them. */
  snapshot?: boolean;
  /** With snapshot: PostgREST order (`score.desc,id`) and row limit. */
  order?: string;
  limit?: number;
  /** With snapshot: read the snapshot again after a gap (default true). */
  resync?: boolean;
}

interface Positioned {
  position: number;
  xid: number;
  commit_time: string;
  op: Op;
  schema: string;
  table: string;
}
export interface Change extends Positioned {
  type: 'change';
  new: Row | null;
  old: Row | null;
}
export interface Leave extends Positioned {
  type: 'leave';
  old: Row;
}
export interface Snapshot {
  type: 'snapshot';
  rows: Row[];
  position: number;
}
export interface Gap {
  type: 'gap';
  reason: string;
  from_position: number;
  to_position: number;
}
export interface Ended {
  type: 'unsubscribed';
  id: string;
  reason: string;
}
/** A message on a channel: a relayed notification (event `notify`) or a realtime_send(). */
export interface ChannelMessage {
  type: 'message';
  position: number;
  xid: number;
  commit_time: string;
  channel: string;
  event: string;
  /** The sending backend's process id. */
  pid: number;
  payload: unknown;
}
/** A client broadcast on a channel (ephemeral: no position). */
export interface Broadcast {
  type: 'broadcast';
  channel: string;
  event: string;
  payload: unknown;
}
/** Who is present on a channel, by key: everyone, then what changed. */
export interface PresenceState {
  type: 'presence_state';
  channel: string;
  state: Record<string, unknown>;
}
export interface PresenceDiff {
  type: 'presence_diff';
  channel: string;
  joins: Record<string, unknown>;
  leaves: Record<string, unknown>;
}
export type Message =
  | Change
  | Leave
  | Snapshot
  | Gap
  | Ended
  | ChannelMessage
  | Broadcast
  | PresenceState
  | PresenceDiff;

export interface ServerError {
  type?: 'error';
  code: string;
  message: string;
  id?: string;
  subscription?: Subscription;
}

export interface WatchedTable {
  schema: string;
  table: string;
  events: Op[];
}

export declare class Subscription {
  readonly id: string;
  readonly table: string;
  readonly status: 'subscribing' | 'snapshot' | 'live' | 'ended';
  /** The last position this subscription saw; it resumes from here. */
  readonly position: number;
  unsubscribe(): void;
}

export declare class Realtime {
  readonly status: Status;
  readonly position: number;
  /** The server connected to, or tried next (one of the URLs given to connect). */
  readonly url: string;
  on(event: 'status', cb: (status: Status) => void): () => void;
  on(event: 'gap', cb: (gap: Gap) => void): () => void;
  on(event: 'error', cb: (error: ServerError) => void): () => void;
  on(event: 'authenticated', cb: (m: { role: string; expires_at?: number }) => void): () => void;
  on(event: 'message', cb: (m: Record<string, unknown>) => void): () => void;
  subscribe(table: string, options: SubscribeOptions, onMessage: (m: Message) => void): Subscription;
  subscribe(table: string, onMessage: (m: Message) => void): Subscription;
  /** Subscribe to a relayed NOTIFY channel or a realtime_send() topic. */
  channel(name: string, options: { presence?: boolean }, onMessage: (m: Message) => void): Subscription;
  channel(name: string, onMessage?: (m: Message) => void): Subscription;
  /** Be present on a channel (subscribed to it); resolves with this connection's key. */
  track(channel: string, state: unknown): Promise<string>;
  untrack(channel: string): Promise<void>;
  /** Broadcast to a channel's other subscribers; resolves with how many it reached. */
  send(channel: string, event: string, payload?: unknown, options?: { self?: boolean }): Promise<number>;
  setToken(token: string): void;
  tables(): Promise<WatchedTable[]>;
  ping(): Promise<{ type: 'pong'; position: number }>;
  close(): void;
}

export declare function connect(url?: string | string[], options?: Options): Realtime;
export declare function websocketUrl(url?: string): string;
export declare function jwtExpiry(token: string): number | null;
export declare function parseFilter(
  filter: string,
): { column: string; op: string; values: string[] } | null;
export declare function matches(
  filter: ReturnType<typeof parseFilter>,
  row: Row | null | undefined,
): boolean;
