/**
 * Presence (protocol §15): one subscription's view of its channel's members, the delivery rules
 * of the member list (`presence_list` replaces, `presence` pushes apply once in offset order, a
 * resume replays or replaces), the per-tab member id, and a framework-neutral store of a
 * channel's presence for the React and Svelte adapters. Like view.ts it reaches its subscription
 * only through a narrow seam (`PresenceHost`, and `PresenceSource` for the store), so this module
 * imports neither the subscription nor the client.
 */

import { Emitter } from './emitter.js';
import { HeraldError, ListenerError } from './errors.js';
import type {
  Member,
  PresenceChange,
  PresenceCounts,
  PresenceListMessage,
  PresenceMessage,
  PresenceStatsMessage,
  Position,
  SubscribeOptions,
} from './types.js';

export interface PresenceEvents {
  /** A member joined (also for each new member when a fresh list replaced the members). */
  join: PresenceChange;
  /** A member left (also for each member a fresh list no longer holds). */
  leave: PresenceChange;
  /** A member's `info` changed, or it moved to another connection or node. */
  update: PresenceChange;
  /** The members or the counts changed (after the events of the change). */
  change: Presence;
}

/** What presence needs from its subscription. */
export interface PresenceHost {
  /** The member list cannot be patched (another epoch): subscribe again for a fresh list. */
  refetch(): void;
  /** A listener threw: report it on the client's `error` event. */
  listenerFailed(err: ListenerError): void;
}

/** How a subscription follows presence: the members, only their counts, or not at all. */
export type PresenceFollow = 'members' | 'counts' | undefined;

/** The key under which the per-tab member id is kept in `sessionStorage`. */
const MEMBER_ID_KEY = 'herald.member';

/** A fresh random member id (16 hex digits). */
function randomId(): string {
  const c = (globalThis as { crypto?: { getRandomValues?: (a: Uint8Array) => Uint8Array } }).crypto;
  const bytes = new Uint8Array(8);
  if (c?.getRandomValues) c.getRandomValues(bytes);
  else for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
  return [...bytes].map((b) => b.toString(16).padStart(2, '0')).join('');
}

/**
 * The member id of this tab: kept in `sessionStorage` (so a reload or reconnect rejoins as the
 * same member) when there is one, else a new one (per client instance).
 */
export function tabMemberId(): string {
  let storage: { getItem(k: string): string | null; setItem(k: string, v: string): void } | undefined;
  try {
    storage = (globalThis as { sessionStorage?: typeof storage }).sessionStorage;
  } catch {
    // Access can throw (sandboxed frames, storage disabled).
    storage = undefined;
  }
  if (!storage) return randomId();
  try {
    const kept = storage.getItem(MEMBER_ID_KEY);
    if (kept) return kept;
    const id = randomId();
    storage.setItem(MEMBER_ID_KEY, id);
    return id;
  } catch {
    return randomId();
  }
}

/** Members and distinct users of a member map. */
function countOf(members: ReadonlyMap<string, Member>): PresenceCounts {
  return { members: members.size, users: new Set([...members.values()].map((m) => m.user)).size };
}

const byMember = (a: Member, b: Member) => (a.member < b.member ? -1 : a.member > b.member ? 1 : 0);

/** A member as the hub sends it (`null` info is no info). */
function memberOf(m: Partial<Member> & { member: string }): Member {
  const out: Member = { member: m.member, user: m.user ?? '' };
  if (m.client !== undefined) out.client = m.client;
  if (m.node !== undefined) out.node = m.node;
  if (m.info !== undefined && m.info !== null) out.info = m.info;
  return out;
}

/** Whether two members say the same (field by field, `info` as JSON). */
function sameMember(a: Member, b: Member): boolean {
  return a.user === b.user && a.client === b.client && a.node === b.node && JSON.stringify(a.info) === JSON.stringify(b.info);
}

/**
 * A subscription's presence: the channel's members (`presence: true`) or their counts
 * (`presence: "counts"`), kept exact across reconnects, and this connection's own `info`.
 *
 * ```ts
 * const sub = client.subscribe('room:1', { presence: true, info: { name: 'Alice' } });
 * sub.presence.on('join', (e) => console.log('joined', e.member.user, e.member.info));
 * sub.presence.on('change', (p) => render([...p.members.values()]));
 * ```
 */
export class Presence extends Emitter<PresenceEvents> {
  readonly channel: string;
  /** How the subscription follows presence (undefined: it does not; it may still be a member). */
  readonly follow: PresenceFollow;
  /** The member id this tab joins with (the hub's member id is `USER/` + it). */
  readonly memberId: string;
  /** This connection's `info`, sent with every subscribe (so a resubscribe keeps it). */
  info: unknown;
  /** This connection's member id on the hub (`USER/ID`), once connected. */
  self?: string;
  /** The presence position of the last list or push applied (resume point). */
  position?: Position;
  /** True once the first list (or counts) arrived. */
  ready = false;
  /** Counters, for tests and dashboards. */
  readonly stats = { events: 0, duplicatesDropped: 0, lists: 0, replaced: 0, refetches: 0 };
  private readonly _members = new Map<string, Member>();
  private _counts: PresenceCounts = { members: 0, users: 0 };
  /** The parts of a `presence_list` received so far (`more: true`), with their position. */
  private _parts?: { epoch: string; offset: number; members: Member[] };
  private readonly host: PresenceHost;

  /** @internal */
  constructor(host: PresenceHost, channel: string, options: SubscribeOptions, memberId: string) {
    super();
    this.host = host;
    this.channel = channel;
    this.follow = options.presence === true ? 'members' : options.presence === 'counts' ? 'counts' : undefined;
    this.memberId = memberId;
    this.info = options.info;
  }

  /** The members by member id (`presence: true`; empty in counts mode). */
  get members(): ReadonlyMap<string, Member> {
    return this._members;
  }

  /** Members and distinct users: from the hub in counts mode, else from `members`. */
  get counts(): PresenceCounts {
    return { ...this._counts };
  }

  /** The members of each user (their tabs and devices), each list sorted by member id. */
  byUser(): Map<string, Member[]> {
    const out = new Map<string, Member[]>();
    for (const m of [...this._members.values()].sort(byMember)) {
      const list = out.get(m.user);
      if (list) list.push(m);
      else out.set(m.user, [m]);
    }
    return out;
  }

  /** Whether the subscription sends presence fields (it follows, or it has `info`). */
  get asked(): boolean {
    return this.follow !== undefined || this.info !== undefined;
  }

  /** @internal The presence fields of a `subscribe` command (none when presence was not asked). */
  _fields(): Record<string, unknown> {
    if (!this.asked) return {};
    const fields: Record<string, unknown> = { member: this.memberId, info: this.info };
    if (this.follow === 'members') {
      fields.presence = true;
      if (this.position) fields.presence_since = { epoch: this.position.epoch, offset: this.position.offset };
    } else if (this.follow === 'counts') {
      fields.presence = 'counts';
    }
    return fields;
  }

  /** @internal */
  _emit<K extends keyof PresenceEvents>(event: K, arg: PresenceEvents[K]): void {
    this.emit(event, arg);
  }

  /** Listener exceptions go to the client's `error` event. */
  protected listenerFailed(err: ListenerError): void {
    this.host.listenerFailed(new ListenerError(err.event, err.cause, ` of presence ${this.channel}`));
  }

  /**
   * @internal A `presence_list` push: `recovered: true` keeps the members (the missed changes
   * follow as pushes); otherwise its members replace ours, with an event for each difference.
   */
  _onList(msg: PresenceListMessage): void {
    if (this.follow !== 'members') return;
    if (msg.more === true || this._parts) {
      // A list in parts: collect them (all at one position), apply the whole list at the last.
      const parts = this._parts;
      const same = parts !== undefined && parts.epoch === msg.epoch && parts.offset === msg.offset;
      const members = [...(same ? parts.members : []), ...(msg.members ?? [])];
      if (msg.more === true) {
        this._parts = { epoch: msg.epoch, offset: msg.offset, members };
        return;
      }
      this._parts = undefined;
      msg = { ...msg, members };
    }
    this.stats.lists += 1;
    if (msg.recovered === true && this.position && msg.epoch === this.position.epoch) {
      // The replayed pushes that follow advance the position.
      this.ready = true;
      return;
    }
    if (this.position) this.stats.replaced += 1;
    this.position = { epoch: msg.epoch, offset: msg.offset };
    const fresh = new Map<string, Member>();
    for (const m of msg.members ?? []) fresh.set(m.member, memberOf(m));
    const changes: Array<[keyof PresenceEvents, PresenceChange]> = [];
    for (const [id, old] of this._members) {
      if (!fresh.has(id)) changes.push(['leave', { event: 'leave', member: old }]);
    }
    for (const [id, m] of fresh) {
      const old = this._members.get(id);
      if (!old) changes.push(['join', { event: 'join', member: m }]);
      else if (!sameMember(old, m)) changes.push(['update', { event: 'update', member: m, previous: old }]);
    }
    this._members.clear();
    for (const [id, m] of fresh) this._members.set(id, m);
    this._counts = countOf(this._members);
    this.ready = true;
    for (const [event, change] of changes) this.emit(event, change);
    this.emit('change', this);
  }

  /** @internal A `presence` push: applied once, in offset order; another epoch needs a fresh list. */
  _onEvent(msg: PresenceMessage): void {
    if (this.follow !== 'members' || !this.position) return;
    if (msg.epoch !== this.position.epoch) {
      // Another presence stream: the members cannot be patched from it. Forget the position so
      // the subscribe that follows gets a fresh list.
      this.stats.refetches += 1;
      this.position = undefined;
      this.host.refetch();
      return;
    }
    if (msg.offset <= this.position.offset) {
      this.stats.duplicatesDropped += 1;
      return;
    }
    this.position = { epoch: msg.epoch, offset: msg.offset };
    this.stats.events += 1;
    const previous = this._members.get(msg.member);
    const position = { epoch: msg.epoch, offset: msg.offset };
    let change: PresenceChange;
    if (msg.event === 'leave') {
      if (!previous) return;
      this._members.delete(msg.member);
      change = { event: 'leave', member: previous, position };
    } else {
      // `client` and `node` are what the push says (an update may be a move to another node).
      const m = memberOf(msg);
      this._members.set(msg.member, m);
      change = previous ? { event: 'update', member: m, previous, position } : { event: 'join', member: m, position };
    }
    this._counts = countOf(this._members);
    this.emit(change.event, change);
    this.emit('change', this);
  }

  /** @internal A `presence_stats` push (counts mode): drop it when older than the last one. */
  _onStats(msg: PresenceStatsMessage): void {
    if (this.follow !== 'counts') return;
    const pos = this.position;
    if (pos && pos.epoch === msg.epoch && msg.offset < pos.offset) {
      this.stats.duplicatesDropped += 1;
      return;
    }
    this.position = { epoch: msg.epoch, offset: msg.offset };
    this.ready = true;
    this._counts = { members: msg.members, users: msg.users };
    this.emit('change', this);
  }
}

// ------------------------------------------------------------------------------------------------
// Presence as a store (the React and Svelte adapters)
// ------------------------------------------------------------------------------------------------

/** What `presenceStore` needs of a subscription (`Subscription` has it). */
export interface PresenceHandle {
  readonly presence: Presence;
  setPresence(info: unknown): Promise<void>;
  unsubscribe(): void;
  on(event: 'error', fn: (e: HeraldError) => void): () => void;
}

/** What `presenceStore` needs of a client (`HeraldClient` has it). */
export interface PresenceSource {
  subscribe(channel: string, options: SubscribeOptions): PresenceHandle;
}

/** A channel's presence as the adapters show it; a new object on every change. */
export interface PresenceState<I = unknown> {
  channel: string;
  /** The members, sorted by member id (empty in counts mode). */
  members: Member<I>[];
  /** The members of each user (tabs and devices). */
  byUser: Map<string, Member<I>[]>;
  counts: PresenceCounts;
  /** True once the first member list (or counts) arrived. */
  ready: boolean;
  /** The last error of the subscription (a refused one ends it). */
  error?: HeraldError;
}

/** The Svelte store contract, and this connection's `info`. */
export interface PresenceStore<I = unknown> {
  subscribe(run: (value: PresenceState<I>) => void): () => void;
  /** The current value. */
  get(): PresenceState<I>;
  /** Sets this connection's `info` (kept for the next subscribe while the store is stopped). */
  setPresence(info: I): Promise<void>;
}

/**
 * A channel's presence as a store: the channel is subscribed with `presence` (default `true`)
 * while the store has subscribers and left when the last one stops.
 */
export function presenceStore<I = unknown>(client: PresenceSource, channel: string, options: SubscribeOptions = {}): PresenceStore<I> {
  const opts: SubscribeOptions = { ...options, presence: options.presence ?? true };
  const empty = (): PresenceState<I> => ({ channel, members: [], byUser: new Map(), counts: { members: 0, users: 0 }, ready: false });
  let value = empty();
  const runs = new Set<(v: PresenceState<I>) => void>();
  let handle: PresenceHandle | undefined;
  let offs: Array<() => void> = [];

  const set = (patch: Partial<PresenceState<I>>) => {
    value = { ...value, ...patch };
    for (const run of [...runs]) run(value);
  };
  const stateOf = (p: Presence): Partial<PresenceState<I>> => ({
    members: [...p.members.values()].sort(byMember) as Member<I>[],
    byUser: p.byUser() as Map<string, Member<I>[]>,
    counts: p.counts,
    ready: p.ready,
  });

  const start = () => {
    value = empty();
    let h: PresenceHandle;
    try {
      h = client.subscribe(channel, opts);
    } catch (err) {
      // The channel is already subscribed with other options (105): the store's error.
      if (!(err instanceof HeraldError)) throw err;
      value = { ...value, error: err };
      return;
    }
    handle = h;
    offs = [h.presence.on('change', (p) => set(stateOf(p))), h.on('error', (e) => set({ error: e }))];
    value = { ...value, ...stateOf(h.presence) };
  };
  const stop = () => {
    for (const off of offs) off();
    offs = [];
    handle?.unsubscribe();
    handle = undefined;
  };

  return {
    get: () => value,
    setPresence(info) {
      opts.info = info;
      return handle ? handle.setPresence(info) : Promise.resolve();
    },
    subscribe(run) {
      if (runs.size === 0) start();
      runs.add(run);
      run(value);
      return () => {
        if (!runs.delete(run)) return;
        if (runs.size === 0) stop();
      };
    },
  };
}
