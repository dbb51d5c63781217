#!/usr/bin/env python3
"""A tiny aggregated API server for the tests: HTTPS on 127.0.0.1, serving one group-version
with one namespaced resource, `widgets`, read-only.

Usage: aggregated_apiserver.py CERT KEY FRONT_PROXY_CA GROUP VERSION. Prints the port once
listening. Like a real aggregated API server it requires a client certificate signed by
the front proxy's CA with CN front-proxy-client, and takes the user from X-Remote-User and
X-Remote-Group. A list of widgets holds one widget telling who asked.
"""
import json
import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CERT, KEY, FRONT_PROXY_CA, GROUP, VERSION = sys.argv[1:6]
GV = f"{GROUP}/{VERSION}"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, code, obj):
        out = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def do_GET(self):
        peer = dict(x[0] for x in self.connection.getpeercert().get("subject", ()))
        if peer.get("commonName") != "front-proxy-client":
            return self.reply(401, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "not the front proxy", "code": 401})
        path = self.path.split("?")[0].rstrip("/")
        parts = path.split("/")
        if path == f"/apis/{GV}":
            return self.reply(200, {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": GV, "resources": [
                {"name": "widgets", "singularName": "widget", "namespaced": True, "kind": "Widget", "verbs": ["get", "list"], "shortNames": ["wd"]}]})
        if len(parts) == 7 and parts[1:4] == ["apis", GROUP, VERSION] and parts[4] == "namespaces" and parts[6] == "widgets":
            widget = {"apiVersion": GV, "kind": "Widget",
                      "metadata": {"name": "w1", "namespace": parts[5], "creationTimestamp": "2026-01-01T00:00:00Z"},
                      "spec": {"user": self.headers.get("X-Remote-User"),
                               "groups": self.headers.get_all("X-Remote-Group") or [],
                               "sawAuthorization": self.headers.get("Authorization") is not None}}
            return self.reply(200, {"kind": "WidgetList", "apiVersion": GV, "metadata": {"resourceVersion": "1"}, "items": [widget]})
        self.reply(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "message": f"{path} not found", "code": 404})


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(CERT, KEY)
ctx.verify_mode = ssl.CERT_REQUIRED
ctx.load_verify_locations(FRONT_PROXY_CA)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
