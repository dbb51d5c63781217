//! The HPA's replica count for a `Resource` or `ContainerResource` metric, as upstream's
//! replica calculator (`GetResourceReplicas`, `GetRawResourceReplicas`) works it out
//! from the target's pods: pods being deleted or failed are ignored; pending pods, and
//! for cpu pods not ready or just started, are *unready*; pods without a figure are
//! *missing*. The ratio is first taken over the pods with figures; then, if unready
//! pods exist and it says scale up, they count as using nothing, and missing pods count
//! as using nothing on a scale-up and their full request (or the target, when higher)
//! on a scale-down. A change of direction from that, or one within the tolerance,
//! keeps the current count. Figures are in milli-units, as upstream's `MilliValue`s.

use std::time::Duration;

use time::OffsetDateTime;

/// How long after its start a pod's cpu figures may be those of its start-up
/// (upstream's `--horizontal-pod-autoscaler-cpu-initialization-period`).
pub const CPU_INITIALIZATION_PERIOD: Duration = Duration::from_secs(300);
/// How long after its start a pod that never was ready is taken as not yet ready
/// (`--horizontal-pod-autoscaler-initial-readiness-delay`).
pub const INITIAL_READINESS_DELAY: Duration = Duration::from_secs(30);
/// `--horizontal-pod-autoscaler-tolerance`.
pub const TOLERANCE: f64 = 0.1;

/// One pod of the target, as the calculator needs it.
#[derive(Debug, Clone)]
pub struct PodSample {
    /// Being deleted, or `Failed`.
    pub ignored: bool,
    /// `Pending`.
    pub pending: bool,
    /// Its `Ready` condition: whether true, and when it last changed.
    pub ready: Option<(bool, Option<OffsetDateTime>)>,
    /// `status.startTime`.
    pub start: Option<OffsetDateTime>,
    /// Its figure (milli-units), when it was taken and over what window.
    pub metric: Option<(i64, OffsetDateTime, Duration)>,
    /// Its request (milli-units) of the resource, over the containers measured.
    pub request: i64,
}

/// What the metric aims at.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// Percent of the requests.
    Utilization(i64),
    /// An average per pod (milli-units).
    AverageValue(i64),
}

/// The outcome: the replica count, the utilization (percent, for a utilization
/// target) and the average per pod with figures (milli-units).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recommendation {
    /// Replicas.
    pub replicas: i64,
    /// Percent of requests (utilization targets).
    pub utilization: Option<i64>,
    /// The raw average per pod, milli-units.
    pub average: i64,
}

enum Group {
    Ready,
    Unready,
    Missing,
    Ignored,
}

fn group(p: &PodSample, cpu: bool, now: OffsetDateTime) -> Group {
    if p.ignored {
        return Group::Ignored;
    }
    if p.pending {
        return Group::Unready;
    }
    let Some((_, taken, window)) = p.metric else { return Group::Missing };
    if cpu {
        let unready = match (p.ready, p.start) {
            (Some((ready, changed)), Some(start)) => {
                let changed = changed.unwrap_or(start);
                if start + CPU_INITIALIZATION_PERIOD > now {
                    // Still starting: only a figure taken a whole window after becoming
                    // ready counts.
                    !ready || taken < changed + window
                } else {
                    // Unready and never ready since its start.
                    !ready && start + INITIAL_READINESS_DELAY > changed
                }
            }
            _ => true,
        };
        if unready {
            return Group::Unready;
        }
    }
    Group::Ready
}

/// The ratio of usage to target over `values` (pod index → milli-units): for
/// utilization, over the pods' requests; the utilization and average with it.
fn ratio(values: &[(usize, i64)], pods: &[PodSample], target: Target) -> Result<(f64, Option<i64>, i64), String> {
    match target {
        Target::Utilization(t) => {
            let (used, requested): (i64, i64) = values.iter().fold((0, 0), |(u, r), (i, v)| (u + v, r + pods[*i].request));
            if requested == 0 {
                return Err("no metrics returned matched known pods".into());
            }
            let utilization = used * 100 / requested;
            Ok((utilization as f64 / t.max(1) as f64, Some(utilization), used / values.len().max(1) as i64))
        }
        Target::AverageValue(t) => {
            let used: i64 = values.iter().map(|(_, v)| v).sum();
            let average = used / values.len().max(1) as i64;
            Ok((used as f64 / values.len().max(1) as f64 / t.max(1) as f64, None, average))
        }
    }
}

/// Upstream's calculation for `current` replicas and the target's `pods`; `cpu` turns on
/// the readiness rules.
pub fn recommend(pods: &[PodSample], target: Target, cpu: bool, current: i64, now: OffsetDateTime) -> Result<Recommendation, String> {
    let mut ready_count = 0i64;
    let (mut unready, mut missing, mut values) = (Vec::new(), Vec::new(), Vec::new());
    for (i, p) in pods.iter().enumerate() {
        match group(p, cpu, now) {
            Group::Ignored => {}
            Group::Unready => unready.push(i),
            Group::Missing => missing.push(i),
            Group::Ready => {
                ready_count += 1;
                if let Some((v, _, _)) = p.metric {
                    values.push((i, v));
                }
            }
        }
    }
    if values.is_empty() {
        return Err("did not receive metrics for targeted pods (pods might be unready)".into());
    }
    let (usage_ratio, utilization, average) = ratio(&values, pods, target)?;
    let scale_up_with_unready = !unready.is_empty() && usage_ratio > 1.0;
    let result = |replicas| Recommendation { replicas, utilization, average };
    if !scale_up_with_unready && missing.is_empty() {
        if (1.0 - usage_ratio).abs() <= TOLERANCE {
            return Ok(result(current));
        }
        return Ok(result((usage_ratio * ready_count as f64).ceil() as i64));
    }
    if usage_ratio < 1.0 {
        for &i in &missing {
            let fallback = match target {
                Target::Utilization(t) => pods[i].request * t.max(100) / 100,
                Target::AverageValue(t) => t,
            };
            values.push((i, fallback));
        }
    } else if usage_ratio > 1.0 {
        values.extend(missing.iter().map(|&i| (i, 0)));
    }
    if scale_up_with_unready {
        values.extend(unready.iter().map(|&i| (i, 0)));
    }
    let (new_ratio, _, _) = ratio(&values, pods, target)?;
    if (1.0 - new_ratio).abs() <= TOLERANCE || (usage_ratio < 1.0 && new_ratio > 1.0) || (usage_ratio > 1.0 && new_ratio < 1.0) {
        return Ok(result(current));
    }
    let replicas = (new_ratio * values.len() as f64).ceil() as i64;
    if (new_ratio < 1.0 && replicas > current) || (new_ratio > 1.0 && replicas < current) {
        return Ok(result(current));
    }
    Ok(result(replicas))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
    }

    /// A pod started `age` ago, ready (or not) since `since` ago, using `milli` of 1000
    /// requested.
    fn pod(age: u64, ready: bool, since: u64, milli: Option<i64>) -> PodSample {
        let t = now();
        PodSample {
            ignored: false,
            pending: false,
            ready: Some((ready, Some(t - Duration::from_secs(since)))),
            start: Some(t - Duration::from_secs(age)),
            metric: milli.map(|m| (m, t, Duration::from_secs(15))),
            request: 1000,
        }
    }

    #[test]
    fn all_ready_pods_scale_by_the_ratio() {
        let pods = vec![pod(600, true, 600, Some(1500)), pod(600, true, 600, Some(1500))];
        let r = recommend(&pods, Target::Utilization(50), true, 2, now()).unwrap();
        assert_eq!(r, Recommendation { replicas: 6, utilization: Some(150), average: 1500 });
        // Within 10 % of the target: unchanged.
        let pods = vec![pod(600, true, 600, Some(520)), pod(600, true, 600, Some(520))];
        assert_eq!(recommend(&pods, Target::Utilization(50), true, 2, now()).unwrap().replicas, 2);
    }

    #[test]
    fn unready_pods_count_as_idle_on_a_scale_up() {
        // Two busy ready pods at 100 % of a 50 % target; a third just started and not
        // ready, also busy: left out, then counted as 0 → (200+0)/3 % = 66 % → ceil(1.33×3)=4.
        let pods = vec![pod(600, true, 600, Some(1000)), pod(600, true, 600, Some(1000)), pod(10, false, 10, Some(1000))];
        let r = recommend(&pods, Target::Utilization(50), true, 3, now()).unwrap();
        assert_eq!(r.replicas, 4);
        assert_eq!(r.utilization, Some(100), "reported over the ready pods");
        // For memory the readiness rules do not apply: all three count, 200 % → 6.
        assert_eq!(recommend(&pods, Target::Utilization(50), false, 3, now()).unwrap().replicas, 6);
    }

    #[test]
    fn missing_pods_count_against_the_direction() {
        // Scale-down at 20 %: a pod without figures counts as using its full request →
        // (200+200+1000)/3 = 46 % of a 50 % target: within tolerance, unchanged.
        let pods = vec![pod(600, true, 600, Some(200)), pod(600, true, 600, Some(200)), pod(600, true, 600, None)];
        assert_eq!(recommend(&pods, Target::Utilization(50), true, 3, now()).unwrap().replicas, 3);
        // Scale-up at 300 %: the missing pod counts as idle → 200 % → ceil(2×3)=6.
        let pods = vec![pod(600, true, 600, Some(1500)), pod(600, true, 600, Some(1500)), pod(600, true, 600, None)];
        assert_eq!(recommend(&pods, Target::Utilization(50), true, 3, now()).unwrap().replicas, 6);
        // A change of direction from the fallback keeps the count.
        let pods = vec![pod(600, true, 600, Some(400)), pod(600, true, 600, None)];
        assert_eq!(recommend(&pods, Target::Utilization(50), true, 2, now()).unwrap().replicas, 2);
    }

    #[test]
    fn no_usable_figure_is_an_error() {
        let pods = vec![pod(10, false, 10, Some(1000))];
        assert_eq!(recommend(&pods, Target::Utilization(50), true, 1, now()).unwrap_err(), "did not receive metrics for targeted pods (pods might be unready)");
        let mut failed = pod(600, true, 600, Some(1000));
        failed.ignored = true;
        assert!(recommend(&[failed], Target::AverageValue(500), false, 1, now()).is_err());
    }
}
