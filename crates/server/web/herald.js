// Generated from clients/typescript/src/ (index.ts and the modules it imports, in one file) by
// `npm run build` in clients/typescript.
// Do not edit: edit the TypeScript source and rebuild (a test fails when this copy is stale).
/**
 * @herald/client: browser and Node client for the Herald real-time event hub.
 *
 * Wire protocol: docs/protocol.md in the Herald repository (v1). Zero runtime dependencies; uses the
 * global `WebSocket` (browsers, Node >= 22, or Node 20 with `--experimental-websocket`) unless one
 * is passed in the options.
 *
 * What it guarantees to the application:
 * - a visible connection state (`connecting`, `connected`, `reconnecting`, `resyncing`, `offline`);
 * - reconnection with exponential backoff and full jitter (1 s doubling to a 30 s cap), the policy
 *   of docs/protocol.md §9 shared with the Rust client: the retry counter resets once a connection
 *   got its `connect` reply and every resubscribe was answered; only attempts that never got a
 *   `connect` reply are failures; after 10 consecutive failures the circuit breaker opens
 *   (`offline`, requests fail at once, a probe once per 30 s); a probe that connects,
 *   `reconnect()` or the browser's `online` event closes it;
 * - every subscription resumes from the last delivered position after every reconnect, and
 *   publications reach the application in offset order, exactly once; when a resume is impossible
 *   the subscription emits `resync` (with a fresh snapshot on keyed channels) instead of pretending
 *   continuity.
 *
 * Layout (each module imports only modules above it in this list; none imports the client):
 * - `types.ts`: wire types of the protocol and the public types (connection state, options,
 *   subscription events); types only.
 * - `errors.ts`: `HeraldError`, `ListenerError`, the close codes of protocol §9.
 * - `emitter.ts`: the typed event emitter under the client and each subscription.
 * - `merge-patch.ts`: JSON merge patch (RFC 7386) for keyed `merge` operations.
 * - `fields.ts`: the documented command fields, shared by the WebSocket client and the HTTP API.
 * - `transport.ts`: the WebSocket seam (the socket interface, finding an implementation, the
 *   default URL) and frame encoding/splitting.
 * - `sse.ts`: the SSE fallback behind the same seam (protocol §13, multiplexed SSE): an SSE
 *   session as a socket, and the per-attempt socket that falls back to it and probes WebSocket.
 * - `backoff.ts`: the reconnect policy: full-jitter backoff and the circuit breaker's counts.
 * - `presence.ts`: presence (protocol §15): one subscription's members or counts and their
 *   delivery rules, the per-tab member id, and presence as a store; it reaches its subscription
 *   through the narrow `PresenceHost` / `PresenceSource`.
 * - `subscription.ts`: one subscription's state and delivery rules (resume, resync, duplicates,
 *   gaps, keyed records); it reaches the client through the narrow `SubscriptionHost`.
 * - `view.ts`: live views (protocol §14): one view's rows, position and delivery rules, and a
 *   view as a store; it reaches the client through the narrow `ViewHost` / `ViewSource`.
 * - `shared.ts`: many tabs, one connection (`share: true`): the Web Locks leader election, the
 *   virtual socket over BroadcastChannel, and the leader multiplexing the tabs' subscriptions on
 *   one real client, reached through the narrow `ShareLeaderClient`.
 * - `client.ts`: `HeraldClient`, the connection state machine (connect, reconnect, liveness,
 *   refresh, request/reply correlation, resubscribing).
 * - `http.ts`: `HeraldApi`, the hub's HTTP API.
 * - `index.ts`: this file, the public API (re-exports only).
 * - `store.ts`, `react.ts`, `svelte.ts`: framework adapters over the public API.
 *
 * The hub serves a one-file bundle of these modules as `/static/herald.js`
 * (`scripts/copy-web.mjs`, run by `npm run build`).
 */
// errors.js
/**
 * Errors: the hub's error object as an exception (`HeraldError`, also used for the client's own
 * failures), a listener's exception (`ListenerError`), and the WebSocket close codes of protocol §9.
 */
/** An error from the hub (a protocol error object) or from the client itself. */
class HeraldError extends Error {
    constructor(body) {
        super(`${body.code} (${body.name}): ${body.message}`);
        this.name = 'HeraldError';
        this.code = body.code;
        this.errorName = body.name;
        this.channel = body.channel;
    }
}
/** Close codes 4000–4999 and their names (protocol §9). */
const CLOSE_CODES = {
    4000: 'shutdown',
    4001: 'slow_consumer',
    4002: 'heartbeat_timeout',
    4003: 'auth_timeout',
    4004: 'token_expired',
    4005: 'too_many_connections',
    4006: 'rate_limited',
    4007: 'engine_unavailable',
    4500: 'unauthorized',
    4501: 'forbidden',
    4502: 'bad_request',
    4503: 'kicked',
    4504: 'message_too_large',
};
/** Whether a close code means "do not reconnect" (4500–4999). */
function isFinalCloseCode(code) {
    return code >= 4500 && code <= 4999;
}
/** An exception thrown by an application's event listener, reported on the client's `error` event. */
class ListenerError extends Error {
    constructor(event, cause, where = '') {
        super(`a '${event}' listener${where} threw: ${cause instanceof Error ? cause.message : String(cause)}`);
        this.name = 'ListenerError';
        this.event = event;
        this.cause = cause;
    }
}

// emitter.js
/** A small typed event emitter, the base of the client and of each subscription. */
/** Minimal typed event emitter; `on` returns a function that removes the listener. */
class Emitter {
    constructor() {
        this.listeners = new Map();
    }
    on(event, fn) {
        let set = this.listeners.get(event);
        if (!set) {
            set = new Set();
            this.listeners.set(event, set);
        }
        set.add(fn);
        return () => this.off(event, fn);
    }
    once(event, fn) {
        const off = this.on(event, (arg) => {
            off();
            fn(arg);
        });
        return off;
    }
    off(event, fn) {
        this.listeners.get(event)?.delete(fn);
    }
    emit(event, arg) {
        const set = this.listeners.get(event);
        if (!set)
            return;
        for (const fn of [...set]) {
            try {
                fn(arg);
            }
            catch (err) {
                // A listener's bug must not break delivery to the others, the client's state, or the
                // process (a rethrow from a timer would kill Node): report it and go on.
                this.listenerFailed(new ListenerError(String(event), err));
            }
        }
    }
    /** Whether `event` has at least one listener. */
    hasListeners(event) {
        return (this.listeners.get(event)?.size ?? 0) > 0;
    }
    /** Reports an exception thrown by a listener; never throws. */
    listenerFailed(err) {
        console.error(err.message, err.cause);
    }
}

// merge-patch.js
/** JSON merge patch (RFC 7386), applied by keyed channels' `merge` operations. */
function isObject(v) {
    return typeof v === 'object' && v !== null && !Array.isArray(v);
}
/**
 * Applies a JSON merge patch (RFC 7386) to `target` and returns the result (no mutation). Every
 * key is an ordinary own property, `__proto__` included (the hub keeps such keys; an assignment
 * would set the prototype instead and the client's state would differ from the hub's).
 */
function mergePatch(target, patch) {
    if (!isObject(patch))
        return patch;
    const out = isObject(target) ? { ...target } : {};
    for (const [k, v] of Object.entries(patch)) {
        if (v === null)
            delete out[k];
        else
            setOwn(out, k, mergePatch(Object.prototype.hasOwnProperty.call(out, k) ? out[k] : undefined, v));
    }
    return out;
}
function setOwn(o, k, v) {
    Object.defineProperty(o, k, { value: v, writable: true, enumerable: true, configurable: true });
}

// sse.js
/**
 * The SSE fallback (protocol §13, "Multiplexed SSE transport"): where a WebSocket upgrade is
 * refused (a proxy, a firewall), the same wire protocol runs over `GET /sse` (frames in) and
 * `POST /sse/session/{id}` (commands out). Both are behind the `WebSocketLike` seam of
 * transport.ts, so the client's protocol logic (connect, resubscribe with `since`, exactly-once)
 * does not change with the transport.
 *
 * The stream is read with `fetch` and a `ReadableStream` parser rather than `EventSource`: it works
 * in browsers and in Node (which has no global `EventSource`), and a failed open is seen at once
 * (an `EventSource` retries on its own).
 */
/** The multiplexed SSE URL of a hub's WebSocket URL: `ws://h/ws` → `http://h/sse`, `wss` → `https`. */
function sseUrl(wsUrl) {
    const url = new URL(wsUrl);
    url.protocol = url.protocol === 'wss:' || url.protocol === 'https:' ? 'https:' : 'http:';
    url.pathname = url.pathname.endsWith('/ws') ? `${url.pathname.slice(0, -3)}/sse` : `${url.pathname.replace(/\/$/, '')}/sse`;
    // The token goes in `connect`, never in a URL.
    url.search = '';
    url.hash = '';
    return url.href;
}
const CONNECTING = 0;
const OPEN = 1;
const CLOSED = 3;
/**
 * One multiplexed SSE session as a `WebSocketLike`: open once the `session` event names the
 * session, each `message` event one frame, `send` a POST of the queued lines. At most one POST is
 * in flight (the protocol's ordering rule); lines queued meanwhile go together in the next one.
 */
class SseSocket {
    constructor(url) {
        this.url = url;
        this.readyState = CONNECTING;
        this.onopen = null;
        this.onclose = null;
        this.onerror = null;
        this.onmessage = null;
        /** Ends the GET stream and any POST in flight. */
        this.abort = new AbortController();
        /** Lines waiting for the POST in flight to be answered. */
        this.queue = [];
        this.posting = false;
        void this.read();
    }
    send(data) {
        if (this.readyState === CLOSED)
            return;
        this.queue.push(data);
        this.flush();
    }
    close(code = 1000, reason = '') {
        this.end(code, reason);
    }
    flush() {
        if (this.posting || !this.postUrl || this.queue.length === 0 || this.readyState !== OPEN)
            return;
        const body = this.queue.join('\n');
        this.queue = [];
        this.posting = true;
        fetch(this.postUrl, {
            method: 'POST',
            // text/plain: a simple request, no CORS preflight.
            headers: { 'content-type': 'text/plain' },
            body,
            signal: this.abort.signal,
        }).then((res) => {
            this.posting = false;
            if (res.status !== 204) {
                // 404 (the session ended) or 413: the session can no longer be trusted to have it all.
                void res.body?.cancel();
                this.end(1006, `SSE POST answered ${res.status}`);
                return;
            }
            this.flush();
        }, () => {
            this.posting = false;
            this.end(1006, 'SSE POST failed');
        });
    }
    async read() {
        let res;
        try {
            res = await fetch(this.url, { headers: { accept: 'text/event-stream' }, signal: this.abort.signal });
        }
        catch {
            this.end(1006, 'SSE connection failed');
            return;
        }
        if (!res.ok || !res.body) {
            void res.body?.cancel();
            this.end(1006, `SSE answered ${res.status}`);
            return;
        }
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = '';
        try {
            for (;;) {
                const { value, done } = await reader.read();
                if (done)
                    break;
                buf += value;
                // Events end with a blank line; `\r\n` and `\r` end lines too (the SSE spec).
                if (buf.includes('\r'))
                    buf = buf.replace(/\r\n?/g, '\n');
                let end;
                while ((end = buf.indexOf('\n\n')) >= 0) {
                    const block = buf.slice(0, end);
                    buf = buf.slice(end + 2);
                    this.event(block);
                    if (this.readyState === CLOSED)
                        return;
                }
            }
        }
        catch {
            /* aborted or cut: ends below */
        }
        this.end(1006, 'SSE stream ended');
    }
    /** One event block: `session` opens, `message` is a frame; comments (keep-alive) are skipped. */
    event(block) {
        let type = 'message';
        const data = [];
        for (const line of block.split('\n')) {
            if (line === '' || line.startsWith(':'))
                continue;
            const colon = line.indexOf(':');
            const field = colon < 0 ? line : line.slice(0, colon);
            let value = colon < 0 ? '' : line.slice(colon + 1);
            if (value.startsWith(' '))
                value = value.slice(1);
            if (field === 'event')
                type = value;
            else if (field === 'data')
                data.push(value);
        }
        if (data.length === 0)
            return;
        const text = data.join('\n');
        if (type === 'session' && this.readyState === CONNECTING) {
            let id;
            try {
                id = JSON.parse(text).session;
            }
            catch {
                /* checked below */
            }
            if (typeof id !== 'string' || id === '') {
                this.end(1006, 'SSE session event without a session');
                return;
            }
            this.postUrl = `${this.url.replace(/\/$/, '')}/session/${encodeURIComponent(id)}`;
            this.readyState = OPEN;
            this.onopen?.({});
            this.flush();
        }
        else if (type === 'message' && this.readyState === OPEN) {
            this.onmessage?.({ data: text });
        }
    }
    end(code, reason) {
        if (this.readyState === CLOSED)
            return;
        const failed = this.readyState === CONNECTING;
        this.readyState = CLOSED;
        this.queue = [];
        this.abort.abort();
        if (failed)
            this.onerror?.({});
        this.onclose?.({ code, reason });
    }
}
/**
 * The socket of one connection attempt: the first transport of the list that opens. A WebSocket
 * that fails before it opens (a refused upgrade: error or close before open) gives way to SSE on
 * the same hub. While on SSE it probes WebSocket in the background (a real WebSocket open, at
 * doubling intervals up to `probe.maxMs`, one at a time) and reports the first that opens.
 */
class FallbackSocket {
    constructor(url, opts) {
        this.url = url;
        this.opts = opts;
        this.onopen = null;
        this.onclose = null;
        this.onerror = null;
        this.onmessage = null;
        this.closed = false;
        this.probeDelay = opts.probe?.initialMs ?? 2000;
        this.attempt(0);
    }
    get readyState() {
        return this.closed ? CLOSED : (this.inner?.readyState ?? CONNECTING);
    }
    send(data) {
        this.inner?.send(data);
    }
    close(code, reason) {
        this.closed = true;
        this.stopProbe();
        const inner = this.inner;
        this.inner = undefined;
        if (inner) {
            inner.onopen = inner.onmessage = inner.onerror = inner.onclose = null;
            try {
                inner.close(code, reason);
            }
            catch {
                /* never opened */
            }
        }
        // As a WebSocket does: the close event follows.
        const onclose = this.onclose;
        if (onclose)
            setTimeout(() => onclose({ code: code ?? 1005, reason: reason ?? '' }), 0);
    }
    /** Opens transport `i` of the list; a failure before open tries the next. */
    attempt(i) {
        const kind = this.opts.transports[i];
        const last = i >= this.opts.transports.length - 1;
        let sock;
        try {
            sock = kind === 'sse' ? new SseSocket(sseUrl(this.url)) : new this.opts.WS(this.url);
        }
        catch (err) {
            if (!last)
                return this.attempt(i + 1);
            setTimeout(() => {
                if (this.closed)
                    return;
                this.closed = true;
                this.onerror?.(err);
                this.onclose?.({ code: 1006, reason: 'connection failed' });
            }, 0);
            return;
        }
        this.inner = sock;
        let opened = false;
        const giveUp = () => {
            if (this.inner !== sock)
                return;
            sock.onopen = sock.onmessage = sock.onerror = sock.onclose = null;
            try {
                sock.close();
            }
            catch {
                /* never opened */
            }
            this.attempt(i + 1);
        };
        sock.onopen = (ev) => {
            opened = true;
            this.transport = kind;
            if (kind === 'sse' && this.opts.transports.includes('websocket'))
                this.scheduleProbe();
            this.onopen?.(ev);
        };
        sock.onmessage = (ev) => this.onmessage?.(ev);
        sock.onerror = (ev) => {
            if (!opened && !last)
                giveUp();
            else
                this.onerror?.(ev);
        };
        sock.onclose = (ev) => {
            if (!opened && !last)
                return giveUp();
            this.stopProbe();
            this.onclose?.(ev);
        };
    }
    scheduleProbe() {
        const max = this.opts.probe?.maxMs ?? 30000;
        const delay = this.probeDelay / 2 + Math.random() * (this.probeDelay / 2);
        this.probeDelay = Math.min(max, this.probeDelay * 2);
        this.probeTimer = setTimeout(() => this.probe(), delay);
    }
    /** One background WebSocket open; closed at once either way. */
    probe() {
        this.probeTimer = undefined;
        if (this.closed)
            return;
        let ws;
        try {
            ws = new this.opts.WS(this.url);
        }
        catch {
            this.scheduleProbe();
            return;
        }
        this.probeSocket = ws;
        // A probe that hangs counts as failed (the next one waits longer).
        const timeout = setTimeout(() => done(false), 10000);
        const done = (ok) => {
            if (this.probeSocket !== ws)
                return;
            clearTimeout(timeout);
            this.probeSocket = undefined;
            ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
            try {
                ws.close(1000, 'probe');
            }
            catch {
                /* never opened */
            }
            if (this.closed)
                return;
            if (ok)
                this.opts.onWebSocketBack();
            else
                this.scheduleProbe();
        };
        ws.onopen = () => done(true);
        ws.onerror = () => done(false);
        ws.onclose = () => done(false);
    }
    stopProbe() {
        if (this.probeTimer)
            clearTimeout(this.probeTimer);
        this.probeTimer = undefined;
        const ws = this.probeSocket;
        this.probeSocket = undefined;
        if (ws) {
            ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
            try {
                ws.close(1000, 'probe');
            }
            catch {
                /* never opened */
            }
        }
    }
}

// presence.js
/**
 * Presence (protocol §15): one subscription's view of its channel's members, the delivery rules
 * of the member list (`presence_list` replaces, `presence` pushes apply once in offset order, a
 * resume replays or replaces), the per-tab member id, and a framework-neutral store of a
 * channel's presence for the React and Svelte adapters. Like view.ts it reaches its subscription
 * only through a narrow seam (`PresenceHost`, and `PresenceSource` for the store), so this module
 * imports neither the subscription nor the client.
 */
/** The key under which the per-tab member id is kept in `sessionStorage`. */
const MEMBER_ID_KEY = 'herald.member';
/** A fresh random member id (16 hex digits). */
function randomId() {
    const c = globalThis.crypto;
    const bytes = new Uint8Array(8);
    if (c?.getRandomValues)
        c.getRandomValues(bytes);
    else
        for (let i = 0; i < bytes.length; i++)
            bytes[i] = Math.floor(Math.random() * 256);
    return [...bytes].map((b) => b.toString(16).padStart(2, '0')).join('');
}
/**
 * The member id of this tab: kept in `sessionStorage` (so a reload or reconnect rejoins as the
 * same member) when there is one, else a new one (per client instance).
 */
function tabMemberId() {
    let storage;
    try {
        storage = globalThis.sessionStorage;
    }
    catch {
        // Access can throw (sandboxed frames, storage disabled).
        storage = undefined;
    }
    if (!storage)
        return randomId();
    try {
        const kept = storage.getItem(MEMBER_ID_KEY);
        if (kept)
            return kept;
        const id = randomId();
        storage.setItem(MEMBER_ID_KEY, id);
        return id;
    }
    catch {
        return randomId();
    }
}
/** Members and distinct users of a member map. */
function countOf(members) {
    return { members: members.size, users: new Set([...members.values()].map((m) => m.user)).size };
}
const byMember = (a, b) => (a.member < b.member ? -1 : a.member > b.member ? 1 : 0);
/** A member as the hub sends it (`null` info is no info). */
function memberOf(m) {
    const out = { member: m.member, user: m.user ?? '' };
    if (m.client !== undefined)
        out.client = m.client;
    if (m.node !== undefined)
        out.node = m.node;
    if (m.info !== undefined && m.info !== null)
        out.info = m.info;
    return out;
}
/** Whether two members say the same (field by field, `info` as JSON). */
function sameMember(a, b) {
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
class Presence extends Emitter {
    /** @internal */
    constructor(host, channel, options, memberId) {
        super();
        /** True once the first list (or counts) arrived. */
        this.ready = false;
        /** Counters, for tests and dashboards. */
        this.stats = { events: 0, duplicatesDropped: 0, lists: 0, replaced: 0, refetches: 0 };
        this._members = new Map();
        this._counts = { members: 0, users: 0 };
        this.host = host;
        this.channel = channel;
        this.follow = options.presence === true ? 'members' : options.presence === 'counts' ? 'counts' : undefined;
        this.memberId = memberId;
        this.info = options.info;
    }
    /** The members by member id (`presence: true`; empty in counts mode). */
    get members() {
        return this._members;
    }
    /** Members and distinct users: from the hub in counts mode, else from `members`. */
    get counts() {
        return { ...this._counts };
    }
    /** The members of each user (their tabs and devices), each list sorted by member id. */
    byUser() {
        const out = new Map();
        for (const m of [...this._members.values()].sort(byMember)) {
            const list = out.get(m.user);
            if (list)
                list.push(m);
            else
                out.set(m.user, [m]);
        }
        return out;
    }
    /** Whether the subscription sends presence fields (it follows, or it has `info`). */
    get asked() {
        return this.follow !== undefined || this.info !== undefined;
    }
    /** @internal The presence fields of a `subscribe` command (none when presence was not asked). */
    _fields() {
        if (!this.asked)
            return {};
        const fields = { member: this.memberId, info: this.info };
        if (this.follow === 'members') {
            fields.presence = true;
            if (this.position)
                fields.presence_since = { epoch: this.position.epoch, offset: this.position.offset };
        }
        else if (this.follow === 'counts') {
            fields.presence = 'counts';
        }
        return fields;
    }
    /** @internal */
    _emit(event, arg) {
        this.emit(event, arg);
    }
    /** Listener exceptions go to the client's `error` event. */
    listenerFailed(err) {
        this.host.listenerFailed(new ListenerError(err.event, err.cause, ` of presence ${this.channel}`));
    }
    /**
     * @internal A `presence_list` push: `recovered: true` keeps the members (the missed changes
     * follow as pushes); otherwise its members replace ours, with an event for each difference.
     */
    _onList(msg) {
        if (this.follow !== 'members')
            return;
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
        if (this.position)
            this.stats.replaced += 1;
        this.position = { epoch: msg.epoch, offset: msg.offset };
        const fresh = new Map();
        for (const m of msg.members ?? [])
            fresh.set(m.member, memberOf(m));
        const changes = [];
        for (const [id, old] of this._members) {
            if (!fresh.has(id))
                changes.push(['leave', { event: 'leave', member: old }]);
        }
        for (const [id, m] of fresh) {
            const old = this._members.get(id);
            if (!old)
                changes.push(['join', { event: 'join', member: m }]);
            else if (!sameMember(old, m))
                changes.push(['update', { event: 'update', member: m, previous: old }]);
        }
        this._members.clear();
        for (const [id, m] of fresh)
            this._members.set(id, m);
        this._counts = countOf(this._members);
        this.ready = true;
        for (const [event, change] of changes)
            this.emit(event, change);
        this.emit('change', this);
    }
    /** @internal A `presence` push: applied once, in offset order; another epoch needs a fresh list. */
    _onEvent(msg) {
        if (this.follow !== 'members' || !this.position)
            return;
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
        let change;
        if (msg.event === 'leave') {
            if (!previous)
                return;
            this._members.delete(msg.member);
            change = { event: 'leave', member: previous, position };
        }
        else {
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
    _onStats(msg) {
        if (this.follow !== 'counts')
            return;
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
/**
 * A channel's presence as a store: the channel is subscribed with `presence` (default `true`)
 * while the store has subscribers and left when the last one stops.
 */
function presenceStore(client, channel, options = {}) {
    const opts = { ...options, presence: options.presence ?? true };
    const empty = () => ({ channel, members: [], byUser: new Map(), counts: { members: 0, users: 0 }, ready: false });
    let value = empty();
    const runs = new Set();
    let handle;
    let offs = [];
    const set = (patch) => {
        value = { ...value, ...patch };
        for (const run of [...runs])
            run(value);
    };
    const stateOf = (p) => ({
        members: [...p.members.values()].sort(byMember),
        byUser: p.byUser(),
        counts: p.counts,
        ready: p.ready,
    });
    const start = () => {
        value = empty();
        let h;
        try {
            h = client.subscribe(channel, opts);
        }
        catch (err) {
            // The channel is already subscribed with other options (105): the store's error.
            if (!(err instanceof HeraldError))
                throw err;
            value = { ...value, error: err };
            return;
        }
        handle = h;
        offs = [h.presence.on('change', (p) => set(stateOf(p))), h.on('error', (e) => set({ error: e }))];
        value = { ...value, ...stateOf(h.presence) };
    };
    const stop = () => {
        for (const off of offs)
            off();
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
            if (runs.size === 0)
                start();
            runs.add(run);
            run(value);
            return () => {
                if (!runs.delete(run))
                    return;
                if (runs.size === 0)
                    stop();
            };
        },
    };
}

// subscription.js
/**
 * One subscription's state: its last delivered position, its status, its keyed records, its
 * presence (presence.ts), and the delivery rules (apply the subscribe reply, resume or resync,
 * drop duplicates, resubscribe on a gap). It reaches its client only through the narrow
 * `SubscriptionHost` seam, so this module does not import the client.
 */
/**
 * A subscription to one channel. Emits `publication` in offset order, exactly once, across
 * reconnects. For keyed channels `records` holds the channel's state (snapshot + publications).
 */
class Subscription extends Emitter {
    /** @internal */
    constructor(host, channel, options) {
        super();
        this.keyed = false;
        this._status = 'pending';
        /** Keyed state: key → value, kept from snapshots and publications. */
        this.records = new Map();
        /** Counters, for tests and dashboards. */
        this.stats = { delivered: 0, duplicatesDropped: 0, gaps: 0, resyncs: 0, resubscribes: 0 };
        /** @internal */ this.refs = 1;
        /** @internal */ this.generation = 0;
        this.host = host;
        this.channel = channel;
        this.options = options;
        if (options.since)
            this.position = { ...options.since };
        this.presence = new Presence({ refetch: () => host.resubscribe(this, true), listenerFailed: (err) => host.listenerFailed(err) }, channel, options, host.memberId());
    }
    /**
     * Sets this connection's presence `info` on the channel (`presence_update`). It is kept and
     * sent with every resubscribe, so it survives reconnects; while not subscribed it is only kept.
     * Errors: 111 (above `max_presence_info_bytes`), 107 (no presence on the namespace).
     */
    setPresence(info) {
        this.presence.info = info;
        return this.host.updatePresence(this, info);
    }
    /** Where the subscription is; every change emits `status`. */
    get status() {
        return this._status;
    }
    /** @internal */
    _setStatus(status) {
        // Parts of a publication never span subscribes: the hub sends it again from its first.
        if (status !== 'subscribed')
            this.chunks = undefined;
        if (this._status === status)
            return;
        this._status = status;
        this.emit('status', status);
    }
    /** Listener exceptions go to the client's `error` event. */
    listenerFailed(err) {
        this.host.listenerFailed(new ListenerError(err.event, err.cause, ` of subscription ${this.channel}`));
    }
    /** Drops this handle; the channel is left when the last handle is dropped. */
    unsubscribe() {
        this.refs -= 1;
        if (this.refs > 0)
            return;
        this.host.leave(this);
    }
    /** Resolves when the subscription is (re)established. */
    ready(timeoutMs = 10000) {
        if (this.status === 'subscribed')
            return Promise.resolve();
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
    _emit(event, arg) {
        this.emit(event, arg);
    }
    /**
     * @internal Applies the subscribe reply: first subscribe, resume (the missed publications are
     * delivered), or resync (the app is told plainly and the subscription continues from the reply).
     */
    _onSubscribeReply(res) {
        const before = this.position;
        const resumed = before !== undefined;
        this.keyed = !!res.keyed;
        this._setStatus('subscribed');
        if (!resumed) {
            this.position = { epoch: res.epoch, offset: res.offset };
            if (res.snapshot)
                this._setSnapshot(res.snapshot);
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
            for (const pub of res.publications ?? [])
                this.deliver(pub);
            if (this.position.offset < res.offset) {
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
        if (res.snapshot)
            this._setSnapshot(res.snapshot);
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
    _onChunk(c) {
        if (this.status !== 'subscribed' || !this.position)
            return;
        if (c.part === 0)
            this.chunks = { epoch: c.epoch, offset: c.offset, next: 0, parts: c.parts, text: [], received: 0 };
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
        let pub;
        try {
            pub = JSON.parse(at.text.join(''));
        }
        catch {
            this.stats.gaps += 1;
            this.host.resubscribe(this, true);
            return;
        }
        this._onPublication(pub);
    }
    /** @internal A `pub` push for this channel. */
    _onPublication(pub) {
        if (this.status !== 'subscribed' || !this.position)
            return;
        if (pub.epoch !== this.position.epoch) {
            this.stats.gaps += 1;
            this.host.resubscribe(this, true);
            return;
        }
        this.deliver(pub);
    }
    /** Delivers a publication if it is the next one; drops duplicates; resubscribes on a gap. */
    deliver(pub) {
        const last = this.position.offset;
        if (pub.epoch !== this.position.epoch)
            return;
        if (pub.offset <= last) {
            this.stats.duplicatesDropped += 1;
            return;
        }
        if (pub.offset !== last + 1) {
            this.stats.gaps += 1;
            this.host.resubscribe(this, true);
            return;
        }
        this.position.offset = pub.offset;
        this.stats.delivered += 1;
        if (this.keyed)
            this._apply(pub);
        this.emit('publication', pub);
    }
    /** @internal Replaces the keyed state with a snapshot. */
    _setSnapshot(snapshot) {
        this.records.clear();
        for (const r of snapshot)
            this.records.set(r.key, r.value);
        this.emit('records', this.records);
    }
    /** @internal Applies one keyed publication. */
    _apply(pub) {
        if (pub.key === undefined)
            return;
        const op = pub.op ?? 'upsert';
        if (op === 'delete')
            this.records.delete(pub.key);
        else if (op === 'merge')
            this.records.set(pub.key, mergePatch(this.records.get(pub.key), pub.data));
        else
            this.records.set(pub.key, pub.data);
        this.emit('records', this.records);
    }
}
/** Whether two optional positions are the same. */
function samePosition(a, b) {
    return a === b || (a !== undefined && b !== undefined && a.epoch === b.epoch && a.offset === b.offset);
}
/** What in `again` differs from the options the subscription was made with (undefined: nothing). */
function optionsConflict(have, again) {
    if (again.snapshot !== undefined && !!again.snapshot !== !!have.snapshot)
        return `snapshot: ${!!have.snapshot}`;
    if (again.since !== undefined && !samePosition(again.since, have.since)) {
        return have.since ? `since ${have.since.epoch}:${have.since.offset}` : 'no since';
    }
    if (again.presence !== undefined && (again.presence || undefined) !== (have.presence || undefined)) {
        return have.presence ? `presence: ${JSON.stringify(have.presence)}` : 'no presence';
    }
    return undefined;
}
/** Bytes of `s` in UTF-8 (the hub counts parts in bytes). */
function utf8Length(s) {
    let n = 0;
    for (let i = 0; i < s.length; i++) {
        const c = s.charCodeAt(i);
        if (c < 0x80)
            n += 1;
        else if (c < 0x800)
            n += 2;
        else if (c >= 0xd800 && c < 0xdc00) {
            n += 4;
            i++;
        }
        else
            n += 3;
    }
    return n;
}

// view.js
/**
 * Live views (protocol §14): one view subscription's rows, its position, and the delivery rules
 * (initial rows replace, events apply once in offset order, a resume replays or replaces), and a
 * framework-neutral store of a view for the React and Svelte adapters. Like subscription.ts it
 * reaches its client only through a narrow seam (`ViewHost`, and `ViewSource` for the store), so
 * this module does not import the client.
 */
/** The view's name on the connection, as the hub derives it (`ViewQuery::name`). */
function viewName(channel, o) {
    if (o.sub !== undefined)
        return o.sub;
    if (o.view !== undefined)
        return `${channel}#${o.view}`;
    if (o.filter !== undefined)
        return `${channel}#filter`;
    if (o.key !== undefined)
        return `${channel}#key:${o.key}`;
    return channel;
}
/** What in `again` differs from the options a view was made with (undefined: nothing). */
function viewOptionsConflict(have, again) {
    for (const f of ['view', 'filter', 'key']) {
        if (have[f] !== again[f])
            return have[f] === undefined ? `no ${f}` : `${f} ${JSON.stringify(have[f])}`;
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
class LiveView extends Emitter {
    /** @internal */
    constructor(host, channel, options) {
        super();
        /** Counters, for tests and dashboards. */
        this.stats = { events: 0, duplicatesDropped: 0, resyncs: 0, resubscribes: 0 };
        /** @internal */ this.refs = 1;
        /** @internal */ this.generation = 0;
        this._rows = new Map();
        this._status = 'pending';
        this.host = host;
        this.channel = channel;
        this.options = { ...options };
        this.name = viewName(channel, options);
        this.ready = new Promise((resolve, reject) => {
            this.settle = { resolve, reject };
        });
        // Awaiting `ready` is optional: an unobserved refusal is reported on `error`, not as an
        // unhandled rejection.
        this.ready.catch(() => { });
    }
    /** The matching records, key → record. */
    get rows() {
        return this._rows;
    }
    /** Where the view is; every change emits `status`. */
    get status() {
        return this._status;
    }
    /** Drops this handle; the view is ended when the last handle is dropped. */
    unsubscribe() {
        this.refs -= 1;
        if (this.refs > 0)
            return;
        this.host.leaveView(this);
    }
    /** @internal The fields of the `subscribe` command (`since` when resuming). */
    _command() {
        const { view, filter, key } = this.options;
        const since = this.position && { epoch: this.position.epoch, offset: this.position.offset };
        return { channel: this.channel, view, filter, key, sub: this.name, since };
    }
    /** @internal */
    _setStatus(status) {
        if (this._status === status)
            return;
        this._status = status;
        this.emit('status', status);
    }
    /** @internal */
    _emit(event, arg) {
        this.emit(event, arg);
    }
    /** @internal `ready` rejects with `err` unless it already resolved. */
    _fail(err) {
        const s = this.settle;
        this.settle = undefined;
        s?.reject(err);
    }
    /** Listener exceptions go to the client's `error` event. */
    listenerFailed(err) {
        this.host.listenerFailed(new ListenerError(err.event, err.cause, ` of view ${this.name}`));
    }
    /**
     * @internal Applies a subscribe reply: initial rows replace the rows (first subscribe, or a
     * resume the hub could not serve); a recovered resume applies the replayed events.
     */
    _onReply(res) {
        const before = this.position;
        this.filter = res.filter;
        this._setStatus('subscribed');
        const resumed = before !== undefined;
        const replayed = resumed && res.recovered === true && res.initial === undefined && res.epoch === before.epoch;
        if (replayed) {
            for (const e of res.events ?? [])
                this.apply(e);
            // The writes between the last event and `offset` did not touch the view.
            if (this.position.offset < res.offset)
                this.position = { epoch: res.epoch, offset: res.offset };
        }
        else {
            if (resumed)
                this.stats.resyncs += 1;
            this.position = { epoch: res.epoch, offset: res.offset };
            this._rows.clear();
            for (const r of res.initial ?? [])
                this._rows.set(r.key, r.value);
        }
        this.emit('subscribed', {
            channel: this.channel,
            sub: this.name,
            position: { ...this.position },
            filter: res.filter,
            resumed,
            recovered: resumed ? replayed : undefined,
            reason: resumed && !replayed ? (res.reason ?? (res.epoch !== before.epoch ? 'epoch_changed' : 'not_recovered')) : undefined,
        });
        if (!replayed)
            this.emit('rows', this._rows);
        const s = this.settle;
        this.settle = undefined;
        s?.resolve();
    }
    /** @internal A `view` push for this view. */
    _onEvent(e) {
        if (this._status !== 'subscribed' || !this.position)
            return;
        if (e.pub.epoch !== this.position.epoch) {
            // Another stream: the rows cannot be patched from it; resume (the hub replaces them).
            this.host.resubscribeView(this, true);
            return;
        }
        this.apply(e);
    }
    /** Applies one event unless it is at or before the position (a duplicate). */
    apply(e) {
        const pos = this.position;
        if (e.pub.epoch !== pos.epoch)
            return;
        if (e.pub.offset <= pos.offset) {
            this.stats.duplicatesDropped += 1;
            return;
        }
        this.position = { epoch: pos.epoch, offset: e.pub.offset };
        this.stats.events += 1;
        const previous = this._rows.get(e.key);
        if (e.operation === 'delete')
            this._rows.delete(e.key);
        else
            this._rows.set(e.key, e.record);
        const change = { operation: e.operation, key: e.key, publication: e.pub };
        if (e.record !== undefined && e.operation !== 'delete')
            change.record = e.record;
        if (previous !== undefined)
            change.previous = previous;
        if (e.reason !== undefined)
            change.reason = e.reason;
        this.emit(e.operation, change);
        this.emit('rows', this._rows);
    }
}
/**
 * A view as a store. The view is subscribed while the store has subscribers and ended when the
 * last one stops.
 */
function viewStore(client, channel, options) {
    const empty = () => ({ channel, rows: [], keys: [], ready: false, status: 'pending' });
    let value = empty();
    const runs = new Set();
    let view;
    let offs = [];
    const set = (patch) => {
        value = { ...value, ...patch };
        for (const run of [...runs])
            run(value);
    };
    const rowsOf = (v) => {
        const keys = [...v.rows.keys()].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
        return { keys, rows: keys.map((k) => v.rows.get(k)) };
    };
    const start = () => {
        value = empty();
        let v;
        try {
            v = client.subscribeView(channel, options);
        }
        catch (err) {
            // A conflicting view of the same name (105) is the store's error; a misuse is thrown.
            if (!(err instanceof HeraldError))
                throw err;
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
        if (v.position)
            value = { ...value, ...rowsOf(v), ready: true, status: v.status };
    };
    const stop = () => {
        for (const off of offs)
            off();
        offs = [];
        view?.unsubscribe();
        view = undefined;
    };
    return {
        get: () => value,
        subscribe(run) {
            if (runs.size === 0)
                start();
            runs.add(run);
            run(value);
            return () => {
                if (!runs.delete(run))
                    return;
                if (runs.size === 0)
                    stop();
            };
        },
    };
}

// fields.js
/**
 * The fields of commands (protocol §2), shared by the WebSocket client and the HTTP API: only
 * documented fields are sent, and none that is undefined (the hub rejects unknown fields).
 */
/** The publish fields of protocol §2 (nothing else is sent: the hub rejects unknown fields). */
function publishFields(o) {
    return { type: o.type, key: o.key, op: o.op, idempotency_key: o.idempotency_key, correlation_id: o.correlation_id };
}
/** A copy of `o` without its undefined fields. */
function stripUndefined(o) {
    const out = {};
    for (const [k, v] of Object.entries(o))
        if (v !== undefined)
            out[k] = v;
    return out;
}

// transport.js
/**
 * The WebSocket seam: the subset of the WebSocket API the client uses, how it finds an
 * implementation and a default URL, and how frames are encoded and split into messages.
 */
/**
 * The implementation to use: the one given, else the global one. Throws when there is none, so a
 * misconfigured client fails at construction rather than at the first connect.
 */
function resolveWebSocket(given) {
    const WS = given ?? globalThis.WebSocket;
    if (!WS) {
        throw new Error('HeraldClient: no WebSocket implementation (use Node >= 22, node --experimental-websocket, or pass options.WebSocket)');
    }
    return WS;
}
/**
 * In a page: `ws` beside the page, so a hub mounted under a prefix is found (`/live/` and
 * `/live/demo` → `/live/ws`; `/` and `/demo` → `/ws`), `wss:` for an `https:` page. Resolved
 * against `document.baseURI` (a `<base>` element moves it), else `location.href`.
 */
function defaultUrl() {
    const page = globalThis;
    const base = page.document?.baseURI ?? page.location?.href;
    if (!base)
        throw new Error('HeraldClient: no url given and no page location to derive it from');
    const url = new URL('ws', base);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    return url.href;
}
/** The frame of command `cmd` with request id `id` (undefined fields are left out). */
function encodeCommand(id, cmd, fields) {
    return JSON.stringify({ id, cmd, ...stripUndefined(fields) });
}
/** The frame of a message that is not a request (`pong`). */
function encodeMessage(msg) {
    return JSON.stringify(msg);
}
/** The messages of a text frame, one per non-blank line (a frame may carry several). */
function frameLines(data) {
    return data.split('\n').filter((line) => line.trim() !== '');
}
/** One line of a frame as a message; undefined when it is not JSON (or a malformed array). */
function decodeMessage(line) {
    try {
        const msg = JSON.parse(line);
        if (Array.isArray(msg)) {
            const [n, offset, time] = msg;
            const ok = msg.length >= 4 && msg.length <= 5 && Number.isInteger(n) && Number.isInteger(offset) && (typeof time === 'number' || typeof time === 'string');
            return ok && (msg[4] === undefined || (typeof msg[4] === 'object' && msg[4] !== null)) ? msg : undefined;
        }
        return msg;
    }
    catch {
        return undefined;
    }
}
/** The v1 publication a compact one stands for, given its subscription's channel and epoch. */
function expandCompact(c, channel, epoch) {
    const [, offset, time, data, extra] = c;
    const p = {
        channel,
        epoch,
        offset,
        id: extra?.id ?? `${epoch}-${offset}`,
        type: extra?.type ?? 'message',
        data,
        time: typeof time === 'number' ? new Date(time).toISOString() : time,
    };
    if (extra?.meta !== undefined)
        p.meta = extra.meta;
    if (extra?.key !== undefined)
        p.key = extra.key;
    if (extra?.op !== undefined)
        p.op = extra.op;
    return p;
}

// shared.js
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
/** Recent publications the leader keeps per channel to answer a tab's `since` without `history`. */
const SHARE_RING = 4096;
/** A channel no tab holds is left this long after, so a reconnect of the tabs resumes it. */
const SHARE_GRACE_MS = 30000;
/** `history` pages read to catch a tab up before it is answered as a resync. */
const SHARE_MAX_PAGES = 20;
/** The page's environment, or undefined when the Web Locks API or BroadcastChannel is missing. */
function browserShareEnv() {
    const g = globalThis;
    const locks = g.navigator?.locks;
    const BC = g.BroadcastChannel;
    if (!locks || typeof locks.request !== 'function' || typeof BC !== 'function')
        return undefined;
    return {
        lock: (name, hold) => {
            locks.request(name, hold).catch(() => { });
        },
        channel: (name) => new BC(name),
        onPageHide: (fn) => g.addEventListener?.('pagehide', fn),
    };
}
/** A short, stable hash (FNV-1a), so a token is not spelt out in lock and channel names. */
function shareHash(s) {
    let h = 0x811c9dc5;
    for (let i = 0; i < s.length; i++) {
        h ^= s.charCodeAt(i);
        h = Math.imul(h, 0x01000193) >>> 0;
    }
    return h.toString(36);
}
/** The default share name: the hub URLs and whose credentials (a static token, a provider, none). */
function defaultShareName(urls, token) {
    const who = typeof token === 'string' ? `token-${shareHash(token)}` : typeof token === 'function' ? 'provider' : 'anonymous';
    return `${urls.join(',')}|${who}`;
}
/** The share tab of each name in this page (one leader election per name and page). */
const shareTabs = new Map();
/**
 * The virtual WebSocket for a `share: true` client, or undefined (the caller then uses a real
 * one) when the page has no Web Locks API or BroadcastChannel. The first client of a name in the
 * page decides how its leader connects (`makeLeader`).
 */
function sharedSocket(name, makeLeader) {
    let tab = shareTabs.get(name);
    if (!tab) {
        const env = browserShareEnv();
        if (!env)
            return undefined;
        tab = new ShareTab(name, env, makeLeader);
        shareTabs.set(name, tab);
    }
    return tab.WebSocket;
}
let shareSeq = 0;
/** A random id for a tab. */
function shareId() {
    const c = globalThis.crypto;
    return c?.randomUUID ? c.randomUUID().slice(0, 13) : `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`;
}
/**
 * One page's side of a share name: its place in the leader election, its virtual sockets, and
 * the leader when it holds the lock.
 */
class ShareTab {
    constructor(name, env, makeLeader) {
        this.name = name;
        this.makeLeader = makeLeader;
        /** This tab's id on the share channel. */
        this.id = shareId();
        /** This tab's virtual sockets by key (`TAB/N`). */
        this.conns = new Map();
        /** Closed (tests; a page that goes only posts `bye`). */
        this.closed = false;
        this.bc = env.channel(`herald-share|${name}`);
        this.bc.onmessage = (ev) => this.onMessage(ev.data);
        // eslint-disable-next-line @typescript-eslint/no-this-alias
        const tab = this;
        this.WebSocket = class extends ShareSocket {
            constructor(url) {
                super(tab, url);
            }
        };
        env.lock(`herald-share|${name}`, () => {
            if (this.closed)
                return Promise.resolve();
            this.becomeLeader();
            // Held for the tab's life: the browser releases it when the page goes.
            return new Promise((resolve) => (this.release = resolve));
        });
        env.onPageHide(() => this.goAway());
        this.post({ t: 'who' });
    }
    /** Leaves the election and closes everything (a page going away, or a test closing a tab). */
    close() {
        if (this.closed)
            return;
        this.goAway();
        this.closed = true;
        for (const c of [...this.conns.values()])
            c._lost(1006, 'share closed');
        this.bc.onmessage = null;
        this.bc.close();
        this.release?.();
        if (shareTabs.get(this.name) === this)
            shareTabs.delete(this.name);
    }
    /** The page goes: followers hear it now rather than when the lock is released. */
    goAway() {
        if (this.closed)
            return;
        if (this.leader) {
            this.post({ t: 'bye', leader: this.id });
            this.leader.close();
            this.leader = undefined;
        }
        else {
            this.post({ t: 'gone', tab: this.id });
        }
    }
    becomeLeader() {
        this.leader = new ShareLeader(this, this.makeLeader());
        this.post({ t: 'leader', leader: this.id });
        this.setLeader(this.id);
    }
    /** A new leader (or none): sockets of another leader close, waiting ones open. */
    setLeader(id) {
        if (id === this.leaderId)
            return;
        this.leaderId = id;
        for (const c of [...this.conns.values()]) {
            if (c.readyState === 1 && c.boundTo !== id)
                c._lost(1006, 'share leader changed');
            else if (c.readyState === 0 && id !== undefined)
                c._open(id);
        }
    }
    /** @internal */
    post(msg) {
        if (!this.closed)
            this.bc.postMessage(msg);
    }
    onMessage(msg) {
        if (this.closed || !msg || typeof msg !== 'object')
            return;
        switch (msg.t) {
            case 'who':
                if (this.leader)
                    this.post({ t: 'leader', leader: this.id });
                break;
            case 'leader':
                if (!this.leader)
                    this.setLeader(msg.leader);
                break;
            case 'bye':
                if (msg.leader === this.leaderId)
                    this.setLeader(undefined);
                break;
            case 'gone':
                this.leader?.tabGone(msg.tab);
                break;
            case 'up':
                if (this.leader && msg.leader === this.id)
                    this.leader.fromConn(msg.conn, msg.line);
                break;
            case 'close':
                if (this.leader && msg.leader === this.id)
                    this.leader.connClosed(msg.conn);
                break;
            case 'down':
                for (const key of msg.to)
                    this.conns.get(key)?._deliver(msg.line);
                break;
            case 'drop':
                for (const key of msg.to)
                    this.conns.get(key)?._lost(msg.code, msg.reason);
                break;
        }
    }
    /** @internal A frame from one of this tab's sockets to its leader. */
    up(conn, line) {
        if (conn.boundTo === this.id && this.leader) {
            const leader = this.leader;
            queueMicrotask(() => leader.fromConn(conn.key, line));
        }
        else if (conn.boundTo) {
            this.post({ t: 'up', leader: conn.boundTo, conn: conn.key, line });
        }
    }
    /** @internal One of this tab's sockets closed. */
    closedConn(conn) {
        this.conns.delete(conn.key);
        if (!conn.boundTo)
            return;
        if (conn.boundTo === this.id)
            this.leader?.connClosed(conn.key);
        else
            this.post({ t: 'close', leader: conn.boundTo, conn: conn.key });
    }
    /** @internal From the leader: frames to connections of any tab. */
    down(keys, line) {
        const remote = [];
        for (const key of keys) {
            const local = this.conns.get(key);
            if (local)
                queueMicrotask(() => local._deliver(line));
            else
                remote.push(key);
        }
        if (remote.length > 0)
            this.post({ t: 'down', to: remote, line });
    }
    /** @internal From the leader: close connections of any tab. */
    drop(keys, code, reason) {
        const remote = [];
        for (const key of keys) {
            const local = this.conns.get(key);
            if (local)
                queueMicrotask(() => local._lost(code, reason));
            else
                remote.push(key);
        }
        if (remote.length > 0)
            this.post({ t: 'drop', to: remote, code, reason });
    }
}
/** A virtual WebSocket: frames go to the leader (over BroadcastChannel, or directly in its tab). */
class ShareSocket {
    constructor(tab, url) {
        this.tab = tab;
        this.url = url;
        this.readyState = 0;
        this.onopen = null;
        this.onclose = null;
        this.onerror = null;
        this.onmessage = null;
        this.key = `${tab.id}/${++shareSeq}`;
        tab.conns.set(this.key, this);
        // The client sets its handlers after the constructor returns.
        const leader = tab.leaderId;
        if (leader !== undefined)
            queueMicrotask(() => this._open(leader));
    }
    send(data) {
        if (this.readyState !== 1)
            throw new Error('ShareSocket: not open');
        this.tab.up(this, data);
    }
    close() {
        if (this.readyState === 3)
            return;
        this.readyState = 3;
        this.tab.closedConn(this);
        const onclose = this.onclose;
        if (onclose)
            queueMicrotask(() => onclose({ code: 1000, reason: 'closed' }));
    }
    /** @internal */
    _open(leader) {
        if (this.readyState !== 0)
            return;
        this.boundTo = leader;
        this.readyState = 1;
        this.onopen?.({});
    }
    /** @internal */
    _deliver(line) {
        if (this.readyState === 1)
            this.onmessage?.({ data: line });
    }
    /** @internal The leader went or dropped this connection. */
    _lost(code, reason) {
        if (this.readyState === 3)
            return;
        this.readyState = 3;
        this.tab.conns.delete(this.key);
        this.onclose?.({ code, reason });
    }
}
let shareTicket = 0;
/** The leader: one real client and the tabs' connections multiplexed on it. */
class ShareLeader {
    constructor(tab, client) {
        this.tab = tab;
        this.client = client;
        this.conns = new Map();
        this.channels = new Map();
        this.wasUp = false;
        this.offState = client.on('state', (s) => this.onState(s));
        client.connect().catch(() => { });
    }
    close() {
        this.offState();
        if (this.pingTimer !== undefined)
            clearInterval(this.pingTimer);
        for (const ch of this.channels.values()) {
            if (ch.release !== undefined)
                clearTimeout(ch.release);
            for (const off of ch.offs)
                off();
        }
        this.channels.clear();
        this.tab.drop([...this.conns.keys()], 1006, 'share leader closed');
        this.conns.clear();
        this.client.close();
    }
    get up() {
        return this.client.state.state === 'connected';
    }
    /** The leader's connection state: tabs connect when it is up and are dropped when it goes. */
    onState(s) {
        if (s.state === 'connected') {
            this.wasUp = true;
            for (const c of this.conns.values()) {
                if (c.connectId !== undefined)
                    this.answerConnect(c, c.connectId);
            }
            if (this.pingTimer === undefined) {
                // Tabs check liveness as against a hub: the leader pings them at the hub's interval.
                const every = this.client.info?.ping_interval_ms || 25000;
                this.pingTimer = setInterval(() => this.pingAll(), every);
            }
            return;
        }
        if (s.state === 'resyncing')
            return;
        if (this.pingTimer !== undefined)
            clearInterval(this.pingTimer);
        this.pingTimer = undefined;
        const final = s.state === 'offline' && s.code !== undefined && s.code >= 4500;
        const answered = [...this.conns.values()].filter((c) => c.connected || (final && c.connectId !== undefined));
        if (!this.wasUp && !final)
            return;
        this.wasUp = false;
        const code = final ? s.code : 1006;
        const reason = s.state === 'offline' ? s.reason : s.state === 'reconnecting' && s.reason ? s.reason : 'leader connection lost';
        for (const c of answered)
            this.connClosed(c.key);
        this.tab.drop(answered.map((c) => c.key), code, reason);
    }
    pingAll() {
        const keys = [...this.conns.values()].filter((c) => c.connected).map((c) => c.key);
        if (keys.length > 0)
            this.tab.down(keys, encodeMessage({ push: 'ping' }));
    }
    send(key, msg) {
        this.tab.down([key], JSON.stringify(msg));
    }
    reply(key, id, result) {
        this.send(key, { id, result });
    }
    fail(key, id, code, name, message, channel) {
        this.send(key, { id, error: { code, name, message, channel } });
    }
    answerConnect(c, id) {
        const info = this.client.info;
        c.connectId = undefined;
        c.connected = true;
        // No `expires_at`: the leader refreshes its own token; tabs have nothing to refresh. The
        // leader speaks protocol version 1 to the tabs, whatever its own connection negotiated.
        this.reply(c.key, id, { ...info, version: 1, expires_at: undefined });
    }
    /** A tab page went: its connections are closed. */
    tabGone(tab) {
        for (const key of [...this.conns.keys()])
            if (key.startsWith(`${tab}/`))
                this.connClosed(key);
    }
    /** A tab connection closed: it leaves its channels. */
    connClosed(key) {
        const c = this.conns.get(key);
        if (!c)
            return;
        this.conns.delete(key);
        for (const name of c.channels)
            this.leave(name, key);
    }
    /** A frame from a tab connection. */
    fromConn(key, frame) {
        for (const line of frameLines(frame)) {
            let msg;
            try {
                msg = JSON.parse(line);
            }
            catch {
                continue;
            }
            this.onCommand(key, msg);
        }
    }
    onCommand(key, msg) {
        const { id, cmd, ...fields } = msg;
        if (cmd === 'pong')
            return;
        let c = this.conns.get(key);
        if (cmd === 'connect') {
            if (!c) {
                c = { key, connected: false, channels: new Set() };
                this.conns.set(key, c);
            }
            if (this.up)
                this.answerConnect(c, id);
            else
                c.connectId = id;
            return;
        }
        if (!c || !c.connected)
            return;
        const channel = typeof fields.channel === 'string' ? fields.channel : undefined;
        switch (cmd) {
            case 'ping':
                this.reply(key, id, {});
                return;
            case 'refresh':
                this.reply(key, id, {});
                return;
            case 'subscribe':
                if (!channel)
                    return this.fail(key, id, 107, 'bad_request', 'subscribe: missing channel');
                if (['sub', 'view', 'filter', 'key', 'presence', 'member', 'preview'].some((f) => fields[f] !== undefined)) {
                    return this.fail(key, id, 107, 'bad_request', 'live views, presence and previews are not shared between tabs: use a client without `share`', channel);
                }
                this.subscribe(c, id, channel, fields);
                return;
            case 'unsubscribe':
                if (channel === undefined || fields.sub !== undefined)
                    return this.fail(key, id, 108, 'not_subscribed', 'not subscribed', channel);
                if (!c.channels.has(channel))
                    return this.fail(key, id, 108, 'not_subscribed', `${channel} is not subscribed`, channel);
                c.channels.delete(channel);
                this.leave(channel, key);
                this.reply(key, id, { channel });
                return;
            default:
                // publish, history, state, volatile, presence_update, ...: forwarded, the reply routed back.
                this.client.request(cmd, fields).then((result) => this.reply(key, id, result), (err) => {
                    const e = err instanceof HeraldError ? err : new HeraldError({ code: 0, name: 'error', message: String(err) });
                    this.fail(key, id, e.code, e.errorName, e.message, e.channel);
                });
        }
    }
    subscribe(c, id, name, msg) {
        let ch = this.channels.get(name);
        if (!ch)
            ch = this.openChannel(name, msg);
        if (ch.release !== undefined)
            clearTimeout(ch.release);
        ch.release = undefined;
        // A subscribe again (a resubscribe after a gap) replaces the earlier one.
        ch.members.delete(c.key);
        const ticket = ++shareTicket;
        ch.holders.set(c.key, ticket);
        c.channels.add(name);
        if (ch.sub.status === 'subscribed')
            this.serve(ch, c.key, id, msg, ticket);
        else
            ch.waiting.push({ key: c.key, id, msg, ticket });
    }
    /** The hub subscription of a channel, from the first tab's position. */
    openChannel(name, msg) {
        const since = msg.since;
        const sub = this.client.subscribe(name, { since, snapshot: msg.snapshot === true ? true : undefined });
        const ch = { name, sub, members: new Set(), holders: new Map(), waiting: [], recent: [], offs: [] };
        this.channels.set(name, ch);
        const live = () => this.channels.get(name) === ch;
        ch.offs.push(sub.on('subscribed', (e) => {
            if (!live())
                return;
            if (!e.resumed || e.recovered === false)
                ch.recent = [];
            for (const w of ch.waiting.splice(0)) {
                if (ch.holders.get(w.key) === w.ticket)
                    this.serve(ch, w.key, w.id, w.msg, w.ticket);
            }
        }), sub.on('publication', (pub) => {
            if (!live())
                return;
            ch.recent.push(pub);
            if (ch.recent.length > SHARE_RING)
                ch.recent.splice(0, ch.recent.length - SHARE_RING);
            if (ch.members.size > 0)
                this.tab.down([...ch.members], JSON.stringify({ push: 'pub', pub }));
        }), sub.on('resync', () => {
            if (!live())
                return;
            // The tabs resubscribe and are told `resync` from their own positions.
            const keys = [...ch.members];
            ch.members.clear();
            const line = JSON.stringify({ push: 'unsubscribe', channel: name, code: 117, name: 'resubscribe', resubscribe: true });
            if (keys.length > 0)
                this.tab.down(keys, line);
        }), sub.on('volatile', (ev) => {
            if (live() && ch.members.size > 0)
                this.tab.down([...ch.members], JSON.stringify({ push: 'volatile', ...ev }));
        }), sub.on('error', (err) => {
            ch.lastError = err;
        }), sub.on('unsubscribed', (e) => {
            if (!live())
                return;
            // Refused or ended by the hub: every tab hears it.
            this.dropChannel(ch);
            const body = { code: e.code ?? ch.lastError?.code ?? 108, name: e.reason ?? 'unsubscribed', message: ch.lastError?.message ?? `${name} ended by the hub`, channel: name };
            for (const w of ch.waiting)
                this.send(w.key, { id: w.id, error: body });
            const keys = [...ch.members];
            if (keys.length > 0)
                this.tab.down(keys, JSON.stringify({ push: 'unsubscribe', channel: name, code: body.code, reason: body.name }));
            for (const key of ch.holders.keys())
                this.conns.get(key)?.channels.delete(name);
        }));
        return ch;
    }
    dropChannel(ch) {
        if (ch.release !== undefined)
            clearTimeout(ch.release);
        for (const off of ch.offs)
            off();
        this.channels.delete(ch.name);
    }
    /** A connection left a channel; the hub subscription ends a grace period after the last. */
    leave(name, key) {
        const ch = this.channels.get(name);
        if (!ch)
            return;
        ch.holders.delete(key);
        ch.members.delete(key);
        ch.waiting = ch.waiting.filter((w) => w.key !== key);
        if (ch.holders.size > 0 || ch.release !== undefined)
            return;
        ch.release = setTimeout(() => {
            ch.release = undefined;
            if (this.channels.get(name) !== ch || ch.holders.size > 0)
                return;
            this.dropChannel(ch);
            ch.sub.unsubscribe();
        }, SHARE_GRACE_MS);
    }
    /**
     * Answers a tab's subscribe from the hub subscription (established): the reply, then the
     * publications the tab misses up to the leader's position, then live ones (as a member).
     */
    async serve(ch, key, id, msg, ticket) {
        const stale = () => ch.holders.get(key) !== ticket || this.channels.get(ch.name) !== ch || ch.sub.status !== 'subscribed';
        const base = () => ({ channel: ch.name, epoch: ch.sub.position.epoch, offset: ch.sub.position.offset, keyed: ch.sub.keyed });
        try {
            let at = msg.since;
            if (!at && msg.snapshot !== true) {
                this.join(ch, key, id, base(), []);
                return;
            }
            let head;
            let pubs = [];
            let reason;
            for (let round = 0; round < 4; round++) {
                if (!at) {
                    // A snapshot (asked for, or a keyed resync): the records at some offset, then the rest.
                    const st = (await this.client.request('state', { channel: ch.name }));
                    if (stale())
                        return;
                    at = { epoch: st.epoch, offset: st.offset };
                    head = { channel: ch.name, epoch: st.epoch, offset: st.offset, keyed: true, snapshot: st.records };
                    if (reason)
                        Object.assign(head, { recovered: false, reason });
                    pubs = [];
                }
                head ?? (head = { channel: ch.name, epoch: at.epoch, offset: at.offset, keyed: ch.sub.keyed, recovered: true });
                const got = await this.missed(ch, at);
                if (stale())
                    return;
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
                if (pubs.length > 0)
                    at = { epoch: at.epoch, offset: pubs[pubs.length - 1].offset };
                // Taken when the reply is sent, so no publication falls between the two.
                const tail = this.ringAfter(ch, at);
                if (tail) {
                    this.join(ch, key, id, head, [...pubs, ...tail]);
                    return;
                }
            }
            this.join(ch, key, id, { ...base(), recovered: false, reason: reason ?? 'too_many' }, []);
        }
        catch (err) {
            if (stale())
                return;
            // Not answered: the tab retries transient errors and ends on a refusal, as with a hub.
            const e = err instanceof HeraldError ? err : new HeraldError({ code: 0, name: 'error', message: String(err) });
            ch.holders.delete(key);
            this.conns.get(key)?.channels.delete(ch.name);
            this.fail(key, id, e.code, e.errorName, e.message, ch.name);
        }
    }
    /** Sends the reply and the missed publications, and makes the connection a member. */
    join(ch, key, id, head, pubs) {
        const lines = [JSON.stringify({ id, result: head }), ...pubs.map((pub) => JSON.stringify({ push: 'pub', pub }))];
        this.tab.down([key], lines.join('\n'));
        ch.members.add(key);
    }
    /** The ring's publications after `at` up to the leader's position; undefined when it lacks some. */
    ringAfter(ch, at) {
        const now = ch.sub.position;
        if (at.epoch !== now.epoch)
            return undefined;
        if (at.offset >= now.offset)
            return [];
        const first = ch.recent[0];
        if (!first || first.epoch !== at.epoch || first.offset > at.offset + 1)
            return undefined;
        return ch.recent.filter((p) => p.offset > at.offset);
    }
    /**
     * The publications after `from` that the ring lacks, read from `history` (possibly none, when
     * the ring has them all); or why they cannot be had (another epoch, trimmed).
     */
    async missed(ch, from) {
        if (from.epoch !== ch.sub.position.epoch)
            return { pubs: [], reason: 'epoch_changed' };
        const got = [];
        let at = from.offset;
        for (let page = 0; page < SHARE_MAX_PAGES; page++) {
            if (this.ringAfter(ch, { epoch: from.epoch, offset: at }))
                return { pubs: got };
            const h = (await this.client.request('history', { channel: ch.name, since: { epoch: from.epoch, offset: at }, limit: 1000 }));
            if (h.reason)
                return { pubs: [], reason: h.reason };
            let more = false;
            for (const p of h.publications) {
                if (p.offset !== at + 1)
                    continue;
                got.push(p);
                at = p.offset;
                more = true;
            }
            if (from.epoch !== ch.sub.position.epoch)
                return { pubs: [], reason: 'epoch_changed' };
            if (!more)
                break;
        }
        return { pubs: got };
    }
}

// backoff.js
/**
 * The reconnect policy of docs/protocol.md §9, shared with the Rust client's `BackoffPolicy`:
 * full-jitter exponential backoff, and a circuit breaker that opens after `maxAttempts`
 * consecutive attempts that never got a `connect` reply. It only counts and decides; the client
 * owns the timers and the state it shows.
 */
/** The counters of the backoff and the circuit breaker, and the decisions taken from them. */
class ReconnectPolicy {
    constructor(options = {}) {
        /**
         * Retries since the last established connection (connect answered and every resubscribe
         * answered): the backoff exponent. A connection that resumed resets it, however short it lived.
         */
        this.retries = 0;
        /** Consecutive attempts that never got a `connect` reply: the circuit breaker's count. */
        this.failures = 0;
        /** Whether the current attempt got its `connect` reply (then its end is not a failure). */
        this.reachedConnect = false;
        this.options = options;
    }
    /** Failures that open the circuit breaker. */
    get maxAttempts() {
        return this.options.maxAttempts ?? 10;
    }
    /** The largest delay, and the probe interval while the breaker is open. */
    get capMs() {
        return this.options.maxMs ?? 30000;
    }
    /**
     * Full-jitter delay before try `attempt` (1-based, counted since the last connection that got
     * its `connect` reply): uniform in [0, min(maxMs, initialMs × 2^(attempt-1))).
     */
    delay(attempt) {
        const initial = this.options.initialMs ?? 1000;
        const rnd = this.options.random ?? Math.random;
        const cap = Math.min(this.capMs, initial * Math.pow(2, Math.max(0, attempt - 1)));
        return Math.floor(rnd() * cap);
    }
    /** Starts counting afresh: the app connected or asked to reconnect, or a connection was established. */
    reset() {
        this.retries = this.failures = 0;
    }
    /** A new attempt begins: it fails unless it gets its `connect` reply. */
    attemptStarted() {
        this.reachedConnect = false;
    }
    /** The attempt got its `connect` reply: it did not fail, and an open breaker closes. */
    connectReached() {
        this.reachedConnect = true;
        this.failures = 0;
    }
    /**
     * The attempt failed or the connection dropped. Only an attempt that never got its `connect`
     * reply is a failure; after `maxAttempts` consecutive ones the breaker opens.
     */
    next() {
        const failed = !this.reachedConnect;
        this.reachedConnect = false;
        if (failed)
            this.failures += 1;
        if (failed && this.failures >= this.maxAttempts)
            return { kind: 'open', probeMs: this.capMs };
        this.retries += 1;
        return { kind: 'retry', attempt: this.retries, delayMs: this.delay(this.retries) };
    }
}

// client.js
/**
 * The connection state machine: connect, reconnect with backoff, ping/pong and liveness, token
 * refresh, request/reply correlation, and the connection-level side of subscriptions and live
 * views (subscribe, resubscribe after every reconnect, `resyncing` until every one was answered),
 * and the routing of presence and volatile pushes (protocol §15, §16) to their subscription.
 */
const TRANSIENT_SUBSCRIBE_ERRORS = new Set([100, 110, 113]);
/** A view subscribe may also meet 117: the stream was lost during the subscribe. */
const TRANSIENT_VIEW_ERRORS = new Set([...TRANSIENT_SUBSCRIBE_ERRORS, 117]);
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
class HeraldClient extends Emitter {
    constructor(options = {}) {
        super();
        this.urlIndex = 0;
        this.gen = 0;
        this.nextId = 1;
        this.pending = new Map();
        this.outbox = [];
        this.subs = new Map();
        /** Live views by their name on the connection (`sub`). */
        this.views = new Map();
        /** Protocol v2: the subscription of each number the current connection's subscribe replies gave. */
        this.numbers = new Map();
        /** The number each subscription has in `numbers` (to drop it when a resubscribe replaces it). */
        this.numberOf = new WeakMap();
        this._state = { state: 'offline', reason: 'not_started' };
        this.started = false;
        this.everConnected = false;
        /** What each subscription may ask of this client (the seam of subscription.ts). */
        this.subHost = {
            leave: (sub) => this.leave(sub),
            resubscribe: (sub, needUnsubscribe) => this.resubscribe(sub, needUnsubscribe),
            listenerFailed: (err) => this.reportListenerError(err, false),
            memberId: () => this.memberId,
            updatePresence: (sub, info) => this.updatePresence(sub, info),
        };
        /** What each live view may ask of this client (the seam of view.ts). */
        this.viewHost = {
            leaveView: (view) => this.leaveView(view),
            resubscribeView: (view, needUnsubscribe) => this.resubscribeView(view, needUnsubscribe),
            listenerFailed: (err) => this.reportListenerError(err, false),
        };
        this.lastRecv = 0;
        this.connectedAt = 0;
        this.pingIntervalMs = 25000;
        this.resyncPending = new Set();
        /** Views (by name) whose resubscribe is not answered yet. */
        this.resyncViews = new Set();
        this.unbindBrowser = [];
        this.opts = options;
        const u = options.url ?? defaultUrl();
        this.urls = Array.isArray(u) ? [...u] : [u];
        if (this.urls.length === 0)
            throw new Error('HeraldClient: empty url list');
        const shared = options.share
            ? sharedSocket(options.shareName ?? defaultShareName(this.urls, options.token), () => new HeraldClient({ ...options, share: false }))
            : undefined;
        this.WS = shared ?? resolveWebSocket(options.WebSocket);
        this.viaLeader = shared !== undefined;
        this.policy = new ReconnectPolicy(options.backoff);
        this.memberId = options.member ?? tabMemberId();
    }
    /** The current connection state. */
    get state() {
        return this._state;
    }
    /** The URL currently used (or to be used next). */
    get url() {
        return this.urls[this.urlIndex];
    }
    /** The transport of the current socket once it opened (`websocket` or `sse`), else undefined. */
    get transport() {
        const ws = this.ws;
        if (ws instanceof FallbackSocket)
            return ws.transport;
        return ws && ws.readyState === 1 ? 'websocket' : undefined;
    }
    /** A new socket for an attempt: a plain WebSocket, or one that can fall back to SSE (sse.ts). */
    newSocket() {
        const transports = this.opts.transports ?? (this.opts.WebSocket ? ['websocket'] : ['websocket', 'sse']);
        if (this.viaLeader || !transports.includes('sse'))
            return new this.WS(this.url);
        const sock = new FallbackSocket(this.url, {
            WS: this.WS,
            transports,
            probe: this.opts.sseProbe,
            onWebSocketBack: () => {
                if (this.ws === sock && this.started)
                    this.reconnect();
            },
        });
        return sock;
    }
    /**
     * Starts connecting (and keeps the connection up until `close()`). The promise resolves at the
     * first `connected` state and rejects if the client goes offline first; ignoring it is fine.
     */
    connect() {
        const p = this.waitFor('connected', 0).then(() => undefined);
        p.catch(() => { });
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
    reconnect() {
        if (!this.started) {
            this.connect();
            return;
        }
        this.clearTimer('retryTimer');
        if (this.ws)
            this.dropSocket(1000, 'reconnect requested');
        this.policy.reset();
        this.setState(this.everConnected ? this.reconnectingState(0, 0) : { state: 'connecting', attempt: 1 });
        this.openSocket();
    }
    /** Closes the connection for good; pending requests fail with `closed`. */
    close() {
        this.started = false;
        this.clearTimer('retryTimer');
        for (const off of this.unbindBrowser.splice(0))
            off();
        if (this.ws)
            this.dropSocket(1000, 'client closed');
        this.failPending(true, { code: 2, name: 'closed', message: 'client closed' });
        this.setState({ state: 'offline', reason: 'closed' });
    }
    /**
     * Resolves when the state becomes `name` (immediately if it already is); rejects on timeout
     * (`timeoutMs` > 0) or, when waiting for `connected`, if the client goes offline.
     */
    waitFor(name, timeoutMs = 10000) {
        if (this._state.state === name)
            return Promise.resolve(this._state);
        return new Promise((resolve, reject) => {
            let timer;
            const off = this.on('state', (s) => {
                if (s.state === name) {
                    off();
                    if (timer)
                        clearTimeout(timer);
                    resolve(s);
                }
                else if (s.state === 'offline' && name !== 'offline') {
                    off();
                    if (timer)
                        clearTimeout(timer);
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
    subscribe(channel, options = {}) {
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
        if (this.isLive())
            this.sendSubscribe(sub);
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
    subscribeView(channel, options) {
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
            return existing;
        }
        const view = new LiveView(this.viewHost, channel, options);
        this.views.set(name, view);
        if (this.isLive())
            this.sendViewSubscribe(view);
        return view;
    }
    /** The live view of this name (`sub`), if any. */
    getView(name) {
        return this.views.get(name);
    }
    /** The subscription of a channel, if any. */
    getSubscription(channel) {
        return this.subs.get(channel);
    }
    /** Publishes over the WebSocket. */
    publish(channel, data, options = {}) {
        return this.request('publish', { channel, data, ...publishFields(options) }, options.timeoutMs);
    }
    /**
     * Sets this connection's presence `info` on a subscribed channel (see
     * `Subscription.setPresence`); rejects with 108 `not_subscribed` when it is not subscribed.
     */
    setPresence(channel, info) {
        const sub = this.subs.get(channel);
        if (!sub || sub.status === 'unsubscribed') {
            return Promise.reject(new HeraldError({ code: 108, name: 'not_subscribed', message: `${channel} is not subscribed: subscribe with presence first`, channel }));
        }
        return sub.setPresence(info);
    }
    /**
     * Sends a volatile event (protocol §16) to the channel's current subscribers: no offset, no
     * history, no replay (cursors, typing). Needs the right to publish; refusals are `HeraldError`
     * 110 `rate_limited` (above `volatile_per_second`), 111 (data above `max_message_bytes`), 103
     * (not allowed, or volatile events off on the namespace).
     */
    volatile(channel, type, data, timeoutMs) {
        return this.request('volatile', { channel, type, data: data ?? null }, timeoutMs).then(() => undefined);
    }
    /** Reads a channel's history. */
    history(channel, options = {}) {
        const { limit, since, before, timeoutMs } = options;
        const fields = { channel, limit, since: since && { epoch: since.epoch, offset: since.offset }, before };
        return this.request('history', fields, timeoutMs);
    }
    /** Reads a keyed channel's records. */
    getState(channel, timeoutMs) {
        return this.request('state', { channel }, timeoutMs);
    }
    /** Round trip to the hub. */
    ping(timeoutMs) {
        return this.request('ping', {}, timeoutMs).then(() => undefined);
    }
    /**
     * Sends a command and resolves with its `result`. Commands made while not connected wait (up to
     * the timeout) for the connection. A command already sent when the connection drops fails with
     * `disconnected` (it may or may not have been processed: use `idempotency_key` for publishes).
     */
    request(cmd, fields, timeoutMs) {
        return new Promise((resolve, reject) => this.command(cmd, fields, timeoutMs, resolve, reject));
    }
    /**
     * Sends a command; `onResult` / `onError` run synchronously when the reply is read (the
     * subscribe reply must be applied before the publications that follow it in the same frame).
     */
    command(cmd, fields, timeoutMs, onResult, onError) {
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
            if (i >= 0)
                this.outbox.splice(i, 1);
            onError(new HeraldError({ code: 0, name: 'timeout', message: `${cmd} timed out after ${ms} ms` }));
        }, ms);
        const p = { resolve: onResult, reject: onError, timer, frame, sent: false, gen: this.gen };
        this.pending.set(id, p);
        if (this.isLive())
            this.sendPending(id, p);
        else
            this.outbox.push(id);
    }
    /** Why a request fails at once: the client is closed or offline (not merely not started). */
    offlineError() {
        const s = this._state;
        if (s.state !== 'offline' || s.reason === 'not_started')
            return undefined;
        if (s.reason === 'closed')
            return new HeraldError({ code: 2, name: 'closed', message: 'client closed' });
        return new HeraldError({ code: 3, name: 'offline', message: `client is offline (${s.reason})` });
    }
    /** Reports a listener's exception on the `error` event (or the console). */
    reportListenerError(err, fromErrorEvent) {
        if (!fromErrorEvent && this.hasListeners('error'))
            this.emit('error', err);
        else
            console.error(err.message, err.cause);
    }
    /** A throwing `error` listener is reported on the console (no loop). */
    listenerFailed(err) {
        this.reportListenerError(err, err.event === 'error');
    }
    // ------------------------------------------------------------------ internals: state
    isLive() {
        return this.ws !== undefined && (this._state.state === 'connected' || this._state.state === 'resyncing');
    }
    setState(s) {
        this._state = s;
        if (s.state === 'offline') {
            // No silent "pending forever": subscriptions say the client is offline.
            for (const sub of this.subs.values())
                if (sub.status !== 'unsubscribed')
                    sub._setStatus('offline');
            for (const view of this.views.values()) {
                if (view.status === 'unsubscribed')
                    continue;
                view._setStatus('offline');
                // Offline for good (closed, refused, final close): a view still waiting will not be answered.
                if (!this.started)
                    view._fail(new HeraldError({ code: s.reason === 'closed' ? 2 : 3, name: s.reason, message: `client went offline: ${s.reason}` }));
            }
        }
        this.emit('state', s);
    }
    /** The connection is up and every subscription was answered: `connected`, backoff reset. */
    enterConnected() {
        const info = this.info;
        this.policy.reset();
        this.setState({ state: 'connected', client: info.client, node: info.node, clients: info.clients, transport: this.transport ?? 'websocket' });
        this.emit('connected', info);
    }
    reconnectingState(attempt, delay, code, reason) {
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
    backoffDelay(attempt) {
        return this.policy.delay(attempt);
    }
    clearTimer(name) {
        const t = this[name];
        if (t !== undefined)
            clearTimeout(t);
        this[name] = undefined;
    }
    // ------------------------------------------------------------------ internals: socket
    async openSocket() {
        const gen = ++this.gen;
        this.disconnectPush = undefined;
        this.policy.attemptStarted();
        let token;
        try {
            const t = this.opts.token;
            token = typeof t === 'function' ? await t() : t;
        }
        catch (err) {
            if (gen !== this.gen || !this.started)
                return;
            this.emit('error', err instanceof Error ? err : new Error(String(err)));
            this.onFailure(0, 'token_provider_failed');
            return;
        }
        if (gen !== this.gen || !this.started)
            return;
        let ws;
        try {
            ws = this.newSocket();
        }
        catch (err) {
            this.emit('error', err instanceof Error ? err : new Error(String(err)));
            this.onFailure(0, 'socket_failed');
            return;
        }
        this.ws = ws;
        this.clearTimer('connectTimer');
        this.connectTimer = setTimeout(() => {
            if (gen !== this.gen)
                return;
            this.dropSocket(1000, 'connect timeout');
            this.onFailure(0, 'connect_timeout');
        }, this.opts.connectTimeoutMs ?? 10000);
        let opened = false;
        ws.onopen = () => {
            opened = true;
            if (gen !== this.gen)
                return;
            const id = this.nextId++;
            this.numbers.clear();
            const frame = encodeCommand(id, 'connect', { token, name: this.opts.name, version: this.opts.protocol ?? 2 });
            // The connect timer bounds this request.
            this.pending.set(id, {
                resolve: (r) => this.onConnected(gen, r),
                reject: (e) => this.onConnectError(gen, e),
                timer: undefined,
                frame,
                sent: true,
                gen,
            });
            ws.send(frame);
        };
        ws.onmessage = (ev) => {
            if (gen !== this.gen)
                return;
            this.onFrame(ev.data);
        };
        ws.onerror = () => {
            // Browsers follow an error with a close event; some implementations (Node's, on a failed
            // handshake) do not, so a socket that is closed and silent is treated as closed.
            setTimeout(() => {
                if (gen !== this.gen || this.ws !== ws || (opened && ws.readyState !== 3))
                    return;
                const onclose = ws.onclose;
                ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
                try {
                    ws.close();
                }
                catch {
                    /* never opened */
                }
                onclose?.({ code: 1006, reason: 'connection failed' });
            }, 50);
        };
        ws.onclose = (ev) => {
            if (gen !== this.gen || this.ws !== ws)
                return;
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
    dropSocket(code, reason) {
        const ws = this.ws;
        this.ws = undefined;
        this.gen++;
        this.afterSocketGone();
        if (ws) {
            ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
            try {
                ws.close(code, reason);
            }
            catch {
                /* already closed */
            }
        }
    }
    afterSocketGone() {
        this.clearTimer('connectTimer');
        this.clearTimer('livenessTimer');
        this.clearTimer('refreshTimer');
        this.resyncPending.clear();
        this.resyncViews.clear();
        this.connectedAt = 0;
        for (const sub of this.subs.values())
            if (sub.status !== 'unsubscribed')
                sub._setStatus('pending');
        for (const view of this.views.values())
            if (view.status !== 'unsubscribed')
                view._setStatus('pending');
        this.failPending(false, { code: 1, name: 'disconnected', message: 'connection lost' });
    }
    /** Rejects requests that were sent (all of them when `all`). */
    failPending(all, body) {
        for (const [id, p] of [...this.pending]) {
            if (!all && !p.sent)
                continue;
            this.pending.delete(id);
            if (p.timer)
                clearTimeout(p.timer);
            p.reject(new HeraldError(body));
        }
        if (all)
            this.outbox.length = 0;
    }
    /**
     * A connection attempt failed or an established connection dropped: back off and retry. Only
     * an attempt that never got its `connect` reply is a failure; the breaker opens after
     * `maxAttempts` consecutive failures and then probes once per `maxMs`.
     */
    onFailure(code, reason) {
        if (!this.started)
            return;
        const step = this.policy.next();
        if (this.urls.length > 1)
            this.urlIndex = (this.urlIndex + 1) % this.urls.length;
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
                if (this.started && !this.ws)
                    this.openSocket();
            }, probeMs);
            return;
        }
        this.setState(this.reconnectingState(step.attempt, step.delayMs, code || undefined, reason));
        this.retryTimer = setTimeout(() => this.tryNow(), step.delayMs);
    }
    /** Cuts a backoff wait short (browser came online, tab became visible). */
    tryNow() {
        if (!this.started || this.ws)
            return;
        this.clearTimer('retryTimer');
        if (this._state.state === 'reconnecting')
            this.setState({ ...this._state, nextTryMs: 0, nextTryAt: Date.now() });
        this.openSocket();
    }
    onConnectError(gen, err) {
        // A connection lost before the reply is handled by the close handler.
        if (gen !== this.gen || err.code === 1 || err.code === 2)
            return;
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
    onConnected(gen, res) {
        if (gen !== this.gen)
            return;
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
            for (const s of subs)
                this.resyncPending.add(s.channel);
            for (const v of views)
                this.resyncViews.add(v.name);
            this.setState({ state: 'resyncing', pending: subs.length + views.length });
        }
        else {
            this.enterConnected();
        }
        for (const s of subs)
            this.sendSubscribe(s);
        for (const v of views)
            this.sendViewSubscribe(v);
        // Flush commands made while disconnected, in order.
        for (const id of this.outbox.splice(0)) {
            const p = this.pending.get(id);
            if (p)
                this.sendPending(id, p);
        }
    }
    resyncDone(channel) {
        if (this.resyncPending.delete(channel))
            this.resyncProgress();
    }
    viewResyncDone(name) {
        if (this.resyncViews.delete(name))
            this.resyncProgress();
    }
    /** One resubscribe was answered: `connected` after the last one. */
    resyncProgress() {
        if (this._state.state !== 'resyncing')
            return;
        const pending = this.resyncPending.size + this.resyncViews.size;
        if (pending === 0) {
            this.enterConnected();
        }
        else {
            this.setState({ state: 'resyncing', pending });
        }
    }
    sendPending(id, p) {
        p.sent = true;
        p.gen = this.gen;
        this.ws.send(p.frame);
    }
    sendRaw(msg) {
        this.ws?.send(encodeMessage(msg));
    }
    // ------------------------------------------------------------------ internals: liveness, refresh
    /** Something arrived: the connection is alive. */
    touch() {
        this.lastRecv = Date.now();
        // Before the connect reply the connect timer bounds the wait.
        if (this.connectedAt && this.livenessTimer === undefined)
            this.armLiveness();
    }
    livenessDeadline() {
        const margin = this.opts.livenessMarginMs ?? Math.max(3000, Math.round(this.pingIntervalMs / 2));
        return this.pingIntervalMs + margin;
    }
    armLiveness() {
        const gen = this.gen;
        const wait = Math.max(10, this.lastRecv + this.livenessDeadline() - Date.now());
        this.livenessTimer = setTimeout(() => {
            this.livenessTimer = undefined;
            if (gen !== this.gen || !this.ws)
                return;
            if (Date.now() - this.lastRecv >= this.livenessDeadline()) {
                // Nothing for too long: the network may drop packets without closing. Treat as dead.
                this.dropSocket(1000, 'liveness timeout');
                this.emit('disconnected', { code: 4002, reason: 'no ping from the server' });
                this.onFailure(4002, 'heartbeat_timeout');
            }
            else {
                this.armLiveness();
            }
        }, wait);
    }
    scheduleRefresh(expiresAt) {
        this.clearTimer('refreshTimer');
        if (!expiresAt || typeof this.opts.token !== 'function')
            return;
        const remaining = expiresAt * 1000 - Date.now();
        const before = this.opts.refreshBeforeMs ?? Math.min(30000, remaining / 2);
        const gen = this.gen;
        this.refreshTimer = setTimeout(() => this.refreshToken(gen, expiresAt), Math.max(0, remaining - before));
    }
    async refreshToken(gen, expiresAt) {
        this.refreshTimer = undefined;
        if (gen !== this.gen)
            return;
        try {
            const provider = this.opts.token;
            const token = await provider();
            if (gen !== this.gen || !token)
                return;
            const res = (await this.request('refresh', { token }));
            if (gen !== this.gen)
                return;
            this.emit('refreshed', { expires_at: res.expires_at });
            this.scheduleRefresh(res.expires_at);
        }
        catch (err) {
            if (gen !== this.gen)
                return;
            this.emit('error', err instanceof Error ? err : new Error(String(err)));
            // Try again shortly while the token is still valid; if it lapses the hub closes with 4004
            // and the reconnect asks the provider again.
            if (expiresAt * 1000 > Date.now()) {
                this.refreshTimer = setTimeout(() => this.refreshToken(gen, expiresAt), 2000);
            }
        }
    }
    bindBrowserEvents() {
        if (this.opts.browserEvents === false)
            return;
        const g = globalThis;
        if (typeof g.addEventListener === 'function' && g.document) {
            const onOnline = () => {
                if (this._state.state === 'offline' && this._state.reason === 'circuit_open')
                    this.reconnect();
                else
                    this.tryNow();
            };
            g.addEventListener('online', onOnline);
            this.unbindBrowser.push(() => g.removeEventListener?.('online', onOnline));
        }
        const doc = g.document;
        if (doc && typeof doc.addEventListener === 'function') {
            const onVisible = () => {
                if (doc.visibilityState !== 'visible')
                    return;
                if (this._state.state === 'reconnecting')
                    this.tryNow();
                else if (this.isLive() && Date.now() - this.lastRecv > this.pingIntervalMs) {
                    // The tab slept: check that the connection still carries traffic.
                    const gen = this.gen;
                    this.ping(5000).catch(() => {
                        if (gen !== this.gen || !this.ws)
                            return;
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
    onFrame(data) {
        this.touch();
        if (typeof data !== 'string')
            return;
        const gen = this.gen;
        for (const line of frameLines(data)) {
            if (gen !== this.gen)
                return; // a message replaced the connection
            const msg = decodeMessage(line);
            if (msg === undefined) {
                this.emit('error', new Error(`unparseable message from the hub: ${line.slice(0, 200)}`));
                continue;
            }
            this.onMessage(msg);
            if (!this.ws)
                return; // the message closed the connection
        }
    }
    onMessage(msg) {
        if (Array.isArray(msg)) {
            // A compact publication (v2): its subscription gives the channel and the epoch.
            const sub = this.numbers.get(msg[0]);
            if (sub?.position && this.subs.get(sub.channel) === sub)
                sub._onPublication(expandCompact(msg, sub.channel, sub.position.epoch));
            return;
        }
        if (typeof msg.id === 'number') {
            const p = this.pending.get(msg.id);
            if (!p)
                return;
            this.pending.delete(msg.id);
            if (p.timer)
                clearTimeout(p.timer);
            if (msg.error)
                p.reject(new HeraldError(msg.error));
            else
                p.resolve(msg.result ?? {});
            return;
        }
        switch (msg.push) {
            case 'pub':
                if (msg.pub)
                    this.subs.get(msg.pub.channel)?._onPublication(msg.pub);
                break;
            case 'chunk':
                if (msg.channel)
                    this.subs.get(msg.channel)?._onChunk(msg);
                break;
            case 'view': {
                const m = msg;
                if (m.sub !== undefined && m.pub && m.operation && m.key !== undefined) {
                    this.views.get(m.sub)?._onEvent(m);
                }
                break;
            }
            case 'presence_list':
            case 'presence':
            case 'presence_stats':
            case 'volatile':
                this.onPresencePush(msg);
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
                if (msg.error)
                    this.emit('error', new HeraldError(msg.error));
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
    onPresencePush(msg) {
        if (msg.push === 'volatile' && msg.channel) {
            const event = { channel: msg.channel, type: msg.type, data: msg.data, user: msg.user, client: msg.client };
            for (const view of this.views.values()) {
                if (view.channel === msg.channel && view.status === 'subscribed')
                    view._emit('volatile', event);
            }
        }
        const sub = msg.channel ? this.subs.get(msg.channel) : undefined;
        if (!sub || sub.status !== 'subscribed')
            return;
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
    updatePresence(sub, info) {
        if (!this.isLive() || sub.status === 'pending' || sub.status === 'offline')
            return Promise.resolve();
        return this.request('presence_update', { channel: sub.channel, info: info ?? null }).then(() => undefined, (err) => {
            // Sent while the subscribe was pending and the subscribe failed or the connection
            // dropped: the resubscribe carries the new `info`.
            if (sub.status !== 'subscribed' && (err.code === 108 || err.code === 1 || err.code === 2))
                return;
            throw err;
        });
    }
    sendSubscribe(sub) {
        if (!this.isLive())
            return;
        sub._setStatus('subscribing');
        const gen = ++sub.generation;
        const fields = { channel: sub.channel, ...sub.presence._fields() };
        if (sub.position)
            fields.since = { epoch: sub.position.epoch, offset: sub.position.offset };
        else if (sub.options.snapshot)
            fields.snapshot = true;
        if (sub.options.preview)
            fields.preview = sub.options.preview;
        if (this.info)
            sub.presence.self = `${this.info.user}/${sub.presence.memberId}`;
        // The reply is applied synchronously: publications that follow it in the same frame (or the
        // same read) must find the subscription `subscribed` at the reply's position.
        this.command('subscribe', fields, undefined, (r) => {
            if (gen !== sub.generation || sub.status === 'unsubscribed')
                return;
            const res = r;
            if (typeof res.n === 'number') {
                const old = this.numberOf.get(sub);
                if (old !== undefined && this.numbers.get(old) === sub)
                    this.numbers.delete(old);
                this.numbers.set(res.n, sub);
                this.numberOf.set(sub, res.n);
            }
            sub._onSubscribeReply(res);
            this.resyncDone(sub.channel);
        }, (err) => {
            if (gen !== sub.generation || sub.status === 'unsubscribed')
                return;
            if (err.code === 1 || err.code === 2)
                return; // connection dropped: resubscribed on reconnect
            if (err.code === 0 || TRANSIENT_SUBSCRIBE_ERRORS.has(err.code)) {
                // Transient: retry on this connection after a short pause.
                const cgen = this.gen;
                setTimeout(() => {
                    if (cgen === this.gen && sub.status === 'subscribing' && gen === sub.generation)
                        this.sendSubscribe(sub);
                }, 1000);
                sub._emit('error', err);
                return;
            }
            sub._setStatus('unsubscribed');
            if (this.subs.get(sub.channel) === sub)
                this.subs.delete(sub.channel);
            this.resyncDone(sub.channel);
            sub._emit('error', err);
            sub._emit('unsubscribed', { channel: sub.channel, code: err.code, reason: err.errorName });
        });
    }
    /** Ends and re-creates the subscription from the last delivered position. */
    resubscribe(sub, needUnsubscribe) {
        if (sub.status === 'subscribing' || !this.isLive())
            return;
        sub.stats.resubscribes += 1;
        sub._setStatus('subscribing');
        if (needUnsubscribe)
            this.request('unsubscribe', { channel: sub.channel }).catch(() => { });
        this.sendSubscribe(sub);
    }
    onUnsubscribePush(msg) {
        const viewSub = msg.sub;
        if (viewSub !== undefined) {
            this.onViewUnsubscribePush(viewSub, msg);
            return;
        }
        const sub = msg.channel ? this.subs.get(msg.channel) : undefined;
        if (!sub || sub.status === 'unsubscribed')
            return;
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
    leave(sub) {
        if (sub.status === 'unsubscribed')
            return;
        const wasActive = sub.status === 'subscribed' || sub.status === 'subscribing';
        sub._setStatus('unsubscribed');
        sub.generation++;
        if (this.subs.get(sub.channel) === sub)
            this.subs.delete(sub.channel);
        this.resyncDone(sub.channel);
        if (wasActive && this.isLive())
            this.request('unsubscribe', { channel: sub.channel }).catch(() => { });
        sub._emit('unsubscribed', { channel: sub.channel, reason: 'client' });
    }
    // ------------------------------------------------------------------ internals: live views
    sendViewSubscribe(view) {
        if (!this.isLive())
            return;
        view._setStatus('subscribing');
        const gen = ++view.generation;
        // As for channels, the reply is applied synchronously, before the events that follow it.
        this.command('subscribe', view._command(), undefined, (r) => {
            if (gen !== view.generation || view.status === 'unsubscribed')
                return;
            view._onReply(r);
            this.viewResyncDone(view.name);
        }, (err) => {
            if (gen !== view.generation || view.status === 'unsubscribed')
                return;
            if (err.code === 1 || err.code === 2)
                return; // connection dropped: resubscribed on reconnect
            if (err.code === 0 || TRANSIENT_VIEW_ERRORS.has(err.code)) {
                const cgen = this.gen;
                setTimeout(() => {
                    if (cgen === this.gen && view.status === 'subscribing' && gen === view.generation)
                        this.sendViewSubscribe(view);
                }, 1000);
                view._emit('error', err);
                return;
            }
            // Refused (118 invalid_filter, 107, 116, 101-103, ...): the view ends with the error.
            this.endView(view);
            view._fail(err);
            view._emit('error', err);
            view._emit('unsubscribed', { channel: view.channel, code: err.code, reason: err.errorName });
        });
    }
    /** Marks the view ended and forgets it. */
    endView(view) {
        view._setStatus('unsubscribed');
        view.generation++;
        if (this.views.get(view.name) === view)
            this.views.delete(view.name);
        this.viewResyncDone(view.name);
    }
    /** Ends and re-creates the view from its position (`since`). */
    resubscribeView(view, needUnsubscribe) {
        if (view.status === 'subscribing' || !this.isLive())
            return;
        view.stats.resubscribes += 1;
        if (needUnsubscribe)
            this.request('unsubscribe', { channel: view.channel, sub: view.name }).catch(() => { });
        this.sendViewSubscribe(view);
    }
    onViewUnsubscribePush(name, msg) {
        const view = this.views.get(name);
        if (!view || view.status === 'unsubscribed')
            return;
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
    leaveView(view) {
        if (view.status === 'unsubscribed')
            return;
        const wasActive = view.status === 'subscribed' || view.status === 'subscribing';
        this.endView(view);
        if (wasActive && this.isLive())
            this.request('unsubscribe', { channel: view.channel, sub: view.name }).catch(() => { });
        view._fail(new HeraldError({ code: 2, name: 'unsubscribed', message: `view ${view.name} was unsubscribed before its first reply`, channel: view.channel }));
        view._emit('unsubscribed', { channel: view.channel, reason: 'client' });
    }
}

// http.js
/** The hub's HTTP API (for backends, tools and the dashboard), authorized by an API key. */
function apiPublishFields(o) {
    return { ...publishFields(o), source: o.source, user: o.user };
}
/** The hub's HTTP API, authorized by an API key. Uses the global `fetch`. */
class HeraldApi {
    /** `baseUrl` like `http://127.0.0.1:7700` ('' for the page's own origin). */
    constructor(baseUrl, apiKey) {
        this.baseUrl = baseUrl.replace(/\/+$/, '');
        this.apiKey = apiKey;
    }
    async call(method, path, body) {
        const headers = { 'x-api-key': this.apiKey };
        if (body !== undefined)
            headers['content-type'] = 'application/json';
        const res = await fetch(this.baseUrl + path, {
            method,
            headers,
            body: body === undefined ? undefined : JSON.stringify(body),
        });
        const text = await res.text();
        let json;
        try {
            json = text ? JSON.parse(text) : {};
        }
        catch {
            json = undefined;
        }
        if (!res.ok) {
            const err = json?.error;
            throw new HeraldError(err ?? { code: res.status, name: 'http_error', message: `${method} ${path}: HTTP ${res.status} ${text.slice(0, 200)}` });
        }
        return json;
    }
    publish(channel, data, options = {}) {
        return this.call('POST', '/api/publish', stripUndefined({ channel, data, ...apiPublishFields(options) }));
    }
    broadcast(channels, data, options = {}) {
        return this.call('POST', '/api/broadcast', stripUndefined({ channels, data, ...apiPublishFields(options) }));
    }
    channels() {
        return this.call('GET', '/api/channels');
    }
    info() {
        return this.call('GET', '/api/info');
    }
    history(channel, options = {}) {
        const q = new URLSearchParams({ channel });
        if (options.limit !== undefined)
            q.set('limit', String(options.limit));
        if (options.since)
            q.set('since', `${options.since.epoch}:${options.since.offset}`);
        if (options.before !== undefined)
            q.set('before', String(options.before));
        return this.call('GET', `/api/history?${q}`);
    }
    state(channel) {
        return this.call('GET', `/api/state?${new URLSearchParams({ channel })}`);
    }
    token(req) {
        return this.call('POST', '/api/token', req);
    }
}

export { CLOSE_CODES, HeraldError, isFinalCloseCode, ListenerError, Emitter, mergePatch, SseSocket, sseUrl, Presence, presenceStore, tabMemberId, Subscription, LiveView, viewStore, defaultShareName, HeraldClient, HeraldApi };
