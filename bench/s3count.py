"""A counting HTTP proxy in front of an S3 server, for benchmarks: every request passes
through unchanged (the Host header too, so signatures still check) and is counted by
method and key prefix, with the bytes each way.

    proxy = CountingProxy("http://127.0.0.1:9000").start()   # proxy.url: point clients here
    ...
    proxy.take()   # {("GET", "bucket/datasets"): {"requests": n, "bytes_in": b, "bytes_out": b}, ...}; resets
    proxy.take_log()   # (the counts, [("PUT", "/bucket/key?uploadId=..."), ...] in order); resets
"""

from __future__ import annotations

import http.client
import sys
import threading
import urllib.parse
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Hop-by-hop headers: not forwarded (the proxy sets its own framing).
HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


class _Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        # A client that hangs up (a worker shutting down mid-read) is not the proxy's error.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class CountingProxy:
    def __init__(self, upstream: str, depth: int = 2):
        self.upstream = urllib.parse.urlsplit(upstream)
        self.depth = depth  # path components that name a prefix: bucket/top-folder
        self.counts: dict = defaultdict(lambda: {"requests": 0, "bytes_in": 0, "bytes_out": 0})
        self.log: list[tuple[str, str]] = []  # every request since the last take: (method, path?query)
        self.lock = threading.Lock()
        self.server = _Server(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> "CountingProxy":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def take(self) -> dict:
        """The counts since the last take, by (method, prefix)."""
        with self.lock:
            out = {k: dict(v) for k, v in self.counts.items()}
            self.counts.clear()
            self.log.clear()
        return out

    def take_log(self) -> tuple[dict, list[tuple[str, str]]]:
        """The counts as ``take`` gives them, and the requests in order, since the last take."""
        with self.lock:
            out = {k: dict(v) for k, v in self.counts.items()}, list(self.log)
            self.counts.clear()
            self.log.clear()
        return out

    def _count(self, method: str, path: str, sent: int, received: int) -> None:
        parts = urllib.parse.urlsplit(path).path.strip("/").split("/")
        prefix = "/".join(parts[:self.depth])
        with self.lock:
            entry = self.counts[method, prefix]
            entry["requests"] += 1
            entry["bytes_in"] += sent
            entry["bytes_out"] += received
            self.log.append((method, path))

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _forward(self):
                body = self._body()
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP | {"content-length"}}
                if body or self.command in ("PUT", "POST"):
                    headers["Content-Length"] = str(len(body))
                upstream = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=300)
                try:
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                except OSError:  # the server is not up yet (or gone): a bad gateway, not a traceback
                    self.send_error(502)
                    return
                finally:
                    upstream.close()
                # Counted before the client has its answer: whoever it tells sees the count.
                proxy._count(self.command, self.path, len(body), len(data))
                self.send_response(response.status, response.reason)
                for k, v in response.getheaders():
                    if k.lower() not in HOP and k.lower() != "content-length":
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)) if self.command != "HEAD"
                                 else response.getheader("Content-Length", "0"))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

        return Handler
