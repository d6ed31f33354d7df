// Type-checked (not run) by client.test.mjs against realtime.d.ts, with --strict: the README's
// API as a TypeScript user writes it.
import { connect, type Message, type Realtime, type Subscription, type WatchedTable } from '../realtime';

const rt: Realtime = connect('wss://db.example.com/realtime', { getToken: async () => 'jwt', heartbeat: 5000 });
rt.on('status', (s) => s === 'open' || s === 'reconnecting');
rt.on('gap', (g) => g.to_position - g.from_position);
rt.on('error', (e) => e.code + e.message);
const sub: Subscription = rt.subscribe('defects', { events: ['INSERT'], filter: 'score=gte.0.8', snapshot: true }, (m: Message) => {
  switch (m.type) {
    case 'snapshot':
      return m.rows.length;
    case 'change':
      return m.op === 'UPDATE' ? m.old : m.new;
    case 'leave':
      return m.old;
    case 'gap':
      return m.to_position - m.from_position + 1;
    case 'unsubscribed':
      return m.reason;
  }
});
rt.subscribe('orders', (m) => m.type);
sub.unsubscribe();
rt.setToken('jwt');
rt.tables().then((tables: WatchedTable[]) => tables.map((t) => `${t.schema}.${t.table}`));
rt.close();
