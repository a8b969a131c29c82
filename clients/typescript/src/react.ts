/**
 * React adapter, typed against the few React functions it calls so the package needs no React
 * dependency. Pass your React in once:
 *
 * ```tsx
 * import * as React from 'react';
 * import { createHeraldHooks } from '@herald/client/react';
 * export const { useChannel, useConnectionState, useView, usePresence } = createHeraldHooks(React);
 *
 * function Board({ client }) {
 *   const conn = useConnectionState(client);
 *   const board = useChannel(client, 'demo:board', { snapshot: true });
 *   return <div data-herald-state={conn.state}>{Object.keys(board.records).length} cards</div>;
 * }
 *
 * function Active({ client }) {
 *   const { rows, keys, ready, error } = useView<Task>(client, 'task:board-1', { view: 'ActiveTasks' });
 *   if (error) return <p>{error.message}</p>;
 *   return <ul aria-busy={!ready}>{rows.map((t, i) => <li key={keys[i]}>{t.title}</li>)}</ul>;
 * }
 *
 * function Room({ client }) {
 *   const { members, counts, setPresence } = usePresence(client, 'room:1', { info: { name: 'Alice' } });
 *   return <p onClick={() => setPresence({ name: 'Alice', away: true })}>{counts.users} here:
 *     {members.map((m) => <span key={m.member}>{m.info?.name}</span>)}</p>;
 * }
 * ```
 */
import type { ConnectionState, HeraldClient, SubscribeOptions, ViewOptions } from './index.js';
import { presenceStore, type PresenceState } from './presence.js';
import { channelStore, connectionStore, type ChannelStoreOptions, type ChannelView, type Readable } from './store.js';
import { viewStore, type ViewState } from './view.js';

/** The structural subset of React used here. */
export interface ReactLike {
  useState<S>(initial: S | (() => S)): [S, (value: S) => void];
  useEffect(effect: () => void | (() => void), deps?: readonly unknown[]): void;
  useMemo<T>(factory: () => T, deps: readonly unknown[]): T;
}

export interface HeraldHooks {
  /** The client's connection state; re-renders on every change. */
  useConnectionState(client: HeraldClient): ConnectionState;
  /** Subscribes to a channel while the component is mounted; re-renders on every publication. */
  useChannel<T = unknown>(client: HeraldClient, channel: string, options?: ChannelStoreOptions): ChannelView<T>;
  /**
   * Subscribes to a live view while the component is mounted; re-renders on every change of its
   * rows (`rows` sorted by key, `keys` beside them), when it becomes `ready`, and on an `error`.
   */
  useView<T = unknown>(client: HeraldClient, channel: string, options: ViewOptions): ViewState<T>;
  /**
   * Subscribes to a channel with presence (`presence` defaults to `true`) while the component is
   * mounted; re-renders on every join, update and leave. `members` is sorted by member id;
   * `setPresence` changes this connection's `info` (kept across reconnects).
   */
  usePresence<I = unknown>(client: HeraldClient, channel: string, options?: SubscribeOptions): PresenceView<I>;
}

/** What `usePresence` returns: the presence state and the setter of this connection's `info`. */
export interface PresenceView<I = unknown> extends PresenceState<I> {
  setPresence(info: I): Promise<void>;
}

function useStore<T>(React: ReactLike, store: Readable<T>): T {
  const [value, setValue] = React.useState<T>(() => store.get());
  React.useEffect(() => store.subscribe(setValue), [store]);
  return value;
}

/** Builds the hooks on top of the given React. */
export function createHeraldHooks(React: ReactLike): HeraldHooks {
  return {
    useConnectionState(client) {
      const store = React.useMemo(() => connectionStore(client), [client]);
      return useStore(React, store);
    },
    useChannel<T = unknown>(client: HeraldClient, channel: string, options: ChannelStoreOptions = {}) {
      const key = JSON.stringify(options);
      // eslint-disable-next-line react-hooks/exhaustive-deps
      const store = React.useMemo(() => channelStore<T>(client, channel, options), [client, channel, key]);
      return useStore(React, store);
    },
    useView<T = unknown>(client: HeraldClient, channel: string, options: ViewOptions) {
      const key = JSON.stringify(options);
      // eslint-disable-next-line react-hooks/exhaustive-deps
      const store = React.useMemo(() => viewStore<T>(client, channel, options), [client, channel, key]);
      return useStore(React, store);
    },
    usePresence<I = unknown>(client: HeraldClient, channel: string, options: SubscribeOptions = {}) {
      // `info` changes go through setPresence, not a new subscription.
      const { info: _info, ...rest } = options;
      const key = JSON.stringify(rest);
      // eslint-disable-next-line react-hooks/exhaustive-deps
      const store = React.useMemo(() => presenceStore<I>(client, channel, options), [client, channel, key]);
      const state = useStore(React, store);
      return { ...state, setPresence: store.setPresence };
    },
  };
}
