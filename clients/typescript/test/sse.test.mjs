// The SSE fallback (protocol §13, multiplexed SSE) against a real herald behind a proxy that
// refuses WebSocket upgrades: the client falls back to SSE, delivers exactly once and in order,
// and moves back to WebSocket once upgrades are allowed again, without loss or duplicate.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { HeraldClient, sseUrl } from '../dist/index.js';
import { api, startHub, startProxy, until } from './helpers.mjs';

const fast = { initialMs: 20, maxMs: 200, maxAttempts: 50 };
let hub;
let proxy;
const clients = [];

before(async () => {
  const config = join(mkdtempSync(join(tmpdir(), 'herald-sse-')), 'herald.toml');
  // History deep enough that a resume never meets `history_trimmed` in these tests.
  writeFileSync(config, '[namespaces.fb]\nsubscribe = "anyone"\nanonymous = true\nhistory_size = 20000\nmax_recover = 20000\n');
  hub = await startHub({ extra: ['--config', config] });
  proxy = await startProxy(hub.port);
});

after(async () => {
  for (const c of clients) c.close();
  await proxy?.close();
  await hub?.stop();
});

/** Publishes `n` publications to `channel` by HTTP batch (1000 per request, the limit). */
async function publish(channel, from, n) {
  for (let i = 0; i < n; i += 1000) {
    const items = [];
    for (let k = i; k < Math.min(n, i + 1000); k++) items.push({ channel, data: { n: from + k } });
    await api(hub, 'POST', '/api/publish/batch', items);
  }
}

function assertExactlyOnce(got, n) {
  assert.equal(got.length, n, `${got.length} deliveries for ${n} publications`);
  for (let i = 0; i < n; i++) {
    if (got[i].offset !== i + 1 || got[i].n !== i + 1) {
      assert.fail(`delivery ${i}: offset ${got[i].offset}, n ${got[i].n}; expected ${i + 1} (duplicate or gap)`);
    }
  }
}

test('sseUrl maps the WebSocket URL to the multiplexed SSE route', () => {
  assert.equal(sseUrl('ws://h:7700/ws'), 'http://h:7700/sse');
  assert.equal(sseUrl('wss://h/live/ws?token=x'), 'https://h/live/sse');
});

test('refused upgrades: SSE fallback, 5,000 exactly once, then back to WebSocket during a stream', async (t) => {
  proxy.refuseUpgrades(true);
  const c = new HeraldClient({ url: proxy.ws, backoff: fast, browserEvents: false, sseProbe: { initialMs: 200, maxMs: 400 } });
  clients.push(c);
  const states = [];
  c.on('state', (s) => states.push(s));
  const drops = [];
  c.on('disconnected', (d) => drops.push(d.code));
  const sub = c.subscribe('fb:stream');
  const got = [];
  sub.on('publication', (p) => got.push({ offset: p.offset, n: p.data.n }));
  await c.connect();
  await until(() => sub.status === 'subscribed', { what: 'subscribed over SSE' });
  assert.equal(c.transport, 'sse');
  assert.equal(states.find((s) => s.state === 'connected')?.transport, 'sse');
  assert.ok(proxy.refused >= 1, 'the WebSocket upgrade was refused');

  const t0 = Date.now();
  await publish('fb:stream', 1, 5000);
  await until(() => got.length >= 5000, { timeoutMs: 60000, what: '5,000 publications over SSE' });
  t.diagnostic(`5,000 over SSE in ${Date.now() - t0} ms (published and delivered), drops on the way: [${drops}]`);
  assertExactlyOnce(got, 5000);
  assert.equal(c.transport, 'sse', 'still on SSE while upgrades are refused');
  const probes = proxy.refused;
  await until(() => proxy.refused > probes, { what: 'a background WebSocket probe' });

  // Upgrades allowed again while publications keep coming: the client moves back.
  let publishing = true;
  let next = 5001;
  const stream = (async () => {
    while (publishing || next <= 6000) {
      await publish('fb:stream', next, 100);
      next += 100;
    }
  })();
  proxy.refuseUpgrades(false);
  await until(() => c.transport === 'websocket' && c.state.state === 'connected', { timeoutMs: 20000, what: 'back on WebSocket' });
  assert.equal(states.at(-1).transport, 'websocket');
  publishing = false;
  await stream;
  const total = next - 1;
  await until(() => got.length >= total, { timeoutMs: 30000, what: `all ${total} publications` });
  assertExactlyOnce(got, total);
  assert.equal(c.transport, 'websocket');
  t.diagnostic(`${total - 5000} published during the move; drops in all: [${drops}]`);
});

test("transports: ['websocket'] does not fall back", async () => {
  proxy.refuseUpgrades(true);
  const c = new HeraldClient({ url: proxy.ws, transports: ['websocket'], backoff: { initialMs: 20, maxMs: 50, maxAttempts: 2 }, browserEvents: false });
  clients.push(c);
  const before = proxy.refused;
  c.connect();
  await until(() => c.state.state === 'offline' && c.state.reason === 'circuit_open', { what: 'the breaker opens' });
  assert.equal(c.transport, undefined);
  assert.ok(proxy.refused >= before + 2);
  c.close();
  proxy.refuseUpgrades(false);
});
