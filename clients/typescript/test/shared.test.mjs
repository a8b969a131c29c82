// `share: true` in Node: "tabs" are ShareTab instances on an in-process bus and lock manager (the
// browser's BroadcastChannel and Web Locks, faked), each with its own HeraldClient on the tab's
// virtual socket, against a real herald process. The Chromium test (tests/e2e/shared.test.mjs)
// runs the real APIs.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { HeraldClient } from '../dist/index.js';
import { ShareTab, defaultShareName } from '../dist/shared.js';
import { api, startHub, until } from './helpers.mjs';

const fast = { initialMs: 20, maxMs: 200, maxAttempts: 50 };
let hub;
const closers = [];

before(async () => {
  hub = await startHub();
});

after(async () => {
  for (const c of closers.reverse()) c();
  await hub?.stop();
});

/** An in-process BroadcastChannel bus and an exclusive lock manager, shared by the fake tabs. */
function world() {
  const bus = new Map(); // name -> Set of endpoints
  const locks = new Map(); // name -> { held, queue }
  const grant = (name) => {
    const l = locks.get(name);
    if (l.held || l.queue.length === 0) return;
    const hold = l.queue.shift();
    l.held = true;
    Promise.resolve(hold()).finally(() => {
      l.held = false;
      grant(name);
    });
  };
  return {
    env() {
      const hide = [];
      return {
        lock(name, hold) {
          if (!locks.has(name)) locks.set(name, { held: false, queue: [] });
          locks.get(name).queue.push(hold);
          grant(name);
        },
        channel(name) {
          if (!bus.has(name)) bus.set(name, new Set());
          const peers = bus.get(name);
          const ep = {
            onmessage: null,
            postMessage(msg) {
              const copy = structuredClone(msg);
              for (const p of peers) if (p !== ep) setTimeout(() => peers.has(p) && p.onmessage?.({ data: copy }), 0);
            },
            close() {
              peers.delete(ep);
            },
          };
          peers.add(ep);
          return ep;
        },
        onPageHide(fn) {
          hide.push(fn);
        },
      };
    },
  };
}

/** A fake tab with one shared client. */
function tab(w, name) {
  const t = new ShareTab(name, w.env(), () => new HeraldClient({ url: hub.ws, backoff: fast }));
  const client = new HeraldClient({ url: hub.ws, backoff: fast, WebSocket: t.WebSocket });
  closers.push(() => {
    client.close();
    t.close();
  });
  return { t, client };
}

const connections = async () => (await api(hub, 'GET', '/api/info')).connections;

test('default share name: URLs and the identity, never the token itself', () => {
  const a = defaultShareName(['ws://h/ws'], 'secret-token');
  assert.ok(a.startsWith('ws://h/ws|token-') && !a.includes('secret'));
  assert.notEqual(a, defaultShareName(['ws://h/ws'], 'other-token'));
  assert.equal(defaultShareName(['ws://h/ws'], undefined), 'ws://h/ws|anonymous');
});

test('three tabs, one connection; each gets every publication once; the leader goes mid-stream', async () => {
  const before = await connections();
  const w = world();
  const tabs = [tab(w, 'n1'), tab(w, 'n1'), tab(w, 'n1')];
  const channel = 'demo:share-unit';
  const got = tabs.map(() => []);
  const resyncs = tabs.map(() => 0);
  const subs = tabs.map(({ client }, i) => {
    const sub = client.subscribe(channel);
    sub.on('publication', (p) => got[i].push(p.offset));
    sub.on('resync', () => resyncs[i]++);
    return sub;
  });
  await Promise.all(tabs.map(({ client }) => client.connect()));
  await Promise.all(subs.map((s) => s.ready()));
  assert.equal(await connections(), before + 1);
  const leader = tabs.findIndex(({ t }) => t.leader);
  assert.ok(leader >= 0);

  const first = await api(hub, 'POST', '/api/publish', { channel, data: { n: 0 } });
  await until(() => got.every((g) => g.length === 1), { what: 'the first publication in every tab' });
  assert.deepEqual(got, tabs.map(() => [first.offset]));

  // A publish from a follower goes through the leader and its reply comes back.
  const follower = tabs.find((_, i) => i !== leader);
  const res = await follower.client.publish(channel, { n: 1 });
  assert.equal(res.offset, first.offset + 1);

  const total = 600;
  const items = Array.from({ length: total }, (_, i) => ({ channel, data: { n: i + 2 } }));
  let last = 0;
  for (let i = 0; i < items.length; i += 100) {
    const r = await api(hub, 'POST', '/api/publish/batch', items.slice(i, i + 100));
    last = r.results.at(-1).offset;
    if (i === 200) tabs[leader].t.close();
  }
  const rest = tabs.filter((_, i) => i !== leader);
  const restGot = got.filter((_, i) => i !== leader);
  await until(() => restGot.every((g) => g.at(-1) === last), { timeoutMs: 20000, what: 'every publication in the remaining tabs' });
  const want = Array.from({ length: last - first.offset + 1 }, (_, i) => first.offset + i);
  for (const g of restGot) assert.deepEqual(g, want);
  assert.deepEqual(resyncs.filter((_, i) => i !== leader), [0, 0]);
  assert.ok(rest.some(({ t }) => t.leader), 'another tab took the lead');
  await until(async () => (await connections()) === before + 1, { what: 'one connection again' });
});

test('a tab subscribing later with since gets what it missed from the leader', async () => {
  const w = world();
  const [a, b] = [tab(w, 'n2'), tab(w, 'n2')];
  const channel = 'demo:share-since';
  const subA = a.client.subscribe(channel);
  await a.client.connect();
  await subA.ready();
  const p1 = await api(hub, 'POST', '/api/publish', { channel, data: 1 });
  await api(hub, 'POST', '/api/publish', { channel, data: 2 });
  await api(hub, 'POST', '/api/publish', { channel, data: 3 });
  await until(() => subA.position.offset === p1.offset + 2, { what: 'a at the last' });
  const seen = [];
  const subB = b.client.subscribe(channel, { since: { epoch: p1.epoch, offset: p1.offset - 1 } });
  subB.on('publication', (p) => seen.push(p.offset));
  await b.client.connect();
  await until(() => seen.length === 3, { what: 'b caught up' });
  assert.deepEqual(seen, [p1.offset, p1.offset + 1, p1.offset + 2]);
  // Views and presence are refused, not silently half-shared.
  const pres = b.client.subscribe('demo:share-presence', { presence: true });
  await assert.rejects(pres.ready(), (e) => e.code === 107);
});
