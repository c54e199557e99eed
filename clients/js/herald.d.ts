// Types of the Herald browser SDK (herald.js). Protocol: docs/protocol.md; guide: docs/sdk.md.

export type Transport = "websocket" | "sse" | "longpoll" | "poll";
export declare const TRANSPORTS: Transport[];

/** A message as clients see it; `id` is its cursor. */
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
  /** Cursor to resume from; `"0"` for everything retained [default: now]. */
  since?: string;
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
  /** Last cursor received: pass it as `since` to resume elsewhere. */
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

declare const herald: { subscribe: typeof subscribe; Subscription: typeof Subscription; TRANSPORTS: Transport[] };
export default herald;
