/**
 * The WebSocket seam: the subset of the WebSocket API the client uses, how it finds an
 * implementation and a default URL, and how frames are encoded and split into messages.
 */

import { stripUndefined } from './fields.js';
import type { ErrorBody, Publication } from './types.js';

/** The subset of the WebSocket API the client uses (browser or Node's undici WebSocket). */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((ev: unknown) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

/**
 * The implementation to use: the one given, else the global one. Throws when there is none, so a
 * misconfigured client fails at construction rather than at the first connect.
 */
export function resolveWebSocket(given?: WebSocketConstructor): WebSocketConstructor {
  const WS = given ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
  if (!WS) {
    throw new Error(
      'HeraldClient: no WebSocket implementation (use Node >= 22, node --experimental-websocket, or pass options.WebSocket)',
    );
  }
  return WS;
}

/**
 * In a page: `ws` beside the page, so a hub mounted under a prefix is found (`/live/` and
 * `/live/demo` → `/live/ws`; `/` and `/demo` → `/ws`), `wss:` for an `https:` page. Resolved
 * against `document.baseURI` (a `<base>` element moves it), else `location.href`.
 */
export function defaultUrl(): string {
  const page = globalThis as { document?: { baseURI?: string }; location?: { href: string } };
  const base = page.document?.baseURI ?? page.location?.href;
  if (!base) throw new Error('HeraldClient: no url given and no page location to derive it from');
  const url = new URL('ws', base);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  return url.href;
}

/** A message from the hub: a reply (`id` with `result` or `error`) or a push (protocol §3). */
export type ServerMessage = {
  id?: number;
  result?: unknown;
  error?: ErrorBody;
  push?: string;
  pub?: Publication;
  channel?: string;
  code?: number;
  name?: string;
  reason?: string;
  resubscribe?: boolean;
  reconnect?: boolean;
};

/** A `chunk` push: one part of a large publication (protocol §18). */
export interface ChunkMessage {
  channel: string;
  epoch: string;
  offset: number;
  part: number;
  parts: number;
  bytes: number;
  text: string;
}

/** The frame of command `cmd` with request id `id` (undefined fields are left out). */
export function encodeCommand(id: number, cmd: string, fields: Record<string, unknown>): string {
  return JSON.stringify({ id, cmd, ...stripUndefined(fields) });
}

/** The frame of a message that is not a request (`pong`). */
export function encodeMessage(msg: Record<string, unknown>): string {
  return JSON.stringify(msg);
}

/** The messages of a text frame, one per non-blank line (a frame may carry several). */
export function frameLines(data: string): string[] {
  return data.split('\n').filter((line) => line.trim() !== '');
}

/**
 * Protocol v2's compact live publication (protocol §17): `[N, OFFSET, TIME_MS, DATA, EXTRA?]`,
 * `EXTRA` holding the v1 fields that are not at their default (`type`, `key`, `op`, `meta`, and
 * `id` or a text `time` when they are not derivable).
 */
export type CompactPublication = [number, number, number | string, unknown, CompactExtra?];

/** The v1 fields a compact publication carries only when needed. */
export interface CompactExtra {
  type?: string;
  key?: string;
  op?: Publication['op'];
  meta?: Publication['meta'];
  id?: string;
}

/** One line of a frame as a message; undefined when it is not JSON (or a malformed array). */
export function decodeMessage(line: string): ServerMessage | CompactPublication | undefined {
  try {
    const msg = JSON.parse(line);
    if (Array.isArray(msg)) {
      const [n, offset, time] = msg;
      const ok = msg.length >= 4 && msg.length <= 5 && Number.isInteger(n) && Number.isInteger(offset) && (typeof time === 'number' || typeof time === 'string');
      return ok && (msg[4] === undefined || (typeof msg[4] === 'object' && msg[4] !== null)) ? (msg as CompactPublication) : undefined;
    }
    return msg;
  } catch {
    return undefined;
  }
}

/** The v1 publication a compact one stands for, given its subscription's channel and epoch. */
export function expandCompact(c: CompactPublication, channel: string, epoch: string): Publication {
  const [, offset, time, data, extra] = c;
  const p: Publication = {
    channel,
    epoch,
    offset,
    id: extra?.id ?? `${epoch}-${offset}`,
    type: extra?.type ?? 'message',
    data,
    time: typeof time === 'number' ? new Date(time).toISOString() : time,
  };
  if (extra?.meta !== undefined) p.meta = extra.meta;
  if (extra?.key !== undefined) p.key = extra.key;
  if (extra?.op !== undefined) p.op = extra.op;
  return p;
}
