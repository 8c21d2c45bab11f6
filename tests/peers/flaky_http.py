"""A real HTTP server whose health the tests control from files next to it.

Usage: flaky_http.py PORT DIR. It answers 200 "ok" on every path, 500 while DIR/sick exists,
and accepts but never answers while DIR/hang exists.
"""
import http.server
import os
import sys
import time

port, folder = int(sys.argv[1]), sys.argv[2]


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        while os.path.exists(os.path.join(folder, "hang")):
            time.sleep(0.05)
        sick = os.path.exists(os.path.join(folder, "sick"))
        body = b"sick" if sick else b"ok"
        self.send_response(500 if sick else 200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
