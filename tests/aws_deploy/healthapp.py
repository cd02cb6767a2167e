"""A stand-in for an instance's app: answers GET /health with a fixed status.

Run as ``python healthapp.py STATUS``; prints the port it bound on 127.0.0.1.
"""

from __future__ import annotations

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STATUS = int(sys.argv[1]) if len(sys.argv) > 1 else 200


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"ok\n" if STATUS < 400 else b"broken\n"
        self.send_response(STATUS)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


ThreadingHTTPServer.request_queue_size = 512  # a whole fleet is probed at once
server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
