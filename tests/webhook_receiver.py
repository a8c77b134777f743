"""A real local HTTP receiver for webhook tests: a threaded http.server on 127.0.0.1 that records
every request (headers, raw body), answers with a configurable status, delay or redirect, and
can be stopped and started again on the same port (the receiver "down, then up")."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from memoray.webhooks import signing


class Receiver:
    def __init__(self, port: int = 0, *, status: int = 200, delay_s: float = 0.0,
                 redirect_to: str | None = None):
        self.port = port
        self.status = status
        self.delay_s = delay_s
        self.redirect_to = redirect_to
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                with outer.lock:
                    outer.requests.append({"headers": {k.lower(): v for k, v in
                                                       self.headers.items()},
                                           "body": body, "path": self.path,
                                           "at": time.time()})
                if outer.delay_s:
                    time.sleep(outer.delay_s)
                if outer.redirect_to:
                    self.send_response(302)
                    self.send_header("Location", outer.redirect_to)
                else:
                    self.send_response(outer.status)
                self.send_header("content-length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    # -- what arrived ---------------------------------------------------------------------------
    def events(self, secret: str | None = None) -> list[dict]:
        """Every delivery's JSON body (its signature verified when `secret` is given), with its
        webhook-id as `_id`."""
        with self.lock:
            reqs = list(self.requests)
        out = []
        for r in reqs:
            if secret is not None:
                signing.verify(secret, r["headers"], r["body"])
            out.append({**json.loads(r["body"]), "_id": r["headers"].get("webhook-id")})
        return out

    def wait_for(self, predicate, timeout: float = 60.0, secret: str | None = None) -> list:
        deadline = time.time() + timeout
        while time.time() < deadline:
            evs = self.events(secret)
            if predicate(evs):
                return evs
            time.sleep(0.1)
        raise AssertionError(f"receiver: condition not met in {timeout}s; got "
                             f"{[(e['type'], e['data'].get('memoryId')) for e in self.events()]}")
