"""The HTTP side of `lmkit serve`: a starlette application, run by uvicorn (the `serve` extra).

    GET  /health            {"status": "ok", "model", "engine": the batcher's counters}
    GET  /v1/models         the one model served
    POST /v1/completions    decoder-only models, and encoder-decoders (the prompt is the source; see
                            lmkit.serving.api for the fields)
    POST /v1/embeddings     encoder models
    GET /tokenizer_info, POST /tokenize, POST /detokenize   vLLM's tokenizer endpoints (lm-eval's remote tokenizer)

starlette and uvicorn because they are small (pure Python, no compiled dependencies: the edge
install stays small), maintained by the encode organisation, and the pair FastAPI and vLLM's
OpenAI server stand on. Decoding runs on the engine's thread; the event loop only reads requests,
queues sequences and writes what the engine hands back, so slow clients never hold a step up.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading

from ..errors import MissingDependency
from .api import Completion, RequestError, Service, check_unicode, error_body

log = logging.getLogger(__name__)


def _require_server_library():
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        # An edge machine has the wheel and no clone, so no constraints.txt (a trial's hint named one it lacked)
        raise MissingDependency("lmkit serve needs starlette and uvicorn, which are not installed; install them "
                                "with: pip install 'lmkit-toolkit[serve]' (in a clone, add -c constraints.txt)"
                                ) from None


def create_app(service: Service):
    """The starlette application serving `service`; its engine runs from startup to shutdown."""
    _require_server_library()
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    def error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
        return JSONResponse(error_body(message, kind), status_code=status)

    async def read_json(request: Request):
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as problem:
            raise RequestError(f"the request body is not valid JSON ({problem}); send a JSON object") from None
        # JSON's \\uD800 escapes give strings no tokenizer takes (a trial's "stop": "\\ud800" was a 500)
        check_unicode(body)
        return body

    async def health(request: Request) -> JSONResponse:
        engine = service.engine.counters.to_dict() if service.engine is not None else None
        return JSONResponse({"status": "ok", "model": service.name, "engine": engine})

    async def models(request: Request) -> JSONResponse:
        return JSONResponse(service.models())

    async def completions(request: Request):
        try:
            completion = service.completion(await read_json(request))
        except RequestError as problem:
            return JSONResponse(problem.body(), status_code=problem.status)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        index = {id(sequence): i for i, sequence in enumerate(completion.sequences)}

        def on_event(sequence, kind, detail):  # on the engine's thread
            try:
                loop.call_soon_threadsafe(events.put_nowait, (index[id(sequence)], kind, detail))
            except RuntimeError:  # the event loop has closed: nobody is listening any more
                sequence.cancelled = True

        for sequence in completion.sequences:
            sequence.on_event = on_event
        service.engine.submit(completion.sequences)
        if completion.stream:
            return _CancellingStream(completion, _events(service, completion, events, request),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        try:
            failure = await _wait(completion, events)
        finally:
            for sequence in completion.sequences:  # a request cancelled while waiting frees its rows
                sequence.cancelled = sequence.cancelled or sequence.finish_reason is None
        if failure is not None:
            return error(500, failure, "server_error")
        return JSONResponse(service.completion_response(completion))

    async def embeddings(request: Request) -> JSONResponse:
        try:
            body = await read_json(request)
            async with embedding_lock:  # one batch at a time through the model
                response = await asyncio.get_running_loop().run_in_executor(None, service.embeddings, body)
        except RequestError as problem:
            return JSONResponse(problem.body(), status_code=problem.status)
        return JSONResponse(response)

    def tokenizer_route(method):
        async def endpoint(request: Request) -> JSONResponse:
            try:
                body = None if request.method == "GET" else await read_json(request)
                return JSONResponse(method() if body is None else method(body))
            except RequestError as problem:
                return JSONResponse(problem.body(), status_code=problem.status)
        return endpoint

    class _CancellingStream(StreamingResponse):
        """A stream whose sequences leave the batch when the client goes away, however the server learns it."""

        def __init__(self, completion: Completion, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.completion = completion

        async def __call__(self, scope, receive, send):
            try:
                await super().__call__(scope, receive, send)
            finally:
                for sequence in self.completion.sequences:
                    if sequence.finish_reason is None:
                        sequence.cancelled = True

    async def not_found(request: Request, exc) -> JSONResponse:
        return error(404, f"no such endpoint: {request.method} {request.url.path}; the API has GET /health, "
                          "GET /v1/models, POST /v1/completions, POST /v1/embeddings, GET /tokenizer_info, "
                          "POST /tokenize and POST /detokenize")

    async def wrong_method(request: Request, exc) -> JSONResponse:
        return error(405, f"{request.url.path} does not take {request.method}")

    async def internal(request: Request, exc) -> JSONResponse:
        log.exception("internal error", exc_info=exc)
        return error(500, f"internal error: {exc}", "server_error")

    embedding_lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if service.engine is not None:
            service.engine.start()
        try:
            yield
        finally:
            if service.engine is not None:
                service.engine.stop()

    routes = [Route("/health", health), Route("/v1/models", models),
              Route("/v1/completions", completions, methods=["POST"]),
              Route("/v1/embeddings", embeddings, methods=["POST"]),
              Route("/tokenizer_info", tokenizer_route(service.tokenizer_info)),
              Route("/tokenize", tokenizer_route(service.tokenize), methods=["POST"]),
              Route("/detokenize", tokenizer_route(service.detokenize), methods=["POST"])]
    return Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers={404: not_found, 405: wrong_method, 500: internal})


async def _wait(completion: Completion, events: asyncio.Queue) -> str | None:
    """Until every choice has ended; an error message if the engine failed one."""
    left = len(completion.sequences)
    while left:
        _, kind, detail = await events.get()
        if kind == "error":
            return str(detail)
        if kind == "done":
            left -= 1
    return None


async def _events(service: Service, completion: Completion, events: asyncio.Queue, request=None):
    """Server-sent events: each choice's text as it becomes whole characters, then `data: [DONE]`.

    It ends when `request`'s client has gone: writing on to a closed connection made asyncio log
    "socket.send() raised exception." for every event (and the stream's sequences leave the batch).
    """
    printed = [0] * len(completion.sequences)  # characters of each choice's continuation sent
    sent = [0] * len(completion.sequences)  # tokens of each choice whose logprobs were sent

    def event(payload: dict) -> str:
        return f"data: {json.dumps(payload)}\n\n"

    if completion.echo:
        # The prompt's text first; its log-probabilities (with logprobs) come with the choice's first chunk of tokens.
        for i in range(len(completion.sequences)):
            yield event(service.chunk(completion, i, completion.prompt_texts[i // completion.n], None, None))
    left = len(completion.sequences)
    while left:
        i, kind, detail = await events.get()
        if request is not None and await request.is_disconnected():
            return
        sequence = completion.sequences[i]
        if kind == "error":
            yield event(error_body(str(detail), "server_error"))
            break
        done = kind == "done"
        end = detail[1] if kind == "tokens" else len(sequence.tokens)
        text = service.text(sequence.tokens[:end], sequence.prompt) + (sequence.tail if done else "")
        if not done and text.endswith("\ufffd"):  # the first bytes of a character that spans tokens
            text = text[:printed[i]]
        delta, printed[i] = text[printed[i]:], max(printed[i], len(text))
        logprobs = None
        if completion.logprobs is not None and (end > sent[i] or done):
            tokens = sequence.tokens[sent[i]:end]
            values = sequence.token_logprobs[sent[i]:end]
            top = sequence.top_logprobs[sent[i]:end]
            # In the order, and with the offsets, of the response that does not stream: with echo, the prompt's
            # tokens come first (scored before the first new token, so with the first chunk that has any).
            prompt = completion.prompts[i // completion.n] if completion.echo else []
            before = prompt + sequence.tokens[:sent[i]]
            if prompt and sent[i] == 0:
                tokens, values, top = prompt + tokens, sequence.prompt_logprobs + values, \
                    sequence.prompt_top_logprobs + top
                before = []
            offset = sum(len(service._token_text(token)) for token in before)
            logprobs = service._logprobs(tokens, values, top, offset)
            sent[i] = end
        if delta or logprobs is not None or done:
            yield event(service.chunk(completion, i, delta, logprobs, "length" if done and
                                      sequence.finish_reason == "length" else "stop" if done else None))
        if done:
            left -= 1
    yield "data: [DONE]\n\n"


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: a free one); OSError when the address is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class BackgroundServer:
    """A uvicorn server on a thread of this process, for tests and benchmarks: `with BackgroundServer(app) as url:`."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        self.sock = bind(host, port)
        self.url = url_of(self.sock)
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


def run(app, sock: socket.socket) -> None:
    """Serve `app` on the listening socket until interrupted (Ctrl-C: a graceful shutdown)."""
    import uvicorn

    uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")).run(sockets=[sock])
