/**
 * Live views (protocol §14): one view subscription's rows, its position, and the delivery rules
 * (initial rows replace, events apply once in offset order, a resume replays or replaces), and a
 * framework-neutral store of a view for the React and Svelte adapters. Like subscription.ts it
 * reaches its client only through a narrow seam (`ViewHost`, and `ViewSource` for the store), so
 * this module does not import the client.
 */

import { Emitter } from './emitter.js';
import { HeraldError, ListenerError } from './errors.js';
import type {
  Position,
  SubscriptionStatus,
  UnsubscribedEvent,
  ViewChange,
  ViewEventMessage,
  ViewOptions,
  ViewSubscribedEvent,
  ViewSubscribeResult,
  VolatileEvent,
} from './types.js';

export interface LiveViewEvents<T> {
  /** A record entered the view. */
  insert: ViewChange<T>;
  /** A record of the view changed and still matches. */
  update: ViewChange<T>;
  /** A record left the view (`reason`: `left` or `deleted`). */
  delete: ViewChange<T>;
  /** The rows after initial rows or fresh ones replaced them, and after each event. */
  rows: ReadonlyMap<string, T>;
  /** A subscribe reply was applied (first one, resume, or fresh rows after a failed resume). */
  subscribed: ViewSubscribedEvent;
  /** The view's status changed. */
  status: SubscriptionStatus;
  unsubscribed: UnsubscribedEvent;
  /** A refused subscribe (118 invalid_filter, 107, 116, ...) or a transient failure. */
  error: HeraldError;
  /** A volatile event of the view's channel (protocol §16): not kept, not replayed, not filtered. */
  volatile: VolatileEvent;
}

/** What a live view needs from its client. */
export interface ViewHost {
  /** The last handle was dropped: end the view on the hub. */
  leaveView(view: LiveView<unknown>): void;
  /** Delivery saw another epoch: end and re-create the view from its position. */
  resubscribeView(view: LiveView<unknown>, needUnsubscribe: boolean): void;
  /** A listener of the view threw: report it on the client's `error` event. */
  listenerFailed(err: ListenerError): void;
}

/** The view's name on the connection, as the hub derives it (`ViewQuery::name`). */
export function viewName(channel: string, o: ViewOptions): string {
  if (o.sub !== undefined) return o.sub;
  if (o.view !== undefined) return `${channel}#${o.view}`;
  if (o.filter !== undefined) return `${channel}#filter`;
  if (o.key !== undefined) return `${channel}#key:${o.key}`;
  return channel;
}

/** What in `again` differs from the options a view was made with (undefined: nothing). */
export function viewOptionsConflict(have: ViewOptions, again: ViewOptions): string | undefined {
  for (const f of ['view', 'filter', 'key'] as const) {
    if (have[f] !== again[f]) return have[f] === undefined ? `no ${f}` : `${f} ${JSON.stringify(have[f])}`;
  }
  return undefined;
}

/**
 * A live view of a keyed channel: `rows` holds the records that match, kept exact across
 * reconnects. Events come in offset order, exactly once.
 *
 * ```ts
 * const view = client.subscribeView<Task>('task:board-1', { view: 'ActiveTasks' });
 * view.on('insert', (e) => console.log('new', e.key, e.record));
 * await view.ready;
 * console.log([...view.rows.values()]);
 * ```
 */
export class LiveView<T = unknown> extends Emitter<LiveViewEvents<T>> {
  readonly channel: string;
  /** The subscription's name on the connection (`sub`). */
  readonly name: string;
  readonly options: ViewOptions;
  /** Resolves after the first subscribe reply; rejects if the view is refused or ended first. */
  readonly ready: Promise<void>;
  /** The position of the last event applied, or of the last reply (undefined before the first). */
  position?: Position;
  /** The filter in force, as the hub stated it in the last reply. */
  filter?: string;
  /** Counters, for tests and dashboards. */
  readonly stats = { events: 0, duplicatesDropped: 0, resyncs: 0, resubscribes: 0 };
  /** @internal */ refs = 1;
  /** @internal */ generation = 0;
  private readonly _rows = new Map<string, T>();
  private _status: SubscriptionStatus = 'pending';
  private readonly host: ViewHost;
  private settle?: { resolve: () => void; reject: (e: HeraldError) => void };

  /** @internal */
  constructor(host: ViewHost, channel: string, options: ViewOptions) {
    super();
    this.host = host;
    this.channel = channel;
    this.options = { ...options };
    this.name = viewName(channel, options);
    this.ready = new Promise<void>((resolve, reject) => {
      this.settle = { resolve, reject };
    });
    // Awaiting `ready` is optional: an unobserved refusal is reported on `error`, not as an
    // unhandled rejection.
    this.ready.catch(() => {});
  }

  /** The matching records, key → record. */
  get rows(): ReadonlyMap<string, T> {
    return this._rows;
  }

  /** Where the view is; every change emits `status`. */
  get status(): SubscriptionStatus {
    return this._status;
  }

  /** Drops this handle; the view is ended when the last handle is dropped. */
  unsubscribe(): void {
    this.refs -= 1;
    if (this.refs > 0) return;
    this.host.leaveView(this as LiveView<unknown>);
  }

  /** @internal The fields of the `subscribe` command (`since` when resuming). */
  _command(): Record<string, unknown> {
    const { view, filter, key } = this.options;
    const since = this.position && { epoch: this.position.epoch, offset: this.position.offset };
    return { channel: this.channel, view, filter, key, sub: this.name, since };
  }

  /** @internal */
  _setStatus(status: SubscriptionStatus): void {
    if (this._status === status) return;
    this._status = status;
    this.emit('status', status);
  }

  /** @internal */
  _emit<K extends keyof LiveViewEvents<T>>(event: K, arg: LiveViewEvents<T>[K]): void {
    this.emit(event, arg);
  }

  /** @internal `ready` rejects with `err` unless it already resolved. */
  _fail(err: HeraldError): void {
    const s = this.settle;
    this.settle = undefined;
    s?.reject(err);
  }

  /** Listener exceptions go to the client's `error` event. */
  protected listenerFailed(err: ListenerError): void {
    this.host.listenerFailed(new ListenerError(err.event, err.cause, ` of view ${this.name}`));
  }

  /**
   * @internal Applies a subscribe reply: initial rows replace the rows (first subscribe, or a
   * resume the hub could not serve); a recovered resume applies the replayed events.
   */
  _onReply(res: ViewSubscribeResult<T>): void {
    const before = this.position;
    this.filter = res.filter;
    this._setStatus('subscribed');
    const resumed = before !== undefined;
    const replayed = resumed && res.recovered === true && res.initial === undefined && res.epoch === before.epoch;
    if (replayed) {
      for (const e of res.events ?? []) this.apply(e);
      // The writes between the last event and `offset` did not touch the view.
      if (this.position!.offset < res.offset) this.position = { epoch: res.epoch, offset: res.offset };
    } else {
      if (resumed) this.stats.resyncs += 1;
      this.position = { epoch: res.epoch, offset: res.offset };
      this._rows.clear();
      for (const r of res.initial ?? []) this._rows.set(r.key, r.value);
    }
    this.emit('subscribed', {
      channel: this.channel,
      sub: this.name,
      position: { ...this.position! },
      filter: res.filter,
      resumed,
      recovered: resumed ? replayed : undefined,
      reason: resumed && !replayed ? (res.reason ?? (res.epoch !== before.epoch ? 'epoch_changed' : 'not_recovered')) : undefined,
    });
    if (!replayed) this.emit('rows', this._rows);
    const s = this.settle;
    this.settle = undefined;
    s?.resolve();
  }

  /** @internal A `view` push for this view. */
  _onEvent(e: ViewEventMessage<T>): void {
    if (this._status !== 'subscribed' || !this.position) return;
    if (e.pub.epoch !== this.position.epoch) {
      // Another stream: the rows cannot be patched from it; resume (the hub replaces them).
      this.host.resubscribeView(this as LiveView<unknown>, true);
      return;
    }
    this.apply(e);
  }

  /** Applies one event unless it is at or before the position (a duplicate). */
  private apply(e: ViewEventMessage<T>): void {
    const pos = this.position!;
    if (e.pub.epoch !== pos.epoch) return;
    if (e.pub.offset <= pos.offset) {
      this.stats.duplicatesDropped += 1;
      return;
    }
    this.position = { epoch: pos.epoch, offset: e.pub.offset };
    this.stats.events += 1;
    const previous = this._rows.get(e.key);
    if (e.operation === 'delete') this._rows.delete(e.key);
    else this._rows.set(e.key, e.record as T);
    const change: ViewChange<T> = { operation: e.operation, key: e.key, publication: e.pub };
    if (e.record !== undefined && e.operation !== 'delete') change.record = e.record;
    if (previous !== undefined) change.previous = previous;
    if (e.reason !== undefined) change.reason = e.reason;
    this.emit(e.operation, change);
    this.emit('rows', this._rows);
  }
}

// ------------------------------------------------------------------------------------------------
// A view as a store (the React and Svelte adapters)
// ------------------------------------------------------------------------------------------------

/** What `viewStore` needs of a client (`HeraldClient` has it). */
export interface ViewSource {
  subscribeView<T = unknown>(channel: string, options: ViewOptions): LiveView<T>;
}

/** A view as the adapters show it; a new object on every change. */
export interface ViewState<T = unknown> {
  channel: string;
  /** The rows, sorted by key. */
  rows: T[];
  /** The rows' keys, in the order of `rows`. */
  keys: string[];
  /** True once the first reply was applied. */
  ready: boolean;
  /** As `LiveView.status`. */
  status: SubscriptionStatus;
  /** The last error (a refused view ends `unsubscribed` with it). */
  error?: HeraldError;
}

/** The Svelte store contract: `subscribe(run)` runs at once and on every change. */
export interface ViewStore<T> {
  subscribe(run: (value: ViewState<T>) => void): () => void;
  /** The current value. */
  get(): ViewState<T>;
}

/**
 * A view as a store. The view is subscribed while the store has subscribers and ended when the
 * last one stops.
 */
export function viewStore<T = unknown>(client: ViewSource, channel: string, options: ViewOptions): ViewStore<T> {
  const empty = (): ViewState<T> => ({ channel, rows: [], keys: [], ready: false, status: 'pending' });
  let value = empty();
  const runs = new Set<(v: ViewState<T>) => void>();
  let view: LiveView<T> | undefined;
  let offs: Array<() => void> = [];

  const set = (patch: Partial<ViewState<T>>) => {
    value = { ...value, ...patch };
    for (const run of [...runs]) run(value);
  };
  const rowsOf = (v: LiveView<T>) => {
    const keys = [...v.rows.keys()].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    return { keys, rows: keys.map((k) => v.rows.get(k) as T) };
  };

  const start = () => {
    value = empty();
    let v: LiveView<T>;
    try {
      v = client.subscribeView<T>(channel, options);
    } catch (err) {
      // A conflicting view of the same name (105) is the store's error; a misuse is thrown.
      if (!(err instanceof HeraldError)) throw err;
      value = { ...value, status: 'unsubscribed', error: err };
      return;
    }
    view = v;
    offs = [
      v.on('rows', () => set({ ...rowsOf(v), ready: true })),
      v.on('subscribed', () => set({ ready: true, status: v.status })),
      v.on('error', (e) => set({ error: e })),
      v.on('status', (st) => set({ status: st })),
    ];
    if (v.position) value = { ...value, ...rowsOf(v), ready: true, status: v.status };
  };
  const stop = () => {
    for (const off of offs) off();
    offs = [];
    view?.unsubscribe();
    view = undefined;
  };

  return {
    get: () => value,
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
