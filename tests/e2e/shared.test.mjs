// End-to-end: `share: true` in headless Chromium (issue 16, item 1). Three pages of ONE browser
// context (so they share Web Locks and BroadcastChannel) open one WebSocket between them, counted
// on the hub; the leader page closes in the middle of 2,000 HTTP publications and the two others
// still get every offset once, in order. The client bundle is served by the test
// (page.route on the hub's origin) from crates/server/web/herald.js as `npm run build` wrote it,
// so a hub binary built before the bundle changed still tests the current client; the pages are a
// plain asset of the hub, which opens no connection of its own.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { api, startHub, until } from '../../clients/typescript/test/helpers.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const bundlePath = resolve(here, '..', '..', 'crates', 'server', 'web', 'herald.js');
const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];
const T = 20000; // per-expectation timeout

let hub;
let browser;
let context;
const pageErrors = [];

before(async () => {
  // History deeper than the stream: the leader tab's page may lag the hub by more than the
  // default 1,000 publications (the hub then closes it as a slow consumer, 4001), and a resume
  // must still find every publication it missed, or the test would be checking a resync.
  const config = join(mkdtempSync(join(tmpdir(), 'herald-share-')), 'herald.toml');
  writeFileSync(config, '[namespaces.share]\nsubscribe = "anyone"\nanonymous = true\nclient_publish = true\nhistory_size = 5000\nmax_recover = 5000\n');
  hub = await startHub({ extra: ['--config', config] });
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS });
  context = await browser.newContext();
  const bundle = readFileSync(bundlePath, 'utf8');
  await context.route(`${hub.http}/share-test/herald.js`, (route) => route.fulfill({ contentType: 'text/javascript', body: bundle }));
});

after(async () => {
  await browser?.close();
  await hub?.stop();
});

/** The hub's open WebSocket connections (GET /api/info `connections`). */
const connections = async () => (await api(hub, 'GET', '/api/info')).connections;

/** A page with one client (`share` as given) subscribed to `channel`, recording offsets. */
async function tab(channel, share) {
  const page = await context.newPage();
  page.on('pageerror', (err) => pageErrors.push(err.message));
  // A document of the hub's own (a page fulfilled by the test would count as another address
  // space, and Chromium's local network access checks would block its WebSocket to 127.0.0.1).
  await page.goto(`${hub.http}/static/style.css`);
  await page.evaluate(
    async ({ url, channel, share }) => {
      const { HeraldClient } = await import('/share-test/herald.js');
      const client = new HeraldClient({ url, share, backoff: { initialMs: 50, maxMs: 500, maxAttempts: 100 } });
      const sub = client.subscribe(channel);
      window.got = [];
      window.resyncs = [];
      window.states = [];
      sub.on('publication', (p) => window.got.push(p.offset));
      sub.on('resync', (r) => window.resyncs.push(r.reason));
      client.on('state', (s) => window.states.push(s.state));
      window.client = client;
      await client.connect();
      await sub.ready();
    },
    { url: hub.ws, channel, share },
  );
  return page;
}

const got = (page) => page.evaluate(() => window.got);

test('three tabs share one WebSocket; a publication reaches each once; the leader closes mid-stream', async () => {
  const channel = 'share:e2e';
  assert.equal(await connections(), 0);
  // The first page takes the lock (it asked first), so it is the leader.
  const leader = await tab(channel, true);
  const followers = [await tab(channel, true), await tab(channel, true)];
  const tabs = [leader, ...followers];
  assert.equal(await connections(), 1, 'three shared tabs, one connection');

  const first = await api(hub, 'POST', '/api/publish', { channel, data: { n: 0 } });
  for (const p of tabs) await p.waitForFunction((o) => window.got.includes(o), first.offset, { timeout: T });
  for (const p of tabs) assert.deepEqual(await got(p), [first.offset]);

  // 2,000 publications over HTTP in batches; the leader page closes after 800 of them.
  const total = 2000;
  let last = first.offset;
  for (let i = 0; i < total; i += 100) {
    const batch = Array.from({ length: 100 }, (_, k) => ({ channel, data: { n: i + k + 1 } }));
    const r = await api(hub, 'POST', '/api/publish/batch', batch);
    last = r.results.at(-1).offset;
    if (i === 700) await leader.close();
  }
  const want = Array.from({ length: last - first.offset + 1 }, (_, i) => first.offset + i);
  for (const p of followers) {
    await p.waitForFunction((o) => window.got.at(-1) === o, last, { timeout: T }).catch(async (err) => {
      const seen = await p.evaluate(() => ({ count: window.got.length, last: window.got.at(-1), resyncs: window.resyncs, states: window.states }));
      throw new Error(`a follower stopped short of offset ${last}: ${JSON.stringify(seen)}`, { cause: err });
    });
  }
  for (const p of followers) {
    const offsets = await got(p);
    assert.equal(offsets.length, want.length, 'every offset once');
    assert.deepEqual(offsets, want);
    assert.deepEqual(await p.evaluate(() => window.resyncs), []);
    // The takeover was seen as a reconnect of the tab's own (virtual) connection.
    assert.ok((await p.evaluate(() => window.states)).includes('reconnecting'));
  }
  await until(async () => (await connections()) === 1, { timeoutMs: T, what: 'one connection after the takeover' });

  // A publish from a follower (over the new leader) reaches both.
  const res = await followers[1].evaluate((ch) => window.client.publish(ch, { from: 'tab' }), channel);
  assert.equal(res.offset, last + 1);
  for (const p of followers) await p.waitForFunction((o) => window.got.at(-1) === o, res.offset, { timeout: T });

  // A tab without `share` next to them opens its own connection.
  const own = await tab(channel, false);
  assert.equal(await connections(), 2);
  await own.close();
  for (const p of followers) await p.close();
  await until(async () => (await connections()) === 0, { timeoutMs: T, what: 'every connection closed' });
  assert.deepEqual(pageErrors, []);
});
