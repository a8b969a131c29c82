/**
 * One subscription's state: its last delivered position, its status, its keyed records, its
 * presence (presence.ts), and the delivery rules (apply the subscribe reply, resume or resync,
 * drop duplicates, resubscribe on a gap). It reaches its client only through the narrow
 * `SubscriptionHost` seam, so this module does not import the client.
 */

import { Emitter } from './emitter.js';
import { HeraldError, ListenerError } from './errors.js';
import { mergePatch } from './merge-patch.js';
import { Presence } from './presence.js';
import type { ChunkMessage } from './transport.js';
import type {
  KeyedRecord,
  ProgressEvent,
  Position,
  Publication,
  ResyncEvent,
  SubscribedEvent,
  SubscribeOptions,
  SubscribeResult,
  SubscriptionStatus,
  UnsubscribedEvent,
  VolatileEvent,
} from './types.js';

export interface SubscriptionEvents {
  publication: Publication;
  /** The subscription's status changed (see `SubscriptionStatus`). */
  status: SubscriptionStatus;
  subscribed: SubscribedEvent;
  resync: ResyncEvent;
  unsubscribed: UnsubscribedEvent;
  error: HeraldError;
  /** Keyed channels with `records` tracking: the state changed (snapshot, resync or publication). */
  records: ReadonlyMap<string, unknown>;
  /** A volatile event of the channel (protocol §16): not kept, not replayed. */
  volatile: VolatileEvent;
  /** Part of a large publication arrived (protocol §18); `publication` follows once whole. */
  progress: ProgressEvent;
}

/** What a subscription needs from its client. */
export interface SubscriptionHost {
  /** The last handle was dropped: leave the channel. */
  leave(sub: Subscription): void;
  /** Delivery saw a gap or another epoch: end and re-create the subscription from its position. */
  resubscribe(sub: Subscription, needUnsubscribe: boolean): void;
  /** A listener of the subscription threw: report it on the client's `error` event. */
  listenerFailed(err: ListenerError): void;
  /** The member id this client joins presence with (per tab). */
  memberId(): string;
  /** Sends `presence_update` when the subscription is established (else its next subscribe does). */
  updatePresence(sub: Subscription, info: unknown): Promise<void>;
}

/**
 * A subscription to one channel. Emits `publication` in offset order, exactly once, across
 * reconnects. For keyed channels `records` holds the channel's state (snapshot + publications).
 */
export class Subscription extends Emitter<SubscriptionEvents> {
  readonly channel: string;
  readonly options: SubscribeOptions;
  /** The last delivered position (undefined before the first subscribe reply). */
  position?: Position;
  keyed = false;
  private _status: SubscriptionStatus = 'pending';
  /** Keyed state: key → value, kept from snapshots and publications. */
  readonly records = new Map<string, unknown>();
  /**
   * The channel's presence (protocol §15): its members (`presence: true`) or counts
   * (`presence: "counts"`), and this connection's `info`.
   */
  readonly presence: Presence;
  /** Counters, for tests and dashboards. */
  readonly stats = { delivered: 0, duplicatesDropped: 0, gaps: 0, resyncs: 0, resubscribes: 0 };
  /** @internal */ refs = 1;
  /** @internal */ generation = 0;
  /** A large publication being received in parts (protocol §18). */
  private chunks?: { epoch: string; offset: number; next: number; parts: number; text: string[]; received: number };
  /** The client, seen through the seam. */
  private readonly host: SubscriptionHost;

  /** @internal */
  constructor(host: SubscriptionHost, channel: string, options: SubscribeOptions) {
    super();
    this.host = host;
    this.channel = channel;
    this.options = options;
    if (options.since) this.position = { ...options.since };
    this.presence = new Presence(
      { refetch: () => host.resubscribe(this, true), listenerFailed: (err) => host.listenerFailed(err) },
      channel,
      options,
      host.memberId(),
    );
  }

  /**
   * Sets this connection's presence `info` on the channel (`presence_update`). It is kept and
   * sent with every resubscribe, so it survives reconnects; while not subscribed it is only kept.
   * Errors: 111 (above `max_presence_info_bytes`), 107 (no presence on the namespace).
   */
  setPresence(info: unknown): Promise<void> {
    this.presence.info = info;
    return this.host.updatePresence(this, info);
  }

  /** Where the subscription is; every change emits `status`. */
  get status(): SubscriptionStatus {
    return this._status;
  }

  /** @internal */
  _setStatus(status: SubscriptionStatus): void {
    // Parts of a publication never span subscribes: the hub sends it again from its first.
    if (status !== 'subscribed') this.chunks = undefined;
    if (this._status === status) return;
    this._status = status;
    this.emit('status', status);
  }

  /** Listener exceptions go to the client's `error` event. */
  protected listenerFailed(err: ListenerError): void {
    this.host.listenerFailed(new ListenerError(err.event, err.cause, ` of subscription ${this.channel}`));
  }

  /** Drops this handle; the channel is left when the last handle is dropped. */
  unsubscribe(): void {
    this.refs -= 1;
    if (this.refs > 0) return;
    this.host.leave(this);
  }

  /** Resolves when the subscription is (re)established. */
  ready(timeoutMs = 10000): Promise<void> {
    if (this.status === 'subscribed') return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        off();
        offErr();
        reject(new HeraldError({ code: 0, name: 'timeout', message: `subscribe ${this.channel} timed out` }));
      }, timeoutMs);
      const off = this.once('subscribed', () => {
        clearTimeout(timer);
        offErr();
        resolve();
      });
      const offErr = this.once('error', (e) => {
        clearTimeout(timer);
        off();
        reject(e);
      });
    });
  }

  /** @internal */
  _emit<K extends keyof SubscriptionEvents>(event: K, arg: SubscriptionEvents[K]): void {
    this.emit(event, arg);
  }

  /**
   * @internal Applies the subscribe reply: first subscribe, resume (the missed publications are
   * delivered), or resync (the app is told plainly and the subscription continues from the reply).
   */
  _onSubscribeReply(res: SubscribeResult): void {
    const before = this.position;
    const resumed = before !== undefined;
    this.keyed = !!res.keyed;
    this._setStatus('subscribed');
    if (!resumed) {
      this.position = { epoch: res.epoch, offset: res.offset };
      if (res.snapshot) this._setSnapshot(res.snapshot);
      this.emit('subscribed', {
        channel: this.channel,
        position: { ...this.position },
        keyed: this.keyed,
        resumed: false,
        snapshot: res.snapshot,
      });
      return;
    }
    const recovered = res.recovered === true || (res.recovered === undefined && res.epoch === before.epoch && res.offset === before.offset);
    if (recovered && res.epoch === before.epoch) {
      this.emit('subscribed', {
        channel: this.channel,
        position: { epoch: res.epoch, offset: res.offset },
        keyed: this.keyed,
        resumed: true,
        recovered: true,
      });
      for (const pub of res.publications ?? []) this.deliver(pub);
      if (this.position!.offset < res.offset) {
        // The reply promised publications up to `offset` but did not carry them all.
        this.stats.gaps += 1;
        this.host.resubscribe(this, true);
      }
      return;
    }
    // Not recovered: tell the app plainly and continue from the new position.
    this.position = { epoch: res.epoch, offset: res.offset };
    this.stats.resyncs += 1;
    const reason = res.reason ?? (res.epoch !== before.epoch ? 'epoch_changed' : 'not_recovered');
    if (res.snapshot) this._setSnapshot(res.snapshot);
    this.emit('subscribed', {
      channel: this.channel,
      position: { ...this.position },
      keyed: this.keyed,
      resumed: true,
      recovered: false,
      snapshot: res.snapshot,
    });
    this.emit('resync', {
      channel: this.channel,
      reason,
      from: { ...before },
      position: { ...this.position },
      skipped: res.epoch === before.epoch ? Math.max(0, res.offset - before.offset) : undefined,
      snapshot: res.snapshot,
    });
  }

  /**
   * @internal A `chunk` push: one part of a large publication. The parts come in order on one
   * connection; the last completes the publication, delivered like any other.
   */
  _onChunk(c: ChunkMessage): void {
    if (this.status !== 'subscribed' || !this.position) return;
    if (c.part === 0) this.chunks = { epoch: c.epoch, offset: c.offset, next: 0, parts: c.parts, text: [], received: 0 };
    const at = this.chunks;
    if (!at || at.offset !== c.offset || at.epoch !== c.epoch || at.next !== c.part || at.parts !== c.parts || typeof c.text !== 'string') {
      // A part is missing: what was received cannot be completed.
      this.chunks = undefined;
      this.stats.gaps += 1;
      this.host.resubscribe(this, true);
      return;
    }
    at.text.push(c.text);
    at.next += 1;
    at.received += utf8Length(c.text);
    if (at.next < at.parts) {
      this.emit('progress', { channel: this.channel, offset: c.offset, received: at.received, bytes: c.bytes });
      return;
    }
    this.chunks = undefined;
    let pub: Publication;
    try {
      pub = JSON.parse(at.text.join('')) as Publication;
    } catch {
      this.stats.gaps += 1;
      this.host.resubscribe(this, true);
      return;
    }
    this._onPublication(pub);
  }

  /** @internal A `pub` push for this channel. */
  _onPublication(pub: Publication): void {
    if (this.status !== 'subscribed' || !this.position) return;
    if (pub.epoch !== this.position.epoch) {
      this.stats.gaps += 1;
      this.host.resubscribe(this, true);
      return;
    }
    this.deliver(pub);
  }

  /** Delivers a publication if it is the next one; drops duplicates; resubscribes on a gap. */
  private deliver(pub: Publication): void {
    const last = this.position!.offset;
    if (pub.epoch !== this.position!.epoch) return;
    if (pub.offset <= last) {
      this.stats.duplicatesDropped += 1;
      return;
    }
    if (pub.offset !== last + 1) {
      this.stats.gaps += 1;
      this.host.resubscribe(this, true);
      return;
    }
    this.position!.offset = pub.offset;
    this.stats.delivered += 1;
    if (this.keyed) this._apply(pub);
    this.emit('publication', pub);
  }

  /** @internal Replaces the keyed state with a snapshot. */
  _setSnapshot(snapshot: KeyedRecord[]): void {
    this.records.clear();
    for (const r of snapshot) this.records.set(r.key, r.value);
    this.emit('records', this.records);
  }

  /** @internal Applies one keyed publication. */
  _apply(pub: Publication): void {
    if (pub.key === undefined) return;
    const op = pub.op ?? 'upsert';
    if (op === 'delete') this.records.delete(pub.key);
    else if (op === 'merge') this.records.set(pub.key, mergePatch(this.records.get(pub.key), pub.data));
    else this.records.set(pub.key, pub.data);
    this.emit('records', this.records);
  }
}

/** Whether two optional positions are the same. */
function samePosition(a?: Position, b?: Position): boolean {
  return a === b || (a !== undefined && b !== undefined && a.epoch === b.epoch && a.offset === b.offset);
}

/** What in `again` differs from the options the subscription was made with (undefined: nothing). */
export function optionsConflict(have: SubscribeOptions, again: SubscribeOptions): string | undefined {
  if (again.snapshot !== undefined && !!again.snapshot !== !!have.snapshot) return `snapshot: ${!!have.snapshot}`;
  if (again.since !== undefined && !samePosition(again.since, have.since)) {
    return have.since ? `since ${have.since.epoch}:${have.since.offset}` : 'no since';
  }
  if (again.presence !== undefined && (again.presence || undefined) !== (have.presence || undefined)) {
    return have.presence ? `presence: ${JSON.stringify(have.presence)}` : 'no presence';
  }
  return undefined;
}

/** Bytes of `s` in UTF-8 (the hub counts parts in bytes). */
function utf8Length(s: string): number {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c < 0xdc00) {
      n += 4;
      i++;
    } else n += 3;
  }
  return n;
}
