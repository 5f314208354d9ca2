"""A tiny HTTP API for envkit's service examples (standard library only).

Listens on $HOST:$PORT. ``GET /health`` answers 200 when the database in $DATABASE_URL accepts
TCP connections (503 otherwise); ``GET /hello`` answers a greeting. ``API_FAIL_AT_START=1`` makes
it exit at once, for tests of a service that fails to start.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


def database_reachable() -> bool:
    """Whether the database of DATABASE_URL accepts a TCP connection."""
    url = urlsplit(os.environ["DATABASE_URL"])
    try:
        with socket.create_connection((url.hostname or "127.0.0.1", url.port or 5432), 1.0):
            return True
    except OSError:
        return False


class Handler(BaseHTTPRequestHandler):
    """/health and /hello."""

    def do_GET(self) -> None:
        if self.path == "/health":
            ok = database_reachable()
            self.reply(200 if ok else 503, {"status": "ok" if ok else "database unreachable"})
        elif self.path == "/hello":
            self.reply(200, {"hello": os.environ.get("ENVKIT_PIPELINE_ID", "?")})
        else:
            self.reply(404, {"error": "not found"})

    def reply(self, status: int, body: dict[str, str]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        sys.stdout.write("api: " + format % args + "\n")


def main() -> None:
    if os.environ.get("API_FAIL_AT_START") == "1":
        print("api: refusing to start: API_FAIL_AT_START=1", flush=True)
        sys.exit(3)
    host, port = os.environ["HOST"], int(os.environ["PORT"])
    server = ThreadingHTTPServer((host, port), Handler)
    print(f"api: listening on http://{host}:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
