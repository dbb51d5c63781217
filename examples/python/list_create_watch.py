"""The Python `kubernetes` client against nanokube (seed S9): load the kubeconfig nanokube
wrote, list namespaces, create a ConfigMap, watch it change, delete it.

    pip install kubernetes
    KUBECONFIG=~/.nanokube/kubeconfig python examples/python/list_create_watch.py
"""
import os
import threading

from kubernetes import client, config, watch

config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
core = client.CoreV1Api()

print("namespaces:", ", ".join(ns.metadata.name for ns in core.list_namespace().items))

name = "example-python"
seen = []
ready = threading.Event()


def follow():
    w = watch.Watch()
    for ev in w.stream(core.list_namespaced_config_map, "default", field_selector=f"metadata.name={name}", timeout_seconds=10):
        seen.append(ev["type"])
        print("watch:", ev["type"], ev["object"].metadata.name, ev["object"].metadata.resource_version)
        if ev["type"] == "DELETED":
            w.stop()


t = threading.Thread(target=follow)
t.start()
# Give the watch a moment to open; it then sees every change after that.
threading.Event().wait(0.5)
core.create_namespaced_config_map("default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name), data={"hello": "world"}))
core.patch_namespaced_config_map(name, "default", {"data": {"hello": "nanokube"}})
core.delete_namespaced_config_map(name, "default")
t.join(15)
assert seen == ["ADDED", "MODIFIED", "DELETED"], seen
print("ok")
