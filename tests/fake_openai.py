"""A local chat-completions server on 127.0.0.1 for testing the ``openai`` critic with the
real ``openai`` SDK. It speaks just enough of the protocol and can be told to behave like
each kind of endpoint, and, request by request, to misbehave.

Kinds of endpoint (attributes, set before or between requests):

- ``kind="chat"`` (default): a chat model; any parameters accepted.
- ``kind="openai-reasoning"``: OpenAI's reasoning models (o-series, gpt-5 family):
  ``max_tokens`` and a temperature other than 1 are refused with OpenAI's exact 400 bodies;
  ``max_completion_tokens`` bounds reasoning and answer together (a limit the reasoning
  uses up leaves an empty content with finish_reason "length", as OpenAI answers);
  ``usage.completion_tokens_details.reasoning_tokens`` reports ``reasoning_tokens``.
- ``reasoning_field="reasoning_content"`` (DeepSeek, SGLang, older vLLM) or ``"reasoning"``
  (vLLM 0.32): the thinking in that message field, beside the content.
- ``content`` with ``<think>...</think>``: a server without a reasoning parser.
- ``ignored_params={"max_completion_tokens"}``: a server that accepts a parameter and
  does not read it (Ollama and llama-cpp-python with ``max_completion_tokens``).
- ``azure_key="..."``: an Azure OpenAI resource: only
  ``/openai/deployments/NAME/chat/completions?api-version=...`` with that key in the
  ``api-key`` header; Azure's 401 and 404 bodies otherwise.

Per-request behaviours (``script``, then ``default``): ``ok``, ``slow`` (0.3 s then ok),
``slow_500`` (0.3 s then 500),
``hang`` (sleeps ``hang_s``), ``429`` (Retry-After: 0), ``500``, ``400``, ``401``,
``malformed`` (200 with a body that is not JSON), ``empty`` (200 with no choices),
``length`` (the content cut, finish_reason "length"), ``whitespace`` (content of
whitespace only), ``null`` (content null), ``refusal`` (OpenAI's refusal field),
``think_only`` (content that is only a ``<think>`` block).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

MAX_TOKENS_REFUSED = {
    "message": "Unsupported parameter: 'max_tokens' is not supported with this model. "
    "Use 'max_completion_tokens' instead.",
    "type": "invalid_request_error",
    "param": "max_tokens",
    "code": "unsupported_parameter",
}
AZURE_401 = {
    "code": "401",
    "message": "Access denied due to invalid subscription key or wrong API endpoint. Make sure "
    "to provide a valid key for an active subscription and use a correct regional API "
    "endpoint for your resource.",
}
AZURE_404 = {"code": "404", "message": "Resource not found"}
PROMPT_TOKENS, ANSWER_TOKENS = 100, 20  # an answer's usage (plus its reasoning tokens)


def temperature_refused(value) -> dict:
    return {
        "message": f"Unsupported value: 'temperature' does not support {json.dumps(value)} "
        "with this model. Only the default (1) value is supported.",
        "type": "invalid_request_error",
        "param": "temperature",
        "code": "unsupported_value",
    }


class FakeOpenAI:
    def __init__(
        self,
        content: str = "Step 2 is wrong.\nConclusion: incorrect",
        hang_s: float = 3.0,
        latency_s: float = 0.0,
        kind: str = "chat",
    ):
        self.script: deque[str] = deque()
        self.default = "ok"
        self.content = content
        self.hang_s = hang_s
        self.latency_s = latency_s  # every answer waits this long (benchmarks)
        self.kind = kind
        self.answer_tokens: int | Callable[[dict], int] = ANSWER_TOKENS  # or f(request body)
        self.reasoning_tokens = 64 if kind == "openai-reasoning" else 0
        self.reasoning_field: str | None = None
        self.reasoning_text = "Let me check step 2. 3 + 4 is 7, not 8."
        self.azure_key: str | None = None
        self.ignored_params: set[str] = set()  # accepted and not read (Ollama's limit)
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                url = urlparse(self.path)
                with owner.lock:
                    owner.requests.append(
                        {
                            "body": body,
                            "path": url.path,
                            "query": parse_qs(url.query),
                            "auth": self.headers.get("Authorization"),
                            "api-key": self.headers.get("api-key"),
                        }
                    )
                    owner.in_flight += 1
                    owner.max_in_flight = max(owner.max_in_flight, owner.in_flight)
                try:
                    refused = owner.refusal(url, self.headers, body)
                    if refused is not None:  # (the script is for requests it accepts)
                        owner.send(self, *refused)
                    else:
                        owner.respond(self, owner.next_behaviour(), body)
                finally:
                    with owner.lock:
                        owner.in_flight -= 1

        class Server(ThreadingHTTPServer):
            request_queue_size = 256  # the listen backlog: 64+ clients connect at once
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def next_behaviour(self) -> str:
        with self.lock:
            return self.script.popleft() if self.script else self.default

    def refusal(self, url, headers, body: dict) -> tuple[int, dict] | None:
        """The error this kind of endpoint answers the request with, or None."""
        if self.azure_key is not None:
            parts = url.path.strip("/").split("/")
            deployment_path = parts[:2] == ["openai", "deployments"] and parts[3:] == [
                "chat",
                "completions",
            ]
            if headers.get("api-key") != self.azure_key:
                return 401, {"error": AZURE_401}
            if not deployment_path or "api-version" not in parse_qs(url.query):
                return 404, {"error": AZURE_404}
        elif url.path != "/v1/chat/completions":
            return 404, {"error": {"message": f"no route {url.path}", "type": "not_found"}}
        if self.kind == "openai-reasoning":
            if "max_tokens" in body:
                return 400, {"error": MAX_TOKENS_REFUSED}
            if "temperature" in body and body["temperature"] != 1:
                return 400, {"error": temperature_refused(body["temperature"])}
        return None

    def message(self, behaviour: str, body: dict) -> tuple[dict, str, int]:
        """(message, finish_reason, completion tokens) of a 200 answer."""
        read = {k: v for k, v in body.items() if k not in self.ignored_params}
        limit = read.get("max_completion_tokens", read.get("max_tokens"))
        content: str | None = self.content
        answer = self.answer_tokens(body) if callable(self.answer_tokens) else self.answer_tokens
        finish, tokens = "stop", self.reasoning_tokens + answer
        msg: dict = {"role": "assistant"}
        if limit is not None and tokens > limit:  # the limit bounds reasoning + answer
            behaviour, tokens = "length", limit
        if behaviour == "length":  # all of the limit billed; the answer's start, if any
            finish, tokens = "length", limit or tokens
            cut = self.content[: len(self.content) // 2]
            content = cut if tokens > self.reasoning_tokens else ""
        elif behaviour == "whitespace":
            content = " \n\t \n"
        elif behaviour == "null":
            content = None
        elif behaviour == "refusal":
            content, msg["refusal"] = None, "I'm sorry, I can't help with that."
        elif behaviour == "think_only":
            content = f"<think>{self.reasoning_text}</think>\n"
        msg["content"] = content
        if self.reasoning_field is not None:
            msg[self.reasoning_field] = self.reasoning_text
        return msg, finish, tokens

    def respond(self, handler: BaseHTTPRequestHandler, behaviour: str, body: dict) -> None:
        if behaviour in ("slow", "slow_500"):
            time.sleep(0.3)
            behaviour = "ok" if behaviour == "slow" else "500"
        if behaviour == "hang":
            time.sleep(self.hang_s)
            behaviour = "ok"
        if behaviour in ("429", "500", "400", "401"):
            headers = {"Retry-After": "0"} if behaviour == "429" else {}
            error = {"error": {"message": f"test {behaviour}", "type": "test"}}
            return self.send(handler, int(behaviour), error, headers)
        if behaviour == "malformed":
            return self.send(handler, 200, b'{"id": "x", "choices": [ this is not json')
        if behaviour == "empty":
            no_choice = {"id": "x", "object": "chat.completion", "created": 0, "model": "m"}
            return self.send(handler, 200, {**no_choice, "choices": []})
        if self.latency_s:
            time.sleep(self.latency_s)
        msg, finish, tokens = self.message(behaviour, body)
        usage = {
            "prompt_tokens": PROMPT_TOKENS,
            "completion_tokens": tokens,
            "total_tokens": PROMPT_TOKENS + tokens,
        }
        if self.reasoning_tokens:
            usage["completion_tokens_details"] = {
                "reasoning_tokens": min(tokens, self.reasoning_tokens)
            }
        answer = {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": 0,
            "model": body.get("model", "m"),
            "choices": [{"index": 0, "finish_reason": finish, "message": msg}],
            "usage": usage,
        }
        self.send(handler, 200, answer)

    @staticmethod
    def send(handler, status: int, payload, headers: dict | None = None) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            for k, v in (headers or {}).items():
                handler.send_header(k, v)
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout): fine
