// Types of @threadbus/client (hand-written; the package ships plain ES modules).

export type ConnectionState = 'disconnected' | 'connecting' | 'connected' | 'closed';

export declare const State: Readonly<{
  DISCONNECTED: 'disconnected';
  CONNECTING: 'connecting';
  CONNECTED: 'connected';
  CLOSED: 'closed';
}>;

/** Where positions ({seq, epoch} per thread) are kept: sessionStorage and localStorage fit. */
export interface PositionStore {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  /** Optional; without it a forgotten position is overwritten with ''. */
  removeItem?(key: string): void;
}

/**
 * The subset of the standard WebSocket the client uses: it sets the four
 * handlers and reads ev.data of messages and ev.code/ev.reason of the close.
 * Handler parameters are loose so that the DOM's WebSocket and Node's fit.
 */
export interface WebSocketLike {
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: any) => unknown) | null;
  onmessage: ((ev: any) => unknown) | null;
  onclose: ((ev: any) => unknown) | null;
  onerror: ((ev: any) => unknown) | null;
}

export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

export interface ThreadbusOptions {
  /**
   * Returns the JWT to authenticate with, offered as the subprotocols
   * `jwt-auth` and `jwt.<base64url(token)>`. Called before the first
   * connection and again after the server closed with 4001 (token expired).
   * Return null for no token. Throw UnauthorizedError to stop for good.
   */
  getToken?: () => string | null | Promise<string | null>;
  /** A WebSocket implementation. By default, globalThis.WebSocket. */
  WebSocket?: WebSocketConstructor;
  /** Where positions are kept. By default, in memory (lost on reload). */
  store?: PositionStore;
  /** Lower bound of the backoff in ms. By default, 500. */
  minReconnectDelay?: number;
  /** Upper bound of the backoff in ms. By default, 20000. */
  maxReconnectDelay?: number;
  /** How often to send a ping frame while connected, in ms. By default, 25000. */
  pingInterval?: number;
  /**
   * How long to wait for the pong, and for connection_established after
   * opening, before the connection counts as stale and is replaced. In ms.
   * By default, 10000.
   */
  pongTimeout?: number;
}

/** The server's thread_bound. */
export interface Bound {
  threadId: string;
  /** Stored events that follow before live ones. */
  replayed: number;
  /** false: the server could not resume from the stored position; `reset` follows. */
  recovered: boolean;
  /** The stream's incarnation; a seq means something only within one epoch. */
  epoch: string;
}

export interface StateChange {
  state: ConnectionState;
  previous: ConnectionState;
  /** Close code that caused a disconnected or closed state, when there was one. */
  code?: number | null;
  reason?: string;
  /** disconnected: ms until the next attempt. */
  delay?: number;
  /** disconnected: the attempt that follows, counted since the last thread_bound. */
  attempt?: number;
  /** connected: the server's connection id. */
  connectionId?: string | null;
}

/** An event as the agent published it, plus thread_id and seq. */
export interface ThreadEvent {
  type: string;
  thread_id: string;
  seq: number;
  payload?: unknown;
  [key: string]: unknown;
}

export interface ServerError {
  code: string;
  message: string;
}

export interface Reset {
  threadId: string;
  epoch: string;
}

export interface EventMap {
  state: StateChange;
  bound: Bound;
  /** Events of the bound thread, each once, in order; frames sent to this connection only have no seq. */
  event: ThreadEvent | Record<string, unknown>;
  reset: Reset;
  error: ServerError;
}

export type CloseAction = 'retry' | 'refresh' | 'terminal';
export declare const closePolicy: Readonly<Record<number, CloseAction>>;

export declare function backoffDelay(attempt: number, min: number, max: number, random?: () => number): number;

export declare class UnauthorizedError extends Error {
  constructor(message?: string);
}

export declare class SupersededError extends Error {
  readonly threadId: string;
  constructor(threadId: string);
}

export declare class ClientError extends Error {
  /** not_connected, closed, invalid_thread_id, invalid_frame, or a server error code. */
  readonly code: string;
  constructor(code: string, message: string);
}

export declare class MemoryStore implements PositionStore {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

export declare class Threadbus {
  constructor(url: string | URL, options?: ThreadbusOptions);
  readonly state: ConnectionState;
  readonly connectionId: string | null;
  /** The thread the connection is bound to now, or null. */
  readonly threadId: string | null;
  on<K extends keyof EventMap>(event: K, fn: (arg: EventMap[K]) => void): this;
  off<K extends keyof EventMap>(event: K, fn: (arg: EventMap[K]) => void): this;
  bindThread(threadId: string): Promise<Bound>;
  switchThread(threadId: string): Promise<Bound>;
  send(type: string, payload?: unknown): Promise<void>;
  close(): void;
}
