//! `pods/log`: what the API server checks itself (upstream's `LogLocation`: the
//! container named, or the only one; the pod bound to a node), and the node that serves
//! the log. Nodes are reached through [`NodeLogs`], which the node agent in this process
//! implements; a pod on any other node is answered with the error a kube-apiserver gives
//! when it cannot reach that node's kubelet.

use bytes::Bytes;
use nanokube_api::ApiError;
use serde_json::Value;
use tokio::sync::mpsc;

/// The parameters of a log request (`PodLogOptions`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// The container (resolved before the node is asked).
    pub container: String,
    /// Keep streaming until the container ends.
    pub follow: bool,
    /// The previous instance's log.
    pub previous: bool,
    /// Only lines newer than this many seconds.
    pub since_seconds: Option<i64>,
    /// Only lines at or after this time.
    pub since_time: Option<time::OffsetDateTime>,
    /// Prefix each line with its RFC 3339 time.
    pub timestamps: bool,
    /// Only the last lines.
    pub tail_lines: Option<i64>,
    /// Stop after this many bytes.
    pub limit_bytes: Option<i64>,
}

/// A node that serves container logs.
pub trait NodeLogs: crate::node_link::NamedNode {
    /// Stream the log of `opts.container` of `pod` (as stored); an error is the client's
    /// answer (kubelet's: a container still waiting, no previous instance).
    fn open(&self, pod: &Value, opts: &LogOptions) -> Result<mpsc::Receiver<Bytes>, ApiError>;
}

/// The nodes this API server reaches for logs.
pub type Nodes = crate::node_link::LocalNode<dyn NodeLogs>;

/// Open the log of the container `params` name in `pod` on its node.
pub fn open(nodes: &Nodes, pod: &Value, params: &dyn Fn(&str) -> Option<String>) -> Result<mpsc::Receiver<Bytes>, ApiError> {
    let mut opts = parse(params)?;
    opts.container = container(pod, params("container").as_deref().unwrap_or(""))?;
    nodes.reach(pod)?.open(pod, &opts)
}

/// What the API server checks before a node is asked (the options and the container):
/// the container the log is of.
pub fn check(pod: &Value, params: &dyn Fn(&str) -> Option<String>) -> Result<String, ApiError> {
    parse(params)?;
    container(pod, params("container").as_deref().unwrap_or(""))
}

fn int(params: &dyn Fn(&str) -> Option<String>, key: &str, min: i64) -> Result<Option<i64>, ApiError> {
    match params(key) {
        None => Ok(None),
        Some(v) => {
            let n: i64 = v.parse().map_err(|_| ApiError::bad_request(format!("{key}: invalid value {v:?}: must be an integer")))?;
            if n < min {
                let what = if min == 0 { "must be greater than or equal to 0" } else { "must be greater than 0" };
                return Err(ApiError::invalid(
                    "PodLogOptions",
                    "",
                    "",
                    vec![nanokube_api::error::Cause { reason: "FieldValueInvalid".into(), message: format!("Invalid value: {n}: {what}"), field: key.into() }],
                ));
            }
            Ok(Some(n))
        }
    }
}

fn flag(params: &dyn Fn(&str) -> Option<String>, key: &str) -> bool {
    params(key).is_some_and(|v| !(v == "0" || v.eq_ignore_ascii_case("false")))
}

/// The options as upstream validates them.
fn parse(params: &dyn Fn(&str) -> Option<String>) -> Result<LogOptions, ApiError> {
    let since_seconds = int(params, "sinceSeconds", 1)?;
    let since_time = match params("sinceTime") {
        None => None,
        Some(v) => Some(
            time::OffsetDateTime::parse(&v, &time::format_description::well_known::Rfc3339)
                .map_err(|_| ApiError::bad_request(format!("sinceTime: invalid value {v:?}")))?,
        ),
    };
    if since_seconds.is_some() && since_time.is_some() {
        return Err(ApiError::invalid(
            "PodLogOptions",
            "",
            "",
            vec![nanokube_api::error::Cause {
                reason: "FieldValueForbidden".into(),
                message: "Forbidden: at most one of `sinceTime` or `sinceSeconds` may be specified".into(),
                field: "".into(),
            }],
        ));
    }
    Ok(LogOptions {
        container: String::new(),
        follow: flag(params, "follow"),
        previous: flag(params, "previous"),
        since_seconds,
        since_time,
        timestamps: flag(params, "timestamps"),
        tail_lines: int(params, "tailLines", 0)?,
        limit_bytes: int(params, "limitBytes", 1)?,
    })
}

fn names(list: Option<&Value>) -> Vec<&str> {
    list.and_then(Value::as_array).map(|a| a.iter().filter_map(|c| c.get("name").and_then(Value::as_str)).collect()).unwrap_or_default()
}

/// The container a log request names, or the pod's only one (upstream's messages).
fn container(pod: &Value, asked: &str) -> Result<String, ApiError> {
    let name = pod.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
    let spec = pod.get("spec");
    let (containers, init, ephemeral) = (
        names(spec.and_then(|s| s.get("containers"))),
        names(spec.and_then(|s| s.get("initContainers"))),
        names(spec.and_then(|s| s.get("ephemeralContainers"))),
    );
    if asked.is_empty() {
        if containers.len() == 1 {
            return Ok(containers[0].to_string());
        }
        let mut msg = format!("a container name must be specified for pod {name}, choose one of: [{}]", containers.join(" "));
        if !init.is_empty() {
            msg += &format!(" or one of the init containers: [{}]", init.join(" "));
        }
        if !ephemeral.is_empty() {
            msg += &format!(" or one of the ephemeral containers: [{}]", ephemeral.join(" "));
        }
        return Err(ApiError::bad_request(msg));
    }
    if containers.contains(&asked) || init.contains(&asked) || ephemeral.contains(&asked) {
        return Ok(asked.to_string());
    }
    Err(ApiError::bad_request(format!("container {asked} is not valid for pod {name}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn containers_and_options_as_upstream_checks_them() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}, {"name": "b"}], "initContainers": [{"name": "i"}]}});
        assert_eq!(
            container(&pod, "").unwrap_err().message,
            "a container name must be specified for pod p, choose one of: [a b] or one of the init containers: [i]"
        );
        assert_eq!(container(&pod, "i").unwrap(), "i");
        assert_eq!(container(&pod, "z").unwrap_err().message, "container z is not valid for pod p");
        let one = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]}});
        assert_eq!(container(&one, "").unwrap(), "a");
        let q = |m: &'static [(&'static str, &'static str)]| move |k: &str| m.iter().find(|(a, _)| *a == k).map(|(_, v)| v.to_string());
        assert_eq!(parse(&q(&[("tailLines", "-1")])).unwrap_err().code, 422);
        assert_eq!(parse(&q(&[("sinceSeconds", "5"), ("sinceTime", "2024-01-01T00:00:00Z")])).unwrap_err().code, 422);
        let o = parse(&q(&[("follow", "true"), ("tailLines", "3"), ("timestamps", "1")])).unwrap();
        assert!(o.follow && o.timestamps && o.tail_lines == Some(3) && !o.previous);
    }
}
