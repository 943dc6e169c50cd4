"""Guards every HTTP request passes before its route: a bounded request body, a read timeout on
the body, and a last-resort problem+json 500 that keeps the connection usable.

- The body of every route but ZIP imports is limited to ``CANDOR_MAX_JSON_BYTES``: a declared
  ``Content-Length`` over the limit is answered 413 before a byte is read, and a chunked body is
  counted as it arrives, so at most the limit (plus one chunk) is ever buffered. ZIP imports stream
  to disk and enforce ``CANDOR_MAX_UPLOAD_BYTES`` themselves.
- A body that sends nothing for ``CANDOR_UPLOAD_READ_TIMEOUT_SECONDS`` is answered 408 and the
  connection closed; the route's temporary files are dropped as the error unwinds it.
- An exception no handler answered becomes a problem+json 500 here instead of in Starlette's
  ServerErrorMiddleware, which re-raises it so that the server drops the keep-alive connection
  without ``Connection: close``. The error is logged with its traceback.
"""

from __future__ import annotations

import logging
import re
from http import HTTPStatus

import anyio
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.problems import problem_response
from app.core.settings import get_settings

log = logging.getLogger("candor.errors")
# routes that stream their body to disk and check its size themselves
UNBOUNDED_BODY = re.compile(r"^/v1/datasets/[^/]+/imports/?$")
CLOSE = {"Connection": "close"}


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than the limit of {limit} bytes", headers=CLOSE)


class BodyTimeout(HTTPException):
    def __init__(self, seconds: float) -> None:
        super().__init__(408, f"the request body sent nothing for {seconds:g} seconds", headers=CLOSE)


def _declared_length(scope: Scope) -> int | None:
    """The declared body length; 0 for a request with neither Content-Length nor a chunked body."""
    headers = Headers(scope=scope)
    value = headers.get("content-length")
    if value is None:
        return None if "transfer-encoding" in headers else 0
    return int(value) if value.isascii() and value.isdigit() else None


class RequestGuard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings = get_settings()
        limit = None if UNBOUNDED_BODY.match(scope["path"]) else settings.max_json_bytes
        timeout = settings.upload_read_timeout_seconds
        declared = _declared_length(scope)
        if limit is not None and declared is not None and declared > limit:
            await self._answer(scope, receive, send, BodyTooLarge(limit))
            return

        received = 0
        body_done = declared == 0
        started = False

        async def guarded_receive() -> Message:
            nonlocal received, body_done
            if body_done:  # after the body only a disconnect can come; wait for it as long as it takes
                return await receive()
            message = None
            with anyio.move_on_after(timeout):
                message = await receive()
            if message is None:
                raise BodyTimeout(timeout)
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if limit is not None and received > limit:
                    raise BodyTooLarge(limit)
                body_done = not message.get("more_body", False)
            else:
                body_done = True
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, guarded_receive, tracked_send)
        except HTTPException as exc:
            if started:
                raise
            await self._answer(scope, receive, send, exc)
        except Exception:
            if started:  # part of the response is out: the server must close the connection
                raise
            log.exception("unexpected error answering %s %s", scope.get("method"), scope.get("path"))
            await problem_response(
                500,
                "Internal Server Error",
                "an unexpected error occurred; it has been logged",
                scope["path"],
                headers=None if body_done else CLOSE,
            )(scope, receive, send)

    @staticmethod
    async def _answer(scope: Scope, receive: Receive, send: Send, exc: HTTPException) -> None:
        await problem_response(
            exc.status_code, HTTPStatus(exc.status_code).phrase, exc.detail, scope["path"], headers=exc.headers
        )(scope, receive, send)
