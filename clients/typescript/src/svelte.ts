/**
 * Svelte adapter. Svelte stores are any object with `subscribe(run) => unsubscribe`, so these work
 * with `$store` syntax without a dependency on svelte:
 *
 * ```svelte
 * <script>
 *   import { HeraldClient } from '@herald/client';
 *   import { connectionState, channel } from '@herald/client/svelte';
 *   const client = new HeraldClient(); client.connect();
 *   const conn = connectionState(client);
 *   const board = channel(client, 'demo:board', { snapshot: true });
 * </script>
 * <span data-herald-state={$conn.state}>{$conn.state}</span>
 * {#each Object.entries($board.records) as [key, card]}<p>{card.title}</p>{/each}
 * ```
 *
 * A live view (protocol §14) as a store, its rows sorted by key:
 *
 * ```svelte
 * <script>
 *   import { viewStore } from '@herald/client/svelte';
 *   const active = viewStore(client, 'task:board-1', { view: 'ActiveTasks' });
 * </script>
 * {#if $active.error}<p>{$active.error.message}</p>{/if}
 * {#each $active.rows as task, i ($active.keys[i])}<p>{task.title}</p>{/each}
 * ```
 *
 * A channel's presence (protocol §15) as a store, its members sorted by member id:
 *
 * ```svelte
 * <script>
 *   import { presenceStore } from '@herald/client/svelte';
 *   const room = presenceStore(client, 'room:1', { info: { name: 'Alice' } });
 * </script>
 * <p>{$room.counts.users} here</p>
 * {#each $room.members as m (m.member)}<span>{m.info.name}</span>{/each}
 * <button on:click={() => room.setPresence({ name: 'Alice', away: true })}>away</button>
 * ```
 */
export { connectionStore as connectionState, channelStore as channel } from './store.js';
export type { Readable, ChannelView, ChannelStoreOptions } from './store.js';
export { viewStore } from './view.js';
export type { ViewState, ViewStore } from './view.js';
export { presenceStore } from './presence.js';
export type { PresenceState, PresenceStore } from './presence.js';
