// Types for street.js / street.mjs. `Street<In, Out, Requests, ServerRequests>` takes event
// maps: what the server sends (In), what the client emits (Out), the requests the client
// makes ({event: [payload, result]}) and the ones the server makes of it.

/** The StreetJS wire envelope, with what street adds in channels with history. */
export interface Envelope<T extends string = string, P = unknown> {
  type: T;
  payload: P;
  ts?: number;
  /** A publication in a channel with history: its channel and offset. */
  channel?: string;
  offset?: number;
  /** A request's id (see emitWithAck / onRequest). */
  id?: number;
}

/** An event map: event name to payload type. */
export type EventMap = { [event: string]: unknown };
/** A request map: event name to [payload, result]. */
export type RequestMap = { [event: string]: [unknown, unknown] };

export interface StreetOptions {
  /** Query parameters added to the URL on every (re)connect (e.g. a token). */
  query?: Record<string, string | number | boolean | null | undefined>;
  protocols?: string | string[];
  /** The WebSocket constructor (in Node: `require('ws')`). Default: the global one. */
  WebSocket?: unknown;
  /** Reconnect backoff: attempt k waits a random time in [0, min(maxDelay, minDelay·2^k)). */
  minDelay?: number;
  maxDelay?: number;
  /** Messages kept while not open (the oldest dropped beyond). Default 100. */
  maxQueue?: number;
  /** A connection open this long resets the backoff. Default 5000 ms. */
  stableAfterMs?: number;
  /** emitWithAck's default timeout. Default 10000 ms. */
  ackTimeoutMs?: number;
  /** Requests waiting for a reply at once. Default 100. */
  maxPendingAcks?: number;
  /** Called before every (re)connect and for an in-band refresh: the token (or a Promise of it). */
  getToken?: () => string | Promise<string>;
  /** The query parameter the token goes in. Default 'token'. */
  tokenParam?: string;
  /** A getToken that has not settled by then is a failed attempt (retried). Default 10000 ms. */
  tokenTimeoutMs?: number;
  /** Connect in the constructor (next tick). Default true. */
  autoConnect?: boolean;
  random?: () => number;
}

export type State = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed';

export interface Lifecycle {
  state: { state: State; attempt: number; delayMs?: number; code?: number; reason?: string };
  open: null;
  close: { code: number; reason: string };
  error: { kind: 'malformed' | 'not_an_envelope'; data: unknown };
  /** The server says the connection's token expired: refresh within graceMs. */
  expired: { graceMs: number | null };
  /** An in-band refresh (or getToken before a connect) went through or failed. */
  token: { state: 'refreshed' | 'failed'; error?: string };
}

/**
 * Why a request got no result: the server's code, or the client's own. Made by a factory
 * (an Error with `name` 'StreetAckError' and a `code`): test `e.name`/`e.code`, not
 * `instanceof`.
 */
export interface StreetAckError extends Error {
  name: 'StreetAckError';
  code:
    | 'rejected'
    | 'no_handler'
    | 'bad_payload'
    | 'timeout'
    | 'internal'
    | 'too_many'
    | 'disconnected'
    | 'closed'
    | (string & {});
}
export declare const StreetAckError: (code: string, message?: string) => StreetAckError;

/** A position in a channel with history. */
export interface Position {
  epoch: string;
  offset: number;
}

/** A channel's newest publications (`history()`), and where its stream stands. */
export interface Recent<In extends EventMap = EventMap> extends Position {
  channel: string;
  /** Oldest first, as delivered (each with its `channel` and `offset`). */
  publications: Envelope<keyof In & string, In[keyof In]>[];
  /** Older ones were left out: they did not fit the server's answer. */
  truncated?: boolean;
}

export declare class Street<
  In extends EventMap = EventMap,
  Out extends EventMap = EventMap,
  Requests extends RequestMap = RequestMap,
  ServerRequests extends RequestMap = RequestMap,
> {
  constructor(url: string, options?: StreetOptions);
  readonly state: State;
  readonly stats: { gaps: number; duplicates: number };

  /** A server event, by envelope type. */
  on<K extends keyof In & string>(type: K, fn: (payload: In[K], envelope: Envelope<K, In[K]>) => void): this;
  /** Every server event. */
  on(type: '*', fn: (type: keyof In & string, payload: In[keyof In], envelope: Envelope) => void): this;
  once<K extends keyof In & string>(type: K, fn: (payload: In[K], envelope: Envelope<K, In[K]>) => void): this;
  once(type: '*', fn: (type: keyof In & string, payload: In[keyof In], envelope: Envelope) => void): this;
  /** Remove a listener (one added with on or once), or every listener of `type`. */
  off<K extends keyof In & string>(type: K | '*', fn?: (...args: any[]) => void): this;

  /** The client's own lifecycle: never from the wire. */
  onLifecycle<K extends keyof Lifecycle>(name: K, fn: (info: Lifecycle[K]) => void): this;
  offLifecycle<K extends keyof Lifecycle>(name: K, fn?: (info: Lifecycle[K]) => void): this;

  /** One binary frame: true when sent now, false when queued for the next open. */
  sendBinary(data: ArrayBuffer | ArrayBufferView | Blob): boolean;
  /** Binary frames from the server. */
  onBinary(fn: (data: ArrayBuffer) => void): this;
  offBinary(fn?: (data: ArrayBuffer) => void): this;

  /** Send {type, payload, ts}: true when sent now, false when queued for the next open. */
  emit<K extends keyof Out & string>(type: K, payload: Out[K]): boolean;

  /** A request: the server's result, or a rejection with a StreetAckError. */
  emitWithAck<K extends keyof Requests & string>(
    type: K,
    payload: Requests[K][0],
    options?: { timeout?: number },
  ): Promise<Requests[K][1]>;

  /** Answer the server's requests for `type`. */
  onRequest<K extends keyof ServerRequests & string>(
    type: K,
    fn: (payload: ServerRequests[K][0]) => ServerRequests[K][1] | Promise<ServerRequests[K][1]>,
  ): this;
  offRequest<K extends keyof ServerRequests & string>(type: K): this;

  /** Rooms (street's client protocol): re-joined after every reconnect, `since` their position. */
  join(channel: string, options?: { since?: Position }): void;
  leave(channel: string): void;
  position(channel: string): Position | null;
  /**
   * A channel's newest publications (at most `limit`): show them, then
   * `join(channel, { since: { epoch, offset } })` to go on without a gap.
   */
  history(channel: string, options?: { limit?: number; timeout?: number }): Promise<Recent<In>>;

  /** Get a new token and hand it to the server now ('street:auth'). */
  refreshToken(): Promise<unknown>;

  connect(): void;
  /**
   * Close for good, at once: no reconnect; the 'close' event and the 'closed' state come
   * now, and waiting requests reject with 'closed'. A code other than 1000 or 3000-4999,
   * or a reason over 123 bytes, is sent as 1000 (what every WebSocket may send).
   */
  close(code?: number, reason?: string): void;
}

export default Street;
