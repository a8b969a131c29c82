/**
 * The SSE fallback (protocol §13, "Multiplexed SSE transport"): where a WebSocket upgrade is
 * refused (a proxy, a firewall), the same wire protocol runs over `GET /sse` (frames in) and
 * `POST /sse/session/{id}` (commands out). Both are behind the `WebSocketLike` seam of
 * transport.ts, so the client's protocol logic (connect, resubscribe with `since`, exactly-once)
 * does not change with the transport.
 *
 * The stream is read with `fetch` and a `ReadableStream` parser rather than `EventSource`: it works
 * in browsers and in Node (which has no global `EventSource`), and a failed open is seen at once
 * (an `EventSource` retries on its own).
 */

import type { WebSocketConstructor, WebSocketLike } from './transport.js';

/** A way to carry the wire protocol. */
export type Transport = 'websocket' | 'sse';

/** How often a client on SSE tries WebSocket again (full jitter within each delay). */
export interface ProbeOptions {
  /** The first delay after SSE opened (default 2000 ms). */
  initialMs?: number;
  /** The cap the delay doubles up to (default 30000 ms). */
  maxMs?: number;
}

/** The multiplexed SSE URL of a hub's WebSocket URL: `ws://h/ws` → `http://h/sse`, `wss` → `https`. */
export function sseUrl(wsUrl: string): string {
  const url = new URL(wsUrl);
  url.protocol = url.protocol === 'wss:' || url.protocol === 'https:' ? 'https:' : 'http:';
  url.pathname = url.pathname.endsWith('/ws') ? `${url.pathname.slice(0, -3)}/sse` : `${url.pathname.replace(/\/$/, '')}/sse`;
  // The token goes in `connect`, never in a URL.
  url.search = '';
  url.hash = '';
  return url.href;
}

const CONNECTING = 0;
const OPEN = 1;
const CLOSED = 3;

/**
 * One multiplexed SSE session as a `WebSocketLike`: open once the `session` event names the
 * session, each `message` event one frame, `send` a POST of the queued lines. At most one POST is
 * in flight (the protocol's ordering rule); lines queued meanwhile go together in the next one.
 */
export class SseSocket implements WebSocketLike {
  readyState = CONNECTING;
  onopen: ((ev: unknown) => void) | null = null;
  onclose: ((ev: { code: number; reason: string }) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  /** Ends the GET stream and any POST in flight. */
  private readonly abort = new AbortController();
  /** Where the commands go, once the `session` event named the session. */
  private postUrl?: string;
  /** Lines waiting for the POST in flight to be answered. */
  private queue: string[] = [];
  private posting = false;

  constructor(readonly url: string) {
    void this.read();
  }

  send(data: string): void {
    if (this.readyState === CLOSED) return;
    this.queue.push(data);
    this.flush();
  }

  close(code = 1000, reason = ''): void {
    this.end(code, reason);
  }

  private flush(): void {
    if (this.posting || !this.postUrl || this.queue.length === 0 || this.readyState !== OPEN) return;
    const body = this.queue.join('\n');
    this.queue = [];
    this.posting = true;
    fetch(this.postUrl, {
      method: 'POST',
      // text/plain: a simple request, no CORS preflight.
      headers: { 'content-type': 'text/plain' },
      body,
      signal: this.abort.signal,
    }).then(
      (res) => {
        this.posting = false;
        if (res.status !== 204) {
          // 404 (the session ended) or 413: the session can no longer be trusted to have it all.
          void res.body?.cancel();
          this.end(1006, `SSE POST answered ${res.status}`);
          return;
        }
        this.flush();
      },
      () => {
        this.posting = false;
        this.end(1006, 'SSE POST failed');
      },
    );
  }

  private async read(): Promise<void> {
    let res: Response;
    try {
      res = await fetch(this.url, { headers: { accept: 'text/event-stream' }, signal: this.abort.signal });
    } catch {
      this.end(1006, 'SSE connection failed');
      return;
    }
    if (!res.ok || !res.body) {
      void res.body?.cancel();
      this.end(1006, `SSE answered ${res.status}`);
      return;
    }
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        // Events end with a blank line; `\r\n` and `\r` end lines too (the SSE spec).
        if (buf.includes('\r')) buf = buf.replace(/\r\n?/g, '\n');
        let end;
        while ((end = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, end);
          buf = buf.slice(end + 2);
          this.event(block);
          if (this.readyState === CLOSED) return;
        }
      }
    } catch {
      /* aborted or cut: ends below */
    }
    this.end(1006, 'SSE stream ended');
  }

  /** One event block: `session` opens, `message` is a frame; comments (keep-alive) are skipped. */
  private event(block: string): void {
    let type = 'message';
    const data: string[] = [];
    for (const line of block.split('\n')) {
      if (line === '' || line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? '' : line.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'event') type = value;
      else if (field === 'data') data.push(value);
    }
    if (data.length === 0) return;
    const text = data.join('\n');
    if (type === 'session' && this.readyState === CONNECTING) {
      let id: unknown;
      try {
        id = JSON.parse(text).session;
      } catch {
        /* checked below */
      }
      if (typeof id !== 'string' || id === '') {
        this.end(1006, 'SSE session event without a session');
        return;
      }
      this.postUrl = `${this.url.replace(/\/$/, '')}/session/${encodeURIComponent(id)}`;
      this.readyState = OPEN;
      this.onopen?.({});
      this.flush();
    } else if (type === 'message' && this.readyState === OPEN) {
      this.onmessage?.({ data: text });
    }
  }

  private end(code: number, reason: string): void {
    if (this.readyState === CLOSED) return;
    const failed = this.readyState === CONNECTING;
    this.readyState = CLOSED;
    this.queue = [];
    this.abort.abort();
    if (failed) this.onerror?.({});
    this.onclose?.({ code, reason });
  }
}

/** What a {@link FallbackSocket} needs besides the URL. */
export interface FallbackOptions {
  /** The WebSocket implementation. */
  WS: WebSocketConstructor;
  /** The transports to try, in order. */
  transports: readonly Transport[];
  /** Background WebSocket probes while on SSE. */
  probe?: ProbeOptions;
  /** A probe opened a WebSocket: the owner moves back (reconnects) when it likes. */
  onWebSocketBack: () => void;
}

/**
 * The socket of one connection attempt: the first transport of the list that opens. A WebSocket
 * that fails before it opens (a refused upgrade: error or close before open) gives way to SSE on
 * the same hub. While on SSE it probes WebSocket in the background (a real WebSocket open, at
 * doubling intervals up to `probe.maxMs`, one at a time) and reports the first that opens.
 */
export class FallbackSocket implements WebSocketLike {
  onopen: ((ev: unknown) => void) | null = null;
  onclose: ((ev: { code: number; reason: string }) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  /** The transport in use once open (undefined while trying). */
  transport?: Transport;
  private inner?: WebSocketLike;
  private closed = false;
  private probeTimer?: ReturnType<typeof setTimeout>;
  private probeSocket?: WebSocketLike;
  private probeDelay: number;

  constructor(
    readonly url: string,
    private readonly opts: FallbackOptions,
  ) {
    this.probeDelay = opts.probe?.initialMs ?? 2000;
    this.attempt(0);
  }

  get readyState(): number {
    return this.closed ? CLOSED : (this.inner?.readyState ?? CONNECTING);
  }

  send(data: string): void {
    this.inner?.send(data);
  }

  close(code?: number, reason?: string): void {
    this.closed = true;
    this.stopProbe();
    const inner = this.inner;
    this.inner = undefined;
    if (inner) {
      inner.onopen = inner.onmessage = inner.onerror = inner.onclose = null;
      try {
        inner.close(code, reason);
      } catch {
        /* never opened */
      }
    }
    // As a WebSocket does: the close event follows.
    const onclose = this.onclose;
    if (onclose) setTimeout(() => onclose({ code: code ?? 1005, reason: reason ?? '' }), 0);
  }

  /** Opens transport `i` of the list; a failure before open tries the next. */
  private attempt(i: number): void {
    const kind = this.opts.transports[i];
    const last = i >= this.opts.transports.length - 1;
    let sock: WebSocketLike;
    try {
      sock = kind === 'sse' ? new SseSocket(sseUrl(this.url)) : new this.opts.WS(this.url);
    } catch (err) {
      if (!last) return this.attempt(i + 1);
      setTimeout(() => {
        if (this.closed) return;
        this.closed = true;
        this.onerror?.(err);
        this.onclose?.({ code: 1006, reason: 'connection failed' });
      }, 0);
      return;
    }
    this.inner = sock;
    let opened = false;
    const giveUp = () => {
      if (this.inner !== sock) return;
      sock.onopen = sock.onmessage = sock.onerror = sock.onclose = null;
      try {
        sock.close();
      } catch {
        /* never opened */
      }
      this.attempt(i + 1);
    };
    sock.onopen = (ev) => {
      opened = true;
      this.transport = kind;
      if (kind === 'sse' && this.opts.transports.includes('websocket')) this.scheduleProbe();
      this.onopen?.(ev);
    };
    sock.onmessage = (ev) => this.onmessage?.(ev);
    sock.onerror = (ev) => {
      if (!opened && !last) giveUp();
      else this.onerror?.(ev);
    };
    sock.onclose = (ev) => {
      if (!opened && !last) return giveUp();
      this.stopProbe();
      this.onclose?.(ev);
    };
  }

  private scheduleProbe(): void {
    const max = this.opts.probe?.maxMs ?? 30000;
    const delay = this.probeDelay / 2 + Math.random() * (this.probeDelay / 2);
    this.probeDelay = Math.min(max, this.probeDelay * 2);
    this.probeTimer = setTimeout(() => this.probe(), delay);
  }

  /** One background WebSocket open; closed at once either way. */
  private probe(): void {
    this.probeTimer = undefined;
    if (this.closed) return;
    let ws: WebSocketLike;
    try {
      ws = new this.opts.WS(this.url);
    } catch {
      this.scheduleProbe();
      return;
    }
    this.probeSocket = ws;
    // A probe that hangs counts as failed (the next one waits longer).
    const timeout = setTimeout(() => done(false), 10000);
    const done = (ok: boolean) => {
      if (this.probeSocket !== ws) return;
      clearTimeout(timeout);
      this.probeSocket = undefined;
      ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
      try {
        ws.close(1000, 'probe');
      } catch {
        /* never opened */
      }
      if (this.closed) return;
      if (ok) this.opts.onWebSocketBack();
      else this.scheduleProbe();
    };
    ws.onopen = () => done(true);
    ws.onerror = () => done(false);
    ws.onclose = () => done(false);
  }

  private stopProbe(): void {
    if (this.probeTimer) clearTimeout(this.probeTimer);
    this.probeTimer = undefined;
    const ws = this.probeSocket;
    this.probeSocket = undefined;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
      try {
        ws.close(1000, 'probe');
      } catch {
        /* never opened */
      }
    }
  }
}
