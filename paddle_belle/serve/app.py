"""An OpenAI-compatible HTTP API over a BELLE model: /v1/models, /v1/chat/completions, /v1/completions, /health.

Chat messages become a BELLE prompt of the server's style (prompts.py); /v1/completions takes the prompt as is.
Replies stream as server-sent events (``data: {json}`` ... ``data: [DONE]``) when ``stream`` is true, the way
OpenAI's API and SDK do it. Errors have OpenAI's body, ``{"error": {"message", "type", "param", "code"}}``, so
clients raise their usual exceptions (401 AuthenticationError, 429 RateLimitError, ...).

``/`` is a chat page (static/: plain files shipped in the package) that is one more client of that API;
``/page/settings`` tells it the server's defaults, presets and prompt styles.
"""
from __future__ import annotations

import contextlib
import json
import secrets
import socket
import time
import uuid
from pathlib import Path
from typing import Literal, Optional, Union

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.background import BackgroundTask

from paddle_belle.chat import context_length
from paddle_belle.presets import PRESETS
from paddle_belle.prompts import STYLES
from paddle_belle.serve.engine import ContextExceeded, Engine, QueueFull, Reply, Slots, default_rows, defaults

STATIC = Path(__file__).parent / "static"


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# ----------------------------------------------------------------------------------------- request bodies
class _Request(BaseModel):
    # Clients send fields this server has no use for (user, logit_bias, ...): ignored, as OpenAI's API does with
    # unknown ones. Fields that would change the reply and are not supported are refused in ``check_unsupported``.
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: Optional[int] = None
    max_completion_tokens: Optional[int] = None  # the newer name of max_tokens in chat
    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    seed: Optional[int] = None
    stop: Union[str, list[str], None] = None
    stream: bool = False
    stream_options: Optional[dict] = None
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    # BELLE's sampling settings, as extra body fields (vLLM's names)
    top_k: Optional[int] = Field(None, ge=0)
    repetition_penalty: Optional[float] = Field(None, gt=0)
    min_tokens: Optional[int] = Field(None, ge=0)

    def check_unsupported(self):
        if self.n != 1:
            raise APIError(400, "only n=1 is supported", param="n")
        if self.presence_penalty or self.frequency_penalty:
            raise APIError(400, "presence_penalty and frequency_penalty are not supported; use repetition_penalty "
                                "(BELLE's setting) instead", param="presence_penalty")
        if isinstance(self.stop, list) and len(self.stop) > 4:
            raise APIError(400, "at most 4 stop sequences", param="stop")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer"]
    content: Union[str, list[dict], None] = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise APIError(400, f"only text content parts are supported, not {part.get('type')!r}",
                               param="messages")
            parts.append(part["text"])
        return "".join(parts)


class ChatRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: Optional[bool] = None
    # An extra body field (the chat page's style menu); unset: the server's --style. Every style stops at "Human:",
    # so the server's stop strings serve them all.
    prompt_style: Optional[Literal[tuple(STYLES)]] = None

    def check_unsupported(self):
        super().check_unsupported()
        if self.logprobs:
            raise APIError(400, "logprobs are not supported", param="logprobs")


class CompletionRequest(_Request):
    prompt: Union[str, list[str]]
    echo: bool = False
    logprobs: Optional[int] = None
    suffix: Optional[str] = None

    def check_unsupported(self):
        super().check_unsupported()
        if isinstance(self.prompt, list) and len(self.prompt) != 1:
            raise APIError(400, "one prompt per request", param="prompt")
        if self.echo or self.logprobs or self.suffix:
            raise APIError(400, "echo, logprobs and suffix are not supported", param="echo")


# ----------------------------------------------------------------------------------------------- the app
def create_app(engine: Engine, model_name: str, api_key: str | None = None, max_queue: int = 64,
               max_request_bytes: int = 1 << 20) -> FastAPI:
    app = FastAPI(title="paddle-belle", docs_url=None, redoc_url=None)
    slots = Slots(engine.batcher.rows, max_queue)  # a request admitted has a row of the batch
    app.state.engine, app.state.slots = engine, slots
    created = int(time.time())

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _internal(request, exc: Exception):
        return JSONResponse(APIError(500, f"{type(exc).__name__}: {exc}", "server_error").body(), status_code=500)

    @app.exception_handler(404)
    async def _not_found(request, exc):
        return JSONResponse(APIError(404, f"no route {request.method} {request.url.path}", code="not_found").body(),
                            status_code=404)

    @app.exception_handler(405)
    async def _bad_method(request, exc):
        return JSONResponse(APIError(405, f"{request.method} is not allowed on {request.url.path}").body(),
                            status_code=405)

    def authorize(request: Request):
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        # compare_digest: the time taken does not tell how much of a guessed key was right
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), api_key.encode()):
            raise APIError(401, "invalid API key: send it as 'Authorization: Bearer KEY'", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})

    async def parse(request: Request, model_cls):
        authorize(request)
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_request_bytes:
            raise APIError(413, f"request body of {declared} bytes is over this server's limit of "
                                f"{max_request_bytes}", code="request_too_large")
        body = bytearray()
        async for chunk in request.stream():  # also bounds bodies sent without a Content-Length
            body += chunk
            if len(body) > max_request_bytes:
                raise APIError(413, f"request body is over this server's limit of {max_request_bytes} bytes",
                               code="request_too_large")
        try:
            req = model_cls.model_validate_json(bytes(body))
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(x) for x in first["loc"])
            raise APIError(400, f"{where}: {first['msg']}" if where else first["msg"],
                           param=where or None) from None
        req.check_unsupported()
        if req.model != model_name:
            raise APIError(404, f"model {req.model!r} is not served here (this server has {model_name!r})",
                           code="model_not_found", param="model")
        return req

    def config_of(req: _Request, chat: bool):
        try:
            return engine.config(max_tokens=req.max_completion_tokens or req.max_tokens, temperature=req.temperature,
                                 top_p=req.top_p, top_k=req.top_k, repetition_penalty=req.repetition_penalty,
                                 seed=req.seed, stop=req.stop, min_tokens=req.min_tokens, chat=chat)
        except ValueError as e:
            raise APIError(400, str(e), param="max_tokens" if "max_tokens" in str(e) else None) from None

    def encode(prompt: str, config):  # on the model thread (Engine.generate's prepare)
        try:
            return engine.encode(prompt, config.max_new_tokens)
        except ContextExceeded as e:
            raise APIError(400, str(e), code="context_length_exceeded") from None
        except ValueError as e:
            raise APIError(400, str(e), param="prompt") from None

    async def admitted(stack: contextlib.AsyncExitStack):
        try:
            await stack.enter_async_context(slots.acquire())
        except QueueFull as e:
            raise APIError(429, f"server busy: {e}", type_="rate_limit_error", code="rate_limit_exceeded",
                           headers={"Retry-After": "1"}) from None

    async def respond(request: Request, req: _Request, prepare, config, chunk_of, final_of, strip: bool):
        """The reply, streamed or whole; ``prepare()`` gives the prompt's ids on the model thread (Engine.generate);
        ``chunk_of(text)`` and ``final_of(reply)`` shape the objects. A request is admitted (or refused with 429)
        before its prompt is tokenized: tokenizing and joining the batch are then one job of the model thread."""
        stack = contextlib.AsyncExitStack()
        await admitted(stack)
        reply = Reply()
        chunks = engine.generate(prepare, config, reply, strip)
        # closing it cancels the reply: also run by the response's background task if the stream never starts
        stack.push_async_callback(chunks.aclose)
        try:
            await chunks.__anext__()  # in the batch now; a bad prompt raises here, a 400 before any reply is sent
        except BaseException:
            await stack.aclose()
            raise
        if not req.stream:
            async with stack:  # its exit closes ``chunks`` now (not at garbage collection), then frees the slot
                parts = []
                async for chunk in chunks:
                    parts.append(chunk)
                    if await request.is_disconnected():  # stop writing a reply nobody will read
                        slots.stats.disconnected += 1
                        return JSONResponse({}, status_code=499)
                slots.stats.completed += 1
            return JSONResponse(final_of(reply, "".join(parts)))

        include_usage = bool((req.stream_options or {}).get("include_usage"))

        async def events():
            finished = False
            try:
                first = chunk_of(None, reply)
                if first is not None:
                    yield _sse(first)
                async for chunk in chunks:
                    yield _sse(chunk_of(chunk, reply))
                yield _sse(chunk_of("", reply, finish=True))
                if include_usage:
                    yield _sse({**chunk_of("", reply, finish=True), "choices": [], "usage": _usage(reply)})
                yield "data: [DONE]\n\n"
                finished = True
                slots.stats.completed += 1
            except Exception as e:  # headers are sent: the error goes in the stream, as OpenAI's API does
                yield _sse(APIError(500, f"generation failed: {type(e).__name__}: {e}", "server_error").body())
                finished = True
            finally:
                if not finished:  # cancelled: the client went away mid-stream
                    slots.stats.disconnected += 1
                await stack.aclose()

        # background: frees the slot even if the stream is cancelled before its first step (idempotent)
        return StreamingResponse(events(), media_type="text/event-stream", background=BackgroundTask(stack.aclose),
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/health")
    async def health():
        s, b = slots.stats, engine.batcher
        # batch occupancy: rows holding a request now, and the mean number of rows a decoding step has carried;
        # step_seconds: the model thread's time in steps (the rest of the wall time it idled or ran jobs), of which
        # decode/tokens/prefill seconds (batching.Batcher.seconds); job_seconds: its time in jobs
        return {"status": "ok", "model": model_name, "active": s.active, "queued": s.queued,
                "peak_active": s.peak_active, "peak_queued": s.peak_queued, "completed": s.completed,
                "disconnected": s.disconnected, "rejected": s.rejected,
                "max_concurrency": slots.max_active, "max_queue": slots.max_queue, "context": engine.context,
                "batch_rows_busy": b.occupied, "decode_steps": b.steps, "decode_rows": b.rows_stepped,
                "mean_batch": round(b.rows_stepped / b.steps, 2) if b.steps else 0.0,
                "step_seconds": round(engine.step_seconds, 3), "job_seconds": round(engine.job_seconds, 3),
                **{f"{part}_seconds": round(t, 3) for part, t in b.seconds.items()}}

    # The chat page. No key is needed to load it or its settings (as for /health): the page asks the user for the
    # key and sends it with each /v1 request; it is never part of what is served here.
    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/page/settings", include_in_schema=False)
    async def page_settings():
        return {"model": model_name, "style": engine.style, "styles": list(STYLES), "defaults": _fields(engine.preset),
                "presets": {name: _fields(config) for name, config in PRESETS.items()},
                "max_tokens": engine.max_tokens_cap, "context": engine.context, "api_key_required": api_key is not None}

    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request)
        # max_model_len: the context in tokens, under vLLM's name, for clients that size max_tokens to it
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "paddle-belle", "max_model_len": engine.context}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req = await parse(request, ChatRequest)
        config = config_of(req, chat=True)
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in req.messages]

        def prepare():
            try:
                prompt = engine.chat_prompt(messages, config.max_new_tokens, req.prompt_style)
            except ContextExceeded as e:
                raise APIError(400, str(e), code="context_length_exceeded", param="messages") from None
            except ValueError as e:
                raise APIError(400, str(e), param="messages") from None
            return encode(prompt, config)

        rid, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": rid, "object": "chat.completion.chunk", "created": now, "model": model_name}

        def chunk_of(text, reply, finish=False):
            if text is None:  # the opening chunk names the role
                return {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                             "logprobs": None, "finish_reason": None}]}
            delta = {} if finish else {"content": text}
            return {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                         "finish_reason": reply.finish_reason if finish else None}]}

        def final_of(reply, text):
            return {"id": rid, "object": "chat.completion", "created": now, "model": model_name,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text.rstrip()},
                                 "logprobs": None, "finish_reason": reply.finish_reason}],
                    "usage": _usage(reply)}

        return await respond(request, req, prepare, config, chunk_of, final_of, strip=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        req = await parse(request, CompletionRequest)
        config = config_of(req, chat=False)
        prompt = req.prompt if isinstance(req.prompt, str) else req.prompt[0]
        rid, now = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": rid, "object": "text_completion", "created": now, "model": model_name}

        def chunk_of(text, reply, finish=False):
            if text is None:
                return None
            return {**head, "choices": [{"index": 0, "text": text, "logprobs": None,
                                         "finish_reason": reply.finish_reason if finish else None}]}

        def final_of(reply, text):
            return {**head, "choices": [{"index": 0, "text": text, "logprobs": None,
                                         "finish_reason": reply.finish_reason}], "usage": _usage(reply)}

        return await respond(request, req, lambda: encode(prompt, config), config, chunk_of, final_of, strip=False)

    return app


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _fields(config) -> dict:
    """A GenerationConfig as the request fields that ask for it (temperature 0: greedy)."""
    return {"temperature": config.temperature if config.do_sample else 0, "top_k": config.top_k, "top_p": config.top_p,
            "repetition_penalty": config.repetition_penalty, "max_tokens": config.max_new_tokens}


def _usage(reply: Reply) -> dict:
    return {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
            "total_tokens": reply.prompt_tokens + reply.completion_tokens}


def check_listen(host: str, port: int) -> None:
    """Fail in one line now if ``host``:``port`` cannot be listened on: uvicorn would find out only after the model
    has loaded (and a port out of range was an OverflowError from deep inside asyncio). The socket is closed
    again, so that clients are refused, not left waiting, while the model loads."""
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be between 1 and 65535, not {port}")
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: only a port in use fails
            s.bind((host, port))
    except OSError as e:
        raise OSError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def serve(model: str, host="127.0.0.1", port=8000, api_key=None, preset="belle-card", style=None,
          max_concurrency=None, max_queue=64, max_tokens_cap=2048, max_request_bytes=1 << 20, served_name=None,
          threads=None, log_level="info", context=None, prefill_chunk=128, **overrides) -> None:
    """Load ``model`` and serve it until interrupted. ``overrides`` (GenerationConfig's temperature, top_k,
    max_new_tokens, ...) change the preset: the defaults of requests that do not set their own."""
    import os

    import uvicorn

    from paddle_belle import AutoModelForCausalLM, AutoTokenizer

    Slots(max_concurrency or 1, max_queue)  # bad limits and settings fail here, before minutes of model loading
    defaults(preset, max_tokens_cap, **overrides)
    check_listen(host, port)
    loaded = AutoModelForCausalLM.from_pretrained(model, threads=threads)
    context = context or context_length(loaded)
    why = ""
    if max_concurrency is None:  # chosen with the model in memory, before the cache is allocated
        max_concurrency, why = default_rows(loaded, context)
        why = f" ({why})"
    engine = Engine(loaded, AutoTokenizer.from_pretrained(model), style=style, preset=preset,
                    max_tokens_cap=max_tokens_cap, context=context, rows=max_concurrency, prefill_chunk=prefill_chunk,
                    **overrides)
    name = served_name or os.path.basename(os.path.normpath(str(model)))
    app = create_app(engine, name, api_key=api_key, max_queue=max_queue, max_request_bytes=max_request_bytes)
    print(f"paddle-belle serve: {name} on http://{host}:{port}/v1 (style {engine.style}, preset {preset}, "
          f"{max_concurrency} rows in the batch{why}, {max_queue} queued{', API key required' if api_key else ''})",
          flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
