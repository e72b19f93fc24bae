/**
 * Browser client of celery-progress-ws: follow operations' live progress, with no dependency and no build step.
 *
 * `subscribe()` follows one operation; `subscribeMine()` follows the user's feed of their own operations (one
 * `operation_update` per new operation or change) and `listMine()` reads the list itself. Both subscriptions connect
 * over WebSocket first and fall back to Server-Sent Events (read with `fetch`) when a WebSocket cannot be opened.
 * After a dropped connection they reconnect with capped exponential backoff and jitter, resuming after the last id
 * received, so no entry is lost or delivered twice. An operation's subscription stops for good when the operation
 * ends (`completed`, `failed`, `cancelled`); both stop when the server refuses them or when `close()` is called.
 *
 * @example
 * import { subscribe } from "/progress/client.js";
 *
 * const subscription = subscribe(operationId, {
 *   baseUrl: "/progress",
 *   onProgress: (data) => { bar.value = data.progress_percentage ?? 0; },
 *   onStatus: (data) => { label.textContent = data.status; },
 *   onEvent: (message) => log(message.type, message.data),
 *   onClose: (info) => log("closed", info.reason, info.status),
 * });
 * // later, if the page no longer needs it:
 * subscription.close();
 *
 * @module celery-progress-ws/client
 */

// Close codes and HTTP statuses the client acts on; the server side is in celery_progress_ws/web.
const NORMAL_CLOSURE = 1000; // with COMPLETED_CLOSE_REASON: the operation finished
const POLICY_VIOLATION = 1008; // refused (not authorized, over a limit...): reconnecting would not help
const HTTP_NO_CONTENT = 204; // an SSE resume after the operation's last entry: nothing more will come
const HTTP_REQUEST_TIMEOUT = 408; // the one 4xx that does not refuse the subscription

/** Statuses after which an operation delivers nothing more. */
export const TERMINAL_STATUSES = Object.freeze(["completed", "failed", "cancelled"]);

/** Close reason the server sends with code 1000 after delivering a terminal status. */
export const COMPLETED_CLOSE_REASON = "Operation completed";

const ID_PATTERN = /^(\d+)-(\d+)$/;

/** @type {Readonly<import("./progress-client").SubscribeOptions>} */
const DEFAULTS = Object.freeze({
  baseUrl: "/progress",
  transport: "auto",
  lastEventId: null,
  initialBackoffMs: 500,
  maxBackoffMs: 30000,
  maxRetries: Infinity,
  connectTimeoutMs: 10000,
  sseIdleTimeoutMs: 60000,
  params: {},
  headers: {},
  credentials: "same-origin",
});

/**
 * Compare two stream ids (`"<milliseconds>-<sequence>"`) numerically, without losing precision on large values.
 *
 * @param {string} a
 * @param {string} b
 * @returns {number} negative if `a` is older than `b`, 0 if equal, positive if newer
 * @throws {TypeError} if either is not a stream id
 */
export function compareEventIds(a, b) {
  const left = parseEventId(a);
  const right = parseEventId(b);
  if (left === null || right === null) {
    throw new TypeError(`not a stream id: ${left === null ? a : b}`);
  }
  return compareDigits(left[0], right[0]) || compareDigits(left[1], right[1]);
}

/** Raised by `listMine()` when the server answers with an error status; `status` is the HTTP status. */
export class ProgressRequestError extends Error {
  /**
   * @param {number} status
   * @param {string} message the server's `detail`, or the status line
   */
  constructor(status, message) {
    super(message);
    this.name = "ProgressRequestError";
    this.status = status;
  }
}

/**
 * Follow one operation: deliver its entries to the callbacks, reconnecting and resuming until it ends.
 *
 * @param {string} operationId the operation (by default the Celery task id)
 * @param {import("./progress-client").SubscribeOptions} [options]
 * @returns {import("./progress-client").Subscription}
 */
export function subscribe(operationId, options = {}) {
  if (typeof operationId !== "string" || operationId === "") {
    throw new TypeError("operationId must be a non-empty string");
  }
  return follow(OPERATION_STREAM, `/operations/${encodeURIComponent(operationId)}`, options);
}

/**
 * Follow the user's own operations: one `operation_update` (the operation's summary) per new operation and per
 * change, from `{prefix}/me/ws` or `{prefix}/me/events`. The feed has no end: it stops when the server refuses it
 * (an anonymous user, a limit), after `maxRetries` consecutive failures, or on `close()`.
 *
 * @param {import("./progress-client").SubscribeMineOptions} [options]
 * @returns {import("./progress-client").Subscription}
 */
export function subscribeMine(options = {}) {
  return follow(USER_FEED, "/me", options);
}

/**
 * One page of the user's operations, newest first (`GET {prefix}/me/operations`).
 *
 * @param {import("./progress-client").ListMineOptions} [options]
 * @returns {Promise<import("./progress-client").OperationsPage>}
 * @throws {ProgressRequestError} when the server refuses (403: anonymous, 400: a bad status or cursor, 503: its
 *   store is unavailable)
 */
export async function listMine(options = {}) {
  const config = { ...DEFAULTS, ...definedOnly(options) };
  const fetchImpl = fetchOf(config);
  if (typeof fetchImpl !== "function") {
    throw new TypeError("fetch is not available in this environment");
  }
  const base = resolveBaseUrl(config.baseUrl);
  const target = new URL(base.href);
  target.pathname = routePath(base, "/me/operations");
  for (const [name, value] of Object.entries(config.params)) {
    target.searchParams.set(name, String(value));
  }
  const statuses = typeof config.status === "string" ? [config.status] : (config.status ?? []);
  if (statuses.length > 0) {
    target.searchParams.set("status", statuses.join(","));
  }
  if (config.cursor != null) {
    target.searchParams.set("cursor", config.cursor);
  }
  if (config.limit != null) {
    target.searchParams.set("limit", String(config.limit));
  }
  const response = await fetchImpl(target.href, {
    headers: { Accept: "application/json", ...config.headers },
    credentials: config.credentials,
    cache: "no-store",
    signal: config.signal,
  });
  if (!response.ok) {
    throw new ProgressRequestError(response.status, (await responseDetail(response)) || `HTTP ${response.status}`);
  }
  return response.json();
}

/**
 * What each kind of subscription delivers: the callback of each typed message, and whether a terminal
 * `status_update` (or the server saying so) ends it.
 */
const OPERATION_STREAM = Object.freeze({
  finishes: true,
  callbacks: Object.freeze({
    status_update: "onStatus",
    chunking_progress: "onProgress",
    current_state: "onState",
    history_gap: "onGap",
  }),
});
const USER_FEED = Object.freeze({
  finishes: false,
  callbacks: Object.freeze({ operation_update: "onUpdate", history_gap: "onGap" }),
});

/**
 * Deliver one stream's messages (`stream`: OPERATION_STREAM or USER_FEED, under `{prefix}{path}`) to the callbacks,
 * reconnecting and resuming until it ends.
 */
function follow(stream, path, options) {
  const config = resolveConfig(options);
  const base = resolveBaseUrl(config.baseUrl);
  const streamPath = routePath(base, path);

  let lastEventId = config.lastEventId;
  let status = null;
  let closed = false;
  let activeTransport = null;
  let failures = 0;
  let preferSse = config.transport === "sse" || !config.canWebSocket;
  let retryTimer = null;
  let connection = null;
  let resolveDone;
  const done = new Promise((resolve) => {
    resolveDone = resolve;
  });

  function emit(name, ...args) {
    const callback = config[name];
    if (typeof callback !== "function") {
      return;
    }
    try {
      callback(...args);
    } catch (error) {
      reportCallbackError(error);
    }
  }

  function url(kind) {
    const target = new URL(base.href);
    target.pathname = streamPath + TRANSPORTS[kind].path;
    if (kind === "websocket") {
      target.protocol = target.protocol === "https:" ? "wss:" : "ws:";
    }
    for (const [name, value] of Object.entries(config.params)) {
      target.searchParams.set(name, String(value));
    }
    if (lastEventId !== null) {
      target.searchParams.set("last_event_id", lastEventId);
    }
    return target.href;
  }

  function finish(info) {
    if (closed) {
      return;
    }
    closed = true;
    activeTransport = null;
    clearTimeout(retryTimer);
    connection?.close();
    connection = null;
    const result = { status, code: null, message: "", lastEventId, ...info };
    emit("onClose", result);
    resolveDone(result);
  }

  /** Deliver one parsed message to the callbacks, unless it is a duplicate; end on a terminal status. */
  function deliver(message) {
    if (message === null || typeof message !== "object" || typeof message.type !== "string") {
      emit("onError", problem(activeTransport, "received a message that is not a progress message", null));
      return;
    }
    if (message.type === "history_gap" && message.data?.reason === "ahead_of_stream") {
      lastEventId = null; // the server did not know our last id and sends the stream again from its start
    }
    if (typeof message.id === "string") {
      if (parseEventId(message.id) === null) {
        emit("onError", problem(activeTransport, `received an invalid id ${JSON.stringify(message.id)}`, null));
      } else if (lastEventId !== null && compareEventIds(message.id, lastEventId) <= 0) {
        return; // a duplicate, already delivered
      } else {
        lastEventId = message.id;
      }
    }
    const data = message.data;
    emit("onMessage", message);
    if (closed) {
      return; // onMessage called close()
    }
    const isStatus = stream.finishes && message.type === "status_update";
    if (isStatus) {
      status = data?.status ?? status;
    }
    const callback = stream.callbacks[message.type];
    if (callback === undefined) {
      emit("onEvent", message);
    } else {
      emit(callback, data, message);
    }
    if (isStatus && TERMINAL_STATUSES.includes(status)) {
      finish({ reason: "finished" });
    }
  }

  function connect() {
    retryTimer = null;
    if (!closed) {
      open(preferSse ? "sse" : "websocket", false);
    }
  }

  /** Open one connection; `fallback` marks SSE opened because WebSocket could not connect. */
  function open(kind, fallback) {
    const attempt = connectOnce(kind, { url: url(kind), lastEventId }, config, {
      opened() {
        activeTransport = kind;
        emit("onOpen", { transport: kind, lastEventId });
      },
      deliver,
      report: (message) => emit("onError", problem(kind, message, null)),
      ended: (outcome) => dropped({ ...outcome, fallback }),
    });
    if (!attempt.ended) {
      connection = attempt; // one that ended at once has been replaced already (by a fallback or a retry)
    }
  }

  /** Handle the end of a connection that did not end the subscription. */
  function dropped(outcome) {
    connection = null;
    activeTransport = null;
    if (closed) {
      return;
    }
    if (outcome.refused) {
      finish({ reason: "refused", code: outcome.code ?? null, message: outcome.message });
      return;
    }
    if (outcome.completed && stream.finishes) {
      finish({ reason: "finished", code: outcome.code ?? null, message: outcome.message });
      return;
    }
    if (outcome.transport === "websocket" && !outcome.opened && config.transport === "auto" && config.canSse) {
      emit("onError", problem("websocket", `${outcome.message}; trying Server-Sent Events`, 0, outcome));
      open("sse", true);
      return;
    }
    if (outcome.transport === "sse" && outcome.opened && outcome.fallback) {
      preferSse = true; // WebSocket could not connect but SSE works: keep using SSE
    } else if (config.transport === "auto" && outcome.fallback) {
      preferSse = !config.canWebSocket; // both failed: try WebSocket first again next time
    }
    if (outcome.delivered) {
      failures = 0;
    }
    if (failures >= config.maxRetries) {
      finish({ reason: "gave_up", code: outcome.code ?? null, message: outcome.message });
      return;
    }
    const ceiling = Math.min(config.maxBackoffMs, config.initialBackoffMs * 2 ** failures);
    const delay = Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
    failures += 1;
    emit("onError", problem(outcome.transport, outcome.message, delay, outcome));
    retryTimer = setTimeout(connect, delay);
  }

  connect();

  return {
    get lastEventId() {
      return lastEventId;
    },
    get status() {
      return status;
    },
    get transport() {
      return activeTransport;
    },
    get closed() {
      return closed;
    },
    done,
    close() {
      finish({ reason: "closed" });
    },
  };
}

/** The options with their defaults, checked, and the WebSocket / fetch implementations to use. */
function resolveConfig(options) {
  const config = { ...DEFAULTS, ...definedOnly(options) };
  if (!["auto", "websocket", "sse"].includes(config.transport)) {
    throw new TypeError(`transport must be "auto", "websocket" or "sse", not ${JSON.stringify(config.transport)}`);
  }
  if (config.lastEventId !== null && parseEventId(config.lastEventId) === null) {
    throw new TypeError(`lastEventId is not a stream id: ${JSON.stringify(config.lastEventId)}`);
  }
  const WebSocketImpl = config.WebSocket ?? globalThis.WebSocket;
  const fetchImpl = fetchOf(config);
  const canWebSocket = typeof WebSocketImpl === "function";
  const canSse = typeof fetchImpl === "function";
  if ((config.transport === "websocket" && !canWebSocket) || (config.transport === "sse" && !canSse)) {
    throw new TypeError(`transport "${config.transport}" is not available in this environment`);
  }
  if (!canWebSocket && !canSse) {
    throw new TypeError("neither WebSocket nor fetch is available in this environment");
  }
  return { ...config, WebSocket: WebSocketImpl, fetch: fetchImpl, canWebSocket, canSse };
}

/**
 * One connection over one transport, up to its end: what both transports share. It times out an opening (and, for
 * SSE, a silence), parses each message as JSON and reports how the connection ended, once, unless it was closed.
 *
 * `handlers`: `opened()`, `deliver(message)`, `report(problem)` for a message that is not JSON, and
 * `ended(outcome)` with `{ transport, opened, delivered, code?, message, refused?, completed?, cause? }`.
 *
 * @returns {{ close(): void, readonly ended: boolean }}
 */
function connectOnce(kind, target, config, handlers) {
  const { open, opening, notJson, idleOption, silent } = TRANSPORTS[kind];
  const idleMs = idleOption === null ? 0 : config[idleOption];
  let transport = null;
  let isOpen = false;
  let delivered = false;
  let settled = false;
  let timer = null;
  const arm = (ms, message) => {
    clearTimeout(timer);
    if (ms > 0 && !settled) {
      timer = setTimeout(() => settle({ message }), ms);
    }
  };
  const stop = () => {
    settled = true;
    clearTimeout(timer);
    transport?.close();
  };
  const settle = (outcome) => {
    if (!settled) {
      stop();
      handlers.ended({ transport: kind, opened: isOpen, delivered, ...outcome });
    }
  };
  const idle = () => arm(idleMs, `${silent} for ${idleMs} ms`);
  arm(config.connectTimeoutMs, `${opening} within ${config.connectTimeoutMs} ms`);
  transport = open(target, config, {
    onOpen() {
      if (!settled) {
        isOpen = true;
        idle();
        handlers.opened();
      }
    },
    onActivity() {
      if (isOpen) {
        idle();
      }
    },
    onMessage(text) {
      if (settled) {
        return;
      }
      let message;
      try {
        message = JSON.parse(text);
      } catch (error) {
        handlers.report(`received ${notJson} that is not JSON: ${describe(error)}`);
        return;
      }
      delivered = true;
      handlers.deliver(message);
    },
    onError: (message, cause) => settle({ message, cause }),
    onClose: (ending) => settle(ending),
  });
  if (settled) {
    transport.close(); // it failed while it was being created
  }
  return {
    close: stop,
    get ended() {
      return settled;
    },
  };
}

/**
 * The transports, each `open(target, config, events) -> { close() }` with `target = { url, lastEventId }`, and what
 * `connectOnce` says about them. A transport calls `events.onOpen()` once connected, `events.onMessage(text)` per
 * message and `events.onActivity()` when bytes arrive (heartbeats included: it restarts an idle timeout), and ends
 * with one `events.onError(message, cause?)` (it failed) or `events.onClose({ code, message, refused?, completed? })`
 * (the server ended it); `close()` ends it quietly.
 */
const TRANSPORTS = Object.freeze({
  websocket: {
    open: openWebSocket,
    path: "/ws",
    opening: "WebSocket did not open",
    notJson: "a message",
    idleOption: null,
    silent: "",
  },
  sse: {
    open: openEventStream,
    path: "/events",
    opening: "SSE did not answer",
    notJson: "data",
    idleOption: "sseIdleTimeoutMs",
    silent: "SSE received nothing",
  },
});

function openWebSocket(target, config, events) {
  let socket;
  let isOpen = false;
  try {
    socket = new config.WebSocket(target.url);
  } catch (error) {
    events.onError(`WebSocket could not be created: ${describe(error)}`, error);
    return { close() {} };
  }
  socket.onopen = () => {
    isOpen = true;
    events.onOpen();
  };
  socket.onmessage = (event) => {
    events.onMessage(typeof event.data === "string" ? event.data : "");
  };
  socket.onerror = () => {
    // Browsers follow an error with a close event; some runtimes do not after a failed handshake.
    setTimeout(
      () => {
        closeQuietly(socket);
        events.onError(isOpen ? "WebSocket error" : "WebSocket could not connect");
      },
      isOpen ? 1000 : 0,
    );
  };
  socket.onclose = (event) => {
    const code = event.code;
    const reason = event.reason || "";
    if (code === POLICY_VIOLATION) {
      events.onClose({ refused: true, code, message: reason || "Refused by the server" });
    } else if (code === NORMAL_CLOSURE && reason === COMPLETED_CLOSE_REASON) {
      events.onClose({ completed: true, code, message: reason });
    } else {
      events.onClose({ code, message: `WebSocket closed (${code}${reason ? ` ${reason}` : ""})` });
    }
  };
  return { close: () => closeQuietly(socket) };
}

function openEventStream(target, config, events) {
  const controller = new AbortController();
  let closed = false;
  const parser = createEventStreamParser((data) => events.onMessage(data));
  const read = async () => {
    const headers = { Accept: "text/event-stream", ...config.headers };
    if (target.lastEventId !== null && isSameOrigin(target.url)) {
      headers["Last-Event-ID"] = target.lastEventId; // also in the query; a cross-origin header needs a preflight
    }
    const fetchImpl = config.fetch; // called unbound, as a plain function
    const response = await fetchImpl(target.url, {
      headers,
      credentials: config.credentials,
      cache: "no-store",
      signal: controller.signal,
    });
    if (closed) {
      return;
    }
    if (response.status === HTTP_NO_CONTENT) {
      events.onClose({ completed: true, code: response.status, message: COMPLETED_CLOSE_REASON });
      return;
    }
    if (!response.ok) {
      const detail = await responseDetail(response);
      const refused = response.status >= 400 && response.status < 500 && response.status !== HTTP_REQUEST_TIMEOUT;
      events.onClose({ refused, code: response.status, message: detail || `HTTP ${response.status}` });
      return;
    }
    if (!response.body || typeof response.body.getReader !== "function") {
      events.onError("this environment cannot stream a fetch response");
      return;
    }
    events.onOpen();
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    for (;;) {
      const { value, done } = await reader.read();
      if (closed) {
        return;
      }
      if (done) {
        break;
      }
      events.onActivity();
      parser(decoder.decode(value, { stream: true }));
    }
    events.onClose({ message: "SSE stream ended" });
  };
  read().catch((error) => events.onError(`SSE connection failed: ${describe(error)}`, error));
  return {
    close() {
      closed = true;
      controller.abort();
    },
  };
}

/**
 * An incremental `text/event-stream` parser: feed it decoded text, it calls `onData` with each event's data.
 * Comments (heartbeats) are skipped; the event name is not needed because the data carries the message type.
 */
function createEventStreamParser(onData) {
  let buffer = "";
  let data = [];
  let first = true;
  const line = (text) => {
    if (text === "") {
      if (data.length > 0) {
        const payload = data.join("\n");
        data = [];
        onData(payload);
      }
      return;
    }
    if (text.startsWith(":")) {
      return;
    }
    const colon = text.indexOf(":");
    const field = colon < 0 ? text : text.slice(0, colon);
    if (field === "data") {
      let value = colon < 0 ? "" : text.slice(colon + 1);
      if (value.startsWith(" ")) {
        value = value.slice(1);
      }
      data.push(value);
    }
  };
  return (chunk) => {
    buffer += chunk;
    if (first && buffer.length > 0) {
      first = false;
      if (buffer.charCodeAt(0) === 0xfeff) {
        buffer = buffer.slice(1);
      }
    }
    let start = 0;
    for (let index = 0; index < buffer.length; index += 1) {
      const char = buffer[index];
      if (char !== "\n" && char !== "\r") {
        continue;
      }
      if (char === "\r" && index === buffer.length - 1) {
        break; // a "\n" may follow in the next chunk
      }
      line(buffer.slice(start, index));
      if (char === "\r" && buffer[index + 1] === "\n") {
        index += 1;
      }
      start = index + 1;
    }
    buffer = buffer.slice(start);
  };
}

function parseEventId(id) {
  const match = typeof id === "string" ? ID_PATTERN.exec(id) : null;
  return match === null ? null : [match[1].replace(/^0+(?=\d)/, ""), match[2].replace(/^0+(?=\d)/, "")];
}

function compareDigits(a, b) {
  if (a.length !== b.length) {
    return a.length < b.length ? -1 : 1;
  }
  return a < b ? -1 : a > b ? 1 : 0;
}

function resolveBaseUrl(baseUrl) {
  const page = globalThis.location?.href;
  let resolved;
  try {
    resolved = page ? new URL(baseUrl, page) : new URL(baseUrl);
  } catch {
    throw new TypeError(`baseUrl ${JSON.stringify(baseUrl)} is not a URL (outside a page it must be absolute)`);
  }
  resolved.search = "";
  resolved.hash = "";
  return resolved;
}

/** The path of a route under the router's base URL. */
function routePath(base, path) {
  return base.pathname.replace(/\/+$/, "") + path;
}

/** The fetch to use: the option's, else the global one bound to the global object, else null. */
function fetchOf(config) {
  return config.fetch ?? (typeof globalThis.fetch === "function" ? globalThis.fetch.bind(globalThis) : null);
}

function isSameOrigin(target) {
  const page = globalThis.location?.href;
  return !page || new URL(target).origin === new URL(page).origin;
}

function definedOnly(options) {
  return Object.fromEntries(Object.entries(options).filter(([, value]) => value !== undefined));
}

function problem(transport, message, retryInMs, outcome = {}) {
  return { transport, message, retryInMs, code: outcome.code ?? null, cause: outcome.cause };
}

async function responseDetail(response) {
  try {
    const text = await response.text();
    try {
      const body = JSON.parse(text);
      if (typeof body?.detail === "string") {
        return body.detail;
      }
    } catch {
      // not JSON: use the text itself
    }
    return text.slice(0, 200);
  } catch {
    return "";
  }
}

function closeQuietly(socket) {
  try {
    socket.close(NORMAL_CLOSURE);
  } catch {
    // already closing or closed
  }
}

function describe(error) {
  return error instanceof Error ? error.message : String(error);
}

function reportCallbackError(error) {
  if (typeof globalThis.reportError === "function") {
    globalThis.reportError(error);
  } else {
    console.error(error);
  }
}
