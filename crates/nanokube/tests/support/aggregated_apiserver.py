#!/usr/bin/env python3
"""A tiny aggregated API server for the tests: HTTPS on 127.0.0.1, serving one group-version
with one namespaced resource, `widgets`, read-only.

Usage: aggregated_apiserver.py CERT KEY FRONT_PROXY_CA GROUP VERSION. Prints the port once
listening. Like a real aggregated API server it requires a client certificate signed by
the front proxy's CA with CN front-proxy-client, and takes the user from X-Remote-User and
X-Remote-Group. A list of widgets holds one widget telling who asked.
"""
import sys

import front_proxy

CERT, KEY, FRONT_PROXY_CA, GROUP, VERSION = sys.argv[1:6]
GV = f"{GROUP}/{VERSION}"


class Handler(front_proxy.Handler):
    def do_GET(self):
        if not self.from_front_proxy():
            return self.status(401, "Unauthorized", "not the front proxy")
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
        self.status(404, "NotFound", f"{path} not found")


front_proxy.serve(Handler, CERT, KEY, FRONT_PROXY_CA)
