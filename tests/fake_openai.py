"""A local chat-completions server on 127.0.0.1 for testing the ``openai`` critic with the
real ``openai`` SDK. It speaks just enough of the protocol (POST /v1/chat/completions) and
can be told, request by request, to misbehave.

Behaviours: ``ok``, ``slow`` (0.3 s then ok), ``hang`` (sleeps ``hang_s``, bounded),
``429`` (with Retry-After: 0), ``500``, ``400``, ``401``, ``malformed`` (200 with a body
that is not JSON), ``empty`` (200 with no choices).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeOpenAI:
    def __init__(
        self,
        content: str = "Step 2 is wrong.\nConclusion: incorrect",
        hang_s: float = 3.0,
        latency_s: float = 0.0,
    ):
        self.script: deque[str] = deque()
        self.default = "ok"
        self.content = content
        self.hang_s = hang_s
        self.latency_s = latency_s  # every answer waits this long (benchmarks)
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
                with owner.lock:
                    owner.requests.append({"body": body, "auth": self.headers.get("Authorization")})
                    behaviour = owner.script.popleft() if owner.script else owner.default
                    owner.in_flight += 1
                    owner.max_in_flight = max(owner.max_in_flight, owner.in_flight)
                try:
                    owner.respond(self, behaviour, body)
                finally:
                    with owner.lock:
                        owner.in_flight -= 1

        class Server(ThreadingHTTPServer):
            request_queue_size = 256  # the listen backlog: 64+ clients connect at once
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def respond(self, handler: BaseHTTPRequestHandler, behaviour: str, body: dict) -> None:
        if behaviour == "slow":
            time.sleep(0.3)
            behaviour = "ok"
        if behaviour == "hang":
            time.sleep(self.hang_s)
            behaviour = "ok"
        status, headers, payload = 200, {"Content-Type": "application/json"}, b""
        if behaviour == "ok" and self.latency_s:
            time.sleep(self.latency_s)
        if behaviour == "ok":
            payload = json.dumps(
                {
                    "id": "chatcmpl-test",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body.get("model", "m"),
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": self.content},
                        }
                    ],
                    "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
                }
            ).encode()
        elif behaviour in ("429", "500", "400", "401"):
            status = int(behaviour)
            if status == 429:
                headers["Retry-After"] = "0"
            payload = json.dumps(
                {"error": {"message": f"test {behaviour}", "type": "test"}}
            ).encode()
        elif behaviour == "malformed":
            payload = b'{"id": "x", "choices": [ this is not json'
        elif behaviour == "empty":
            payload = json.dumps(
                {"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": []}
            ).encode()
        else:
            raise ValueError(behaviour)
        try:
            handler.send_response(status)
            for k, v in headers.items():
                handler.send_header(k, v)
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout): fine
