//! How the API server reaches the node a pod is bound to, for what only that node can
//! serve (logs, exec). The node agent of this process attaches itself here; a pod on any
//! other node gets the error a kube-apiserver gives when it cannot reach that kubelet.

use std::sync::{Arc, OnceLock};

use nanokube_api::ApiError;
use serde_json::Value;

/// A node agent, as far as routing to it goes.
pub trait NamedNode: Send + Sync {
    /// The name of the Node object it runs as.
    fn node_name(&self) -> &str;
}

/// The node agent in this process, once attached.
pub struct LocalNode<T: ?Sized>(OnceLock<Arc<T>>);

impl<T: ?Sized> Default for LocalNode<T> {
    fn default() -> Self {
        LocalNode(OnceLock::new())
    }
}

impl<T: NamedNode + ?Sized> LocalNode<T> {
    /// Attach the node agent of this process (the first one attached stays).
    pub fn attach(&self, node: Arc<T>) {
        let _ = self.0.set(node);
    }

    /// The agent running `pod` (upstream's `streamLocation`: a pod not yet bound is a
    /// bad request), or the error for a node this server cannot reach.
    pub fn reach(&self, pod: &Value) -> Result<&Arc<T>, ApiError> {
        let node = pod.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or("");
        if node.is_empty() {
            let name = pod.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
            return Err(ApiError::bad_request(format!("pod {name} does not have a host assigned")));
        }
        self.reach_node(node)
    }

    /// The agent running the Node named `node`, or the error for one this server cannot
    /// reach.
    pub fn reach_node(&self, node: &str) -> Result<&Arc<T>, ApiError> {
        match self.0.get() {
            Some(n) if n.node_name() == node => Ok(n),
            _ => Err(ApiError::internal(format!(
                "no route to node {node:?}: this nanokube reaches its own node only (nodes that join come with the kubelet API)"
            ))),
        }
    }
}
