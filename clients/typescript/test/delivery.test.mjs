// Delivery rules of the client, driven by a scripted in-process socket so the server side can
// misbehave on purpose (duplicates, gaps, a foreign epoch, `unsubscribe` pushes, batched frames).
// The behaviour against the real hub is covered in client.test.mjs.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { HeraldClient } from '../dist/index.js';
import { until } from './helpers.mjs';

/** A fake WebSocket whose "server" is the test: it sees every command and can send frames. */
function fakeSocketClass(server) {
  return class FakeSocket {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.onopen = this.onclose = this.onerror = this.onmessage = null;
      server.sockets.push(this);
      queueMicrotask(() => {
        this.readyState = 1;
        this.onopen?.({});
      });
    }
    send(data) {
      for (const line of data.split('\n')) server.onCommand(this, JSON.parse(line));
    }
    close(code = 1000, reason = '') {
      if (this.readyState === 3) return;
      this.readyState = 3;
      queueMicrotask(() => this.onclose?.({ code, reason }));
    }
    /** Server side: send messages in one frame. */
    push(...msgs) {
      this.onmessage?.({ data: msgs.map((m) => JSON.stringify(m)).join('\n') });
    }
  };
}

function pub(offset, epoch = 'E1', channel = 'c') {
  return { push: 'pub', pub: { channel, epoch, offset, id: `${epoch}-${offset}`, type: 'message', data: offset, time: '' } };
}

function scriptedHub() {
  const server = {
    sockets: [],
    commands: [],
    /** Position the next subscribe reply reports, and what it recovers. */
    onSubscribe: (cmd) => ({ channel: cmd.channel, epoch: 'E1', offset: 0, keyed: false }),
    /** Messages sent in the same frame right after the subscribe reply (live publications). */
    afterSubscribe: () => [],
    /** `ok` answers connect; `drop` closes the socket (1006) instead; `silent` never answers. */
    connectMode: 'ok',
    /** Whether subscribe is answered at all. */
    answerSubscribe: true,
    onCommand(sock, cmd) {
      server.commands.push(cmd);
      // A real hub answers after `send` returned, never inside it.
      queueMicrotask(() => server.answer(sock, cmd));
    },
    answer(sock, cmd) {
      if (sock.readyState !== 1) return;
      if (cmd.cmd === 'connect') {
        if (server.connectMode === 'ok') sock.push({ id: cmd.id, result: { client: 'x', user: '', time: '', ping_interval_ms: 25000, pong_timeout_ms: 60000, clients: 1, node: 'n', version: 1 } });
        else if (server.connectMode === 'drop') sock.close(1006, 'dropped');
      } else if (cmd.cmd === 'subscribe') {
        if (server.answerSubscribe) sock.push({ id: cmd.id, result: server.onSubscribe(cmd) }, ...server.afterSubscribe(cmd));
      } else if (cmd.id !== undefined) sock.push({ id: cmd.id, result: {} });
    },
  };
  return server;
}

test('duplicates are dropped, a gap triggers unsubscribe + subscribe with since, order is kept', async () => {
  const hub = scriptedHub();
  const c = new HeraldClient({ url: 'ws://fake/ws', WebSocket: fakeSocketClass(hub), browserEvents: false });
  const sub = c.subscribe('c');
  const got = [];
  sub.on('publication', (p) => got.push(p.offset));
  await c.connect();
  await sub.ready();
  const ws = hub.sockets[0];
  ws.push(pub(1), pub(2), pub(2), pub(1), pub(3)); // one frame, with duplicates
  assert.deepEqual(got, [1, 2, 3]);
  assert.equal(sub.stats.duplicatesDropped, 2);

  // Offset 5 without 4: the client must not deliver around the hole.
  hub.onSubscribe = (cmd) => ({
    channel: 'c', epoch: 'E1', offset: 6, keyed: false, recovered: true,
    publications: [pub(4).pub, pub(5).pub, pub(6).pub],
  });
  ws.push(pub(5));
  await until(() => got.length === 6);
  assert.deepEqual(got, [1, 2, 3, 4, 5, 6]);
  const tail = hub.commands.slice(-2).map((x) => [x.cmd, x.channel, x.since]);
  assert.deepEqual(tail, [['unsubscribe', 'c', undefined], ['subscribe', 'c', { epoch: 'E1', offset: 3 }]]);
  assert.equal(sub.stats.gaps, 1);
  ws.push(pub(6), pub(7));
  assert.deepEqual(got, [1, 2, 3, 4, 5, 6, 7]);
  c.close();
});

test('an unsubscribe push with resubscribe:true resumes from the last delivered position', async () => {
  const hub = scriptedHub();
  const c = new HeraldClient({ url: 'ws://fake/ws', WebSocket: fakeSocketClass(hub), browserEvents: false });
  const sub = c.subscribe('c');
  const got = [];
  sub.on('publication', (p) => got.push(p.offset));
  await c.connect();
  await sub.ready();
  const ws = hub.sockets[0];
  ws.push(pub(1), pub(2));
  hub.onSubscribe = () => ({ channel: 'c', epoch: 'E1', offset: 4, keyed: false, recovered: true, publications: [pub(3).pub, pub(4).pub] });
  ws.push({ push: 'unsubscribe', channel: 'c', code: 117, name: 'resubscribe', reason: 'gap', resubscribe: true });
  await until(() => got.length === 4);
  assert.deepEqual(got, [1, 2, 3, 4]);
  const last = hub.commands.at(-1);
  assert.deepEqual([last.cmd, last.since], ['subscribe', { epoch: 'E1', offset: 2 }]);
  assert.ok(!hub.commands.slice(-2, -1).some((x) => x.cmd === 'unsubscribe'));

  // Without resubscribe the subscription ends and says why.
  const ended = new Promise((r) => sub.on('unsubscribed', r));
  ws.push({ push: 'unsubscribe', channel: 'c', code: 103, name: 'forbidden', reason: 'revoked', resubscribe: false });
  const e = await ended;
  assert.equal(e.code, 103);
  assert.equal(c.getSubscription('c'), undefined);
  c.close();
});

test('a publication from another epoch is never delivered; the resume reports the resync', async () => {
  const hub = scriptedHub();
  const c = new HeraldClient({ url: 'ws://fake/ws', WebSocket: fakeSocketClass(hub), browserEvents: false });
  const sub = c.subscribe('c');
  const got = [];
  sub.on('publication', (p) => got.push(`${p.epoch}-${p.offset}`));
  const resyncs = [];
  sub.on('resync', (e) => resyncs.push(e));
  await c.connect();
  await sub.ready();
  hub.onSubscribe = () => ({ channel: 'c', epoch: 'E2', offset: 9, keyed: false, recovered: false, reason: 'epoch_changed' });
  hub.sockets[0].push(pub(1, 'E2'));
  await until(() => resyncs.length === 1);
  assert.deepEqual(got, []);
  assert.equal(resyncs[0].reason, 'epoch_changed');
  assert.deepEqual(resyncs[0].position, { epoch: 'E2', offset: 9 });
  hub.sockets[0].push(pub(10, 'E2'));
  assert.deepEqual(got, ['E2-10']);
  c.close();
});

test('pings are answered with pong; several URLs are tried in turn', async () => {
  const hub = scriptedHub();
  const c = new HeraldClient({ url: ['ws://a/ws', 'ws://b/ws'], WebSocket: fakeSocketClass(hub), browserEvents: false, backoff: { initialMs: 1 } });
  await c.connect();
  hub.sockets[0].push({ push: 'ping' });
  assert.deepEqual(hub.commands.at(-1), { cmd: 'pong' });
  hub.sockets[0].close(4000, 'shutdown');
  await until(() => hub.sockets.length === 2 && c.state.state === 'connected');
  assert.deepEqual(hub.sockets.map((s) => s.url), ['ws://a/ws', 'ws://b/ws']);
  c.close();
});

test("the browser's online event and a tab becoming visible cut a backoff wait short", async () => {
  const listeners = { window: new Map(), document: new Map() };
  const add = (m) => (type, fn) => m.set(type, fn);
  const doc = { visibilityState: 'visible', addEventListener: add(listeners.document), removeEventListener: () => {} };
  globalThis.document = doc;
  globalThis.addEventListener = add(listeners.window);
  globalThis.removeEventListener = () => {};
  try {
    const hub = scriptedHub();
    let refuse = true;
    const Base = fakeSocketClass(hub);
    class Flaky extends Base {
      constructor(url) {
        super(url);
        if (refuse) queueMicrotask(() => this.close(1006, 'refused'));
      }
    }
    // Huge backoff: without a prompt the next try would be minutes away.
    const c = new HeraldClient({ url: 'ws://fake/ws', WebSocket: Flaky, backoff: { initialMs: 600000, maxMs: 600000, random: () => 0.5 } });
    c.connect();
    await until(() => c.state.state === 'reconnecting' && c.state.nextTryMs > 1000);
    assert.equal(hub.sockets.length, 1);
    listeners.window.get('online')();
    await until(() => hub.sockets.length === 2 && c.state.state === 'reconnecting' && c.state.nextTryMs > 1000);
    refuse = false;
    doc.visibilityState = 'visible';
    listeners.document.get('visibilitychange')();
    await c.waitFor('connected', 2000);
    assert.equal(hub.sockets.length, 3);
    c.close();
  } finally {
    delete globalThis.document;
    delete globalThis.addEventListener;
    delete globalThis.removeEventListener;
  }
});

test('a subscribe reply and publications in one frame: all delivered (plain, since, snapshot)', async () => {
  const hub = scriptedHub();
  const c = new HeraldClient({ url: 'ws://fake/ws', WebSocket: fakeSocketClass(hub), browserEvents: false });
  await c.connect();

  // Plain: reply at offset 0, then 1..3 in the same frame.
  hub.afterSubscribe = (cmd) => [pub(1, 'E1', cmd.channel), pub(2, 'E1', cmd.channel), pub(3, 'E1', cmd.channel)];
  const plain = c.subscribe('p');
  const gotPlain = [];
  plain.on('publication', (p) => gotPlain.push(p.offset));
  await plain.ready();
  assert.deepEqual(gotPlain, [1, 2, 3]);
  assert.deepEqual(plain.position, { epoch: 'E1', offset: 3 });

  // Since: reply recovers 2..3, live 4..5 follow in the same frame (3 again: a duplicate).
  hub.onSubscribe = (cmd) => ({ channel: cmd.channel, epoch: 'E1', offset: 3, keyed: false, recovered: true, publications: [pub(2, 'E1', 's').pub, pub(3, 'E1', 's').pub] });
  hub.afterSubscribe = () => [pub(3, 'E1', 's'), pub(4, 'E1', 's'), pub(5, 'E1', 's')];
  const since = c.subscribe('s', { since: { epoch: 'E1', offset: 1 } });
  const gotSince = [];
  since.on('publication', (p) => gotSince.push(p.offset));
  await since.ready();
  assert.deepEqual(gotSince, [2, 3, 4, 5]);
  assert.equal(since.stats.duplicatesDropped, 1);

  // Snapshot at offset 2, then two keyed publications in the same frame.
  hub.onSubscribe = (cmd) => ({ channel: cmd.channel, epoch: 'E1', offset: 2, keyed: true, snapshot: [{ key: 'a', value: { v: 1 }, offset: 2 }] });
  const keyed = (offset, key, op, data) => ({ push: 'pub', pub: { ...pub(offset, 'E1', 'k').pub, key, op, data } });
  hub.afterSubscribe = () => [keyed(3, 'a', 'merge', { w: 2 }), keyed(4, 'b', 'upsert', 7)];
  const snap = c.subscribe('k', { snapshot: true });
  await snap.ready();
  assert.deepEqual(Object.fromEntries(snap.records), { a: { v: 1, w: 2 }, b: 7 });
  assert.deepEqual(snap.position, { epoch: 'E1', offset: 4 });
  assert.deepEqual(hub.commands.filter((x) => x.cmd === 'subscribe').map((x) => x.snapshot), [undefined, undefined, true]);
  c.close();
});

test('backoff policy: a connection that got its connect reply is no failure; only unanswered attempts count; breaker after maxAttempts', async () => {
  const hub = scriptedHub();
  const c = new HeraldClient({ url: 'ws://fake/ws', WebSocket: fakeSocketClass(hub), browserEvents: false, backoff: { initialMs: 1, maxMs: 5, maxAttempts: 4 } });
  // The attempt number of every wait (a wait shows twice: scheduled, then trying now).
  const attempts = [];
  let prev;
  let lastRetry;
  c.on('state', (s) => {
    if (s.state === 'reconnecting' && !(prev?.state === 'reconnecting' && prev.attempt === s.attempt)) attempts.push(s.attempt);
    if (s.state === 'reconnecting') lastRetry = s;
    prev = s;
  });
  c.subscribe('c');
  await c.connect();
  const drop = async () => {
    const n = hub.sockets.length;
    hub.sockets.at(-1).close(1006, 'cut');
    await until(() => hub.sockets.length > n && (c.state.state === 'connected' || c.state.state === 'offline'), { what: 'next connection' });
  };
  // Five drops of connections that resumed: every retry is attempt 1.
  for (let i = 0; i < 5; i++) await drop();
  assert.deepEqual(attempts, [1, 1, 1, 1, 1]);

  // Connections whose connect is never answered count: 1 (the drop), 2, 3, 4, then the breaker.
  attempts.length = 0;
  hub.connectMode = 'drop';
  hub.sockets.at(-1).close(1006, 'cut');
  await until(() => c.state.state === 'offline', { what: 'breaker open' });
  assert.deepEqual(attempts, [1, 2, 3, 4]);
  assert.equal(c.state.reason, 'circuit_open');
  assert.equal(c.getSubscription('c').status, 'offline');

  // A probe that gets its connect reply closes the breaker (failures back to 0) even before the
  // resubscribe is answered; the retry counter only resets once the resubscribe is answered too.
  hub.connectMode = 'ok';
  hub.answerSubscribe = false;
  await until(() => c.state.state === 'resyncing', { what: 'probe connected' });
  attempts.length = 0;
  hub.answerSubscribe = true; // for the next connection
  hub.sockets.at(-1).close(1006, 'cut');
  await until(() => attempts.length === 1, { what: 'a retry' });
  assert.deepEqual([lastRetry.attempt, lastRetry.failures], [5, 0]);
  await c.waitFor('connected', 2000);
  await drop();
  assert.deepEqual(attempts, [5, 1]);
  c.close();
});

test('the connected event fires once the state is connected (after resyncing), not before', async () => {
  const hub = scriptedHub();
  const c = new HeraldClient({ url: 'ws://fake/ws', WebSocket: fakeSocketClass(hub), browserEvents: false, backoff: { initialMs: 1 } });
  const log = [];
  c.on('state', (s) => log.push(s.state));
  c.on('connected', () => log.push(`connected-event while ${c.state.state}`));
  c.subscribe('c');
  hub.answerSubscribe = true;
  await c.connect();
  hub.answerSubscribe = false; // the resubscribe waits for an answer we give below
  hub.sockets[0].close(1006, 'cut');
  await until(() => c.state.state === 'resyncing');
  assert.ok(!log.slice(3).some((x) => x.startsWith('connected-event')), log.join(','));
  const resub = hub.commands.filter((x) => x.cmd === 'subscribe').at(-1);
  hub.sockets[1].push({ id: resub.id, result: { channel: 'c', epoch: 'E1', offset: 0, keyed: false, recovered: true } });
  await c.waitFor('connected');
  assert.deepEqual(log, [
    'connecting', 'connected', 'connected-event while connected',
    'reconnecting', 'reconnecting', 'resyncing', 'connected', 'connected-event while connected',
  ]);
  c.close();
});

test('resync says what was skipped: from, position, skipped, reason', async () => {
  const hub = scriptedHub();
  const c = new HeraldClient({ url: 'ws://fake/ws', WebSocket: fakeSocketClass(hub), browserEvents: false, backoff: { initialMs: 1 } });
  const sub = c.subscribe('c');
  const resyncs = [];
  sub.on('resync', (e) => resyncs.push(e));
  await c.connect();
  await sub.ready();
  hub.sockets[0].push(pub(1), pub(2));
  hub.onSubscribe = () => ({ channel: 'c', epoch: 'E1', offset: 40, keyed: false, recovered: false, reason: 'history_trimmed' });
  hub.sockets[0].close(1006, 'cut');
  await until(() => resyncs.length === 1);
  assert.deepEqual(resyncs[0], { channel: 'c', reason: 'history_trimmed', from: { epoch: 'E1', offset: 2 }, position: { epoch: 'E1', offset: 40 }, skipped: 38, snapshot: undefined });
  hub.onSubscribe = () => ({ channel: 'c', epoch: 'E2', offset: 3, keyed: false, recovered: false, reason: 'epoch_changed' });
  await c.waitFor('connected');
  hub.sockets[1].close(1006, 'cut');
  await until(() => resyncs.length === 2);
  assert.deepEqual([resyncs[1].from, resyncs[1].position, resyncs[1].skipped], [{ epoch: 'E1', offset: 40 }, { epoch: 'E2', offset: 3 }, undefined]);
  assert.equal(sub.stats.resyncs, 2);
  c.close();
});

test('subscribing again with other options throws already_subscribed; the same or no options share the subscription', async () => {
  const hub = scriptedHub();
  const c = new HeraldClient({ url: 'ws://fake/ws', WebSocket: fakeSocketClass(hub), browserEvents: false });
  await c.connect();
  const a = c.subscribe('c');
  assert.throws(() => c.subscribe('c', { snapshot: true }), (e) => e.code === 105 && e.errorName === 'already_subscribed' && /snapshot: false/.test(e.message));
  assert.throws(() => c.subscribe('c', { since: { epoch: 'E1', offset: 0 } }), (e) => e.code === 105 && /no since/.test(e.message));
  assert.equal(c.subscribe('c'), a);
  assert.equal(c.subscribe('c', { snapshot: false }), a);
  const k = c.subscribe('k', { snapshot: true });
  assert.equal(c.subscribe('k', { snapshot: true }), k);
  assert.equal(c.subscribe('k'), k);
  assert.throws(() => c.subscribe('k', { snapshot: false }), /already subscribed with snapshot: true/);
  assert.equal(hub.commands.filter((x) => x.cmd === 'subscribe').length, 2);
  // Once every handle is dropped, other options make a new subscription.
  for (let i = 0; i < 3; i++) k.unsubscribe();
  const k2 = c.subscribe('k', { snapshot: false });
  assert.notEqual(k2, k);
  c.close();
});

test('only the fields protocol.md lists are sent', async () => {
  const hub = scriptedHub();
  const c = new HeraldClient({ url: 'ws://fake/ws', WebSocket: fakeSocketClass(hub), browserEvents: false, name: 'n', token: 't' });
  await c.connect();
  const sub = c.subscribe('c', { snapshot: true });
  await sub.ready();
  await c.publish('c', 1, { type: 't', key: 'k', op: 'upsert', idempotency_key: 'i', correlation_id: 'x', timeoutMs: 500, bogus: 1 });
  await c.history('c', { limit: 1, since: { epoch: 'E1', offset: 0, extra: 1 }, before: 3, timeoutMs: 500, bogus: 1 });
  await c.getState('c');
  await c.ping();
  hub.sockets[0].push({ push: 'ping' });
  const allowed = {
    connect: ['id', 'cmd', 'token', 'name', 'version'],
    subscribe: ['id', 'cmd', 'channel', 'since', 'snapshot'],
    publish: ['id', 'cmd', 'channel', 'data', 'type', 'key', 'op', 'idempotency_key', 'correlation_id'],
    history: ['id', 'cmd', 'channel', 'limit', 'since', 'before'],
    state: ['id', 'cmd', 'channel'],
    ping: ['id', 'cmd'],
    pong: ['cmd'],
  };
  for (const cmd of hub.commands) {
    for (const k of Object.keys(cmd)) assert.ok(allowed[cmd.cmd]?.includes(k), `${cmd.cmd} sent ${k}`);
    if (cmd.since) assert.deepEqual(Object.keys(cmd.since), ['epoch', 'offset']);
  }
  assert.deepEqual(hub.commands.map((x) => x.cmd), ['connect', 'subscribe', 'publish', 'history', 'state', 'ping', 'pong']);
  c.close();
});
