//! `nanokube bench pods-run`: pods that really run. A fresh server (scheduler and node on,
//! as root with runc) gets a test image built from a static busybox (`/bin/busybox`,
//! Debian's busybox-static) and runs 1, 10 and 100 pods of it: the time from each create
//! to its `Ready` condition (p50, p99) and to all of them Ready; then, with 100 pods
//! idle, the server's (node agent's) RSS and CPU and the shims' memory per pod.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use serde_json::{json, Value};

use super::{ms, percentile, Report};
use crate::client::ApiClient;

/// A `docker save` archive of `tag`: one layer with busybox as `/bin/busybox` and `/bin/sh`.
pub(super) fn test_image(busybox: &Path, tag: &str) -> Result<Vec<u8>, String> {
    let bin = std::fs::read(busybox).map_err(|e| format!("{}: {e} (install Debian's busybox-static)", busybox.display()))?;
    let header = || {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h
    };
    let mut layer = tar::Builder::new(Vec::new());
    let mut dir = header();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    layer.append_data(&mut dir, "bin/", &[][..]).map_err(|e| e.to_string())?;
    let mut file = header();
    file.set_mode(0o755);
    file.set_size(bin.len() as u64);
    layer.append_data(&mut file, "bin/busybox", &bin[..]).map_err(|e| e.to_string())?;
    let mut link = header();
    link.set_entry_type(tar::EntryType::Symlink);
    link.set_mode(0o777);
    link.set_size(0);
    layer.append_link(&mut link, "bin/sh", "busybox").map_err(|e| e.to_string())?;
    let layer = layer.into_inner().map_err(|e| e.to_string())?;
    let diff_id = nanokube_runtime::store::sha256(&layer);
    let config =
        json!({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"], "Env": ["PATH=/bin"]}, "rootfs": {"type": "layers", "diff_ids": [diff_id]}});
    let manifest = json!([{"Config": "config.json", "RepoTags": [tag], "Layers": ["l1/layer.tar"]}]);
    let mut archive = tar::Builder::new(Vec::new());
    for (name, data) in [("manifest.json", manifest.to_string().into_bytes()), ("config.json", config.to_string().into_bytes()), ("l1/layer.tar", layer)] {
        let mut h = header();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        archive.append_data(&mut h, name, &data[..]).map_err(|e| e.to_string())?;
    }
    archive.into_inner().map_err(|e| e.to_string())
}

fn pod(name: &str) -> bytes::Bytes {
    let p = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"bench": "pods-run"}},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "c", "image": "benchbox:1.0", "imagePullPolicy": "Never", "command": ["sh", "-c", "while true; do sleep 3600; done"]}]}});
    bytes::Bytes::from(p.to_string())
}

fn is_ready(p: &Value) -> bool {
    p.pointer("/status/conditions").and_then(Value::as_array).is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

/// Watch the namespace's pods until `names` are all Ready; when each became Ready.
async fn ready_times(
    client: &ApiClient,
    ns: &str,
    names: &[String],
    from_rv: &str,
    timeout: Duration,
) -> Result<std::collections::HashMap<String, Instant>, String> {
    let mut body = client.stream(&format!("/api/v1/namespaces/{ns}/pods?watch=true&resourceVersion={from_rv}&timeoutSeconds=600")).await?;
    let mut seen = std::collections::HashMap::new();
    let mut buf: Vec<u8> = Vec::new();
    let deadline = Instant::now() + timeout;
    while seen.len() < names.len() {
        let frame = tokio::time::timeout_at(deadline.into(), body.frame())
            .await
            .map_err(|_| format!("only {} of {} pods Ready after {timeout:?}", seen.len(), names.len()))?;
        let Some(frame) = frame else { break };
        let Ok(data) = frame.map_err(|e| e.to_string())?.into_data() else { continue };
        buf.extend_from_slice(&data);
        while let Some(i) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            let Ok(ev) = serde_json::from_slice::<Value>(&line) else { continue };
            let name = ev.pointer("/object/metadata/name").and_then(Value::as_str).unwrap_or("").to_string();
            if is_ready(&ev["object"]) && names.contains(&name) {
                seen.entry(name).or_insert_with(Instant::now);
            }
        }
    }
    Ok(seen)
}

fn cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = s.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// The shims of the server with data directory `data`: how many, and their summed RSS,
/// PSS (shared pages divided among their users: the binary's pages are shared with the
/// server and every other shim) and private dirty memory (what each one alone costs), KiB.
fn shims_memory(data: &Path) -> (usize, u64, u64, u64) {
    let data = data.to_string_lossy().to_string();
    let (mut n, mut rss, mut pss, mut private) = (0, 0, 0, 0);
    for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(cmd) = std::fs::read(p.path().join("cmdline")) else { continue };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if !(cmd.contains(" shim ") && cmd.contains(&data)) {
            continue;
        }
        let Ok(rollup) = std::fs::read_to_string(p.path().join("smaps_rollup")) else { continue };
        let field = |name: &str| {
            rollup.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        };
        n += 1;
        rss += field("Rss:");
        pss += field("Pss:");
        private += field("Private_Dirty:");
    }
    (n, rss, pss, private)
}

/// Delete the bench's pods and wait until the node has confirmed every deletion.
async fn delete_all(client: &ApiClient, ns: &str, n: usize, report: &mut Report) -> Result<(), String> {
    let t = Instant::now();
    let (code, b) = client.request("DELETE", &format!("/api/v1/namespaces/{ns}/pods?labelSelector=bench%3Dpods-run"), None, None, bytes::Bytes::new()).await?;
    if code != 200 {
        return Err(format!("deleting the pods: {code} {}", String::from_utf8_lossy(&b)));
    }
    loop {
        let (_, list) = client.request("GET", &format!("/api/v1/namespaces/{ns}/pods?labelSelector=bench%3Dpods-run"), None, None, bytes::Bytes::new()).await?;
        let left = serde_json::from_slice::<Value>(&list).ok().and_then(|v| v["items"].as_array().map(Vec::len)).unwrap_or(0);
        if left == 0 {
            break;
        }
        if t.elapsed() > Duration::from_secs(120) {
            return Err(format!("{left} pods still there after 120 s"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    report.add(
        &format!("pods-run: {n} pod(s) deleted until gone (grace 1 s, node confirms)"),
        format!("{} ms", ms(t.elapsed())),
        json!({"pods": n, "ms": ms(t.elapsed())}),
    );
    Ok(())
}

/// Run the scenario against a server this bench started on `data`.
pub async fn pods_run(binary: &Path, data: &Path, kubeconfig: &Path, server_pid: u32, report: &mut Report) -> Result<(), String> {
    let archive = data.join("benchbox.tar");
    std::fs::write(&archive, test_image(Path::new("/bin/busybox"), "benchbox:1.0")?).map_err(|e| e.to_string())?;
    let out = std::process::Command::new(binary).args(["image", "load"]).arg(&archive).arg("--data-dir").arg(data).output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("loading the bench image: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let client = Arc::new(ApiClient::from_kubeconfig(kubeconfig, false)?);
    // The node must be able to run pods.
    let (_, nodes) = client.request("GET", "/api/v1/nodes", None, None, bytes::Bytes::new()).await?;
    let nodes: Value = serde_json::from_slice(&nodes).map_err(|e| e.to_string())?;
    let ready = nodes
        .pointer("/items/0/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .cloned()
        .unwrap_or(Value::Null);
    if ready["status"] != "True" {
        return Err(format!("the node does not run pods here: {}", ready["message"].as_str().unwrap_or("no node")));
    }
    let ns = "default";
    let mut serial = 0;
    for n in [1usize, 10, 100] {
        let (_, list) = client.request("GET", &format!("/api/v1/namespaces/{ns}/pods?limit=1"), None, None, bytes::Bytes::new()).await?;
        let rv = serde_json::from_slice::<Value>(&list)
            .ok()
            .and_then(|v| v.pointer("/metadata/resourceVersion").and_then(Value::as_str).map(String::from))
            .unwrap_or_default();
        let names: Vec<String> = (0..n).map(|i| format!("run-{}", serial + i)).collect();
        serial += n;
        let watcher = {
            let (c, names, rv) = (client.clone(), names.clone(), rv.clone());
            tokio::spawn(async move { ready_times(&c, ns, &names, &rv, Duration::from_secs(300)).await })
        };
        let start = Instant::now();
        let mut created = std::collections::HashMap::new();
        let mut tasks = tokio::task::JoinSet::new();
        for name in &names {
            let (c, name) = (client.clone(), name.clone());
            tasks.spawn(async move {
                let t = Instant::now();
                let (code, b) = c.request("POST", &format!("/api/v1/namespaces/{ns}/pods"), Some("application/json"), None, pod(&name)).await?;
                if code != 201 {
                    return Err(format!("create {name}: {code} {}", String::from_utf8_lossy(&b)));
                }
                Ok::<_, String>((name, t))
            });
        }
        while let Some(r) = tasks.join_next().await {
            let (name, t) = r.map_err(|e| e.to_string())??;
            created.insert(name, t);
        }
        let readies = match watcher.await.map_err(|e| e.to_string())? {
            Ok(r) => r,
            Err(e) => {
                // Say which pods did not become Ready, and what their status says.
                let (_, list) = client.request("GET", &format!("/api/v1/namespaces/{ns}/pods"), None, None, bytes::Bytes::new()).await?;
                let list: Value = serde_json::from_slice(&list).unwrap_or(Value::Null);
                let stuck: Vec<String> = list["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|p| !is_ready(p))
                    .map(|p| format!("{}: {}", p["metadata"]["name"], p["status"]))
                    .collect();
                return Err(format!("{e}; not Ready: {stuck:?}"));
            }
        };
        let all = start.elapsed();
        let mut lat: Vec<Duration> = names.iter().filter_map(|n| Some(readies.get(n)?.duration_since(*created.get(n)?))).collect();
        lat.sort();
        report.add(
            &format!("pods-run: {n} pod(s), create → Ready"),
            format!("p50 {} ms, p99 {} ms; all Ready in {} ms", ms(percentile(&lat, 0.5)), ms(percentile(&lat, 0.99)), ms(all)),
            json!({"pods": n, "p50_ms": ms(percentile(&lat, 0.5)), "p99_ms": ms(percentile(&lat, 0.99)), "all_ms": ms(all)}),
        );
        if n == 100 {
            // (A node takes at most 110 pods, kubelet's maxPods: each round's pods go
            // before the next.)
            // Idle: what 100 running pods cost the server and their shims.
            let rss0 = super::rss_kib(server_pid).unwrap_or(0);
            tokio::time::sleep(Duration::from_secs(2)).await;
            let (t0, w0) = (cpu_ticks(server_pid).unwrap_or(0), Instant::now());
            tokio::time::sleep(Duration::from_secs(10)).await;
            let ticks = cpu_ticks(server_pid).unwrap_or(0).saturating_sub(t0);
            let hz = clock_ticks();
            let cpu_pct = ticks as f64 / hz / w0.elapsed().as_secs_f64() * 100.0;
            let rss = super::rss_kib(server_pid).unwrap_or(0);
            let (shims, rss_kib, pss_kib, private_kib) = shims_memory(data);
            report.add(
                "pods-run: 100 pods idle, server CPU (% of one core) / RSS (MiB)",
                format!(
                    "{cpu_pct:.2}% ({:.3}% per pod) / {:.1} MiB (was {:.1} before the idle 12 s)",
                    cpu_pct / 100.0,
                    rss as f64 / 1024.0,
                    rss0 as f64 / 1024.0
                ),
                json!({"cpu_pct": cpu_pct, "rss_mib": rss as f64 / 1024.0}),
            );
            let per = |kib: u64| kib as f64 / 1024.0 / shims.max(1) as f64;
            report.add(
                "pods-run: shims (one per container), per shim: RSS / PSS / private dirty (MiB)",
                format!("{shims} shims: {:.2} / {:.2} / {:.2}", per(rss_kib), per(pss_kib), per(private_kib)),
                json!({"shims": shims, "rss_mib": per(rss_kib), "pss_mib": per(pss_kib), "private_dirty_mib": per(private_kib)}),
            );
        }
        delete_all(&client, ns, n, report).await?;
    }
    Ok(())
}

/// The kernel's clock ticks per second (`/proc/<pid>/stat` counts in them).
fn clock_ticks() -> f64 {
    // SAFETY: sysconf(3) takes a name and returns a long.
    let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if v > 0 {
        v as f64
    } else {
        100.0
    }
}
