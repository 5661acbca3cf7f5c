// TypeScript types for the Sluice filter SDK and for the whole `sluice:filter@0.1.3` world: the
// handles and variants as componentize-js presents them (lists of bytes are Uint8Array, variants
// are `{ tag, val }`, flags are objects of booleans, a `result` error is thrown), and the host
// interfaces a filter imports by name.

/** Header fields as `[name, bytes]` pairs; names are lower case and may repeat. */
export type Headers = Array<[string, Uint8Array]>;

/** A response made by the filter instead of the upstream's. */
export interface LocalResponse {
  status: number;
  headers: Headers;
  body: Uint8Array;
}

/** What a header phase decides. */
export type WitDecision = { tag: 'continue' } | { tag: 'respond'; val: LocalResponse };

/** What a body phase decides about its chunk. */
export type WitBodyAction =
  | { tag: 'pass' }
  | { tag: 'replace'; val: Uint8Array }
  | { tag: 'respond'; val: LocalResponse };

/** The phases a filter takes part in. */
export interface Phases {
  requestHeaders?: boolean;
  requestBody?: boolean;
  responseHeaders?: boolean;
  responseBody?: boolean;
  bufferResponseBody?: boolean;
}

/** Log severity. */
export type Level = 'trace' | 'debug' | 'info' | 'warn' | 'error';

/** Header access on the host's handles. Methods returning `result` throw the host's reason. */
export interface HeaderHandle {
  header(name: string): Uint8Array | undefined;
  headerAll(name: string): Uint8Array[];
  headers(): Headers;
  setHeader(name: string, value: Uint8Array): void;
  appendHeader(name: string, value: Uint8Array): void;
  removeHeader(name: string): void;
}

/** The host's request handle (`sluice:filter/http.request`). */
export interface RequestHandle extends HeaderHandle {
  method(): string;
  setMethod(method: string): void;
  pathWithQuery(): string;
  setPathWithQuery(value: string): void;
  authority(): string;
  clientIp(): string;
  clientIdentity(): string | undefined;
  requestId(): string;
  route(): string;
  setCacheKey(key: string): void;
}

/** The host's response handle (`sluice:filter/http.response`). */
export interface ResponseHandle extends HeaderHandle {
  status(): number;
  setStatus(status: number): void;
}

/** The `filter` export the host calls (what `defineFilter` returns). */
export interface FilterExport {
  configure(config: string): Phases;
  onRequest(request: RequestHandle): WitDecision;
  onRequestBody(request: RequestHandle, body: Uint8Array, endOfStream: boolean): WitBodyAction;
  onResponse(request: RequestHandle, response: ResponseHandle): WitDecision;
  onResponseBody(
    request: RequestHandle,
    response: ResponseHandle,
    body: Uint8Array,
    endOfStream: boolean,
  ): WitBodyAction;
}

/** A header value or body as the SDK accepts it: text (sent as UTF-8) or bytes. */
export type BytesLike = string | Uint8Array;

/** Response headers for a local response: an object, a Map or pairs. */
export type HeadersInit = Record<string, BytesLike> | Map<string, BytesLike> | Array<[string, BytesLike]>;

export interface LocalResponseInit {
  headers?: HeadersInit;
  body?: BytesLike;
}

export function toBytes(value: BytesLike | undefined | null): Uint8Array;
export function toText(bytes: Uint8Array): string;
export function toText(bytes: undefined): undefined;

/** Header access shared by the request and the response. */
declare class Message<Handle extends HeaderHandle> {
  constructor(handle: Handle);
  readonly handle: Handle;
  header(name: string): string | undefined;
  headerBytes(name: string): Uint8Array | undefined;
  headerAll(name: string): string[];
  headers(): Array<[string, string]>;
  setHeader(name: string, value: BytesLike): void;
  appendHeader(name: string, value: BytesLike): void;
  removeHeader(name: string): void;
}

/** The live request. */
export class Request extends Message<RequestHandle> {
  readonly method: string;
  setMethod(method: string): void;
  /** Path and query, as the upstream will get them. */
  readonly path: string;
  setPath(pathWithQuery: string): void;
  readonly authority: string;
  readonly clientIp: string;
  readonly clientIdentity: string | undefined;
  readonly requestId: string;
  readonly route: string;
  setCacheKey(key: string): void;
}

/** The live response (response phases). */
export class Response extends Message<ResponseHandle> {
  readonly status: number;
  setStatus(status: number): void;
}

export const Decision: {
  continue(): WitDecision;
  respond(status: number, init?: LocalResponseInit): WitDecision;
};

export const BodyAction: {
  pass(): WitBodyAction;
  replace(body: BytesLike): WitBodyAction;
  respond(status: number, init?: LocalResponseInit): WitBodyAction;
};

/** A filter class: constructed with the route's config; its methods are its phases. */
export interface FilterClass<Config = Record<string, unknown>> {
  new (config: Config): {
    onRequest?(request: Request): WitDecision | void;
    onRequestBody?(request: Request, body: Uint8Array, endOfStream: boolean): WitBodyAction | void;
    onResponse?(request: Request, response: Response): WitDecision | void;
    onResponseBody?(request: Request, response: Response, body: Uint8Array, endOfStream: boolean): WitBodyAction | void;
  };
  /** Deliver the whole response body in one call (with `onResponseBody`). */
  bufferResponseBody?: boolean;
}

export function defineFilter<Config>(filter: FilterClass<Config>): FilterExport;

// The host's interfaces, imported by name: `import { log } from 'sluice:filter/log@0.1.3'`.

declare module 'sluice:filter/log@0.1.3' {
  export function log(level: import('./index.js').Level, message: string): void;
}

declare module 'sluice:filter/kv@0.1.3' {
  /** Thrown by key-value calls. */
  export type KvError = { tag: 'quota-exceeded' } | { tag: 'not-a-number' } | { tag: 'other'; val: string };
  export function get(key: string): Uint8Array | undefined;
  export function set(key: string, value: Uint8Array, ttlMs: bigint): void;
  export function increment(key: string, delta: bigint, ttlMs: bigint): bigint;
  export function delete_(key: string): boolean;
  export { delete_ as delete };
  export function compareAndSwap(key: string, expected: Uint8Array | undefined, value: Uint8Array, ttlMs: bigint): boolean;
  /** A token bucket as `takeTokens` left it. */
  export interface Bucket {
    taken: boolean;
    remaining: bigint;
    fullInMs: bigint;
    retryInMs: bigint;
  }
  export function takeTokens(key: string, capacity: bigint, rate: bigint, periodMs: bigint, cost: bigint): Bucket;
}

declare module 'sluice:filter/metrics@0.1.3' {
  export type Labels = Array<[string, string]>;
  export function counterAdd(name: string, labels: Labels, value: bigint): void;
  export function gaugeSet(name: string, labels: Labels, value: bigint): void;
  export function histogramRecord(name: string, labels: Labels, value: number): void;
}

declare module 'sluice:filter/callout@0.1.3' {
  export interface CalloutRequest {
    method: string;
    pathWithQuery: string;
    headers: import('./index.js').Headers;
    body: Uint8Array;
    timeoutMs: number;
  }
  export interface CalloutResponse {
    status: number;
    headers: import('./index.js').Headers;
    body: Uint8Array;
  }
  /** Thrown when the call fails. */
  export type CalloutError =
    | { tag: 'not-granted'; val: string }
    | { tag: 'unknown-upstream'; val: string }
    | { tag: 'failed'; val: string };
  export function send(upstream: string, request: CalloutRequest): CalloutResponse;
}

declare module 'sluice:filter/clock@0.1.3' {
  export function nowUnixMs(): bigint;
  export function monotonicNs(): bigint;
}

declare module 'sluice:filter/trace@0.1.3' {
  /** The request's W3C trace id (32 lowercase hex digits), or `undefined` when not traced. */
  export function traceId(): string | undefined;
  /** Sets an attribute on this call's span (keys up to 128 bytes, not `sluice.`-prefixed). */
  export function setAttribute(key: string, value: string): void;
  /** Adds an event with `[name, value]` attributes to this call's span. */
  export function addEvent(name: string, attributes: Array<[string, string]>): void;
}

declare module 'sluice:filter/random@0.1.3' {
  export function bytes(len: number): Uint8Array;
  export function nextU64(): bigint;
}
