/**
 * Browser client of celery-progress-ws: follow one operation's live progress, with no dependency and no build step.
 *
 * It connects over WebSocket first and falls back to Server-Sent Events (read with `fetch`) when a WebSocket cannot
 * be opened. After a dropped connection it reconnects with capped exponential backoff and jitter, resuming after the
 * last id it received, so no entry is lost or delivered twice. It stops for good when the operation ends
 * (`completed`, `failed`, `cancelled`), when the server refuses the subscription, or when `close()` is called.
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

/** Statuses after which an operation delivers nothing more. */
export const TERMINAL_STATUSES = Object.freeze(["completed", "failed", "cancelled"]);

/** Close reason the server sends with code 1000 after delivering a terminal status. */
export const COMPLETED_CLOSE_REASON = "Operation completed";

const NORMAL_CLOSURE = 1000;
const POLICY_VIOLATION = 1008;
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
  /** @type {import("./progress-client").SubscribeOptions & typeof DEFAULTS} */
  const config = { ...DEFAULTS, ...definedOnly(options) };
  if (!["auto", "websocket", "sse"].includes(config.transport)) {
    throw new TypeError(`transport must be "auto", "websocket" or "sse", not ${JSON.stringify(config.transport)}`);
  }
  if (config.lastEventId !== null && parseEventId(config.lastEventId) === null) {
    throw new TypeError(`lastEventId is not a stream id: ${JSON.stringify(config.lastEventId)}`);
  }
  const WebSocketImpl = config.WebSocket ?? globalThis.WebSocket;
  const fetchImpl = config.fetch ?? (typeof globalThis.fetch === "function" ? globalThis.fetch.bind(globalThis) : null);
  const canWebSocket = typeof WebSocketImpl === "function";
  const canSse = typeof fetchImpl === "function";
  if ((config.transport === "websocket" && !canWebSocket) || (config.transport === "sse" && !canSse)) {
    throw new TypeError(`transport "${config.transport}" is not available in this environment`);
  }
  if (!canWebSocket && !canSse) {
    throw new TypeError("neither WebSocket nor fetch is available in this environment");
  }
  const base = resolveBaseUrl(config.baseUrl);
  const operationPath = `${base.pathname.replace(/\/+$/, "")}/operations/${encodeURIComponent(operationId)}`;

  let lastEventId = config.lastEventId;
  let status = null;
  let closed = false;
  let activeTransport = null;
  let failures = 0;
  let preferSse = config.transport === "sse" || !canWebSocket;
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

  function url(suffix, scheme) {
    const target = new URL(base.href);
    target.pathname = operationPath + suffix;
    if (scheme === "ws") {
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
    switch (message.type) {
      case "status_update":
        status = data?.status ?? status;
        emit("onStatus", data, message);
        if (TERMINAL_STATUSES.includes(status)) {
          finish({ reason: "finished" });
        }
        break;
      case "chunking_progress":
        emit("onProgress", data, message);
        break;
      case "current_state":
        emit("onState", data, message);
        break;
      case "history_gap":
        emit("onGap", data, message);
        break;
      default:
        emit("onEvent", message);
    }
  }

  function connect() {
    retryTimer = null;
    if (closed) {
      return;
    }
    if (preferSse) {
      openSse(false);
    } else {
      openWebSocket();
    }
  }

  function opened(transport) {
    activeTransport = transport;
    emit("onOpen", { transport, lastEventId });
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
    if (outcome.completed) {
      finish({ reason: "finished", code: outcome.code ?? null, message: outcome.message });
      return;
    }
    if (outcome.transport === "websocket" && !outcome.opened && config.transport === "auto" && canSse) {
      emit("onError", problem("websocket", `${outcome.message}; trying Server-Sent Events`, 0, outcome));
      openSse(true);
      return;
    }
    if (outcome.transport === "sse" && outcome.opened && outcome.fallback) {
      preferSse = true; // WebSocket could not connect but SSE works: keep using SSE
    } else if (config.transport === "auto" && outcome.fallback) {
      preferSse = !canWebSocket; // both failed: try WebSocket first again next time
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

  function openWebSocket() {
    let socket;
    let isOpen = false;
    let delivered = false;
    let settled = false;
    let connectTimer = null;
    const settle = (outcome) => {
      if (settled) {
        return;
      }
      settled = true;
      clearTimeout(connectTimer);
      dropped({ transport: "websocket", opened: isOpen, delivered, ...outcome });
    };
    try {
      socket = new WebSocketImpl(url("/ws", "ws"));
    } catch (error) {
      settle({ message: `WebSocket could not be created: ${describe(error)}`, cause: error });
      return;
    }
    connection = {
      close() {
        settled = true;
        clearTimeout(connectTimer);
        closeQuietly(socket);
      },
    };
    connectTimer = setTimeout(() => {
      closeQuietly(socket);
      settle({ message: `WebSocket did not open within ${config.connectTimeoutMs} ms` });
    }, config.connectTimeoutMs);
    socket.onopen = () => {
      if (settled) {
        return;
      }
      isOpen = true;
      clearTimeout(connectTimer);
      opened("websocket");
    };
    socket.onmessage = (event) => {
      if (settled) {
        return;
      }
      let message;
      try {
        message = JSON.parse(typeof event.data === "string" ? event.data : "");
      } catch (error) {
        emit("onError", problem("websocket", `received a message that is not JSON: ${describe(error)}`, null));
        return;
      }
      delivered = true;
      deliver(message);
    };
    socket.onerror = () => {
      // Browsers follow an error with a close event; some runtimes do not after a failed handshake.
      const wait = isOpen ? 1000 : 0;
      setTimeout(() => {
        closeQuietly(socket);
        settle({ message: isOpen ? "WebSocket error" : "WebSocket could not connect" });
      }, wait);
    };
    socket.onclose = (event) => {
      const code = event.code;
      const reason = event.reason || "";
      if (code === POLICY_VIOLATION) {
        settle({ refused: true, code, message: reason || "Refused by the server" });
      } else if (code === NORMAL_CLOSURE && reason === COMPLETED_CLOSE_REASON) {
        settle({ completed: true, code, message: reason });
      } else {
        settle({ code, message: `WebSocket closed (${code}${reason ? ` ${reason}` : ""})` });
      }
    };
  }

  function openSse(fallback) {
    const controller = new AbortController();
    let isOpen = false;
    let delivered = false;
    let settled = false;
    let timer = null;
    const settle = (outcome) => {
      if (settled) {
        return;
      }
      settled = true;
      clearTimeout(timer);
      controller.abort();
      dropped({ transport: "sse", opened: isOpen, delivered, fallback, ...outcome });
    };
    const arm = (ms, message) => {
      clearTimeout(timer);
      if (ms > 0) {
        timer = setTimeout(() => settle({ message }), ms);
      }
    };
    connection = {
      close() {
        settled = true;
        clearTimeout(timer);
        controller.abort();
      },
    };
    arm(config.connectTimeoutMs, `SSE did not answer within ${config.connectTimeoutMs} ms`);
    const parser = createEventStreamParser((data) => {
      if (settled) {
        return;
      }
      let message;
      try {
        message = JSON.parse(data);
      } catch (error) {
        emit("onError", problem("sse", `received data that is not JSON: ${describe(error)}`, null));
        return;
      }
      delivered = true;
      deliver(message);
    });
    const read = async () => {
      const target = url("/events", "http");
      const headers = { Accept: "text/event-stream", ...config.headers };
      if (lastEventId !== null && isSameOrigin(target)) {
        headers["Last-Event-ID"] = lastEventId; // also in the query; a cross-origin header would need a preflight
      }
      const response = await fetchImpl(target, {
        headers,
        credentials: config.credentials,
        cache: "no-store",
        signal: controller.signal,
      });
      if (settled) {
        return;
      }
      if (response.status === 204) {
        settle({ completed: true, code: 204, message: COMPLETED_CLOSE_REASON }); // nothing more will come
        return;
      }
      if (!response.ok) {
        const detail = await responseDetail(response);
        const refused = response.status >= 400 && response.status < 500 && response.status !== 408;
        settle({ refused, code: response.status, message: detail || `HTTP ${response.status}` });
        return;
      }
      if (!response.body || typeof response.body.getReader !== "function") {
        settle({ message: "this environment cannot stream a fetch response" });
        return;
      }
      isOpen = true;
      opened("sse");
      arm(config.sseIdleTimeoutMs, `SSE received nothing for ${config.sseIdleTimeoutMs} ms`);
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      for (;;) {
        const { value, done: ended } = await reader.read();
        if (settled) {
          return;
        }
        if (ended) {
          break;
        }
        arm(config.sseIdleTimeoutMs, `SSE received nothing for ${config.sseIdleTimeoutMs} ms`);
        parser(decoder.decode(value, { stream: true }));
      }
      settle({ message: "SSE stream ended" });
    };
    read().catch((error) => settle({ message: `SSE connection failed: ${describe(error)}`, cause: error }));
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
