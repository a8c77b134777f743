"""The CLI's HTTP client for the running server's JSON API (/api/*, /healthz). Every failure
becomes a ClientError whose message is one line a user can act on."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx

from memoray.settings import DEFAULT_URL


class ClientError(Exception):
    """One line for the user; `code` is the server's error code when it sent one."""

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.code = code


class ApiClient:
    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 60.0,
                 transport: httpx.BaseTransport | None = None):
        self.url = (url or DEFAULT_URL).rstrip("/")
        headers = {"X-Memoray-Client": "cli"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout,
                                 transport=transport)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- plumbing ----------------------------------------------------------------------------
    def _unreachable(self, exc: Exception) -> ClientError:
        return ClientError(f"cannot reach the memoray server at {self.url} ({type(exc).__name__})"
                           ": start it with `memoray serve`, or point --url / MEMORAY_URL at it",
                           code="UNREACHABLE")

    def _error(self, res: httpx.Response) -> ClientError:
        try:
            body = res.json()
        except ValueError:
            body = {}
        code = body.get("code") if isinstance(body, dict) else None
        message = body.get("message") if isinstance(body, dict) else None
        if res.status_code == 401:
            return ClientError(f"the server refused the token ({message or 'unauthorized'}): "
                               "set MEMORAY_TOKEN or pass --token", code="UNAUTHORIZED")
        if res.status_code == 404 and code is None:
            return ClientError(f"{self.url} answered 404 for {res.request.url.path}: is it a "
                               "memoray server of this version?", code="NOT_FOUND")
        return ClientError(f"{code or res.status_code}: {message or res.reason_phrase}",
                           code=code)

    def request(self, method: str, path: str, *, retries: int = 8, **kw: Any) -> Any:
        """JSON in, JSON out; waits out RATE_LIMIT_EXCEEDED (Retry-After) a few times."""
        for attempt in range(retries + 1):
            try:
                res = self.http.request(method, path, **kw)
            except httpx.TransportError as exc:
                raise self._unreachable(exc) from None
            if res.status_code == 429 and attempt < retries:
                time.sleep(min(60.0, float(res.headers.get("retry-after") or 1)))
                continue
            if res.status_code >= 400:
                raise self._error(res)
            return res.json()
        raise ClientError("rate limited too many times")  # pragma: no cover (loop returns)

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items()
                                                  if v not in (None, "")})

    # -- API ---------------------------------------------------------------------------------
    def healthz(self) -> tuple[int, dict]:
        try:
            res = self.http.get("/healthz")
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        try:
            return res.status_code, res.json()
        except ValueError:
            raise ClientError(f"{self.url}/healthz did not answer JSON: not a memoray server?")

    def export_lines(self, workspace: str | None = None) -> Iterator[str]:
        """The export stream, one JSON line at a time (header first)."""
        params = {"workspace": workspace} if workspace else {}
        try:
            with self.http.stream("GET", "/api/export", params=params, timeout=None) as res:
                if res.status_code >= 400:
                    res.read()
                    raise self._error(res)
                for line in res.iter_lines():
                    if line:
                        yield line
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None

    def import_batch(self, header: dict | None, records: list[dict]) -> dict:
        body = json.dumps({"header": header, "records": records}, ensure_ascii=False)
        return self.request("POST", "/api/import", content=body.encode(),
                            headers={"Content-Type": "application/json"})
