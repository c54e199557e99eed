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
  onMessage?: (m: HeraldMessage) => void;
  onGap?: (g: GapEvent) => void;
  onState?: (s: StateEvent) => void;
  onError?: (e: ErrorEvent) => void;
}

export interface SubscriptionEventMap {
  message: CustomEvent<HeraldMessage>;
  gap: CustomEvent<GapEvent>;
  state: CustomEvent<StateEvent>;
  error: CustomEvent<ErrorEvent>;
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
  add(...channels: (string | string[])[]): void;
  remove(...channels: (string | string[])[]): void;
  close(): void;
  addEventListener<K extends keyof SubscriptionEventMap>(
    type: K,
    listener: (ev: SubscriptionEventMap[K]) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
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
  TRANSPORTS: Transport[];
  encodePositions: typeof encodePositions;
  decodePositions: typeof decodePositions;
};
export default herald;
