"""ASGI middleware holding every request and every response of the double to lakeFS's published API.

Requests that do not match their operation (unknown body fields, missing required fields, wrong types, unknown
or ill-typed parameters, a content type the operation does not accept) are refused before the app sees them:
``400`` with lakeFS's ``Error`` body, as the server's OpenAPI request validator does. Responses are buffered
and checked against the operation's declared statuses and schemas; one that does not match is a defect of
the double: it is recorded in :class:`ContractViolations`, logged at ERROR and replaced by a ``500`` naming
the problem, so no client can take it for a valid answer (and the test fixtures fail on any recorded one).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from tests.lakefs_double.contract import API_PREFIX, Contract, ContractError

logger = logging.getLogger(__name__)

OPENAPI_PATH = f"{API_PREFIX}/openapi.json"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True)
class Violation:
    method: str
    path: str
    status: int
    problem: str


class ContractViolations:
    """Responses of the double that broke the contract, and how many were checked (thread-safe: uvicorn serves
    from another thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[Violation] = []
        self._checked = 0

    def record(self, violation: Violation) -> None:
        with self._lock:
            self._items.append(violation)

    def count_checked(self) -> None:
        with self._lock:
            self._checked += 1

    @property
    def checked(self) -> int:
        """How many responses were validated (valid or not)."""
        with self._lock:
            return self._checked

    def snapshot(self) -> list[Violation]:
        with self._lock:
            return list(self._items)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


def _error_response(status: int, message: str) -> tuple[Message, Message]:
    body = json.dumps({"message": message}).encode()
    start = {
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
    }
    return start, {"type": "http.response.body", "body": body, "more_body": False}


class ContractValidationMiddleware:
    """Wraps the double's app: checks requests (refusing bad ones) and responses (recording bad ones)."""

    def __init__(self, app: ASGIApp, contract: Contract, violations: ContractViolations, served: set[str]) -> None:
        self.app = app
        self.contract = contract
        self.violations = violations
        self.served = served  # operation ids the app implements (filled once its routes exist)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == OPENAPI_PATH:
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        path = scope["path"]
        matched = self.contract.match(method, path)
        operation = matched[0] if matched else None

        chunks: list[bytes] = []
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)

        refusal = None
        if operation is None and path.startswith(f"{API_PREFIX}/"):
            # The server routes with its OpenAPI document before anything else (even authentication): a path or
            # method it does not describe is a 400 from the router (kin-openapi's messages).
            refusal = (
                400,
                "method not allowed" if self.contract.knows_path(path) else "no matching operation was found",
            )
        elif operation is not None and operation.operation_id not in self.served:
            refusal = (501, f"{operation.operation_id} is not implemented by the lakeFS API test double")
        if refusal is not None:
            start, end = _error_response(*refusal)
            self.violations.count_checked()
            await send(start)
            await send(end)
            return

        if operation is not None:
            headers = {key.decode("latin-1"): value.decode("latin-1") for key, value in scope["headers"]}
            query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
            try:
                self.contract.check_request(operation, query, headers, headers.get("content-type", ""), body)
            except ContractError as exc:
                start, end = _error_response(400, str(exc))
                await send(start)
                await send(end)
                return

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        response_start: Message | None = None
        response_body: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal response_start
            if message["type"] == "http.response.start":
                response_start = message
            elif message["type"] == "http.response.body":
                response_body.append(message.get("body", b""))

        await self.app(scope, replay, capture)
        if response_start is None:
            raise RuntimeError(f"the lakeFS double sent no response to {method} {path}")
        status = int(response_start["status"])
        content = b"".join(response_body)
        content_type = next(
            (
                value.decode("latin-1")
                for key, value in response_start.get("headers", [])
                if key.lower() == b"content-type"
            ),
            "",
        )
        self.violations.count_checked()
        try:
            self.contract.check_response(operation, method, status, content_type, content)
        except ContractError as exc:
            self.violations.record(Violation(method, path, status, str(exc)))
            logger.error("lakeFS double broke the published API on %s %s: %s", method, path, exc)
            start, end = _error_response(500, f"lakeFS API double contract violation: {exc}")
            await send(start)
            await send(end)
            return
        await send(response_start)
        await send({"type": "http.response.body", "body": content, "more_body": False})
