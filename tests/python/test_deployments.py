"""A Deployment made with the Python client's AppsV1Api, waited for until its
`Available` condition is true, as client code does; then scaled through the scale
subresource and its ReplicaSet's pods counted."""
from conftest import load_image, wait
from kubernetes import client


def available(apps):
    d = apps.read_namespaced_deployment("web", "default")
    return any(c.type == "Available" and c.status == "True" for c in (d.status.conditions or [])) and d.status.available_replicas == d.spec.replicas


def test_deployment_becomes_available_and_scales(api, server):
    load_image(server, "deploybox:1.0")
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    body = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "main", "image": "deploybox:1.0", "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]}],
                },
            },
        },
    }
    apps.create_namespaced_deployment("default", body)
    wait("the Deployment available", lambda: available(apps), timeout=60)
    rs = apps.list_namespaced_replica_set("default", label_selector="app=web").items
    assert len(rs) == 1 and rs[0].metadata.owner_references[0].kind == "Deployment"
    assert rs[0].metadata.annotations["deployment.kubernetes.io/revision"] == "1"

    apps.patch_namespaced_deployment_scale("web", "default", {"spec": {"replicas": 3}})
    wait("three pods", lambda: len([p for p in core.list_namespaced_pod("default", label_selector="app=web").items if p.metadata.deletion_timestamp is None]) == 3)
    wait("the Deployment available again", lambda: available(apps), timeout=60)
    apps.delete_namespaced_deployment("web", "default")
    wait("the pods gone", lambda: not core.list_namespaced_pod("default", label_selector="app=web").items, timeout=60)
