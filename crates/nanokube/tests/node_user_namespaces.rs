//! `hostUsers: false`: a pod's containers run in a user namespace of their own (65,536
//! host IDs from 65,536 up, as kubelet allocates them), so root in the container is an
//! unprivileged ID on the host, yet owns the image's files (idmapped layers), writes its
//! root filesystem, binds :80 and reads its volumes. Checked from inside the container
//! (real busybox image, real runc) and from the host's `/proc`; the API refuses it with
//! host namespaces as upstream does.

mod common;

use std::time::Duration;

use common::{eventually, server_with_image, Server};
use serde_json::Value;

fn wait_for(s: &Server, name: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    common::wait_for_within(s, name, what, Duration::from_secs(60), f)
}

fn apply(s: &Server, yaml: &str) {
    let out = s.k_stdin(&["apply", "-f", "-"], yaml);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Host PIDs whose command line is exactly `argv`.
fn host_pids(argv: &[&str]) -> Vec<u32> {
    let want = argv.join("\0") + "\0";
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|p| {
            let pid: u32 = p.file_name().to_str()?.parse().ok()?;
            (std::fs::read(p.path().join("cmdline")).ok()? == want.as_bytes()).then_some(pid)
        })
        .collect()
}

fn host_uid(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap();
    line.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn a_pod_without_host_users_is_root_only_inside() {
    let s = server_with_image();
    let report = "cat /proc/self/uid_map; cat /proc/self/gid_map; id -u; stat -c %u /bin/busybox; \
                  echo new > /etc/written && stat -c %u /etc/written; \
                  touch /scratch/file && stat -c %u /scratch/file; \
                  test -s /var/run/secrets/kubernetes.io/serviceaccount/token && echo token-readable; \
                  busybox httpd -p 80 -h /tmp && echo bound-80; \
                  grep -c -E ' /sys sysfs | /dev/mqueue mqueue ' /proc/mounts";
    apply(
        &s,
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: userns}}
spec:
  hostUsers: false
  restartPolicy: Never
  volumes: [{{name: scratch, emptyDir: {{}}}}]
  containers:
  - name: report
    image: testbox:1.0
    command: [sh, -c, "{report}"]
    volumeMounts: [{{name: scratch, mountPath: /scratch}}]
  - name: sleeper
    image: testbox:1.0
    command: [sleep, "3601"]
---
apiVersion: v1
kind: Pod
metadata: {{name: sharedpid}}
spec:
  hostUsers: false
  shareProcessNamespace: true
  restartPolicy: Never
  containers:
  - name: a
    image: testbox:1.0
    command: [sleep, "3602"]
  - name: b
    image: testbox:1.0
    command: [sh, -c, "sleep 2; ps -o args | grep -c '^sleep 3602'"]
---
apiVersion: v1
kind: Pod
metadata: {{name: hostusers}}
spec:
  restartPolicy: Never
  containers:
  - name: report
    image: testbox:1.0
    command: [sh, -c, "cat /proc/self/uid_map; id -u"]
"#
        ),
    );
    wait_for(&s, "hostusers", "Succeeded", |p| p["status"]["phase"] == "Succeeded");
    // The host's user namespace: the identity mapping of every ID.
    assert_eq!(s.k(&["logs", "hostusers"]).split_whitespace().collect::<Vec<_>>(), ["0", "0", "4294967295", "0"]);

    wait_for(&s, "userns", "the report done and the sleeper running", |p| {
        let statuses = p["status"]["containerStatuses"].as_array().cloned().unwrap_or_default();
        let state = |n: &str| statuses.iter().find(|c| c["name"] == n).map(|c| c["state"].clone()).unwrap_or(Value::Null);
        state("report").get("terminated").is_some() && state("sleeper").get("running").is_some()
    });
    let logs = s.k(&["logs", "userns", "-c", "report"]);
    let lines: Vec<&str> = logs.lines().collect();
    assert!(lines.len() >= 9, "report: {logs}");
    let map: Vec<u64> = lines[0].split_whitespace().map(|x| x.parse().unwrap()).collect();
    let base = map[1];
    assert_eq!((map[0], map[2]), (0, 65536), "uid_map: {logs}");
    assert!(base >= 65536 && base.is_multiple_of(65536), "the range is a whole 65,536 IDs above the host's own: {logs}");
    assert_eq!(lines[1].split_whitespace().collect::<Vec<_>>(), lines[0].split_whitespace().collect::<Vec<_>>(), "gid_map as uid_map");
    // Root inside; the image's files are root's there (idmapped layers); what it writes
    // to its root filesystem and its emptyDir is its own; its token is readable; it binds
    // a low port (the pod network's unprivileged-port sysctl); its sysfs and mqueue are
    // its own (the pod's network and IPC namespaces belong to its user namespace).
    assert_eq!(&lines[2..], ["0", "0", "0", "0", "token-readable", "bound-80", "2"], "report: {logs}");

    // From the host: the sleeper runs as the range's first ID, not as root.
    let pids = host_pids(&["sleep", "3601"]);
    assert_eq!(pids.len(), 1, "one sleeper: {pids:?}");
    assert_eq!(u64::from(host_uid(pids[0])), base, "host UID of the container's root");
    // exec joins the same namespace.
    let exec = s.k(&["exec", "userns", "-c", "sleeper", "--", "cat", "/proc/self/uid_map"]);
    assert_eq!(exec.split_whitespace().collect::<Vec<_>>(), lines[0].split_whitespace().collect::<Vec<_>>());

    // A shared process namespace is the pod's user namespace's too: each container sees
    // the other's processes.
    wait_for(&s, "sharedpid", "b done", |p| {
        p["status"]["containerStatuses"].as_array().into_iter().flatten().any(|c| c["name"] == "b" && c["state"].get("terminated").is_some())
    });
    assert_eq!(s.k(&["logs", "sharedpid", "-c", "b"]).trim(), "1");

    // The API refuses a user namespace beside the host's other namespaces, as upstream.
    let bad = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"bad"},
      "spec":{"hostUsers":false,"hostNetwork":true,"hostPID":true,"containers":[{"name":"c","image":"testbox:1.0"}]}}"#;
    let out = s.k_stdin(&["create", "-f", "-"], bad);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "created: {}", String::from_utf8_lossy(&out.stdout));
    assert!(
        err.contains("spec.securityContext.hostNetwork: Forbidden: when `pod.Spec.HostUsers` is false")
            && err.contains("spec.securityContext.HostPID: Forbidden: when `pod.Spec.HostUsers` is false"),
        "{err}"
    );

    // Deleting the pod leaves no mount of its idmapped layers or root filesystems.
    s.k(&["delete", "pod", "userns", "hostusers", "sharedpid", "--wait=true", "--grace-period=1"]);
    assert!(eventually(Duration::from_secs(20), || host_pids(&["sleep", "3601"]).is_empty()));
    assert!(
        eventually(Duration::from_secs(20), || !std::fs::read_to_string("/proc/self/mountinfo").unwrap().contains("/run/nanokube/userns/")),
        "mounts left: {}",
        std::fs::read_to_string("/proc/self/mountinfo").unwrap().lines().filter(|l| l.contains("/run/nanokube/userns/")).collect::<Vec<_>>().join("\n")
    );
}
