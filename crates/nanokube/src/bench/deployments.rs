//! The `deployments` scenario: N Deployments of 3 replicas on a fresh server whose pods
//! run on simulated nodes (Ready at once): how long until every Deployment is
//! Available, then the server's CPU and RSS at rest (the controllers idle when nothing
//! changes).

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};

use super::{ensure_namespace, process_cpu, rss_kib, Report};
use crate::client::ApiClient;

const REPLICAS: usize = 3;

fn deployment(i: usize) -> Bytes {
    Bytes::from(
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": format!("web-{i}")},
            "spec": {"replicas": REPLICAS, "selector": {"matchLabels": {"app": format!("web-{i}")}},
                "template": {"metadata": {"labels": {"app": format!("web-{i}")}},
                    "spec": {"nodeSelector": {"nanokube.io/simulated": "true"},
                        "tolerations": [{"key": "nanokube.io/simulated", "operator": "Exists", "effect": "NoSchedule"}],
                        "containers": [{"name": "app", "image": "registry.example/app:1.0", "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}}},
        })
        .to_string(),
    )
}

/// Run the scenario against the server at `kubeconfig` (process `server_pid`).
pub async fn deployments(n: usize, kubeconfig: &Path, server_pid: u32, report: &mut Report) -> Result<(), String> {
    let client = ApiClient::from_kubeconfig(kubeconfig, false)?;
    let ns = "default";
    ensure_namespace(&client, ns).await?;
    let start = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let (client, next) = (ApiClient::from_kubeconfig(kubeconfig, false)?, next.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, String>(());
                }
                let (code, b) = client.request("POST", "/apis/apps/v1/namespaces/default/deployments", Some("application/json"), None, deployment(i)).await?;
                if code != 201 {
                    return Err(format!("create deployment: {code} {}", String::from_utf8_lossy(&b)));
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| e.to_string())??;
    }
    let created = start.elapsed();
    report.add(
        &format!("deployments: {n} × {REPLICAS} created (32 clients)"),
        format!("{:.1} s", created.as_secs_f64()),
        json!({"deployments": n, "seconds": created.as_secs_f64()}),
    );
    // Poll until every one reports Available with all replicas.
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut last_report = Instant::now();
    let available = loop {
        let (code, body) = client.request("GET", "/apis/apps/v1/namespaces/default/deployments", None, Some("application/json"), Bytes::new()).await?;
        if code != 200 {
            return Err(format!("list deployments: {code}"));
        }
        let list: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        let ready = list["items"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|d| {
                        d.pointer("/status/availableReplicas").and_then(Value::as_u64) == Some(REPLICAS as u64)
                            && d.pointer("/status/conditions")
                                .and_then(Value::as_array)
                                .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Available" && c["status"] == "True"))
                    })
                    .count()
            })
            .unwrap_or(0);
        if ready >= n {
            break start.elapsed();
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            println!("  ... {ready} of {n} Deployments Available after {:.0} s", start.elapsed().as_secs_f64());
            last_report = Instant::now();
        }
        if Instant::now() > deadline {
            return Err(format!("only {ready} of {n} Deployments Available after 600 s"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    report.add(
        &format!("deployments: {n} × {REPLICAS} all Available (target 30 s)"),
        format!("{:.1} s after the first create", available.as_secs_f64()),
        json!({"deployments": n, "replicas": REPLICAS, "seconds": available.as_secs_f64()}),
    );
    // At rest: the server's CPU over 10 s with nothing changing, once the writes the
    // rollout queued (events, statuses) have drained (30 s).
    tokio::time::sleep(Duration::from_secs(30)).await;
    let (c0, t0) = (process_cpu(server_pid), Instant::now());
    tokio::time::sleep(Duration::from_secs(10)).await;
    if let (Some(c0), Some(c1)) = (c0, process_cpu(server_pid)) {
        let pct = (c1.saturating_sub(c0)).as_secs_f64() / t0.elapsed().as_secs_f64() * 100.0;
        report.add("deployments: server CPU at rest, 10 s from 30 s after (target < 1 %)", format!("{pct:.2} %"), json!(pct));
    }
    if let Some(rss) = rss_kib(server_pid) {
        report.add(&format!("deployments: server RSS with {n} Deployments (MiB)"), format!("{:.0}", rss as f64 / 1024.0), json!(rss as f64 / 1024.0));
    }
    Ok(())
}
