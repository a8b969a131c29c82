/**
 * Errors: the hub's error object as an exception (`HeraldError`, also used for the client's own
 * failures), a listener's exception (`ListenerError`), and the WebSocket close codes of protocol §9.
 */

import type { ErrorBody } from './types.js';

/** An error from the hub (a protocol error object) or from the client itself. */
export class HeraldError extends Error {
  /**
   * Protocol error code (§8), or a client-side code: 0 timeout, 1 disconnected, 2 closed, 3
   * offline (circuit breaker open, or a final close).
   */
  readonly code: number;
  /** Protocol error name, or `timeout` / `disconnected` / `closed` / `offline`. */
  readonly errorName: string;
  readonly channel?: string;
  constructor(body: ErrorBody) {
    super(`${body.code} (${body.name}): ${body.message}`);
    this.name = 'HeraldError';
    this.code = body.code;
    this.errorName = body.name;
    this.channel = body.channel;
  }
}

/** Close codes 4000–4999 and their names (protocol §9). */
export const CLOSE_CODES: Record<number, string> = {
  4000: 'shutdown',
  4001: 'slow_consumer',
  4002: 'heartbeat_timeout',
  4003: 'auth_timeout',
  4004: 'token_expired',
  4005: 'too_many_connections',
  4006: 'rate_limited',
  4007: 'engine_unavailable',
  4500: 'unauthorized',
  4501: 'forbidden',
  4502: 'bad_request',
  4503: 'kicked',
  4504: 'message_too_large',
};

/** Whether a close code means "do not reconnect" (4500–4999). */
export function isFinalCloseCode(code: number): boolean {
  return code >= 4500 && code <= 4999;
}

/** An exception thrown by an application's event listener, reported on the client's `error` event. */
export class ListenerError extends Error {
  /** The event whose listener threw (`publication`, `state`, ...). */
  readonly event: string;
  /** What the listener threw. */
  readonly cause: unknown;
  constructor(event: string, cause: unknown, where = '') {
    super(`a '${event}' listener${where} threw: ${cause instanceof Error ? cause.message : String(cause)}`);
    this.name = 'ListenerError';
    this.event = event;
    this.cause = cause;
  }
}
