"""A real HTTP server whose health the tests control from files next to it.

Usage: flaky_http.py PORT DIR [CERT KEY]. It answers 200 "ok" on every path, 500 while
DIR/sick exists, and accepts but never answers while DIR/hang exists. While DIR/token exists,
a request without "Authorization: Bearer <its content>" gets 401. With CERT and KEY (PEM
files) it speaks HTTPS.
"""
import http.server
import os
import ssl
import sys
import time

port, folder = int(sys.argv[1]), sys.argv[2]


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        while os.path.exists(os.path.join(folder, "hang")):
            time.sleep(0.05)
        token = os.path.join(folder, "token")
        if os.path.exists(token):
            with open(token) as f:
                wanted = "Bearer " + f.read().strip()
            if self.headers.get("Authorization") != wanted:
                self.send_response(401)
                self.send_header("content-length", "0")
                self.end_headers()
                return
        sick = os.path.exists(os.path.join(folder, "sick"))
        body = b"sick" if sick else b"ok"
        self.send_response(500 if sick else 200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
if len(sys.argv) == 5:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(sys.argv[3], sys.argv[4])
    server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
