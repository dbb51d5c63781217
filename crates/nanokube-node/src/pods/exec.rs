//! `pods/exec` and `pods/attach` on this node: a process started in the running instance
//! of a container (`runc exec`, see [`nanokube_runtime::exec`]), or the container's own
//! streams through its shim ([`nanokube_runtime::attach`]), handed to the API server.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use nanokube_api::ApiError;
use nanokube_apiserver::pod_exec::{ExecEnd, ExecRequest, ExecSession, NodeExec};
use nanokube_runtime::exec::Outcome;
use serde_json::Value;

use super::PodRuntime;

/// The node's exec server.
pub struct Exec(pub Arc<PodRuntime>);

/// The runc ID of the running instance of `container`, from the pod's status (its
/// `restartCount` is the instance) and the node's records of it.
fn running_instance(rt: &PodRuntime, pod: &Value, container: &str) -> Option<String> {
    let dir = running_bundle(rt, pod, container)?;
    Some(std::fs::read_to_string(dir.join("id")).ok()?.trim().to_string())
}

/// The bundle directory of the running instance of `container`.
fn running_bundle(rt: &PodRuntime, pod: &Value, container: &str) -> Option<std::path::PathBuf> {
    let uid = pod.pointer("/metadata/uid").and_then(Value::as_str)?;
    let status = super::named(pod, &super::STATUS_LISTS, container)?;
    status.pointer("/state/running")?;
    let attempt = status.get("restartCount").and_then(Value::as_u64).unwrap_or(0);
    let dir = rt.pods_dir().join(uid).join("containers").join(container).join(attempt.to_string());
    if dir.join("exit.json").exists() {
        return None;
    }
    Some(dir)
}

/// kubelet's answer for a container that is not running (kubectl prefixes "unable to
/// upgrade connection: ").
fn not_running(container: &str) -> ApiError {
    ApiError::new(500, "InternalError", format!("container not found ({container:?})"))
}

impl nanokube_apiserver::node_link::NamedNode for Exec {
    fn node_name(&self) -> &str {
        &self.0.node
    }
}

impl NodeExec for Exec {
    fn exec<'a>(&'a self, pod: &'a Value, req: ExecRequest) -> Pin<Box<dyn Future<Output = Result<ExecSession, ApiError>> + Send + 'a>> {
        Box::pin(async move {
            let id = running_instance(&self.0, pod, &req.container).ok_or_else(|| not_running(&req.container))?;
            let work = self.0.data_dir.join("exec");
            let streams = nanokube_runtime::exec::Streams { stdin: req.stdin, stdout: req.stdout, stderr: req.stderr, tty: req.tty };
            let mut e = nanokube_runtime::exec::spawn(&self.0.runc, &id, &req.command, streams, &work).await.map_err(ApiError::internal)?;
            let resize = e.terminal.clone().map(|t| Box::new(move |w: u16, h: u16| t.resize(w, h)) as Box<dyn Fn(u16, u16) + Send + Sync>);
            let (stdin, stdout, stderr) = (e.stdin.take(), e.stdout.take(), e.stderr.take());
            let done = Box::pin(async move {
                match e.wait().await {
                    Outcome::Exited(code) => ExecEnd::Exited(code),
                    Outcome::NotStarted(why) => {
                        ExecEnd::Failed(format!("failed to exec in container: failed to start exec \"{id}\": OCI runtime exec failed: {why}: unknown"))
                    }
                }
            });
            Ok(ExecSession { stdin, stdout, stderr, resize, done })
        })
    }

    fn attach<'a>(&'a self, pod: &'a Value, req: ExecRequest) -> Pin<Box<dyn Future<Output = Result<ExecSession, ApiError>> + Send + 'a>> {
        Box::pin(async move {
            let bundle = running_bundle(&self.0, pod, &req.container).ok_or_else(|| not_running(&req.container))?;
            // The container's own settings decide, as containerd's attach: its terminal
            // (output on one stream), and whether it has stdin at all.
            let spec = super::named(pod, &super::CONTAINER_LISTS, &req.container);
            let flag = |k: &str| spec.and_then(|c| c.get(k)).and_then(Value::as_bool).unwrap_or(false);
            let tty = flag("tty");
            let mut a = nanokube_runtime::attach::connect(&bundle, req.stdin && flag("stdin"), req.stdout, req.stderr && !tty)
                .await
                .map_err(|e| ApiError::internal(format!("error attaching to container: {e}")))?;
            let resizer = a.resize.clone();
            let resize = tty.then(|| {
                Box::new(move |w: u16, h: u16| {
                    let _ = resizer.send((w, h));
                }) as Box<dyn Fn(u16, u16) + Send + Sync>
            });
            let box_write = |w: tokio::io::DuplexStream| Box::new(w) as Box<dyn tokio::io::AsyncWrite + Send + Unpin>;
            let box_read = |r: tokio::io::DuplexStream| Box::new(r) as Box<dyn tokio::io::AsyncRead + Send + Unpin>;
            let (stdin, stdout, stderr) = (a.stdin.take().map(box_write), a.stdout.take().map(box_read), a.stderr.take().map(box_read));
            let done = Box::pin(async move {
                let _ = a.done.await;
                ExecEnd::Exited(0)
            });
            Ok(ExecSession { stdin, stdout, stderr, resize, done })
        })
    }
}
