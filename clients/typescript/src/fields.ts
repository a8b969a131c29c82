/**
 * The fields of commands (protocol §2), shared by the WebSocket client and the HTTP API: only
 * documented fields are sent, and none that is undefined (the hub rejects unknown fields).
 */

import type { PublishOptions } from './types.js';

/** The publish fields of protocol §2 (nothing else is sent: the hub rejects unknown fields). */
export function publishFields(o: Omit<PublishOptions, 'timeoutMs'>): Record<string, unknown> {
  return { type: o.type, key: o.key, op: o.op, idempotency_key: o.idempotency_key, correlation_id: o.correlation_id };
}

/** A copy of `o` without its undefined fields. */
export function stripUndefined(o: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(o)) if (v !== undefined) out[k] = v;
  return out;
}
