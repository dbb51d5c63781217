#!/usr/bin/env python3
"""A tiny custom and external metrics adapter for the tests (what prometheus-adapter or
KEDA serve): HTTPS on 127.0.0.1 with `custom.metrics.k8s.io/v1beta2` and
`external.metrics.k8s.io/v1beta1`, figures read from a JSON file on every request.

Usage: metrics_adapter.py CERT KEY FRONT_PROXY_CA FIGURES. Prints the port once listening.
Like a real adapter it requires the front proxy's client certificate; metric values are
answered only to the horizontal-pod-autoscaler service account (X-Remote-User), as an
adapter authorizing its callers would. FIGURES holds
  {"pods": {METRIC: {POD: VALUE}}, "objects": {"RESOURCE/NAME/METRIC": VALUE},
   "external": {METRIC: {"selector": LABELSELECTOR, "values": [VALUE, ...]}}}
and every answered path is appended to FIGURES + ".log".
"""
import json
import sys
from urllib.parse import parse_qs, urlsplit

import front_proxy

CERT, KEY, FRONT_PROXY_CA, FIGURES = sys.argv[1:5]
CUSTOM = "custom.metrics.k8s.io/v1beta2"
EXTERNAL = "external.metrics.k8s.io/v1beta1"
HPA = "system:serviceaccount:kube-system:horizontal-pod-autoscaler"
NOW = "2026-01-01T00:00:00Z"


def figures():
    with open(FIGURES) as f:
        return json.load(f)


class Handler(front_proxy.Handler):
    def do_GET(self):
        if not self.from_front_proxy():
            return self.status(401, "Unauthorized", "not the front proxy")
        url = urlsplit(self.path)
        path, query = url.path.rstrip("/"), parse_qs(url.query)
        if path == f"/apis/{CUSTOM}":
            resources = [{"name": f"pods/{m}", "namespaced": True, "kind": "MetricValueList", "verbs": ["get"]} for m in figures().get("pods", {})]
            return self.reply(200, {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": CUSTOM, "resources": resources})
        if path == f"/apis/{EXTERNAL}":
            resources = [{"name": m, "namespaced": True, "kind": "ExternalMetricValueList", "verbs": ["get"]} for m in figures().get("external", {})]
            return self.reply(200, {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": EXTERNAL, "resources": resources})
        if self.headers.get("X-Remote-User") != HPA:
            return self.status(403, "Forbidden", f"{self.headers.get('X-Remote-User')} may not read metrics")
        with open(FIGURES + ".log", "a") as log:
            log.write(self.path + "\n")
        parts = path.split("/")
        figs = figures()
        # /apis/custom.metrics.k8s.io/v1beta2/namespaces/NS/RESOURCE/NAME/METRIC
        if len(parts) == 9 and "/".join(parts[2:4]) == CUSTOM and parts[4] == "namespaces":
            ns, resource, name, metric = parts[5:9]
            if resource == "pods" and name == "*":
                values = figs.get("pods", {}).get(metric, {})
                items = [{"describedObject": {"kind": "Pod", "namespace": ns, "name": pod, "apiVersion": "/v1"},
                          "metric": {"name": metric, "selector": None}, "timestamp": NOW, "value": v}
                         for pod, v in sorted(values.items())]
                return self.reply(200, {"kind": "MetricValueList", "apiVersion": CUSTOM, "metadata": {}, "items": items})
            value = figs.get("objects", {}).get(f"{resource}/{name}/{metric}")
            if value is None:
                return self.status(404, "NotFound", f"the server could not find the metric {metric} for {resource} {name}")
            item = {"describedObject": {"kind": resource, "namespace": ns, "name": name},
                    "metric": {"name": metric, "selector": None}, "timestamp": NOW, "value": value}
            return self.reply(200, {"kind": "MetricValueList", "apiVersion": CUSTOM, "metadata": {}, "items": [item]})
        # /apis/external.metrics.k8s.io/v1beta1/namespaces/NS/METRIC
        if len(parts) == 7 and "/".join(parts[2:4]) == EXTERNAL and parts[4] == "namespaces":
            metric = figs.get("external", {}).get(parts[6])
            if metric is None or query.get("labelSelector", [""])[0] != metric.get("selector", ""):
                return self.status(404, "NotFound", f"no external metric {parts[6]} for {query.get('labelSelector')}")
            items = [{"metricName": parts[6], "metricLabels": {}, "timestamp": NOW, "value": v} for v in metric["values"]]
            return self.reply(200, {"kind": "ExternalMetricValueList", "apiVersion": EXTERNAL, "metadata": {}, "items": items})
        self.status(404, "NotFound", f"{path} not found")


front_proxy.serve(Handler, CERT, KEY, FRONT_PROXY_CA)
