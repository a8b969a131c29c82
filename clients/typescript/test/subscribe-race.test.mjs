// Guarantee 3 ("subscribed means flowing") against a real hub: publications that arrive in the same
// network read (or the same frame) as the subscribe reply must all be delivered, exactly once, in
// order, also when nothing is published afterwards (a quiet channel cannot heal a loss).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { HeraldClient } from '../dist/index.js';
import { api, nextEvent, startHub, until } from './helpers.mjs';

const TRIALS = 30;
let hub;

before(async () => {
  hub = await startHub();
});

after(async () => {
  await hub?.stop();
});

/** Publishes `n` times at once over HTTP; resolves with the highest offset the hub acknowledged. */
async function burst(channel, n, keyed = false) {
  const results = await Promise.all(
    Array.from({ length: n }, (_, i) =>
      api(hub, 'POST', '/api/publish', keyed ? { channel, data: { i }, key: `k${i % 2}`, op: 'upsert' } : { channel, data: i }),
    ),
  );
  return Math.max(...results.map((r) => r.offset));
}

/**
 * One trial: a client subscribes while `n` publications race the reply. Returns what the
 * subscription saw once the channel is quiet and the client is at the hub's offset.
 */
async function trial(channel, options, n, keyed = false) {
  const c = new HeraldClient({ url: hub.ws, browserEvents: false });
  try {
    await c.connect();
    const sub = c.subscribe(channel, options);
    const seen = [];
    sub.on('publication', (p) => seen.push(p.offset));
    const subscribed = nextEvent(sub, 'subscribed');
    const top = await burst(channel, n, keyed);
    const ev = await subscribed;
    // The channel is quiet from here on: the subscription must reach the hub's offset by itself.
    await until(() => sub.position.offset === top, { timeoutMs: 5000, what: `${channel} at offset ${top} (at ${sub.position.offset}, saw ${seen})` });
    return { sub, seen, ev, top };
  } finally {
    c.close();
  }
}

const range = (from, to) => Array.from({ length: Math.max(0, to - from + 1) }, (_, i) => from + i);

test('plain subscribe racing 3 publications: every publication after the reply, once, in order', async () => {
  for (let t = 0; t < TRIALS; t++) {
    const { sub, seen, ev, top } = await trial(`demo:race-plain-${t}`, {}, 3);
    assert.deepEqual(seen, range(ev.position.offset + 1, top), `trial ${t}`);
    assert.equal(sub.stats.resyncs, 0);
  }
});

test('resume with since racing 3 publications: recovered and live publications, once, in order', async () => {
  for (let t = 0; t < TRIALS; t++) {
    const channel = `demo:race-since-${t}`;
    const first = await api(hub, 'POST', '/api/publish', { channel, data: 'first' });
    const { sub, seen, ev, top } = await trial(channel, { since: { epoch: first.epoch, offset: first.offset } }, 3);
    assert.equal(ev.recovered, true, `trial ${t}`);
    assert.deepEqual(seen, range(first.offset + 1, top), `trial ${t}`);
    assert.equal(sub.stats.resyncs, 0);
  }
});

test('snapshot subscribe racing 3 keyed publications: records equal GET /api/state', async () => {
  for (let t = 0; t < TRIALS; t++) {
    const channel = `demo:race-snap-${t}`;
    await api(hub, 'POST', '/api/publish', { channel, data: { i: -1 }, key: 'k0', op: 'upsert' });
    const { sub, seen, ev, top } = await trial(channel, { snapshot: true }, 3, true);
    assert.deepEqual(seen, range(ev.position.offset + 1, top), `trial ${t}`);
    const st = await api(hub, 'GET', `/api/state?channel=${encodeURIComponent(channel)}`);
    assert.equal(st.offset, sub.position.offset);
    assert.deepEqual(Object.fromEntries(sub.records), Object.fromEntries(st.records.map((r) => [r.key, r.value])), `trial ${t}`);
  }
});
