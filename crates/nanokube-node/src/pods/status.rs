//! The pod status as kubelet's `generateAPIPodStatus` and `getPhase` make it: phase,
//! conditions (`PodReadyToStartContainers`, `Initialized`, `Ready`, `ContainersReady`,
//! then the scheduler's `PodScheduled` kept), IPs, start time, and a status per
//! container with state, last state, readiness and restart count.

use serde_json::{json, Map, Value};

use super::worker::{ContainerState, Kind};

/// What the status is made from.
pub struct Inputs<'a> {
    /// The pod as stored.
    pub pod: &'a Value,
    /// Per container, in spec order (init containers first).
    pub containers: &'a [ContainerState],
    /// Whether the sandbox exists.
    pub sandbox_ready: bool,
    /// The pod's IP, once it has one.
    pub pod_ip: Option<String>,
    /// The node's IP.
    pub host_ip: String,
    /// When the node first acknowledged the pod.
    pub start_time: Option<String>,
    /// Why the pod is waiting before any container could be made (sandbox or volumes).
    pub blocked: Option<(String, String)>,
    /// What the node admitted for each container (`allocatedResources`).
    pub allocation: &'a super::resize::Allocation,
    /// kubelet's resize conditions (`PodResizePending`, `PodResizeInProgress`).
    pub resize_conditions: &'a [Value],
}

fn restart_policy(pod: &Value) -> &str {
    pod.pointer("/spec/restartPolicy").and_then(Value::as_str).unwrap_or("Always")
}

/// Whether a finished container of this kind is started again under the pod's policy.
pub fn restarts(kind: Kind, policy: &str, exit_code: i32) -> bool {
    match kind {
        Kind::Sidecar => true,
        Kind::Init => policy != "Never" && exit_code != 0,
        Kind::Regular => policy == "Always" || (policy == "OnFailure" && exit_code != 0),
        Kind::Ephemeral => false,
    }
}

fn terminated(f: &super::worker::Finished) -> Value {
    let mut t = Map::new();
    t.insert("exitCode".into(), json!(f.exit.exit_code));
    // kubelet leaves `signal` unset (the CRI reports 128 + signal as the exit code).
    let reason = f.exit.reason.clone().unwrap_or_else(|| if f.exit.exit_code == 0 { "Completed".into() } else { "Error".into() });
    t.insert("reason".into(), json!(reason));
    if let Some(m) = &f.exit.message {
        t.insert("message".into(), json!(m));
    }
    t.insert("startedAt".into(), f.exit.started_at.as_deref().map(trim_nanos).map(Value::String).unwrap_or(Value::Null));
    t.insert("finishedAt".into(), json!(trim_nanos(&f.exit.finished_at)));
    t.insert("containerID".into(), json!(format!("{}://{}", super::worker::RUNTIME_NAME, f.id)));
    json!({"terminated": t})
}

/// API times have whole seconds.
fn trim_nanos(t: &str) -> String {
    match t.find('.') {
        Some(dot) if t.ends_with('Z') => format!("{}Z", &t[..dot]),
        _ => t.to_string(),
    }
}

/// Whether the pod's phase is final: every container is done and none will restart.
pub fn finished(pod: &Value, containers: &[ContainerState]) -> bool {
    matches!(phase(pod, containers), "Succeeded" | "Failed")
}

/// kubelet's `getPhase`.
pub fn phase(pod: &Value, containers: &[ContainerState]) -> &'static str {
    let policy = restart_policy(pod);
    let mut pending_init = false;
    for c in containers.iter().filter(|c| matches!(c.kind, Kind::Init | Kind::Sidecar)) {
        match c.kind {
            Kind::Sidecar => {
                if !(c.init_done || (c.running.is_some() && c.started)) {
                    pending_init = true;
                }
            }
            _ => {
                if c.init_done {
                    continue;
                }
                if let (None, Some(last)) = (&c.running, &c.last) {
                    if last.exit.exit_code != 0 && policy == "Never" {
                        return "Failed";
                    }
                }
                pending_init = true;
            }
        }
    }
    if pending_init {
        return "Pending";
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for c in containers.iter().filter(|c| c.kind == Kind::Regular) {
        // One stopped by a resize that restarts it is about to run again.
        if c.running.is_some() || c.resize_restart {
            running += 1;
        } else if let Some(last) = &c.last {
            stopped += 1;
            if last.exit.exit_code == 0 {
                succeeded += 1;
            }
        } else {
            waiting += 1;
        }
    }
    if waiting > 0 {
        return "Pending";
    }
    if running > 0 {
        return "Running";
    }
    if stopped > 0 {
        if policy == "Always" {
            return "Running";
        }
        if stopped == succeeded {
            return "Succeeded";
        }
        if policy == "Never" {
            return "Failed";
        }
        // OnFailure: the failed ones are being restarted.
        let restarting = containers.iter().any(|c| c.kind == Kind::Regular && c.last.as_ref().is_some_and(|l| l.exit.exit_code != 0));
        return if restarting { "Running" } else { "Succeeded" };
    }
    "Pending"
}

fn container_status(c: &ContainerState, pod: &Value, init_pending: bool, blocked: &Option<(String, String)>, allocation: &super::resize::Allocation) -> Value {
    let policy = restart_policy(pod);
    let (state, last_state) = match (&c.running, &c.last) {
        (Some(r), last) => (json!({"running": {"startedAt": trim_nanos(&r.started_at)}}), last.as_ref().map(terminated)),
        (None, Some(last)) => {
            let will_restart = (restarts(c.kind, policy, last.exit.exit_code) || c.resize_restart) && !c.init_done && !c.stopped_for_good;
            if will_restart {
                let (reason, message) = c.waiting.clone().unwrap_or_else(|| ("ContainerCreating".into(), String::new()));
                let mut w = json!({"reason": reason});
                if !message.is_empty() {
                    w["message"] = json!(message);
                }
                (json!({"waiting": w}), Some(terminated(last)))
            } else {
                (terminated(last), c.previous.as_ref().map(terminated))
            }
        }
        (None, None) => {
            let (reason, message) = match (&c.waiting, blocked) {
                (Some(w), _) => w.clone(),
                (None, Some(_)) => ("ContainerCreating".into(), String::new()),
                (None, None) if init_pending => ("PodInitializing".into(), String::new()),
                (None, None) => ("ContainerCreating".into(), String::new()),
            };
            let mut w = json!({"reason": reason});
            if !message.is_empty() {
                w["message"] = json!(message);
            }
            (json!({"waiting": w}), None)
        }
    };
    let ready = match c.kind {
        Kind::Init => c.init_done,
        Kind::Ephemeral => false,
        _ => c.running.is_some() && c.ready,
    };
    let mut s = json!({
        "name": c.name,
        "state": state,
        "lastState": last_state.unwrap_or_else(|| json!({})),
        "ready": ready,
        "restartCount": c.restart_count(),
        "image": c.image,
        "imageID": c.image_id,
        "started": c.running.is_some() && c.started,
    });
    let id = c.running.as_ref().map(|r| r.id.clone()).or_else(|| c.last.as_ref().map(|l| l.id.clone()));
    if let Some(id) = id {
        s["containerID"] = json!(format!("{}://{id}", super::worker::RUNTIME_NAME));
    }
    // In-place resize: the requests the node admitted, and what a running container's
    // cgroup has.
    if let Some(requests) = allocation.0.get(&c.name).and_then(|a| a.requests.as_ref()).filter(|r| !r.is_empty()) {
        s["allocatedResources"] = json!(requests);
    }
    if let Some(applied) = c.running.as_ref().and_then(|r| r.applied.as_ref().or_else(|| allocation.0.get(&c.name))) {
        s["resources"] = super::resize::status_resources(applied);
    }
    s
}

fn condition(ty: &str, ok: bool, reason: Option<&str>, message: Option<String>) -> Value {
    let mut c = json!({"type": ty, "status": if ok { "True" } else { "False" }, "lastProbeTime": null, "lastTransitionTime": null});
    if let Some(r) = reason {
        c["reason"] = json!(r);
    }
    if let Some(m) = message {
        c["message"] = json!(m);
    }
    c
}

/// The status kubelet would write now (transition times filled in by [`merge`]).
pub fn build(i: &Inputs<'_>) -> Value {
    let pod = i.pod;
    let phase = phase(pod, i.containers);
    let done = matches!(phase, "Succeeded" | "Failed");
    let init_incomplete: Vec<&str> = i
        .containers
        .iter()
        .filter(|c| match c.kind {
            Kind::Init => !c.init_done,
            Kind::Sidecar => !(c.init_done || (c.running.is_some() && c.started)),
            Kind::Regular | Kind::Ephemeral => false,
        })
        .map(|c| c.name.as_str())
        .collect();
    // Ephemeral containers never count for readiness.
    let unready: Vec<&str> =
        i.containers.iter().filter(|c| matches!(c.kind, Kind::Regular | Kind::Sidecar) && !(c.running.is_some() && c.ready)).map(|c| c.name.as_str()).collect();
    let list = |v: &[&str]| format!("[{}]", v.join(" "));
    let initialized = if init_incomplete.is_empty() {
        condition("Initialized", true, done.then_some("PodCompleted"), None)
    } else {
        condition("Initialized", false, Some("ContainersNotInitialized"), Some(format!("containers with incomplete status: {}", list(&init_incomplete))))
    };
    let ready_pair = |ty: &str| {
        if done {
            condition(ty, false, Some("PodCompleted"), None)
        } else if unready.is_empty() {
            condition(ty, true, None, None)
        } else {
            condition(ty, false, Some("ContainersNotReady"), Some(format!("containers with unready status: {}", list(&unready))))
        }
    };
    let mut conditions =
        vec![condition("PodReadyToStartContainers", i.sandbox_ready && !done, None, None), initialized, ready_pair("Ready"), ready_pair("ContainersReady")];
    conditions.extend(i.resize_conditions.iter().cloned());
    let init_pending = !init_incomplete.is_empty();
    let statuses = |kinds: &[Kind]| -> Vec<Value> {
        i.containers
            .iter()
            .filter(|c| kinds.contains(&c.kind))
            .map(|c| container_status(c, pod, init_pending && c.kind == Kind::Regular, &i.blocked, i.allocation))
            .collect()
    };
    let mut status = json!({
        "phase": phase,
        "conditions": conditions,
        "hostIP": i.host_ip,
        "hostIPs": [{"ip": i.host_ip}],
        "containerStatuses": statuses(&[Kind::Regular]),
    });
    if let Some(ip) = &i.pod_ip {
        status["podIP"] = json!(ip);
        status["podIPs"] = json!([{"ip": ip}]);
    }
    if let Some(t) = &i.start_time {
        status["startTime"] = json!(t);
    }
    let init = statuses(&[Kind::Init, Kind::Sidecar]);
    if !init.is_empty() {
        status["initContainerStatuses"] = json!(init);
    }
    let ephemeral = statuses(&[Kind::Ephemeral]);
    if !ephemeral.is_empty() {
        status["ephemeralContainerStatuses"] = json!(ephemeral);
    }
    status
}

/// The pod with `status` written in, as kubelet's status manager merges it: conditions
/// it does not own (the scheduler's, readiness gates') kept after its own; a condition
/// that did not change keeps its transition time; fields others own (`qosClass`,
/// `nominatedNodeName`) kept.
pub fn merge(current: &Value, status: &Value, now: &str) -> Value {
    let mut next = current.clone();
    let old = current.get("status").cloned().unwrap_or_else(|| json!({}));
    let mut merged = old.as_object().cloned().unwrap_or_default();
    for k in [
        "phase",
        "reason",
        "message",
        "hostIP",
        "hostIPs",
        "podIP",
        "podIPs",
        "startTime",
        "containerStatuses",
        "initContainerStatuses",
        "ephemeralContainerStatuses",
    ] {
        match status.get(k) {
            Some(v) => {
                merged.insert(k.into(), v.clone());
            }
            None => {
                merged.remove(k);
            }
        }
    }
    let old_conditions: Vec<Value> = old.get("conditions").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut conditions = Vec::new();
    for c in status.get("conditions").and_then(Value::as_array).into_iter().flatten() {
        let mut c = c.clone();
        let same = old_conditions.iter().find(|o| o.get("type") == c.get("type") && o.get("status") == c.get("status"));
        c["lastTransitionTime"] = same.and_then(|o| o.get("lastTransitionTime").cloned()).unwrap_or_else(|| json!(now));
        conditions.push(c);
    }
    let mut mine: Vec<Value> = conditions.iter().map(|c| c["type"].clone()).collect();
    // The resize conditions are kubelet's even when they no longer hold.
    mine.extend(super::resize::CONDITIONS.iter().map(|t| json!(t)));
    conditions.extend(old_conditions.into_iter().filter(|o| !mine.contains(&o["type"])));
    merged.insert("conditions".into(), Value::Array(conditions));
    next["status"] = Value::Object(merged);
    next
}
