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


class Server:
    def __init__(self):
        self.dir = tempfile.TemporaryDirectory()
        self.data = os.path.join(self.dir.name, "data")
        self.proc = subprocess.Popen(
            [nanokube_binary(), "server", "--secure-port", "0", "--merge-kubeconfig=false", "--data-dir", self.data],
            stdout=subprocess.PIPE,
            text=True,
        )
        for line in self.proc.stdout:
            m = re.match(r"nanokube is ready at (\S+)", line)
            if m:
                self.url = m.group(1)
                break
        else:
            raise RuntimeError("nanokube did not become ready")
        self.kubeconfig = os.path.join(self.data, "kubeconfig")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.dir.cleanup()


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
