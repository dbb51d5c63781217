//! `componentstatuses` (core/v1, deprecated upstream since 1.19 but still served): the
//! health of the parts of the control plane, read when asked, never stored. Each answer
//! is this server's own: `etcd-0` is the store (its writer thread alive), and
//! `controller-manager` the in-process controllers, `scheduler` the in-process scheduler
//! (unhealthy, saying so, when the server runs without one).

use serde_json::{json, Value};

use crate::server::ApiServer;

/// The deprecation warning upstream sends with every answer.
pub const DEPRECATION: &str = "v1 ComponentStatus is deprecated in v1.19+";

fn component(name: &str, healthy: Result<(), String>) -> Value {
    let condition = match healthy {
        Ok(()) => json!({"type": "Healthy", "status": "True", "message": "ok"}),
        Err(e) => json!({"type": "Healthy", "status": "False", "error": e}),
    };
    json!({"kind": "ComponentStatus", "apiVersion": "v1", "metadata": {"name": name}, "conditions": [condition]})
}

/// Every component, in upstream's order.
pub fn all(server: &ApiServer) -> Vec<Value> {
    vec![
        component(
            "scheduler",
            if server.scheduler { Ok(()) } else { Err("nanokube runs no scheduler (--scheduler=false): pods are stored, not scheduled".into()) },
        ),
        component("controller-manager", Ok(())),
        component("etcd-0", server.registry.store().healthy()),
    ]
}
