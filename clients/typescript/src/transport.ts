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

/** One line of a frame as a message; undefined when it is not JSON. */
export function decodeMessage(line: string): ServerMessage | undefined {
  try {
    return JSON.parse(line);
  } catch {
    return undefined;
  }
}
