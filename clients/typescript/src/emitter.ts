/** A small typed event emitter, the base of the client and of each subscription. */

import { ListenerError } from './errors.js';

type Listener<A> = (arg: A) => void;

/** Minimal typed event emitter; `on` returns a function that removes the listener. */
export class Emitter<Events extends { [K in keyof Events]: unknown }> {
  private listeners = new Map<keyof Events, Set<Listener<never>>>();

  on<K extends keyof Events>(event: K, fn: Listener<Events[K]>): () => void {
    let set = this.listeners.get(event);
    if (!set) {
      set = new Set();
      this.listeners.set(event, set);
    }
    set.add(fn as Listener<never>);
    return () => this.off(event, fn);
  }

  once<K extends keyof Events>(event: K, fn: Listener<Events[K]>): () => void {
    const off = this.on(event, (arg) => {
      off();
      fn(arg);
    });
    return off;
  }

  off<K extends keyof Events>(event: K, fn: Listener<Events[K]>): void {
    this.listeners.get(event)?.delete(fn as Listener<never>);
  }

  protected emit<K extends keyof Events>(event: K, arg: Events[K]): void {
    const set = this.listeners.get(event);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        (fn as Listener<Events[K]>)(arg);
      } catch (err) {
        // A listener's bug must not break delivery to the others, the client's state, or the
        // process (a rethrow from a timer would kill Node): report it and go on.
        this.listenerFailed(new ListenerError(String(event), err));
      }
    }
  }

  /** Whether `event` has at least one listener. */
  protected hasListeners(event: keyof Events): boolean {
    return (this.listeners.get(event)?.size ?? 0) > 0;
  }

  /** Reports an exception thrown by a listener; never throws. */
  protected listenerFailed(err: ListenerError): void {
    console.error(err.message, err.cause);
  }
}
