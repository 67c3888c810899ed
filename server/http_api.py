"""The OpenAI-compatible HTTP API (Starlette), over the same `Generations` as gRPC, so HTTP and
gRPC requests share one engine and batch together.

GET /v1/models; POST /v1/completions (OpenAI's body, or Tabby's when it has `segments`);
POST /v1/chat/completions; GET /v1/health (Tabby's, open like gRPC health). `stream: true`
answers server-sent events in OpenAI's chunk format ending with `data: [DONE]`. Each response
says where the request went (`submodel` field, `x-submodel-*` headers); errors are OpenAI
error objects whose `code` is the `Reason`.

The engine's events come from a blocking iterator: a `Pump` thread per request moves them to
the event loop, and a client that goes away cancels its engine request, whose end the pump
still records in the metrics.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import platform
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from importlib.metadata import version

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route as Path

from submodel.router import normalize_language
from submodel.server import http_schema as schema
from submodel.server.api import (
    EngineError,
    FinishEvent,
    InvalidRequestError,
    Reason,
)
from submodel.server.errors import http_error, internal_error
from submodel.server.generation import Generations, Job, Route
from submodel.server.http_replies import DONE, ChatReply, CompletionReply, Reply, sse
from submodel.server.metrics import HTTP
from submodel.vocabulary import DENSE

log = logging.getLogger("submodel.server")

MAX_BODY_BYTES = 4 << 20  # as gRPC's default message limit
OPEN_PATHS = ("/v1/health",)  # like gRPC health: probes cannot send a token
_END = object()


def error_response(error: EngineError) -> JSONResponse:
    status, body = http_error(error)
    return JSONResponse(body, status_code=status)


async def _engine_error(_request: Request, error: EngineError) -> JSONResponse:
    return error_response(error)


async def _internal(_request: Request, error: Exception) -> JSONResponse:
    log.error("HTTP request failed", exc_info=error)
    return error_response(internal_error())


class BearerToken:
    """ASGI middleware: every path but OPEN_PATHS needs `Authorization: Bearer <token>`."""

    def __init__(self, app, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            sent = dict(scope["headers"]).get(b"authorization")
            if sent is None or not hmac.compare_digest(sent, self.expected):
                why = "missing" if sent is None else "wrong"
                response = error_response(EngineError(
                    f"{why} bearer token: send the header 'Authorization: Bearer <token>' "
                    "(the OpenAI client's api_key)", Reason.UNAUTHENTICATED))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class Pump:
    """Runs one request's blocking event iterator on its own thread and hands the items to
    the event loop. `cancel()` (the client went away) cancels the engine request; the thread
    still runs the iterator to its end, so the request is recorded once."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.handle = None
        self.cancelled = False
        self.finished = False

    def start(self, items: Iterator[object]) -> None:
        threading.Thread(target=self._run, args=(items,), daemon=True,
                         name="http-request").start()

    def watch(self, handle) -> None:
        """Generations.run's `watch`: the engine handle, cancelled if the client left."""
        self.handle = handle
        if self.cancelled:
            handle.cancel()

    def cancel(self) -> None:
        self.cancelled = True
        if self.handle is not None:
            self.handle.cancel()

    def _put(self, kind: str, value: object) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, value))

    def _run(self, items: Iterator[object]) -> None:
        try:
            for item in items:
                self._put("item", item)
            self._put("end", _END)
        except BaseException as e:  # noqa: BLE001 (handed to the event loop, re-raised there)
            self._put("error", e)

    async def next(self) -> object:
        """The next item, _END after the last; raises what the iterator raised."""
        kind, value = await self.queue.get()
        self.finished = kind != "item"
        if kind == "error":
            raise value
        return value

    async def __aiter__(self) -> AsyncIterator[object]:
        while (item := await self.next()) is not _END:
            yield item


async def read_json(request: Request) -> dict:
    size, chunks = 0, []
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise InvalidRequestError(f"the request body is larger than {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidRequestError(f"the body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("the body must be a JSON object")
    return body


async def _until_disconnect(request: Request, pump: Pump) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
    pump.cancel()


class HttpApi:
    """Builds the Starlette app; one per server process."""

    def __init__(self, generations: Generations, token: str | None = None) -> None:
        self.generations = generations
        engine = generations.engine
        self.base_name = engine.store.manifest["base_model"]["id"]
        self.created = schema.now()
        app = Starlette(routes=[
            Path("/v1/models", self.models, methods=["GET"]),
            Path("/v1/models/{name:path}", self.model, methods=["GET"]),
            Path("/v1/completions", self.completions, methods=["POST"]),
            Path("/v1/chat/completions", self.chat, methods=["POST"]),
            Path("/v1/health", self.health, methods=["GET"]),
        ], exception_handlers={EngineError: _engine_error, Exception: _internal})
        self.app = BearerToken(app, token) if token else app

    @property
    def languages(self) -> tuple[str, ...]:
        """The engine's languages now: a reload (SIGHUP, ReloadSubModels) changes them."""
        return tuple(self.generations.engine.languages)

    # ---- inspection ------------------------------------------------------------------

    async def models(self, _request: Request) -> JSONResponse:
        return JSONResponse(schema.model_list(self.base_name, self.languages, self.created))

    async def model(self, request: Request) -> JSONResponse:
        name = request.path_params["name"]
        for entry in schema.model_list(self.base_name, self.languages, self.created)["data"]:
            if entry["id"] == name:
                return JSONResponse(entry)
        return error_response(EngineError(f"no model {name!r}: GET /v1/models lists them",
                                          Reason.UNKNOWN_LANGUAGE, "model"))

    async def health(self, _request: Request) -> JSONResponse:
        """Tabby's health object (its editor plugins check it before completing)."""
        return JSONResponse({
            "model": self.base_name, "device": "cpu", "arch": platform.machine(),
            "cpu_info": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "cuda_devices": [],
            "version": {"git_describe": version("submodel")}})

    def _known_language(self, name: str) -> str | None:
        """Tabby's language id as a hint, if it names a sub-model here."""
        lang = normalize_language(name) or name.strip().lower()  # a store may add any
        return lang if lang in (*self.languages, DENSE) else None

    # ---- generation ------------------------------------------------------------------

    async def completions(self, request: Request):
        body = await read_json(request)
        if schema.is_tabby(body):
            return await self._tabby(request, body)
        return await self._openai(request, body, chat=False)

    async def chat(self, request: Request):
        return await self._openai(request, await read_json(request), chat=True)

    def _events(self, make_job: Callable[[], Job], pump: Pump) -> Iterator[object]:
        """The request's whole life, on the pump's thread: counted once, whatever happens."""
        with self.generations.call(HTTP) as call:
            yield from self.generations.run(make_job(), call, pump.watch)

    async def _start(self, make_job: Callable[[], Job]) -> tuple[Pump, Route]:
        """Validate, route and submit; an EngineError here becomes the response's status."""
        pump = Pump()
        pump.start(self._events(make_job, pump))
        return pump, await pump.next()

    async def _collect(self, request: Request, pump: Pump) -> list[object]:
        """Every event of a request answered in one piece; a client that goes away while
        waiting cancels it."""
        error = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(_until_disconnect, request, pump)
            try:
                events = [event async for event in pump]
            except EngineError as e:
                error = e
            tg.cancel_scope.cancel()
        if error is not None:
            raise error
        return events

    async def _openai(self, request: Request, body: dict, chat: bool):
        stream = schema.get_field(body, "stream", (bool,), "true or false", False)
        options = schema.get_field(body, "stream_options", (dict,), "an object", {})
        model = body.get("model") or schema.AUTO
        make_job = (schema.chat_job if chat else schema.completion_job)
        pump, route = await self._start(lambda: make_job(body, self.base_name))
        reply = ChatReply(model) if chat else CompletionReply(model)
        headers = schema.route_headers(route)
        if stream:
            n = schema.get_field(body, "n", (int,), "an integer", 1)
            frames = self._frames(pump, reply, route, n, bool(options.get("include_usage")))
            return StreamingResponse(frames, media_type="text/event-stream",
                                     headers={**headers, "cache-control": "no-cache"})
        events = await self._collect(request, pump)
        return JSONResponse(reply.whole(route, events), headers=headers)

    async def _frames(self, pump: Pump, reply: Reply, route: Route, n: int,
                      include_usage: bool) -> AsyncIterator[str]:
        """Server-sent events: OpenAI chunks, then `data: [DONE]`."""
        try:
            for chunk in reply.opening(route, n):
                yield sse(chunk)
            async for event in pump:
                chunk = reply.chunk(route, event, include_usage)
                if chunk is not None:
                    yield sse(chunk)
        except EngineError as e:
            yield sse(http_error(e)[1])
        finally:
            if not pump.finished:  # the client went away mid-stream
                pump.cancel()
        yield DONE

    async def _tabby(self, request: Request, body: dict) -> JSONResponse:
        """Tabby's completion: one choice, in Tabby's shape."""
        pump, route = await self._start(lambda: schema.tabby_job(body, self._known_language))
        events = await self._collect(request, pump)
        text = next(e.text for e in events if isinstance(e, FinishEvent))
        return JSONResponse({"id": schema.new_id("cmpl"),
                             "choices": [{"index": 0, "text": text}],
                             "submodel": schema.routing(route)},
                            headers=schema.route_headers(route))
