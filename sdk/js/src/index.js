// The Sluice filter SDK for JavaScript: wrappers over the `sluice:filter` world's handles and
// variants, and `defineFilter`, which turns a filter class into the `filter` export the host
// calls. Host capabilities (log, kv, metrics, callout, clock, random, trace) are imported directly
// from their interfaces, such as `import { log } from 'sluice:filter/log@0.1.3'`.

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Header values and bodies travel as bytes; strings are sent as UTF-8. */
export function toBytes(value) {
  if (value instanceof Uint8Array) return value;
  if (value === undefined || value === null) return new Uint8Array();
  return encoder.encode(String(value));
}

/** Bytes as text (UTF-8, invalid sequences replaced). */
export function toText(bytes) {
  return bytes === undefined ? undefined : decoder.decode(bytes);
}

/** Header fields as `[name, bytes]` pairs, from an object, a Map or pairs. */
function headerPairs(headers) {
  if (!headers) return [];
  const entries = headers instanceof Map || Array.isArray(headers) ? [...headers] : Object.entries(headers);
  return entries.map(([name, value]) => [String(name).toLowerCase(), toBytes(value)]);
}

/** Header access shared by the request and the response; reads and writes go to the host. */
class Message {
  constructor(handle) {
    this.handle = handle;
  }
  /** The first value of header `name` as text, or `undefined`. */
  header(name) { return toText(this.handle.header(name)); }
  /** The first value of header `name` as bytes, or `undefined`. */
  headerBytes(name) { return this.handle.header(name); }
  /** Every value of header `name`, as text. */
  headerAll(name) { return this.handle.headerAll(name).map(toText); }
  /** Every header as `[name, text]` pairs (copies them all: prefer `header`). */
  headers() { return this.handle.headers().map(([name, value]) => [name, toText(value)]); }
  /** Replaces header `name`; throws the host's reason when refused (invalid, or framing). */
  setHeader(name, value) { this.handle.setHeader(name, toBytes(value)); }
  appendHeader(name, value) { this.handle.appendHeader(name, toBytes(value)); }
  removeHeader(name) { this.handle.removeHeader(name); }
}

/** The live request. Nothing is copied unless asked for. */
export class Request extends Message {
  get method() { return this.handle.method(); }
  setMethod(method) { this.handle.setMethod(method); }
  /** Path and query, as the upstream will get them. */
  get path() { return this.handle.pathWithQuery(); }
  setPath(pathWithQuery) { this.handle.setPathWithQuery(pathWithQuery); }
  get authority() { return this.handle.authority(); }
  get clientIp() { return this.handle.clientIp(); }
  /** The verified client certificate's identity (mutual TLS), or `undefined`. */
  get clientIdentity() { return this.handle.clientIdentity(); }
  get requestId() { return this.handle.requestId(); }
  get route() { return this.handle.route(); }
  /** The key the HTTP cache stores and finds this request's response under. */
  setCacheKey(key) { this.handle.setCacheKey(key); }
}

/** The live response from the upstream (response phases only). */
export class Response extends Message {
  get status() { return this.handle.status(); }
  setStatus(status) { this.handle.setStatus(status); }
}

function localResponse(status, { headers, body } = {}) {
  return { status, headers: headerPairs(headers), body: toBytes(body) };
}

/** What a header phase decides. */
export const Decision = Object.freeze({
  /** Go on to the next filter and the upstream. */
  continue() {
    return { tag: 'continue' };
  },
  /** Answer with this response instead: `Decision.respond(403, { body: 'no' })`. */
  respond(status, init) {
    return { tag: 'respond', val: localResponse(status, init) };
  },
});

/** What a body phase decides about its chunk. */
export const BodyAction = Object.freeze({
  pass() {
    return { tag: 'pass' };
  },
  /** Pass these bytes (or this text) on instead. */
  replace(body) {
    return { tag: 'replace', val: toBytes(body) };
  },
  respond(status, init) {
    return { tag: 'respond', val: localResponse(status, init) };
  },
});

const PHASE_METHODS = {
  onRequest: 'requestHeaders',
  onRequestBody: 'requestBody',
  onResponse: 'responseHeaders',
  onResponseBody: 'responseBody',
};

function reason(error) {
  return error instanceof Error ? error.message : String(error);
}

/**
 * Turns a filter class into the `filter` export: `export const filter = defineFilter(MyFilter)`.
 *
 * The class is constructed once per instance with the route's config (parsed JSON; `{}` when
 * the route gives none); throwing refuses the config. The phases it takes part in are the
 * methods it defines: `onRequest(request)`, `onRequestBody(request, body, endOfStream)`,
 * `onResponse(request, response)`, `onResponseBody(request, response, body, endOfStream)`.
 * A static `bufferResponseBody = true` asks for the whole response body in one call.
 * A phase without a return value continues (or passes its chunk).
 */
export function defineFilter(FilterClass) {
  let instance = null;
  const wants = (method) => typeof FilterClass.prototype[method] === 'function';
  return {
    configure(config) {
      try {
        const parsed = config && config !== 'null' ? JSON.parse(config) : {};
        instance = new FilterClass(parsed ?? {});
      } catch (error) {
        throw reason(error);
      }
      const phases = {};
      for (const [method, flag] of Object.entries(PHASE_METHODS)) phases[flag] = wants(method);
      phases.bufferResponseBody = phases.responseBody && FilterClass.bufferResponseBody === true;
      return phases;
    },
    onRequest(request) {
      return instance.onRequest(new Request(request)) ?? Decision.continue();
    },
    onRequestBody(request, body, endOfStream) {
      return instance.onRequestBody(new Request(request), body, endOfStream) ?? BodyAction.pass();
    },
    onResponse(request, response) {
      return instance.onResponse(new Request(request), new Response(response)) ?? Decision.continue();
    },
    onResponseBody(request, response, body, endOfStream) {
      return instance.onResponseBody(new Request(request), new Response(response), body, endOfStream) ?? BodyAction.pass();
    },
  };
}
