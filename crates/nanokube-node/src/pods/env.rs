//! A container's environment as kubelet builds it: the Service variables (when
//! `enableServiceLinks`, plus the `kubernetes` Service's always), then `envFrom` sources,
//! then `env` in order (`value` with `$(VAR)` references to what precedes, `valueFrom`
//! fieldRef, resourceFieldRef, configMapKeyRef, secretKeyRef with `optional`).

use nanokube_api::resources;
use nanokube_apiserver::cluster::Cluster;
use serde_json::Value;

use super::files::{field_ref, read_source, resource_field_ref};

/// Why a container cannot be configured (`CreateContainerConfigError`), kubelet's words.
#[derive(Debug, Clone)]
pub struct ConfigError(pub String);

/// The Service variables (`docker links` style) for the Services of `namespace`, and the
/// `kubernetes` Service of `default` always, as kubelet's `getServiceEnvVarMap` makes them.
pub fn service_links(cluster: &dyn Cluster, namespace: &str, enable: bool) -> Vec<(String, String)> {
    let Some(services) = resources::find("", "v1", "services") else { return Vec::new() };
    let mut chosen: Vec<Value> = Vec::new();
    if enable {
        if let Ok(list) = cluster.list(services, Some(namespace), "") {
            chosen.extend(list.items);
        }
    }
    if namespace != "default" || !enable {
        if let Ok(k) = cluster.get(services, "default", "kubernetes") {
            chosen.retain(|s| s.pointer("/metadata/name").and_then(Value::as_str) != Some("kubernetes"));
            chosen.push(k);
        }
    }
    let mut out = Vec::new();
    for svc in chosen {
        let ip = svc.pointer("/spec/clusterIP").and_then(Value::as_str).unwrap_or("");
        if ip.is_empty() || ip == "None" {
            continue;
        }
        let name = svc.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_uppercase().replace('-', "_");
        let ports: Vec<&Value> = svc.pointer("/spec/ports").and_then(Value::as_array).map(|p| p.iter().collect()).unwrap_or_default();
        let Some(first) = ports.first() else { continue };
        out.push((format!("{name}_SERVICE_HOST"), ip.to_string()));
        out.push((format!("{name}_SERVICE_PORT"), first.get("port").map(|p| p.to_string()).unwrap_or_default()));
        for p in &ports {
            if let Some(pn) = p.get("name").and_then(Value::as_str).filter(|n| !n.is_empty()) {
                out.push((format!("{name}_SERVICE_PORT_{}", pn.to_uppercase().replace('-', "_")), p.get("port").map(|p| p.to_string()).unwrap_or_default()));
            }
        }
        let proto = |p: &Value| p.get("protocol").and_then(Value::as_str).unwrap_or("TCP").to_string();
        out.push((format!("{name}_PORT"), format!("{}://{ip}:{}", proto(first).to_lowercase(), first.get("port").map(|p| p.to_string()).unwrap_or_default())));
        for p in &ports {
            let (port, pr) = (p.get("port").map(|p| p.to_string()).unwrap_or_default(), proto(p));
            let prefix = format!("{name}_PORT_{port}_{pr}");
            out.push((prefix.clone(), format!("{}://{ip}:{port}", pr.to_lowercase())));
            out.push((format!("{prefix}_PROTO"), pr.to_lowercase()));
            out.push((format!("{prefix}_PORT"), port.clone()));
            out.push((format!("{prefix}_ADDR"), ip.to_string()));
        }
    }
    out
}

/// The container's own variables, name and value as written (before `$(VAR)` expansion,
/// which [`nanokube_runtime::command::environment`] does in order).
pub fn container_vars(cluster: &dyn Cluster, pod: &Value, container: &Value, allocatable: &Value) -> Result<Vec<(String, String)>, ConfigError> {
    let ns = pod.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("");
    let cname = container.get("name").and_then(Value::as_str).unwrap_or("");
    let mut out = Vec::new();
    for from in container.get("envFrom").and_then(Value::as_array).into_iter().flatten() {
        let prefix = from.get("prefix").and_then(Value::as_str).unwrap_or("");
        let (plural, src, kind) = match (from.get("configMapRef"), from.get("secretRef")) {
            (Some(c), _) => ("configmaps", c, "configmap"),
            (_, Some(s)) => ("secrets", s, "secret"),
            _ => continue,
        };
        let name = src.get("name").and_then(Value::as_str).unwrap_or("");
        match read_source(cluster, plural, ns, name) {
            Some(data) => {
                for (k, v) in data {
                    out.push((format!("{prefix}{k}"), String::from_utf8_lossy(&v).replace('$', "$$")));
                }
            }
            None if src.get("optional").and_then(Value::as_bool).unwrap_or(false) => {}
            None => return Err(ConfigError(format!("{kind} \"{name}\" not found"))),
        }
    }
    for e in container.get("env").and_then(Value::as_array).into_iter().flatten() {
        let name = e.get("name").and_then(Value::as_str).unwrap_or("").to_string();
        if let Some(v) = e.get("value").and_then(Value::as_str) {
            out.push((name, v.to_string()));
            continue;
        }
        let Some(from) = e.get("valueFrom") else {
            out.push((name, String::new()));
            continue;
        };
        let value = if let Some(f) = from.pointer("/fieldRef/fieldPath").and_then(Value::as_str) {
            field_ref(pod, f).ok_or_else(|| ConfigError(format!("unsupported fieldPath: {f}")))?
        } else if let Some(r) = from.get("resourceFieldRef") {
            resource_field_ref(pod, cname, r, allocatable).ok_or_else(|| ConfigError("invalid resourceFieldRef".into()))?
        } else if let Some((plural, r, kind)) =
            from.get("configMapKeyRef").map(|r| ("configmaps", r, "configmap")).or_else(|| from.get("secretKeyRef").map(|r| ("secrets", r, "secret")))
        {
            let (src, key) = (r.get("name").and_then(Value::as_str).unwrap_or(""), r.get("key").and_then(Value::as_str).unwrap_or(""));
            let optional = r.get("optional").and_then(Value::as_bool).unwrap_or(false);
            match read_source(cluster, plural, ns, src) {
                Some(data) => match data.get(key) {
                    Some(v) => String::from_utf8_lossy(v).into_owned(),
                    None if optional => continue,
                    None => {
                        return Err(ConfigError(format!("couldn't find key {key} in {} {ns}/{src}", if kind == "secret" { "Secret" } else { "ConfigMap" })))
                    }
                },
                None if optional => continue,
                None => return Err(ConfigError(format!("{kind} \"{src}\" not found"))),
            }
        } else {
            String::new()
        };
        // Values from sources are taken literally: `$$` keeps them from being expanded.
        out.push((name, value.replace('$', "$$")));
    }
    Ok(out)
}
