//! kube-controller-manager's horizontal pod autoscaler (autoscaling/v2), every 15 s, on
//! the five metric source types:
//!
//! - `Resource` and `ContainerResource` (cpu, memory; `Utilization` of requests or
//!   `AverageValue`), from the `metrics.k8s.io` figures this server serves from its node
//!   agent;
//! - `Pods` and `Object`, from the custom metrics API (`custom.metrics.k8s.io/v1beta2`),
//!   and `External`, from the external metrics API (`external.metrics.k8s.io/v1beta1`):
//!   aggregated APIs an adapter serves behind an APIService, asked through the
//!   aggregation layer as the `horizontal-pod-autoscaler` service account. With no
//!   adapter registered the HPA says so (`FailedGetPodsMetric`, …), as upstream's.
//!
//! - Desired replicas: `ceil(ready pods × usage / target)`, unchanged within upstream's
//!   10 % tolerance; the largest over the metrics; then normalized as upstream's: without
//!   a `behavior`, the highest recommendation of the last 300 s, `minReplicas`,
//!   `maxReplicas` and at most max(2 × current, 4) (`ScaleUpLimit`); with one (completed
//!   by the API's defaults), each direction's stabilization window (`ScaleUpStabilized`,
//!   `ScaleDownStabilized`), then its `Pods`/`Percent` policies over their periods,
//!   counting the scale changes made within them, chosen by `selectPolicy` (`Max`,
//!   `Min`, `Disabled`), reported as `ScaleUpLimit`/`ScaleDownLimit` in `ScalingLimited`.
//! - The target is scaled through its `spec.replicas` (Deployments, ReplicaSets,
//!   StatefulSets, ReplicationControllers), with a `SuccessfulRescale` event
//!   (`New size: 3; reason: cpu resource utilization (percentage of request) above
//!   target`) and `status.lastScaleTime`.
//! - Conditions `AbleToScale`, `ScalingActive` (`FailedGet<Type>Metric` when there are
//!   no figures or a pod has no request, `ScalingDisabled` at zero replicas),
//!   `ScalingLimited`; `currentMetrics`, `currentReplicas`, `desiredReplicas`.
//!
//! `Resource` metrics follow upstream's replica calculator ([`crate::replica_calculator`]):
//! unready and just-started pods (for cpu) and pods without figures count as idle on a
//! scale-up and, when missing, as at their request on a scale-down.

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
use crate::replica_calculator::{self, PodSample, Target, TOLERANCE};

const COMPONENT: &str = "horizontal-pod-autoscaler";
/// How often every HPA is evaluated (upstream's `--horizontal-pod-autoscaler-sync-period`).
const PERIOD: Duration = Duration::from_secs(15);
/// The default scale-down stabilization window.
const DOWN_WINDOW: Duration = Duration::from_secs(300);

fn hpas() -> &'static resources::ResourceDef {
    resources::find("autoscaling", "v2", "horizontalpodautoscalers").expect("built-in resource")
}

/// Who the HPA is to the aggregated metrics APIs.
fn hpa_user() -> nanokube_apiserver::authn::UserInfo {
    nanokube_apiserver::authn::UserInfo {
        name: "system:serviceaccount:kube-system:horizontal-pod-autoscaler".into(),
        uid: String::new(),
        groups: vec!["system:serviceaccounts".into(), "system:serviceaccounts:kube-system".into(), "system:authenticated".into()],
        extra: Default::default(),
    }
}

fn encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A metric's `LabelSelector` as Go's `%+v` prints it in upstream's reason text
/// (`nil`, or the generated `String()` form).
fn go_selector(sel: Option<&Value>) -> String {
    let Some(sel) = sel.filter(|s| !s.is_null()) else { return "nil".into() };
    let labels: Vec<String> =
        sel.get("matchLabels").and_then(Value::as_object).into_iter().flatten().map(|(k, v)| format!("{k}: {},", v.as_str().unwrap_or(""))).collect();
    let exprs: Vec<String> = sel
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|e| {
            let values: Vec<&str> = e.get("values").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
            let text = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            format!("LabelSelectorRequirement{{Key:{},Operator:{},Values:[{}],}}", text("key"), text("operator"), values.join(" "))
        })
        .collect();
    format!("&LabelSelector{{MatchLabels:map[string]string{{{}}},MatchExpressions:[]LabelSelectorRequirement{{{}}},}}", labels.join(""), exprs.join(","))
}

/// A Pods or External metric's `MetricIdentifier` for `currentMetrics`: its name and,
/// if the spec has one, its selector.
fn metric_identifier(name: &str, source: &Value) -> Value {
    let mut id = json!({"name": name});
    if let Some(sel) = source.pointer("/metric/selector").filter(|v| !v.is_null()) {
        id["selector"] = sel.clone();
    }
    id
}

/// One metric's recommendation: replicas, its `currentMetrics` entry, and the words
/// naming it in the rescale reason.
struct Proposal {
    replicas: i64,
    current: Value,
    name: String,
}

/// Upstream's tolerance rule: no change within 10 % of the target, else the ratio
/// applied to the pods measured.
fn replicas_for(ratio: f64, current: i64, pods: usize) -> i64 {
    if (ratio - 1.0).abs() <= TOLERANCE {
        current
    } else {
        (ratio * pods as f64).ceil() as i64
    }
}

/// For a total spread over the pods (`AverageValue` of an Object or External metric):
/// upstream's `GetObjectPerPodMetricReplicas`.
fn replicas_per_pod(total: f64, target_average: f64, current: i64, status_replicas: i64) -> i64 {
    let ratio = total / (target_average * status_replicas.max(1) as f64);
    if (ratio - 1.0).abs() <= TOLERANCE {
        current
    } else {
        (total / target_average).ceil() as i64
    }
}

fn quantity(v: &Value) -> Option<f64> {
    v.as_str().and_then(nanokube_api::expressions::parse_quantity).or_else(|| v.as_f64())
}

/// The controller.
pub struct HpaController {
    api: Arc<ApiServer>,
    /// Per HPA: recent recommendations (for stabilization).
    recommendations: Mutex<HashMap<String, Vec<(Instant, i64)>>>,
    /// Per HPA with a `behavior`: recent scale-ups and scale-downs (when, by how many).
    scale_events: Mutex<HashMap<String, ScaleEvents>>,
}

/// An HPA's recent scale changes, for its scaling policies' periods.
#[derive(Default)]
struct ScaleEvents {
    up: Vec<(Instant, i64)>,
    down: Vec<(Instant, i64)>,
}

/// Why the AbleToScale condition says what it says: reason, message.
type Able = (&'static str, &'static str);
/// The ScalingLimited condition: limited, reason, message.
type Limited = (bool, &'static str, &'static str);

const WITHIN_RANGE: Limited = (false, "DesiredWithinRange", "the desired count is within the acceptable range");

/// Replicas changed within the last `period` (upstream's getReplicasChangePerPeriod).
fn change_in_period(events: &[(Instant, i64)], period: Duration) -> i64 {
    events.iter().filter(|(t, _)| t.elapsed() < period).map(|(_, n)| *n).sum()
}

fn policies(rules: &Value) -> Vec<(String, i64, Duration)> {
    rules
        .get("policies")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p.get("type")?.as_str()?.to_string(), p.get("value")?.as_i64()?, Duration::from_secs(p.get("periodSeconds")?.as_u64()?))))
        .collect()
}

/// The most replicas the scale-up rules allow now (upstream's
/// calculateScaleUpLimitWithScalingRules).
fn scale_up_limit(current: i64, events: &[(Instant, i64)], rules: &Value) -> i64 {
    let select = rules.get("selectPolicy").and_then(Value::as_str).unwrap_or("Max");
    if select == "Disabled" {
        return current;
    }
    let proposals = policies(rules).into_iter().map(|(ty, value, period)| {
        let start = current - change_in_period(events, period);
        if ty == "Pods" {
            start + value
        } else {
            (start as f64 * (1.0 + value as f64 / 100.0)).ceil() as i64
        }
    });
    if select == "Min" {
        proposals.min().unwrap_or(i64::from(i32::MAX))
    } else {
        proposals.max().unwrap_or(i64::from(i32::MIN))
    }
}

/// The fewest replicas the scale-down rules allow now (upstream's
/// calculateScaleDownLimitWithBehaviors).
fn scale_down_limit(current: i64, events: &[(Instant, i64)], rules: &Value) -> i64 {
    let select = rules.get("selectPolicy").and_then(Value::as_str).unwrap_or("Max");
    if select == "Disabled" {
        return current;
    }
    let proposals = policies(rules).into_iter().map(|(ty, value, period)| {
        let start = current + change_in_period(events, period);
        if ty == "Pods" {
            start - value
        } else {
            (start as f64 * (1.0 - value as f64 / 100.0)) as i64
        }
    });
    if select == "Min" {
        proposals.max().unwrap_or(i64::from(i32::MIN))
    } else {
        proposals.min().unwrap_or(i64::from(i32::MAX))
    }
}

impl HpaController {
    /// A controller reading metrics and objects through `api`.
    pub fn new(api: Arc<ApiServer>) -> Arc<HpaController> {
        Arc::new(HpaController { api, recommendations: Mutex::new(HashMap::new()), scale_events: Mutex::new(HashMap::new()) })
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
    /// The target's pods as the replica calculator sees them, for `resource` over the
    /// containers measured (`container`, or all), in milli-units; upstream's errors when
    /// the metrics API has nothing or a container lacks the request.
    fn samples(&self, ns: &str, selector: &LabelSelector, resource: &str, container: Option<&str>) -> Result<Vec<PodSample>, String> {
        let metrics = nanokube_apiserver::resource_metrics::list(self.registry(), &self.api.metrics_nodes, pods(), Some(ns), selector.clone())
            .map_err(|e| format!("unable to get metrics for resource {resource}: {}", e.message))?;
        let items = metrics.get("items").and_then(Value::as_array).cloned().unwrap_or_default();
        if items.is_empty() {
            return Err(format!("unable to get metrics for resource {resource}: no metrics returned from resource metrics API"));
        }
        let wanted = |c: &Value| container.is_none_or(|n| c.get("name").and_then(Value::as_str) == Some(n));
        let milli = |v: Option<&Value>| v.and_then(Value::as_str).and_then(nanokube_api::expressions::parse_quantity).map(|q| (q * 1000.0).round() as i64);
        let time = |v: Option<&Value>| v.and_then(Value::as_str).and_then(meta::parse_time);
        let list = self.registry().list(pods(), Some(ns), &ListOptions { labels: selector.clone(), ..Default::default() }).map_err(|e| e.message)?;
        let mut out = Vec::new();
        for pod in &list.items {
            let pod = pod.value();
            let name = meta::name(pod);
            let mut request = 0;
            for c in pod.pointer("/spec/containers").and_then(Value::as_array).into_iter().flatten().filter(|c| wanted(c)) {
                request += milli(c.pointer(&format!("/resources/requests/{resource}")))
                    .ok_or_else(|| format!("missing request for {resource} in container {} of Pod {name}", c["name"].as_str().unwrap_or("")))?;
            }
            let phase = pod.pointer("/status/phase").and_then(Value::as_str).unwrap_or("");
            let ready = pod
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
                .map(|c| (c["status"] == "True", time(c.get("lastTransitionTime"))));
            let metric = items.iter().find(|m| meta::name(m) == name).map(|m| {
                let used = m
                    .get("containers")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter(|c| wanted(c))
                    .filter_map(|c| milli(c.pointer(&format!("/usage/{resource}"))))
                    .sum();
                let window = m.get("window").and_then(Value::as_str).and_then(|w| nanokube_api::schedule::parse_go_duration(w).ok()).unwrap_or_default();
                (used, time(m.get("timestamp")).unwrap_or_else(time::OffsetDateTime::now_utc), window)
            });
            out.push(PodSample {
                ignored: meta::is_deleting(pod) || phase == "Failed",
                pending: phase == "Pending",
                ready,
                start: time(pod.pointer("/status/startTime")),
                metric,
                request,
            });
        }
        Ok(out)
    }

    /// GET a custom or external metric through the aggregation layer as the HPA's service
    /// account. `path` ends in `?` or `&`; the metric's own selector, if any, is added as
    /// the `selector_param` query parameter.
    async fn fetch_metric(&self, mut path: String, source: &Value, selector_param: &str, api: &str) -> Result<Value, String> {
        if let Some(sel) = source.pointer("/metric/selector").filter(|v| !v.is_null()) {
            let sel = LabelSelector::from_object(sel).map_err(|e| e.message)?;
            path.push_str(&format!("{selector_param}={}", encode(&sel.to_string_form())));
        }
        let path = path.trim_end_matches(['?', '&']);
        self.api.aggregator.get_json(self.registry(), path, &hpa_user()).await.map_err(|e| format!("unable to fetch metrics from {api} metrics API: {e}"))
    }

    /// Replicas for an Object or External metric's `value` against its target: an
    /// `averageValue` target divides by the current replicas, a `value` target is a
    /// ratio over the ready pods. Returns the proposal and the `current` status block.
    fn against_target(&self, source: &Value, value: f64, current: i64, status_replicas: i64, ns: &str, selector: &LabelSelector) -> (i64, Value) {
        let target = source.get("target").cloned().unwrap_or(json!({}));
        match target.get("averageValue").and_then(quantity).filter(|t| *t > 0.0) {
            Some(avg) => (
                replicas_per_pod(value, avg, current, status_replicas),
                json!({"averageValue": nanokube_api::quota::format_quantity("", value / status_replicas.max(1) as f64)}),
            ),
            None => {
                let t = target.get("value").and_then(quantity).filter(|t| *t > 0.0).unwrap_or(1.0);
                (replicas_for(value / t, current, self.ready_pods(ns, selector)), json!({"value": nanokube_api::quota::format_quantity("", value)}))
            }
        }
    }

    /// The target's pods that are running and ready (upstream's `getReadyPodsCount`).
    fn ready_pods(&self, ns: &str, selector: &LabelSelector) -> usize {
        let Ok(list) = self.registry().list(pods(), Some(ns), &ListOptions { labels: selector.clone(), ..Default::default() }) else { return 0 };
        let ready = |p: &Value| {
            p.pointer("/status/phase").and_then(Value::as_str) == Some("Running")
                && p.pointer("/status/conditions").and_then(Value::as_array).is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
        };
        list.items.iter().filter(|p| ready(p.value())).count()
    }

    /// One metric's proposal, or the condition reason and message saying why there is none.
    async fn propose(&self, hpa: &Value, metric: &Value, selector: &LabelSelector, current: i64, status_replicas: i64) -> Result<Proposal, (String, String)> {
        let ns = meta::namespace(hpa);
        let ty = metric.get("type").and_then(Value::as_str).unwrap_or("");
        match ty {
            "Resource" | "ContainerResource" => {
                let (key, words, reason) = if ty == "Resource" {
                    ("resource", "resource", "FailedGetResourceMetric")
                } else {
                    ("containerResource", "container resource", "FailedGetContainerResourceMetric")
                };
                let source = metric.get(key).cloned().unwrap_or(json!({}));
                let resource = source.get("name").and_then(Value::as_str).unwrap_or("cpu").to_string();
                let container = source.get("container").and_then(Value::as_str).map(String::from);
                let target_spec = source.get("target").cloned().unwrap_or(json!({}));
                let utilization_target = target_spec.get("averageUtilization").and_then(Value::as_i64);
                let what = if utilization_target.is_some() { "utilization" } else { "usage" };
                let failed = |why: String| (reason.to_string(), format!("failed to get {resource} {what}: {why}"));
                let samples = self.samples(ns, selector, &resource, container.as_deref()).map_err(failed)?;
                let target = match utilization_target {
                    Some(t) => Target::Utilization(t),
                    None => Target::AverageValue(target_spec.get("averageValue").and_then(quantity).map_or(1000, |q| (q * 1000.0).round() as i64)),
                };
                let rec = replica_calculator::recommend(&samples, target, resource == "cpu", current, time::OffsetDateTime::now_utc()).map_err(failed)?;
                let average = nanokube_api::quota::format_quantity(&resource, rec.average as f64 / 1000.0);
                let (current_value, name) = match rec.utilization {
                    Some(u) => (json!({"averageUtilization": u, "averageValue": average}), format!("{resource} {words} utilization (percentage of request)")),
                    None => (json!({"averageValue": average}), format!("{resource} {words}")),
                };
                let mut entry = json!({"name": resource, "current": current_value});
                if let Some(c) = container {
                    entry["container"] = json!(c);
                }
                Ok(Proposal { replicas: rec.replicas, current: json!({"type": ty, key: entry}), name })
            }
            "Pods" => {
                let source = metric.get("pods").cloned().unwrap_or(json!({}));
                let name = source.pointer("/metric/name").and_then(Value::as_str).unwrap_or("").to_string();
                let failed = |why: String| ("FailedGetPodsMetric".to_string(), format!("unable to get metric {name}: {why}"));
                let path = format!("/apis/custom.metrics.k8s.io/v1beta2/namespaces/{ns}/pods/*/{name}?labelSelector={}&", encode(&selector.to_string_form()));
                let list = self.fetch_metric(path, &source, "metricLabelSelector", "custom").await.map_err(failed)?;
                let by_pod: HashMap<String, f64> = list
                    .get("items")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|i| Some((i.pointer("/describedObject/name")?.as_str()?.to_string(), quantity(i.get("value")?)?)))
                    .collect();
                // The target's running pods with a figure.
                let pods =
                    self.registry().list(pods(), Some(ns), &ListOptions { labels: selector.clone(), ..Default::default() }).map_err(|e| failed(e.message))?;
                let values: Vec<f64> = pods
                    .items
                    .iter()
                    .map(|p| p.value())
                    .filter(|p| p.pointer("/status/phase").and_then(Value::as_str) == Some("Running") && !meta::is_deleting(p))
                    .filter_map(|p| by_pod.get(meta::name(p)).copied())
                    .collect();
                if values.is_empty() {
                    return Err(failed("no metrics returned from custom metrics API".into()));
                }
                let average = values.iter().sum::<f64>() / values.len() as f64;
                let target = source.pointer("/target/averageValue").and_then(quantity).filter(|t| *t > 0.0).unwrap_or(1.0);
                let metric_id = metric_identifier(&name, &source);
                Ok(Proposal {
                    replicas: replicas_for(average / target, current, values.len()),
                    current: json!({"type": "Pods", "pods": {"metric": metric_id, "current": {"averageValue": nanokube_api::quota::format_quantity("", average)}}}),
                    name: format!("pods metric {name}"),
                })
            }
            "Object" => {
                let source = metric.get("object").cloned().unwrap_or(json!({}));
                let name = source.pointer("/metric/name").and_then(Value::as_str).unwrap_or("").to_string();
                let failed = |why: String| ("FailedGetObjectMetric".to_string(), format!("unable to get metric {name}: {why}"));
                let described = source.get("describedObject").cloned().unwrap_or(json!({}));
                let (group, _) = described.get("apiVersion").and_then(Value::as_str).unwrap_or("").rsplit_once('/').unwrap_or(("", ""));
                let kind = described.get("kind").and_then(Value::as_str).unwrap_or("");
                let object = described.get("name").and_then(Value::as_str).unwrap_or("");
                let def = resources::find_kind(group, kind).ok_or_else(|| failed(format!("no resource for kind {kind} in group {group:?}")))?;
                let resource = if group.is_empty() { def.plural.to_string() } else { format!("{}.{group}", def.plural) };
                let path = format!("/apis/custom.metrics.k8s.io/v1beta2/namespaces/{ns}/{resource}/{object}/{name}?");
                let list = self.fetch_metric(path, &source, "metricLabelSelector", "custom").await.map_err(failed)?;
                // One object: a MetricValue, or a list of one.
                let item = list.get("items").and_then(Value::as_array).and_then(|i| i.first().cloned()).unwrap_or(list);
                let value = item.get("value").and_then(quantity).ok_or_else(|| failed("no metrics returned from custom metrics API".into()))?;
                let (replicas, current_value) = self.against_target(&source, value, current, status_replicas, ns, selector);
                Ok(Proposal {
                    replicas,
                    current: json!({"type": "Object", "object": {"metric": metric_identifier(&name, &source), "describedObject": described, "current": current_value}}),
                    name: format!("{} metric {name}", kind.to_lowercase()),
                })
            }
            "External" => {
                let source = metric.get("external").cloned().unwrap_or(json!({}));
                let name = source.pointer("/metric/name").and_then(Value::as_str).unwrap_or("").to_string();
                let failed = |why: String| {
                    (
                        "FailedGetExternalMetric".to_string(),
                        format!("unable to get external metric {ns}/{name}/{}: {why}", go_selector(source.pointer("/metric/selector"))),
                    )
                };
                let path = format!("/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/{name}?");
                let list = self.fetch_metric(path, &source, "labelSelector", "external").await.map_err(failed)?;
                let values: Vec<f64> =
                    list.get("items").and_then(Value::as_array).into_iter().flatten().filter_map(|i| i.get("value").and_then(quantity)).collect();
                if values.is_empty() {
                    return Err(failed("no metrics returned from external metrics API".into()));
                }
                let total: f64 = values.iter().sum();
                let (replicas, current_value) = self.against_target(&source, total, current, status_replicas, ns, selector);
                let metric_id = metric_identifier(&name, &source);
                Ok(Proposal {
                    replicas,
                    current: json!({"type": "External", "external": {"metric": metric_id, "current": current_value}}),
                    name: format!("external metric {name}({})", go_selector(source.pointer("/metric/selector"))),
                })
            }
            other => Err(("InvalidMetricSourceType".into(), format!("unsupported metric source type {other:?}"))),
        }
    }

    /// Without a `behavior` (upstream's normalizeDesiredReplicas): the highest
    /// recommendation of the last 5 minutes, then `minReplicas`, `maxReplicas` and the
    /// default rate (at most max(2 × current, 4)).
    fn normalize(&self, key: &str, current: i64, desired: i64, min: i64, max: i64) -> (i64, Able, Limited) {
        let stabilized = match self.recommendations.lock() {
            Ok(mut recs) => {
                let list = recs.entry(key.to_string()).or_default();
                list.retain(|(t, _)| t.elapsed() <= DOWN_WINDOW);
                list.push((Instant::now(), desired));
                list.iter().map(|(_, r)| *r).max().unwrap_or(desired)
            }
            Err(_) => desired,
        };
        let able = if stabilized != desired {
            ("ScaleDownStabilized", "recent recommendations were higher than current one, applying the highest recent recommendation")
        } else {
            ("ReadyForNewScale", "recommended size matches current size")
        };
        let up_limit = (current * 2).max(4);
        let (max_allowed, over) = if max > up_limit {
            (up_limit, ("ScaleUpLimit", "the desired replica count is increasing faster than the maximum scale rate"))
        } else {
            (max, ("TooManyReplicas", "the desired replica count is more than the maximum replica count"))
        };
        let (wanted, limited) = if stabilized < min {
            (min, (true, "TooFewReplicas", "the desired replica count is less than the minimum replica count"))
        } else if stabilized > max_allowed {
            (max_allowed, (true, over.0, over.1))
        } else {
            (stabilized, WITHIN_RANGE)
        };
        (wanted, able, limited)
    }

    /// With a `behavior` (upstream's normalizeDesiredReplicasWithBehaviors): each
    /// direction's stabilization window, then its policies' rate over their periods
    /// (`selectPolicy` Max, Min or Disabled), then `minReplicas`/`maxReplicas`.
    fn normalize_with_behavior(&self, key: &str, behavior: &Value, current: i64, desired: i64, min: i64, max: i64) -> (i64, Able, Limited) {
        let up_rules = behavior.get("scaleUp").cloned().unwrap_or(Value::Null);
        let down_rules = behavior.get("scaleDown").cloned().unwrap_or(Value::Null);
        let window =
            |rules: &Value, default: Duration| rules.get("stabilizationWindowSeconds").and_then(Value::as_u64).map(Duration::from_secs).unwrap_or(default);
        let (up_window, down_window) = (window(&up_rules, Duration::ZERO), window(&down_rules, DOWN_WINDOW));
        let stabilized = match self.recommendations.lock() {
            Ok(mut recs) => {
                let list = recs.entry(key.to_string()).or_default();
                let (mut up, mut down) = (desired, desired);
                for (t, r) in list.iter() {
                    if t.elapsed() < up_window {
                        up = up.min(*r);
                    }
                    if t.elapsed() < down_window {
                        down = down.max(*r);
                    }
                }
                list.retain(|(t, _)| t.elapsed() < up_window.max(down_window));
                list.push((Instant::now(), desired));
                current.max(up).min(down)
            }
            Err(_) => desired,
        };
        let able = if stabilized == desired {
            ("ReadyForNewScale", "recommended size matches current size")
        } else if desired >= current {
            ("ScaleUpStabilized", "recent recommendations were lower than current one, applying the lowest recent recommendation")
        } else {
            ("ScaleDownStabilized", "recent recommendations were higher than current one, applying the highest recent recommendation")
        };
        let events = self.scale_events.lock();
        let empty = ScaleEvents::default();
        let ev = events.as_ref().ok().and_then(|e| e.get(key)).unwrap_or(&empty);
        let (wanted, limited) = if stabilized > current {
            let limit = scale_up_limit(current, &ev.up, &up_rules).max(current);
            let (allowed, reason) = if max > limit {
                (limit, ("ScaleUpLimit", "the desired replica count is increasing faster than the maximum scale rate"))
            } else {
                (max, ("TooManyReplicas", "the desired replica count is more than the maximum replica count"))
            };
            if stabilized > allowed {
                (allowed, (true, reason.0, reason.1))
            } else {
                (stabilized, WITHIN_RANGE)
            }
        } else if stabilized < current {
            let limit = scale_down_limit(current, &ev.down, &down_rules).min(current);
            let (allowed, reason) = if min < limit {
                (limit, ("ScaleDownLimit", "the desired replica count is decreasing faster than the maximum scale rate"))
            } else {
                (min, ("TooFewReplicas", "the desired replica count is less than the minimum replica count"))
            };
            if stabilized < allowed {
                (allowed, (true, reason.0, reason.1))
            } else {
                (stabilized, WITHIN_RANGE)
            }
        } else {
            (stabilized, WITHIN_RANGE)
        };
        (wanted, able, limited)
    }

    /// Note a rescale for the policies' periods (only HPAs with a `behavior` keep them).
    fn store_scale_event(&self, key: &str, behavior: Option<&Value>, from: i64, to: i64) {
        let Some(behavior) = behavior else { return };
        let Ok(mut events) = self.scale_events.lock() else { return };
        let e = events.entry(key.to_string()).or_default();
        let longest = |rules: Option<&Value>| rules.map(policies).unwrap_or_default().iter().map(|p| p.2).max().unwrap_or_default();
        if to > from {
            let keep = longest(behavior.get("scaleUp"));
            e.up.retain(|(t, _)| t.elapsed() < keep);
            e.up.push((Instant::now(), to - from));
        } else {
            let keep = longest(behavior.get("scaleDown"));
            e.down.retain(|(t, _)| t.elapsed() < keep);
            e.down.push((Instant::now(), from - to));
        }
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
        let target = target_def.and_then(|d| self.registry().get(d, ns, name).ok().map(|o| (d, o.to_value())));
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
        let status_replicas = target.pointer("/status/replicas").and_then(Value::as_i64).unwrap_or(current);
        for metric in hpa.pointer("/spec/metrics").and_then(Value::as_array).cloned().unwrap_or_default() {
            match self.propose(hpa, &metric, &selector, current, status_replicas).await {
                Ok(p) => {
                    current_metrics.push(p.current);
                    if desired.is_none_or(|d| p.replicas > d) {
                        reason_text = p.name;
                    }
                    desired = Some(desired.map_or(p.replicas, |d| d.max(p.replicas)));
                }
                Err((reason, message)) => {
                    if reason != "InvalidMetricSourceType" {
                        crate::events::record(self.registry(), COMPONENT, hpa, "Warning", &reason, &message).await;
                    }
                    // Upstream reports the first metric that failed.
                    failure.get_or_insert((reason, format!("the HPA was unable to compute the replica count: {message}")));
                }
            }
        }
        // With a metric missing, the others may scale up but never down (upstream's
        // computeReplicasForMetrics).
        let desired = desired.filter(|d| failure.is_none() || *d >= current);
        let Some(wanted) = desired else {
            let (reason, message) = failure.unwrap_or(("FailedGetResourceMetric".into(), "the HPA was unable to compute the replica count: no metrics".into()));
            set("ScalingActive", "False", &reason, &message);
            status["desiredReplicas"] = json!(current);
            status["conditions"] = json!(conditions);
            return crate::objects::write_status(self.registry(), hpas(), hpa, status).await;
        };
        set("ScalingActive", "True", "ValidMetricFound", &format!("the HPA was able to successfully calculate a replica count from {reason_text}"));
        let (wanted, able, limited) = match hpa.pointer("/spec/behavior").filter(|b| b.is_object()) {
            None => self.normalize(&key, current, wanted, min, max),
            Some(behavior) => self.normalize_with_behavior(&key, behavior, current, wanted, min, max),
        };
        set("AbleToScale", "True", able.0, able.1);
        set("ScalingLimited", if limited.0 { "True" } else { "False" }, limited.1, limited.2);
        if wanted != current {
            self.registry()
                .update_with(target_def, ns, name, &WriteOptions::default(), |cur| {
                    let mut next = cur.clone();
                    next["spec"]["replicas"] = json!(wanted);
                    Ok(next)
                })
                .await?;
            self.store_scale_event(&key, hpa.pointer("/spec/behavior").filter(|b| b.is_object()), current, wanted);
            let why = if wanted > current { format!("{reason_text} above target") } else { "All metrics below target".to_string() };
            crate::events::record(self.registry(), COMPONENT, hpa, "Normal", "SuccessfulRescale", &format!("New size: {wanted}; reason: {why}")).await;
            set("AbleToScale", "True", "SucceededRescale", &format!("the HPA controller was able to update the target scale to {wanted}"));
            status["lastScaleTime"] = json!(now);
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
