"""The Python `kubernetes` client against nanokube through the kubeconfig it wrote:
list, create, merge-patch, watch, and errors as ApiException with Status bodies."""
import json
import threading
import time

import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException


def test_list_create_patch(api):
    core = client.CoreV1Api(api)
    names = [ns.metadata.name for ns in core.list_namespace().items]
    assert names == ["default", "kube-node-lease", "kube-public", "kube-system"]

    cm = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="py", labels={"from": "python"}), data={"a": "1"})
    created = core.create_namespaced_config_map("default", cm)
    assert created.metadata.uid
    assert int(created.metadata.resource_version) > 0

    patched = core.patch_namespaced_config_map("py", "default", {"data": {"b": "2"}, "metadata": {"labels": {"from": None}}})
    assert patched.data == {"a": "1", "b": "2"}
    assert not patched.metadata.labels
    assert int(patched.metadata.resource_version) > int(created.metadata.resource_version)

    listed = core.list_namespaced_config_map("default", label_selector="!from")
    assert "py" in [c.metadata.name for c in listed.items]

    apps = client.AppsV1Api(api)
    dep = client.V1Deployment(
        metadata=client.V1ObjectMeta(name="web"),
        spec=client.V1DeploymentSpec(
            selector=client.V1LabelSelector(match_labels={"app": "web"}),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels={"app": "web"}),
                spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="nginx")]),
            ),
        ),
    )
    d = apps.create_namespaced_deployment("default", dep)
    assert d.spec.replicas == 1
    assert d.spec.strategy.type == "RollingUpdate"


def test_errors_are_api_exceptions_with_status(api):
    core = client.CoreV1Api(api)
    with pytest.raises(ApiException) as e:
        core.read_namespaced_config_map("missing", "default")
    assert e.value.status == 404
    body = json.loads(e.value.body)
    assert body["kind"] == "Status" and body["reason"] == "NotFound"

    core.create_namespaced_config_map("default", {"metadata": {"name": "dup"}})
    with pytest.raises(ApiException) as e:
        core.create_namespaced_config_map("default", {"metadata": {"name": "dup"}})
    assert e.value.status == 409
    assert json.loads(e.value.body)["reason"] == "AlreadyExists"


def test_watch_sees_changes(api):
    core = client.CoreV1Api(api)
    seen = []
    ready = threading.Event()

    def run():
        w = watch.Watch()
        for ev in w.stream(core.list_namespaced_config_map, "default", timeout_seconds=20):
            ready.set()
            seen.append((ev["type"], ev["object"].metadata.name))
            if ev["type"] == "DELETED" and ev["object"].metadata.name == "watched":
                w.stop()

    t = threading.Thread(target=run)
    t.start()
    # The first event (kube-root-ca.crt, ADDED from the initial state) means the watch is open.
    assert ready.wait(10)
    core.create_namespaced_config_map("default", {"metadata": {"name": "watched"}})
    core.patch_namespaced_config_map("watched", "default", {"data": {"x": "y"}})
    core.delete_namespaced_config_map("watched", "default")
    t.join(20)
    assert not t.is_alive()
    mine = [e for e in seen if e[1] == "watched"]
    assert mine == [("ADDED", "watched"), ("MODIFIED", "watched"), ("DELETED", "watched")]
    assert ("ADDED", "kube-root-ca.crt") in seen


def test_paging_with_limit_and_continue(api):
    core = client.CoreV1Api(api)
    for i in range(7):
        core.create_namespaced_config_map("default", {"metadata": {"name": f"page-{i}"}})
    got, token, pages = [], None, 0
    while True:
        r = core.list_namespaced_config_map("default", limit=3, _continue=token, label_selector="")
        pages += 1
        got += [c.metadata.name for c in r.items]
        token = r.metadata._continue
        if not token:
            break
        assert r.metadata.remaining_item_count is not None
    assert pages == 3
    assert sorted(got) == sorted([f"page-{i}" for i in range(7)] + ["kube-root-ca.crt"])


def test_server_side_apply(api):
    core = client.CoreV1Api(api)
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "py-ssa"}, "data": {"owner": "python"}}
    created = core.patch_namespaced_config_map("py-ssa", "default", body, field_manager="py", _content_type="application/apply-patch+yaml")
    assert created.data == {"owner": "python"}
    managers = [(m.manager, m.operation) for m in created.metadata.managed_fields]
    assert managers == [("py", "Apply")]
    # Another manager taking the same field conflicts (409) unless forced.
    other = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "py-ssa"}, "data": {"owner": "someone else"}}
    with pytest.raises(ApiException) as e:
        core.patch_namespaced_config_map("py-ssa", "default", other, field_manager="other", _content_type="application/apply-patch+yaml")
    assert e.value.status == 409
    assert json.loads(e.value.body)["details"]["causes"][0]["reason"] == "FieldManagerConflict"
    forced = core.patch_namespaced_config_map("py-ssa", "default", other, field_manager="other", force=True, _content_type="application/apply-patch+yaml")
    assert forced.data == {"owner": "someone else"}


def test_json_patch_and_dry_run(api):
    core = client.CoreV1Api(api)
    core.create_namespaced_config_map("default", {"metadata": {"name": "jp"}, "data": {"a": "1"}})
    patched = core.patch_namespaced_config_map("jp", "default", [{"op": "add", "path": "/data/b", "value": "2"}, {"op": "replace", "path": "/data/a", "value": "x"}])
    assert patched.data == {"a": "x", "b": "2"}
    with pytest.raises(ApiException) as e:
        core.patch_namespaced_config_map("jp", "default", [{"op": "test", "path": "/data/a", "value": "nope"}])
    assert e.value.status == 422
    dry = core.create_namespaced_config_map("default", {"metadata": {"name": "dry"}}, dry_run="All")
    assert dry.metadata.name == "dry"
    with pytest.raises(ApiException) as e:
        core.read_namespaced_config_map("dry", "default")
    assert e.value.status == 404


CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.example.io"},
    "spec": {
        "group": "example.io",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"]},
        "versions": [{
            "name": "v1", "served": True, "storage": True,
            "subresources": {"status": {}},
            "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                "spec": {"type": "object", "required": ["size"], "properties": {
                    "size": {"type": "integer", "minimum": 1},
                    "color": {"type": "string", "enum": ["red", "blue"], "default": "red"}}},
                "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}}}}},
        }],
    },
}


def test_crd_and_custom_objects(api):
    ext = client.ApiextensionsV1Api(api)
    crd = ext.create_custom_resource_definition(CRD)
    assert crd.metadata.name == "widgets.example.io"
    deadline = time.time() + 5
    while time.time() < deadline:
        conds = ext.read_custom_resource_definition("widgets.example.io").status.conditions or []
        if any(c.type == "Established" and c.status == "True" for c in conds):
            break
        time.sleep(0.05)
    else:
        pytest.fail("the CRD never became Established")

    co = client.CustomObjectsApi(api)
    seen = []
    ready = threading.Event()

    def run():
        w = watch.Watch()
        for ev in w.stream(co.list_namespaced_custom_object, "example.io", "v1", "default", "widgets", timeout_seconds=20, allow_watch_bookmarks=False):
            seen.append((ev["type"], ev["object"]["metadata"]["name"], ev["object"].get("spec", {}).get("size")))
            if ev["type"] == "DELETED":
                w.stop()

    t = threading.Thread(target=run)
    t.start()
    time.sleep(0.3)  # a watch from "" sends the current state first; the collection is empty
    body = {"apiVersion": "example.io/v1", "kind": "Widget", "metadata": {"name": "w1"}, "spec": {"size": 2}}
    created = co.create_namespaced_custom_object("example.io", "v1", "default", "widgets", body)
    assert created["spec"] == {"size": 2, "color": "red"}, "the schema's default is applied"
    got = co.get_namespaced_custom_object("example.io", "v1", "default", "widgets", "w1")
    assert got["metadata"]["uid"] == created["metadata"]["uid"]
    patched = co.patch_namespaced_custom_object("example.io", "v1", "default", "widgets", "w1", {"spec": {"size": 3}})
    assert patched["spec"]["size"] == 3 and patched["metadata"]["generation"] == 2
    status = co.patch_namespaced_custom_object_status("example.io", "v1", "default", "widgets", "w1", {"status": {"ready": True}})
    assert status["status"] == {"ready": True} and status["metadata"]["generation"] == 2
    listed = co.list_namespaced_custom_object("example.io", "v1", "default", "widgets")
    assert [i["metadata"]["name"] for i in listed["items"]] == ["w1"]

    # A custom object that breaks its schema: 422 with the field, nothing stored.
    with pytest.raises(ApiException) as e:
        co.create_namespaced_custom_object("example.io", "v1", "default", "widgets",
                                           {"apiVersion": "example.io/v1", "kind": "Widget", "metadata": {"name": "bad"}, "spec": {"size": 0, "color": "green"}})
    assert e.value.status == 422
    st = json.loads(e.value.body)
    assert st["reason"] == "Invalid"
    assert sorted(c["field"] for c in st["details"]["causes"]) == ["spec.color", "spec.size"]
    with pytest.raises(ApiException) as e:
        co.get_namespaced_custom_object("example.io", "v1", "default", "widgets", "bad")
    assert e.value.status == 404

    co.delete_namespaced_custom_object("example.io", "v1", "default", "widgets", "w1")
    t.join(20)
    assert not t.is_alive()
    assert [s[0] for s in seen] == ["ADDED", "MODIFIED", "MODIFIED", "DELETED"], seen
    assert seen[0][2] == 2 and seen[1][2] == 3


def test_default_policy_by_escaped_names(api):
    """The client escapes ':' in names (system%3Anode); the server decodes the path as
    Go does, and the default policy is upstream's (aggregated view included)."""
    rbac = client.RbacAuthorizationV1Api(api)
    node = rbac.read_cluster_role("system:node")
    assert node.metadata.name == "system:node"
    assert any("nodes" in (r.resources or []) for r in node.rules)
    binding = rbac.read_namespaced_role_binding("system:controller:bootstrap-signer", "kube-public")
    assert binding.role_ref.name == "system:controller:bootstrap-signer"
    view = rbac.read_cluster_role("view")
    assert view.aggregation_rule.cluster_role_selectors[0].match_labels == {"rbac.authorization.k8s.io/aggregate-to-view": "true"}
    assert any("configmaps" in (r.resources or []) for r in view.rules)
    assert len(rbac.list_cluster_role().items) == 67


def test_a_pod_runs_and_its_logs_are_read(api, server):
    """The node as the Python client reads it; a pod (of an image loaded with `nanokube
    image load`) created, watched to Running, its logs read, deleted."""
    import os
    import subprocess

    from conftest import build_image, nanokube_binary

    core = client.CoreV1Api(api)
    nodes = core.list_node().items
    assert len(nodes) == 1
    node = nodes[0]
    assert node.status.node_info.kubelet_version.startswith("v1.33")
    assert node.status.capacity["pods"] == "110"
    ready = [c for c in node.status.conditions if c.type == "Ready"][0]
    assert ready.status == "True" and ready.reason == "KubeletReady", ready

    archive = os.path.join(server.dir.name, "pybox.tar")
    build_image(archive, "pybox:1.0")
    out = subprocess.run([nanokube_binary(), "image", "load", archive, "--data-dir", server.data], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "Loaded image: docker.io/library/pybox:1.0\n"

    container = client.V1Container(name="c", image="pybox:1.0", command=["sh", "-c", "echo hello from python; while true; do sleep 0.2; done"])
    pod = client.V1Pod(metadata=client.V1ObjectMeta(name="py"), spec=client.V1PodSpec(containers=[container], termination_grace_period_seconds=1))
    core.create_namespaced_pod("default", pod)
    phase = None
    w = watch.Watch()
    for ev in w.stream(core.list_namespaced_pod, "default", field_selector="metadata.name=py", timeout_seconds=30):
        phase = ev["object"].status.phase
        if phase == "Running":
            w.stop()
    assert phase == "Running"
    got = core.read_namespaced_pod("py", "default")
    assert got.status.pod_ip.startswith("127.244.")
    assert got.status.container_statuses[0].state.running.started_at is not None
    deadline = time.time() + 10
    logs = ""
    while time.time() < deadline and "hello" not in logs:
        logs = core.read_namespaced_pod_log("py", "default")
        time.sleep(0.1)
    assert logs == "hello from python\n"

    core.delete_namespaced_pod("py", "default")
    deadline = time.time() + 15
    gone = False
    while time.time() < deadline and not gone:
        try:
            core.read_namespaced_pod("py", "default")
            time.sleep(0.1)
        except ApiException as e:
            gone = e.status == 404
    assert gone, "the node stopped the pod and confirmed its deletion"
