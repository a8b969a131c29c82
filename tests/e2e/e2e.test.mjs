// End-to-end: the dashboard and the demo page served by `herald serve`, in headless Chromium.
// The pages are loaded through a loopback TCP proxy so the test can cut the browser's network while
// the hub stays up (publications made meanwhile stay in the hub's history and must be resumed).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { spawn } from 'node:child_process';
import net from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { API_KEY, api, startHub, startProxy, until } from '../../clients/typescript/test/helpers.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const shots = resolve(here, '..', '..', 'artifacts', 'screenshots');
const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];
const T = 20000; // per-expectation timeout

let hub;
let proxy;
let browser;
const pageErrors = [];

before(async () => {
  mkdirSync(shots, { recursive: true });
  hub = await startHub();
  proxy = await startProxy(hub.port);
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS });
});

after(async () => {
  await browser?.close();
  await proxy?.close();
  await hub?.stop();
});

async function newPage(path, viewport = { width: 1280, height: 860 }) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  page.on('pageerror', (err) => pageErrors.push(`${path}: ${err.message}`));
  await page.goto(proxy.http + path + (path.includes('?') ? '&' : '?') + 'backoff_max_ms=2000');
  return page;
}

/** A token minted by the hub (POST /api/token, the test's API key): admin by default. */
async function mintToken(claims = { sub: 'e2e-admin', roles: ['admin'] }) {
  return (await api(hub, 'POST', '/api/token', { ttl_secs: 3600, ...claims })).token;
}

/** Signs in on a dashboard page with an admin token; resolves once the app is shown. */
async function signIn(page, token) {
  await page.fill('#admin-token', token ?? (await mintToken()));
  await page.click('#login button[type=submit]');
  await page.waitForSelector('#app-view:not([hidden])', { timeout: T });
  await page.waitForSelector('#conn[data-herald-state="connected"]', { timeout: T });
}

async function dashboard(viewport) {
  const page = await newPage('/', viewport);
  await signIn(page);
  return page;
}

async function tail(page, channel) {
  await page.fill('#tail-channel', channel);
  await page.click('#tail-start');
  await page.waitForFunction((ch) => document.querySelector('#tail')?.dataset.channel === ch, channel, { timeout: T });
}

/** The tail's offsets in the order they were received (the dashboard prepends: newest first). */
const offsets = (page) => page.$$eval('#tail li[data-offset]', (els) => els.map((e) => Number(e.dataset.offset)).reverse());
const state = (page) => page.getAttribute('#conn', 'data-herald-state');

test('dashboard: admin token required; two pages tailing one channel both show a publication', async () => {
  const anon = await newPage('/');
  await anon.waitForSelector('#login-view:not([hidden])', { timeout: T });
  assert.equal(await anon.isVisible('#app-view'), false);
  const refusedWith = async (token, pattern) => {
    await anon.fill('#admin-token', token);
    await anon.click('#login button[type=submit]');
    await anon.waitForFunction((p) => new RegExp(p).test(document.querySelector('#login-error').textContent), pattern, { timeout: T });
    assert.equal(await anon.isVisible('#app-view'), false);
  };
  // The API key is not a token; a token without the admin role may not read the figures.
  await refusedWith(API_KEY, 'not accepted');
  await refusedWith(await mintToken({ sub: 'someone', channels: ['*'] }), 'no admin role');
  await anon.context().close();

  const a = await dashboard();
  // After sign-in the page is pushed its figures: it never calls the HTTP API.
  const apiCalls = [];
  a.on('request', (req) => {
    if (new URL(req.url()).pathname.startsWith('/api/')) apiCalls.push(req.url());
  });
  const b = await dashboard();
  await tail(a, 'demo:e2e');
  await tail(b, 'demo:e2e');
  const res = await api(hub, 'POST', '/api/publish', { channel: 'demo:e2e', data: { hello: 'both pages' }, type: 'greeting', key: 'g', op: 'upsert' });
  for (const p of [a, b]) {
    await p.waitForSelector(`#tail li[data-offset="${res.offset}"]`, { timeout: T });
    assert.match(await p.textContent(`#tail li[data-offset="${res.offset}"]`), /both pages/);
  }
  // The overview shows this hub, its clients and the channel with its two subscribers.
  await a.waitForFunction(() => {
    const row = document.querySelector('#channels tr[data-channel="demo:e2e"] td.num');
    return row && Number(row.textContent) >= 2;
  }, null, { timeout: T });
  assert.ok(Number((await a.textContent('#stat-clients')).match(/\d+/)[0]) >= 2);
  assert.ok((await a.$$('#nodes tbody tr')).length >= 1);
  // The figures keep coming (one sample a second) and the charts draw them.
  const points = () => a.$eval('#chart-pubs', (el) => Number(el.dataset.points ?? 0));
  const before = await points();
  await a.waitForFunction((n) => Number(document.querySelector('#chart-pubs').dataset.points) > n, before, { timeout: T });
  for (const chart of ['#chart-pubs', '#chart-dels', '#chart-conns']) {
    assert.ok((await a.getAttribute(`${chart} polyline`, 'points')).split(' ').length >= 2, chart);
  }
  // The publications above show in publications/s at some point of the chart's window.
  await a.waitForFunction(() => /max [1-9]/.test(document.querySelector('#chart-pubs figcaption').textContent), null, { timeout: T });

  // The publish form goes over the WebSocket (admin token) and shows up in the tail.
  await a.fill('#pub-channel', 'demo:e2e');
  await a.fill('#pub-key', 'form');
  await a.selectOption('#pub-op', 'upsert');
  await a.fill('#pub-data', '{"from":"the form"}');
  await a.click('#pub-send');
  await b.waitForFunction(() => [...document.querySelectorAll('#tail li')].some((li) => li.textContent.includes('the form')), null, { timeout: T });
  await a.screenshot({ path: join(shots, 'dashboard.png'), fullPage: true });
  assert.deepEqual(apiCalls, [], 'no HTTP API request after sign-in');
  await a.context().close();
  await b.context().close();
});

test('dashboard: network cut, events published meanwhile all appear once; hub restart → reconnecting → connected', async () => {
  const page = await dashboard();
  await tail(page, 'demo:e2e-resume');
  const first = await api(hub, 'POST', '/api/publish', { channel: 'demo:e2e-resume', data: { n: 0 }, key: 'k0', op: 'upsert' });
  await page.waitForSelector(`#tail li[data-offset="${first.offset}"]`, { timeout: T });

  // Cut the browser's network (the hub stays up), publish N while it is away.
  proxy.cut();
  await page.waitForSelector('#conn[data-herald-state="reconnecting"]', { timeout: T });
  assert.match(await page.textContent('#conn'), /attempt \d+ of 10/);
  const N = 12;
  let last;
  for (let i = 1; i <= N; i++) last = await api(hub, 'POST', '/api/publish', { channel: 'demo:e2e-resume', data: { n: i }, key: `k${i}`, op: 'upsert' });
  proxy.pass();
  await page.waitForSelector('#conn[data-herald-state="connected"]', { timeout: 40000 });
  await page.waitForSelector(`#tail li[data-offset="${last.offset}"]`, { timeout: T });
  let got = await offsets(page);
  // Received order, unsorted: strictly increasing and complete (no gap, no duplicate).
  assert.deepEqual(got, Array.from({ length: N + 1 }, (_, i) => first.offset + i));
  const stats = await page.evaluate(() => window.heraldClient.getSubscription('demo:e2e-resume').stats);
  assert.equal(stats.resyncs, 0);

  // Stop the hub: the indicator says reconnecting with attempt n of m and a countdown.
  const port = hub.port;
  await hub.stop('SIGTERM');
  await page.waitForSelector('#conn[data-herald-state="reconnecting"]', { timeout: T });
  assert.match(await page.textContent('#conn'), /reconnecting — attempt \d+ of 10, (next try in \d+ s|trying now)/);
  await page.screenshot({ path: join(shots, 'dashboard-reconnecting.png') });
  // Start it again on the same port: the page returns to connected and keeps working.
  hub = await startHub({ port });
  await page.waitForSelector('#conn[data-herald-state="connected"]', { timeout: 60000 });
  // The memory engine lost the stream: the page was told (resync notice), not silently continued.
  await page.waitForFunction(() => [...document.querySelectorAll('#tail li.notice')].some((li) => li.textContent.includes('epoch_changed')), null, { timeout: T });
  const after = await api(hub, 'POST', '/api/publish', { channel: 'demo:e2e-resume', data: { n: 'after restart' }, key: 'z', op: 'upsert' });
  await page.waitForFunction(
    (id) => [...document.querySelectorAll('#tail li[data-id]')].some((li) => li.dataset.id === id),
    after.id,
    { timeout: T },
  );
  got = await page.$$eval('#tail li[data-id]', (els) => els.map((e) => e.dataset.id));
  assert.equal(new Set(got).size, got.length, 'no duplicate ids');
  await page.context().close();
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
  const pings = () =>
    new Promise((res) => {
      const sock = net.connect(port, '127.0.0.1', () => sock.write('PING\r\n'));
      sock.once('data', (d) => {
        sock.destroy();
        res(d.toString().startsWith('+PONG'));
      });
      sock.once('error', () => res(false));
    });
  await until(pings, { timeoutMs: 10000, what: 'redis-server to answer PING' });
  return { url: `redis://127.0.0.1:${port}`, stop: () => child.kill('SIGKILL') };
}

test('dashboard on the redis engine: hub stopped, events published through another node, hub restarted → every event once', async () => {
  const redis = await startRedis();
  const engine = ['--engine', 'redis', '--redis-url', redis.url];
  let nodeA = await startHub({ extra: engine });
  const nodeB = await startHub({ extra: engine });
  const viaA = await startProxy(nodeA.port);
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  const page = await context.newPage();
  page.on('pageerror', (err) => pageErrors.push(`redis dashboard: ${err.message}`));
  try {
    await page.goto(`${viaA.http}/?backoff_max_ms=2000`);
    await signIn(page, (await api(nodeA, 'POST', '/api/token', { sub: 'e2e-admin', roles: ['admin'], ttl_secs: 3600 })).token);
    await tail(page, 'demo:e2e-redis');
    const first = await api(nodeB, 'POST', '/api/publish', { channel: 'demo:e2e-redis', data: { n: 0 }, key: 'k0', op: 'upsert' });
    await page.waitForSelector(`#tail li[data-offset="${first.offset}"]`, { timeout: T });

    // Stop the page's hub; publish through the other node while it is down.
    const port = nodeA.port;
    await nodeA.stop('SIGTERM');
    await page.waitForSelector('#conn[data-herald-state="reconnecting"]', { timeout: T });
    const N = 10;
    let last;
    for (let i = 1; i <= N; i++) last = await api(nodeB, 'POST', '/api/publish', { channel: 'demo:e2e-redis', data: { n: i }, key: `k${i}`, op: 'upsert' });
    nodeA = await startHub({ port, extra: engine });
    await page.waitForSelector('#conn[data-herald-state="connected"]', { timeout: 60000 });
    await page.waitForSelector(`#tail li[data-offset="${last.offset}"]`, { timeout: T });
    const got = await offsets(page);
    // Received order, unsorted: strictly increasing and complete (no gap, no duplicate).
    assert.deepEqual(got, Array.from({ length: N + 1 }, (_, i) => first.offset + i));
    const stats = await page.evaluate(() => window.heraldClient.getSubscription('demo:e2e-redis').stats);
    assert.equal(stats.resyncs, 0, 'resumed from the shared history, no resync');
  } finally {
    await context.close();
    await viaA.close();
    await nodeA.stop();
    await nodeB.stop();
    redis.stop();
  }
});

test('demo page: two windows share a live kanban board and an agent run', async () => {
  const a = await newPage('/demo');
  const b = await newPage('/demo');
  for (const p of [a, b]) await p.waitForSelector('#conn[data-herald-state="connected"]', { timeout: T });
  await a.waitForFunction(() => document.querySelector('#board').dataset.cards !== undefined, null, { timeout: T });
  const title = `E2E card ${Date.now()}`;
  await a.fill('#new-card', title);
  await a.click('#add-card');
  const card = (status) => `.column[data-status="${status}"] .card:has-text("${title}")`;
  await b.waitForSelector(card('todo'), { timeout: T });
  await b.click(`${card('todo')} button.right`);
  await a.waitForSelector(card('doing'), { timeout: T });
  await a.click(`${card('doing')} button.right`);
  await b.waitForSelector(card('done'), { timeout: T });
  // A third window opened later gets the board from the snapshot.
  const c = await newPage('/demo');
  await c.waitForSelector(card('done'), { timeout: T });
  await c.context().close();

  await b.click('#seed');
  await a.waitForFunction(() => Number(document.querySelector('#board').dataset.cards) >= 5, null, { timeout: T });

  await a.click('#agent-start');
  for (const p of [a, b]) await p.waitForSelector('#agent-out[data-finished="true"]', { timeout: 30000 });
  const outA = await a.textContent('#agent-out');
  const outB = await b.textContent('#agent-out');
  assert.ok(outA.includes('The plan is ready.'), outA);
  assert.equal(outB, outA);
  await b.screenshot({ path: join(shots, 'demo.png'), fullPage: true });
  await a.context().close();
  await b.context().close();
});

test('demo page: users u1 and u2 see "my active tasks" (ActiveTasks and assignee) follow create, move, reassign, done, delete', async () => {
  const u1 = await newPage('/demo?user=u1');
  const u2 = await newPage('/demo?user=u2');
  const both = [u1, u2];
  for (const p of both) {
    await p.waitForSelector('#board[data-ready="true"]', { timeout: T });
    await p.waitForSelector('#mine[data-ready="true"]', { timeout: T });
  }
  // The page shows the spec it is defined by.
  await u1.waitForFunction(() => document.querySelector('#spec-text').textContent.includes('view ActiveTasks: Task where status != "done"'), null, { timeout: T });

  const title = `Spec task ${Date.now()}`;
  await u1.fill('#new-card', title);
  await u1.selectOption('#new-assignee', 'u1');
  await u1.click('#add-card');
  const created = await u1.waitForSelector(`#board .card:has-text("${title}")`, { timeout: T });
  const key = await created.getAttribute('data-key');
  const onBoard = `#board .card[data-key="${key}"]`;
  const inMine = `#mine .card[data-key="${key}"]`;

  /** Waits until both boards show the task in `column` (none: gone) and each "my active" list has it or not. */
  async function expectState(column, mine) {
    for (const p of both) {
      if (column) await p.waitForSelector(`#board .column[data-status="${column}"] .card[data-key="${key}"]`, { timeout: T });
      else await p.waitForSelector(onBoard, { state: 'detached', timeout: T });
    }
    for (const [p, has] of [[u1, mine.u1], [u2, mine.u2]]) {
      if (has) await p.waitForSelector(`${inMine}:not([data-anim="leave"])`, { timeout: T });
      else await p.waitForSelector(inMine, { state: 'detached', timeout: T });
    }
  }

  await expectState('todo', { u1: true, u2: false });
  assert.equal(await u1.getAttribute(inMine, 'data-status'), 'todo');
  await u2.click(`${onBoard} button.right`); // todo → doing, from the other window
  await expectState('doing', { u1: true, u2: false });
  await u1.waitForSelector(`${inMine}[data-status="doing"]`, { timeout: T });
  await u1.selectOption(`${onBoard} select.assignee`, 'u2'); // reassign: leaves u1's list, enters u2's
  await expectState('doing', { u1: false, u2: true });
  assert.equal(await u2.getAttribute(`${onBoard}`, 'data-assignee'), 'u2');
  await u2.screenshot({ path: join(shots, 'demo-views.png'), fullPage: true });
  await u2.click(`${onBoard} button.right`); // doing → done: leaves the active view
  await expectState('done', { u1: false, u2: false });
  await u1.click(`${onBoard} button.remove`);
  await expectState(null, { u1: false, u2: false });

  // Each window's view got exactly the events its user should see, in order.
  const events = async (p) => (await p.getAttribute('#mine', 'data-log')).split(' ').filter((e) => e.includes(key)).map((e) => e.replace(`:${key}`, ''));
  assert.deepEqual(await events(u1), ['insert', 'update', 'delete:left']);
  assert.deepEqual(await events(u2), ['insert', 'delete:left']);
  for (const p of both) await p.context().close();
});

test('demo page: two windows see each other on the board (avatars, editing marker, live cursor) and see them go', async () => {
  const u1 = await newPage('/demo?user=u1');
  const u2 = await newPage('/demo?user=u2');
  const both = [u1, u2];
  for (const p of both) await p.waitForSelector('#board[data-ready="true"]', { timeout: T });
  const names = (p) => p.getAttribute('#here', 'data-names');
  // Each window shows both people, itself marked as "me".
  for (const p of both) await p.waitForFunction(() => document.querySelector('#here').dataset.names === 'u1 u2', null, { timeout: T });
  assert.equal(await u1.getAttribute('#here .avatar.me', 'data-name'), 'u1');
  assert.equal(await u2.getAttribute('#here .avatar.me', 'data-name'), 'u2');

  const key = `presence-${Date.now()}`;
  await api(hub, 'POST', '/api/publish', { channel: 'task:demo', key, op: 'upsert', type: 'task.created', data: { title: 'Presence task', status: 'todo', assignee: 'u1' } });
  const card = `#board .card[data-key="${key}"]`;
  for (const p of both) await p.waitForSelector(card, { timeout: T });

  // u1 opens the card: u2 sees "u1 editing" on it; u1 does not mark its own.
  await u1.click(`${card} .title`);
  await u1.waitForSelector('#editor:not([hidden])', { timeout: T });
  await u2.waitForSelector(`${card} .editing[data-name="u1"]`, { timeout: T });
  assert.equal(await u1.$(`${card} .editing`), null);
  await u2.screenshot({ path: join(shots, 'demo-presence.png'), fullPage: true });
  // u1 renames it from the editor and closes it: the marker goes, the new title shows in u2.
  await u1.fill('#edit-title', 'Presence task, renamed');
  await u1.click('#edit-save');
  await u2.waitForSelector(`${card} .title:has-text("Presence task, renamed")`, { timeout: T });
  await u2.waitForSelector(`${card} .editing`, { state: 'detached', timeout: T });

  // u2 moves the pointer over the board: u1 sees u2's cursor, roughly where it is.
  const box = await u2.locator('#board').boundingBox();
  await u2.mouse.move(box.x + box.width * 0.25, box.y + box.height * 0.5);
  await u2.mouse.move(box.x + box.width * 0.5, box.y + box.height * 0.5, { steps: 4 });
  await u1.waitForSelector('#cursors .cursor[data-name="u2"]', { timeout: T });
  await u1.waitForFunction(() => {
    const left = parseFloat(document.querySelector('#cursors .cursor[data-name="u2"]').style.left);
    return Math.abs(left - 50) < 5;
  }, null, { timeout: T });
  assert.equal(await u2.$('#cursors .cursor'), null, 'a window does not draw its own cursor');

  // A second u2 window is one avatar with two windows; closing windows takes them off the board.
  const u2b = await newPage('/demo?user=u2');
  await u1.waitForSelector('#here .avatar[data-name="u2"][data-tabs="2"]', { timeout: T });
  await u2b.context().close();
  await u1.waitForSelector('#here .avatar[data-name="u2"][data-tabs="1"]', { timeout: T });
  // u1 opens the card again and closes its window: its avatar and its marker leave u2's board.
  await u1.click(`${card} .title`);
  await u2.waitForSelector(`${card} .editing[data-name="u1"]`, { timeout: T });
  await u1.context().close();
  await u2.waitForFunction(() => document.querySelector('#here').dataset.names === 'u2', null, { timeout: T });
  await u2.waitForSelector(`${card} .editing`, { state: 'detached', timeout: T });
  assert.equal(await names(u2), 'u2');
  await u2.context().close();
});

test('phone width (390 px): dashboard and demo fit the screen', async () => {
  const phone = { width: 390, height: 844 };
  const fits = (page) => page.evaluate(() => document.documentElement.scrollWidth);
  const dash = await dashboard(phone);
  await tail(dash, 'demo:e2e-phone');
  await api(hub, 'POST', '/api/publish', { channel: 'demo:e2e-phone', data: { text: 'a long line of data to wrap on a narrow screen '.repeat(3) }, type: 'message' });
  await dash.waitForSelector('#tail li[data-offset]', { timeout: T });
  await dash.waitForFunction(() => Number(document.querySelector('#chart-conns').dataset.points) >= 2, null, { timeout: T });
  assert.ok(await fits(dash) <= 390, `dashboard is ${await fits(dash)} px wide`);
  await dash.screenshot({ path: join(shots, 'dashboard-390.png'), fullPage: true });
  await dash.context().close();

  const login = await newPage('/', phone);
  await login.waitForSelector('#login-view:not([hidden])', { timeout: T });
  assert.ok(await fits(login) <= 390, `sign-in is ${await fits(login)} px wide`);
  await login.context().close();

  const demo = await newPage('/demo', phone);
  await demo.waitForSelector('#conn[data-herald-state="connected"]', { timeout: T });
  await demo.waitForFunction(() => document.querySelector('#board').dataset.cards !== undefined, null, { timeout: T });
  assert.ok(await fits(demo) <= 390, `demo is ${await fits(demo)} px wide`);
  await demo.screenshot({ path: join(shots, 'demo-390.png'), fullPage: true });
  await demo.context().close();
});

test('no uncaught errors in the pages', () => {
  assert.deepEqual(pageErrors, []);
});
