"""The hand-written part of the browser client's TypeScript declarations: the API of progress-client.js.

``devtools.ts_types`` puts it after the message types it generates from the schemas; the names used here
(``DeliveredEntry``, ``OperationSummary``...) are theirs.
"""

CLIENT_API = """\
// ----------------------------------------------------------------------------------------------------
// Messages as the client delivers them
// ----------------------------------------------------------------------------------------------------

/** A stream entry id, `"<milliseconds>-<sequence>"`; ids increase strictly within an operation. */
export type EventId = DeliveredEntry["id"];

/** A `status_update` entry as delivered, with its id. */
export type StatusUpdateMessage = StatusUpdateEntry & Pick<DeliveredEntry, "id">;

/** A `chunking_progress` entry as delivered, with its id. */
export type ProgressMessage = ProgressEntry & Pick<DeliveredEntry, "id">;

/** Any other entry (an event sent with `send_event`), with its id. */
export type EventMessage = DeliveredEntry;

/** Sent first on connect when the application set an operation getter; `data` is what it returned. No id. */
export interface CurrentStateMessage {
  type: "current_state";
  timestamp?: string;
  data: unknown;
}

/** Sent before the entries that follow a gap the server could not fill. No id. */
export type HistoryGapMessage = GapMessage;

/** Everything `onMessage` can receive. */
export type AnyMessage = StatusUpdateMessage | ProgressMessage | CurrentStateMessage | HistoryGapMessage | EventMessage;

/** An `operation_update` of the user's feed, with its id. */
export type OperationUpdateMessage = OperationUpdateEntry;

/** Everything the `onMessage` of `subscribeMine()` can receive. */
export type FeedMessage = OperationUpdateMessage | HistoryGapMessage | EventMessage;

// ----------------------------------------------------------------------------------------------------
// Client API (hand-written in devtools/ts_client_api.py)
// ----------------------------------------------------------------------------------------------------

/** How a connection reaches the server. */
export type Transport = "websocket" | "sse";

/** Given to `onOpen` each time a connection opens. */
export interface OpenInfo {
  transport: Transport;
  /** The id this connection resumes after, or null when it starts from the beginning. */
  lastEventId: EventId | null;
}

/** Given to `onError`: a connection failed or dropped, or a message could not be read. */
export interface ConnectionProblem {
  transport: Transport | null;
  message: string;
  /** Milliseconds until the next attempt; null when nothing is retried (a message-level problem). */
  retryInMs: number | null;
  /** WebSocket close code or HTTP status, when there was one. */
  code: number | null;
  cause?: unknown;
}

/**
 * Why a subscription ended for good:
 * - `finished`: the operation reached a terminal status (or the server closed with "Operation completed"); never
 *   for the user's feed, which has no end;
 * - `refused`: the server refused it (WebSocket close 1008 or an HTTP 4xx on SSE), `message` says why;
 * - `closed`: `close()` was called;
 * - `gave_up`: `maxRetries` consecutive attempts failed.
 */
export type CloseReason = "finished" | "refused" | "closed" | "gave_up";

/** Given to `onClose` (once) and resolved by `Subscription.done`. */
export interface CloseInfo {
  reason: CloseReason;
  /** The last status delivered, if any (always null for the user's feed). */
  status: TaskStatus | null;
  /** WebSocket close code or HTTP status that ended it, if any. */
  code: number | null;
  message: string;
  lastEventId: EventId | null;
}

/** How a subscription connects: what `subscribe()` and `subscribeMine()` share. */
export interface ConnectionOptions {
  /** Where the router is mounted: a path on this page's origin or an absolute URL. Default `"/progress"`. */
  baseUrl?: string;
  /** `"auto"` (WebSocket, falling back to SSE when it cannot connect), `"websocket"` or `"sse"`. */
  transport?: "auto" | Transport;
  /** Resume after this id (entries up to it are not delivered again). */
  lastEventId?: EventId | null;
  /** First reconnect delay; doubles per consecutive failure, with jitter. Default 500. */
  initialBackoffMs?: number;
  /** Cap of the reconnect delay. Default 30000. */
  maxBackoffMs?: number;
  /** Consecutive failed attempts before giving up. Default Infinity. */
  maxRetries?: number;
  /** A connection that has not opened within this time counts as failed. Default 10000. */
  connectTimeoutMs?: number;
  /** An SSE connection silent (not even a heartbeat) this long is reopened; 0 disables. Default 60000. */
  sseIdleTimeoutMs?: number;
  /** Extra query parameters sent on every connection (for example a token). */
  params?: Record<string, string | number>;
  /** Extra request headers for SSE (a WebSocket cannot send headers). */
  headers?: Record<string, string>;
  /** `fetch` credentials mode for SSE. Default `"same-origin"`. */
  credentials?: RequestCredentials;
  /** A WebSocket implementation to use instead of the global one. */
  WebSocket?: typeof WebSocket;
  /** A fetch implementation to use instead of the global one. */
  fetch?: typeof fetch;
  /** The server could not fill a gap: entries between `data.after_id` and `data.resumes_at` are missing. */
  onGap?: (data: GapData, message: HistoryGapMessage) => void;
  /** A connection opened (again). */
  onOpen?: (info: OpenInfo) => void;
  /** A connection failed or dropped (the client retries by itself), or a message was unreadable. */
  onError?: (problem: ConnectionProblem) => void;
  /** The subscription ended for good. Called exactly once. */
  onClose?: (info: CloseInfo) => void;
}

export interface SubscribeOptions extends ConnectionOptions {
  /** Every message, before the type-specific callback. */
  onMessage?: (message: AnyMessage) => void;
  /** A `chunking_progress` entry. */
  onProgress?: (data: ProgressData, message: ProgressMessage) => void;
  /** A `status_update` entry; after a terminal one `onClose` follows. */
  onStatus?: (data: StatusData, message: StatusUpdateMessage) => void;
  /** Any other entry type (events sent with `send_event`). */
  onEvent?: (message: EventMessage) => void;
  /** The `current_state` message sent on connect. */
  onState?: (data: unknown, message: CurrentStateMessage) => void;
}

export interface SubscribeMineOptions extends ConnectionOptions {
  /** Every message, before the type-specific callback. */
  onMessage?: (message: FeedMessage) => void;
  /** An operation of the user's was recorded or changed; `data` is its summary after the change. */
  onUpdate?: (data: OperationSummary, message: OperationUpdateMessage) => void;
  /** Any other entry type. */
  onEvent?: (message: EventMessage) => void;
}

/** What `listMine()` asks for, and how it reaches the server. */
export interface ListMineOptions {
  /** Only operations in these statuses (e.g. `["queued", "started", "retrying"]` for the running ones). */
  status?: TaskStatus | readonly TaskStatus[];
  /** The `next_cursor` of the previous page. */
  cursor?: string | null;
  /** Operations per page, 1 to 100. Default 20 (the server's). */
  limit?: number;
  /** Where the router is mounted: a path on this page's origin or an absolute URL. Default `"/progress"`. */
  baseUrl?: string;
  /** Extra query parameters (for example a token). */
  params?: Record<string, string | number>;
  /** Extra request headers. */
  headers?: Record<string, string>;
  /** `fetch` credentials mode. Default `"same-origin"`. */
  credentials?: RequestCredentials;
  /** Aborts the request. */
  signal?: AbortSignal;
  /** A fetch implementation to use instead of the global one. */
  fetch?: typeof fetch;
}

export interface Subscription {
  /** The id of the last entry delivered (the resume point). */
  readonly lastEventId: EventId | null;
  /** The last status delivered (always null for the user's feed). */
  readonly status: TaskStatus | null;
  /** The transport of the open connection, or null while (re)connecting or after the end. */
  readonly transport: Transport | null;
  /** Whether the subscription has ended. */
  readonly closed: boolean;
  /** Resolves with the same value `onClose` receives. */
  readonly done: Promise<CloseInfo>;
  /** Stop for good; `onClose` is called with reason `"closed"`. */
  close(): void;
}

/** Statuses after which an operation delivers nothing more. */
export declare const TERMINAL_STATUSES: readonly TerminalStatus[];

/** Close reason the server sends with code 1000 after a terminal status. */
export declare const COMPLETED_CLOSE_REASON: "Operation completed";

/** Compare two stream ids numerically: negative if `a` is older, 0 if equal, positive if newer. */
export declare function compareEventIds(a: EventId, b: EventId): number;

/** Follow one operation, reconnecting and resuming until it ends, is refused or is closed. */
export declare function subscribe(operationId: string, options?: SubscribeOptions): Subscription;

/** Follow the user's own operations (`{prefix}/me/ws`, SSE fallback), reconnecting and resuming until refused or
 * closed. */
export declare function subscribeMine(options?: SubscribeMineOptions): Subscription;

/** One page of the user's operations, newest first (`GET {prefix}/me/operations`). */
export declare function listMine(options?: ListMineOptions): Promise<OperationsPage>;

/** Rejects `listMine()` when the server answers with an error status (403, 400, 503...). */
export declare class ProgressRequestError extends Error {
  constructor(status: number, message: string);
  /** The HTTP status. */
  readonly status: number;
}
"""
