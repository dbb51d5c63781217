"""In-place pod resize through the Python client's `patch_namespaced_pod_resize`: the
running container's CPU changes without a restart, the status reports what the node
admitted and applied, and a refused resize is a 422 in upstream's words."""
import pytest
from conftest import load_image, wait
from kubernetes import client


def test_resize_with_the_python_client(api, server):
    load_image(server, "resizebox:1.0")
    core = client.CoreV1Api(api)
    container = client.V1Container(
        name="c",
        image="resizebox:1.0",
        command=["sh", "-c", "while true; do read -t 1 x; done"],
        resources=client.V1ResourceRequirements(requests={"cpu": "100m", "memory": "32Mi"}, limits={"cpu": "200m", "memory": "64Mi"}),
    )
    pod = client.V1Pod(metadata=client.V1ObjectMeta(name="r"), spec=client.V1PodSpec(termination_grace_period_seconds=1, containers=[container]))
    core.create_namespaced_pod("default", pod)

    def status():
        statuses = core.read_namespaced_pod("r", "default").status.container_statuses or []
        return statuses[0] if statuses else None

    wait("r running", lambda: status() is not None and status().state.running is not None)
    assert status().allocated_resources == {"cpu": "100m", "memory": "32Mi"}

    core.patch_namespaced_pod_resize("r", "default", {"spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "150m"}, "limits": {"cpu": "250m"}}}]}})
    wait("the resize applied", lambda: status().resources.limits.get("cpu") == "250m")
    s = status()
    assert s.resources.requests["cpu"] == "150m"
    assert s.allocated_resources["cpu"] == "150m"
    assert s.restart_count == 0

    with pytest.raises(client.ApiException) as refused:
        core.patch_namespaced_pod_resize("r", "default", {"spec": {"containers": [{"name": "c", "resources": {"limits": {"memory": "48Mi"}}}]}})
    assert refused.value.status == 422
    assert "memory limits cannot be decreased unless resizePolicy is RestartContainer" in refused.value.body
    core.delete_namespaced_pod("r", "default", grace_period_seconds=0)
