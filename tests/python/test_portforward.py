"""The Python client's port-forward (`kubernetes.stream.portforward`: WebSocket channels,
`v4.channel.k8s.io`, two channels per port opened with the port number): an HTTP server
in the pod reached through two ports at once, a 4 MiB download checksummed, and a port
nothing listens on answered with kubelet's error."""
import hashlib
import http.client

from conftest import load_image, wait
from kubernetes import client
from kubernetes.stream import portforward


def test_portforward_two_ports_and_an_error(api, server):
    load_image(server, "pfbox:1.0")
    core = client.CoreV1Api(api)
    script = (
        "busybox --install -s /bin; mkdir /www; dd if=/dev/urandom of=/www/big bs=1M count=4 2>/dev/null; "
        "md5sum /www/big > /www/big.md5; echo one > /www/one; httpd -p 8080 -h /www; httpd -f -p 8081 -h /www"
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "pfbox"},
        "spec": {"containers": [{"name": "main", "image": "pfbox:1.0", "command": ["sh", "-c", script]}]},
    }
    core.create_namespaced_pod("default", pod)
    wait("pfbox running", lambda: core.read_namespaced_pod("pfbox", "default").status.phase == "Running")

    def get(port, path):
        pf = portforward(core.connect_get_namespaced_pod_portforward, "pfbox", "default", ports=str(port))
        conn = http.client.HTTPConnection("pod", port)
        conn.sock = pf.socket(port)
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        pf.close()
        return resp.status, body

    def served():
        # The pod runs before its httpd listens: a refused forward breaks the pipe.
        try:
            return get(8080, "/big.md5")[0] == 200
        except OSError:
            return False

    wait("the checksum written", served)
    status, md5 = get(8080, "/big.md5")
    status, big = get(8080, "/big")
    assert status == 200 and hashlib.md5(big).hexdigest() == md5.split()[0].decode()

    # Two ports on one WebSocket.
    pf = portforward(core.connect_get_namespaced_pod_portforward, "pfbox", "default", ports="8080,8081")
    for port in (8080, 8081):
        conn = http.client.HTTPConnection("pod", port)
        conn.sock = pf.socket(port)
        conn.request("GET", "/one")
        assert conn.getresponse().read() == b"one\n"
    pf.close()

    # Nothing on the port: the error channel says why.
    pf = portforward(core.connect_get_namespaced_pod_portforward, "pfbox", "default", ports="9999")
    sock = pf.socket(9999)
    sock.settimeout(10)
    assert sock.recv(1) == b""
    error = pf.error(9999)
    assert "error forwarding port 9999 to pod" in error and "connect: connection refused" in error, error
    pf.close()
