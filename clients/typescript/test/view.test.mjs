// Live views (protocol §14) against a real herald process with the kanban spec
// (examples/kanban.herald): initial rows, the four moves, a resume through a cut connection, a
// view of one key, refusals as typed errors, and the store; then the delivery rules (duplicates,
// the `unsubscribe` push naming a view) with a scripted socket.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { HeraldClient, HeraldApi, HeraldError } from '../dist/index.js';
import { viewStore } from '../dist/svelte.js';
import { createHeraldHooks } from '../dist/react.js';
import { API_KEY, nextEvent, startHub, startProxy, until } from './helpers.mjs';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const fast = { initialMs: 20, maxMs: 200, maxAttempts: 50 };
let hub;
let http;
let dir;
const clients = [];

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'herald-views-'));
  const config = join(dir, 'herald.toml');
  writeFileSync(config, '[namespaces.task]\nkeyed = true\nfilters = true\nclient_publish = true\n');
  hub = await startHub({ extra: ['--config', config, '--spec', join(repo, 'examples', 'kanban.herald')] });
  http = new HeraldApi(hub.http, API_KEY);
});

after(async () => {
  for (const c of clients) c.close();
  await hub?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** A client whose token may subscribe to `task:*` (the namespace's policy is `claims`). */
function client(opts = {}) {
  const c = new HeraldClient({
    url: hub.ws,
    backoff: fast,
    token: async () => (await http.token({ sub: 'u1', channels: ['task:*'] })).token,
    ...opts,
  });
  clients.push(c);
  return c;
}

const task = (title, status, assignee = 'u1') => ({ title, status, assignee });
const write = (channel, key, op, data) => http.publish(channel, data, { key, op });

/** The server's records of `channel` that satisfy `pred`, as key → record. */
async function expected(channel, pred) {
  const st = await http.state(channel);
  return Object.fromEntries(st.records.filter((r) => pred(r.value, r.key)).map((r) => [r.key, r.value]));
}

const active = (r) => r.status !== 'done';

test('initial rows, then insert / update / delete (left) / delete (deleted) keep rows exact', async () => {
  const ch = 'task:b1';
  await write(ch, 't1', 'upsert', task('a', 'todo'));
  await write(ch, 't2', 'upsert', task('b', 'done'));
  const c = client();
  const view = c.subscribeView(ch, { view: 'ActiveTasks' });
  assert.equal(view.name, 'task:b1#ActiveTasks');
  const changes = [];
  for (const op of ['insert', 'update', 'delete']) view.on(op, (e) => changes.push([op, e.key, e.reason ?? null, e.publication.offset]));
  c.connect();
  await view.ready;
  assert.equal(view.filter, 'status != "done"');
  assert.deepEqual(Object.fromEntries(view.rows), await expected(ch, active));
  assert.deepEqual([...view.rows.keys()], ['t1']);

  const steps = [
    ['t3', 'upsert', task('c', 'doing'), ['insert', 't3', null]],
    ['t3', 'merge', { title: 'c2' }, ['update', 't3', null]],
    ['t3', 'merge', { status: 'done' }, ['delete', 't3', 'left']],
    ['t1', 'delete', null, ['delete', 't1', 'deleted']],
  ];
  for (const [key, op, data, want] of steps) {
    const n = changes.length;
    const res = await write(ch, key, op, data);
    await until(() => changes.length > n, { what: `the event of ${op} ${key}` });
    assert.deepEqual(changes.at(-1), [...want, res.offset]);
    assert.deepEqual(Object.fromEntries(view.rows), await expected(ch, active));
  }
  // A write outside the view makes no event; the next one comes with its own offset.
  await write(ch, 't2', 'merge', { title: 'b2' });
  const res = await write(ch, 't4', 'upsert', task('d', 'todo'));
  await until(() => changes.length === 5, { what: 'insert t4' });
  assert.deepEqual(changes.at(-1), ['insert', 't4', null, res.offset]);
  assert.deepEqual(view.position.offset, res.offset);
  assert.deepEqual(Object.fromEntries(view.rows), await expected(ch, active));
  assert.equal(view.stats.duplicatesDropped, 0);
  view.unsubscribe();
  assert.equal(view.status, 'unsubscribed');
  assert.equal(c.getView('task:b1#ActiveTasks'), undefined);
});

test('a volatile event of the channel reaches a connection that has only views of it, on each view', async () => {
  const ch = 'task:b-volatile';
  await write(ch, 't1', 'upsert', task('a', 'todo'));
  const watcher = client();
  const active = watcher.subscribeView(ch, { view: 'ActiveTasks' });
  const mine = watcher.subscribeView(ch, { filter: 'assignee == "u1"' });
  watcher.connect();
  await Promise.all([active.ready, mine.ready]);
  const sender = client();
  sender.connect();
  await nextEvent(sender, 'connected');
  const got = [nextEvent(active, 'volatile'), nextEvent(mine, 'volatile')];
  await sender.volatile(ch, 'cursor', { x: 1, y: 2 });
  for (const e of await Promise.all(got)) {
    assert.deepEqual({ channel: e.channel, type: e.type, data: e.data, user: e.user }, { channel: ch, type: 'cursor', data: { x: 1, y: 2 }, user: 'u1' });
    assert.equal(e.client, sender.info.client);
  }
  // Not a write: the rows and the position are untouched.
  assert.deepEqual([...active.rows.keys()], ['t1']);
  assert.equal(active.stats.duplicatesDropped, 0);
});

test('update events carry the merged record, the previous row and the patch', async () => {
  const ch = 'task:b2';
  await write(ch, 't1', 'upsert', task('a', 'todo'));
  const c = client();
  const view = c.subscribeView(ch, { filter: 'assignee == "u1"' });
  c.connect();
  await view.ready;
  const got = nextEvent(view, 'update');
  await write(ch, 't1', 'merge', { status: 'doing' });
  const e = await got;
  assert.deepEqual(e.record, task('a', 'doing'));
  assert.deepEqual(e.previous, task('a', 'todo'));
  assert.deepEqual(e.publication.data, { status: 'doing' });
  assert.equal(e.publication.op, 'merge');
});

test('a cut connection resumes with since: the missed events are replayed, rows stay exact', async () => {
  const ch = 'task:b3';
  for (let i = 0; i < 4; i++) await write(ch, `t${i}`, 'upsert', task(`n${i}`, i % 2 ? 'done' : 'todo'));
  const proxy = await startProxy(hub.port);
  try {
    const c = client({ url: proxy.ws });
    const view = c.subscribeView(ch, { view: 'ActiveTasks' });
    let rowsEvents = 0;
    view.on('rows', () => rowsEvents++);
    await c.connect();
    await view.ready;
    assert.deepEqual(Object.fromEntries(view.rows), await expected(ch, active));
    const before = { ...view.position };
    proxy.cut();
    await c.waitFor('reconnecting');
    // Every move while the client is away, and writes the view does not see.
    await write(ch, 't4', 'upsert', task('n4', 'doing')); // insert
    await write(ch, 't0', 'merge', { title: 'n0b' }); // update
    await write(ch, 't2', 'merge', { status: 'done' }); // left
    await write(ch, 't4', 'delete', null); // deleted (after its insert)
    await write(ch, 't1', 'merge', { title: 'hidden' }); // not in the view
    await write(ch, 't3', 'merge', { status: 'todo' }); // enters
    const last = await write(ch, 't5', 'upsert', task('n5', 'done')); // not in the view
    const resumed = nextEvent(view, 'subscribed', (e) => e.resumed);
    proxy.pass();
    const ev = await resumed;
    assert.equal(ev.recovered, true);
    assert.deepEqual(ev.position, { epoch: before.epoch, offset: last.offset });
    await c.waitFor('connected');
    assert.deepEqual(Object.fromEntries(view.rows), await expected(ch, active));
    assert.equal(view.stats.resyncs, 0);
    assert.ok(rowsEvents >= 6, `${rowsEvents} rows events`);
    // Live events go on after the resume.
    const ins = nextEvent(view, 'insert');
    await write(ch, 't6', 'upsert', task('n6', 'todo'));
    assert.equal((await ins).key, 't6');
    assert.deepEqual(Object.fromEntries(view.rows), await expected(ch, active));
  } finally {
    await proxy.close();
  }
});

test('a view of one key (TaskDetail by id), and a plain channel subscription beside views', async () => {
  const ch = 'task:b4';
  await write(ch, 't1', 'upsert', task('a', 'todo'));
  await write(ch, 't2', 'upsert', task('b', 'todo'));
  const c = client();
  const one = c.subscribeView(ch, { view: 'TaskDetail', key: 't1' });
  const plain = c.subscribe(ch);
  c.connect();
  await one.ready;
  await plain.ready();
  assert.deepEqual(Object.fromEntries(one.rows), { t1: task('a', 'todo') });
  const pubs = [];
  plain.on('publication', (p) => pubs.push(p.key));
  const del = nextEvent(one, 'delete');
  await write(ch, 't2', 'merge', { status: 'done' });
  await write(ch, 't1', 'delete', null);
  assert.equal((await del).reason, 'deleted');
  assert.equal(one.rows.size, 0);
  await until(() => pubs.length === 2, { what: 'both publications on the plain subscription' });
  assert.deepEqual(pubs, ['t2', 't1']);
});

test('refusals are typed errors: 118 for a bad filter, 107 for a by-id view without key', async () => {
  const c = client();
  c.connect();
  const bad = c.subscribeView('task:b5', { filter: 'staus == "x"' });
  const errors = [];
  bad.on('error', (e) => errors.push(e));
  await assert.rejects(bad.ready, (e) => e instanceof HeraldError && e.code === 118 && /staus/.test(e.message));
  assert.equal(errors.length, 1);
  assert.equal(bad.status, 'unsubscribed');
  assert.equal(c.getView('task:b5#filter'), undefined);
  const noKey = c.subscribeView('task:b5', { view: 'TaskDetail' });
  await assert.rejects(noKey.ready, (e) => e instanceof HeraldError && e.code === 107);
  const unknown = c.subscribeView('task:b5', { view: 'NoSuchView' });
  await assert.rejects(unknown.ready, (e) => e instanceof HeraldError && e.code === 118);
  // Same name with other options is refused on the client; the same options share the view.
  const a = c.subscribeView('task:b5', { view: 'ActiveTasks' });
  assert.equal(c.subscribeView('task:b5', { view: 'ActiveTasks' }), a);
  assert.throws(() => c.subscribeView('task:b5', { view: 'DoneTasks', sub: 'task:b5#ActiveTasks' }), (e) => e.code === 105);
  assert.throws(() => c.subscribeView('task:b5', {}), TypeError);
  await a.ready;
});

test('viewStore and useView: rows sorted by key, ready, error; the view ends with the last subscriber', async () => {
  const ch = 'task:b6';
  await write(ch, 'z', 'upsert', task('last', 'todo'));
  await write(ch, 'a', 'upsert', task('first', 'todo'));
  const c = client();
  c.connect();
  const store = viewStore(c, ch, { view: 'ActiveTasks' });
  const seen = [];
  const stop = store.subscribe((v) => seen.push(v));
  await until(() => store.get().ready, { what: 'store ready' });
  assert.deepEqual(store.get().keys, ['a', 'z']);
  assert.deepEqual(store.get().rows.map((r) => r.title), ['first', 'last']);
  await write(ch, 'm', 'upsert', task('middle', 'doing'));
  await until(() => store.get().rows.length === 3, { what: 'insert in the store' });
  assert.deepEqual(store.get().keys, ['a', 'm', 'z']);
  assert.ok(seen.length >= 3);
  stop();
  assert.equal(c.getView(`${ch}#ActiveTasks`), undefined);

  // useView through a minimal React stand-in: the effect subscribes, the state follows the store.
  let state;
  let cleanup;
  const React = {
    useState: (init) => [(state ??= typeof init === 'function' ? init() : init), (v) => (state = v)],
    useEffect: (fn) => (cleanup = fn()),
    useMemo: (f) => f(),
  };
  const { useView } = createHeraldHooks(React);
  useView(c, ch, { filter: 'staus == "x"' });
  await until(() => state.error, { what: 'the error in the hook state' });
  assert.equal(state.error.code, 118);
  assert.equal(state.ready, false);
  cleanup();
});

// ------------------------------------------------------------------------------------------------
// Delivery rules with a scripted socket
// ------------------------------------------------------------------------------------------------

function fakeSocketClass(server) {
  return class FakeSocket {
    constructor() {
      this.readyState = 0;
      this.onopen = this.onclose = this.onerror = this.onmessage = null;
      server.sockets.push(this);
      queueMicrotask(() => {
        this.readyState = 1;
        this.onopen?.({});
      });
    }
    send(data) {
      const cmd = JSON.parse(data);
      server.commands.push(cmd);
      queueMicrotask(() => server.answer(this, cmd));
    }
    close(code = 1000, reason = '') {
      if (this.readyState === 3) return;
      this.readyState = 3;
      queueMicrotask(() => this.onclose?.({ code, reason }));
    }
    push(...msgs) {
      this.onmessage?.({ data: msgs.map((m) => JSON.stringify(m)).join('\n') });
    }
  };
}

function scriptedHub() {
  const server = {
    sockets: [],
    commands: [],
    onSubscribe: (cmd) => ({ sub: cmd.sub, channel: cmd.channel, epoch: 'E1', offset: 2, initial: [{ key: 'a', value: { n: 1 }, offset: 1 }] }),
    answer(sock, cmd) {
      if (sock.readyState !== 1) return;
      if (cmd.cmd === 'connect') {
        sock.push({ id: cmd.id, result: { client: 'x', user: '', time: '', ping_interval_ms: 25000, pong_timeout_ms: 60000, clients: 1, node: 'n', version: 1 } });
      } else if (cmd.cmd === 'subscribe') {
        sock.push({ id: cmd.id, result: server.onSubscribe(cmd) });
      } else if (cmd.id !== undefined) sock.push({ id: cmd.id, result: {} });
    },
  };
  return server;
}

const viewEvent = (sub, operation, key, offset, record) => ({
  push: 'view',
  sub,
  operation,
  key,
  ...(record === undefined ? { reason: 'deleted' } : { record }),
  pub: { channel: 'k:c', epoch: 'E1', offset, id: `E1-${offset}`, type: 'message', data: record ?? null, time: '', key, op: record === undefined ? 'delete' : 'upsert' },
});

test('scripted: duplicates are dropped; an unsubscribe push naming the view resubscribes with since', async () => {
  const hub = scriptedHub();
  const c = new HeraldClient({ url: 'ws://fake/ws', WebSocket: fakeSocketClass(hub), browserEvents: false });
  const view = c.subscribeView('k:c', { filter: 'n > 0', sub: 'mine' });
  const ops = [];
  for (const op of ['insert', 'update', 'delete']) view.on(op, (e) => ops.push(`${op}:${e.key}@${e.publication.offset}`));
  await c.connect();
  await view.ready;
  const sub = hub.commands.find((x) => x.cmd === 'subscribe');
  assert.deepEqual(Object.keys(sub).sort(), ['channel', 'cmd', 'filter', 'id', 'sub']);
  const ws = hub.sockets[0];
  ws.push(
    viewEvent('mine', 'insert', 'b', 3, { n: 2 }),
    viewEvent('mine', 'insert', 'b', 3, { n: 2 }), // duplicate
    viewEvent('other', 'delete', 'a', 4), // another view's
    viewEvent('mine', 'update', 'a', 4, { n: 5 }),
    viewEvent('mine', 'update', 'a', 2, { n: 9 }), // behind the reply's position
  );
  assert.deepEqual(ops, ['insert:b@3', 'update:a@4']);
  assert.equal(view.stats.duplicatesDropped, 2);
  assert.deepEqual(Object.fromEntries(view.rows), { a: { n: 5 }, b: { n: 2 } });

  // The hub ends the view and asks for a resubscribe: since = the last event's position, and the
  // replayed events (one already applied) are applied once.
  hub.onSubscribe = (cmd) => ({
    sub: cmd.sub,
    channel: cmd.channel,
    epoch: 'E1',
    offset: 7,
    recovered: true,
    events: [viewEvent('mine', 'update', 'a', 4, { n: 5 }), viewEvent('mine', 'delete', 'b', 6)].map(({ push, ...e }) => e),
  });
  const resumed = nextEvent(view, 'subscribed', (e) => e.resumed);
  ws.push({ push: 'unsubscribe', channel: 'k:c', sub: 'mine', code: 117, reason: 'resubscribe', resubscribe: true });
  const ev = await resumed;
  assert.equal(ev.recovered, true);
  const again = hub.commands.filter((x) => x.cmd === 'subscribe').at(-1);
  assert.deepEqual(again.since, { epoch: 'E1', offset: 4 });
  assert.deepEqual(ops, ['insert:b@3', 'update:a@4', 'delete:b@6']);
  assert.deepEqual(view.position, { epoch: 'E1', offset: 7 });

  // Not recovered: the rows are replaced by the reply's.
  hub.onSubscribe = (cmd) => ({ sub: cmd.sub, channel: cmd.channel, epoch: 'E2', offset: 1, recovered: false, reason: 'epoch_changed', initial: [{ key: 'z', value: { n: 3 }, offset: 1 }] });
  const resynced = nextEvent(view, 'subscribed', (e) => e.recovered === false);
  ws.push({ push: 'unsubscribe', channel: 'k:c', sub: 'mine', code: 117, reason: 'resubscribe', resubscribe: true });
  assert.equal((await resynced).reason, 'epoch_changed');
  assert.deepEqual(Object.fromEntries(view.rows), { z: { n: 3 } });
  assert.equal(view.stats.resyncs, 1);
  // An unsubscribe push without resubscribe ends the view.
  const ended = nextEvent(view, 'unsubscribed');
  ws.push({ push: 'unsubscribe', channel: 'k:c', sub: 'mine', code: 104, reason: 'forbidden' });
  assert.equal((await ended).code, 104);
  assert.equal(view.status, 'unsubscribed');
  c.close();
});
