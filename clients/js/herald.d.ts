// Types of the Herald browser SDK (herald.js). Protocol: docs/protocol.md; guide: docs/sdk.md.

export type Transport = "websocket" | "sse" | "longpoll" | "poll";
export declare const TRANSPORTS: Transport[];

/** A message as clients see it; `id` is its cursor (a decimal u64: compare as BigInt or by length, then text). */
export interface HeraldMessage<T = unknown> {
  channel: string;
  id: string;
  data: T;
  /** Publish time, Unix ms. */
  ts: number;
}

export interface GapEvent {
  /** Messages of this channel were lost: history could not cover the resume. */
  channel: string;
}

export type State = "idle" | "connecting" | "connected" | "reconnecting" | "closed";

export interface StateEvent {
  state: State;
  /** The transport in use or being tried. */
  transport: Transport | null;
  /** The node URL in use or being tried. */
  url: string | null;
  /** `reconnecting`: milliseconds until the next attempt. */
  delay?: number;
  /** `reconnecting` to climb back to the best transport: `"climb"`. */
  reason?: string;
}

export interface ErrorEvent {
  code?: string;
  message?: string;
  status?: number;
}

/** `join` / `leave` (namespaces with `join_leave = true`): ephemeral, no `id`, no position. */
export interface PresenceEvent<I = unknown> {
  channel: string;
  /** The connection's client id (compare with `sub.clientId`: your own join comes too). */
  client: string;
  /** The token's `sub`; empty for anonymous clients. */
  user: string;
  /** The token's `info` claim, if any. */
  info?: I;
}

/** The server ended the connection (docs/presence.md). */
export interface DisconnectEvent {
  /** `"disconnected"` (an operator's Disconnect) or `"token_revoked"`. */
  code: string;
  /** The operator's reason, else the server's message. */
  reason?: string;
  /** True: the SDK reconnects and resumes at once. False: it stops for good (state `closed`). */
  reconnect: boolean;
}

/** The server added channels to the connection; the SDK keeps them across reconnects. */
export interface SubscribedEvent {
  channels: string[];
  /** Where they start (from now). */
  cursor?: string;
  server: true;
}

/** The server removed channels from the connection; the SDK drops them from `channels`. */
export interface UnsubscribedEvent {
  channels: string[];
  /** `"server"` (the operator's Unsubscribe) or `"channel_forbidden"` (a refreshed token no longer grants them). */
  reason?: string;
}

export interface Options {
  /** Transports to use, best first [default: websocket, sse, longpoll, poll]. */
  transports?: Transport[];
  /**
   * Where the channels resume from at the first connect [default: now]: a cursor for every
   * channel (`"0"`: everything retained), a position token (e.g. a saved `sub.cursor`), or
   * per-channel cursors (`{ news: "1795467571318347" }`; channels not listed start from now).
   */
  since?: string | Record<string, string>;
  /** First reconnect delay in ms, doubled per failure, with ±50% jitter [default: 500]. */
  backoffMin?: number;
  /** Cap of the reconnect delay in ms [default: 15000]. */
  backoffMax?: number;
  /** Ms on a lower transport before trying the best one again; 0 never [default: 60000]. */
  climbInterval?: number;
  /** Ms a transport may take to subscribe before it counts as failed [default: 8000]. */
  connectTimeout?: number;
  /** Seconds a long-poll is held [default: 25]. */
  longPollWait?: number;
  /** Ms between interval polls [default: 2000]. */
  pollInterval?: number;
  /**
   * Client JWT, or a function returning one (or a promise of one). A function is called
   * before every connect, and on WebSocket before the token's `exp` to refresh it in place.
   * Sent as `?token=` (EventSource and browser WebSockets cannot set headers).
   */
  token?: string | (() => string | Promise<string>);
  /** Ms a publish() or rpc() waits for its answer [default: 10000]. */
  requestTimeout?: number;
  onMessage?: (m: HeraldMessage) => void;
  onGap?: (g: GapEvent) => void;
  onState?: (s: StateEvent) => void;
  onError?: (e: ErrorEvent) => void;
  onJoin?: (e: PresenceEvent) => void;
  onLeave?: (e: PresenceEvent) => void;
  onDisconnect?: (e: DisconnectEvent) => void;
  onSubscribed?: (e: SubscribedEvent) => void;
  onUnsubscribed?: (e: UnsubscribedEvent) => void;
}

export interface SubscriptionEventMap {
  message: CustomEvent<HeraldMessage>;
  gap: CustomEvent<GapEvent>;
  state: CustomEvent<StateEvent>;
  error: CustomEvent<ErrorEvent>;
  join: CustomEvent<PresenceEvent>;
  leave: CustomEvent<PresenceEvent>;
  disconnect: CustomEvent<DisconnectEvent>;
  subscribed: CustomEvent<SubscribedEvent>;
  unsubscribed: CustomEvent<UnsubscribedEvent>;
}

export declare class Subscription extends EventTarget {
  constructor(urls: string | string[], channels: string[], options?: Options);
  readonly urls: string[];
  readonly channels: Set<string>;
  /**
   * Where each channel stands: its last message `id`, else where it was subscribed. Channels
   * not listed start from now at the next connect.
   */
  readonly positions: Record<string, string>;
  /**
   * The positions of all the channels as one string (a position token; with one channel, its
   * last `id`): pass it as `since` to resume the same channels later, or elsewhere. Undefined
   * before any position is known.
   */
  readonly cursor: string | undefined;
  readonly state: State;
  readonly transport: Transport | null;
  readonly url: string | null;
  /**
   * The node's id of the current WebSocket or SSE connection (`"<node>-<n>"`, from its
   * `subscribed` / `authenticated` frame); null while connecting and on polling transports.
   */
  readonly clientId: string | null;
  add(...channels: (string | string[])[]): void;
  remove(...channels: (string | string[])[]): void;
  close(): void;
  /**
   * Publishes `data` (any JSON value) to `channel` where its namespace has `publish = true`
   * and the token's `publish` claim grants it: over the WebSocket while connected on one, else
   * `POST /publish`. Rejects with a {@link HeraldError}.
   */
  publish(channel: string, data: unknown): Promise<Published>;
  /** Calls `method` of the application's backend (the node's RPC hook) with `data`. */
  rpc<T = unknown>(method: string, data?: unknown): Promise<T>;
  addEventListener<K extends keyof SubscriptionEventMap>(
    type: K,
    listener: (ev: SubscriptionEventMap[K]) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
}

/** A stored client publish. */
export interface Published {
  channel: string;
  /** The message's `id`, as subscribers see it. */
  cursor: string;
}

/** A refused or failed publish()/rpc(). */
export declare class HeraldError extends Error {
  /** The server's error code (`publish_forbidden`, `publish_rate_exceeded`, `hook_timeout`, ...) or `timeout`, `network_error`, `connection_lost`, `closed`. */
  readonly code: string;
  readonly detail: Record<string, unknown>;
}

export declare function subscribe(urls: string | string[], channels: string[], options?: Options): Subscription;

/**
 * The position token of per-channel cursors (docs/protocol.md): a plain cursor when they are
 * all equal, `"0"` for none.
 */
export declare function encodePositions(positions: Record<string, string> | Map<string, string>): string;
/**
 * The per-channel cursors a cursor or position token gives `channels`; null when it is
 * malformed or a token of another channel set.
 */
export declare function decodePositions(token: string, channels: Iterable<string>): Record<string, string> | null;

declare const herald: {
  subscribe: typeof subscribe;
  Subscription: typeof Subscription;
  HeraldError: typeof HeraldError;
  TRANSPORTS: Transport[];
  encodePositions: typeof encodePositions;
  decodePositions: typeof decodePositions;
};
export default herald;
