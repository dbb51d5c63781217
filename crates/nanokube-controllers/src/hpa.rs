//! kube-controller-manager's horizontal pod autoscaler (autoscaling/v2), every 15 s, on
//! `Resource` metrics (cpu, memory; `Utilization` of requests or `AverageValue`) read
//! from the `metrics.k8s.io` figures this server serves from its node agent.
//!
//! - Desired replicas: `ceil(ready pods × usage / target)`, unchanged within upstream's
//!   10 % tolerance; the largest over the metrics; then `minReplicas`/`maxReplicas`
//!   (`ScalingLimited`), the default behavior (scale up by at most max(100 %, 4 pods) per
//!   15 s; scale down by the highest recommendation of the last 300 s) or the HPA's own
//!   `behavior` stabilization windows.
//! - The target is scaled through its `spec.replicas` (Deployments, ReplicaSets,
//!   StatefulSets, ReplicationControllers), with a `SuccessfulRescale` event
//!   (`New size: 3; reason: cpu resource utilization (percentage of request) above
//!   target`) and `status.lastScaleTime`.
//! - Conditions `AbleToScale`, `ScalingActive` (`FailedGetResourceMetric` when there are
//!   no figures or a pod has no request, `ScalingDisabled` at zero replicas),
//!   `ScalingLimited`; `currentMetrics`, `currentReplicas`, `desiredReplicas`.
//!
//! Not here: `Pods`, `Object`, `External` and `ContainerResource` metrics (reported as
//! `ScalingActive=False` with the reason `InvalidMetricSourceType`), and custom scale
//! policies beyond stabilization windows (the default rate limits apply).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nanokube_api::selector::LabelSelector;
use nanokube_api::{meta, resources, ApiError};
use nanokube_apiserver::registry::{ListOptions, Registry, WriteOptions};
use nanokube_apiserver::server::ApiServer;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::objects::pods;

const COMPONENT: &str = "horizontal-pod-autoscaler";
/// How often every HPA is evaluated (upstream's `--horizontal-pod-autoscaler-sync-period`).
const PERIOD: Duration = Duration::from_secs(15);
/// Upstream's `--horizontal-pod-autoscaler-tolerance`.
const TOLERANCE: f64 = 0.1;
/// The default scale-down stabilization window.
const DOWN_WINDOW: Duration = Duration::from_secs(300);

fn hpas() -> &'static resources::ResourceDef {
    resources::find("autoscaling", "v2", "horizontalpodautoscalers").expect("built-in resource")
}

/// A resource metric's figures over the target's pods.
struct Measured {
    /// Summed usage (cores or bytes) of the pods with figures.
    usage: f64,
    /// Summed requests of those pods.
    requests: f64,
    /// Pods with figures.
    pods: usize,
}

/// The controller.
pub struct HpaController {
    api: Arc<ApiServer>,
    /// Per HPA: recent recommendations (for stabilization).
    recommendations: Mutex<HashMap<String, Vec<(Instant, i64)>>>,
}

impl HpaController {
    /// A controller reading metrics and objects through `api`.
    pub fn new(api: Arc<ApiServer>) -> Arc<HpaController> {
        Arc::new(HpaController { api, recommendations: Mutex::new(HashMap::new()) })
    }

    fn registry(&self) -> &Registry {
        &self.api.registry
    }

    /// Evaluate every HPA every [`PERIOD`] until `shutdown`.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(PERIOD);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {
                    let Ok(list) = self.registry().list(hpas(), None, &ListOptions::default()) else { continue };
                    for h in &list.items {
                        if let Err(e) = self.sync(h.value()).await {
                            tracing::debug!(hpa = %meta::name(h.value()), "{}", e.message);
                        }
                    }
                }
            }
        }
    }

    /// A resource's usage and requests over the pods `selector` picks in `ns`.
    fn measure(&self, ns: &str, selector: &LabelSelector, resource: &str) -> Result<Measured, String> {
        let metrics = nanokube_apiserver::resource_metrics::list(self.registry(), &self.api.metrics_nodes, pods(), Some(ns), selector.clone())
            .map_err(|e| format!("unable to get metrics for resource {resource}: {}", e.message))?;
        let items = metrics.get("items").and_then(Value::as_array).cloned().unwrap_or_default();
        if items.is_empty() {
            return Err(format!("unable to get metrics for resource {resource}: no metrics returned from resource metrics API"));
        }
        let mut m = Measured { usage: 0.0, requests: 0.0, pods: 0 };
        for item in &items {
            let name = meta::name(item);
            let Ok(pod) = self.registry().get(pods(), ns, name) else { continue };
            let pod = pod.value();
            if pod.pointer("/status/phase").and_then(Value::as_str) != Some("Running") || meta::is_deleting(pod) {
                continue;
            }
            for c in pod.pointer("/spec/containers").and_then(Value::as_array).into_iter().flatten() {
                let request = c.pointer(&format!("/resources/requests/{resource}")).and_then(Value::as_str).and_then(nanokube_api::expressions::parse_quantity);
                match request {
                    Some(r) => m.requests += r,
                    None => return Err(format!("missing request for {resource} in container {} of Pod {name}", c["name"].as_str().unwrap_or(""))),
                }
            }
            let used: f64 = item
                .get("containers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|c| c.pointer(&format!("/usage/{resource}")).and_then(Value::as_str).and_then(nanokube_api::expressions::parse_quantity))
                .sum();
            m.usage += used;
            m.pods += 1;
        }
        if m.pods == 0 {
            return Err(format!("unable to get metrics for resource {resource}: no metrics returned from resource metrics API"));
        }
        Ok(m)
    }

    async fn sync(&self, hpa: &Value) -> Result<(), ApiError> {
        let ns = meta::namespace(hpa);
        let key = format!("{ns}/{}", meta::name(hpa));
        let target_ref = hpa.pointer("/spec/scaleTargetRef").cloned().unwrap_or(json!({}));
        let (group, _) = target_ref.get("apiVersion").and_then(Value::as_str).unwrap_or("").split_once('/').unwrap_or(("", ""));
        let kind = target_ref.get("kind").and_then(Value::as_str).unwrap_or("");
        let name = target_ref.get("name").and_then(Value::as_str).unwrap_or("");
        let now = meta::now_rfc3339();
        let mut status = hpa.get("status").cloned().unwrap_or(json!({}));
        let mut conditions: Vec<Value> = status.get("conditions").and_then(Value::as_array).cloned().unwrap_or_default();
        let mut set = |ty: &str, st: &str, reason: &str, message: &str| {
            let old = conditions.iter().position(|c| c["type"] == ty);
            let since = old.filter(|i| conditions[*i]["status"] == st).and_then(|i| conditions[i].get("lastTransitionTime").cloned()).unwrap_or(json!(now));
            let c = json!({"type": ty, "status": st, "lastTransitionTime": since, "reason": reason, "message": message});
            match old {
                Some(i) => conditions[i] = c,
                None => conditions.push(c),
            }
        };
        let target_def = resources::find_kind(group, kind).filter(|d| d.subresource("scale").is_some());
        let target = target_def.and_then(|d| self.registry().get(d, ns, name).ok().map(|o| (d, o.value().clone())));
        let Some((target_def, target)) = target else {
            set(
                "AbleToScale",
                "False",
                "FailedGetScale",
                &format!("the HPA controller was unable to get the target's current scale: {} \"{name}\" not found", kind.to_lowercase()),
            );
            crate::events::record(self.registry(), COMPONENT, hpa, "Warning", "FailedGetScale", &format!("{} \"{name}\" not found", kind.to_lowercase())).await;
            status["conditions"] = json!(conditions);
            return crate::objects::write_status(self.registry(), hpas(), hpa, status).await;
        };
        let current = target.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
        let min = hpa.pointer("/spec/minReplicas").and_then(Value::as_i64).unwrap_or(1);
        let max = hpa.pointer("/spec/maxReplicas").and_then(Value::as_i64).unwrap_or(1);
        status["currentReplicas"] = json!(current);
        set("AbleToScale", "True", "SucceededGetScale", "the HPA controller was able to get the target's current scale");
        if current == 0 && min != 0 {
            set("ScalingActive", "False", "ScalingDisabled", "scaling is disabled since the replica count of the target is zero");
            status["desiredReplicas"] = json!(0);
            status["conditions"] = json!(conditions);
            return crate::objects::write_status(self.registry(), hpas(), hpa, status).await;
        }
        let selector = LabelSelector::from_object(target.pointer("/spec/selector").unwrap_or(&Value::Null))?;
        let mut desired: Option<i64> = None;
        let mut current_metrics = Vec::new();
        let mut reason_text = String::new();
        let mut failure: Option<(String, String)> = None;
        for metric in hpa.pointer("/spec/metrics").and_then(Value::as_array).cloned().unwrap_or_default() {
            if metric.get("type").and_then(Value::as_str) != Some("Resource") {
                failure = Some((
                    "InvalidMetricSourceType".into(),
                    format!("the HPA was unable to compute the replica count: unsupported metric source type {:?}", metric["type"]),
                ));
                continue;
            }
            let resource = metric.pointer("/resource/name").and_then(Value::as_str).unwrap_or("cpu").to_string();
            let target_spec = metric.pointer("/resource/target").cloned().unwrap_or(json!({}));
            let measured = match self.measure(ns, &selector, &resource) {
                Ok(m) => m,
                Err(why) => {
                    let what = if target_spec.get("averageUtilization").is_some() { "utilization" } else { "usage" };
                    let message = format!("failed to get {resource} {what}: {why}");
                    crate::events::record(self.registry(), COMPONENT, hpa, "Warning", "FailedGetResourceMetric", &message).await;
                    failure = Some(("FailedGetResourceMetric".into(), format!("the HPA was unable to compute the replica count: {message}")));
                    continue;
                }
            };
            let average = measured.usage / measured.pods as f64;
            let (ratio, current_value) = if let Some(t) = target_spec.get("averageUtilization").and_then(Value::as_f64) {
                let utilization = if measured.requests > 0.0 { (measured.usage / measured.requests * 100.0).round() } else { 0.0 };
                reason_text = format!("{resource} resource utilization (percentage of request)");
                (utilization / t, json!({"averageUtilization": utilization as i64, "averageValue": nanokube_api::quota::format_quantity(&resource, average)}))
            } else {
                let t = target_spec.get("averageValue").and_then(Value::as_str).and_then(nanokube_api::expressions::parse_quantity).unwrap_or(1.0);
                reason_text = format!("{resource} resource");
                (average / t, json!({"averageValue": nanokube_api::quota::format_quantity(&resource, average)}))
            };
            current_metrics.push(json!({"type": "Resource", "resource": {"name": resource, "current": current_value}}));
            let proposal = if (ratio - 1.0).abs() <= TOLERANCE { current } else { (ratio * measured.pods as f64).ceil() as i64 };
            desired = Some(desired.map_or(proposal, |d| d.max(proposal)));
        }
        let Some(mut wanted) = desired else {
            let (reason, message) = failure.unwrap_or(("FailedGetResourceMetric".into(), "the HPA was unable to compute the replica count: no metrics".into()));
            set("ScalingActive", "False", &reason, &message);
            status["desiredReplicas"] = json!(current);
            status["conditions"] = json!(conditions);
            return crate::objects::write_status(self.registry(), hpas(), hpa, status).await;
        };
        set("ScalingActive", "True", "ValidMetricFound", &format!("the HPA was able to successfully calculate a replica count from {reason_text}"));
        // Stabilization: scale down only to the highest recommendation of the window.
        let window = hpa.pointer("/spec/behavior/scaleDown/stabilizationWindowSeconds").and_then(Value::as_u64).map(Duration::from_secs).unwrap_or(DOWN_WINDOW);
        let up_window = hpa.pointer("/spec/behavior/scaleUp/stabilizationWindowSeconds").and_then(Value::as_u64).map(Duration::from_secs).unwrap_or_default();
        if let Ok(mut recs) = self.recommendations.lock() {
            let list = recs.entry(key.clone()).or_default();
            list.push((Instant::now(), wanted));
            list.retain(|(t, _)| t.elapsed() <= window.max(up_window));
            let down_floor = list.iter().filter(|(t, _)| t.elapsed() <= window).map(|(_, r)| *r).max().unwrap_or(wanted);
            let up_ceiling = list.iter().filter(|(t, _)| t.elapsed() <= up_window).map(|(_, r)| *r).min().unwrap_or(wanted);
            if wanted < current {
                wanted = down_floor.min(current);
            } else if wanted > current {
                wanted = up_ceiling.max(current);
            }
        }
        // Default scale-up rate: at most max(double, +4) per period.
        wanted = wanted.min((current * 2).max(current + 4));
        let bounded = wanted.clamp(min, max);
        if bounded > wanted {
            set("ScalingLimited", "True", "TooFewReplicas", "the desired replica count is less than the minimum replica count");
        } else if bounded < wanted {
            set("ScalingLimited", "True", "TooManyReplicas", "the desired replica count is more than the maximum replica count");
        } else {
            set("ScalingLimited", "False", "DesiredWithinRange", "the desired count is within the acceptable range");
        }
        let wanted = bounded;
        if wanted != current {
            self.registry()
                .update_with(target_def, ns, name, &WriteOptions::default(), |cur| {
                    let mut next = cur.clone();
                    next["spec"]["replicas"] = json!(wanted);
                    Ok(next)
                })
                .await?;
            let why = if wanted > current { format!("{reason_text} above target") } else { "All metrics below target".to_string() };
            crate::events::record(self.registry(), COMPONENT, hpa, "Normal", "SuccessfulRescale", &format!("New size: {wanted}; reason: {why}")).await;
            set("AbleToScale", "True", "SucceededRescale", &format!("the HPA controller was able to update the target scale to {wanted}"));
            status["lastScaleTime"] = json!(now);
        } else {
            set("AbleToScale", "True", "ReadyForNewScale", "recommended size matches current size");
        }
        status["desiredReplicas"] = json!(wanted);
        status["currentMetrics"] = json!(current_metrics);
        status["conditions"] = json!(conditions);
        if let Some(g) = hpa.pointer("/metadata/generation") {
            status["observedGeneration"] = g.clone();
        }
        crate::objects::write_status(self.registry(), hpas(), hpa, status).await
    }
}
