//! The Node object, as kubelet registers and reports it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ContainerImage, DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus, NodeSystemInfo, Taint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use nanokube_api::{meta, resources};
use nanokube_apiserver::cluster::Cluster;
use serde_json::Value;

use crate::machine::Machine;
use crate::NodeConfig;

/// Pods per node (kubelet's `maxPods` default).
pub const MAX_PODS: u64 = 110;
/// Memory kept back by kubelet's default hard eviction threshold (`memory.available<100Mi`).
const EVICTION_MEMORY: u64 = 100 << 20;

fn nodes() -> &'static resources::ResourceDef {
    resources::find("", "v1", "nodes").expect("nodes is a built-in resource")
}

fn time(rfc3339: &str) -> Option<Time> {
    serde_json::from_value(Value::String(rfc3339.to_string())).ok()
}

/// The conditions kubelet reports, in its order, as (type, status, reason, message):
/// Ready unless `not_ready` says what keeps the node from running pods; the pressure
/// conditions `True` when named in `pressure` ([`crate::eviction::Manager::conditions`]).
pub fn conditions(not_ready: Option<&str>, pressure: &[&str]) -> Vec<(&'static str, &'static str, &'static str, String)> {
    let ready = match not_ready {
        None => ("Ready", "True", "KubeletReady", "kubelet is posting ready status".to_string()),
        Some(why) => ("Ready", "False", "KubeletNotReady", why.to_string()),
    };
    let under = |c: &str| pressure.contains(&c);
    vec![
        if under("MemoryPressure") {
            ("MemoryPressure", "True", "KubeletHasInsufficientMemory", "kubelet has insufficient memory available".into())
        } else {
            ("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available".into())
        },
        if under("DiskPressure") {
            ("DiskPressure", "True", "KubeletHasDiskPressure", "kubelet has disk pressure".into())
        } else {
            ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure".into())
        },
        if under("PIDPressure") {
            ("PIDPressure", "True", "KubeletHasInsufficientPID", "kubelet has insufficient PID available".into())
        } else {
            ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available".into())
        },
        ready,
    ]
}

/// The Node kubelet would register on this machine.
pub fn build(config: &NodeConfig, m: &Machine) -> Node {
    let mut labels = BTreeMap::new();
    for (k, v) in [
        ("beta.kubernetes.io/arch", m.architecture.to_string()),
        ("beta.kubernetes.io/os", "linux".to_string()),
        ("kubernetes.io/arch", m.architecture.to_string()),
        ("kubernetes.io/hostname", config.name.clone()),
        ("kubernetes.io/os", "linux".to_string()),
    ] {
        labels.insert(k.to_string(), v);
    }
    // Set by the control plane on its own node (kubeadm, k3s); NodeRestriction keeps a
    // joined node from giving itself the role.
    if config.control_plane {
        labels.insert("node-role.kubernetes.io/control-plane".to_string(), "true".to_string());
    }
    let annotations = BTreeMap::from([("volumes.kubernetes.io/controller-managed-attach-detach".to_string(), "true".to_string())]);
    let kib = |bytes: u64| Quantity(format!("{}Ki", bytes / 1024));
    let capacity = BTreeMap::from([
        ("cpu".to_string(), Quantity(m.cpus.to_string())),
        ("ephemeral-storage".to_string(), kib(m.disk_bytes)),
        ("hugepages-1Gi".to_string(), Quantity("0".into())),
        ("hugepages-2Mi".to_string(), Quantity("0".into())),
        ("memory".to_string(), kib(m.memory_bytes)),
        ("pods".to_string(), Quantity(MAX_PODS.to_string())),
    ]);
    // Allocatable is capacity less kubelet's default eviction thresholds (memory.available
    // 100Mi, nodefs.available 10%), with nothing reserved for the system.
    let mut allocatable = capacity.clone();
    allocatable.insert("memory".into(), kib(m.memory_bytes.saturating_sub(EVICTION_MEMORY)));
    allocatable.insert("ephemeral-storage".into(), Quantity((m.disk_bytes / 10 * 9).to_string()));
    let now = meta::now_rfc3339();
    Node {
        metadata: ObjectMeta { name: Some(config.name.clone()), labels: Some(labels), annotations: Some(annotations), ..Default::default() },
        // Registered with the not-ready taint, as kubelet does, so nothing is scheduled here
        // before the node lifecycle controller has looked at it. The pod CIDR is the node
        // IPAM controller's to give.
        spec: Some(NodeSpec {
            taints: Some(vec![Taint { key: "node.kubernetes.io/not-ready".into(), effect: "NoSchedule".into(), ..Default::default() }]),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            addresses: Some(vec![
                NodeAddress { type_: "InternalIP".into(), address: config.internal_ip.clone() },
                NodeAddress { type_: "Hostname".into(), address: config.name.clone() },
            ]),
            allocatable: Some(allocatable),
            capacity: Some(capacity),
            conditions: Some(
                conditions(config.not_ready.as_deref(), &config.eviction.conditions())
                    .into_iter()
                    .map(|(ty, status, reason, message)| NodeCondition {
                        type_: ty.into(),
                        status: status.into(),
                        reason: Some(reason.into()),
                        message: Some(message),
                        last_heartbeat_time: time(&now),
                        last_transition_time: time(&now),
                    })
                    .collect(),
            ),
            images: config.images.as_ref().map(|store| {
                store.node_images().into_iter().map(|(names, size)| ContainerImage { names: Some(names), size_bytes: Some(size as i64) }).collect()
            }),
            daemon_endpoints: Some(NodeDaemonEndpoints { kubelet_endpoint: Some(DaemonEndpoint { port: config.kubelet_port }) }),
            node_info: Some(NodeSystemInfo {
                architecture: m.architecture.into(),
                boot_id: m.boot_id.clone(),
                container_runtime_version: format!("nanokube://{}", env!("CARGO_PKG_VERSION")),
                kernel_version: m.kernel_version.clone(),
                kube_proxy_version: String::new(),
                kubelet_version: config.version.clone(),
                machine_id: m.machine_id.clone(),
                operating_system: "linux".into(),
                os_image: m.os_image.clone(),
                system_uuid: m.system_uuid.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

fn to_value(node: &Node) -> Result<Value, String> {
    let mut v = serde_json::to_value(node).map_err(|e| e.to_string())?;
    v["apiVersion"] = Value::String("v1".into());
    v["kind"] = Value::String("Node".into());
    Ok(v)
}

/// Register the node: create it, or bring the registered one's labels, spec and status
/// up to date (a restart, a new boot, another machine's data dir).
pub async fn register(cluster: &dyn Cluster, config: &NodeConfig) -> Result<(), String> {
    let m = Machine::read(&config.data_dir);
    let want = to_value(&build(config, &m))?;
    match cluster.get(nodes(), "", &config.name) {
        Err(e) if e.code == 404 => match cluster.create(nodes(), "", want.clone()).await {
            Ok(_) => Ok(()),
            Err(e) => Err(e.message),
        },
        Err(e) => Err(e.message),
        Ok(_) => {
            cluster
                .update_with(nodes(), "", &config.name, None, &mut |cur| {
                    let mut next = cur.clone();
                    for (k, v) in want["metadata"]["labels"].as_object().into_iter().flatten() {
                        next["metadata"]["labels"][k] = v.clone();
                    }
                    Ok(next)
                })
                .await
                .map_err(|e| e.message)?;
            write_status(cluster, config, &want["status"]).await
        }
    }
}

async fn write_status(cluster: &dyn Cluster, config: &NodeConfig, status: &Value) -> Result<(), String> {
    cluster
        .update_with(nodes(), "", &config.name, Some("status"), &mut |cur| {
            let mut next = cur.clone();
            let mut status = status.clone();
            // A condition keeps its transition time while its status stays the same.
            if let (Some(new), Some(old)) = (status["conditions"].as_array_mut(), cur.pointer("/status/conditions").and_then(Value::as_array)) {
                for c in new.iter_mut() {
                    if let Some(o) = old.iter().find(|o| o.get("type") == c.get("type") && o.get("status") == c.get("status")) {
                        c["lastTransitionTime"] = o["lastTransitionTime"].clone();
                    }
                }
            }
            next["status"] = status;
            Ok(next)
        })
        .await
        .map(|_| ())
        .map_err(|e| e.message)
}

/// Re-evaluate the status; write it when a condition changed or `report` asks for the
/// periodic report (heartbeat times move). Whether it was written.
pub async fn update_status(cluster: &dyn Cluster, config: &NodeConfig, report: bool) -> Result<bool, String> {
    let want = to_value(&build(config, &Machine::read(&config.data_dir)))?;
    let cur = &cluster.get(nodes(), "", &config.name).map_err(|e| e.message)?;
    let key = |v: &Value| -> Vec<(Value, Value, Value)> {
        v.pointer("/status/conditions")
            .and_then(Value::as_array)
            .map(|cs| cs.iter().map(|c| (c["type"].clone(), c["status"].clone(), c["reason"].clone())).collect())
            .unwrap_or_default()
    };
    let changed = key(cur) != key(&want)
        || cur.pointer("/status/capacity") != want.pointer("/status/capacity")
        || cur.pointer("/status/images") != want.pointer("/status/images");
    if !changed && !report {
        return Ok(false);
    }
    write_status(cluster, config, &want["status"]).await?;
    Ok(true)
}
