// End-to-end, seed 004's flow: an application event `DecisionMade{session_id}` added to a Redis
// stream (the application's event bus) is bridged by `herald serve` ([[bridge]], docs/bridge.md)
// to the channel `session:{id}`, and reaches a browser subscribed to it.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { startHub, until } from '../../clients/typescript/test/helpers.mjs';

const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];
const T = 20000;

let browser;
before(async () => {
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS });
});
after(async () => {
  await browser?.close();
});

/** A redis-server on a free port, keeping nothing on disk. */
async function startRedis() {
  const port = await new Promise((res) => {
    const srv = net.createServer().listen(0, '127.0.0.1', () => {
      const p = srv.address().port;
      srv.close(() => res(p));
    });
  });
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
  const cli = (...args) => execFileSync('redis-cli', ['-p', String(port), ...args], { stdio: ['ignore', 'pipe', 'ignore'] }).toString().trim();
  await until(() => { try { return cli('PING') === 'PONG'; } catch { return false; } }, { timeoutMs: 10000, what: 'redis-server to answer PING' });
  return { port, url: `redis://127.0.0.1:${port}`, cli, stop: () => child.kill('SIGKILL') };
}

test('seed 004: DecisionMade on the event bus reaches the browser watching its session', async () => {
  const bus = await startRedis();
  const dir = mkdtempSync(join(tmpdir(), 'herald-e2e-bridge-'));
  const config = join(dir, 'herald.toml');
  writeFileSync(config, `
[namespaces.session]
anonymous = true
subscribe = "anyone"

[[bridge]]
name = "app"
source = "redis_streams"
url = "${bus.url}"
streams = ["app:events"]
dead_letter = "app:dead"

[[bridge.rule]]
match = { "data.type" = "DecisionMade" }
channels = ["session:{data.session_id}"]
type = "{data.type}"
select = ["session_id", "decision"]
`);
  const hub = await startHub({ extra: ['--config', config] });
  const context = await browser.newContext();
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (err) => errors.push(err.message));
  try {
    await page.goto(`${hub.http}/demo`);
    // The browser client the hub serves, subscribed to the session as a seed-004 frontend is.
    await page.evaluate(async (url) => {
      const { HeraldClient } = await import('./static/herald.js');
      window.got = [];
      const client = new HeraldClient({ url });
      const sub = client.subscribe('session:s-42');
      sub.on('publication', (p) => window.got.push(p));
      window.subscribed = new Promise((res) => sub.on('status', (s) => s === 'subscribed' && res()));
      await client.connect();
      await window.subscribed;
    }, hub.ws);

    // The application writes to its event bus; a bad event before it must not block it.
    bus.cli('XADD', 'app:events', '*', 'payload', JSON.stringify({ type: 'DecisionMade', decision: 'no session' }));
    bus.cli('XADD', 'app:events', '*', 'payload', JSON.stringify({ type: 'DecisionMade', session_id: 's-42', decision: 'approve', internal: 'x' }));
    await page.waitForFunction(() => window.got.length >= 1, null, { timeout: T });
    const got = await page.evaluate(() => window.got.map((p) => ({ type: p.type, data: p.data, source: p.meta?.source })));
    assert.deepEqual(got, [{ type: 'DecisionMade', data: { session_id: 's-42', decision: 'approve' }, source: 'bridge:app' }]);
    // The bad one is in the dead-letter stream with its reason.
    await until(() => bus.cli('XLEN', 'app:dead') === '1', { timeoutMs: T, what: 'the dead letter' });
    assert.match(bus.cli('XRANGE', 'app:dead', '-', '+'), /the event has no data\.session_id/);
    assert.deepEqual(errors, []);
  } finally {
    await context.close();
    await hub.stop();
    bus.stop();
  }
});
