#!/usr/bin/env node
// Socket.IO 4 peer for `herald bench`: the same scenarios (fanout, rooms, connect, idle), the
// same JSON fields. The server runs in a child process (so /proc gives its own CPU and RSS);
// this process is the load generator, with socket.io-client over the websocket transport only.
//
//   node bench.js fanout --clients 1000 --events 2000 --size 100 --json
//   node bench.js rooms --clients 5000 --events 50000 --json
//   node bench.js connect --clients 2000 --json
//   node bench.js idle --clients 10000 --json
'use strict';

const fs = require('fs');
const path = require('path');
const { fork } = require('child_process');

const TOKEN = 'bench-token';

// ---------------------------------------------------------------- server (child process)

function serve() {
  const http = require('http');
  const { Server } = require('socket.io');
  const httpServer = http.createServer();
  const io = new Server(httpServer, {
    transports: ['websocket'],
    serveClient: false,
    perMessageDeflate: false,
    maxHttpBufferSize: 1e6,
  });
  const offsets = new Map();
  io.use((socket, next) => {
    if (socket.handshake.auth && socket.handshake.auth.token === TOKEN) next();
    else next(new Error('unauthorized'));
  });
  io.on('connection', (socket) => {
    socket.on('subscribe', (room, ack) => {
      socket.join(room);
      if (typeof ack === 'function') ack({ offset: offsets.get(room) || 0 });
    });
    socket.on('publish', (msg, ack) => {
      const offset = (offsets.get(msg.room) || 0) + 1;
      offsets.set(msg.room, offset);
      io.to(msg.room).emit('pub', { room: msg.room, offset, data: msg.data });
      if (typeof ack === 'function') ack({ offset });
    });
  });
  httpServer.listen(0, '127.0.0.1', () => process.send({ port: httpServer.address().port }));
}

// ---------------------------------------------------------------- load generator

function parseArgs(argv) {
  const a = { scenario: argv[0], json: false, size: 100, rate: 0, window: 1000, batch: 16, concurrency: 256, duration: 30 };
  for (let i = 1; i < argv.length; i++) {
    const k = argv[i];
    if (k === '--json') a.json = true;
    else if (k === '--header') a.header = true;
    else if (k.startsWith('--')) a[k.slice(2)] = Number(argv[++i]);
  }
  const defaults = {
    fanout: [1000, 2000],
    rooms: [1000, 20000],
    connect: [2000, 0],
    idle: [2000, 0],
  }[a.scenario];
  if (!defaults) {
    console.error('usage: node bench.js fanout|rooms|connect|idle [--clients N] [--events E] [--size B] [--rate R] [--json]');
    process.exit(2);
  }
  a.clients = a.clients || defaults[0];
  a.events = a.events || defaults[1];
  return a;
}

function usage(pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const cpu = (Number(f[11]) + Number(f[12])) / 100;
    const m = /VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return { cpu, rss: Number(m[1]) * 1024 };
  } catch {
    return null;
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function startServer() {
  return new Promise((resolve, reject) => {
    const child = fork(__filename, ['--serve'], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    child.once('message', (m) => resolve({ child, port: m.port }));
    child.once('error', reject);
  });
}

function connectOne(url) {
  const { io } = require('socket.io-client');
  return new Promise((resolve, reject) => {
    const s = io(url, { transports: ['websocket'], auth: { token: TOKEN }, forceNew: true, reconnection: false, timeout: 30000 });
    s.once('connect', () => resolve(s));
    s.once('connect_error', (e) => {
      s.close();
      reject(e);
    });
  });
}

async function openMany(url, n, concurrency, each) {
  const sockets = [];
  let errors = 0;
  let next = 0;
  async function worker() {
    while (next < n) {
      const i = next++;
      try {
        const s = await connectOne(url);
        if (each) await each(s, i);
        sockets.push(s);
      } catch (e) {
        if (errors++ === 0) console.error('socket.io bench: connection failed:', e.message);
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, n) }, worker));
  return { sockets, errors };
}

function quantile(sorted, q) {
  if (sorted.length === 0) return null;
  const rank = Math.max(1, Math.ceil(sorted.length * q));
  return sorted[rank - 1];
}

async function pubsub(a, url, pid, rooms) {
  const stats = { delivered: 0, errors: 0 };
  const samples = [];
  const subscribe = (s, i) =>
    new Promise((resolve) => {
      const room = rooms[i % rooms.length];
      s.emit('subscribe', room, (r) => {
        let last = r.offset;
        s.on('pub', (m) => {
          const now = performance.now();
          if (m.offset !== last + 1) stats.errors++;
          last = m.offset;
          samples.push(now - m.data.t);
          stats.delivered++;
        });
        resolve();
      });
      s.on('disconnect', (reason) => {
        if (!stats.stopping) {
          stats.errors++;
          console.error('socket.io bench: subscriber disconnected:', reason);
        }
      });
    });
  const { sockets, errors } = await openMany(url, a.clients, a.concurrency, subscribe);
  stats.errors += errors;
  const subscribed = sockets.length;
  const fan = rooms.length === 1 ? Math.max(1, subscribed) : 1;
  const pub = await connectOne(url);
  let acked = 0;
  const pad = 'x'.repeat(Math.max(0, a.size - 36));
  const before = usage(pid);
  const start = performance.now();
  const deadline = start + a.duration * 1000;
  let published = 0;
  while (published < a.events && performance.now() < deadline) {
    let allowed;
    if (a.rate > 0) allowed = Math.floor(((performance.now() - start) / 1000) * a.rate) - published;
    else allowed = a.window - (published - Math.floor(stats.delivered / fan));
    const n = Math.min(allowed, a.events - published, a.batch);
    if (n <= 0) {
      await sleep(1);
      continue;
    }
    const t = performance.now();
    for (let k = 0; k < n; k++) {
      const room = rooms[(published + k) % rooms.length];
      pub.emit('publish', { room, data: { t, p: pad } }, () => acked++);
    }
    published += n;
    // Let the event loop run the sockets.
    await new Promise((r) => setImmediate(r));
  }
  const expected = rooms.length === 1 ? published * subscribed : Math.floor((published * subscribed) / a.clients);
  const until = performance.now() + 10000;
  while ((stats.delivered < expected || acked < published) && performance.now() < until) await sleep(1);
  const elapsed = (performance.now() - start) / 1000;
  const after = usage(pid);
  stats.stopping = true;
  for (const s of sockets) s.close();
  pub.close();
  samples.sort((x, y) => x - y);
  return {
    events: published,
    deliveries: stats.delivered,
    elapsed,
    p50: quantile(samples, 0.5),
    p99: quantile(samples, 0.99),
    p999: quantile(samples, 0.999),
    max: samples.length ? samples[samples.length - 1] : null,
    errors: stats.errors + Math.max(0, expected - stats.delivered) + (published - acked),
    cpu: before && after ? after.cpu - before.cpu : null,
    rss: after ? after.rss : null,
  };
}

async function connect(a, url, pid, idle) {
  const before = usage(pid);
  const start = performance.now();
  const { sockets, errors } = await openMany(url, a.clients, a.concurrency);
  const elapsed = (performance.now() - start) / 1000;
  let after = usage(pid);
  const out = { events: 0, deliveries: 0, elapsed, errors, conns: sockets.length / elapsed };
  if (idle) {
    await sleep(1000);
    after = usage(pid);
    if (before && after) out.bytesPerConn = (after.rss - before.rss) / Math.max(1, sockets.length);
  }
  out.cpu = before && after ? after.cpu - before.cpu : null;
  out.rss = after ? after.rss : null;
  for (const s of sockets) s.close();
  return out;
}

async function main() {
  const a = parseArgs(process.argv.slice(2));
  const { child, port } = await startServer();
  const url = `ws://127.0.0.1:${port}`;
  const id = Date.now().toString(16);
  let o;
  try {
    if (a.scenario === 'fanout') o = await pubsub(a, url, child.pid, [`fanout-${id}`]);
    else if (a.scenario === 'rooms')
      o = await pubsub(a, url, child.pid, Array.from({ length: a.clients }, (_, i) => `room-${id}-${i}`));
    else o = await connect(a, url, child.pid, a.scenario === 'idle');
  } finally {
    child.kill();
  }
  const secs = Math.max(o.elapsed, 1e-9);
  const perCpu = (n) => (o.cpu > 0 && n > 0 ? n / o.cpu : null);
  const r = {
    server: 'socket.io',
    scenario: a.scenario,
    clients: a.clients,
    events: o.events,
    size: a.size,
    rate: a.rate,
    duration_s: secs,
    deliveries: o.deliveries,
    deliveries_per_sec: o.deliveries / secs,
    events_per_sec: o.events / secs,
    p50_ms: o.p50 ?? null,
    p99_ms: o.p99 ?? null,
    p999_ms: o.p999 ?? null,
    max_ms: o.max ?? null,
    server_cpu_s: o.cpu,
    deliveries_per_cpu_s: perCpu(o.deliveries),
    events_per_cpu_s: perCpu(o.events),
    server_rss_bytes: o.rss,
    bytes_per_conn: o.bytesPerConn ?? null,
    conns_per_sec: o.conns ?? null,
    recovered_ms: null,
    errors: o.errors,
  };
  if (a.json) {
    console.log(JSON.stringify(r));
  } else {
    const f = (v, d) => (v === null || v === undefined ? '–' : Number(v).toFixed(d));
    if (a.header) {
      console.log('| server | scenario | clients | events | deliveries/s | p50 ms | p99 ms | p99.9 ms | server CPU s | deliveries/CPU-s | RSS MiB | bytes/conn | conns/s | recovered ms | errors |');
      console.log('| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
    }
    console.log(
      `| socket.io | ${r.scenario} | ${r.clients} | ${r.events} | ${f(r.deliveries_per_sec, 0)} | ${f(r.p50_ms, 2)} | ${f(r.p99_ms, 2)} | ${f(r.p999_ms, 2)} | ${f(r.server_cpu_s, 2)} | ${f(r.deliveries_per_cpu_s, 0)} | ${f(r.server_rss_bytes && r.server_rss_bytes / 1048576, 1)} | ${f(r.bytes_per_conn, 0)} | ${f(r.conns_per_sec, 0)} | – | ${r.errors} |`,
    );
  }
  process.exit(0);
}

if (process.argv[2] === '--serve') serve();
else main().catch((e) => {
  console.error(e);
  process.exit(1);
});
