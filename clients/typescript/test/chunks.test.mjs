// Large publications in parts (protocol §18) against a real hub through the test proxy: 5 MB
// payloads between small ones arrive whole, in order, once, with `progress`, though the
// connection is cut in the middle of one; a `preview` subscription gets them cut.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { HeraldClient } from '../dist/index.js';
import { api, nextEvent, startHub, startProxy, until } from './helpers.mjs';

const fast = { initialMs: 20, maxMs: 200, maxAttempts: 50 };
let hub;
let proxy;
const clients = [];

before(async () => {
  const config = join(mkdtempSync(join(tmpdir(), 'herald-chunks-')), 'herald.toml');
  writeFileSync(
    config,
    '[limits]\nmax_api_body_bytes = 8388608\noutbound_queue_bytes = 33554432\n\n' +
      '[namespaces.big]\nsubscribe = "anyone"\nanonymous = true\nmax_message_bytes = 6291456\nhistory_size = 100\nmax_recover = 100\n',
  );
  hub = await startHub({ extra: ['--config', config] });
  proxy = await startProxy(hub.port);
});

after(async () => {
  for (const c of clients) c.close();
  await proxy?.close();
  await hub?.stop();
});

/** About 5 MB of text with quotes, backslashes and multi-byte characters, per `seed`. */
const large = (seed) => {
  const unit = `${seed} "quoted" \\ é✓🦀 `;
  return { seed, text: unit.repeat(Math.floor(5_000_000 / Buffer.byteLength(unit))) };
};

test('5 MB publications arrive whole, in order, once, through a cut in the middle of one', async () => {
  const client = new HeraldClient({ url: proxy.ws, backoff: fast, requestTimeoutMs: 30000 });
  clients.push(client);
  const sub = client.subscribe('big:run');
  const got = [];
  const progress = [];
  let cut = false;
  sub.on('publication', (p) => got.push(p));
  sub.on('progress', (e) => {
    assert.ok(e.received < e.bytes && e.bytes > 5_000_000, `${e.received}/${e.bytes}`);
    progress.push(e);
    if (!cut && e.received > e.bytes / 3) {
      cut = true;
      proxy.cut();
      proxy.pass();
    }
  });
  await client.connect();
  await sub.ready();
  const sent = [];
  for (let i = 0; i < 5; i++) {
    const data = i % 2 === 1 ? large(i) : { small: i };
    const r = await api(hub, 'POST', '/api/publish', { channel: 'big:run', data });
    sent.push({ offset: r.offset, data });
  }
  await until(() => got.length >= sent.length, { timeoutMs: 60000, what: 'every publication' });
  assert.ok(cut, 'the connection was cut in the middle of a publication');
  assert.deepEqual(
    got.map((p) => p.offset),
    sent.map((s) => s.offset),
    'in order, once',
  );
  for (let i = 0; i < sent.length; i++) {
    assert.deepEqual(got[i].data, sent[i].data, `publication ${sent[i].offset} intact`);
    assert.equal(got[i].truncated, undefined);
  }
  const first = progress.filter((e) => e.offset === sent[1].offset).map((e) => e.received);
  assert.ok(
    first.some((r, i) => i > 0 && r < first[i - 1]),
    'progress of the cut publication started again',
  );
  assert.ok(progress.some((e) => e.offset === sent[3].offset), 'the second large one came in parts');
});

test('a preview subscription gets large publications cut, with their length', async () => {
  const client = new HeraldClient({ url: hub.ws, backoff: fast });
  clients.push(client);
  const sub = client.subscribe('big:preview', { preview: 64 });
  await client.connect();
  await sub.ready();
  const data = large(7);
  const first = nextEvent(sub, 'publication', () => true, 20000);
  await api(hub, 'POST', '/api/publish', { channel: 'big:preview', data });
  const p = await first;
  assert.equal(p.truncated, Buffer.byteLength(JSON.stringify(data)));
  assert.equal(typeof p.data, 'string');
  assert.ok(p.data.length <= 64 && JSON.stringify(data).startsWith(p.data));
  const second = nextEvent(sub, 'publication', () => true, 20000);
  await api(hub, 'POST', '/api/publish', { channel: 'big:preview', data: 1 });
  const q = await second;
  assert.equal(q.data, 1);
  assert.equal(q.truncated, undefined);
});
