//! The kubelet API (`:10250` by default): HTTPS with a serving certificate from the
//! cluster CA, what the API server's `nodes/proxy` and tools such as kube-rs's
//! `kubelet-debug` reach.
//!
//! Every request is authenticated (a client certificate from the cluster CA, or a bearer
//! token as a TokenReview would judge it; anonymous callers get 401) and authorized (as
//! a SubjectAccessReview on `nodes/<subresource>` of this node: `stats` for `/stats/`,
//! `metrics` for `/metrics`, `log` for `/logs/`, `proxy` for the rest, the verb from the
//! method), as kubelet's webhook authentication and authorization do ([`Gate`]). In the
//! server's process both are the API server's own authenticator and authorizer, the ones
//! its TokenReview and SubjectAccessReview answer with; on a joined node (`nanokube
//! agent`) client certificates are checked against the cluster CA by TLS and the rest is
//! asked of the API server with TokenReview and SubjectAccessReview.
//!
//! Served: `/healthz`, `/pods`, `/containerLogs/{ns}/{pod}/{container}`,
//! `/exec/{ns}/{pod}/{container}` and `/attach/...` (kubelet's `input`/`output`/`error`/
//! `tty` parameters, WebSocket and SPDY), `/portForward/{ns}/{pod}`, `/stats/summary`,
//! `/metrics`, `/metrics/resource`, `/logs/` (the host's `/var/log`).

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use nanokube_api::{resources, ApiError};
use nanokube_apiserver::authn::UserInfo;
use nanokube_apiserver::authz::Decision;
use nanokube_apiserver::cluster::{BoxFuture, Cluster};
use nanokube_apiserver::handler::Query;
use nanokube_apiserver::http::{self as h, Body};
use nanokube_apiserver::request::RequestInfo;
use nanokube_apiserver::server::{ApiServer, ConnInfo};
use serde_json::{json, Value};

use crate::pods::stats::{Figures, Stats};

/// Where `/logs/` serves from (kubelet's node logs).
const NODE_LOGS: &str = "/var/log";

/// Who may call the kubelet API: kubelet's webhook authentication and authorization.
pub trait Gate: Send + Sync {
    /// The caller: the user of a client certificate the TLS layer verified against the
    /// cluster CA, else what the bearer token is; `None` for anonymous or unknown callers.
    fn authenticate<'a>(&'a self, cert_user: Option<&'a UserInfo>, authorization: Option<&'a str>) -> BoxFuture<'a, Option<UserInfo>>;
    /// Whether `user` may make this request (`nodes/<subresource>` of this node).
    fn authorize<'a>(&'a self, user: &'a UserInfo, attrs: &'a RequestInfo) -> BoxFuture<'a, bool>;
}

/// The API server of this process as the gate.
pub struct ServerGate(pub Arc<ApiServer>);

impl Gate for ServerGate {
    fn authenticate<'a>(&'a self, cert_user: Option<&'a UserInfo>, authorization: Option<&'a str>) -> BoxFuture<'a, Option<UserInfo>> {
        Box::pin(async move { self.0.authn.authenticate(cert_user, authorization).ok() })
    }
    fn authorize<'a>(&'a self, user: &'a UserInfo, attrs: &'a RequestInfo) -> BoxFuture<'a, bool> {
        Box::pin(async move { self.0.authz.authorize(user, attrs) == Decision::Allow })
    }
}

/// What only this node serves, as the API server's node links hold it.
#[derive(Default)]
pub struct Links {
    /// Container logs.
    pub logs: nanokube_apiserver::pod_logs::Nodes,
    /// exec and attach.
    pub exec: nanokube_apiserver::pod_exec::ExecNodes,
    /// Port forwarding.
    pub portforward: nanokube_apiserver::pod_portforward::PortForwardNodes,
}

impl Links {
    /// The links of a node running pods on `rt`.
    pub fn to(rt: &Arc<crate::pods::PodRuntime>) -> Links {
        let links = Links::default();
        links.logs.attach(Arc::new(crate::pods::logs::Logs(rt.clone())));
        links.exec.attach(Arc::new(crate::pods::exec::Exec(rt.clone())));
        links.portforward.attach(Arc::new(crate::pods::portforward::PortForward(rt.clone())));
        links
    }
}

/// The kubelet API of this node.
pub struct KubeletApi {
    gate: Arc<dyn Gate>,
    cluster: Arc<dyn Cluster>,
    links: Links,
    node: String,
    stats: Arc<Stats>,
}

/// kubelet's authorization subresource for a path.
fn subresource(path: &str) -> &'static str {
    let under = |p: &str| path == p || path.starts_with(&format!("{p}/"));
    if under("/stats") {
        "stats"
    } else if under("/metrics") {
        "metrics"
    } else if under("/logs") {
        "log"
    } else {
        "proxy"
    }
}

/// kubelet's verb for a method.
fn verb(method: &Method) -> &'static str {
    match *method {
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "get",
    }
}

fn text(code: StatusCode, body: impl Into<String>) -> Response<Body> {
    h::text(code, body)
}

fn prometheus(body: String) -> Response<Body> {
    h::bytes_response(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", Bytes::from(body))
}

fn millis(t: std::time::SystemTime) -> u128 {
    t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0)
}

fn rfc3339(t: std::time::SystemTime) -> String {
    nanokube_runtime::cri_log::timestamp(time::OffsetDateTime::from(t))
}

impl KubeletApi {
    /// The API of node `node` running pods on `rt`, reading pods through `cluster`,
    /// its callers judged by `gate`.
    pub fn new(gate: Arc<dyn Gate>, cluster: Arc<dyn Cluster>, rt: &Arc<crate::pods::PodRuntime>, stats: Arc<Stats>) -> Arc<KubeletApi> {
        Arc::new(KubeletApi { gate, cluster, links: Links::to(rt), node: rt.node.clone(), stats })
    }

    /// Serve on `listener` until `shutdown`.
    pub async fn serve(self: Arc<Self>, listener: tokio::net::TcpListener, tls: Arc<rustls::ServerConfig>, shutdown: tokio::sync::watch::Receiver<bool>) {
        nanokube_apiserver::server::serve_with(listener, tls, shutdown, move |conn, req| {
            let me = self.clone();
            async move { me.handle(conn, req).await }
        })
        .await
    }

    async fn handle(&self, conn: Arc<ConnInfo>, req: Request<Incoming>) -> Response<Body> {
        let authorization = req.headers().get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let user = match self.gate.authenticate(conn.cert_user.as_ref(), authorization).await {
            Some(u) if u.name != "system:anonymous" => u,
            _ => return text(StatusCode::UNAUTHORIZED, "Unauthorized"),
        };
        let path = req.uri().path().to_string();
        let attrs = RequestInfo {
            is_resource: true,
            path: path.clone(),
            verb: verb(req.method()).into(),
            prefix: "api".into(),
            version: "v1".into(),
            resource: "nodes".into(),
            subresource: subresource(&path).into(),
            name: self.node.clone(),
            ..Default::default()
        };
        if !self.gate.authorize(&user, &attrs).await {
            return text(
                StatusCode::FORBIDDEN,
                format!("Forbidden (user={}, verb={}, resource=nodes, subresource={})", user.name, attrs.verb, attrs.subresource),
            );
        }
        match self.route(req).await {
            Ok(r) => r,
            Err(e) => h::error(&e),
        }
    }

    async fn route(&self, mut req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
        let path = req.uri().path().to_string();
        let query = Query::parse(req.uri().query());
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (req.method(), segments.as_slice()) {
            (&Method::GET, ["healthz"]) => Ok(text(StatusCode::OK, "ok")),
            (&Method::GET, ["pods"] | ["pods", ""]) => Ok(h::json(StatusCode::OK, &self.pods_list())),
            (&Method::GET, ["containerLogs", ns, pod, container]) => {
                let pod = self.pod(ns, pod)?;
                let container = container.to_string();
                let params = |k: &str| if k == "container" { Some(container.clone()) } else { query.get(k).map(String::from) };
                let rx = nanokube_apiserver::pod_logs::open(&self.links.logs, &pod, &params)?;
                let mut resp = Response::new(h::channel(rx));
                resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain"));
                Ok(resp)
            }
            // With or without the pod's UID before the container, as kubelet routes them.
            (_, [kind @ ("exec" | "attach"), ns, pod, container] | [kind @ ("exec" | "attach"), ns, pod, _, container]) => {
                let wire = nanokube_apiserver::upgrade::exec_wire(req.headers(), nanokube_apiserver::upgrade::requested(req.headers())?)?;
                let uid = (segments.len() == 5).then(|| segments[3]);
                let pod = self.pod_with_uid(ns, pod, uid)?;
                // kubelet's names for the streams.
                let flag = |k: &str| {
                    let name = match k {
                        "stdin" => "input",
                        "stdout" => "output",
                        "stderr" => "error",
                        other => other,
                    };
                    query.flag(name)
                };
                let exec_req = if *kind == "attach" {
                    nanokube_apiserver::pod_exec::attach_request(&pod, Some(container), &flag)?
                } else {
                    nanokube_apiserver::pod_exec::request(&pod, Some(container), query.all("command"), &flag)?
                };
                let upgrade = hyper::upgrade::on(&mut req);
                let session = if *kind == "attach" {
                    nanokube_apiserver::pod_exec::attach(&self.links.exec, &pod, exec_req.clone()).await?
                } else {
                    nanokube_apiserver::pod_exec::exec(&self.links.exec, &pod, exec_req.clone()).await?
                };
                nanokube_apiserver::upgrade::serve_exec(req.headers(), wire, upgrade, exec_req, session)
            }
            (_, ["portForward", ns, pod] | ["portForward", ns, pod, _]) => {
                let wire = nanokube_apiserver::upgrade::requested(req.headers())?;
                let ports = nanokube_apiserver::pod_portforward::ports(&query.all("port"))?;
                let uid = (segments.len() == 4).then(|| segments[3]);
                let pod = self.pod_with_uid(ns, pod, uid)?;
                let target = nanokube_apiserver::pod_portforward::Target::new(&self.links.portforward, pod)?;
                let upgrade = hyper::upgrade::on(&mut req);
                nanokube_apiserver::upgrade::serve_portforward(req.headers(), wire, upgrade, ports, target)
            }
            (&Method::GET, ["stats", "summary"]) => Ok(h::json(StatusCode::OK, &self.summary())),
            (&Method::GET, ["metrics"]) => Ok(prometheus(self.kubelet_metrics())),
            (&Method::GET, ["metrics", "resource"]) => Ok(prometheus(self.resource_metrics())),
            (&Method::GET, ["logs", rest @ ..]) => node_log(&rest.join("/")).await,
            _ => Ok(text(StatusCode::NOT_FOUND, "404 page not found")),
        }
    }

    /// This node's pods, as stored.
    fn pods(&self) -> Vec<Value> {
        let Some(def) = resources::find("", "v1", "pods") else { return Vec::new() };
        let list = self.cluster.list(def, None, &format!("spec.nodeName={}", self.node)).map(|l| l.items).unwrap_or_default();
        list.into_iter().filter(|p| p.pointer("/spec/nodeName").and_then(Value::as_str) == Some(self.node.as_str())).collect()
    }

    /// Pod `ns/name` when it is on this node (kubelet knows no other).
    fn pod(&self, ns: &str, name: &str) -> Result<Value, ApiError> {
        let def = resources::find("", "v1", "pods").ok_or_else(|| ApiError::internal("no pods"))?;
        let pod = self.cluster.get(def, ns, name).map_err(|_| ApiError::not_found("pods", "", name))?;
        if pod.pointer("/spec/nodeName").and_then(Value::as_str) != Some(self.node.as_str()) {
            return Err(ApiError::not_found("pods", "", name));
        }
        Ok(pod)
    }

    /// Pod `ns/name` on this node, when it has `uid` if one is given.
    fn pod_with_uid(&self, ns: &str, name: &str, uid: Option<&str>) -> Result<Value, ApiError> {
        let pod = self.pod(ns, name)?;
        if uid.is_some_and(|u| pod.pointer("/metadata/uid").and_then(Value::as_str) != Some(u)) {
            return Err(ApiError::not_found("pods", "", name));
        }
        Ok(pod)
    }

    fn pods_list(&self) -> Value {
        json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": self.pods()})
    }

    /// kubelet's Summary API (`stats/v1alpha1`), for what the node samples: CPU and memory
    /// of the node, its pods and their containers.
    fn summary(&self) -> Value {
        let usage = |f: &Figures| {
            let mut cpu = json!({"time": rfc3339(f.at), "usageCoreNanoSeconds": f.cpu_ns});
            if let Some(n) = f.nanocores {
                cpu["usageNanoCores"] = json!(n);
            }
            (cpu, json!({"time": rfc3339(f.at), "workingSetBytes": f.working_set, "usageBytes": f.working_set}))
        };
        let mut node = json!({"nodeName": self.node, "systemContainers": []});
        if let Some(f) = self.stats.node_figures() {
            let (cpu, memory) = usage(&f);
            node["cpu"] = cpu;
            node["memory"] = memory;
        }
        let pods: Vec<Value> = self
            .pods()
            .iter()
            .map(|p| {
                let uid = p.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or("");
                let figures = self.stats.container_figures(uid);
                let containers: Vec<Value> = figures
                    .iter()
                    .map(|(name, f)| {
                        let (cpu, memory) = usage(f);
                        json!({"name": name, "cpu": cpu, "memory": memory})
                    })
                    .collect();
                let mut pod = json!({
                    "podRef": {"name": p.pointer("/metadata/name"), "namespace": p.pointer("/metadata/namespace"), "uid": uid},
                    "startTime": p.pointer("/status/startTime"),
                    "containers": containers,
                });
                if let Some(last) = figures.iter().map(|(_, f)| f.at).max() {
                    let cpu_ns: u64 = figures.iter().map(|(_, f)| f.cpu_ns).sum();
                    let ws: u64 = figures.iter().map(|(_, f)| f.working_set).sum();
                    pod["cpu"] = json!({"time": rfc3339(last), "usageCoreNanoSeconds": cpu_ns, "usageNanoCores": figures.iter().filter_map(|(_, f)| f.nanocores).sum::<u64>()});
                    pod["memory"] = json!({"time": rfc3339(last), "workingSetBytes": ws, "usageBytes": ws});
                }
                pod
            })
            .collect();
        json!({"node": node, "pods": pods})
    }

    /// `/metrics/resource`, as kubelet exposes it for metrics-server.
    fn resource_metrics(&self) -> String {
        let mut out = String::new();
        let mut family = |name: &str, help: &str, kind: &str, rows: Vec<(String, f64, u128)>| {
            out += &format!("# HELP {name} [STABLE] {help}\n# TYPE {name} {kind}\n");
            for (labels, value, at) in rows {
                out += &format!("{name}{labels} {value} {at}\n");
            }
        };
        let node = self.stats.node_figures();
        family(
            "node_cpu_usage_seconds_total",
            "Cumulative cpu time consumed by the node in core-seconds",
            "counter",
            node.iter().map(|f| (String::new(), f.cpu_ns as f64 / 1e9, millis(f.at))).collect(),
        );
        family(
            "node_memory_working_set_bytes",
            "Current working set of the node in bytes",
            "gauge",
            node.iter().map(|f| (String::new(), f.working_set as f64, millis(f.at))).collect(),
        );
        let mut containers = Vec::new();
        for p in self.pods() {
            let [ns, name, uid] =
                ["/metadata/namespace", "/metadata/name", "/metadata/uid"].map(|k| p.pointer(k).and_then(Value::as_str).unwrap_or("").to_string());
            let figures = self.stats.container_figures(&uid);
            containers.push((ns, name, figures));
        }
        let rows = |f: &dyn Fn(&Figures) -> f64| -> Vec<(String, f64, u128)> {
            containers
                .iter()
                .flat_map(|(ns, pod, fs)| fs.iter().map(move |(c, x)| (format!("{{container=\"{c}\",namespace=\"{ns}\",pod=\"{pod}\"}}"), f(x), millis(x.at))))
                .collect()
        };
        family(
            "container_cpu_usage_seconds_total",
            "Cumulative cpu time consumed by the container in core-seconds",
            "counter",
            rows(&|x| x.cpu_ns as f64 / 1e9),
        );
        family("container_memory_working_set_bytes", "Current working set of the container in bytes", "gauge", rows(&|x| x.working_set as f64));
        let pod_rows = |f: &dyn Fn(&Figures) -> f64| -> Vec<(String, f64, u128)> {
            containers
                .iter()
                .filter(|(_, _, fs)| !fs.is_empty())
                .map(|(ns, pod, fs)| {
                    let at = fs.iter().map(|(_, x)| millis(x.at)).max().unwrap_or(0);
                    (format!("{{namespace=\"{ns}\",pod=\"{pod}\"}}"), fs.iter().map(|(_, x)| f(x)).sum(), at)
                })
                .collect()
        };
        family("pod_cpu_usage_seconds_total", "Cumulative cpu time consumed by the pod in core-seconds", "counter", pod_rows(&|x| x.cpu_ns as f64 / 1e9));
        family("pod_memory_working_set_bytes", "Current working set of the pod in bytes", "gauge", pod_rows(&|x| x.working_set as f64));
        out += "# HELP scrape_error [ALPHA] 1 if there was an error while getting container metrics, 0 otherwise\n# TYPE scrape_error gauge\n";
        out += &format!("scrape_error {}\n", u8::from(node.is_none()));
        out
    }

    /// `/metrics`: kubelet's own gauges that nanokube can tell (pods, containers, the
    /// node's name).
    fn kubelet_metrics(&self) -> String {
        let pods = self.pods();
        // Each pod's running containers, read from disk once.
        let running: Vec<usize> = pods.iter().filter_map(|p| p.pointer("/metadata/uid").and_then(Value::as_str)).map(|u| self.stats.running_count(u)).collect();
        let running_containers: usize = running.iter().sum();
        let running_pods = running.iter().filter(|n| **n > 0).count();
        format!(
            "# HELP kubelet_node_name [ALPHA] The node's name. The count is always 1.\n# TYPE kubelet_node_name gauge\nkubelet_node_name{{node=\"{}\"}} 1\n\
             # HELP kubelet_running_pods [ALPHA] Number of pods that have a running pod sandbox\n# TYPE kubelet_running_pods gauge\nkubelet_running_pods {running_pods}\n\
             # HELP kubelet_running_containers [ALPHA] Number of containers currently running\n# TYPE kubelet_running_containers gauge\nkubelet_running_containers{{container_state=\"running\"}} {running_containers}\n",
            self.node
        )
    }
}

/// A file or directory listing under the node's log directory (Go's `http.FileServer`,
/// which kubelet uses); nothing outside it.
async fn node_log(rel: &str) -> Result<Response<Body>, ApiError> {
    let rel = Path::new(rel);
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Ok(text(StatusCode::NOT_FOUND, "404 page not found"));
    }
    let path: PathBuf = Path::new(NODE_LOGS).join(rel);
    let Ok(meta) = tokio::fs::metadata(&path).await else { return Ok(text(StatusCode::NOT_FOUND, "404 page not found")) };
    if meta.is_dir() {
        let mut names = Vec::new();
        if let Ok(mut dir) = tokio::fs::read_dir(&path).await {
            while let Ok(Some(e)) = dir.next_entry().await {
                let mut name = e.file_name().to_string_lossy().into_owned();
                if e.file_type().await.is_ok_and(|t| t.is_dir()) {
                    name.push('/');
                }
                names.push(name);
            }
        }
        names.sort();
        let escape = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;");
        let mut body = String::from("<pre>\n");
        for n in names {
            body += &format!("<a href=\"{}\">{}</a>\n", escape(&n), escape(&n));
        }
        body += "</pre>\n";
        return Ok(h::bytes_response(StatusCode::OK, "text/html; charset=utf-8", Bytes::from(body)));
    }
    let file = tokio::fs::File::open(&path).await.map_err(|e| ApiError::internal(e.to_string()))?;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut file = file;
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = file.read(&mut buf).await {
            if n == 0 || tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                break;
            }
        }
    });
    let mut resp = Response::new(h::channel(rx));
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; charset=utf-8"));
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_kubelets_subresources() {
        assert_eq!(subresource("/stats/summary"), "stats");
        assert_eq!(subresource("/metrics"), "metrics");
        assert_eq!(subresource("/metrics/resource"), "metrics");
        assert_eq!(subresource("/logs/"), "log");
        assert_eq!(subresource("/pods"), "proxy");
        assert_eq!(subresource("/exec/default/p/c"), "proxy");
        assert_eq!(subresource("/statsx"), "proxy");
        assert_eq!(verb(&Method::POST), "create");
        assert_eq!(verb(&Method::GET), "get");
    }
}
