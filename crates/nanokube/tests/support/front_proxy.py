"""What the tests' aggregated API servers share: an HTTPS server on 127.0.0.1 that, like a
real aggregated API server, requires a client certificate signed by the front proxy's CA,
and a request handler that replies with JSON and Kubernetes Status objects."""
import json
import ssl
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


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

    def status(self, code, reason, message):
        self.reply(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "message": message, "code": code})

    def from_front_proxy(self):
        """Whether the peer's certificate is the front proxy's (CN front-proxy-client)."""
        peer = dict(x[0] for x in self.connection.getpeercert().get("subject", ()))
        return peer.get("commonName") == "front-proxy-client"


def serve(handler, cert, key, front_proxy_ca):
    """Serve forever on an ephemeral loopback port, printed once listening."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(front_proxy_ca)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print(server.server_address[1], flush=True)
    server.serve_forever()
