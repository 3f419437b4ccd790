"""Request-body size limit as a plain ASGI middleware: a body over ``max_body_bytes`` gets a 413 before the app
reads it (declared by Content-Length, or counted while a chunked body arrives)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import error_response


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max = int(max_body_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = None
        for key, value in scope.get("headers", ()):
            if key == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    await error_response(400, "bad_request", f"invalid Content-Length {value.decode('latin-1')!r}")(
                        scope, receive, send)
                    return
                break
        if length is not None:
            if length > self.max:
                await self._too_large(scope, receive, send, length)
                return
            await self.app(scope, receive, send)
            return
        # no Content-Length (chunked or empty): read the body up to the limit, then replay it
        chunks: list[bytes] = []
        total = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # client went away
                return
            body = message.get("body", b"")
            total += len(body)
            if total > self.max:
                await self._too_large(scope, receive, send, None)
                return
            chunks.append(body)
            more = message.get("more_body", False)
        data = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": data, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send, length: int | None) -> None:
        size = f"{length} bytes" if length is not None else "more"
        await error_response(413, "body_too_large", f"request body of {size} is over the limit of {self.max} bytes")(
            scope, receive, send)
