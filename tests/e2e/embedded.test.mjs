// End-to-end: the hub embedded in another axum application (crates/server/examples/embedded.rs)
// with its pages mounted under `/live`, in headless Chromium: the dashboard and the demo load
// styled (their assets resolve under the prefix) and connect to `/live/ws` (the client's default
// URL derived from the page).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { existsSync, mkdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, '..', '..');
const shots = resolve(repo, 'artifacts', 'screenshots');
const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];
const T = 20000; // per-expectation timeout
/** The example's token secret (`auth.token_secret` in examples/embedded.rs). */
const SECRET = 'example-secret';
/** `--bg` of web/style.css, as a computed colour: the stylesheet was applied. */
const STYLED_BG = 'rgb(15, 20, 25)';

let app;
let browser;
const pageErrors = [];

/** $EMBEDDED_BIN, else the example cargo built in $CARGO_TARGET_DIR or target/ (run.sh builds it). */
function exampleBin() {
  if (process.env.EMBEDDED_BIN) return process.env.EMBEDDED_BIN;
  const target = process.env.CARGO_TARGET_DIR ? resolve(repo, process.env.CARGO_TARGET_DIR) : join(repo, 'target');
  const bin = join(target, 'debug', 'examples', 'embedded');
  if (!existsSync(bin)) throw new Error(`${bin} not found: run \`cargo build -p herald-server --example embedded\``);
  return bin;
}

/** Starts the example on a free port; resolves with its base URL once it printed it. */
async function startApp() {
  const child = spawn(exampleBin(), ['127.0.0.1:0'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  const exited = new Promise((res) => child.once('exit', res));
  const http = await new Promise((resolveP, reject) => {
    const timer = setTimeout(() => reject(new Error(`the example did not start:\n${log}`)), 15000);
    const onData = (chunk) => {
      log += chunk.toString();
      const m = /app on (http:\/\/127\.0\.0\.1:\d+)/.exec(log);
      if (m) {
        clearTimeout(timer);
        resolveP(m[1]);
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`the example exited with ${code}:\n${log}`));
    });
  });
  return {
    http,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      await exited;
    },
  };
}

/** An HS256 admin token signed with the example's secret. */
function adminToken() {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub: 'e2e-admin', roles: ['admin'], exp: Math.floor(Date.now() / 1000) + 3600 })}`;
  return `${body}.${createHmac('sha256', SECRET).update(body).digest('base64url')}`;
}

before(async () => {
  mkdirSync(shots, { recursive: true });
  app = await startApp();
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS });
});

after(async () => {
  await browser?.close();
  await app?.stop();
});

async function newPage(path) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  const page = await context.newPage();
  page.on('pageerror', (err) => pageErrors.push(`${path}: ${err.message}`));
  // Anything the pages ask of the host root instead of `/live` is a failure of the prefix.
  page.on('request', (req) => {
    const path = new URL(req.url()).pathname;
    if (!path.startsWith('/live') && path !== '/favicon.ico') pageErrors.push(`${path} requested outside /live`);
  });
  await page.goto(app.http + path);
  return page;
}

const background = (page) => page.evaluate(() => getComputedStyle(document.body).backgroundColor);

test('embedded under /live: the dashboard loads styled and connects to /live/ws', async () => {
  const page = await newPage(`/live?backoff_max_ms=2000#token=${adminToken()}`);
  await page.waitForSelector('#conn[data-herald-state="connected"]', { timeout: T });
  assert.equal(await background(page), STYLED_BG);
  assert.equal(await page.evaluate(() => window.heraldClient.url), `${app.http.replace('http:', 'ws:')}/live/ws`);
  await page.screenshot({ path: join(shots, 'embedded-dashboard.png'), fullPage: true });
  // Its link to the demo stays under the prefix.
  await page.click('a[href="demo"]');
  await page.waitForURL(`${app.http}/live/demo`, { timeout: T });
  await page.context().close();
});

test('embedded under /live: two demo windows share the board, and the demo links back', async () => {
  const a = await newPage('/live/demo?backoff_max_ms=2000');
  const b = await newPage('/live/demo?backoff_max_ms=2000');
  for (const p of [a, b]) {
    await p.waitForSelector('#conn[data-herald-state="connected"]', { timeout: T });
    assert.equal(await background(p), STYLED_BG);
  }
  await a.waitForFunction(() => document.querySelector('#board').dataset.cards !== undefined, null, { timeout: T });
  const title = `Embedded card ${Date.now()}`;
  await a.fill('#new-card', title);
  await a.click('#add-card');
  await b.waitForSelector(`.column[data-status="todo"] .card:has-text("${title}")`, { timeout: T });
  await b.screenshot({ path: join(shots, 'embedded-demo.png'), fullPage: true });
  await a.click('header a:has-text("dashboard")');
  await a.waitForURL(`${app.http}/live`, { timeout: T });
  await a.context().close();
  await b.context().close();
});

test('embedded under /live: no uncaught errors and nothing asked outside the prefix', () => {
  assert.deepEqual(pageErrors, []);
});
