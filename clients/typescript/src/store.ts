/**
 * Framework-neutral observable views of a client, used by the React and Svelte adapters. A store
 * has the Svelte store contract: `subscribe(run)` calls `run` with the current value at once and on
 * every change, and returns the function that stops it.
 */
import type { ConnectionState, HeraldClient, Publication, Position, ResyncEvent, SubscribeOptions, Subscription } from './index.js';

export interface Readable<T> {
  subscribe(run: (value: T) => void): () => void;
  /** The current value. */
  get(): T;
}

/** The connection state as a store. */
export function connectionStore(client: HeraldClient): Readable<ConnectionState> {
  return {
    get: () => client.state,
    subscribe(run) {
      run(client.state);
      return client.on('state', run);
    },
  };
}

export interface ChannelView<T = unknown> {
  channel: string;
  /**
   * `subscribed` while publications flow; `pending` while (re)subscribing or reconnecting;
   * `offline` while the client is offline (circuit breaker open, final close); `unsubscribed` after
   * an error ended it.
   */
  status: 'pending' | 'subscribed' | 'offline' | 'unsubscribed';
  /** The latest publications, oldest first (at most `keep`). */
  publications: Publication<T>[];
  /** Keyed channels: the records (key → value). */
  records: Record<string, T>;
  position?: Position;
  /** The last resync, if one happened. */
  resync?: ResyncEvent;
  error?: string;
}

export interface ChannelStoreOptions extends SubscribeOptions {
  /** How many publications to keep in `publications` (default 100). */
  keep?: number;
}

/**
 * A channel as a store. The channel is subscribed while the store has subscribers and left when
 * the last one stops.
 */
export function channelStore<T = unknown>(
  client: HeraldClient,
  channel: string,
  options: ChannelStoreOptions = {},
): Readable<ChannelView<T>> {
  const keep = options.keep ?? 100;
  const empty = (): ChannelView<T> => ({ channel, status: 'pending', publications: [], records: {} });
  let value = empty();
  const runs = new Set<(v: ChannelView<T>) => void>();
  let sub: Subscription | undefined;
  let offs: Array<() => void> = [];

  const set = (patch: Partial<ChannelView<T>>) => {
    value = { ...value, ...patch };
    for (const run of [...runs]) run(value);
  };
  const recordsOf = (s: Subscription) => Object.fromEntries(s.records) as Record<string, T>;

  const start = () => {
    value = empty();
    const s = client.subscribe(channel, options);
    sub = s;
    offs = [
      s.on('subscribed', (e) => set({ status: 'subscribed', position: e.position, records: recordsOf(s) })),
      s.on('publication', (p) => {
        const pubs = value.publications.concat([p as Publication<T>]);
        if (pubs.length > keep) pubs.splice(0, pubs.length - keep);
        set({ publications: pubs, position: { epoch: p.epoch, offset: p.offset }, records: recordsOf(s) });
      }),
      s.on('resync', (e) => set({ resync: e, position: e.position, records: recordsOf(s), publications: [] })),
      s.on('error', (e) => set({ error: e.message })),
      s.on('unsubscribed', () => set({ status: 'unsubscribed' })),
      s.on('status', (st) => {
        const view = st === 'subscribed' || st === 'offline' || st === 'unsubscribed' ? st : 'pending';
        if (view !== value.status) set({ status: view });
      }),
    ];
    if (s.status === 'subscribed') set({ status: 'subscribed', position: s.position, records: recordsOf(s) });
  };
  const stop = () => {
    for (const off of offs) off();
    offs = [];
    sub?.unsubscribe();
    sub = undefined;
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
