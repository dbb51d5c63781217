//! Pods run on the node as real containers (runc, overlay root filesystems from the image
//! store, their own network and IPC namespaces), driven with the real kubectl: status,
//! events and logs as kubelet gives them, probes, restarts with kubelet's back-off, init
//! containers and sidecars, env and volumes, graceful deletion, and what a crash of the
//! server leaves (containers keep running and are adopted; nothing is left once the pods
//! are gone). The image is built here from Debian's busybox-static.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{build_image, eventually, pod, server_with_image, wait_for, Server};
use serde_json::Value;

fn phase(p: &Value) -> &str {
    p.pointer("/status/phase").and_then(Value::as_str).unwrap_or("")
}

fn events(s: &Server, name: &str) -> Vec<(String, String)> {
    let (_, list) = s.get_json(&format!("/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3D{name}"));
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["reason"].as_str().unwrap_or("").to_string(), e["message"].as_str().unwrap_or("").to_string()))
        .collect()
}

fn apply(s: &Server, yaml: &str) {
    let out = s.k_stdin(&["apply", "-f", "-"], yaml);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Processes, mounts and cgroups of the server's pods: none once they are gone.
fn leftovers(s: &Server) -> Vec<String> {
    let mut left = Vec::new();
    let data = s.data.to_string_lossy().to_string();
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(p.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if (cmd.contains(" shim ") || cmd.contains(" pause ")) && cmd.contains(&data) {
                left.push(format!("process {cmd}"));
            }
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    left.extend(mounts.lines().filter(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(&data))).map(|l| format!("mount {l}")));
    if let Ok(pods) = std::fs::read_dir(s.data.join("pods")) {
        for p in pods.flatten() {
            let uid = p.file_name().to_string_lossy().to_string();
            left.push(format!("pod directory {uid}"));
        }
    }
    left
}

fn pod_cgroups(uid: &str) -> Vec<String> {
    std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .map(|c| c.path().join(format!("nanokube/pod{uid}")))
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .collect()
}

#[test]
fn a_pod_runs_to_completion_with_kubelets_status_events_files_and_logs() {
    let s = server_with_image();
    let node = s.get_json("/api/v1/nodes").1["items"][0].clone();
    let ready = node["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap().clone();
    assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("True"), Some("KubeletReady")), "{ready}");

    let script = "cat /var/run/secrets/kubernetes.io/serviceaccount/namespace; echo; ls /var/run/secrets/kubernetes.io/serviceaccount; cat /etc/resolv.conf; hostname; sleep 0.3; echo to-stderr >&2";
    s.k(&["run", "once", "--image=testbox:1.0", "--restart=Never", "--", "sh", "-c", script]);
    let p = wait_for(&s, "once", "Succeeded", |p| phase(p) == "Succeeded");
    let st = &p["status"];
    let c = &st["containerStatuses"][0];
    assert_eq!(c["state"]["terminated"]["reason"], "Completed");
    assert_eq!(c["state"]["terminated"]["exitCode"], 0);
    assert_eq!(c["restartCount"], 0);
    assert!(c["imageID"].as_str().unwrap().starts_with("docker.io/library/testbox@sha256:"), "{c}");
    assert!(c["containerID"].as_str().unwrap().starts_with("nanokube://"));
    assert!(st["podIP"].as_str().unwrap().starts_with("127.244."), "{st}");
    assert_eq!(st["hostIP"], "127.0.0.1");
    assert_eq!(st["qosClass"], "BestEffort");
    let types: Vec<&str> = st["conditions"].as_array().unwrap().iter().map(|c| c["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled"]);
    let ready = st["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap();
    assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("False"), Some("PodCompleted")));

    // The logs: the service-account files kubelet mounts, the cluster DNS settings, the
    // pod's hostname; stdout, then (0.3 s later: the two streams are read
    // by two threads, so only time orders them) stderr.
    let logs = s.k(&["logs", "once"]);
    assert_eq!(
        logs,
        "default\nca.crt\nnamespace\ntoken\nsearch default.svc.cluster.local svc.cluster.local cluster.local\nnameserver 127.96.0.10\noptions ndots:5\nonce\nto-stderr\n"
    );
    let stamped = s.k(&["logs", "once", "--timestamps", "--tail=1"]);
    assert!(stamped.ends_with("Z to-stderr\n") && stamped.len() > 30, "{stamped}");
    assert_eq!(s.k(&["logs", "once", "--limit-bytes=3"]), "def");
    // kubectl 1.27 runs a pod and reads its logs too.
    let old = s.kubectl_bin("kubectl.1.27", &["logs", "once", "--tail=1"]);
    assert_eq!(String::from_utf8_lossy(&old.stdout), "to-stderr\n");
    let old = s.kubectl_bin("kubectl.1.27", &["run", "old", "--image=testbox:1.0", "--restart=Never", "--", "sh", "-c", "echo from 1.27"]);
    assert!(old.status.success(), "{}", String::from_utf8_lossy(&old.stderr));
    wait_for(&s, "old", "Succeeded", |p| phase(p) == "Succeeded");
    assert_eq!(String::from_utf8_lossy(&s.kubectl_bin("kubectl.1.27", &["logs", "old"]).stdout), "from 1.27\n");
    s.k(&["delete", "pod", "old"]);

    let reasons: Vec<String> = events(&s, "once").into_iter().map(|(r, m)| format!("{r}: {m}")).collect();
    for want in [
        "Scheduled: Successfully assigned default/once to",
        "Pulled: Container image \"testbox:1.0\" already present on machine",
        "Created: Created container: once",
        "Started: Started container once",
    ] {
        assert!(reasons.iter().any(|r| r.starts_with(want)), "{want} not in {reasons:?}");
    }

    // hostNetwork: the host's network, where the API server's own port answers.
    let script = format!("echo | busybox nc -w 2 127.0.0.1 {} >/dev/null && echo reached", s.port);
    let hn = s.kubectl(&[
        "run",
        "hostnet",
        "--image=testbox:1.0",
        "--restart=Never",
        "--overrides",
        r#"{"spec": {"hostNetwork": true}}"#,
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert!(hn.status.success(), "{}", String::from_utf8_lossy(&hn.stderr));
    let p2 = wait_for(&s, "hostnet", "Succeeded", |p| phase(p) == "Succeeded");
    assert_eq!(p2["status"]["podIP"], "127.0.0.1", "a host-network pod has the node's IP");
    assert_eq!(s.k(&["logs", "hostnet"]), "reached\n");
    s.k(&["delete", "pod", "hostnet"]);

    // Deleted: it goes at once (a finished pod has nothing to stop), and so does all it had.
    let uid = p["metadata"]["uid"].as_str().unwrap().to_string();
    s.k(&["delete", "pod", "once"]);
    assert!(eventually(Duration::from_secs(10), || leftovers(&s).is_empty() && pod_cgroups(&uid).is_empty()), "{:?} {:?}", leftovers(&s), pod_cgroups(&uid));
}

#[test]
fn probes_restarts_with_back_off_and_private_localhosts() {
    let s = server_with_image();
    apply(
        &s,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  containers:
  - name: web
    image: testbox:1.0
    command: [sh, -c, 'mkdir -p /www && echo one > /www/index.html && exec busybox httpd -f -p 8080 -h /www']
    ports: [{containerPort: 8080, name: http}]
    readinessProbe: {httpGet: {path: /index.html, port: http}, periodSeconds: 1}
    livenessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Pod
metadata: {name: web2}
spec:
  containers:
  - name: web
    image: testbox:1.0
    command: [sh, -c, 'mkdir -p /www && echo two > /www/index.html && exec busybox httpd -f -p 8080 -h /www']
    readinessProbe: {exec: {command: [sh, -c, 'busybox wget -qO- http://127.0.0.1:8080/index.html | grep -q two']}, periodSeconds: 1}
---
apiVersion: v1
kind: Pod
metadata: {name: crash}
spec:
  containers:
  - name: c
    image: testbox:1.0
    command: [sh, -c, 'echo crashing; exit 3']
---
apiVersion: v1
kind: Pod
metadata: {name: sick}
spec:
  containers:
  - name: c
    image: testbox:1.0
    command: [sh, -c, 'touch /healthy; sleep 2; rm /healthy; sleep 1000']
    livenessProbe: {exec: {command: [sh, -c, "cat /healthy"]}, periodSeconds: 1, failureThreshold: 1}
  terminationGracePeriodSeconds: 1
"#,
    );
    // Both listen on :8080 in their own network namespaces; each one's readiness probe
    // reads its own page on its own localhost.
    s.k(&["wait", "--for=condition=Ready", "pod/web", "pod/web2", "--timeout=30s"]);
    let (w1, w2) = (pod(&s, "web"), pod(&s, "web2"));
    assert_ne!(w1["status"]["podIP"], w2["status"]["podIP"]);
    assert_eq!(w1["status"]["containerStatuses"][0]["ready"], true);
    assert_eq!(w1["status"]["containerStatuses"][0]["started"], true);
    // From the host, each pod's IP answers on its port: web declares 8080, web2 only
    // listens on it (found from its sockets).
    for (p, want) in [(&w1, "one\n"), (&w2, "two\n")] {
        let url = format!("http://{}:8080/index.html", p["status"]["podIP"].as_str().unwrap());
        let mut got = String::new();
        let ok = eventually(Duration::from_secs(10), || {
            let out = Command::new("curl").args(["-sS", "-m", "2", &url]).output().unwrap();
            got = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            got == want
        });
        assert!(ok, "{url}: {got:?}");
    }

    // From inside a pod, another pod's IP answers (the node's NAT rule and listener in
    // every pod); a port nothing listens on is refused.
    let ip1 = w1["status"]["podIP"].as_str().unwrap();
    let script = format!("busybox wget -qO- http://{ip1}:8080/index.html; busybox wget -qO- -T 2 http://{ip1}:9999/ 2>/dev/null || echo refused");
    s.k(&["run", "client", "--image=testbox:1.0", "--restart=Never", "--", "sh", "-c", &script]);
    wait_for(&s, "client", "Succeeded", |p| phase(p) == "Succeeded");
    assert_eq!(s.k(&["logs", "client"]), "one\nrefused\n");

    // A crashing container: restarted at once, then after kubelet's 10 s back-off, in
    // CrashLoopBackOff between.
    wait_for(&s, "crash", "a first restart", |p| p.pointer("/status/containerStatuses/0/restartCount").and_then(Value::as_u64) >= Some(1));
    let p = wait_for(&s, "crash", "CrashLoopBackOff", |p| {
        p.pointer("/status/containerStatuses/0/state/waiting/reason").and_then(Value::as_str) == Some("CrashLoopBackOff")
    });
    let c = &p["status"]["containerStatuses"][0];
    let uid = p["metadata"]["uid"].as_str().unwrap();
    assert_eq!(c["restartCount"], 1, "{c}");
    assert!(
        c["state"]["waiting"]["message"].as_str().unwrap().starts_with(&format!("back-off 10s restarting failed container=c pod=crash_default({uid})")),
        "{c}"
    );
    assert_eq!(c["lastState"]["terminated"]["exitCode"], 3);
    assert_eq!(c["lastState"]["terminated"]["reason"], "Error");
    assert_eq!(p["status"]["phase"], "Running", "restartPolicy Always keeps the phase Running");
    // The back-off counts from the end of the instance that crashed second.
    let finished = c["lastState"]["terminated"]["finishedAt"].as_str().unwrap().to_string();
    let out = Command::new("date").args(["-u", "-d", &finished, "+%s"]).output().unwrap();
    let finished_at: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let p = wait_for(&s, "crash", "a second restart", |p| p.pointer("/status/containerStatuses/0/restartCount").and_then(Value::as_u64) >= Some(2));
    let waited = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64() - finished_at as f64;
    // finishedAt is in whole seconds (rounded down), so the wait seen is at least the real one.
    assert!(waited >= 9.5, "the second restart waited the 10 s back-off: {waited:.1} s after {finished}");
    assert!(p["status"]["containerStatuses"][0]["lastState"]["terminated"]["finishedAt"].is_string());
    assert_eq!(s.k(&["logs", "crash", "--previous"]), "crashing\n");
    assert!(events(&s, "crash").iter().any(|(r, m)| r == "BackOff" && m == &format!("Back-off restarting failed container c in pod crash_default({uid})")));

    // A liveness probe that starts failing restarts its container.
    wait_for(&s, "sick", "a liveness restart", |p| p.pointer("/status/containerStatuses/0/restartCount").and_then(Value::as_u64) >= Some(1));
    let ev = events(&s, "sick");
    assert!(ev.iter().any(|(r, m)| r == "Unhealthy" && m.starts_with("Liveness probe failed: cat: can't open '/healthy'")), "{ev:?}");
    assert!(ev.iter().any(|(r, m)| r == "Killing" && m == "Container c failed liveness probe, will be restarted"), "{ev:?}");

    s.k(&["delete", "pod", "--all", "--grace-period=1"]);
    assert!(eventually(Duration::from_secs(20), || leftovers(&s).is_empty()), "{:?}", leftovers(&s));
}

#[test]
fn init_containers_sidecars_env_and_every_volume_kind() {
    let s = server_with_image();
    let host = s.dir.path().join("host");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("from-host"), "host file\n").unwrap();
    s.k(&["create", "configmap", "cm", "--from-literal=a=1", "--from-literal=b=two"]);
    s.k(&["create", "secret", "generic", "sec", "--from-literal=pw=secret"]);
    let yaml = r#"
apiVersion: v1
kind: Pod
metadata: {name: full, labels: {app: full}}
spec:
  initContainers:
  - name: init
    image: testbox:1.0
    command: [sh, -c, 'echo from-init > /work/init; echo init ran']
    volumeMounts: [{name: work, mountPath: /work}]
  - name: side
    image: testbox:1.0
    restartPolicy: Always
    command: [sh, -c, 'echo sidecar up; touch /work/side; exec sleep 1000']
    volumeMounts: [{name: work, mountPath: /work}]
  containers:
  - name: main
    image: testbox:1.0
    resources: {limits: {memory: 64Mi, cpu: 500m}}
    env:
    - {name: GREETING, value: hello}
    - {name: MESSAGE, value: '$(GREETING) world $$(GREETING)'}
    - {name: POD, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
    - {name: NODE, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}
    - {name: MEM_MI, valueFrom: {resourceFieldRef: {resource: limits.memory, divisor: 1Mi}}}
    - {name: CM_B, valueFrom: {configMapKeyRef: {name: cm, key: b}}}
    - {name: PW, valueFrom: {secretKeyRef: {name: sec, key: pw}}}
    - {name: NOPE, valueFrom: {configMapKeyRef: {name: cm, key: missing, optional: true}}}
    envFrom: [{prefix: CM_, configMapRef: {name: cm}}]
    command: [sh, -c]
    args:
    - |
      echo "env $MESSAGE $POD $POD_IP $NODE $MEM_MI $CM_B $PW ${NOPE-unset} $CM_a"
      echo "kube $KUBERNETES_SERVICE_HOST $KUBERNETES_SERVICE_PORT"
      echo "init $(cat /work/init) side $(ls /work/side)"
      echo "cm $(cat /cm/renamed) $(ls /cm)"
      echo "labels $(cat /info/labels)"
      echo "proj $(cat /proj/a) $(cat /proj/name)"
      echo "host $(cat /host/from-host)"
      echo "mem $(grep ' /scratch ' /proc/mounts | cut -d' ' -f3)"
      echo "token $(cat /var/run/secrets/kubernetes.io/serviceaccount/token)"
      while true; do echo "secret $(cat /sec/pw)"; sleep 0.3; done
    volumeMounts:
    - {name: work, mountPath: /work}
    - {name: cm, mountPath: /cm}
    - {name: sec, mountPath: /sec}
    - {name: info, mountPath: /info}
    - {name: proj, mountPath: /proj}
    - {name: host, mountPath: /host}
    - {name: scratch, mountPath: /scratch}
  volumes:
  - {name: work, emptyDir: {}}
  - {name: scratch, emptyDir: {medium: Memory, sizeLimit: 8Mi}}
  - {name: cm, configMap: {name: cm, items: [{key: a, path: renamed}]}}
  - {name: sec, secret: {secretName: sec}}
  - {name: info, downwardAPI: {items: [{path: labels, fieldRef: {fieldPath: metadata.labels}}]}}
  - name: proj
    projected:
      sources:
      - configMap: {name: cm, items: [{key: a, path: a}]}
      - downwardAPI: {items: [{path: name, fieldRef: {fieldPath: metadata.name}}]}
  - {name: host, hostPath: {path: HOSTDIR, type: Directory}}
"#
    .replace("HOSTDIR", &host.display().to_string());
    apply(&s, &yaml);
    let p = wait_for(&s, "full", "Running", |p| phase(p) == "Running" && p.pointer("/status/containerStatuses/0/ready") == Some(&Value::Bool(true)));
    let init = &p["status"]["initContainerStatuses"];
    assert_eq!(init[0]["state"]["terminated"]["reason"], "Completed", "{init}");
    assert!(init[1]["state"]["running"].is_object(), "the sidecar keeps running: {init}");
    // kubectl counts a started sidecar among the pod's containers, as upstream's printer.
    let row = s.k(&["get", "pod", "full", "--no-headers"]);
    assert_eq!(row.split_whitespace().take(3).collect::<Vec<_>>(), ["full", "2/2", "Running"], "{row}");
    assert_eq!(s.k(&["logs", "full", "-c", "init"]), "init ran\n");
    assert_eq!(s.k(&["logs", "full", "-c", "side"]), "sidecar up\n");
    let ip = p["status"]["podIP"].as_str().unwrap();
    let node = p["spec"]["nodeName"].as_str().unwrap();
    let mut logs = String::new();
    assert!(eventually(Duration::from_secs(10), || {
        logs = s.k(&["logs", "full", "-c", "main"]);
        logs.contains("secret secret")
    }));
    let line = |prefix: &str| logs.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix} line in {logs}")).to_string();
    assert_eq!(line("env "), format!("env hello world $(GREETING) full {ip} {node} 64 two secret unset 1"));
    assert!(line("kube ").starts_with("kube 127.96.0.1 443"), "{logs}");
    assert_eq!(line("init "), "init from-init side /work/side");
    assert_eq!(line("cm "), "cm 1 renamed");
    assert_eq!(line("labels "), "labels app=\"full\"");
    assert_eq!(line("proj "), "proj 1 full");
    assert_eq!(line("host "), "host host file");
    assert_eq!(line("mem "), "mem tmpfs");

    // The projected token is a real one: TokenReview accepts it while the pod exists.
    let token = line("token ").trim_start_matches("token ").to_string();
    let review = |token: &str| -> Value {
        let body = serde_json::json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}});
        let out = s.k_stdin(&["create", "-f", "-", "-o", "json"], &body.to_string());
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let r = review(&token);
    assert_eq!(r["status"]["authenticated"], true, "{r}");
    assert_eq!(r["status"]["user"]["username"], "system:serviceaccount:default:default");
    assert_eq!(r["status"]["user"]["extra"]["authentication.kubernetes.io/pod-name"][0], "full");

    // A Secret update reaches the mounted file in place, seen through `kubectl logs -f`.
    let mut follow = Command::new(common::kubectl_path("kubectl"))
        .args(["logs", "-f", "full", "-c", "main", "--tail=1"])
        .env("KUBECONFIG", s.kubeconfig())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let followed = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(followed).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let out = s.k_stdin(&["apply", "-f", "-"], &s.k(&["create", "secret", "generic", "sec", "--from-literal=pw=changed", "--dry-run=client", "-o", "yaml"]));
    assert!(out.status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    let mut changed = false;
    while !changed && Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(l) if l == "secret changed" => changed = true,
            Ok(l) => seen.push(l),
            Err(_) => {}
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(changed, "the mounted Secret was not updated (followed: {:?})", &seen[seen.len().saturating_sub(3)..]);
    assert!(!seen.is_empty() && seen.iter().all(|l| l == "secret secret"), "{seen:?}");

    // Deleted: its token is refused from then on.
    s.k(&["delete", "pod", "full", "--grace-period=1"]);
    let r = review(&token);
    assert_eq!(r["status"]["authenticated"], false, "{r}");
    assert!(eventually(Duration::from_secs(10), || leftovers(&s).is_empty()), "{:?}", leftovers(&s));
    assert!(host.join("from-host").exists(), "a hostPath is the host's, left as it was");
}

#[test]
fn graceful_deletion_runs_prestop_then_sigterm_then_sigkill() {
    let s = server_with_image();
    let host = s.dir.path().join("trace");
    std::fs::create_dir_all(&host).unwrap();
    let yaml = r#"
apiVersion: v1
kind: Pod
metadata: {name: polite}
spec:
  terminationGracePeriodSeconds: 20
  containers:
  - name: c
    image: testbox:1.0
    command: [sh, -c, 'trap "echo term >> /trace/polite; exit 0" TERM; while true; do sleep 0.1; done']
    lifecycle: {preStop: {exec: {command: [sh, -c, 'echo prestop >> /trace/polite']}}}
    volumeMounts: [{name: trace, mountPath: /trace}]
  volumes: [{name: trace, hostPath: {path: HOSTDIR}}]
---
apiVersion: v1
kind: Pod
metadata: {name: stubborn}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: c
    image: testbox:1.0
    command: [sh, -c, 'trap "echo ignored >> /trace/stubborn" TERM; while true; do sleep 0.1; done']
    volumeMounts: [{name: trace, mountPath: /trace}]
  volumes: [{name: trace, hostPath: {path: HOSTDIR}}]
---
apiVersion: v1
kind: Pod
metadata: {name: forced}
spec:
  containers:
  - name: c
    image: testbox:1.0
    command: [sh, -c, 'while true; do sleep 0.1; done']
"#
    .replace("HOSTDIR", &host.display().to_string());
    apply(&s, &yaml);
    s.k(&["wait", "--for=condition=Ready", "pod/polite", "pod/stubborn", "pod/forced", "--timeout=30s"]);

    // The API server keeps the pod, marked, until the node confirms.
    s.k(&["delete", "pod", "polite", "--wait=false"]);
    let marked = pod(&s, "polite");
    assert!(marked["metadata"]["deletionTimestamp"].is_string(), "{marked}");
    assert_eq!(marked["metadata"]["deletionGracePeriodSeconds"], 20);
    assert!(eventually(Duration::from_secs(15), || s.get_json("/api/v1/namespaces/default/pods/polite").0 == 404));
    assert_eq!(std::fs::read_to_string(host.join("polite")).unwrap(), "prestop\nterm\n", "preStop ran, then SIGTERM reached the handler");

    // A process that ignores SIGTERM is killed when the grace period ends.
    let started = Instant::now();
    s.k(&["delete", "pod", "stubborn"]);
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(2), "deleted after {took:?}, before the grace period");
    assert_eq!(std::fs::read_to_string(host.join("stubborn")).unwrap(), "ignored\n");

    // --force --grace-period=0: gone from the API at once, and the node kills it.
    s.k(&["delete", "pod", "forced", "--force", "--grace-period=0"]);
    assert_eq!(s.get_json("/api/v1/namespaces/default/pods/forced").0, 404);
    assert!(eventually(Duration::from_secs(10), || leftovers(&s).is_empty()), "{:?}", leftovers(&s));
}

#[test]
fn pods_that_cannot_run_say_why() {
    let s = server_with_image();
    apply(
        &s,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: missing}
spec:
  containers: [{name: c, image: "127.0.0.1:1/nothing/here:1.0"}]
---
apiVersion: v1
kind: Pod
metadata: {name: huge}
spec:
  containers: [{name: c, image: testbox:1.0, resources: {requests: {cpu: "1000"}}}]
---
apiVersion: v1
kind: Pod
metadata: {name: unconfigured}
spec:
  containers:
  - name: c
    image: testbox:1.0
    env: [{name: X, valueFrom: {configMapKeyRef: {name: absent, key: k}}}]
---
apiVersion: v1
kind: Pod
metadata: {name: hog}
spec:
  restartPolicy: Never
  containers:
  - {name: c, image: testbox:1.0, command: [sh, -c, 'x=a; while true; do x=$x$x; done'], resources: {limits: {memory: 20Mi}}}
---
apiVersion: v1
kind: Pod
metadata: {name: nocommand}
spec:
  containers: [{name: c, image: testbox:1.0, command: [/no/such/binary]}]
---
apiVersion: v1
kind: Pod
metadata: {name: never}
spec:
  containers: [{name: c, image: "other:2.0", imagePullPolicy: Never}]
---
apiVersion: v1
kind: Pod
metadata: {name: initfail}
spec:
  restartPolicy: Never
  initContainers: [{name: i, image: testbox:1.0, command: [sh, -c, 'exit 3']}]
  containers: [{name: c, image: testbox:1.0}]
"#,
    );
    // kubectl's STATUS column, as upstream's printer writes it.
    let row = |name: &str| s.k(&["get", "pod", name, "--no-headers"]).split_whitespace().take(3).map(String::from).collect::<Vec<_>>();
    let p = wait_for(&s, "missing", "ImagePullBackOff", |p| {
        p.pointer("/status/containerStatuses/0/state/waiting/reason").and_then(Value::as_str) == Some("ImagePullBackOff")
    });
    assert_eq!(p["status"]["containerStatuses"][0]["state"]["waiting"]["message"], "Back-off pulling image \"127.0.0.1:1/nothing/here:1.0\"");
    let ev = events(&s, "missing");
    assert!(ev.iter().any(|(r, m)| r == "Failed" && m.starts_with("Failed to pull image \"127.0.0.1:1/nothing/here:1.0\": ")), "{ev:?}");
    assert!(ev.iter().any(|(r, m)| r == "Failed" && m == "Error: ErrImagePull"), "{ev:?}");

    let p = wait_for(&s, "huge", "FailedScheduling", |p| p.pointer("/status/conditions/0/reason").and_then(Value::as_str) == Some("Unschedulable"));
    assert!(p["status"]["conditions"][0]["message"].as_str().unwrap().starts_with("0/1 nodes are available: 1 Insufficient cpu."), "{p}");

    let p = wait_for(&s, "unconfigured", "CreateContainerConfigError", |p| {
        p.pointer("/status/containerStatuses/0/state/waiting/reason").and_then(Value::as_str) == Some("CreateContainerConfigError")
    });
    assert_eq!(p["status"]["containerStatuses"][0]["state"]["waiting"]["message"], "configmap \"absent\" not found");

    let p = wait_for(&s, "never", "ErrImageNeverPull", |p| {
        p.pointer("/status/containerStatuses/0/state/waiting/reason").and_then(Value::as_str) == Some("ErrImageNeverPull")
    });
    assert_eq!(p["status"]["containerStatuses"][0]["state"]["waiting"]["message"], "Container image \"other:2.0\" is not present with pull policy of Never");
    // Over its memory limit: killed by the kernel, reported OOMKilled.
    let p = wait_for(&s, "hog", "OOMKilled", |p| phase(p) == "Failed");
    let t = &p["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!((t["reason"].as_str(), t["exitCode"].as_i64()), (Some("OOMKilled"), Some(137)), "{t}");
    assert_eq!(p["status"]["qosClass"], "Burstable");
    assert_eq!(row("hog"), ["hog", "0/1", "OOMKilled"]);
    // A failed init container: the pod fails with it.
    let p = wait_for(&s, "initfail", "Failed", |p| phase(p) == "Failed");
    assert_eq!(p["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"], 3, "{p}");
    assert_eq!(row("initfail"), ["initfail", "0/1", "Init:Error"]);

    // A command that does not exist: the runtime's start error, then restarts.
    let p = wait_for(&s, "nocommand", "StartError", |p| {
        p.pointer("/status/containerStatuses/0/lastState/terminated/reason").and_then(Value::as_str) == Some("StartError")
    });
    let last = &p["status"]["containerStatuses"][0]["lastState"]["terminated"];
    assert_eq!(last["exitCode"], 128, "{last}");
    assert!(last["message"].as_str().unwrap().contains("/no/such/binary"), "{last}");
    let out = s.kubectl(&["logs", "missing"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("container \"c\" in pod \"missing\" is waiting to start: ImagePullBackOff"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.k(&["delete", "pod", "--all"]);
    assert!(eventually(Duration::from_secs(10), || leftovers(&s).is_empty()), "{:?}", leftovers(&s));
}

#[test]
fn a_crashed_server_adopts_its_containers_and_a_clean_stop_runs_them_again() {
    let mut s = server_with_image();
    s.k(&[
        "run",
        "keeper",
        "--image=testbox:1.0",
        "--overrides",
        r#"{"spec": {"terminationGracePeriodSeconds": 2}}"#,
        "--",
        "sh",
        "-c",
        "echo started; while true; do sleep 0.2; done",
    ]);
    let before = wait_for(&s, "keeper", "Running", |p| phase(p) == "Running");
    let id = before["status"]["containerStatuses"][0]["containerID"].clone();
    let uid = before["metadata"]["uid"].as_str().unwrap().to_string();

    // kill -9: the container keeps running, the next server adopts it (same container,
    // no restart, no second copy).
    s.kill9();
    assert_eq!(leftovers(&s).iter().filter(|l| l.starts_with("process")).count(), 1, "the container outlives the server");
    s.restart();
    std::thread::sleep(Duration::from_secs(2));
    let after = wait_for(&s, "keeper", "Running", |p| phase(p) == "Running");
    assert_eq!(after["status"]["containerStatuses"][0]["containerID"], id, "the same container, adopted");
    assert_eq!(after["status"]["containerStatuses"][0]["restartCount"], 0);
    assert_eq!(leftovers(&s).iter().filter(|l| l.starts_with("process")).count(), 1, "no second copy");
    assert_eq!(s.k(&["logs", "keeper"]), "started\n");

    // A clean stop stops the pod (nothing runs while the server is down, no cgroup is
    // left); the next start runs it again, as kubelet does after a reboot.
    s.stop();
    assert_eq!(leftovers(&s).iter().filter(|l| l.starts_with("process") || l.starts_with("mount")).count(), 0, "{:?}", leftovers(&s));
    assert!(pod_cgroups(&uid).is_empty(), "{:?}", pod_cgroups(&uid));
    s.restart();
    let again = wait_for(&s, "keeper", "running again", |p| {
        p.pointer("/status/containerStatuses/0/restartCount").and_then(Value::as_u64) == Some(1) && phase(p) == "Running"
    });
    assert_ne!(again["status"]["containerStatuses"][0]["containerID"], id);

    s.k(&["delete", "pod", "keeper", "--grace-period=1"]);
    assert!(eventually(Duration::from_secs(10), || leftovers(&s).is_empty()), "{:?}", leftovers(&s));
    assert!(pod_cgroups(&uid).is_empty());
    assert!(!Path::new(&s.data.join("pods").join(&uid)).exists());
}

#[test]
fn image_pull_secrets_open_a_registry_that_requires_them() {
    let s = server_with_image();
    let registry = common::start_registry_with(Some(("puller", "s3cret")));
    let (archive, _) = build_image(s.dir.path(), "private:1");
    let image = format!("127.0.0.1:{}/team/private:1", registry.port);
    common::skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        "puller:s3cret",
        &format!("docker-archive:{}", archive.display()),
        &format!("docker://{image}"),
    ]);

    // Without credentials the registry's refusal is the pull's error.
    s.k(&["run", "anonymous", &format!("--image={image}"), "--restart=Never", "--", "sh", "-c", "echo pulled"]);
    wait_for(&s, "anonymous", "ErrImagePull", |p| {
        matches!(p.pointer("/status/containerStatuses/0/state/waiting/reason").and_then(Value::as_str), Some("ErrImagePull") | Some("ImagePullBackOff"))
    });
    let ev = events(&s, "anonymous");
    assert!(ev.iter().any(|(r, m)| r == "Failed" && m.starts_with(&format!("Failed to pull image \"{image}\": "))), "{ev:?}");

    // With a kubernetes.io/dockerconfigjson Secret the pod's pull is authenticated.
    s.k(&[
        "create",
        "secret",
        "docker-registry",
        "regcred",
        &format!("--docker-server=127.0.0.1:{}", registry.port),
        "--docker-username=puller",
        "--docker-password=s3cret",
    ]);
    let overrides = r#"{"spec": {"imagePullSecrets": [{"name": "regcred"}]}}"#;
    s.k(&["run", "authorized", &format!("--image={image}"), "--restart=Never", "--overrides", overrides, "--", "sh", "-c", "echo pulled"]);
    let p = wait_for(&s, "authorized", "Succeeded", |p| phase(p) == "Succeeded");
    assert!(p["status"]["containerStatuses"][0]["imageID"].as_str().unwrap().starts_with(&format!("127.0.0.1:{}/team/private@sha256:", registry.port)));
    assert_eq!(s.k(&["logs", "authorized"]), "pulled\n");
    let ev = events(&s, "authorized");
    assert!(ev.iter().any(|(r, m)| r == "Pulled" && m.starts_with(&format!("Successfully pulled image \"{image}\" in "))), "{ev:?}");
    s.k(&["delete", "pod", "--all"]);
    assert!(eventually(Duration::from_secs(10), || leftovers(&s).is_empty()), "{:?}", leftovers(&s));
}

/// What a container may do, from its security context, as containerd gives it: the
/// default capability set (Docker's well-known `CapEff`), added and dropped ones, a
/// privileged container with every capability and the host's devices, the
/// `RuntimeDefault` seccomp filter refusing `mount`, and volumes given to the `fsGroup`.
#[test]
fn security_context_capabilities_seccomp_privileged_and_fs_group() {
    let s = server_with_image();
    let report = "grep -E '^(CapEff|Seccomp):' /proc/self/status | tr -s '\\t ' ' '; mount -t tmpfs t /dev/shm 2>&1 && echo mount-ok || echo mount-refused";
    let yaml = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: secure}}
spec:
  restartPolicy: Never
  securityContext: {{fsGroup: 2000}}
  volumes: [{{name: scratch, emptyDir: {{}}}}]
  containers:
  - name: plain
    image: testbox:1.0
    command: [sh, -c, "{report}"]
  - name: tight
    image: testbox:1.0
    command: [sh, -c, "{report}"]
    securityContext:
      capabilities: {{drop: [ALL], add: [NET_ADMIN, SYS_ADMIN]}}
      seccompProfile: {{type: RuntimeDefault}}
  - name: seccomp
    image: testbox:1.0
    command: [sh, -c, "{report}"]
    securityContext: {{seccompProfile: {{type: RuntimeDefault}}}}
  - name: privileged
    image: testbox:1.0
    command: [sh, -c, "{report}; test -c /dev/kmsg && echo has-kmsg"]
    securityContext: {{privileged: true}}
  - name: owner
    image: testbox:1.0
    command: [sh, -c, "touch /scratch/new; stat -c '%g %a' /scratch /scratch/new; stat -L -c '%g %a' /var/run/secrets/kubernetes.io/serviceaccount/token; id -G"]
    securityContext: {{runAsUser: 1000}}
    volumeMounts: [{{name: scratch, mountPath: /scratch}}]
"#
    );
    apply(&s, &yaml);
    wait_for(&s, "secure", "Succeeded", |p| phase(p) == "Succeeded");
    let logs = |c: &str| s.k(&["logs", "secure", "-c", c]);
    // containerd's 14 default capabilities; no filter unless asked (kubelet's default).
    assert_eq!(logs("plain"), "CapEff: 00000000a80425fb\nSeccomp: 0\nmount: permission denied (are you root?)\nmount-refused\n");
    // drop ALL then add: only NET_ADMIN (bit 12) and SYS_ADMIN (bit 21); with SYS_ADMIN
    // the default filter lets mount through.
    assert_eq!(logs("tight"), "CapEff: 0000000000201000\nSeccomp: 2\nmount-ok\n");
    assert_eq!(logs("seccomp"), "CapEff: 00000000a80425fb\nSeccomp: 2\nmount: permission denied (are you root?)\nmount-refused\n");
    // Privileged: every capability the server holds itself (this test runs as the same
    // user, so its own bounding set).
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let bounding = status.lines().find_map(|l| l.strip_prefix("CapBnd:")).unwrap().trim();
    assert_eq!(logs("privileged"), format!("CapEff: {bounding}\nSeccomp: 0\nmount-ok\nhas-kmsg\n"));
    // fsGroup: the emptyDir is the group's with setgid (2777), a file made in it inherits
    // the group, the token is the group's (group-readable); the group is the process's.
    assert_eq!(logs("owner"), "2000 2777\n2000 644\n2000 644\n0 2000\n");
    s.k(&["delete", "pod", "secure", "--wait=true"]);
}

/// `shareProcessNamespace`: the pod's containers see each other's processes, under the
/// pod's own PID 1 (`pause`); a pod without it gives each container its own. Nothing is
/// left running once the pod is deleted.
#[test]
fn a_shared_process_namespace_shows_the_other_containers() {
    let s = server_with_image();
    apply(
        &s,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: shared}
spec:
  shareProcessNamespace: true
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: testbox:1.0
    command: [sh, -c, "sleep 600"]
  - name: peek
    image: testbox:1.0
    command: [sh, -c, "until ps | grep -q '[s]leep 600'; do sleep 0.1; done; cat /proc/1/comm; echo seen"]
---
apiVersion: v1
kind: Pod
metadata: {name: private}
spec:
  restartPolicy: Never
  containers:
  - name: c
    image: testbox:1.0
    command: [sh, -c, "cat /proc/1/comm; ps | grep -c '[s]leep 600'"]
"#,
    );
    wait_for(&s, "private", "Failed or Succeeded", |p| matches!(phase(p), "Succeeded" | "Failed"));
    // Its own PID 1 (the shell), and the other pod's sleep nowhere in sight.
    assert_eq!(s.k(&["logs", "private"]), "sh\n0\n");
    wait_for(&s, "shared", "peek done", |p| {
        p.pointer("/status/containerStatuses")
            .and_then(Value::as_array)
            .is_some_and(|cs| cs.iter().any(|c| c["name"] == "peek" && c["state"]["terminated"].is_object()))
    });
    assert_eq!(s.k(&["logs", "shared", "-c", "peek"]), "pause\nseen\n");
    let uid = pod(&s, "shared")["metadata"]["uid"].as_str().unwrap().to_string();
    s.k(&["delete", "pod", "shared", "private", "--wait=true"]);
    assert!(eventually(Duration::from_secs(10), || leftovers(&s).is_empty()), "{:?}", leftovers(&s));
    assert!(pod_cgroups(&uid).is_empty());
}
