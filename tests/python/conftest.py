"""Start a real nanokube server for the Python client tests."""
import os
import re
import signal
import subprocess
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def nanokube_binary():
    path = os.environ.get("NANOKUBE_BIN") or os.path.join(ROOT, "target", "debug", "nanokube")
    if not os.path.exists(path):
        raise RuntimeError(f"{path} not found: build with `cargo build` or set NANOKUBE_BIN")
    return path


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Etcd:
    """A one-member etcd on loopback ports (Debian's etcd-server), for the suites'
    second run with NANOKUBE_TEST_ETCD=1."""

    def __init__(self, root):
        import socket
        import time

        client, peer = free_port(), free_port()
        self.url = f"http://127.0.0.1:{client}"
        peer_url = f"http://127.0.0.1:{peer}"
        self.proc = subprocess.Popen(
            ["etcd", "--name", "m0", "--data-dir", os.path.join(root, "etcd"), "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
             "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url, "--initial-cluster", f"m0={peer_url}",
             "--logger", "zap", "--log-level", "error"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", client), timeout=1) as c:
                    c.sendall(b"GET /health HTTP/1.0\r\n\r\n")
                    if b'"health":"true"' in c.recv(4096):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("etcd did not become healthy")

    def stop(self):
        self.proc.kill()
        self.proc.wait()


class Server:
    def __init__(self, extra=()):
        self.dir = tempfile.TemporaryDirectory()
        self.data = os.path.join(self.dir.name, "data")
        self.etcd = None
        if os.environ.get("NANOKUBE_TEST_ETCD"):
            self.etcd = Etcd(self.dir.name)
            extra = list(extra) + [f"--etcd-servers={self.etcd.url}"]
        self.proc = subprocess.Popen(
            # Public registries are never reached from tests: their pulls go to a closed port.
            # Its kubelet API on a free port, so servers never contend for 10250.
            [nanokube_binary(), "server", "--secure-port", "0", "--kubelet-port", "0", "--merge-kubeconfig=false", "--data-dir", self.data]
            + [f"--registry-mirror={r}=127.0.0.1:1" for r in ("docker.io", "registry.k8s.io", "quay.io", "ghcr.io", "gcr.io")]
            + list(extra),
            stdout=subprocess.PIPE,
            text=True,
        )
        for line in self.proc.stdout:
            m = re.match(r"nanokube is ready at (\S+)", line)
            if m:
                self.url = m.group(1)
                break
        else:
            if self.etcd:
                self.etcd.stop()
            raise RuntimeError("nanokube did not become ready")
        self.kubeconfig = os.path.join(self.data, "kubeconfig")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            # Pods get up to 10 s to stop when the server does; their mounts go after.
            self.proc.wait(timeout=25)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        if self.etcd:
            self.etcd.stop()
        self.dir.cleanup()


def build_image(path, tag):
    """A `docker save` archive of a one-layer image named `tag` holding Debian's
    busybox-static (the test command installs it)."""
    import hashlib
    import io
    import json
    import tarfile

    def add(t, name, data=None, mode=0o644, kind=tarfile.REGTYPE, link=""):
        ti = tarfile.TarInfo(name)
        ti.mode, ti.type, ti.linkname, ti.mtime = mode, kind, link, 1700000000
        if data is not None:
            ti.size = len(data)
        t.addfile(ti, io.BytesIO(data) if data is not None else None)

    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.GNU_FORMAT) as t:
        add(t, "bin/", mode=0o755, kind=tarfile.DIRTYPE)
        with open("/bin/busybox", "rb") as f:
            add(t, "bin/busybox", f.read(), 0o755)
        add(t, "bin/sh", mode=0o777, kind=tarfile.SYMTYPE, link="busybox")
    layer = layer.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = {"architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"], "Env": ["PATH=/bin"]}, "rootfs": {"type": "layers", "diff_ids": [diff_id]}}
    manifest = [{"Config": "config.json", "RepoTags": [tag], "Layers": ["l1/layer.tar"]}]
    with tarfile.open(path, "w") as t:
        add(t, "manifest.json", json.dumps(manifest).encode())
        add(t, "config.json", json.dumps(config).encode())
        add(t, "l1/layer.tar", layer)


def wait(what, f, timeout=30):
    """Poll `f` until it holds, failing with `what` after `timeout` seconds."""
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        if f():
            return
        time.sleep(0.2)
    raise AssertionError(f"waited for {what}")


def load_image(server, tag):
    """Build the busybox test image `tag` and load it into `server`'s node."""
    archive = os.path.join(server.dir.name, tag.replace(":", "_") + ".tar")
    build_image(archive, tag)
    out = subprocess.run([nanokube_binary(), "image", "load", archive, "--data-dir", server.data], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


@pytest.fixture
def server():
    s = Server()
    yield s
    s.stop()


@pytest.fixture
def api(server):
    from kubernetes import client, config

    cfg = client.Configuration()
    config.load_kube_config(config_file=server.kubeconfig, client_configuration=cfg)
    with client.ApiClient(cfg) as api_client:
        yield api_client
