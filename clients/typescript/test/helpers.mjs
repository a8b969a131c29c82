// Test helpers: start a real herald process on 127.0.0.1 port 0, a loopback TCP proxy that can cut
// or blackhole connections, and condition waits (no sleeps as synchronization).
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import net from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, '..', '..', '..');

export const API_KEY = 'test-api-key';
export const TOKEN_SECRET = 'test-token-secret';

/** Where the herald binary is: $HERALD_BIN, $CARGO_TARGET_DIR/debug/herald, or target/debug/herald. */
export function heraldBin() {
  if (process.env.HERALD_BIN) return process.env.HERALD_BIN;
  const target = process.env.CARGO_TARGET_DIR ? resolve(repo, process.env.CARGO_TARGET_DIR) : join(repo, 'target');
  const bin = join(target, 'debug', 'herald');
  if (!existsSync(bin)) throw new Error(`herald binary not found at ${bin}: run \`cargo build --bins\` first (or set HERALD_BIN)`);
  return bin;
}

/**
 * Starts `herald serve`. Resolves once it printed `listening on http://127.0.0.1:PORT`.
 * `port` 0 picks a free one; `extra` are more CLI arguments.
 */
export async function startHub({ port = 0, extra = [], timeoutMs = 15000 } = {}) {
  const args = ['serve', '--listen', `127.0.0.1:${port}`, '--api-key', API_KEY, '--token-secret', TOKEN_SECRET, ...extra];
  // The hub reads HERALD_* variables (config file, engine, ...): start it from the flags alone,
  // except its log filter (HERALD_LOG, default warn).
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('HERALD_')));
  env.HERALD_LOG = process.env.HERALD_LOG ?? 'warn';
  const child = spawn(heraldBin(), args, { stdio: ['ignore', 'pipe', 'pipe'], env });
  let log = '';
  const exited = new Promise((res) => child.once('exit', (code, signal) => res({ code, signal })));
  const listening = await new Promise((resolveP, reject) => {
    const timer = setTimeout(() => reject(new Error(`herald did not start in ${timeoutMs} ms:\n${log}`)), timeoutMs);
    const onData = (chunk) => {
      log += chunk.toString();
      const m = /listening on http:\/\/(127\.0\.0\.1):(\d+)/.exec(log);
      if (m) {
        clearTimeout(timer);
        resolveP(Number(m[2]));
      }
    };
    child.stderr.on('data', onData);
    child.stdout.on('data', onData);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`herald exited with ${code} before listening:\n${log}`));
    });
  });
  const hub = {
    port: listening,
    http: `http://127.0.0.1:${listening}`,
    ws: `ws://127.0.0.1:${listening}/ws`,
    child,
    get log() {
      return log;
    },
    /** SIGTERM (graceful, close code 4000) or SIGKILL; resolves when the process is gone. */
    async stop(signal = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      await exited;
    },
  };
  return hub;
}

/** Calls the HTTP API with the test API key. */
export async function api(hub, method, path, body) {
  const res = await fetch(hub.http + path, {
    method,
    headers: { 'x-api-key': API_KEY, ...(body ? { 'content-type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const json = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(`${method} ${path} → ${res.status} ${JSON.stringify(json)}`);
  return json;
}

/** Resolves when `cond()` is truthy; polls every 10 ms; rejects after `timeoutMs`. */
export async function until(cond, { timeoutMs = 10000, what = 'condition' } = {}) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Resolves with the first `event` of `emitter` whose payload satisfies `pred`. */
export function nextEvent(emitter, event, pred = () => true, timeoutMs = 10000) {
  return new Promise((resolveP, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`timed out waiting for ${event}`));
    }, timeoutMs);
    const off = emitter.on(event, (v) => {
      if (!pred(v)) return;
      off();
      clearTimeout(timer);
      resolveP(v);
    });
  });
}

/**
 * A loopback TCP proxy in front of `targetPort`. Modes: `pass` forwards; `cut()` destroys every
 * connection (RST) and refuses new ones until `pass()`; `blackhole()` keeps sockets open but drops
 * every byte both ways (a network that loses packets without FIN or RST). `flap(ms)` makes a
 * flapping network: every connection accepted from then on is cut (RST) `ms` after it was accepted
 * (`flap(0)` stops it); `cuts` counts those cuts. `refuseUpgrades(true)` answers every HTTP request
 * carrying `Upgrade: websocket` with `HTTP/1.1 403` (a proxy that blocks WebSocket) and forwards
 * everything else; `refused` counts those answers.
 */
export async function startProxy(targetPort) {
  let mode = 'pass';
  let flapMs = 0;
  let cuts = 0;
  let refusing = false;
  let refused = 0;
  const conns = new Set();
  const server = net.createServer((client) => {
    if (mode === 'cut') {
      client.resetAndDestroy();
      return;
    }
    const upstream = net.connect(targetPort, '127.0.0.1');
    const pair = { client, upstream };
    conns.add(pair);
    if (flapMs > 0) {
      setTimeout(() => {
        if (!conns.delete(pair)) return;
        cuts += 1;
        client.resetAndDestroy();
        upstream.destroy();
      }, flapMs);
    }
    const drop = () => {
      conns.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    // Request heads are looked at until the hub answered an upgrade (101): after it the bytes
    // are WebSocket frames.
    let upgraded = false;
    client.on('data', (d) => {
      if (refusing && !upgraded && /\r\nupgrade:[ \t]*websocket/i.test(d.toString('latin1'))) {
        refused += 1;
        conns.delete(pair);
        // Without its close handler, which would destroy the client before the answer is out.
        upstream.removeAllListeners('close').on('error', () => {}).destroy();
        client.end('HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n');
        return;
      }
      if (mode === 'pass') upstream.write(d);
    });
    upstream.on('data', (d) => {
      if (!upgraded && d.subarray(0, 12).toString('latin1') === 'HTTP/1.1 101') upgraded = true;
      if (mode === 'pass') client.write(d);
    });
    client.on('error', drop).on('close', drop);
    upstream.on('error', drop).on('close', drop);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const port = server.address().port;
  return {
    port,
    ws: `ws://127.0.0.1:${port}/ws`,
    http: `http://127.0.0.1:${port}`,
    get connections() {
      return conns.size;
    },
    get cuts() {
      return cuts;
    },
    get refused() {
      return refused;
    },
    refuseUpgrades(on) {
      refusing = on;
    },
    flap(ms) {
      flapMs = ms;
    },
    pass() {
      mode = 'pass';
    },
    cut() {
      mode = 'cut';
      for (const { client, upstream } of conns) {
        client.resetAndDestroy();
        upstream.destroy();
      }
      conns.clear();
    },
    blackhole() {
      mode = 'blackhole';
    },
    async close() {
      this.cut();
      await new Promise((r) => server.close(r));
    },
  };
}
