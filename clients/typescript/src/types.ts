/**
 * Wire types of the protocol (docs/protocol.md §3–§6) and the public types of the client: connection
 * state, options, subscription events. Types only: this module emits no code and imports nothing.
 */

// ---------------------------------------------------------------------------------------------
// Wire types (docs/protocol.md §3–§6)
// ---------------------------------------------------------------------------------------------

/** A place in a channel's stream. */
export interface Position {
  epoch: string;
  offset: number;
}

/** Keyed channel operation. */
export type Op = 'upsert' | 'merge' | 'delete';

/** A publication (protocol §4). */
export interface Publication<T = unknown> {
  channel: string;
  epoch: string;
  offset: number;
  id: string;
  type: string;
  data: T;
  time: string;
  meta?: {
    user?: string;
    source?: string;
    correlation_id?: string;
    idempotency_key?: string;
    [k: string]: unknown;
  };
  key?: string;
  op?: Op;
  /**
   * A truncated preview (subscribe `preview`, protocol §18): `data` is a string of the first
   * bytes of the payload's JSON text, which was this many bytes long. Read the whole one with
   * `history({ since: { epoch, offset: offset - 1 }, limit: 1 })`.
   */
  truncated?: number;
}

/** Part of a large publication arrived (protocol §18); the publication follows once whole. */
export interface ProgressEvent {
  channel: string;
  offset: number;
  /** Bytes of the publication received so far. */
  received: number;
  /** Its size in bytes. */
  bytes: number;
}

/** One record of a keyed channel's state. */
export interface KeyedRecord<T = unknown> {
  key: string;
  value: T;
  offset: number;
}

export interface ConnectResult {
  client: string;
  user: string;
  time: string;
  ping_interval_ms: number;
  pong_timeout_ms: number;
  clients: number;
  node: string;
  version: number;
  expires_at?: number;
}

export type NotRecoveredReason = 'epoch_changed' | 'history_trimmed' | 'too_many';

export interface SubscribeResult {
  channel: string;
  epoch: string;
  offset: number;
  keyed: boolean;
  recovered?: boolean;
  reason?: NotRecoveredReason;
  publications?: Publication[];
  snapshot?: KeyedRecord[];
  /** Protocol v2: the number this subscription's compact publications carry (§17). */
  n?: number;
}

export interface PublishResult {
  channel: string;
  epoch: string;
  offset: number;
  id: string;
  time: string;
  duplicate?: boolean;
}

export interface HistoryResult {
  channel: string;
  epoch: string;
  offset: number;
  earliest: number;
  publications: Publication[];
  reason?: NotRecoveredReason;
}

export interface StateResult {
  channel: string;
  epoch: string;
  offset: number;
  records: KeyedRecord[];
}

/** What a keyed write did to a view's rows (protocol §14). */
export type ViewOperation = 'insert' | 'update' | 'delete';

/** Why a record left a view: it no longer matches (`left`) or it was deleted. */
export type LeaveReason = 'left' | 'deleted';

/**
 * One view event as the hub sends it: the `view` push without `push`, and the elements of a
 * view subscribe reply's `events`.
 */
export interface ViewEventMessage<T = unknown> {
  sub: string;
  operation: ViewOperation;
  key: string;
  /** The record after the write (insert and update). */
  record?: T;
  /** Why it left (delete). */
  reason?: LeaveReason;
  /** The write: its `epoch` and `offset` are the view's position; `data` is what was published. */
  pub: Publication;
}

/** Reply to a view `subscribe` (protocol §14). */
export interface ViewSubscribeResult<T = unknown> {
  /** The subscription's name on the connection. */
  sub: string;
  channel: string;
  epoch: string;
  offset: number;
  view?: string;
  /** The filter in force (the view's, the client's and the token's, ANDed), as text. */
  filter?: string;
  key?: string;
  /** With `since`: whether `events` replays every write after it. */
  recovered?: boolean;
  reason?: NotRecoveredReason;
  /** The matching records at `offset`, sorted by key (sent unless recovered). */
  initial?: KeyedRecord<T>[];
  /** When recovered: the view events after `since`, oldest first. */
  events?: ViewEventMessage<T>[];
}

/** The error object of the protocol (§8). */
export interface ErrorBody {
  code: number;
  name: string;
  message: string;
  channel?: string;
  request_id?: number;
}

// ---------------------------------------------------------------------------------------------
// Connection state
// ---------------------------------------------------------------------------------------------

export type ConnectionState =
  | { state: 'connecting'; attempt: number }
  | {
      state: 'connected';
      client: string;
      node: string;
      clients: number;
      /** The transport carrying the connection (`sse` after a fallback, protocol §13). */
      transport: 'websocket' | 'sse';
    }
  | {
      state: 'reconnecting';
      /** Retry number since the last established connection, 1-based (the backoff exponent). */
      attempt: number;
      /** Consecutive attempts that never got a `connect` reply, so far. */
      failures: number;
      /** Failures that open the circuit breaker. */
      maxAttempts: number;
      /** Milliseconds from the moment of this state to the next try (0 while trying). */
      nextTryMs: number;
      /** `Date.now()` of the next try. */
      nextTryAt: number;
      /** The close code or error that caused the drop, when known. */
      code?: number;
      reason?: string;
    }
  | { state: 'resyncing'; pending: number }
  | {
      state: 'offline';
      /** `not_started`, `closed` (by the app), `circuit_open`, or the server's close/error name. */
      reason: string;
      code?: number;
      /** With `circuit_open`: `Date.now()` of the next probe (one per backoff cap, 30 s by default). */
      nextTryAt?: number;
    };

export type ConnectionStateName = ConnectionState['state'];

// ---------------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------------

/** Returns a token; called before every connection attempt and before every refresh. */
export type TokenProvider = () => string | undefined | Promise<string | undefined>;

export interface SubscribeOptions {
  /** Ask for the keyed channel's records with the subscribe reply. */
  snapshot?: boolean;
  /** Resume from this position instead of "now". */
  since?: Position;
  /**
   * On a presence namespace (protocol §15): follow the channel's members (`true`, in
   * `sub.presence.members`) or only their counts (`"counts"`).
   */
  presence?: boolean | 'counts';
  /** This connection's presence `info` (any JSON), kept and sent again on every resubscribe. */
  info?: unknown;
  /**
   * Publications whose `data` is longer than this many bytes come as a truncated preview
   * (`truncated` set, `data` a string of the first bytes): protocol §18.
   */
  preview?: number;
}

/**
 * What a live view selects (protocol §14): a spec `view` (or `subscription`), an ad-hoc `filter`
 * (namespaces with `filters = true`), one `key`, or any of them together (ANDed, with the
 * token's filter). `sub` names the subscription on the connection (default `CHANNEL#VIEW`,
 * `CHANNEL#filter` or `CHANNEL#key:KEY`); several views of one channel need different names.
 */
export interface ViewOptions {
  view?: string;
  filter?: string;
  key?: string;
  sub?: string;
}

export interface PublishOptions {
  type?: string;
  key?: string;
  op?: Op;
  idempotency_key?: string;
  correlation_id?: string;
  timeoutMs?: number;
}

export interface HistoryOptions {
  limit?: number;
  since?: Position;
  before?: number;
  timeoutMs?: number;
}

// ---------------------------------------------------------------------------------------------
// Subscription events and status
// ---------------------------------------------------------------------------------------------

export interface SubscribedEvent {
  channel: string;
  position: Position;
  keyed: boolean;
  /** True when this was a resume (after a reconnect or a gap). */
  resumed: boolean;
  /** For resumes: whether every missed publication was recovered. */
  recovered?: boolean;
  snapshot?: KeyedRecord[];
}

export interface ResyncEvent {
  channel: string;
  /** Why the stream could not be resumed (`epoch_changed`, `history_trimmed`, `too_many`). */
  reason: NotRecoveredReason | string;
  /** The last position delivered before the resync: what follows it up to `position` was skipped. */
  from: Position;
  /** The position the subscription continues from. */
  position: Position;
  /**
   * How many publications were skipped (`position.offset - from.offset`) when the epoch is the
   * same; absent when the epoch changed (the old stream is gone, its length is unknown).
   */
  skipped?: number;
  /** On keyed channels: every record at `position`; replace your state with it. */
  snapshot?: KeyedRecord[];
}

/** A change of a live view's rows (`insert`, `update` and `delete` events). */
export interface ViewChange<T = unknown> {
  operation: ViewOperation;
  key: string;
  /** The record after the write (insert and update). */
  record?: T;
  /** The row before the write, if the view held it. */
  previous?: T;
  /** Why it left (delete). */
  reason?: LeaveReason;
  /** The publication that made the change (`data` is the patch of a merge). */
  publication: Publication;
}

/** A live view's subscribe reply was applied. */
export interface ViewSubscribedEvent {
  channel: string;
  sub: string;
  /** The view's position after the reply. */
  position: Position;
  /** The filter in force, as the hub states it. */
  filter?: string;
  /** True when this was a resume (after a reconnect or a resubscribe push). */
  resumed: boolean;
  /**
   * For resumes: whether the missed events were replayed (true) or the rows were replaced with
   * fresh ones (false, with `reason`).
   */
  recovered?: boolean;
  reason?: NotRecoveredReason | string;
}

// ---------------------------------------------------------------------------------------------
// Presence and volatile events (docs/protocol.md §15, §16)
// ---------------------------------------------------------------------------------------------

/** One member of a channel: a connection subscribed to it (a tab, a device). */
export interface Member<I = unknown> {
  /** `USER/ID`: the id the client joined with (its per-tab id), or its connection id. */
  member: string;
  /** The connection's user (empty when anonymous); a user with several tabs has several members. */
  user: string;
  /** The connection id (`NODE-N`), when the hub said it (member lists do, pushes may not). */
  client?: string;
  /** The node holding the connection, when the hub said it. */
  node?: string;
  /** What the member says about itself (`info`, then `setPresence`). */
  info?: I;
}

/** How many members a channel has, and how many distinct users they are. */
export interface PresenceCounts {
  members: number;
  users: number;
}

/** A `join`, `update` or `leave` of one member. */
export interface PresenceChange<I = unknown> {
  event: 'join' | 'update' | 'leave';
  /** The member after the change (for `leave`: as it was). */
  member: Member<I>;
  /** For `update`: the member before. */
  previous?: Member<I>;
  /** The presence position of the push (absent when a fresh member list made the change). */
  position?: Position;
}

/** The `presence_list` push (protocol §15), without `push`. */
export interface PresenceListMessage {
  channel: string;
  epoch: string;
  offset: number;
  /** On a resume: true when the missed changes follow as pushes; false with a fresh list. */
  recovered?: boolean;
  reason?: NotRecoveredReason | string;
  members?: Member[];
  /** More parts of this list follow (a large list comes in parts; apply it after the last). */
  more?: boolean;
}

/** The `presence` push: one change of the member list. */
export interface PresenceMessage {
  channel: string;
  event: 'join' | 'update' | 'leave';
  member: string;
  user: string;
  client?: string;
  node?: string;
  info?: unknown;
  epoch: string;
  offset: number;
}

/** The `presence_stats` push (counts mode). */
export interface PresenceStatsMessage {
  channel: string;
  members: number;
  users: number;
  epoch: string;
  offset: number;
}

/** A volatile event (protocol §16): delivered to the current subscribers, kept nowhere. */
export interface VolatileEvent<T = unknown> {
  channel: string;
  type: string;
  data: T;
  /** The sender's user. */
  user: string;
  /** The sender's connection id. */
  client: string;
}

export interface UnsubscribedEvent {
  channel: string;
  code?: number;
  reason: string;
}


/**
 * `pending`: waiting for a connection the client is trying to make; `subscribing`: the subscribe
 * was sent; `subscribed`: publications flow; `offline`: the client is offline (circuit breaker
 * open, a final close, `close()`), the subscription resumes when it connects again;
 * `unsubscribed`: ended for good.
 */
export type SubscriptionStatus = 'pending' | 'subscribing' | 'subscribed' | 'offline' | 'unsubscribed';
