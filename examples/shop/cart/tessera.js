// Tessera's platform for JavaScript services: HTTP handling, key-value store, SQL,
// configuration and events, over the component interfaces in wit/.
//
//   import { serve, Router, json, HttpError, kv, sql, config, publish, call } from './tessera.js';
//
// The module is evaluated once at build time (the engine is pre-initialized), so platform
// calls belong inside request handlers: `kv.open()` is lazy and may be called anywhere,
// the rest must run while a request is being handled.

import { open as openBucket } from 'wasi:keyvalue/store@0.2.0-draft2';
import { Cas, increment as atomicIncrement, swap } from 'wasi:keyvalue/atomics@0.2.0-draft2';
import { getMany, setMany, deleteMany } from 'wasi:keyvalue/batch@0.2.0-draft2';
import { get as configGet, getAll as configGetAll } from 'wasi:config/store@0.2.0-draft';
import * as db from 'tessera:sql/sql@0.1.0';
import { publish as produce } from 'tessera:messaging/producer@0.1.0';

const encoder = new TextEncoder();
const decoder = new TextDecoder();

// ---------------------------------------------------------------------------------------
// Errors

/** A platform call failed. `kind` is the interface's error case, e.g. `no-such-store`,
 *  `constraint-violation`, `invalid-topic`. */
export class TesseraError extends Error {
  constructor(kind, detail) {
    super(detail === undefined ? kind : `${kind}: ${detail}`);
    this.name = new.target.name;
    this.kind = kind;
  }
}
export class KvError extends TesseraError {}
export class SqlError extends TesseraError {}
export class ConfigError extends TesseraError {}
export class PublishError extends TesseraError {}

// Imported functions that return `result<_, error>` throw an object whose `payload` is the
// error variant `{ tag, val }`; turn it into the matching TesseraError subclass.
function guard(ErrorClass, f) {
  try {
    return f();
  } catch (e) {
    const p = e && e.payload;
    if (p && typeof p.tag === 'string') {
      const detail = p.val && typeof p.val === 'object' && 'tag' in p.val ? p.val.val ?? p.val.tag : p.val;
      throw new ErrorClass(p.tag, detail);
    }
    throw e;
  }
}

/** Thrown from a handler, answers `status` with JSON `{"error": message}`. */
export class HttpError extends Error {
  constructor(status, message, headers) {
    super(message ?? `HTTP ${status}`);
    this.name = 'HttpError';
    this.status = status;
    this.headers = headers;
  }
}

// ---------------------------------------------------------------------------------------
// Incoming requests and responses

/** A JSON response: `json({ ok: true })`, `json(data, 201)`, `json(data, { status, headers })`. */
export function json(data, init = 200) {
  const { status = 200, headers = {} } = typeof init === 'number' ? { status: init } : init;
  const h = new Headers(headers);
  if (!h.has('content-type')) h.set('content-type', 'application/json');
  return new Response(JSON.stringify(data), { status, headers: h });
}

/** A plain-text response: `text('hi')`, `text('gone', 410)`. */
export function text(body, init = 200) {
  const { status = 200, headers = {} } = typeof init === 'number' ? { status: init } : init;
  const h = new Headers(headers);
  if (!h.has('content-type')) h.set('content-type', 'text/plain; charset=utf-8');
  return new Response(body, { status, headers: h });
}

function toResponse(value) {
  if (value instanceof Response) return value;
  if (value === undefined || value === null) return new Response(null, { status: 204 });
  if (typeof value === 'string') return text(value);
  return json(value);
}

/**
 * Answers every request with `handler(request, ctx)`: `request` is the fetch API's
 * Request, `ctx` is `{ url, params }` (`url` a URL: pathname, searchParams; `params` the
 * route's named segments when the handler is a Router). The handler may be async and may
 * return a Response, a string (text/plain), another value (JSON) or nothing (204).
 * A thrown HttpError becomes its status with `{"error": message}`; anything else thrown is
 * logged to stderr and answered 500.
 */
export function serve(handler) {
  const fn = typeof handler === 'function' ? handler : handler.handle.bind(handler);
  addEventListener('fetch', (event) => event.respondWith(respond(fn, event.request)));
}

async function respond(fn, request) {
  try {
    return toResponse(await fn(request, { url: new URL(request.url), params: {} }));
  } catch (e) {
    if (e instanceof HttpError) return json({ error: e.message }, { status: e.status, headers: e.headers });
    console.error(e instanceof Error && e.stack ? `${e}\n${e.stack.trimEnd()}` : e);
    return json({ error: 'internal error' }, 500);
  }
}

/**
 * A small router: `router.get('/cart/:id', (req, { params }) => ...)`. Patterns match whole
 * paths; `:name` matches one segment, a trailing `*` the rest. An unmatched path answers
 * 404, a matched path with another method 405 (with `allow`), both as JSON errors.
 */
export class Router {
  #routes = [];
  add(method, pattern, handler) {
    const names = [];
    const source = pattern
      .split('/')
      .map((seg) => {
        if (seg === '*') return names.push('rest'), '(.*)';
        if (seg.startsWith(':')) return names.push(seg.slice(1)), '([^/]+)';
        return seg.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
      })
      .join('/');
    this.#routes.push({ method: method.toUpperCase(), regex: new RegExp(`^${source}/?$`), names, handler });
    return this;
  }
  get(p, h) { return this.add('GET', p, h); }
  post(p, h) { return this.add('POST', p, h); }
  put(p, h) { return this.add('PUT', p, h); }
  patch(p, h) { return this.add('PATCH', p, h); }
  delete(p, h) { return this.add('DELETE', p, h); }
  all(p, h) { return this.add('*', p, h); }

  handle(request, ctx = { url: new URL(request.url) }) {
    const path = ctx.url.pathname;
    const allowed = [];
    for (const route of this.#routes) {
      const m = route.regex.exec(path);
      if (!m) continue;
      const method = request.method === 'HEAD' ? 'GET' : request.method;
      if (route.method !== '*' && route.method !== method) {
        allowed.push(route.method);
        continue;
      }
      const params = {};
      route.names.forEach((name, i) => (params[name] = m[i + 1] === undefined ? undefined : decodeURIComponent(m[i + 1])));
      return route.handler(request, { ...ctx, params });
    }
    if (allowed.length) throw new HttpError(405, `method ${request.method} not allowed on ${path}`, { allow: allowed.join(', ') });
    throw new HttpError(404, `no route for ${path}`);
  }
}

/**
 * Reads an event delivered by a subscription or a schedule (a CloudEvents POST):
 * `{ id, type, source, topic, time, attempt, contentType, data }`, where `data` is parsed
 * JSON when the content type says JSON, else text.
 */
export async function readEvent(request) {
  const h = request.headers;
  const contentType = h.get('content-type') ?? '';
  const body = await request.text();
  let data = body;
  if (/\bjson\b/.test(contentType) && body !== '') data = JSON.parse(body);
  return {
    id: h.get('ce-id'),
    type: h.get('ce-type'),
    source: h.get('ce-source'),
    topic: h.get('ce-subject'),
    time: h.get('ce-time'),
    attempt: Number(h.get('x-tessera-attempt') ?? 1),
    contentType,
    data,
  };
}

// ---------------------------------------------------------------------------------------
// Outgoing HTTP: the global `fetch` (any origin granted by the manifest's `outbound`).

/** Calls another service of the app: `call('catalog', '/catalog/tea')` is
 *  `fetch('http://catalog.internal/catalog/tea')`; needs `outbound = ["http://catalog.internal"]`. */
export function call(service, path, init) {
  return fetch(`http://${service}.internal${path.startsWith('/') ? path : `/${path}`}`, init);
}

// ---------------------------------------------------------------------------------------
// Key-value store

function toBytes(value) {
  if (typeof value === 'string') return encoder.encode(value);
  if (value instanceof Uint8Array) return value;
  if (value instanceof ArrayBuffer) return new Uint8Array(value);
  if (ArrayBuffer.isView(value)) return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  throw new TypeError(`expected a string or bytes, got ${typeof value} (use setJson for objects)`);
}

/** One bucket of the service's key-value store. Values are bytes; strings are UTF-8. */
export class Bucket {
  #handle;
  constructor(name) {
    this.name = name;
  }
  get #bucket() {
    if (!this.#handle) {
      try {
        this.#handle = guard(KvError, () => openBucket(this.name));
      } catch (e) {
        if (e.kind === 'no-such-store') throw new KvError(e.kind, `bucket "${this.name}" is not declared in the manifest's buckets`);
        throw e;
      }
    }
    return this.#handle;
  }
  /** The value as a string, or null if absent. */
  get(key) {
    const v = this.getBytes(key);
    return v === null ? null : decoder.decode(v);
  }
  /** The value as bytes (Uint8Array), or null if absent. */
  getBytes(key) {
    return guard(KvError, () => this.#bucket.get(key)) ?? null;
  }
  /** The value parsed as JSON, or null if absent. */
  getJson(key) {
    const v = this.get(key);
    return v === null ? null : JSON.parse(v);
  }
  /** Sets a string or bytes. */
  set(key, value) {
    guard(KvError, () => this.#bucket.set(key, toBytes(value)));
  }
  /** Sets `JSON.stringify(value)`. */
  setJson(key, value) {
    this.set(key, JSON.stringify(value));
  }
  /** Removes a key (absent is fine). */
  delete(key) {
    guard(KvError, () => this.#bucket.delete(key));
  }
  exists(key) {
    return guard(KvError, () => this.#bucket.exists(key));
  }
  /** Every key, in ascending order, optionally only those starting with `prefix`. */
  keys(prefix = '') {
    const out = [];
    let cursor;
    do {
      const page = guard(KvError, () => this.#bucket.listKeys(cursor));
      for (const k of page.keys) if (k.startsWith(prefix)) out.push(k);
      cursor = page.cursor;
    } while (cursor !== undefined);
    return out;
  }
  /** Atomically adds `delta` (default 1) to a counter and returns the new value. */
  increment(key, delta = 1) {
    const v = guard(KvError, () => atomicIncrement(this.#bucket, key, BigInt(delta)));
    return Number.isSafeInteger(Number(v)) ? Number(v) : v;
  }
  /**
   * Read-modify-write without lost updates: calls `fn(current)` with the value as a string
   * (null if absent) and stores what it returns (string or bytes); if another request
   * changed the key in between, reads again and retries (up to `attempts` times).
   * Returns the stored value.
   */
  update(key, fn, attempts = 10) {
    for (let i = 0; i < attempts; i++) {
      const cas = guard(KvError, () => Cas.new(this.#bucket, key));
      const current = guard(KvError, () => cas.current());
      const next = fn(current === undefined ? null : decoder.decode(current));
      try {
        swap(cas, toBytes(next));
        return next;
      } catch (e) {
        const p = e && e.payload;
        if (p && p.tag === 'cas-failed') continue;
        if (p && p.tag === 'store-error') throw new KvError(p.val.tag, p.val.val);
        throw e;
      }
    }
    throw new KvError('cas-failed', `${key} kept changing (${attempts} attempts)`);
  }
  /** `update` for JSON values: `fn(currentOrNull)` returns the new value. */
  updateJson(key, fn, attempts = 10) {
    const next = this.update(key, (v) => JSON.stringify(fn(v === null ? null : JSON.parse(v))), attempts);
    return JSON.parse(next);
  }
  /** Several keys in one call: a Map of the present keys to their string values. */
  getMany(keys) {
    const found = guard(KvError, () => getMany(this.#bucket, [...keys]));
    const out = new Map();
    for (const entry of found) if (entry) out.set(entry[0], decoder.decode(entry[1]));
    return out;
  }
  /** Sets several keys in one call, from an object, a Map or `[key, value]` pairs. */
  setMany(entries) {
    const pairs = entries instanceof Map || Array.isArray(entries) ? [...entries] : Object.entries(entries);
    guard(KvError, () => setMany(this.#bucket, pairs.map(([k, v]) => [k, toBytes(v)])));
  }
  deleteMany(keys) {
    guard(KvError, () => deleteMany(this.#bucket, [...keys]));
  }
}

export const kv = {
  /** A bucket: `default`, or one declared in the manifest's `buckets`. Opens lazily. */
  open(name = 'default') {
    return new Bucket(name);
  },
};

// ---------------------------------------------------------------------------------------
// SQL (SQLite dialect; `?` parameters)

function toValue(v) {
  if (v === null || v === undefined) return { tag: 'null' };
  switch (typeof v) {
    case 'number':
      return Number.isInteger(v) ? { tag: 'integer', val: BigInt(v) } : { tag: 'real', val: v };
    case 'bigint':
      return { tag: 'integer', val: v };
    case 'boolean':
      return { tag: 'integer', val: v ? 1n : 0n };
    case 'string':
      return { tag: 'text', val: v };
  }
  if (v instanceof Date) return { tag: 'text', val: v.toISOString() };
  if (v instanceof Uint8Array || v instanceof ArrayBuffer || ArrayBuffer.isView(v)) return { tag: 'blob', val: toBytes(v) };
  throw new TypeError(`cannot bind ${Object.prototype.toString.call(v)} as an SQL parameter`);
}

function fromValue(v) {
  switch (v.tag) {
    case 'null':
      return null;
    case 'integer':
      return Number.isSafeInteger(Number(v.val)) ? Number(v.val) : v.val;
    default:
      return v.val;
  }
}

function toChanges(c) {
  return {
    rowsAffected: Number(c.rowsAffected),
    lastInsertId: c.lastInsertId === undefined ? null : Number(c.lastInsertId),
  };
}

function toStatement(s) {
  if (typeof s === 'string') return { sql: s, params: [] };
  if (Array.isArray(s)) return { sql: s[0], params: (s[1] ?? []).map(toValue) };
  return { sql: s.sql, params: (s.params ?? []).map(toValue) };
}

export const sql = {
  /** Rows as objects keyed by column name. Integers are numbers (BigInt beyond 2^53),
   *  reals numbers, text strings, blobs Uint8Array, NULL null. */
  query(text, params = []) {
    const r = guard(SqlError, () => db.query(text, params.map(toValue)));
    return r.rows.map((row) => {
      const o = {};
      row.forEach((v, i) => (o[r.columns[i]] = fromValue(v)));
      return o;
    });
  },
  /** The first row, or null. */
  queryOne(text, params = []) {
    return this.query(text, params)[0] ?? null;
  },
  /** Runs a statement: `{ rowsAffected, lastInsertId }` (lastInsertId null unless it inserted). */
  execute(text, params = []) {
    return toChanges(guard(SqlError, () => db.execute(text, params.map(toValue))));
  },
  /** Runs statements in one transaction (all or none): each a string, `[sql, params]` or
   *  `{ sql, params }`. Returns each one's changes. */
  batch(statements) {
    return guard(SqlError, () => db.batch(statements.map(toStatement))).map(toChanges);
  },
};

// ---------------------------------------------------------------------------------------
// Configuration and secrets

export const config = {
  /** A config value or secret, or `fallback` (default undefined) if unset. */
  get(key, fallback) {
    return guard(ConfigError, () => configGet(key)) ?? fallback;
  },
  /** Every key and value as an object. */
  getAll() {
    return Object.fromEntries(guard(ConfigError, () => configGetAll()));
  },
};

// ---------------------------------------------------------------------------------------
// Events

/**
 * Publishes a message to a topic of the app; returns its id (subscribers see it as
 * `ce-id`). `data` is a string, bytes, or any other value sent as JSON. The message is
 * sent only if this request succeeds (status below 500).
 */
export function publish(topic, data, contentType) {
  let bytes;
  if (typeof data === 'string' || data instanceof Uint8Array || data instanceof ArrayBuffer || ArrayBuffer.isView(data)) {
    bytes = toBytes(data);
    if (contentType === undefined && typeof data === 'string') contentType = 'text/plain; charset=utf-8';
  } else {
    bytes = encoder.encode(JSON.stringify(data));
    contentType ??= 'application/json';
  }
  return guard(PublishError, () => produce(topic, bytes, contentType));
}
