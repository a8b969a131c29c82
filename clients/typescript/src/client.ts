/**
 * The connection state machine: connect, reconnect with backoff, ping/pong and liveness, token
 * refresh, request/reply correlation, and the connection-level side of subscriptions and live
 * views (subscribe, resubscribe after every reconnect, `resyncing` until every one was answered),
 * and the routing of presence and volatile pushes (protocol §15, §16) to their subscription.
 */

import { ReconnectPolicy, type BackoffOptions } from './backoff.js';
import { Emitter } from './emitter.js';
import { CLOSE_CODES, HeraldError, isFinalCloseCode, ListenerError } from './errors.js';
import { publishFields } from './fields.js';
import { tabMemberId } from './presence.js';
import { optionsConflict, Subscription, type SubscriptionHost } from './subscription.js';
import {
  decodeMessage,
  defaultUrl,
  encodeCommand,
  expandCompact,
  type CompactPublication,
  encodeMessage,
  frameLines,
  resolveWebSocket,
  type ChunkMessage,
  type ServerMessage,
  type WebSocketConstructor,
  type WebSocketLike,
} from './transport.js';
import { LiveView, viewOptionsConflict, viewName, type ViewHost } from './view.js';
import { defaultShareName, sharedSocket } from './shared.js';
import { FallbackSocket, type ProbeOptions, type Transport } from './sse.js';
import type {
  ConnectionState,
  ConnectionStateName,
  ConnectResult,
  ErrorBody,
  HistoryOptions,
  HistoryResult,
  PublishOptions,
  PresenceListMessage,
  PresenceMessage,
  PresenceStatsMessage,
  PublishResult,
  StateResult,
  SubscribeOptions,
  SubscribeResult,
  TokenProvider,
  ViewEventMessage,
  ViewOptions,
  ViewSubscribeResult,
  VolatileEvent,
} from './types.js';

export interface ClientOptions {
  /**
   * WebSocket URL(s) of the hub, e.g. `ws://127.0.0.1:7700/ws`. With several, the client moves to
   * the next after a failure. In a browser it defaults to `ws` beside the page (`/ws` for `/`,
   * `/live/ws` for `/live/`).
   */
  url?: string | string[];
  /** A static token, or a provider called before each attempt and each in-band refresh. */
  token?: string | TokenProvider;
  /** Client name sent in `connect`. */
  name?: string;
  backoff?: BackoffOptions;
  /** Timeout for publish/history/state/ping requests (default 10000 ms). */
  requestTimeoutMs?: number;
  /** Timeout for the socket to open and `connect` to be answered (default 10000 ms). */
  connectTimeoutMs?: number;
  /**
   * Silence longer than the server's `ping_interval_ms` plus this margin marks the connection
   * dead (default max(3000, ping_interval_ms / 2)).
   */
  livenessMarginMs?: number;
  /** Refresh the token this long before it expires (default min(30000, half the remaining)). */
  refreshBeforeMs?: number;
  /** The WebSocket implementation (default: the global one). */
  WebSocket?: WebSocketConstructor;
  /**
   * The protocol version to ask for at `connect` (default 2: live publications come compact,
   * protocol §17; 1: every publication is a full JSON object). The application sees the same
   * publications either way.
   */
  protocol?: 1 | 2;
  /** React to the browser's `online` and `visibilitychange` events (default true). */
  browserEvents?: boolean;
  /**
   * The member id presence subscriptions join with (protocol §15; 1 to 128 bytes). Default: a
   * random id kept in `sessionStorage` (one per tab, so a reload or reconnect rejoins as the same
   * member), else one per client instance. Give one per client when a tab has several clients.
   */
  member?: string;
  /**
   * Share one connection between the tabs of this browser (shared.ts, README "Many tabs, one
   * connection"): a leader tab elected with the Web Locks API holds the WebSocket, the others
   * relay over BroadcastChannel; the API stays the same. Without those APIs the client connects
   * on its own. Live views and presence are not shared (refused with 107). Default false.
   */
  share?: boolean;
  /** Which tabs share (default: the URLs and the static token's hash, or `provider` / `anonymous`). */
  shareName?: string;
  /**
   * The transports each attempt tries, in order (default `['websocket', 'sse']`; with a custom
   * `WebSocket` option, `['websocket']`). A WebSocket refused before it opens (a proxy that blocks
   * upgrades) gives way to the multiplexed SSE transport on the same hub (`ws://h/ws` →
   * `http://h/sse`, protocol §13); while on SSE the client probes WebSocket in the background and
   * reconnects on it once an upgrade succeeds, resuming as after any reconnect.
   */
  transports?: Transport[];
  /** Intervals of the WebSocket probes while on SSE (default 2000 ms doubling up to 30000 ms). */
  sseProbe?: ProbeOptions;
}

export interface ClientEvents {
  state: ConnectionState;
  connected: ConnectResult;
  disconnected: { code: number; reason: string };
  /** The in-band token refresh was accepted; `expires_at` is the new expiry (Unix seconds). */
  refreshed: { expires_at?: number };
  error: HeraldError | Error;
}

interface Pending {
  /** Called synchronously when the reply is read, before the next message of the same frame. */
  resolve: (v: unknown) => void;
  reject: (e: HeraldError) => void;
  timer: ReturnType<typeof setTimeout> | undefined;
  frame: string;
  sent: boolean;
  /** Connection generation the command was sent on. */
  gen: number;
}

const TRANSIENT_SUBSCRIBE_ERRORS = new Set([100, 110, 113]);
/** A view subscribe may also meet 117: the stream was lost during the subscribe. */
const TRANSIENT_VIEW_ERRORS = new Set([...TRANSIENT_SUBSCRIBE_ERRORS, 117]);

/** A `view` push or an `unsubscribe` push naming a view (fields beyond `ServerMessage`). */
type ViewPush = ServerMessage & Partial<ViewEventMessage> & { sub?: string };

/** A `presence_list`, `presence`, `presence_stats` or `volatile` push. */
type PresencePush = ServerMessage & PresenceListMessage & PresenceMessage & PresenceStatsMessage & VolatileEvent;

/**
 * A connection to a Herald hub that survives network failures.
 *
 * ```ts
 * const client = new HeraldClient({ url: 'ws://127.0.0.1:7700/ws' });
 * client.on('state', (s) => console.log(s.state));
 * const sub = client.subscribe('demo:board', { snapshot: true });
 * sub.on('publication', (p) => console.log(p.offset, p.data));
 * client.connect();
 * ```
 */
export class HeraldClient extends Emitter<ClientEvents> {
  private readonly opts: ClientOptions;
  private readonly urls: string[];
  private urlIndex = 0;
  private readonly WS: WebSocketConstructor;
  /** The socket is a relay to the leader tab (`share`), whose own client picks the transport. */
  private readonly viaLeader: boolean;
  private ws?: WebSocketLike;
  private gen = 0;
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private readonly outbox: number[] = [];
  private readonly subs = new Map<string, Subscription>();
  /** Live views by their name on the connection (`sub`). */
  private readonly views = new Map<string, LiveView<unknown>>();
  /** Protocol v2: the subscription of each number the current connection's subscribe replies gave. */
  private readonly numbers = new Map<number, Subscription>();
  /** The number each subscription has in `numbers` (to drop it when a resubscribe replaces it). */
  private readonly numberOf = new WeakMap<Subscription, number>();
  private _state: ConnectionState = { state: 'offline', reason: 'not_started' };
  private started = false;
  private everConnected = false;
  /** The backoff and circuit breaker counters, and the decisions taken from them. */
  private readonly policy: ReconnectPolicy;
  /** What each subscription may ask of this client (the seam of subscription.ts). */
  private readonly subHost: SubscriptionHost = {
    leave: (sub) => this.leave(sub),
    resubscribe: (sub, needUnsubscribe) => this.resubscribe(sub, needUnsubscribe),
    listenerFailed: (err) => this.reportListenerError(err, false),
    memberId: () => this.memberId,
    updatePresence: (sub, info) => this.updatePresence(sub, info),
  };
  /** What each live view may ask of this client (the seam of view.ts). */
  private readonly viewHost: ViewHost = {
    leaveView: (view) => this.leaveView(view),
    resubscribeView: (view, needUnsubscribe) => this.resubscribeView(view, needUnsubscribe),
    listenerFailed: (err) => this.reportListenerError(err, false),
  };
  private retryTimer?: ReturnType<typeof setTimeout>;
  private connectTimer?: ReturnType<typeof setTimeout>;
  private livenessTimer?: ReturnType<typeof setTimeout>;
  private refreshTimer?: ReturnType<typeof setTimeout>;
  private lastRecv = 0;
  private connectedAt = 0;
  private pingIntervalMs = 25000;
  private resyncPending = new Set<string>();
  /** Views (by name) whose resubscribe is not answered yet. */
  private resyncViews = new Set<string>();
  private disconnectPush?: { code: number; reason: string; reconnect: boolean };
  private readonly unbindBrowser: Array<() => void> = [];
  /** The last `connect` reply. */
  info?: ConnectResult;
  /** The member id presence subscriptions join with (`USER/` + it on the hub; see `member`). */
  readonly memberId: string;

  constructor(options: ClientOptions = {}) {
    super();
    this.opts = options;
    const u = options.url ?? defaultUrl();
    this.urls = Array.isArray(u) ? [...u] : [u];
    if (this.urls.length === 0) throw new Error('HeraldClient: empty url list');
    const shared = options.share
      ? sharedSocket(options.shareName ?? defaultShareName(this.urls, options.token), () => new HeraldClient({ ...options, share: false }))
      : undefined;
    this.WS = shared ?? resolveWebSocket(options.WebSocket);
    this.viaLeader = shared !== undefined;
    this.policy = new ReconnectPolicy(options.backoff);
    this.memberId = options.member ?? tabMemberId();
  }

  /** The current connection state. */
  get state(): ConnectionState {
    return this._state;
  }

  /** The URL currently used (or to be used next). */
  get url(): string {
    return this.urls[this.urlIndex];
  }

  /** The transport of the current socket once it opened (`websocket` or `sse`), else undefined. */
  get transport(): Transport | undefined {
    const ws = this.ws;
    if (ws instanceof FallbackSocket) return ws.transport;
    return ws && ws.readyState === 1 ? 'websocket' : undefined;
  }

  /** A new socket for an attempt: a plain WebSocket, or one that can fall back to SSE (sse.ts). */
  private newSocket(): WebSocketLike {
    const transports = this.opts.transports ?? (this.opts.WebSocket ? ['websocket'] : ['websocket', 'sse']);
    if (this.viaLeader || !transports.includes('sse')) return new this.WS(this.url);
    const sock: FallbackSocket = new FallbackSocket(this.url, {
      WS: this.WS,
      transports,
      probe: this.opts.sseProbe,
      onWebSocketBack: () => {
        if (this.ws === sock && this.started) this.reconnect();
      },
    });
    return sock;
  }

  /**
   * Starts connecting (and keeps the connection up until `close()`). The promise resolves at the
   * first `connected` state and rejects if the client goes offline first; ignoring it is fine.
   */
  connect(): Promise<void> {
    const p = this.waitFor('connected', 0).then(() => undefined);
    p.catch(() => {});
    if (!this.started) {
      this.started = true;
      this.bindBrowserEvents();
      this.policy.reset();
      this.setState({ state: 'connecting', attempt: 1 });
      this.openSocket();
    }
    return p;
  }

  /**
   * Connects again now: closes the circuit breaker after it opened (or after a final close), and
   * cuts short any backoff wait.
   */
  reconnect(): void {
    if (!this.started) {
      this.connect();
      return;
    }
    this.clearTimer('retryTimer');
    if (this.ws) this.dropSocket(1000, 'reconnect requested');
    this.policy.reset();
    this.setState(this.everConnected ? this.reconnectingState(0, 0) : { state: 'connecting', attempt: 1 });
    this.openSocket();
  }

  /** Closes the connection for good; pending requests fail with `closed`. */
  close(): void {
    this.started = false;
    this.clearTimer('retryTimer');
    for (const off of this.unbindBrowser.splice(0)) off();
    if (this.ws) this.dropSocket(1000, 'client closed');
    this.failPending(true, { code: 2, name: 'closed', message: 'client closed' });
    this.setState({ state: 'offline', reason: 'closed' });
  }

  /**
   * Resolves when the state becomes `name` (immediately if it already is); rejects on timeout
   * (`timeoutMs` > 0) or, when waiting for `connected`, if the client goes offline.
   */
  waitFor(name: ConnectionStateName, timeoutMs = 10000): Promise<ConnectionState> {
    if (this._state.state === name) return Promise.resolve(this._state);
    return new Promise((resolve, reject) => {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const off = this.on('state', (s) => {
        if (s.state === name) {
          off();
          if (timer) clearTimeout(timer);
          resolve(s);
        } else if (s.state === 'offline' && name !== 'offline') {
          off();
          if (timer) clearTimeout(timer);
          reject(new HeraldError({ code: s.code ?? 2, name: s.reason, message: `client went offline: ${s.reason}` }));
        }
      });
      if (timeoutMs > 0) {
        timer = setTimeout(() => {
          off();
          reject(new HeraldError({ code: 0, name: 'timeout', message: `state ${name} not reached in ${timeoutMs} ms` }));
        }, timeoutMs);
      }
    });
  }

  /**
   * Subscribes to a channel. Subscribing to a channel that is already subscribed returns the same
   * subscription (reference counted: the channel is left when every handle unsubscribed). Options
   * given again must equal the existing subscription's (omitted ones are taken from it); other
   * options throw `HeraldError` 105 `already_subscribed` rather than being silently ignored.
   */
  subscribe(channel: string, options: SubscribeOptions = {}): Subscription {
    const existing = this.subs.get(channel);
    if (existing && existing.status !== 'unsubscribed') {
      const conflict = optionsConflict(existing.options, options);
      if (conflict) {
        throw new HeraldError({
          code: 105,
          name: 'already_subscribed',
          message: `${channel} is already subscribed with ${conflict}: pass the same options, or unsubscribe every handle first`,
          channel,
        });
      }
      existing.refs += 1;
      return existing;
    }
    const sub = new Subscription(this.subHost, channel, options);
    this.subs.set(channel, sub);
    if (this.isLive()) this.sendSubscribe(sub);
    return sub;
  }

  /**
   * Subscribes to a live view of a keyed channel (protocol §14): `view.rows` holds the records
   * that match, kept exact across reconnects, with `insert` / `update` / `delete` events.
   *
   * ```ts
   * const view = client.subscribeView<Task>('task:board-1', { view: 'ActiveTasks' });
   * await view.ready;
   * ```
   *
   * A view of the same name (`sub`, or the default from the options) that is already subscribed
   * is returned again (reference counted) when its options are equal; other options throw
   * `HeraldError` 105. Refusals by the hub (118 `invalid_filter`, 107 for a `by id` view without
   * `key`, 116 on a namespace that is not keyed) reject `ready` and are emitted as `error`.
   */
  subscribeView<T = unknown>(channel: string, options: ViewOptions): LiveView<T> {
    if (options.view === undefined && options.filter === undefined && options.key === undefined && options.sub === undefined) {
      throw new TypeError('subscribeView: give `view`, `filter`, `key` or `sub` (use subscribe() for a plain channel)');
    }
    const name = viewName(channel, options);
    const existing = this.views.get(name);
    if (existing && existing.status !== 'unsubscribed') {
      const conflict = existing.channel !== channel ? `channel ${existing.channel}` : viewOptionsConflict(existing.options, options);
      if (conflict) {
        throw new HeraldError({
          code: 105,
          name: 'already_subscribed',
          message: `view ${name} is already subscribed with ${conflict}: give another \`sub\`, or unsubscribe every handle first`,
          channel,
        });
      }
      existing.refs += 1;
      return existing as LiveView<T>;
    }
    const view = new LiveView<T>(this.viewHost, channel, options);
    this.views.set(name, view as LiveView<unknown>);
    if (this.isLive()) this.sendViewSubscribe(view as LiveView<unknown>);
    return view;
  }

  /** The live view of this name (`sub`), if any. */
  getView(name: string): LiveView<unknown> | undefined {
    return this.views.get(name);
  }

  /** The subscription of a channel, if any. */
  getSubscription(channel: string): Subscription | undefined {
    return this.subs.get(channel);
  }

  /** Publishes over the WebSocket. */
  publish(channel: string, data: unknown, options: PublishOptions = {}): Promise<PublishResult> {
    return this.request('publish', { channel, data, ...publishFields(options) }, options.timeoutMs) as Promise<PublishResult>;
  }

  /**
   * Sets this connection's presence `info` on a subscribed channel (see
   * `Subscription.setPresence`); rejects with 108 `not_subscribed` when it is not subscribed.
   */
  setPresence(channel: string, info: unknown): Promise<void> {
    const sub = this.subs.get(channel);
    if (!sub || sub.status === 'unsubscribed') {
      return Promise.reject(
        new HeraldError({ code: 108, name: 'not_subscribed', message: `${channel} is not subscribed: subscribe with presence first`, channel }),
      );
    }
    return sub.setPresence(info);
  }

  /**
   * Sends a volatile event (protocol §16) to the channel's current subscribers: no offset, no
   * history, no replay (cursors, typing). Needs the right to publish; refusals are `HeraldError`
   * 110 `rate_limited` (above `volatile_per_second`), 111 (data above `max_message_bytes`), 103
   * (not allowed, or volatile events off on the namespace).
   */
  volatile(channel: string, type: string, data: unknown, timeoutMs?: number): Promise<void> {
    return this.request('volatile', { channel, type, data: data ?? null }, timeoutMs).then(() => undefined);
  }

  /** Reads a channel's history. */
  history(channel: string, options: HistoryOptions = {}): Promise<HistoryResult> {
    const { limit, since, before, timeoutMs } = options;
    const fields = { channel, limit, since: since && { epoch: since.epoch, offset: since.offset }, before };
    return this.request('history', fields, timeoutMs) as Promise<HistoryResult>;
  }

  /** Reads a keyed channel's records. */
  getState(channel: string, timeoutMs?: number): Promise<StateResult> {
    return this.request('state', { channel }, timeoutMs) as Promise<StateResult>;
  }

  /** Round trip to the hub. */
  ping(timeoutMs?: number): Promise<void> {
    return this.request('ping', {}, timeoutMs).then(() => undefined);
  }

  /**
   * Sends a command and resolves with its `result`. Commands made while not connected wait (up to
   * the timeout) for the connection. A command already sent when the connection drops fails with
   * `disconnected` (it may or may not have been processed: use `idempotency_key` for publishes).
   */
  request(cmd: string, fields: Record<string, unknown>, timeoutMs?: number): Promise<unknown> {
    return new Promise((resolve, reject) => this.command(cmd, fields, timeoutMs, resolve, reject));
  }

  /**
   * Sends a command; `onResult` / `onError` run synchronously when the reply is read (the
   * subscribe reply must be applied before the publications that follow it in the same frame).
   */
  private command(
    cmd: string,
    fields: Record<string, unknown>,
    timeoutMs: number | undefined,
    onResult: (r: unknown) => void,
    onError: (e: HeraldError) => void,
  ): void {
    const refusal = this.offlineError();
    if (refusal) {
      onError(refusal);
      return;
    }
    const id = this.nextId++;
    const frame = encodeCommand(id, cmd, fields);
    const ms = timeoutMs ?? this.opts.requestTimeoutMs ?? 10000;
    const timer = setTimeout(() => {
      this.pending.delete(id);
      const i = this.outbox.indexOf(id);
      if (i >= 0) this.outbox.splice(i, 1);
      onError(new HeraldError({ code: 0, name: 'timeout', message: `${cmd} timed out after ${ms} ms` }));
    }, ms);
    const p: Pending = { resolve: onResult, reject: onError, timer, frame, sent: false, gen: this.gen };
    this.pending.set(id, p);
    if (this.isLive()) this.sendPending(id, p);
    else this.outbox.push(id);
  }

  /** Why a request fails at once: the client is closed or offline (not merely not started). */
  private offlineError(): HeraldError | undefined {
    const s = this._state;
    if (s.state !== 'offline' || s.reason === 'not_started') return undefined;
    if (s.reason === 'closed') return new HeraldError({ code: 2, name: 'closed', message: 'client closed' });
    return new HeraldError({ code: 3, name: 'offline', message: `client is offline (${s.reason})` });
  }

  /** Reports a listener's exception on the `error` event (or the console). */
  private reportListenerError(err: ListenerError, fromErrorEvent: boolean): void {
    if (!fromErrorEvent && this.hasListeners('error')) this.emit('error', err);
    else console.error(err.message, err.cause);
  }

  /** A throwing `error` listener is reported on the console (no loop). */
  protected listenerFailed(err: ListenerError): void {
    this.reportListenerError(err, err.event === 'error');
  }

  // ------------------------------------------------------------------ internals: state

  private isLive(): boolean {
    return this.ws !== undefined && (this._state.state === 'connected' || this._state.state === 'resyncing');
  }

  private setState(s: ConnectionState): void {
    this._state = s;
    if (s.state === 'offline') {
      // No silent "pending forever": subscriptions say the client is offline.
      for (const sub of this.subs.values()) if (sub.status !== 'unsubscribed') sub._setStatus('offline');
      for (const view of this.views.values()) {
        if (view.status === 'unsubscribed') continue;
        view._setStatus('offline');
        // Offline for good (closed, refused, final close): a view still waiting will not be answered.
        if (!this.started) view._fail(new HeraldError({ code: s.reason === 'closed' ? 2 : 3, name: s.reason, message: `client went offline: ${s.reason}` }));
      }
    }
    this.emit('state', s);
  }

  /** The connection is up and every subscription was answered: `connected`, backoff reset. */
  private enterConnected(): void {
    const info = this.info!;
    this.policy.reset();
    this.setState({ state: 'connected', client: info.client, node: info.node, clients: info.clients, transport: this.transport ?? 'websocket' });
    this.emit('connected', info);
  }

  private reconnectingState(attempt: number, delay: number, code?: number, reason?: string): ConnectionState {
    return {
      state: 'reconnecting',
      attempt: Math.max(1, attempt),
      failures: this.policy.failures,
      maxAttempts: this.policy.maxAttempts,
      nextTryMs: delay,
      nextTryAt: Date.now() + delay,
      code,
      reason,
    };
  }

  /**
   * Full-jitter delay before try `attempt` (1-based, counted since the last connection that got
   * its `connect` reply): uniform in [0, min(maxMs, initialMs × 2^(attempt-1))).
   */
  backoffDelay(attempt: number): number {
    return this.policy.delay(attempt);
  }

  private clearTimer(name: 'retryTimer' | 'connectTimer' | 'livenessTimer' | 'refreshTimer'): void {
    const t = this[name];
    if (t !== undefined) clearTimeout(t);
    this[name] = undefined;
  }

  // ------------------------------------------------------------------ internals: socket

  private async openSocket(): Promise<void> {
    const gen = ++this.gen;
    this.disconnectPush = undefined;
    this.policy.attemptStarted();
    let token: string | undefined;
    try {
      const t = this.opts.token;
      token = typeof t === 'function' ? await t() : t;
    } catch (err) {
      if (gen !== this.gen || !this.started) return;
      this.emit('error', err instanceof Error ? err : new Error(String(err)));
      this.onFailure(0, 'token_provider_failed');
      return;
    }
    if (gen !== this.gen || !this.started) return;
    let ws: WebSocketLike;
    try {
      ws = this.newSocket();
    } catch (err) {
      this.emit('error', err instanceof Error ? err : new Error(String(err)));
      this.onFailure(0, 'socket_failed');
      return;
    }
    this.ws = ws;
    this.clearTimer('connectTimer');
    this.connectTimer = setTimeout(() => {
      if (gen !== this.gen) return;
      this.dropSocket(1000, 'connect timeout');
      this.onFailure(0, 'connect_timeout');
    }, this.opts.connectTimeoutMs ?? 10000);

    let opened = false;
    ws.onopen = () => {
      opened = true;
      if (gen !== this.gen) return;
      const id = this.nextId++;
      this.numbers.clear();
      const frame = encodeCommand(id, 'connect', { token, name: this.opts.name, version: this.opts.protocol ?? 2 });
      // The connect timer bounds this request.
      this.pending.set(id, {
        resolve: (r) => this.onConnected(gen, r as ConnectResult),
        reject: (e) => this.onConnectError(gen, e as HeraldError),
        timer: undefined,
        frame,
        sent: true,
        gen,
      });
      ws.send(frame);
    };
    ws.onmessage = (ev) => {
      if (gen !== this.gen) return;
      this.onFrame(ev.data);
    };
    ws.onerror = () => {
      // Browsers follow an error with a close event; some implementations (Node's, on a failed
      // handshake) do not, so a socket that is closed and silent is treated as closed.
      setTimeout(() => {
        if (gen !== this.gen || this.ws !== ws || (opened && ws.readyState !== 3)) return;
        const onclose = ws.onclose;
        ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
        try {
          ws.close();
        } catch {
          /* never opened */
        }
        onclose?.({ code: 1006, reason: 'connection failed' });
      }, 50);
    };
    ws.onclose = (ev) => {
      if (gen !== this.gen || this.ws !== ws) return;
      this.ws = undefined;
      this.afterSocketGone();
      const push = this.disconnectPush;
      const code = push?.code ?? ev.code;
      const reason = push?.reason || ev.reason || CLOSE_CODES[code] || `closed (${code})`;
      this.emit('disconnected', { code, reason });
      const final = isFinalCloseCode(code) || (push !== undefined && push.reconnect === false);
      if (final) {
        this.started = false;
        this.clearTimer('retryTimer');
        this.failPending(true, { code: 1, name: 'disconnected', message: `connection closed: ${reason}` });
        this.setState({ state: 'offline', reason: CLOSE_CODES[code] ?? reason, code });
        return;
      }
      this.onFailure(code, CLOSE_CODES[code] ?? reason);
    };
  }

  /** Forgets the current socket (it will not report anymore) and closes it. */
  private dropSocket(code: number, reason: string): void {
    const ws = this.ws;
    this.ws = undefined;
    this.gen++;
    this.afterSocketGone();
    if (ws) {
      ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
      try {
        ws.close(code, reason);
      } catch {
        /* already closed */
      }
    }
  }

  private afterSocketGone(): void {
    this.clearTimer('connectTimer');
    this.clearTimer('livenessTimer');
    this.clearTimer('refreshTimer');
    this.resyncPending.clear();
    this.resyncViews.clear();
    this.connectedAt = 0;
    for (const sub of this.subs.values()) if (sub.status !== 'unsubscribed') sub._setStatus('pending');
    for (const view of this.views.values()) if (view.status !== 'unsubscribed') view._setStatus('pending');
    this.failPending(false, { code: 1, name: 'disconnected', message: 'connection lost' });
  }

  /** Rejects requests that were sent (all of them when `all`). */
  private failPending(all: boolean, body: ErrorBody): void {
    for (const [id, p] of [...this.pending]) {
      if (!all && !p.sent) continue;
      this.pending.delete(id);
      if (p.timer) clearTimeout(p.timer);
      p.reject(new HeraldError(body));
    }
    if (all) this.outbox.length = 0;
  }

  /**
   * A connection attempt failed or an established connection dropped: back off and retry. Only
   * an attempt that never got its `connect` reply is a failure; the breaker opens after
   * `maxAttempts` consecutive failures and then probes once per `maxMs`.
   */
  private onFailure(code: number, reason: string): void {
    if (!this.started) return;
    const step = this.policy.next();
    if (this.urls.length > 1) this.urlIndex = (this.urlIndex + 1) % this.urls.length;
    this.clearTimer('retryTimer');
    if (step.kind === 'open') {
      const probeMs = step.probeMs;
      this.setState({ state: 'offline', reason: 'circuit_open', code: code || undefined, nextTryAt: Date.now() + probeMs });
      // Requests waiting for a connection fail now, as later ones will while the breaker is open.
      this.failPending(true, { code: 3, name: 'offline', message: 'client is offline (circuit_open)' });
      // A probe keeps the state `offline`; its `connect` reply closes the breaker, its failure
      // re-arms it.
      this.retryTimer = setTimeout(() => {
        this.retryTimer = undefined;
        if (this.started && !this.ws) this.openSocket();
      }, probeMs);
      return;
    }
    this.setState(this.reconnectingState(step.attempt, step.delayMs, code || undefined, reason));
    this.retryTimer = setTimeout(() => this.tryNow(), step.delayMs);
  }

  /** Cuts a backoff wait short (browser came online, tab became visible). */
  private tryNow(): void {
    if (!this.started || this.ws) return;
    this.clearTimer('retryTimer');
    if (this._state.state === 'reconnecting') this.setState({ ...this._state, nextTryMs: 0, nextTryAt: Date.now() });
    this.openSocket();
  }

  private onConnectError(gen: number, err: HeraldError): void {
    // A connection lost before the reply is handled by the close handler.
    if (gen !== this.gen || err.code === 1 || err.code === 2) return;
    // A token that expired between the provider and the hub: a provider can give a fresh one.
    const retry = err.code === 109 && typeof this.opts.token === 'function';
    if (err.code === 0 || retry || err.code === 100 || err.code === 113 || err.code === 110) {
      this.dropSocket(1000, 'connect failed');
      this.onFailure(0, err.errorName);
      return;
    }
    this.started = false;
    this.dropSocket(1000, 'connect refused');
    this.setState({ state: 'offline', reason: err.errorName, code: err.code });
  }

  private onConnected(gen: number, res: ConnectResult): void {
    if (gen !== this.gen) return;
    this.clearTimer('connectTimer');
    this.info = res;
    // The attempt did not fail (and an open breaker closes); the retries reset once resumed.
    this.policy.connectReached();
    this.connectedAt = Date.now();
    this.pingIntervalMs = res.ping_interval_ms || 25000;
    this.touch();
    this.scheduleRefresh(res.expires_at);
    const resuming = this.everConnected;
    this.everConnected = true;
    const subs = [...this.subs.values()].filter((s) => s.status !== 'unsubscribed');
    const views = [...this.views.values()].filter((v) => v.status !== 'unsubscribed');
    if (resuming && subs.length + views.length > 0) {
      // `connected` (state and event) comes when every resubscribe is answered.
      for (const s of subs) this.resyncPending.add(s.channel);
      for (const v of views) this.resyncViews.add(v.name);
      this.setState({ state: 'resyncing', pending: subs.length + views.length });
    } else {
      this.enterConnected();
    }
    for (const s of subs) this.sendSubscribe(s);
    for (const v of views) this.sendViewSubscribe(v);
    // Flush commands made while disconnected, in order.
    for (const id of this.outbox.splice(0)) {
      const p = this.pending.get(id);
      if (p) this.sendPending(id, p);
    }
  }

  private resyncDone(channel: string): void {
    if (this.resyncPending.delete(channel)) this.resyncProgress();
  }

  private viewResyncDone(name: string): void {
    if (this.resyncViews.delete(name)) this.resyncProgress();
  }

  /** One resubscribe was answered: `connected` after the last one. */
  private resyncProgress(): void {
    if (this._state.state !== 'resyncing') return;
    const pending = this.resyncPending.size + this.resyncViews.size;
    if (pending === 0) {
      this.enterConnected();
    } else {
      this.setState({ state: 'resyncing', pending });
    }
  }

  private sendPending(id: number, p: Pending): void {
    p.sent = true;
    p.gen = this.gen;
    this.ws!.send(p.frame);
  }

  private sendRaw(msg: Record<string, unknown>): void {
    this.ws?.send(encodeMessage(msg));
  }

  // ------------------------------------------------------------------ internals: liveness, refresh

  /** Something arrived: the connection is alive. */
  private touch(): void {
    this.lastRecv = Date.now();
    // Before the connect reply the connect timer bounds the wait.
    if (this.connectedAt && this.livenessTimer === undefined) this.armLiveness();
  }

  private livenessDeadline(): number {
    const margin = this.opts.livenessMarginMs ?? Math.max(3000, Math.round(this.pingIntervalMs / 2));
    return this.pingIntervalMs + margin;
  }

  private armLiveness(): void {
    const gen = this.gen;
    const wait = Math.max(10, this.lastRecv + this.livenessDeadline() - Date.now());
    this.livenessTimer = setTimeout(() => {
      this.livenessTimer = undefined;
      if (gen !== this.gen || !this.ws) return;
      if (Date.now() - this.lastRecv >= this.livenessDeadline()) {
        // Nothing for too long: the network may drop packets without closing. Treat as dead.
        this.dropSocket(1000, 'liveness timeout');
        this.emit('disconnected', { code: 4002, reason: 'no ping from the server' });
        this.onFailure(4002, 'heartbeat_timeout');
      } else {
        this.armLiveness();
      }
    }, wait);
  }

  private scheduleRefresh(expiresAt?: number): void {
    this.clearTimer('refreshTimer');
    if (!expiresAt || typeof this.opts.token !== 'function') return;
    const remaining = expiresAt * 1000 - Date.now();
    const before = this.opts.refreshBeforeMs ?? Math.min(30000, remaining / 2);
    const gen = this.gen;
    this.refreshTimer = setTimeout(() => this.refreshToken(gen, expiresAt), Math.max(0, remaining - before));
  }

  private async refreshToken(gen: number, expiresAt: number): Promise<void> {
    this.refreshTimer = undefined;
    if (gen !== this.gen) return;
    try {
      const provider = this.opts.token as TokenProvider;
      const token = await provider();
      if (gen !== this.gen || !token) return;
      const res = (await this.request('refresh', { token })) as { expires_at?: number };
      if (gen !== this.gen) return;
      this.emit('refreshed', { expires_at: res.expires_at });
      this.scheduleRefresh(res.expires_at);
    } catch (err) {
      if (gen !== this.gen) return;
      this.emit('error', err instanceof Error ? err : new Error(String(err)));
      // Try again shortly while the token is still valid; if it lapses the hub closes with 4004
      // and the reconnect asks the provider again.
      if (expiresAt * 1000 > Date.now()) {
        this.refreshTimer = setTimeout(() => this.refreshToken(gen, expiresAt), 2000);
      }
    }
  }

  private bindBrowserEvents(): void {
    if (this.opts.browserEvents === false) return;
    const g = globalThis as {
      addEventListener?: (t: string, f: () => void) => void;
      removeEventListener?: (t: string, f: () => void) => void;
      document?: {
        visibilityState?: string;
        addEventListener?: (t: string, f: () => void) => void;
        removeEventListener?: (t: string, f: () => void) => void;
      };
    };
    if (typeof g.addEventListener === 'function' && g.document) {
      const onOnline = () => {
        if (this._state.state === 'offline' && this._state.reason === 'circuit_open') this.reconnect();
        else this.tryNow();
      };
      g.addEventListener('online', onOnline);
      this.unbindBrowser.push(() => g.removeEventListener?.('online', onOnline));
    }
    const doc = g.document;
    if (doc && typeof doc.addEventListener === 'function') {
      const onVisible = () => {
        if (doc.visibilityState !== 'visible') return;
        if (this._state.state === 'reconnecting') this.tryNow();
        else if (this.isLive() && Date.now() - this.lastRecv > this.pingIntervalMs) {
          // The tab slept: check that the connection still carries traffic.
          const gen = this.gen;
          this.ping(5000).catch(() => {
            if (gen !== this.gen || !this.ws) return;
            this.dropSocket(1000, 'ping failed');
            this.onFailure(4002, 'heartbeat_timeout');
          });
        }
      };
      doc.addEventListener('visibilitychange', onVisible);
      this.unbindBrowser.push(() => doc.removeEventListener?.('visibilitychange', onVisible));
    }
  }

  // ------------------------------------------------------------------ internals: messages

  private onFrame(data: unknown): void {
    this.touch();
    if (typeof data !== 'string') return;
    const gen = this.gen;
    for (const line of frameLines(data)) {
      if (gen !== this.gen) return; // a message replaced the connection
      const msg = decodeMessage(line);
      if (msg === undefined) {
        this.emit('error', new Error(`unparseable message from the hub: ${line.slice(0, 200)}`));
        continue;
      }
      this.onMessage(msg);
      if (!this.ws) return; // the message closed the connection
    }
  }

  private onMessage(msg: ServerMessage | CompactPublication): void {
    if (Array.isArray(msg)) {
      // A compact publication (v2): its subscription gives the channel and the epoch.
      const sub = this.numbers.get(msg[0]);
      if (sub?.position && this.subs.get(sub.channel) === sub) sub._onPublication(expandCompact(msg, sub.channel, sub.position.epoch));
      return;
    }
    if (typeof msg.id === 'number') {
      const p = this.pending.get(msg.id);
      if (!p) return;
      this.pending.delete(msg.id);
      if (p.timer) clearTimeout(p.timer);
      if (msg.error) p.reject(new HeraldError(msg.error));
      else p.resolve(msg.result ?? {});
      return;
    }
    switch (msg.push) {
      case 'pub':
        if (msg.pub) this.subs.get(msg.pub.channel)?._onPublication(msg.pub);
        break;
      case 'chunk':
        if (msg.channel) this.subs.get(msg.channel)?._onChunk(msg as unknown as ChunkMessage);
        break;
      case 'view': {
        const m = msg as ViewPush;
        if (m.sub !== undefined && m.pub && m.operation && m.key !== undefined) {
          this.views.get(m.sub)?._onEvent(m as ViewEventMessage);
        }
        break;
      }
      case 'presence_list':
      case 'presence':
      case 'presence_stats':
      case 'volatile':
        this.onPresencePush(msg as PresencePush);
        break;
      case 'ping':
        this.sendRaw({ cmd: 'pong' });
        break;
      case 'unsubscribe':
        this.onUnsubscribePush(msg);
        break;
      case 'disconnect':
        this.disconnectPush = {
          code: msg.code ?? 0,
          reason: msg.reason || msg.name || '',
          reconnect: msg.reconnect !== false,
        };
        break;
      case 'error':
        if ((msg as { error?: ErrorBody }).error) this.emit('error', new HeraldError((msg as { error: ErrorBody }).error));
        break;
      default:
        break;
    }
  }

  /**
   * A presence or volatile push: to the channel's subscription, if it is established; a volatile
   * event also to each established live view of the channel (the hub sends it once per
   * connection, whether the connection subscribed to the channel, to views of it, or both).
   */
  private onPresencePush(msg: PresencePush): void {
    if (msg.push === 'volatile' && msg.channel) {
      const event = { channel: msg.channel, type: msg.type, data: msg.data, user: msg.user, client: msg.client };
      for (const view of this.views.values()) {
        if (view.channel === msg.channel && view.status === 'subscribed') view._emit('volatile', event as VolatileEvent);
      }
    }
    const sub = msg.channel ? this.subs.get(msg.channel) : undefined;
    if (!sub || sub.status !== 'subscribed') return;
    switch (msg.push) {
      case 'presence_list':
        sub.presence._onList(msg);
        break;
      case 'presence':
        sub.presence._onEvent(msg);
        break;
      case 'presence_stats':
        sub.presence._onStats(msg);
        break;
      default:
        sub._emit('volatile', { channel: msg.channel, type: msg.type, data: msg.data, user: msg.user, client: msg.client });
    }
  }

  /** `presence_update` while subscribed; otherwise the next subscribe carries the kept `info`. */
  private updatePresence(sub: Subscription, info: unknown): Promise<void> {
    if (!this.isLive() || sub.status === 'pending' || sub.status === 'offline') return Promise.resolve();
    return this.request('presence_update', { channel: sub.channel, info: info ?? null }).then(
      () => undefined,
      (err: HeraldError) => {
        // Sent while the subscribe was pending and the subscribe failed or the connection
        // dropped: the resubscribe carries the new `info`.
        if (sub.status !== 'subscribed' && (err.code === 108 || err.code === 1 || err.code === 2)) return;
        throw err;
      },
    );
  }

  private sendSubscribe(sub: Subscription): void {
    if (!this.isLive()) return;
    sub._setStatus('subscribing');
    const gen = ++sub.generation;
    const fields: Record<string, unknown> = { channel: sub.channel, ...sub.presence._fields() };
    if (sub.position) fields.since = { epoch: sub.position.epoch, offset: sub.position.offset };
    else if (sub.options.snapshot) fields.snapshot = true;
    if (sub.options.preview) fields.preview = sub.options.preview;
    if (this.info) sub.presence.self = `${this.info.user}/${sub.presence.memberId}`;
    // The reply is applied synchronously: publications that follow it in the same frame (or the
    // same read) must find the subscription `subscribed` at the reply's position.
    this.command(
      'subscribe',
      fields,
      undefined,
      (r) => {
        if (gen !== sub.generation || sub.status === 'unsubscribed') return;
        const res = r as SubscribeResult;
        if (typeof res.n === 'number') {
          const old = this.numberOf.get(sub);
          if (old !== undefined && this.numbers.get(old) === sub) this.numbers.delete(old);
          this.numbers.set(res.n, sub);
          this.numberOf.set(sub, res.n);
        }
        sub._onSubscribeReply(res);
        this.resyncDone(sub.channel);
      },
      (err) => {
        if (gen !== sub.generation || sub.status === 'unsubscribed') return;
        if (err.code === 1 || err.code === 2) return; // connection dropped: resubscribed on reconnect
        if (err.code === 0 || TRANSIENT_SUBSCRIBE_ERRORS.has(err.code)) {
          // Transient: retry on this connection after a short pause.
          const cgen = this.gen;
          setTimeout(() => {
            if (cgen === this.gen && sub.status === 'subscribing' && gen === sub.generation) this.sendSubscribe(sub);
          }, 1000);
          sub._emit('error', err);
          return;
        }
        sub._setStatus('unsubscribed');
        if (this.subs.get(sub.channel) === sub) this.subs.delete(sub.channel);
        this.resyncDone(sub.channel);
        sub._emit('error', err);
        sub._emit('unsubscribed', { channel: sub.channel, code: err.code, reason: err.errorName });
      },
    );
  }

  /** Ends and re-creates the subscription from the last delivered position. */
  private resubscribe(sub: Subscription, needUnsubscribe: boolean): void {
    if (sub.status === 'subscribing' || !this.isLive()) return;
    sub.stats.resubscribes += 1;
    sub._setStatus('subscribing');
    if (needUnsubscribe) this.request('unsubscribe', { channel: sub.channel }).catch(() => {});
    this.sendSubscribe(sub);
  }

  private onUnsubscribePush(msg: ServerMessage): void {
    const viewSub = (msg as ViewPush).sub;
    if (viewSub !== undefined) {
      this.onViewUnsubscribePush(viewSub, msg);
      return;
    }
    const sub = msg.channel ? this.subs.get(msg.channel) : undefined;
    if (!sub || sub.status === 'unsubscribed') return;
    if (msg.resubscribe) {
      sub._setStatus('pending');
      this.resubscribe(sub, false);
      return;
    }
    sub._setStatus('unsubscribed');
    sub.generation++;
    this.subs.delete(sub.channel);
    sub._emit('unsubscribed', { channel: sub.channel, code: msg.code, reason: msg.reason || msg.name || 'unsubscribed' });
  }

  /** The last handle of `sub` was dropped: leave the channel. */
  private leave(sub: Subscription): void {
    if (sub.status === 'unsubscribed') return;
    const wasActive = sub.status === 'subscribed' || sub.status === 'subscribing';
    sub._setStatus('unsubscribed');
    sub.generation++;
    if (this.subs.get(sub.channel) === sub) this.subs.delete(sub.channel);
    this.resyncDone(sub.channel);
    if (wasActive && this.isLive()) this.request('unsubscribe', { channel: sub.channel }).catch(() => {});
    sub._emit('unsubscribed', { channel: sub.channel, reason: 'client' });
  }

  // ------------------------------------------------------------------ internals: live views

  private sendViewSubscribe(view: LiveView<unknown>): void {
    if (!this.isLive()) return;
    view._setStatus('subscribing');
    const gen = ++view.generation;
    // As for channels, the reply is applied synchronously, before the events that follow it.
    this.command(
      'subscribe',
      view._command(),
      undefined,
      (r) => {
        if (gen !== view.generation || view.status === 'unsubscribed') return;
        view._onReply(r as ViewSubscribeResult);
        this.viewResyncDone(view.name);
      },
      (err) => {
        if (gen !== view.generation || view.status === 'unsubscribed') return;
        if (err.code === 1 || err.code === 2) return; // connection dropped: resubscribed on reconnect
        if (err.code === 0 || TRANSIENT_VIEW_ERRORS.has(err.code)) {
          const cgen = this.gen;
          setTimeout(() => {
            if (cgen === this.gen && view.status === 'subscribing' && gen === view.generation) this.sendViewSubscribe(view);
          }, 1000);
          view._emit('error', err);
          return;
        }
        // Refused (118 invalid_filter, 107, 116, 101-103, ...): the view ends with the error.
        this.endView(view);
        view._fail(err);
        view._emit('error', err);
        view._emit('unsubscribed', { channel: view.channel, code: err.code, reason: err.errorName });
      },
    );
  }

  /** Marks the view ended and forgets it. */
  private endView(view: LiveView<unknown>): void {
    view._setStatus('unsubscribed');
    view.generation++;
    if (this.views.get(view.name) === view) this.views.delete(view.name);
    this.viewResyncDone(view.name);
  }

  /** Ends and re-creates the view from its position (`since`). */
  private resubscribeView(view: LiveView<unknown>, needUnsubscribe: boolean): void {
    if (view.status === 'subscribing' || !this.isLive()) return;
    view.stats.resubscribes += 1;
    if (needUnsubscribe) this.request('unsubscribe', { channel: view.channel, sub: view.name }).catch(() => {});
    this.sendViewSubscribe(view);
  }

  private onViewUnsubscribePush(name: string, msg: ServerMessage): void {
    const view = this.views.get(name);
    if (!view || view.status === 'unsubscribed') return;
    if (msg.resubscribe) {
      view._setStatus('pending');
      this.resubscribeView(view, false);
      return;
    }
    const why = { channel: view.channel, code: msg.code, reason: msg.reason || msg.name || 'unsubscribed' };
    this.endView(view);
    view._fail(new HeraldError({ code: msg.code ?? 0, name: why.reason, message: `view ${name} ended by the hub`, channel: view.channel }));
    view._emit('unsubscribed', why);
  }

  /** The last handle of `view` was dropped: end it on the hub. */
  private leaveView(view: LiveView<unknown>): void {
    if (view.status === 'unsubscribed') return;
    const wasActive = view.status === 'subscribed' || view.status === 'subscribing';
    this.endView(view);
    if (wasActive && this.isLive()) this.request('unsubscribe', { channel: view.channel, sub: view.name }).catch(() => {});
    view._fail(new HeraldError({ code: 2, name: 'unsubscribed', message: `view ${view.name} was unsubscribed before its first reply`, channel: view.channel }));
    view._emit('unsubscribed', { channel: view.channel, reason: 'client' });
  }
}
