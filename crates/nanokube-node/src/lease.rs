//! The node's Lease in `kube-node-lease`: kubelet's heartbeat. Held by the node, 40
//! seconds long, renewed every 10, owned by the Node (so it goes with it).

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use nanokube_api::{meta, resources};
use nanokube_apiserver::cluster::Cluster;
use serde_json::Value;

/// The namespace node leases live in.
pub const NAMESPACE: &str = "kube-node-lease";
/// `leaseDurationSeconds` (kubelet's `nodeLeaseDurationSeconds`).
pub const DURATION_SECONDS: i32 = 40;

fn leases() -> &'static resources::ResourceDef {
    resources::find("coordination.k8s.io", "v1", "leases").expect("leases is a built-in resource")
}

/// Now as a MicroTime (`2026-12-02T16:40:00.123456Z`).
fn micro_now() -> Option<MicroTime> {
    serde_json::from_value(Value::String(meta::format_micro_time(time::OffsetDateTime::now_utc()))).ok()
}

/// Create the node's Lease, or renew it.
pub async fn renew(cluster: &dyn Cluster, node: &str) -> Result<(), String> {
    let nodes = resources::find("", "v1", "nodes").ok_or("no nodes resource")?;
    let node_uid = cluster.get(nodes, "", node).ok().map(|n| meta::uid(&n).to_string());
    match cluster.get(leases(), NAMESPACE, node) {
        Ok(_) => cluster
            .update_with(leases(), NAMESPACE, node, None, &mut |cur| {
                let mut next = cur.clone();
                next["spec"]["holderIdentity"] = Value::String(node.to_string());
                next["spec"]["leaseDurationSeconds"] = DURATION_SECONDS.into();
                next["spec"]["renewTime"] = serde_json::to_value(micro_now()).unwrap_or(Value::Null);
                Ok(next)
            })
            .await
            .map(|_| ())
            .map_err(|e| e.message),
        Err(e) if e.code == 404 => {
            let owner =
                node_uid.map(|uid| vec![OwnerReference { api_version: "v1".into(), kind: "Node".into(), name: node.into(), uid, ..Default::default() }]);
            let lease = Lease {
                metadata: ObjectMeta { name: Some(node.into()), namespace: Some(NAMESPACE.into()), owner_references: owner, ..Default::default() },
                spec: Some(LeaseSpec {
                    holder_identity: Some(node.into()),
                    lease_duration_seconds: Some(DURATION_SECONDS),
                    renew_time: micro_now(),
                    ..Default::default()
                }),
            };
            let mut v = serde_json::to_value(&lease).map_err(|e| e.to_string())?;
            v["apiVersion"] = Value::String("coordination.k8s.io/v1".into());
            v["kind"] = Value::String("Lease".into());
            match cluster.create(leases(), NAMESPACE, v).await {
                Err(e) if e.code != 409 => Err(e.message),
                _ => Ok(()),
            }
        }
        Err(e) => Err(e.message),
    }
}
