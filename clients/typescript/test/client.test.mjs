// The client against a real herald process (anonymous `demo:*` namespace of the default config).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { HeraldClient, HeraldApi, mergePatch, isFinalCloseCode } from '../dist/index.js';
import { channelStore, connectionStore } from '../dist/store.js';
import { createHeraldHooks } from '../dist/react.js';
import { API_KEY, api, nextEvent, startHub, startProxy, until } from './helpers.mjs';

const fast = { initialMs: 20, maxMs: 200, maxAttempts: 50 };
let hub;
const clients = [];

function client(opts) {
  const c = new HeraldClient({ url: hub.ws, backoff: fast, ...opts });
  clients.push(c);
  return c;
}

before(async () => {
  hub = await startHub();
});

after(async () => {
  for (const c of clients) c.close();
  await hub?.stop();
});

test('connects anonymously, reports states, receives an HTTP publication', async () => {
  const c = client();
  const states = [];
  c.on('state', (s) => states.push(s.state));
  const sub = c.subscribe('demo:t1');
  await c.connect();
  await sub.ready();
  assert.equal(c.info.version, 2);
  assert.deepEqual(states, ['connecting', 'connected']);
  const got = nextEvent(sub, 'publication');
  const res = await api(hub, 'POST', '/api/publish', { channel: 'demo:t1', data: { hello: 'world' }, type: 'greeting' });
  const pub = await got;
  assert.equal(pub.offset, res.offset);
  assert.equal(pub.type, 'greeting');
  assert.deepEqual(pub.data, { hello: 'world' });
});

test('publish, history and state over the socket; request errors carry the code', async () => {
  const c = client();
  await c.connect();
  const r1 = await c.publish('demo:t2', { n: 1 }, { key: 'a', op: 'upsert' });
  const r2 = await c.publish('demo:t2', { m: 2 }, { key: 'a', op: 'merge' });
  assert.equal(r2.offset, r1.offset + 1);
  const h = await c.history('demo:t2', { limit: 10 });
  assert.deepEqual(h.publications.map((p) => p.offset), [r1.offset, r2.offset]);
  const st = await c.getState('demo:t2');
  assert.deepEqual(st.records.map((r) => [r.key, r.value]), [['a', { n: 1, m: 2 }]]);
  await assert.rejects(c.publish('nonamespace-needs-token', 1), (e) => e.code >= 101 && e.code <= 103);
  await c.ping();
});

test('many publications arrive in order, exactly once (batched frames)', async () => {
  const c = client();
  const sub = c.subscribe('demo:t3');
  await c.connect();
  await sub.ready();
  const seen = [];
  sub.on('publication', (p) => seen.push(p.offset));
  const N = 300;
  const pubs = [];
  for (let i = 0; i < N; i++) pubs.push(c.publish('demo:t3', i));
  await Promise.all(pubs);
  await until(() => seen.length >= N, { what: `${N} publications` });
  assert.deepEqual(seen, Array.from({ length: N }, (_, i) => i + 1));
  assert.equal(sub.stats.duplicatesDropped, 0);
});

test('keyed channel: snapshot on subscribe, then upsert/merge/delete keep the records', async () => {
  const http = new HeraldApi(hub.http, API_KEY);
  await http.publish('demo:t4', { title: 'a', status: 'todo' }, { key: 'c1', op: 'upsert' });
  await http.publish('demo:t4', { title: 'b', status: 'todo' }, { key: 'c2', op: 'upsert' });
  await http.publish('demo:t4', { status: 'done' }, { key: 'c1', op: 'merge' });
  const c = client();
  const sub = c.subscribe('demo:t4', { snapshot: true });
  const subscribed = nextEvent(sub, 'subscribed');
  c.connect();
  const ev = await subscribed;
  assert.equal(ev.keyed, true);
  assert.deepEqual(ev.snapshot.map((r) => r.key), ['c1', 'c2']);
  assert.deepEqual(sub.records.get('c1'), { title: 'a', status: 'done' });
  await http.publish('demo:t4', { status: 'doing', title: null }, { key: 'c2', op: 'merge' });
  await http.publish('demo:t4', null, { key: 'c1', op: 'delete' });
  await until(() => !sub.records.has('c1'), { what: 'delete applied' });
  assert.deepEqual(Object.fromEntries(sub.records), { c2: { status: 'doing' } });
  const st = await http.state('demo:t4');
  assert.deepEqual(Object.fromEntries(st.records.map((r) => [r.key, r.value])), Object.fromEntries(sub.records));
});

test('connection cut: reconnects, resumes with since, nothing lost, nothing twice', async () => {
  const proxy = await startProxy(hub.port);
  try {
    const c = client({ url: proxy.ws });
    const sub = c.subscribe('demo:t5');
    await c.connect();
    await sub.ready();
    const seen = [];
    sub.on('publication', (p) => seen.push(p.data));
    const http = new HeraldApi(hub.http, API_KEY);
    for (let i = 0; i < 5; i++) await http.publish('demo:t5', i);
    await until(() => seen.length === 5, { what: 'first 5' });
    proxy.cut();
    await c.waitFor('reconnecting');
    for (let i = 5; i < 25; i++) await http.publish('demo:t5', i);
    const resumed = nextEvent(sub, 'subscribed', (e) => e.resumed);
    proxy.pass();
    const ev = await resumed;
    assert.equal(ev.recovered, true);
    await c.waitFor('connected');
    for (let i = 25; i < 30; i++) await http.publish('demo:t5', i);
    await until(() => seen.length >= 30, { what: '30 publications' });
    assert.deepEqual(seen, Array.from({ length: 30 }, (_, i) => i));
    // a publish that was in flight when the socket went away fails instead of hanging
  } finally {
    await proxy.close();
  }
});

test('states go connected → reconnecting{attempt,maxAttempts,nextTryMs} → resyncing → connected', async () => {
  const proxy = await startProxy(hub.port);
  try {
    const c = client({ url: proxy.ws, backoff: { initialMs: 50, maxMs: 100, maxAttempts: 20 } });
    c.subscribe('demo:t6');
    await c.connect();
    const states = [];
    c.on('state', (s) => states.push(s));
    proxy.cut();
    const r = await c.waitFor('reconnecting');
    assert.equal(r.attempt, 1);
    assert.equal(r.maxAttempts, 20);
    assert.ok(r.nextTryMs >= 0 && r.nextTryMs < 50);
    await until(() => states.filter((s) => s.state === 'reconnecting').length >= 3, { what: 'three attempts' });
    proxy.pass();
    await c.waitFor('connected');
    const names = states.map((s) => s.state);
    assert.ok(names.includes('resyncing'), names.join(','));
    assert.equal(names.at(-1), 'connected');
    const attempts = states.filter((s) => s.state === 'reconnecting' && s.nextTryMs > 0).map((s) => s.attempt);
    for (let i = 1; i < attempts.length; i++) assert.ok(attempts[i] >= attempts[i - 1]);
  } finally {
    await proxy.close();
  }
});

test('liveness: a blackholed connection is detected from missing pings and resumed', async () => {
  const h2 = await startHub({ extra: ['--ping-interval', '200ms', '--pong-timeout', '1s'] });
  const proxy = await startProxy(h2.port);
  try {
    const c = new HeraldClient({ url: proxy.ws, backoff: fast, livenessMarginMs: 300, connectTimeoutMs: 1000 });
    clients.push(c);
    const sub = c.subscribe('demo:t7');
    await c.connect();
    await sub.ready();
    assert.equal(c.info.ping_interval_ms, 200);
    const seen = [];
    sub.on('publication', (p) => seen.push(p.data));
    const http = new HeraldApi(h2.http, API_KEY);
    await http.publish('demo:t7', 0);
    await until(() => seen.length === 1);
    proxy.blackhole();
    const t0 = Date.now();
    await c.waitFor('reconnecting', 5000);
    const took = Date.now() - t0;
    assert.ok(took >= 400 && took < 3000, `noticed after ${took} ms`);
    for (let i = 1; i < 6; i++) await http.publish('demo:t7', i);
    proxy.pass();
    await until(() => seen.length >= 6, { what: 'resumed publications' });
    assert.deepEqual(seen, [0, 1, 2, 3, 4, 5]);
  } finally {
    await proxy.close();
    await h2.stop();
  }
});

test('hub restart (memory engine): resync with epoch_changed and a fresh snapshot', async () => {
  let h3 = await startHub();
  const port = h3.port;
  try {
    const http = new HeraldApi(h3.http, API_KEY);
    await http.publish('demo:t8', { v: 1 }, { key: 'k', op: 'upsert' });
    const c = new HeraldClient({ url: h3.ws, backoff: fast });
    clients.push(c);
    const sub = c.subscribe('demo:t8', { snapshot: true });
    await c.connect();
    await sub.ready();
    assert.deepEqual(sub.records.get('k'), { v: 1 });
    const oldEpoch = sub.position.epoch;
    await h3.stop('SIGKILL');
    await c.waitFor('reconnecting');
    h3 = await startHub({ port });
    await new HeraldApi(h3.http, API_KEY).publish('demo:t8', { v: 2 }, { key: 'other', op: 'upsert' });
    const rs = await nextEvent(sub, 'resync');
    assert.equal(rs.reason, 'epoch_changed');
    assert.notEqual(rs.position.epoch, oldEpoch);
    assert.deepEqual(rs.snapshot.map((r) => r.key), ['other']);
    assert.deepEqual(Object.fromEntries(sub.records), { other: { v: 2 } });
    await c.waitFor('connected');
  } finally {
    await h3.stop();
  }
});

test('a bad token ends offline with the server code and no further attempts', async () => {
  const c = client({ token: 'not-a-jwt' });
  let attempts = 0;
  c.on('state', (s) => {
    if (s.state === 'reconnecting') attempts++;
  });
  await assert.rejects(c.connect());
  assert.equal(c.state.state, 'offline');
  assert.ok(c.state.code === 4500 || c.state.code === 101, JSON.stringify(c.state));
  assert.equal(attempts, 0);
});

test('token provider: admin token minted over HTTP, default-namespace channel, refresh before expiry', async () => {
  const http = new HeraldApi(hub.http, API_KEY);
  let calls = 0;
  const c = client({
    token: async () => {
      calls++;
      return (await http.token({ sub: 'tester', roles: ['admin'], ttl_secs: 2 })).token;
    },
    refreshBeforeMs: 1500,
  });
  const sub = c.subscribe('plain');
  await c.connect();
  await sub.ready();
  assert.ok(c.info.expires_at > Date.now() / 1000);
  assert.equal(c.info.user, 'tester');
  const errors = [];
  c.on('error', (e) => errors.push(e));
  const refreshed = await nextEvent(c, 'refreshed', () => true, 5000);
  assert.ok(calls >= 2);
  assert.ok(refreshed.expires_at >= c.info.expires_at, JSON.stringify(refreshed));
  assert.deepEqual(errors, []);
  await c.ping();
  assert.equal(c.state.state, 'connected');
});

test('circuit breaker: opens after maxAttempts failures, probes once per maxMs until the hub answers; reconnect() closes it at once', async () => {
  const proxy = await startProxy(hub.port);
  proxy.cut();
  try {
    // A probe interval far away: only reconnect() can bring this one back within the test.
    const manual = client({ url: proxy.ws, backoff: { initialMs: 5, maxMs: 60000, maxAttempts: 3 } });
    const tries = [];
    manual.on('state', (s) => s.state === 'reconnecting' && tries.push(s.attempt));
    await assert.rejects(manual.connect(), /circuit_open/);
    const open = manual.state;
    assert.equal(open.state, 'offline');
    assert.equal(open.reason, 'circuit_open');
    assert.equal(open.code, 1006, JSON.stringify(open));
    assert.ok(open.nextTryAt > Date.now() + 50000, JSON.stringify(open));
    // The first `connecting` fails, retries 1 and 2 fail: the third failure opens it.
    assert.deepEqual([...new Set(tries)], [1, 2]);
    // While it is open, requests fail at once instead of waiting for their timeout.
    const t0 = Date.now();
    await assert.rejects(manual.publish('demo:t-probe', 1, { timeoutMs: 5000 }), (e) => e.code === 3 && e.errorName === 'offline');
    assert.ok(Date.now() - t0 < 1000);

    // A short probe interval: the breaker opens, failed probes keep it offline, a probe that
    // reaches the hub closes it with no call from the app (Node has no `online` event).
    const probing = client({ url: proxy.ws, backoff: { initialMs: 5, maxMs: 50, maxAttempts: 2 } });
    const sub = probing.subscribe('demo:t-probe');
    await assert.rejects(probing.connect(), /circuit_open/);
    const after = [];
    probing.on('state', (s) => after.push(s));
    assert.equal(sub.status, 'offline');
    await until(() => after.length >= 3, { what: 'two failed probes' });
    assert.ok(after.every((s) => s.state === 'offline' && s.reason === 'circuit_open'), JSON.stringify(after));
    proxy.pass();
    await probing.waitFor('connected', 5000);
    await sub.ready();
    assert.equal(sub.status, 'subscribed');

    assert.equal(manual.state.state, 'offline');
    manual.reconnect();
    await manual.waitFor('connected', 5000);

    const d = new HeraldClient({ url: 'ws://127.0.0.1:1/ws', backoff: { random: () => 0.999999 } });
    const delays = [1, 2, 3, 4, 5, 6, 7, 10].map((a) => d.backoffDelay(a));
    assert.deepEqual(delays, [999, 1999, 3999, 7999, 15999, 29999, 29999, 29999]);
    const z = new HeraldClient({ url: 'ws://127.0.0.1:1/ws', backoff: { random: () => 0 } });
    assert.equal(z.backoffDelay(5), 0);
  } finally {
    await proxy.close();
  }
});

test('flapping network (every connection cut after 400 ms): each reconnect resumes, attempt stays 1, no breaker, no resync', async () => {
  const proxy = await startProxy(hub.port);
  try {
    // Without the reset on a resumed connection, 3 cuts would open this breaker.
    const c = client({ url: proxy.ws, backoff: { initialMs: 50, maxMs: 400, maxAttempts: 3 } });
    const sub = c.subscribe('demo:t-flap');
    await c.connect();
    await sub.ready();
    const seen = [];
    sub.on('publication', (p) => seen.push(p.offset));
    const states = [];
    c.on('state', (s) => states.push(s));
    proxy.flap(400);
    c.reconnect(); // the current connection was accepted before flap(): start flapping now
    const http = new HeraldApi(hub.http, API_KEY);
    const CUTS = 8;
    let top = 0;
    const deadline = Date.now() + 15000;
    for (let i = 0; proxy.cuts < CUTS && c.state.state !== 'offline' && Date.now() < deadline; i++) {
      top = (await http.publish('demo:t-flap', i)).offset;
      await new Promise((r) => setTimeout(r, 10)); // pacing of the publisher, not synchronization
    }
    assert.ok(!states.some((s) => s.state === 'offline'), `the breaker opened: ${JSON.stringify(states.at(-1))}`);
    assert.ok(proxy.cuts >= CUTS, `only ${proxy.cuts} cuts`);
    proxy.flap(0);
    await until(() => sub.position.offset === top, { timeoutMs: 10000, what: `offset ${top} (at ${sub.position.offset})` });
    assert.deepEqual(seen, Array.from({ length: top }, (_, i) => i + 1));
    assert.equal(sub.stats.resyncs, 0);
    const retries = states.filter((s) => s.state === 'reconnecting');
    assert.ok(retries.length >= CUTS, `${retries.length} reconnects`);
    assert.deepEqual([...new Set(retries.map((s) => s.attempt))], [1]);
  } finally {
    await proxy.close();
  }
});

test('requests time out; requests made while disconnected wait for the connection', async () => {
  const proxy = await startProxy(hub.port);
  try {
    const c = client({ url: proxy.ws });
    await c.connect();
    proxy.blackhole();
    await assert.rejects(c.publish('demo:t9', 1, { timeoutMs: 150 }), (e) => e.errorName === 'timeout');
    proxy.cut();
    await c.waitFor('reconnecting');
    const p = c.publish('demo:t9', 2, { timeoutMs: 5000 });
    proxy.pass();
    const r = await p;
    assert.equal(r.channel, 'demo:t9');
  } finally {
    await proxy.close();
  }
});

test('adapters: connection store, channel store (svelte contract) and React hooks with a tiny fake React', async () => {
  const c = client();
  const conn = connectionStore(c);
  const seen = [];
  const stopConn = conn.subscribe((s) => seen.push(s.state));
  const store = channelStore(c, 'demo:t10', { snapshot: true, keep: 2 });
  const views = [];
  const stop = store.subscribe((v) => views.push(v));
  await c.connect();
  await until(() => store.get().status === 'subscribed');
  for (let i = 0; i < 3; i++) await c.publish('demo:t10', { i }, { key: `k${i}` });
  await until(() => store.get().publications.length === 2 && store.get().publications[1].data.i === 2);
  assert.deepEqual(Object.keys(store.get().records).sort(), ['k0', 'k1', 'k2']);
  stop();
  stopConn();
  assert.equal(c.getSubscription('demo:t10'), undefined);
  assert.deepEqual(seen.slice(0, 3), ['offline', 'connecting', 'connected']);

  // A fake React that runs effects immediately: enough to check the hooks wire stores to state.
  const cells = [];
  let i = 0;
  const cleanups = [];
  const React = {
    useState(init) {
      const k = i++;
      if (!(k in cells)) cells[k] = typeof init === 'function' ? init() : init;
      return [cells[k], (v) => (cells[k] = v)];
    },
    useEffect(fn) {
      const r = fn();
      if (r) cleanups.push(r);
    },
    useMemo(f) {
      return f();
    },
  };
  const { useChannel, useConnectionState } = createHeraldHooks(React);
  assert.equal(useConnectionState(c).state, 'connected');
  const v0 = useChannel(c, 'demo:t11');
  assert.equal(v0.status, 'pending');
  await until(() => cells[1].status === 'subscribed');
  await c.publish('demo:t11', 'x');
  await until(() => cells[1].publications.length === 1);
  for (const f of cleanups) f();
});

test('merge patches with a __proto__ key (top level and nested) give the records GET /api/state has', async () => {
  const http = new HeraldApi(hub.http, API_KEY);
  const c = client();
  const sub = c.subscribe('demo:t-proto', { snapshot: true });
  await c.connect();
  await sub.ready();
  // JSON.parse makes `__proto__` an own key, as it is on the wire (a literal would set the prototype).
  const patches = ['{"a":1,"n":{"b":2}}', '{"__proto__":{"polluted":true}}', '{"n":{"__proto__":{"deep":1}}}', '{"__proto__":{"x":2}}'];
  let top = 0;
  for (const p of patches) top = (await http.publish('demo:t-proto', JSON.parse(p), { key: 'r', op: 'merge' })).offset;
  await until(() => sub.position.offset === top, { what: 'every patch applied' });
  const st = await http.state('demo:t-proto');
  const hubValue = st.records.find((r) => r.key === 'r').value;
  // Key order is not part of the value (the hub sorts keys): compare with sorted keys.
  const canon = (v) => JSON.stringify(v, (_, x) => (x && typeof x === 'object' && !Array.isArray(x) ? Object.fromEntries(Object.keys(x).sort().map((k) => [k, x[k]])) : x));
  assert.equal(canon(sub.records.get('r')), canon(hubValue));
  assert.deepEqual(sub.records.get('r'), hubValue);
  assert.ok(Object.keys(hubValue).includes('__proto__'), `the hub keeps the key: ${JSON.stringify(hubValue)}`);
  assert.equal(Object.getPrototypeOf(sub.records.get('r')), Object.prototype, 'the prototype is untouched');
  assert.equal({}.polluted, undefined);
});

test('a publication listener that throws is reported on the error event and delivery goes on', async () => {
  const c = client();
  const sub = c.subscribe('demo:t-throw');
  const errors = [];
  c.on('error', (e) => errors.push(e));
  await c.connect();
  await sub.ready();
  const seen = [];
  sub.on('publication', (p) => {
    throw new Error(`listener bug at ${p.offset}`);
  });
  sub.on('publication', (p) => seen.push(p.offset));
  for (let i = 0; i < 3; i++) await c.publish('demo:t-throw', i);
  await until(() => seen.length === 3, { what: 'three deliveries' });
  assert.deepEqual(seen, [1, 2, 3]);
  assert.deepEqual(errors.map((e) => [e.name, e.event, e.cause.message]), [1, 2, 3].map((o) => ['ListenerError', 'publication', `listener bug at ${o}`]));
  assert.match(errors[0].message, /'publication' listener of subscription demo:t-throw threw/);
  assert.equal(sub.stats.delivered, 3);
  assert.equal(c.state.state, 'connected');
});

test('mergePatch follows RFC 7386; final close codes', () => {
  assert.deepEqual(mergePatch({ a: 'b', c: { d: 'e', f: 'g' } }, { a: 'z', c: { f: null } }), { a: 'z', c: { d: 'e' } });
  assert.deepEqual(mergePatch({ a: [1] }, { a: [2] }), { a: [2] });
  assert.deepEqual(mergePatch('x', { a: 1 }), { a: 1 });
  assert.equal(mergePatch({ a: 1 }, null), null);
  assert.equal(isFinalCloseCode(4500), true);
  assert.equal(isFinalCloseCode(4004), false);
  assert.equal(isFinalCloseCode(1006), false);
});

test('protocol 1 and 2 clients on one channel receive the same publications (2: compact frames)', async () => {
  const frames = [];
  class Recording extends WebSocket {
    constructor(url) {
      super(url);
      this.addEventListener('message', (ev) => frames.push(ev.data));
    }
  }
  const v1 = client({ protocol: 1 });
  const v2 = client({ WebSocket: Recording });
  const s1 = v1.subscribe('demo:compact');
  const s2 = v2.subscribe('demo:compact');
  await Promise.all([v1.connect(), v2.connect()]);
  await Promise.all([s1.ready(), s2.ready()]);
  assert.deepEqual([v1.info.version, v2.info.version], [1, 2]);
  const got1 = [];
  const got2 = [];
  s1.on('publication', (p) => got1.push(p));
  s2.on('publication', (p) => got2.push(p));
  const bodies = [
    { data: { text: 'x'.repeat(89) } },
    { data: 42, type: 'count' },
    { data: null, type: 'run.started', correlation_id: 'run-7' },
    { data: ['é', '\u{1F600}', '"q"', 'a\nb'] },
    { data: { title: 't' }, key: 'k1', op: 'upsert' },
    { data: { done: true }, key: 'k1', op: 'merge', type: 'task.moved' },
    { data: null, key: 'k1', op: 'delete' },
  ];
  for (const b of bodies) await api(hub, 'POST', '/api/publish', { channel: 'demo:compact', ...b });
  await until(() => got1.length === bodies.length && got2.length === bodies.length, { what: 'both clients got every publication' });
  assert.deepEqual(got2, got1);
  assert.equal(s2.stats.duplicatesDropped, 0);
  const live = frames.flatMap((f) => f.split('\n')).filter((l) => l.startsWith('[') || l.startsWith('{"push":"pub"'));
  assert.equal(live.length, bodies.length);
  assert.ok(live.every((l) => l.startsWith('[')), `live publications are compact on v2: ${live[0]}`);
  // A 100-byte payload costs its size plus a small header (and the HTTP publish's meta.source),
  // 146 bytes against 260+ in v1.
  assert.ok(live[0].length <= 150, `${live[0].length} bytes: ${live[0]}`);
});
