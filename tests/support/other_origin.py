"""A page on a second origin (same host, another port): it tries the progress routes of the app with the user's
cookies, as a hostile page in another tab of the same browser would."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from devtools.processes import free_port

ATTACK_PAGE = b"""<!doctype html>
<meta charset="utf-8">
<title>another origin</title>
<script type="module">
const params = new URLSearchParams(location.search);
const app = params.get("app");
const operation = `${app}/progress/operations/${encodeURIComponent(params.get("op"))}`;
const socket = new Promise((resolve) => {
  const ws = new WebSocket(`${operation.replace(/^http/, "ws")}/ws`);
  let opened = false;
  ws.onopen = () => { opened = true; };
  ws.onclose = (event) => resolve({ opened, code: event.code });
});
const events = new Promise((resolve) => {
  const source = new EventSource(`${operation}/events`, { withCredentials: true });
  source.onopen = () => { source.close(); resolve({ opened: true }); };
  source.onerror = () => { source.close(); resolve({ opened: false }); };
});
const cancel = fetch(`${operation}/cancel`, { method: "POST", mode: "no-cors", credentials: "include" })
  .then((response) => ({ type: response.type }), (error) => ({ error: String(error) }));
const snapshot = fetch(operation, { credentials: "include" })
  .then((response) => ({ status: response.status }), (error) => ({ error: String(error) }));
const names = ["socket", "events", "cancel", "snapshot"];
const outcomes = await Promise.all([socket, events, cancel, snapshot]);
window.__results = Object.fromEntries(names.map((name, index) => [name, outcomes[index]]));
</script>
"""


class OtherOriginSite:
    """Serves ATTACK_PAGE at ``/`` on 127.0.0.1 and a free port of its own, from a thread."""

    def __init__(self) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), _Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="other-origin", daemon=True)

    def __enter__(self) -> OtherOriginSite:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(ATTACK_PAGE)))
        self.end_headers()
        self.wfile.write(ATTACK_PAGE)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test reads the page's results, not the access log."""
