//! `pods/exec` and `pods/attach`, as kube-apiserver and kubelet serve them together.
//!
//! Everything that can fail is decided before the connection is upgraded: authorization
//! (`create` on `pods/exec` as well as the request's `get`, upstream's
//! AuthorizePodWebsocketUpgradeCreatePermission), the pod, its node and container, the
//! command, the subprotocol, and the process itself, started on the node. Only then is
//! `101 Switching Protocols` answered, so a failure on the node can never leave an
//! authorized, upgraded connection open (the CVE-2018-1002105 class).
//!
//! Two wires carry the same session: [`websocket`] (the channel protocols, kubectl 1.30
//! and newer, the client libraries) and [`spdy`] (a stream per channel over SPDY/3.1,
//! kubectl 1.27–1.29 and any client-go that falls back).

pub mod spdy;
pub mod websocket;

use std::future::Future;
use std::pin::Pin;

use nanokube_api::ApiError;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};

/// What to run, and which streams the client wants.
#[derive(Debug, Clone, Default)]
pub struct ExecRequest {
    /// The container.
    pub container: String,
    /// The command and its arguments.
    pub command: Vec<String>,
    /// Whether the client sends stdin.
    pub stdin: bool,
    /// Whether it wants stdout.
    pub stdout: bool,
    /// Whether it wants stderr (never with a TTY).
    pub stderr: bool,
    /// Whether the process gets a terminal.
    pub tty: bool,
}

/// How the process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEnd {
    /// It exited with this code.
    Exited(i32),
    /// It could not be run (the runtime's words).
    Failed(String),
}

/// A started process's streams.
pub struct ExecSession {
    /// Its stdin (when asked for).
    pub stdin: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    /// Its stdout (the terminal with a TTY).
    pub stdout: Option<Box<dyn AsyncRead + Send + Unpin>>,
    /// Its stderr.
    pub stderr: Option<Box<dyn AsyncRead + Send + Unpin>>,
    /// Resizes the terminal (width, height).
    pub resize: Option<Box<dyn Fn(u16, u16) + Send + Sync>>,
    /// Resolves when the process has ended.
    pub done: Pin<Box<dyn Future<Output = ExecEnd> + Send>>,
}

/// A node that runs processes in its containers and lets clients attach to them.
pub trait NodeExec: crate::node_link::NamedNode {
    /// Start `req` in `pod` (as stored). An error is the client's answer, given before
    /// any upgrade.
    fn exec<'a>(&'a self, pod: &'a Value, req: ExecRequest) -> Pin<Box<dyn Future<Output = Result<ExecSession, ApiError>> + Send + 'a>>;

    /// Attach to the running container `req.container` of `pod` (its own streams; the
    /// request's command is empty). The session ends, successfully, when the container
    /// does or the node drops the client.
    fn attach<'a>(&'a self, pod: &'a Value, req: ExecRequest) -> Pin<Box<dyn Future<Output = Result<ExecSession, ApiError>> + Send + 'a>>;
}

/// The error channel's last word, as kubelet writes it.
pub fn end_status(command: &[String], end: &ExecEnd) -> Value {
    match end {
        ExecEnd::Exited(0) => json!({"metadata": {}, "status": "Success"}),
        ExecEnd::Exited(code) => json!({
            "metadata": {}, "status": "Failure",
            "message": format!("command terminated with non-zero exit code: error executing command [{}], exit code {code}", command.join(" ")),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        ExecEnd::Failed(why) => json!({
            "metadata": {}, "status": "Failure",
            "message": format!("Internal error occurred: error executing command in container: {why}"),
            "reason": "InternalError",
            "details": {"causes": [{"message": format!("error executing command in container: {why}")}]},
            "code": 500,
        }),
    }
}

/// The error stream's last word in the protocols before `v4` (text, nothing on success).
pub fn end_text(command: &[String], end: &ExecEnd) -> Option<String> {
    match end {
        ExecEnd::Exited(0) => None,
        ExecEnd::Exited(code) => Some(format!("command terminated with non-zero exit code: error executing command [{}], exit code {code}", command.join(" "))),
        ExecEnd::Failed(why) => Some(format!("error executing command in container: {why}")),
    }
}

/// A terminal size as the resize channel or stream carries it (`{"Width":80,"Height":24}`).
pub fn terminal_size(v: &Value) -> (u16, u16) {
    let dim = |k: &str| v.get(k).and_then(Value::as_u64).and_then(|n| u16::try_from(n).ok()).unwrap_or(0);
    (dim("Width"), dim("Height"))
}

/// The container a streaming request names, resolved in `pod` as upstream's
/// `streamLocation` does: the one regular container when none is named.
pub fn container(pod: &Value, container: Option<&str>) -> Result<String, ApiError> {
    let name = pod.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
    let names = |p: &str| -> Vec<String> {
        pod.pointer(p).and_then(Value::as_array).into_iter().flatten().filter_map(|c| c.get("name").and_then(Value::as_str).map(String::from)).collect()
    };
    let (regular, init, ephemeral) = (names("/spec/containers"), names("/spec/initContainers"), names("/spec/ephemeralContainers"));
    match container.filter(|c| !c.is_empty()) {
        Some(c) => {
            if !regular.iter().chain(&init).chain(&ephemeral).any(|n| n == c) {
                return Err(ApiError::bad_request(format!("container {c} is not valid for pod {name}")));
            }
            Ok(c.to_string())
        }
        None => match regular.len() {
            1 => Ok(regular[0].clone()),
            0 => Err(ApiError::bad_request(format!("a container name must be specified for pod {name}"))),
            _ => {
                let mut m = format!("a container name must be specified for pod {name}, choose one of: [{}]", regular.join(" "));
                if !init.is_empty() {
                    m += &format!(" or one of the init containers: [{}]", init.join(" "));
                }
                if !ephemeral.is_empty() {
                    m += &format!(" or one of the ephemeral containers: [{}]", ephemeral.join(" "));
                }
                Err(ApiError::bad_request(m))
            }
        },
    }
}

/// The exec request from the query (`command` repeated, `container`, the stream flags),
/// checked as upstream checks it, and the container resolved for `pod`.
pub fn request(pod: &Value, container: Option<&str>, command: Vec<String>, flag: &dyn Fn(&str) -> bool) -> Result<ExecRequest, ApiError> {
    let container = self::container(pod, container)?;
    if command.is_empty() {
        return Err(ApiError::bad_request("you must specify at least 1 command"));
    }
    streams(ExecRequest { container, command, ..Default::default() }, flag)
}

/// The attach request from the query (`container`, the stream flags).
pub fn attach_request(pod: &Value, container: Option<&str>, flag: &dyn Fn(&str) -> bool) -> Result<ExecRequest, ApiError> {
    let container = self::container(pod, container)?;
    streams(ExecRequest { container, ..Default::default() }, flag)
}

fn streams(mut req: ExecRequest, flag: &dyn Fn(&str) -> bool) -> Result<ExecRequest, ApiError> {
    let (stdin, stdout, stderr, tty) = (flag("stdin"), flag("stdout"), flag("stderr"), flag("tty"));
    if !stdin && !stdout && !stderr {
        return Err(ApiError::bad_request("you must specify at least 1 of stdin, stdout, stderr"));
    }
    (req.stdin, req.stdout, req.stderr, req.tty) = (stdin, stdout, stderr && !tty, tty);
    Ok(req)
}

/// The nodes this API server runs processes on.
pub type ExecNodes = crate::node_link::LocalNode<dyn NodeExec>;

/// Start `req` in `pod` on its node (a pod with none is refused there, as for logs).
pub async fn exec(nodes: &ExecNodes, pod: &Value, req: ExecRequest) -> Result<ExecSession, ApiError> {
    nodes.reach(pod)?.exec(pod, req).await
}

/// Attach to a container of `pod` on its node.
pub async fn attach(nodes: &ExecNodes, pod: &Value, req: ExecRequest) -> Result<ExecSession, ApiError> {
    nodes.reach(pod)?.attach(pod, req).await
}
