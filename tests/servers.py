"""Real HTTP servers on 127.0.0.1 for the tests: `paddle-belle serve` in a subprocess, and a scripted
OpenAI-compatible endpoint (with injectable faults) in a thread of the test process."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_path() -> str:
    return shutil.which("paddle-belle", path=os.path.dirname(sys.executable))


class BelleServer:
    """`paddle-belle serve --model DIR ...` on a free port, up once /health answers."""

    def __init__(self, model_dir, *args):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile("w+")  # not beside the model: that may be the bundled, installed one
        self.proc = subprocess.Popen([cli_path(), "serve", "--model", str(model_dir), "--port", str(self.port),
                                      "--threads", "1", "--log-level", "warning", *map(str, args)],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.output()}")
            try:
                requests.get(self.url + "/health", timeout=1)
                return
            except requests.ConnectionError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not come up: {self.output()}")

    def health(self) -> dict:
        return requests.get(self.url + "/health", timeout=10).json()

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-3000:]

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


class ScriptedOpenAI:
    """A minimal OpenAI-compatible endpoint: POST /v1/chat/completions and /v1/completions answered by
    ``reply(body) -> str | (str, finish_reason)``. ``faults`` is a list consumed one per request, each None (answer
    normally), an int status (429, 500, ...), "drop" (close the connection without answering) or "malformed"
    (a 200 whose JSON has no choices). Every request body is kept in ``requests``. GET /v1/models lists ``models``
    (with ``context`` as vLLM's max_model_len when set), or answers ``models_fault`` (a status) when that is set;
    its Authorization headers are kept in ``model_lists``."""

    def __init__(self, reply, faults=(), delay: float = 0.0, models=("m", "judge"), context=None):
        self.reply, self.faults, self.delay = reply, list(faults), delay
        self.models, self.context, self.models_fault = list(models), context, None
        self.requests: list[dict] = []
        self.model_lists: list[str | None] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else each small write waits for a delayed ACK (~40 ms a request)

            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.model_lists.append(self.headers.get("authorization"))
                if self.path != "/v1/models":
                    return self._send(404, {"error": {"message": "no such route", "type": "invalid_request_error",
                                                      "param": None, "code": None}})
                if outer.models_fault:
                    return self._send(outer.models_fault, {"error": {"message": f"injected {outer.models_fault}",
                                                                     "type": "server_error", "param": None,
                                                                     "code": None}})
                extra = {"max_model_len": outer.context} if outer.context else {}
                self._send(200, {"object": "list", "data": [{"id": m, "object": "model", "created": 0,
                                                             "owned_by": "test", **extra} for m in outer.models]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                with outer.lock:
                    fault = outer.faults.pop(0) if outer.faults else None
                    outer.requests.append({"path": self.path, "fault": fault,
                                           "authorization": self.headers.get("authorization"), **body})
                if outer.delay:
                    time.sleep(outer.delay)
                if fault == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if isinstance(fault, int):
                    return self._send(fault, {"error": {"message": f"injected {fault}", "type": "server_error",
                                                        "param": None, "code": None}}, {"retry-after-ms": "10"})
                if fault == "malformed":
                    return self._send(200, {"id": "x", "object": "chat.completion", "created": 0, "model": "m"})
                out = outer.reply(body)
                text, finish = out if isinstance(out, tuple) else (out, "stop")
                if self.path.endswith("/chat/completions"):
                    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
                    obj = "chat.completion"
                else:
                    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
                    obj = "text_completion"
                self._send(200, {"id": "x", "object": obj, "created": 0, "model": body.get("model", "m"),
                                 "choices": [choice],
                                 "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

            def _send(self, status, obj, headers=None):
                data = json.dumps(obj, ensure_ascii=False).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address):  # a client killed by a test: not an error here
                if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
                    super().handle_error(request, client_address)

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
