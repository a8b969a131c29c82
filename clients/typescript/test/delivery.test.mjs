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
    onCommand(sock, cmd) {
      server.commands.push(cmd);
      if (cmd.cmd === 'connect') sock.push({ id: cmd.id, result: { client: 'x', user: '', time: '', ping_interval_ms: 25000, pong_timeout_ms: 60000, clients: 1, node: 'n', version: 1 } });
      else if (cmd.cmd === 'subscribe') sock.push({ id: cmd.id, result: server.onSubscribe(cmd) });
      else if (cmd.id !== undefined) sock.push({ id: cmd.id, result: {} });
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
