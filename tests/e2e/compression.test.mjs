// End-to-end: permessage-deflate with a real browser (issue 16, item 3). A hub with
// `[compression] enabled = true`; Chromium offers the extension on its own (with
// `client_max_window_bits`), the hub accepts it (the handshake response, read over the DevTools
// protocol, names it), and a 300 KB repetitive payload among 1,000 small publications arrives
// intact and in order. The client bundle is served from crates/server/web/herald.js as
// `npm run build` wrote it.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { api, startHub } from '../../clients/typescript/test/helpers.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const bundlePath = resolve(here, '..', '..', 'crates', 'server', 'web', 'herald.js');
const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];

let hub;
let browser;

before(async () => {
  const config = join(mkdtempSync(join(tmpdir(), 'herald-deflate-')), 'herald.toml');
  writeFileSync(
    config,
    '[compression]\nenabled = true\n\n[limits]\nmax_api_body_bytes = 1048576\n\n' +
      '[namespaces.zip]\nsubscribe = "anyone"\nanonymous = true\nmax_message_bytes = 524288\nhistory_size = 5000\nmax_recover = 5000\n',
  );
  hub = await startHub({ extra: ['--config', config] });
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS });
});

after(async () => {
  await browser?.close();
  await hub?.stop();
});

test('Chromium negotiates permessage-deflate and every publication arrives intact', async () => {
  const context = await browser.newContext();
  const bundle = readFileSync(bundlePath, 'utf8');
  await context.route(`${hub.http}/deflate-test/herald.js`, (route) => route.fulfill({ contentType: 'text/javascript', body: bundle }));
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  const cdp = await context.newCDPSession(page);
  await cdp.send('Network.enable');
  const handshakes = [];
  cdp.on('Network.webSocketHandshakeResponseReceived', (e) => handshakes.push(e.response.headers));
  await page.goto(`${hub.http}/static/style.css`);
  await page.evaluate(async (url) => {
    const { HeraldClient } = await import('/deflate-test/herald.js');
    const client = new HeraldClient({ url });
    const sub = client.subscribe('zip:1');
    window.got = [];
    sub.on('publication', (p) => window.got.push(p));
    await client.connect();
    await sub.ready();
  }, hub.ws);
  assert.equal(handshakes.length, 1);
  const ext = Object.entries(handshakes[0]).find(([k]) => k.toLowerCase() === 'sec-websocket-extensions');
  assert.ok(ext && ext[1].includes('permessage-deflate'), `negotiated: ${JSON.stringify(handshakes[0])}`);

  const large = { text: 'herald '.repeat(45_000) };
  const sent = [await api(hub, 'POST', '/api/publish', { channel: 'zip:1', data: large })];
  for (let b = 0; b < 10; b++) {
    const items = Array.from({ length: 100 }, (_, i) => ({ channel: 'zip:1', data: { n: b * 100 + i } }));
    sent.push(...(await api(hub, 'POST', '/api/publish/batch', items)).results);
  }
  const last = sent.at(-1).offset;
  await page.waitForFunction((o) => window.got.at(-1)?.offset === o, last, { timeout: 20000 });
  const got = await page.evaluate(() => window.got.map((p) => ({ offset: p.offset, data: p.data })));
  assert.deepEqual(got.map((p) => p.offset), sent.map((r) => r.offset), 'in order, once');
  assert.deepEqual(got[0].data, large);
  assert.deepEqual(got.slice(1).map((p) => p.data.n), Array.from({ length: 1000 }, (_, i) => i));
  assert.deepEqual(errors, []);
  await context.close();
});
