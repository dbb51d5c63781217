#!/usr/bin/env python3
"""An admission webhook server for the tests: HTTPS on 127.0.0.1, one behaviour per path.

Usage: admission_webhook.py CERT KEY RECORD_FILE. Prints the port once listening.
  /mutate  allow, with a JSON patch adding the label mutated-by=webhook and a warning
  /deny    deny (code 403, "no thanks") objects labelled deny=true, and deletes of objects
           labelled protected=true; allow the rest
  /record  allow, appending the AdmissionReview's request to RECORD_FILE (one JSON line)
  /slow    answer after 3 seconds
  /baduid  answer with a response uid that is not the request's
"""
import base64
import json
import ssl
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CERT, KEY, RECORD = sys.argv[1], sys.argv[2], sys.argv[3]


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        review = json.loads(body)
        request = review["request"]
        path = self.path.split("?")[0]
        response = {"uid": request["uid"], "allowed": True}
        if path == "/mutate":
            obj = request.get("object") or {}
            ops = []
            if not (obj.get("metadata") or {}).get("labels"):
                ops.append({"op": "add", "path": "/metadata/labels", "value": {}})
            ops.append({"op": "add", "path": "/metadata/labels/mutated-by", "value": "webhook"})
            response["patch"] = base64.b64encode(json.dumps(ops).encode()).decode()
            response["patchType"] = "JSONPatch"
            response["warnings"] = ["mutated by the test webhook"]
        elif path == "/deny":
            obj = request.get("object") or {}
            old = request.get("oldObject") or {}
            labels = (obj.get("metadata") or {}).get("labels") or {}
            old_labels = (old.get("metadata") or {}).get("labels") or {}
            if labels.get("deny") == "true" or (request["operation"] == "DELETE" and old_labels.get("protected") == "true"):
                response["allowed"] = False
                response["status"] = {"code": 403, "message": "no thanks"}
        elif path == "/record":
            with open(RECORD, "a") as f:
                f.write(json.dumps({"apiVersion": review["apiVersion"], "request": request}) + "\n")
        elif path == "/slow":
            time.sleep(3)
        elif path == "/baduid":
            response["uid"] = "not-the-request"
        out = json.dumps({"apiVersion": review["apiVersion"], "kind": "AdmissionReview", "response": response}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(CERT, KEY)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
