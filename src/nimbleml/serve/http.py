"""The one exception the serving layers raise to answer a request with an HTTP error: a
status, a message (sent as ``{"error": message}``) and extra headers (``Retry-After`` on a
503, ``WWW-Authenticate`` on a 401). It sits below everything else in serve/ so the server,
the hot path, the routes and hot reload all raise it with a plain import.

It is an answer, not a failure of the library, so it is not part of the NimbleError tree
(errors.py): library errors are turned into one of these where a request meets them.
"""

from __future__ import annotations


class HttpError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}
