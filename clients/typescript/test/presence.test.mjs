// Presence and volatile events (protocol §15, §16) against a real herald process (memory engine):
// two clients see each other join, update and leave; a quick reconnect keeps the member id and
// says no leave/join; a resume after a cut replays the missed changes; counts mode; volatile
// events and their rate limit; the store and the hook; then the delivery rules of the member list
// (duplicates, a fresh list, another epoch) on the Presence object alone.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { HeraldClient, HeraldApi, HeraldError, Presence } from '../dist/index.js';
import { presenceStore } from '../dist/svelte.js';
import { createHeraldHooks } from '../dist/react.js';
import { API_KEY, nextEvent, startHub, startProxy, until } from './helpers.mjs';

const fast = { initialMs: 20, maxMs: 200, maxAttempts: 50 };
let hub;
let http;
let dir;
const clients = [];

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'herald-presence-'));
  const config = join(dir, 'herald.toml');
  writeFileSync(
    config,
    '[namespaces.room]\npresence = true\nclient_publish = true\npresence_window = "50ms"\n\n' +
      // A wider window for the quick-reconnect test, so a loaded machine still rejoins inside it.
      '[namespaces.lobby]\npresence = true\nclient_publish = true\npresence_window = "500ms"\n\n' +
      '[namespaces.plain]\nclient_publish = true\nmax_message_bytes = 1024\n',
  );
  hub = await startHub({ extra: ['--config', config] });
  http = new HeraldApi(hub.http, API_KEY);
});

after(async () => {
  for (const c of clients) c.close();
  await hub?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** A connected-on-demand client of `user`, allowed to subscribe and publish to every test namespace. */
function client(user, opts = {}) {
  const channels = ['room:*', 'lobby:*', 'plain:*'];
  const c = new HeraldClient({
    url: hub.ws,
    backoff: fast,
    token: async () => (await http.token({ sub: user, channels, publish: channels })).token,
    ...opts,
  });
  clients.push(c);
  return c;
}

/** Resolves with the first `event` of `sub.presence` for member `id`. */
const presenceEvent = (sub, event, id) => nextEvent(sub.presence, event, (e) => e.member.member === id);

const ids = (sub) => [...sub.presence.members.keys()].sort();

test('two clients see each other join, update their info and leave', async () => {
  const ch = 'room:1';
  const a = client('alice', { member: 'tabA' });
  const b = client('bob', { member: 'tabB' });
  const sa = a.subscribe(ch, { presence: true, info: { name: 'Alice', colour: '#f00' } });
  const aJoined = presenceEvent(sa, 'join', 'alice/tabA');
  await a.connect();
  await sa.ready();
  await aJoined;
  assert.equal(sa.presence.self, 'alice/tabA');
  assert.deepEqual(sa.presence.members.get('alice/tabA').info, { name: 'Alice', colour: '#f00' });

  const bobSeen = presenceEvent(sa, 'join', 'bob/tabB');
  const sb = b.subscribe(ch, { presence: true, info: { name: 'Bob' } });
  b.connect();
  const seen = await bobSeen;
  assert.equal(seen.member.user, 'bob');
  assert.deepEqual(seen.member.info, { name: 'Bob' });
  // Bob's first list holds Alice, with her connection and node.
  await until(() => sb.presence.members.has('alice/tabA') && sb.presence.members.has('bob/tabB'), { what: 'bob sees both' });
  const alice = sb.presence.members.get('alice/tabA');
  assert.equal(alice.user, 'alice');
  assert.equal(alice.client, a.info.client);
  assert.equal(alice.node, a.info.node);
  assert.deepEqual(ids(sa), ['alice/tabA', 'bob/tabB']);
  assert.deepEqual(sa.presence.counts, { members: 2, users: 2 });
  assert.deepEqual([...sa.presence.byUser().keys()].sort(), ['alice', 'bob']);

  const updated = presenceEvent(sa, 'update', 'bob/tabB');
  await sb.setPresence({ name: 'Bob', typing: true });
  const u = await updated;
  assert.deepEqual(u.member.info, { name: 'Bob', typing: true });
  assert.deepEqual(u.previous.info, { name: 'Bob' });
  assert.deepEqual(sb.presence.info, { name: 'Bob', typing: true });
  // The same through the client.
  const again = presenceEvent(sb, 'update', 'alice/tabA');
  await a.setPresence(ch, { name: 'Alice', colour: '#0f0' });
  assert.deepEqual((await again).member.info, { name: 'Alice', colour: '#0f0' });
  await assert.rejects(a.setPresence('room:none', {}), (e) => e instanceof HeraldError && e.code === 108);

  const left = presenceEvent(sa, 'leave', 'bob/tabB');
  sb.unsubscribe();
  const l = await left;
  assert.equal(l.member.user, 'bob');
  assert.deepEqual(ids(sa), ['alice/tabA']);
  assert.deepEqual(sa.presence.counts, { members: 1, users: 1 });
});

test('one user in two tabs is two members of one user', async () => {
  const ch = 'room:tabs';
  const t1 = client('carol', { member: 't1' });
  const t2 = client('carol', { member: 't2' });
  const s1 = t1.subscribe(ch, { presence: true, info: { tab: 1 } });
  const s2 = t2.subscribe(ch, { presence: true, info: { tab: 2 } });
  t1.connect();
  t2.connect();
  await until(() => s1.presence.members.size === 2, { what: 'both tabs' });
  assert.deepEqual(s1.presence.counts, { members: 2, users: 1 });
  const carol = s1.presence.byUser().get('carol');
  assert.deepEqual(carol.map((m) => [m.member, m.info.tab]), [['carol/t1', 1], ['carol/t2', 2]]);
  await until(() => s2.presence.members.size === 2, { what: 'the second tab sees both' });
});

test('a quick reconnect keeps the member id: the others see no leave/join, only an update', async () => {
  const ch = 'lobby:1';
  const proxy = await startProxy(hub.port);
  try {
    const a = client('alice');
    const b = client('bob', { url: proxy.ws });
    assert.match(b.memberId, /^[0-9a-f]{16}$/);
    const sa = a.subscribe(ch, { presence: true });
    const sb = b.subscribe(ch, { presence: true, info: { name: 'Bob' } });
    const me = `bob/${b.memberId}`;
    const joined = presenceEvent(sa, 'join', me);
    a.connect();
    b.connect();
    await joined;
    const firstClient = b.info.client;
    const events = [];
    for (const ev of ['join', 'leave', 'update']) sa.presence.on(ev, (e) => events.push([ev, e.member.member]));
    const moved = presenceEvent(sa, 'update', me);
    proxy.cut();
    proxy.pass();
    await nextEvent(b, 'state', (s) => s.state === 'connected');
    assert.notEqual(b.info.client, firstClient);
    // The record changed (another connection id): one update, no leave or join.
    await moved;
    assert.deepEqual(events, [['update', me]]);
    assert.deepEqual(sa.presence.members.get(me).info, { name: 'Bob' });
    // Bob's own list is whole again after the resume.
    await until(() => sb.presence.members.size === 2, { what: 'bob sees both after the reconnect' });
    assert.deepEqual(ids(sb), ids(sa));
  } finally {
    await proxy.close();
  }
});

test('a resume after a cut replays the missed joins and leaves', async () => {
  const ch = 'room:resume';
  const proxy = await startProxy(hub.port);
  try {
    const a = client('alice', { member: 'a' });
    const b = client('bob', { member: 'b', url: proxy.ws });
    const d = client('dave', { member: 'd' });
    const sa = a.subscribe(ch, { presence: true });
    const sb = b.subscribe(ch, { presence: true });
    const sd = d.subscribe(ch, { presence: true });
    a.connect();
    b.connect();
    d.connect();
    await until(() => sb.presence.members.size === 3 && sa.presence.members.size === 3, { what: 'three members' });
    const listsBefore = sb.presence.stats.lists;

    // Bob is cut off; while away Carol joins and Dave leaves.
    const bobLeft = presenceEvent(sa, 'leave', 'bob/b');
    proxy.cut();
    await bobLeft;
    const c = client('carol', { member: 'c' });
    const carolJoined = presenceEvent(sa, 'join', 'carol/c');
    const sc = c.subscribe(ch, { presence: true });
    c.connect();
    await carolJoined;
    const daveLeft = presenceEvent(sa, 'leave', 'dave/d');
    sd.unsubscribe();
    await daveLeft;

    const bobEvents = [];
    for (const ev of ['join', 'leave']) sb.presence.on(ev, (e) => bobEvents.push([ev, e.member.member, !!e.position]));
    const back = presenceEvent(sa, 'join', 'bob/b');
    proxy.pass();
    await back;
    await until(() => ids(sb).join() === ids(sa).join(), { what: 'bob has the same members as alice' });
    assert.deepEqual(ids(sb), ['alice/a', 'bob/b', 'carol/c']);
    // Replayed as pushes (with positions), not replaced by a fresh list.
    assert.equal(sb.presence.stats.replaced, 0);
    assert.equal(sb.presence.stats.lists, listsBefore + 1);
    assert.ok(bobEvents.some((e) => e[0] === 'join' && e[1] === 'carol/c' && e[2]), JSON.stringify(bobEvents));
    assert.ok(bobEvents.some((e) => e[0] === 'leave' && e[1] === 'dave/d' && e[2]), JSON.stringify(bobEvents));
    assert.deepEqual(sb.presence.position, sa.presence.position);
    sc.unsubscribe();
  } finally {
    await proxy.close();
  }
});

test('counts mode: members and users, kept up to date; no member list', async () => {
  const ch = 'room:counts';
  const w = client('watcher', { member: 'w' });
  const sw = w.subscribe(ch, { presence: 'counts' });
  w.connect();
  await until(() => sw.presence.ready && sw.presence.counts.members === 1, { what: 'the watcher counted' });
  assert.deepEqual(sw.presence.counts, { members: 1, users: 1 });
  const e1 = client('eve', { member: 'e1' });
  const e2 = client('eve', { member: 'e2' });
  e1.subscribe(ch, { info: { n: 1 } });
  const s2 = e2.subscribe(ch, { presence: true });
  e1.connect();
  e2.connect();
  await until(() => sw.presence.counts.members === 3, { what: 'three members counted' });
  assert.deepEqual(sw.presence.counts, { members: 3, users: 2 });
  assert.equal(sw.presence.members.size, 0);
  const stats = await w.request('presence_stats', { channel: ch });
  assert.equal(stats.members, 3);
  s2.unsubscribe();
  await until(() => sw.presence.counts.members === 2, { what: 'a leave counted' });
  assert.deepEqual(sw.presence.counts, { members: 2, users: 2 });
});

test('only presence subscriptions send presence fields; presence on a plain namespace is 107', async () => {
  const c = client('frank');
  c.connect();
  const plain = c.subscribe('plain:1');
  await plain.ready();
  const asked = c.subscribe('plain:2', { presence: true });
  await assert.rejects(asked.ready(), (e) => e instanceof HeraldError && e.code === 107);
  // Options given again must agree on presence.
  const room = c.subscribe('room:opts');
  assert.throws(() => c.subscribe('room:opts', { presence: true }), (e) => e.code === 105);
  assert.equal(c.subscribe('room:opts', {}), room);
});

test('volatile events reach the other subscribers; a flood is refused with 110', async () => {
  const ch = 'room:cursor';
  const a = client('alice', { member: 'va' });
  const b = client('bob', { member: 'vb' });
  const sa = a.subscribe(ch);
  const sb = b.subscribe(ch);
  a.connect();
  b.connect();
  await sa.ready();
  await sb.ready();
  const got = nextEvent(sb, 'volatile');
  await a.volatile(ch, 'cursor', { x: 120, y: 80 });
  const e = await got;
  assert.deepEqual(e, { channel: ch, type: 'cursor', data: { x: 120, y: 80 }, user: 'alice', client: a.info.client });
  // Kept nowhere: the channel has no publication.
  const h = await a.history(ch);
  assert.equal(h.publications.length, 0);

  let received = 0;
  sb.on('volatile', () => received++);
  const results = await Promise.allSettled(Array.from({ length: 120 }, (_, i) => a.volatile(ch, 'cursor', { i })));
  const refused = results.filter((r) => r.status === 'rejected');
  assert.ok(refused.length > 0, 'some were refused');
  for (const r of refused) assert.ok(r.reason instanceof HeraldError && r.reason.code === 110, String(r.reason));
  const sent = results.length - refused.length;
  await until(() => received === sent, { what: `${sent} volatile events at bob` });
  await assert.rejects(a.volatile('plain:nope', 'x', 'y'.repeat(2000)), (err) => err instanceof HeraldError && err.code === 111);
});

test('presenceStore and usePresence: members sorted, counts, setPresence', async () => {
  const ch = 'room:store';
  const a = client('zed', { member: 'z' });
  const b = client('amy', { member: 'a' });
  a.connect();
  b.connect();
  const sb = b.subscribe(ch, { presence: true, info: { name: 'Amy' } });
  await sb.ready();
  const store = presenceStore(a, ch, { info: { name: 'Zed' } });
  const stop = store.subscribe(() => {});
  await until(() => store.get().members.length === 2, { what: 'the store has both' });
  assert.deepEqual(store.get().members.map((m) => m.member), ['amy/a', 'zed/z']);
  assert.deepEqual(store.get().counts, { members: 2, users: 2 });
  assert.equal(store.get().ready, true);
  const upd = presenceEvent(sb, 'update', 'zed/z');
  await store.setPresence({ name: 'Zed', away: true });
  await upd;
  await until(() => store.get().members[1].info?.away === true, { what: 'the store shows the update' });
  stop();
  await until(() => sb.presence.members.size === 1, { what: 'the store left' });

  // usePresence through a minimal React stand-in.
  let state;
  let cleanup;
  const React = {
    useState: (init) => [(state ??= typeof init === 'function' ? init() : init), (v) => (state = v)],
    useEffect: (fn) => (cleanup = fn()),
    useMemo: (f) => f(),
  };
  const { usePresence } = createHeraldHooks(React);
  const view = usePresence(a, ch, { info: { name: 'Zed' } });
  assert.equal(typeof view.setPresence, 'function');
  await until(() => state.members.length === 2, { what: 'the hook state has both' });
  assert.deepEqual(state.byUser.get('amy').map((m) => m.member), ['amy/a']);
  cleanup();
});

// ------------------------------------------------------------------------------------------------
// Delivery rules on the Presence object alone
// ------------------------------------------------------------------------------------------------

test('delivery rules: duplicates dropped, a fresh list diffs, another epoch asks for a fresh list', () => {
  let refetches = 0;
  const host = { refetch: () => refetches++, listenerFailed: (e) => assert.fail(e) };
  const p = new Presence(host, 'room:x', { presence: true, info: { n: 1 } }, 'me');
  assert.deepEqual(p._fields(), { member: 'me', info: { n: 1 }, presence: true });
  const events = [];
  for (const ev of ['join', 'leave', 'update']) p.on(ev, (e) => events.push([ev, e.member.member]));
  const m = (member, info) => ({ member, user: member.split('/')[0], client: 'n1-1', node: 'n1', info });
  p._onList({ channel: 'room:x', epoch: 'E', offset: 3, members: [m('a/1', 1), m('b/1', 1)] });
  assert.deepEqual(events, [['join', 'a/1'], ['join', 'b/1']]);
  assert.deepEqual(p._fields().presence_since, { epoch: 'E', offset: 3 });
  const push = (event, member, offset, info, epoch = 'E') => p._onEvent({ channel: 'room:x', event, member, user: member.split('/')[0], info, epoch, offset });
  push('join', 'c/1', 3); // at the list's position: a duplicate
  assert.equal(p.stats.duplicatesDropped, 1);
  push('join', 'c/1', 4, { x: 1 });
  push('update', 'c/1', 5, { x: 2 });
  push('leave', 'a/1', 6);
  push('leave', 'a/1', 6); // again
  assert.equal(p.stats.duplicatesDropped, 2);
  assert.deepEqual([...p.members.keys()], ['b/1', 'c/1']);
  assert.deepEqual(p.members.get('c/1').info, { x: 2 });
  // A fresh list (not recovered) replaces the members, with an event for each difference.
  events.length = 0;
  p._onList({ channel: 'room:x', epoch: 'E', offset: 9, recovered: false, members: [m('c/1', { x: 3 }), m('d/1', 1)] });
  assert.deepEqual(events, [['leave', 'b/1'], ['update', 'c/1'], ['join', 'd/1']]);
  assert.equal(p.stats.replaced, 1);
  // A recovered list keeps the members and the position: the replayed pushes follow.
  p._onList({ channel: 'room:x', epoch: 'E', offset: 12, recovered: true });
  assert.deepEqual(p.position, { epoch: 'E', offset: 9 });
  push('leave', 'd/1', 10);
  assert.deepEqual([...p.members.keys()], ['c/1']);
  // Another epoch: nothing applied, the position is forgotten, a fresh list is asked for.
  push('join', 'e/1', 1, null, 'F');
  assert.equal(refetches, 1);
  assert.equal(p.position, undefined);
  assert.equal(p.members.has('e/1'), false);
  assert.equal(p._fields().presence_since, undefined);
  // Counts mode sends `presence: "counts"` and no presence_since.
  const c = new Presence(host, 'room:x', { presence: 'counts' }, 'me');
  c._onStats({ channel: 'room:x', members: 4, users: 2, epoch: 'E', offset: 7 });
  assert.deepEqual(c.counts, { members: 4, users: 2 });
  assert.deepEqual(c._fields(), { member: 'me', info: undefined, presence: 'counts' });
  // A plain subscription sends nothing.
  assert.deepEqual(new Presence(host, 'room:x', {}, 'me')._fields(), {});
});

test('a large member list comes in parts and is applied once, whole', async () => {
  const ch = 'room:big';
  const members = [];
  for (let i = 0; i < 20; i++) {
    const c = client(`m${i}`, { member: 'tab' });
    const s = c.subscribe(ch, { info: { name: `member ${i}`, bio: 'x'.repeat(900) } });
    c.connect();
    members.push(s);
  }
  await Promise.all(members.map((s) => s.ready()));
  // Joins are batched: wait for the counts (an event), then a new follower reads the list.
  const counter = client('counter', { member: 'c' });
  const sc = counter.subscribe(ch, { presence: 'counts' });
  counter.connect();
  await until(() => sc.presence.counts.members >= 21, { what: 'all 20 members in the list' });
  const frames = [];
  class Recording extends WebSocket {
    constructor(url) {
      super(url);
      this.addEventListener('message', (ev) => frames.push(ev.data));
    }
  }
  const w = client('watcher', { member: 'w', WebSocket: Recording });
  const sw = w.subscribe(ch, { presence: true });
  const joins = [];
  sw.presence.on('join', (e) => joins.push(e.member.member));
  w.connect();
  await until(() => sw.presence.ready, { what: 'the watcher has its list' });
  const parts = frames.flatMap((f) => f.split('\n')).filter((l) => l.includes('"push":"presence_list"')).map((l) => JSON.parse(l));
  assert.ok(parts.length >= 3, `${parts.length} parts`);
  assert.deepEqual(parts.map((p) => p.more === true), [...parts.slice(1).map(() => true), false]);
  assert.equal(sw.presence.stats.lists, 1, 'one list applied');
  for (let i = 0; i < 20; i++) assert.ok(sw.presence.members.has(`m${i}/tab`), `m${i}/tab`);
  assert.ok(sw.presence.members.has('counter/c'));
  assert.ok(joins.length >= 21);
  assert.equal(new Set(joins).size, joins.length, 'each member joined once');
});
