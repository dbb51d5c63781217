"""Probes kubelet's way against real servers: a gRPC health check against grpcio's own
health service, an HTTPS GET (certificate not checked, a same-host redirect followed)
against Python's TLS server. The pod is on the host's network, so the probes reach the
servers this test runs on 127.0.0.1."""
import http.server
import os
import ssl
import threading
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from conftest import load_image, wait
from kubernetes import client


def https_server(cert, key):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", "/ok")
            elif self.path == "/ok" and self.headers.get("User-Agent") == "kube-probe/1.33":
                self.send_response(200)
            else:
                self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def events(core, name):
    return [(e.reason, e.message) for e in core.list_namespaced_event("default", field_selector=f"involvedObject.name={name}").items]


def test_grpc_and_https_probes(api, server):
    load_image(server, "probebox:1.0")

    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    checks = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checks, grpc_server)
    grpc_port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    checks.set("db", health_pb2.HealthCheckResponse.NOT_SERVING)
    web = https_server(os.path.join(server.data, "apiserver.crt"), os.path.join(server.data, "apiserver.key"))
    web_port = web.server_address[1]
    try:
        core = client.CoreV1Api(api)

        def container(name, probe):
            return client.V1Container(name=name, image="probebox:1.0", command=["sh", "-c", "while true; do sleep 1; done"], readiness_probe=probe)

        every_second = dict(period_seconds=1, failure_threshold=1, timeout_seconds=1)
        pod = client.V1Pod(
            metadata=client.V1ObjectMeta(name="probed"),
            spec=client.V1PodSpec(
                host_network=True,
                termination_grace_period_seconds=1,
                containers=[
                    container("grpc", client.V1Probe(grpc=client.V1GRPCAction(port=grpc_port, service="db"), **every_second)),
                    container("https", client.V1Probe(http_get=client.V1HTTPGetAction(scheme="HTTPS", port=web_port, path="/redirect"), **every_second)),
                    container("failing", client.V1Probe(http_get=client.V1HTTPGetAction(scheme="HTTPS", port=web_port, path="/fail"), **every_second)),
                ],
            ),
        )
        core.create_namespaced_pod("default", pod)

        def ready():
            st = core.read_namespaced_pod("probed", "default").status
            return {c.name: c.ready for c in st.container_statuses or []}

        wait("https ready, grpc not", lambda: ready() == {"grpc": False, "https": True, "failing": False})
        wait(
            "kubelet's Unhealthy events",
            lambda: {
                ("Unhealthy", 'Readiness probe failed: service unhealthy (responded with "NOT_SERVING")'),
                ("Unhealthy", "Readiness probe failed: HTTP probe failed with statuscode: 500"),
            }
            <= set(events(core, "probed")),
        )
        checks.set("db", health_pb2.HealthCheckResponse.SERVING)
        wait("grpc ready once SERVING", lambda: ready()["grpc"])
        checks.set("db", health_pb2.HealthCheckResponse.NOT_SERVING)
        wait("grpc not ready again", lambda: not ready()["grpc"])
        core.delete_namespaced_pod("probed", "default")
        wait("pod gone", lambda: not [p for p in core.list_namespaced_pod("default").items if p.metadata.name == "probed"])
    finally:
        grpc_server.stop(0)
        web.shutdown()
