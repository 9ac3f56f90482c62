"""A local moderation server for tests: an OpenAI-compatible ``POST /v1/chat/completions`` that answers
with a configured verdict (the LLM moderator) and ``POST /v1/moderations`` in OpenAI's format. Records
every request; ``delay`` makes it slow (the timeout path), ``status`` makes it fail."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeModerator:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.verdict: str = '{"action": "allow", "category": "", "reason": "fine"}'
        self.flagged = False
        self.delay = 0.0
        self.status = 200
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
                fake.requests.append({"path": self.path, "body": body})
                fake.headers.append(dict(self.headers))
                if fake.delay:
                    time.sleep(fake.delay)
                if self.path.endswith("/chat/completions"):
                    answer = {"id": "chatcmpl-1", "object": "chat.completion", "model": body.get("model"),
                              "choices": [{"index": 0, "finish_reason": "stop",
                                           "message": {"role": "assistant", "content": fake.verdict}}]}
                else:
                    answer = {"id": "modr-1", "model": body.get("model", "omni"), "results": [
                        {"flagged": fake.flagged, "categories": {"violence": fake.flagged},
                         "category_scores": {"violence": 0.99 if fake.flagged else 0.01}}]}
                data = json.dumps(answer).encode()
                try:
                    self.send_response(fake.status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeModerator:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
