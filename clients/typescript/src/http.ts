/** The hub's HTTP API (for backends, tools and the dashboard), authorized by an API key. */

import { HeraldError } from './errors.js';
import { publishFields, stripUndefined } from './fields.js';
import type { ErrorBody, HistoryResult, Position, PublishOptions, PublishResult, StateResult } from './types.js';

export interface NodeInfo {
  id: string;
  address: string;
  connections: number;
  subscriptions: number;
  version: string;
}

export interface HubInfo {
  node: string;
  version: string;
  connections: number;
  subscriptions: number;
  uptime_secs: number;
  nodes: NodeInfo[];
}

export interface TokenRequest {
  sub: string;
  channels?: string[];
  publish?: string[];
  roles?: string[];
  ttl_secs?: number;
}

/** Publish options of the HTTP API (protocol §12): the socket's, plus `source` and `user`. */
export interface ApiPublishOptions extends Omit<PublishOptions, 'timeoutMs'> {
  /** `meta.source` (default `api`). */
  source?: string;
  /** `meta.user`, the user the backend publishes for. */
  user?: string;
}

function apiPublishFields(o: ApiPublishOptions): Record<string, unknown> {
  return { ...publishFields(o), source: o.source, user: o.user };
}

/** The hub's HTTP API, authorized by an API key. Uses the global `fetch`. */
export class HeraldApi {
  readonly baseUrl: string;
  private readonly apiKey: string;

  /** `baseUrl` like `http://127.0.0.1:7700` ('' for the page's own origin). */
  constructor(baseUrl: string, apiKey: string) {
    this.baseUrl = baseUrl.replace(/\/+$/, '');
    this.apiKey = apiKey;
  }

  private async call<T>(method: string, path: string, body?: unknown): Promise<T> {
    const headers: Record<string, string> = { 'x-api-key': this.apiKey };
    if (body !== undefined) headers['content-type'] = 'application/json';
    const res = await fetch(this.baseUrl + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    let json: unknown;
    try {
      json = text ? JSON.parse(text) : {};
    } catch {
      json = undefined;
    }
    if (!res.ok) {
      const err = (json as { error?: ErrorBody } | undefined)?.error;
      throw new HeraldError(err ?? { code: res.status, name: 'http_error', message: `${method} ${path}: HTTP ${res.status} ${text.slice(0, 200)}` });
    }
    return json as T;
  }

  publish(channel: string, data: unknown, options: ApiPublishOptions = {}): Promise<PublishResult> {
    return this.call('POST', '/api/publish', stripUndefined({ channel, data, ...apiPublishFields(options) }));
  }

  broadcast(channels: string[], data: unknown, options: ApiPublishOptions = {}): Promise<{ results: unknown[] }> {
    return this.call('POST', '/api/broadcast', stripUndefined({ channels, data, ...apiPublishFields(options) }));
  }

  channels(): Promise<{ channels: { channel: string; subscribers: number }[] }> {
    return this.call('GET', '/api/channels');
  }

  info(): Promise<HubInfo> {
    return this.call('GET', '/api/info');
  }

  history(channel: string, options: { limit?: number; since?: Position; before?: number } = {}): Promise<HistoryResult> {
    const q = new URLSearchParams({ channel });
    if (options.limit !== undefined) q.set('limit', String(options.limit));
    if (options.since) q.set('since', `${options.since.epoch}:${options.since.offset}`);
    if (options.before !== undefined) q.set('before', String(options.before));
    return this.call('GET', `/api/history?${q}`);
  }

  state(channel: string): Promise<StateResult> {
    return this.call('GET', `/api/state?${new URLSearchParams({ channel })}`);
  }

  token(req: TokenRequest): Promise<{ token: string; expires_at?: number }> {
    return this.call('POST', '/api/token', req);
  }
}
