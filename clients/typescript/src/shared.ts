/**
 * Many tabs, one connection (`share: true`). The tabs of one browser (same origin, same share
 * name) elect a leader with the Web Locks API; the leader runs a real client (one WebSocket) and
 * every tab's client, the leader's own included, talks to it through a virtual socket relayed over
 * BroadcastChannel. The virtual socket speaks the wire protocol (docs/protocol.md), so each tab
 * runs an unchanged `HeraldClient` with its own subscriptions, positions, states and delivery
 * rules; the leader answers `connect` and `subscribe` itself and forwards the other commands.
 *
 * The leader keeps one hub subscription per channel (reference-counted over the tabs'
 * connections). A tab's `subscribe` is answered from the leader's subscription: at its position,
 * or from the tab's `since` with the missed publications (a ring of recent ones, else `history`)
 * sent right after the reply, or as a resync (a `state` snapshot on keyed channels). When the
 * leader's connection drops, or the leader tab goes (its lock is released and another tab takes
 * it), every virtual socket closes and the tabs resume as after any reconnect: from their own
 * positions, so each gets every offset once, in order.
 *
 * It reaches the client only through `ShareLeaderClient` (what the leader needs of a real client)
 * and the `WebSocketLike` seam of transport.ts, so this module does not import the client.
 */

import { HeraldError } from './errors.js';
import type { Subscription } from './subscription.js';
import { encodeMessage, frameLines, type WebSocketConstructor, type WebSocketLike } from './transport.js';
import type {
  ConnectionState,
  ConnectResult,
  HistoryResult,
  Position,
  Publication,
  StateResult,
  SubscribeOptions,
} from './types.js';

/** What the leader needs of a real (unshared) client. */
export interface ShareLeaderClient {
  readonly state: ConnectionState;
  info?: ConnectResult;
  connect(): Promise<void>;
  close(): void;
  on(event: 'state', fn: (s: ConnectionState) => void): () => void;
  subscribe(channel: string, options?: SubscribeOptions): Subscription;
  request(cmd: string, fields: Record<string, unknown>, timeoutMs?: number): Promise<unknown>;
}

/** The subset of BroadcastChannel used. */
export interface ShareChannelLike {
  onmessage: ((ev: { data: unknown }) => void) | null;
  postMessage(msg: unknown): void;
  close(): void;
}

/** What sharing needs from the page (the browser's, or a fake in tests). */
export interface ShareEnv {
  /** `navigator.locks.request`: `hold` runs while this tab holds the lock. */
  lock(name: string, hold: () => Promise<void>): void;
  /** A BroadcastChannel of this name. */
  channel(name: string): ShareChannelLike;
  /** Runs `fn` when the page goes away (`pagehide`). */
  onPageHide(fn: () => void): void;
}

/** Messages between the tabs (on the BroadcastChannel). */
type ShareMsg =
  | { t: 'who' }
  | { t: 'leader'; leader: string }
  | { t: 'bye'; leader: string }
  | { t: 'gone'; tab: string }
  | { t: 'up'; leader: string; conn: string; line: string }
  | { t: 'close'; leader: string; conn: string }
  | { t: 'down'; to: string[]; line: string }
  | { t: 'drop'; to: string[]; code: number; reason: string };

/** Recent publications the leader keeps per channel to answer a tab's `since` without `history`. */
const SHARE_RING = 4096;
/** A channel no tab holds is left this long after, so a reconnect of the tabs resumes it. */
const SHARE_GRACE_MS = 30000;
/** `history` pages read to catch a tab up before it is answered as a resync. */
const SHARE_MAX_PAGES = 20;

/** The page's environment, or undefined when the Web Locks API or BroadcastChannel is missing. */
export function browserShareEnv(): ShareEnv | undefined {
  const g = globalThis as {
    navigator?: { locks?: { request(name: string, cb: () => Promise<void>): Promise<unknown> } };
    BroadcastChannel?: new (name: string) => ShareChannelLike;
    addEventListener?: (t: string, f: () => void) => void;
  };
  const locks = g.navigator?.locks;
  const BC = g.BroadcastChannel;
  if (!locks || typeof locks.request !== 'function' || typeof BC !== 'function') return undefined;
  return {
    lock: (name, hold) => {
      locks.request(name, hold).catch(() => {});
    },
    channel: (name) => new BC(name),
    onPageHide: (fn) => g.addEventListener?.('pagehide', fn),
  };
}

/** A short, stable hash (FNV-1a), so a token is not spelt out in lock and channel names. */
function shareHash(s: string): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h.toString(36);
}

/** The default share name: the hub URLs and whose credentials (a static token, a provider, none). */
export function defaultShareName(urls: string[], token: unknown): string {
  const who = typeof token === 'string' ? `token-${shareHash(token)}` : typeof token === 'function' ? 'provider' : 'anonymous';
  return `${urls.join(',')}|${who}`;
}

/** The share tab of each name in this page (one leader election per name and page). */
const shareTabs = new Map<string, ShareTab>();

/**
 * The virtual WebSocket for a `share: true` client, or undefined (the caller then uses a real
 * one) when the page has no Web Locks API or BroadcastChannel. The first client of a name in the
 * page decides how its leader connects (`makeLeader`).
 */
export function sharedSocket(name: string, makeLeader: () => ShareLeaderClient): WebSocketConstructor | undefined {
  let tab = shareTabs.get(name);
  if (!tab) {
    const env = browserShareEnv();
    if (!env) return undefined;
    tab = new ShareTab(name, env, makeLeader);
    shareTabs.set(name, tab);
  }
  return tab.WebSocket;
}

let shareSeq = 0;

/** A random id for a tab. */
function shareId(): string {
  const c = (globalThis as { crypto?: { randomUUID?: () => string } }).crypto;
  return c?.randomUUID ? c.randomUUID().slice(0, 13) : `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`;
}

/**
 * One page's side of a share name: its place in the leader election, its virtual sockets, and
 * the leader when it holds the lock.
 */
export class ShareTab {
  /** This tab's id on the share channel. */
  readonly id = shareId();
  /** The tab whose leader the virtual sockets talk to (undefined while none is known). */
  leaderId?: string;
  /** The leader, while this tab holds the lock. */
  leader?: ShareLeader;
  /** This tab's virtual sockets by key (`TAB/N`). */
  readonly conns = new Map<string, ShareSocket>();
  /** The share channel. */
  private readonly bc: ShareChannelLike;
  /** Releases the lock (ends the `hold` promise). */
  private release?: () => void;
  /** Closed (tests; a page that goes only posts `bye`). */
  private closed = false;
  /** The virtual WebSocket class of this tab. */
  readonly WebSocket: WebSocketConstructor;

  constructor(
    readonly name: string,
    env: ShareEnv,
    private readonly makeLeader: () => ShareLeaderClient,
  ) {
    this.bc = env.channel(`herald-share|${name}`);
    this.bc.onmessage = (ev) => this.onMessage(ev.data as ShareMsg);
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const tab = this;
    this.WebSocket = class extends ShareSocket {
      constructor(url: string) {
        super(tab, url);
      }
    };
    env.lock(`herald-share|${name}`, () => {
      if (this.closed) return Promise.resolve();
      this.becomeLeader();
      // Held for the tab's life: the browser releases it when the page goes.
      return new Promise<void>((resolve) => (this.release = resolve));
    });
    env.onPageHide(() => this.goAway());
    this.post({ t: 'who' });
  }

  /** Leaves the election and closes everything (a page going away, or a test closing a tab). */
  close(): void {
    if (this.closed) return;
    this.goAway();
    this.closed = true;
    for (const c of [...this.conns.values()]) c._lost(1006, 'share closed');
    this.bc.onmessage = null;
    this.bc.close();
    this.release?.();
    if (shareTabs.get(this.name) === this) shareTabs.delete(this.name);
  }

  /** The page goes: followers hear it now rather than when the lock is released. */
  private goAway(): void {
    if (this.closed) return;
    if (this.leader) {
      this.post({ t: 'bye', leader: this.id });
      this.leader.close();
      this.leader = undefined;
    } else {
      this.post({ t: 'gone', tab: this.id });
    }
  }

  private becomeLeader(): void {
    this.leader = new ShareLeader(this, this.makeLeader());
    this.post({ t: 'leader', leader: this.id });
    this.setLeader(this.id);
  }

  /** A new leader (or none): sockets of another leader close, waiting ones open. */
  private setLeader(id: string | undefined): void {
    if (id === this.leaderId) return;
    this.leaderId = id;
    for (const c of [...this.conns.values()]) {
      if (c.readyState === 1 && c.boundTo !== id) c._lost(1006, 'share leader changed');
      else if (c.readyState === 0 && id !== undefined) c._open(id);
    }
  }

  /** @internal */
  post(msg: ShareMsg): void {
    if (!this.closed) this.bc.postMessage(msg);
  }

  private onMessage(msg: ShareMsg): void {
    if (this.closed || !msg || typeof msg !== 'object') return;
    switch (msg.t) {
      case 'who':
        if (this.leader) this.post({ t: 'leader', leader: this.id });
        break;
      case 'leader':
        if (!this.leader) this.setLeader(msg.leader);
        break;
      case 'bye':
        if (msg.leader === this.leaderId) this.setLeader(undefined);
        break;
      case 'gone':
        this.leader?.tabGone(msg.tab);
        break;
      case 'up':
        if (this.leader && msg.leader === this.id) this.leader.fromConn(msg.conn, msg.line);
        break;
      case 'close':
        if (this.leader && msg.leader === this.id) this.leader.connClosed(msg.conn);
        break;
      case 'down':
        for (const key of msg.to) this.conns.get(key)?._deliver(msg.line);
        break;
      case 'drop':
        for (const key of msg.to) this.conns.get(key)?._lost(msg.code, msg.reason);
        break;
    }
  }

  /** @internal A frame from one of this tab's sockets to its leader. */
  up(conn: ShareSocket, line: string): void {
    if (conn.boundTo === this.id && this.leader) {
      const leader = this.leader;
      queueMicrotask(() => leader.fromConn(conn.key, line));
    } else if (conn.boundTo) {
      this.post({ t: 'up', leader: conn.boundTo, conn: conn.key, line });
    }
  }

  /** @internal One of this tab's sockets closed. */
  closedConn(conn: ShareSocket): void {
    this.conns.delete(conn.key);
    if (!conn.boundTo) return;
    if (conn.boundTo === this.id) this.leader?.connClosed(conn.key);
    else this.post({ t: 'close', leader: conn.boundTo, conn: conn.key });
  }

  /** @internal From the leader: frames to connections of any tab. */
  down(keys: string[], line: string): void {
    const remote: string[] = [];
    for (const key of keys) {
      const local = this.conns.get(key);
      if (local) queueMicrotask(() => local._deliver(line));
      else remote.push(key);
    }
    if (remote.length > 0) this.post({ t: 'down', to: remote, line });
  }

  /** @internal From the leader: close connections of any tab. */
  drop(keys: string[], code: number, reason: string): void {
    const remote: string[] = [];
    for (const key of keys) {
      const local = this.conns.get(key);
      if (local) queueMicrotask(() => local._lost(code, reason));
      else remote.push(key);
    }
    if (remote.length > 0) this.post({ t: 'drop', to: remote, code, reason });
  }
}

/** A virtual WebSocket: frames go to the leader (over BroadcastChannel, or directly in its tab). */
export class ShareSocket implements WebSocketLike {
  readyState = 0;
  onopen: ((ev: unknown) => void) | null = null;
  onclose: ((ev: { code: number; reason: string }) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  /** `TAB/N`: unique among the tabs. */
  readonly key: string;
  /** The leader tab this socket talks to (set when it opens). */
  boundTo?: string;

  constructor(
    private readonly tab: ShareTab,
    readonly url: string,
  ) {
    this.key = `${tab.id}/${++shareSeq}`;
    tab.conns.set(this.key, this);
    // The client sets its handlers after the constructor returns.
    const leader = tab.leaderId;
    if (leader !== undefined) queueMicrotask(() => this._open(leader));
  }

  send(data: string): void {
    if (this.readyState !== 1) throw new Error('ShareSocket: not open');
    this.tab.up(this, data);
  }

  close(): void {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.tab.closedConn(this);
    const onclose = this.onclose;
    if (onclose) queueMicrotask(() => onclose({ code: 1000, reason: 'closed' }));
  }

  /** @internal */
  _open(leader: string): void {
    if (this.readyState !== 0) return;
    this.boundTo = leader;
    this.readyState = 1;
    this.onopen?.({});
  }

  /** @internal */
  _deliver(line: string): void {
    if (this.readyState === 1) this.onmessage?.({ data: line });
  }

  /** @internal The leader went or dropped this connection. */
  _lost(code: number, reason: string): void {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.tab.conns.delete(this.key);
    this.onclose?.({ code, reason });
  }
}

/** A tab's connection as the leader sees it. */
interface ShareConn {
  key: string;
  /** Its `connect` was answered. */
  connected: boolean;
  /** The id of its `connect` while the leader's connection is not up. */
  connectId?: number;
  /** Channels it subscribed (answered or being caught up). */
  channels: Set<string>;
}

/** One hub subscription of the leader and the tab connections on it. */
interface ShareChannel {
  name: string;
  sub: Subscription;
  /** Connections receiving its pushes (answered). */
  members: Set<string>;
  /** Connections holding it (members, and those waiting or catching up), with a ticket. */
  holders: Map<string, number>;
  /** Subscribes waiting for the hub subscription to be established. */
  waiting: Array<{ key: string; id: number; msg: Record<string, unknown>; ticket: number }>;
  /** The latest publications, contiguous, the last at `sub.position`. */
  recent: Publication[];
  /** The last refusal of the hub subscription. */
  lastError?: HeraldError;
  release?: ReturnType<typeof setTimeout>;
  offs: Array<() => void>;
}

let shareTicket = 0;

/** The leader: one real client and the tabs' connections multiplexed on it. */
export class ShareLeader {
  private readonly conns = new Map<string, ShareConn>();
  private readonly channels = new Map<string, ShareChannel>();
  private pingTimer?: ReturnType<typeof setInterval>;
  private wasUp = false;
  private readonly offState: () => void;

  constructor(
    private readonly tab: ShareTab,
    readonly client: ShareLeaderClient,
  ) {
    this.offState = client.on('state', (s) => this.onState(s));
    client.connect().catch(() => {});
  }

  close(): void {
    this.offState();
    if (this.pingTimer !== undefined) clearInterval(this.pingTimer);
    for (const ch of this.channels.values()) {
      if (ch.release !== undefined) clearTimeout(ch.release);
      for (const off of ch.offs) off();
    }
    this.channels.clear();
    this.tab.drop([...this.conns.keys()], 1006, 'share leader closed');
    this.conns.clear();
    this.client.close();
  }

  private get up(): boolean {
    return this.client.state.state === 'connected';
  }

  /** The leader's connection state: tabs connect when it is up and are dropped when it goes. */
  private onState(s: ConnectionState): void {
    if (s.state === 'connected') {
      this.wasUp = true;
      for (const c of this.conns.values()) {
        if (c.connectId !== undefined) this.answerConnect(c, c.connectId);
      }
      if (this.pingTimer === undefined) {
        // Tabs check liveness as against a hub: the leader pings them at the hub's interval.
        const every = this.client.info?.ping_interval_ms || 25000;
        this.pingTimer = setInterval(() => this.pingAll(), every);
      }
      return;
    }
    if (s.state === 'resyncing') return;
    if (this.pingTimer !== undefined) clearInterval(this.pingTimer);
    this.pingTimer = undefined;
    const final = s.state === 'offline' && s.code !== undefined && s.code >= 4500;
    const answered = [...this.conns.values()].filter((c) => c.connected || (final && c.connectId !== undefined));
    if (!this.wasUp && !final) return;
    this.wasUp = false;
    const code = final ? s.code! : 1006;
    const reason = s.state === 'offline' ? s.reason : s.state === 'reconnecting' && s.reason ? s.reason : 'leader connection lost';
    for (const c of answered) this.connClosed(c.key);
    this.tab.drop(
      answered.map((c) => c.key),
      code,
      reason,
    );
  }

  private pingAll(): void {
    const keys = [...this.conns.values()].filter((c) => c.connected).map((c) => c.key);
    if (keys.length > 0) this.tab.down(keys, encodeMessage({ push: 'ping' }));
  }

  private send(key: string, msg: Record<string, unknown>): void {
    this.tab.down([key], JSON.stringify(msg));
  }

  private reply(key: string, id: number, result: unknown): void {
    this.send(key, { id, result });
  }

  private fail(key: string, id: number, code: number, name: string, message: string, channel?: string): void {
    this.send(key, { id, error: { code, name, message, channel } });
  }

  private answerConnect(c: ShareConn, id: number): void {
    const info = this.client.info!;
    c.connectId = undefined;
    c.connected = true;
    // No `expires_at`: the leader refreshes its own token; tabs have nothing to refresh. The
    // leader speaks protocol version 1 to the tabs, whatever its own connection negotiated.
    this.reply(c.key, id, { ...info, version: 1, expires_at: undefined });
  }

  /** A tab page went: its connections are closed. */
  tabGone(tab: string): void {
    for (const key of [...this.conns.keys()]) if (key.startsWith(`${tab}/`)) this.connClosed(key);
  }

  /** A tab connection closed: it leaves its channels. */
  connClosed(key: string): void {
    const c = this.conns.get(key);
    if (!c) return;
    this.conns.delete(key);
    for (const name of c.channels) this.leave(name, key);
  }

  /** A frame from a tab connection. */
  fromConn(key: string, frame: string): void {
    for (const line of frameLines(frame)) {
      let msg: Record<string, unknown>;
      try {
        msg = JSON.parse(line);
      } catch {
        continue;
      }
      this.onCommand(key, msg);
    }
  }

  private onCommand(key: string, msg: Record<string, unknown>): void {
    const { id, cmd, ...fields } = msg as { id: number; cmd: string } & Record<string, unknown>;
    if (cmd === 'pong') return;
    let c = this.conns.get(key);
    if (cmd === 'connect') {
      if (!c) {
        c = { key, connected: false, channels: new Set() };
        this.conns.set(key, c);
      }
      if (this.up) this.answerConnect(c, id);
      else c.connectId = id;
      return;
    }
    if (!c || !c.connected) return;
    const channel = typeof fields.channel === 'string' ? fields.channel : undefined;
    switch (cmd) {
      case 'ping':
        this.reply(key, id, {});
        return;
      case 'refresh':
        this.reply(key, id, {});
        return;
      case 'subscribe':
        if (!channel) return this.fail(key, id, 107, 'bad_request', 'subscribe: missing channel');
        if (['sub', 'view', 'filter', 'key', 'presence', 'member', 'preview'].some((f) => fields[f] !== undefined)) {
          return this.fail(key, id, 107, 'bad_request', 'live views, presence and previews are not shared between tabs: use a client without `share`', channel);
        }
        this.subscribe(c, id, channel, fields);
        return;
      case 'unsubscribe':
        if (channel === undefined || fields.sub !== undefined) return this.fail(key, id, 108, 'not_subscribed', 'not subscribed', channel);
        if (!c.channels.has(channel)) return this.fail(key, id, 108, 'not_subscribed', `${channel} is not subscribed`, channel);
        c.channels.delete(channel);
        this.leave(channel, key);
        this.reply(key, id, { channel });
        return;
      default:
        // publish, history, state, volatile, presence_update, ...: forwarded, the reply routed back.
        this.client.request(cmd, fields).then(
          (result) => this.reply(key, id, result),
          (err: unknown) => {
            const e = err instanceof HeraldError ? err : new HeraldError({ code: 0, name: 'error', message: String(err) });
            this.fail(key, id, e.code, e.errorName, e.message, e.channel);
          },
        );
    }
  }

  private subscribe(c: ShareConn, id: number, name: string, msg: Record<string, unknown>): void {
    let ch = this.channels.get(name);
    if (!ch) ch = this.openChannel(name, msg);
    if (ch.release !== undefined) clearTimeout(ch.release);
    ch.release = undefined;
    // A subscribe again (a resubscribe after a gap) replaces the earlier one.
    ch.members.delete(c.key);
    const ticket = ++shareTicket;
    ch.holders.set(c.key, ticket);
    c.channels.add(name);
    if (ch.sub.status === 'subscribed') this.serve(ch, c.key, id, msg, ticket);
    else ch.waiting.push({ key: c.key, id, msg, ticket });
  }

  /** The hub subscription of a channel, from the first tab's position. */
  private openChannel(name: string, msg: Record<string, unknown>): ShareChannel {
    const since = msg.since as Position | undefined;
    const sub = this.client.subscribe(name, { since, snapshot: msg.snapshot === true ? true : undefined });
    const ch: ShareChannel = { name, sub, members: new Set(), holders: new Map(), waiting: [], recent: [], offs: [] };
    this.channels.set(name, ch);
    const live = () => this.channels.get(name) === ch;
    ch.offs.push(
      sub.on('subscribed', (e) => {
        if (!live()) return;
        if (!e.resumed || e.recovered === false) ch.recent = [];
        for (const w of ch.waiting.splice(0)) {
          if (ch.holders.get(w.key) === w.ticket) this.serve(ch, w.key, w.id, w.msg, w.ticket);
        }
      }),
      sub.on('publication', (pub) => {
        if (!live()) return;
        ch.recent.push(pub);
        if (ch.recent.length > SHARE_RING) ch.recent.splice(0, ch.recent.length - SHARE_RING);
        if (ch.members.size > 0) this.tab.down([...ch.members], JSON.stringify({ push: 'pub', pub }));
      }),
      sub.on('resync', () => {
        if (!live()) return;
        // The tabs resubscribe and are told `resync` from their own positions.
        const keys = [...ch.members];
        ch.members.clear();
        const line = JSON.stringify({ push: 'unsubscribe', channel: name, code: 117, name: 'resubscribe', resubscribe: true });
        if (keys.length > 0) this.tab.down(keys, line);
      }),
      sub.on('volatile', (ev) => {
        if (live() && ch.members.size > 0) this.tab.down([...ch.members], JSON.stringify({ push: 'volatile', ...ev }));
      }),
      sub.on('error', (err) => {
        ch.lastError = err;
      }),
      sub.on('unsubscribed', (e) => {
        if (!live()) return;
        // Refused or ended by the hub: every tab hears it.
        this.dropChannel(ch);
        const body = { code: e.code ?? ch.lastError?.code ?? 108, name: e.reason ?? 'unsubscribed', message: ch.lastError?.message ?? `${name} ended by the hub`, channel: name };
        for (const w of ch.waiting) this.send(w.key, { id: w.id, error: body });
        const keys = [...ch.members];
        if (keys.length > 0) this.tab.down(keys, JSON.stringify({ push: 'unsubscribe', channel: name, code: body.code, reason: body.name }));
        for (const key of ch.holders.keys()) this.conns.get(key)?.channels.delete(name);
      }),
    );
    return ch;
  }

  private dropChannel(ch: ShareChannel): void {
    if (ch.release !== undefined) clearTimeout(ch.release);
    for (const off of ch.offs) off();
    this.channels.delete(ch.name);
  }

  /** A connection left a channel; the hub subscription ends a grace period after the last. */
  private leave(name: string, key: string): void {
    const ch = this.channels.get(name);
    if (!ch) return;
    ch.holders.delete(key);
    ch.members.delete(key);
    ch.waiting = ch.waiting.filter((w) => w.key !== key);
    if (ch.holders.size > 0 || ch.release !== undefined) return;
    ch.release = setTimeout(() => {
      ch.release = undefined;
      if (this.channels.get(name) !== ch || ch.holders.size > 0) return;
      this.dropChannel(ch);
      ch.sub.unsubscribe();
    }, SHARE_GRACE_MS);
  }

  /**
   * Answers a tab's subscribe from the hub subscription (established): the reply, then the
   * publications the tab misses up to the leader's position, then live ones (as a member).
   */
  private async serve(ch: ShareChannel, key: string, id: number, msg: Record<string, unknown>, ticket: number): Promise<void> {
    const stale = () => ch.holders.get(key) !== ticket || this.channels.get(ch.name) !== ch || ch.sub.status !== 'subscribed';
    const base = () => ({ channel: ch.name, epoch: ch.sub.position!.epoch, offset: ch.sub.position!.offset, keyed: ch.sub.keyed });
    try {
      let at = msg.since as Position | undefined;
      if (!at && msg.snapshot !== true) {
        this.join(ch, key, id, base(), []);
        return;
      }
      let head: Record<string, unknown> | undefined;
      let pubs: Publication[] = [];
      let reason: string | undefined;
      for (let round = 0; round < 4; round++) {
        if (!at) {
          // A snapshot (asked for, or a keyed resync): the records at some offset, then the rest.
          const st = (await this.client.request('state', { channel: ch.name })) as StateResult;
          if (stale()) return;
          at = { epoch: st.epoch, offset: st.offset };
          head = { channel: ch.name, epoch: st.epoch, offset: st.offset, keyed: true, snapshot: st.records };
          if (reason) Object.assign(head, { recovered: false, reason });
          pubs = [];
        }
        head ??= { channel: ch.name, epoch: at.epoch, offset: at.offset, keyed: ch.sub.keyed, recovered: true };
        const got = await this.missed(ch, at);
        if (stale()) return;
        if (got.reason !== undefined) {
          reason = got.reason;
          if (!ch.sub.keyed) {
            this.join(ch, key, id, { ...base(), recovered: false, reason }, []);
            return;
          }
          at = head = undefined;
          continue;
        }
        pubs.push(...got.pubs);
        if (pubs.length > 0) at = { epoch: at.epoch, offset: pubs[pubs.length - 1].offset };
        // Taken when the reply is sent, so no publication falls between the two.
        const tail = this.ringAfter(ch, at);
        if (tail) {
          this.join(ch, key, id, head, [...pubs, ...tail]);
          return;
        }
      }
      this.join(ch, key, id, { ...base(), recovered: false, reason: reason ?? 'too_many' }, []);
    } catch (err) {
      if (stale()) return;
      // Not answered: the tab retries transient errors and ends on a refusal, as with a hub.
      const e = err instanceof HeraldError ? err : new HeraldError({ code: 0, name: 'error', message: String(err) });
      ch.holders.delete(key);
      this.conns.get(key)?.channels.delete(ch.name);
      this.fail(key, id, e.code, e.errorName, e.message, ch.name);
    }
  }

  /** Sends the reply and the missed publications, and makes the connection a member. */
  private join(ch: ShareChannel, key: string, id: number, head: Record<string, unknown>, pubs: Publication[]): void {
    const lines = [JSON.stringify({ id, result: head }), ...pubs.map((pub) => JSON.stringify({ push: 'pub', pub }))];
    this.tab.down([key], lines.join('\n'));
    ch.members.add(key);
  }

  /** The ring's publications after `at` up to the leader's position; undefined when it lacks some. */
  private ringAfter(ch: ShareChannel, at: Position): Publication[] | undefined {
    const now = ch.sub.position!;
    if (at.epoch !== now.epoch) return undefined;
    if (at.offset >= now.offset) return [];
    const first = ch.recent[0];
    if (!first || first.epoch !== at.epoch || first.offset > at.offset + 1) return undefined;
    return ch.recent.filter((p) => p.offset > at.offset);
  }

  /**
   * The publications after `from` that the ring lacks, read from `history` (possibly none, when
   * the ring has them all); or why they cannot be had (another epoch, trimmed).
   */
  private async missed(ch: ShareChannel, from: Position): Promise<{ pubs: Publication[]; reason?: string }> {
    if (from.epoch !== ch.sub.position!.epoch) return { pubs: [], reason: 'epoch_changed' };
    const got: Publication[] = [];
    let at = from.offset;
    for (let page = 0; page < SHARE_MAX_PAGES; page++) {
      if (this.ringAfter(ch, { epoch: from.epoch, offset: at })) return { pubs: got };
      const h = (await this.client.request('history', { channel: ch.name, since: { epoch: from.epoch, offset: at }, limit: 1000 })) as HistoryResult;
      if (h.reason) return { pubs: [], reason: h.reason };
      let more = false;
      for (const p of h.publications) {
        if (p.offset !== at + 1) continue;
        got.push(p);
        at = p.offset;
        more = true;
      }
      if (from.epoch !== ch.sub.position!.epoch) return { pubs: [], reason: 'epoch_changed' };
      if (!more) break;
    }
    return { pubs: got };
  }
}
