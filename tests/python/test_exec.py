"""`kubernetes.stream` (the Python client's WebSocket exec, which offers
`v5.channel.k8s.io` then `v4`) into a real container: stdout and stderr apart, 1 MiB of
stdin written and closed, the exit code read from the error channel's Status."""
import hashlib
import os

import yaml

from conftest import load_image, wait
from kubernetes import client
from kubernetes.stream import stream


def test_exec_with_stdin_and_exit_code(api, server):
    load_image(server, "execbox:1.0")
    core = client.CoreV1Api(api)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "execbox"},
        "spec": {"containers": [{"name": "main", "image": "execbox:1.0", "command": ["sh", "-c", "while true; do sleep 1; done"]}]},
    }
    core.create_namespaced_pod("default", pod)
    wait("execbox running", lambda: core.read_namespaced_pod("execbox", "default").status.phase == "Running")

    # One shot: stdout only, the text returned.
    out = stream(core.connect_get_namespaced_pod_exec, "execbox", "default", command=["sh", "-c", "echo hello from $0"], stderr=True, stdin=False, stdout=True, tty=False)
    assert out == "hello from sh\n"

    # Interactive: stdin in, stdout and stderr apart, the exit code at the end.
    resp = stream(
        core.connect_get_namespaced_pod_exec,
        "execbox",
        "default",
        command=["sh", "-c", "md5sum; echo to-stderr >&2; exit 7"],
        stderr=True,
        stdin=True,
        stdout=True,
        tty=False,
        _preload_content=False,
    )
    assert resp.subprotocol == "v5.channel.k8s.io"
    data = os.urandom(1024 * 1024)
    for i in range(0, len(data), 65536):
        resp.write_stdin(data[i : i + 65536])
    # v5 lets stdin end without ending the connection (channel 255, stream 0).
    resp.close_channel(0)
    resp.run_forever(timeout=30)
    assert resp.read_stdout().split()[0] == hashlib.md5(data).hexdigest()
    assert resp.read_stderr() == "to-stderr\n"
    assert resp.returncode == 7
    resp.close()

    # A command that is not there: an InternalError Status from the runtime, as
    # kubelet with containerd answers (no exit code: no process ran).
    resp = stream(core.connect_get_namespaced_pod_exec, "execbox", "default", command=["no-such-program"], stderr=True, stdin=False, stdout=True, tty=False, _preload_content=False)
    resp.run_forever(timeout=30)
    status = yaml.safe_load(resp.read_channel(3))
    assert status["reason"] == "InternalError" and status["code"] == 500, status
    assert 'exec: "no-such-program": executable file not found in $PATH' in status["message"], status
    resp.close()
