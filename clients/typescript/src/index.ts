/**
 * @herald/client: browser and Node client for the Herald real-time event hub.
 *
 * Wire protocol: docs/protocol.md in the Herald repository (v1). Zero runtime dependencies; uses the
 * global `WebSocket` (browsers, Node >= 22, or Node 20 with `--experimental-websocket`) unless one
 * is passed in the options.
 *
 * What it guarantees to the application:
 * - a visible connection state (`connecting`, `connected`, `reconnecting`, `resyncing`, `offline`);
 * - reconnection with exponential backoff and full jitter (1 s doubling to a 30 s cap), the policy
 *   of docs/protocol.md §9 shared with the Rust client: the retry counter resets once a connection
 *   got its `connect` reply and every resubscribe was answered; only attempts that never got a
 *   `connect` reply are failures; after 10 consecutive failures the circuit breaker opens
 *   (`offline`, requests fail at once, a probe once per 30 s); a probe that connects,
 *   `reconnect()` or the browser's `online` event closes it;
 * - every subscription resumes from the last delivered position after every reconnect, and
 *   publications reach the application in offset order, exactly once; when a resume is impossible
 *   the subscription emits `resync` (with a fresh snapshot on keyed channels) instead of pretending
 *   continuity.
 *
 * Layout (each module imports only modules above it in this list; none imports the client):
 * - `types.ts`: wire types of the protocol and the public types (connection state, options,
 *   subscription events); types only.
 * - `errors.ts`: `HeraldError`, `ListenerError`, the close codes of protocol §9.
 * - `emitter.ts`: the typed event emitter under the client and each subscription.
 * - `merge-patch.ts`: JSON merge patch (RFC 7386) for keyed `merge` operations.
 * - `fields.ts`: the documented command fields, shared by the WebSocket client and the HTTP API.
 * - `transport.ts`: the WebSocket seam (the socket interface, finding an implementation, the
 *   default URL) and frame encoding/splitting.
 * - `sse.ts`: the SSE fallback behind the same seam (protocol §13, multiplexed SSE): an SSE
 *   session as a socket, and the per-attempt socket that falls back to it and probes WebSocket.
 * - `backoff.ts`: the reconnect policy: full-jitter backoff and the circuit breaker's counts.
 * - `presence.ts`: presence (protocol §15): one subscription's members or counts and their
 *   delivery rules, the per-tab member id, and presence as a store; it reaches its subscription
 *   through the narrow `PresenceHost` / `PresenceSource`.
 * - `subscription.ts`: one subscription's state and delivery rules (resume, resync, duplicates,
 *   gaps, keyed records); it reaches the client through the narrow `SubscriptionHost`.
 * - `view.ts`: live views (protocol §14): one view's rows, position and delivery rules, and a
 *   view as a store; it reaches the client through the narrow `ViewHost` / `ViewSource`.
 * - `shared.ts`: many tabs, one connection (`share: true`): the Web Locks leader election, the
 *   virtual socket over BroadcastChannel, and the leader multiplexing the tabs' subscriptions on
 *   one real client, reached through the narrow `ShareLeaderClient`.
 * - `client.ts`: `HeraldClient`, the connection state machine (connect, reconnect, liveness,
 *   refresh, request/reply correlation, resubscribing).
 * - `http.ts`: `HeraldApi`, the hub's HTTP API.
 * - `index.ts`: this file, the public API (re-exports only).
 * - `store.ts`, `react.ts`, `svelte.ts`: framework adapters over the public API.
 *
 * The hub serves a one-file bundle of these modules as `/static/herald.js`
 * (`scripts/copy-web.mjs`, run by `npm run build`).
 */

export type {
  ConnectionState,
  ConnectionStateName,
  ConnectResult,
  ErrorBody,
  HistoryOptions,
  HistoryResult,
  KeyedRecord,
  LeaveReason,
  Member,
  NotRecoveredReason,
  Op,
  Position,
  PresenceChange,
  PresenceCounts,
  PresenceListMessage,
  PresenceMessage,
  PresenceStatsMessage,
  Publication,
  PublishOptions,
  PublishResult,
  ResyncEvent,
  StateResult,
  SubscribedEvent,
  SubscribeOptions,
  SubscribeResult,
  SubscriptionStatus,
  TokenProvider,
  UnsubscribedEvent,
  ViewChange,
  ViewEventMessage,
  ViewOperation,
  ViewOptions,
  ViewSubscribedEvent,
  ViewSubscribeResult,
  VolatileEvent,
  ProgressEvent,
} from './types.js';
export { CLOSE_CODES, HeraldError, isFinalCloseCode, ListenerError } from './errors.js';
export { Emitter } from './emitter.js';
export { mergePatch } from './merge-patch.js';
export type { WebSocketConstructor, WebSocketLike } from './transport.js';
export { SseSocket, sseUrl, type ProbeOptions, type Transport } from './sse.js';
export type { BackoffOptions } from './backoff.js';
export {
  Presence,
  presenceStore,
  tabMemberId,
  type PresenceEvents,
  type PresenceFollow,
  type PresenceHandle,
  type PresenceSource,
  type PresenceState,
  type PresenceStore,
} from './presence.js';
export { Subscription, type SubscriptionEvents } from './subscription.js';
export { LiveView, viewStore, type LiveViewEvents, type ViewSource, type ViewState, type ViewStore } from './view.js';
export { defaultShareName } from './shared.js';
export { HeraldClient, type ClientEvents, type ClientOptions } from './client.js';
export { HeraldApi, type ApiPublishOptions, type HubInfo, type NodeInfo, type TokenRequest } from './http.js';
