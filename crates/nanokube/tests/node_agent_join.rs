//! `nanokube agent`: nodes that join a running cluster over HTTPS with a bootstrap token
//! and run their pods as real containers, held by the API server to their own objects.
//! Two agents (own node names, data directories and pod ranges) join one server; a wrong
//! token is refused; the scheduler places a pod on each; each pod runs from the image in
//! its agent's store with a configMap volume and a service-account token the agent got
//! through TokenRequest with its node certificate; the node's credentials (its
//! `kubelet.conf`, used by the real kubectl) reach its own pod and configMap but not the
//! other node's; `kubectl logs`, `exec` and `port-forward` reach the pods through the
//! agents' kubelet APIs; a pod on one agent reaches a Service (by its DNS name) whose
//! endpoint runs on the other; certificate requests are approved only for a node's own
//! names; deleting a pod stops it on its node; a stopped agent stops its pods.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use base64::Engine;
use common::{build_image, eventually, Server};
use serde_json::Value;

fn nanokube(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nanokube"));
    c.args(args);
    c
}

/// A running `nanokube agent`, stopped with SIGTERM (as a service manager stops it) and
/// reaped when dropped.
struct Agent {
    child: Option<Child>,
    data: PathBuf,
}

impl Agent {
    /// `join`: the `nanokube agent --server … --token …` part.
    fn start(join: &[&str], name: &str, data: &Path) -> Agent {
        let child = nanokube(join)
            .args(["--node-name", name])
            .arg("--data-dir")
            .arg(data)
            .args(["--kubelet-port", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Agent { child: Some(child), data: data.to_path_buf() }
    }

    /// SIGTERM, then the exit status.
    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: kill(2) on the PID of a child this test started and has not reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        for _ in 0..300 {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        child.wait().ok()
    }

    fn kubeconfig(&self) -> PathBuf {
        self.data.join("kubelet.conf")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "stdout: {}\nstderr: {}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn refused(out: &Output, why: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains(why), "expected {why:?}; stdout: {}\nstderr: {err}", String::from_utf8_lossy(&out.stdout));
}

/// kubectl with the node's own credentials.
fn as_node(s: &Server, agent: &Agent, args: &[&str]) -> Output {
    let cfg = agent.kubeconfig();
    let mut all = vec!["--kubeconfig", cfg.to_str().unwrap()];
    all.extend_from_slice(args);
    s.kubectl(&all)
}

fn pod_yaml(name: &str, node: &str, out: &Path) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: {name}}}}}
spec:
  nodeSelector: {{kubernetes.io/hostname: {node}}}
  terminationGracePeriodSeconds: 2
  containers:
  - name: main
    image: testbox:1.0
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "echo started on $(hostname); cat /var/run/secrets/kubernetes.io/serviceaccount/token > /out/token; cat /config/greeting > /out/greeting; hostname > /out/hostname; httpd -p 8080 -h /config; touch /out/done; exec sleep 3600"]
    volumeMounts:
    - {{name: out, mountPath: /out}}
    - {{name: config, mountPath: /config}}
  volumes:
  - name: out
    hostPath: {{path: {out}, type: DirectoryOrCreate}}
  - name: config
    configMap: {{name: config-{node}}}
"#,
        out = out.display()
    )
}

/// The node's client certificate and key from its `kubelet.conf`, as files in `dir`.
fn node_credentials(agent: &Agent, dir: &Path) -> (PathBuf, PathBuf) {
    let text = std::fs::read_to_string(agent.kubeconfig()).unwrap();
    let field = |name: &str| -> Vec<u8> {
        let line = text.lines().find_map(|l| l.trim().strip_prefix(&format!("{name}: "))).unwrap_or_else(|| panic!("{name} in kubelet.conf"));
        base64::engine::general_purpose::STANDARD.decode(line.trim()).unwrap()
    };
    let name = agent.data.file_name().unwrap().to_string_lossy().to_string();
    let (cert, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    std::fs::write(&cert, field("client-certificate-data")).unwrap();
    std::fs::write(&key, field("client-key-data")).unwrap();
    (cert, key)
}

/// `kubectl port-forward pod/<name> :<remote>`: the child and the local port it printed.
fn port_forward(s: &Server, name: &str, remote: u16) -> (common::KillOnDrop, u16) {
    use std::io::BufRead;
    let mut child = Command::new(common::kubectl_path("kubectl"))
        .args(["port-forward", &format!("pod/{name}"), &format!(":{remote}")])
        .env("KUBECONFIG", s.kubeconfig())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let local = loop {
        let line = lines.next().expect("kubectl port-forward ended").unwrap();
        // "Forwarding from 127.0.0.1:39215 -> 8080"
        if let Some((l, _)) = line.strip_prefix("Forwarding from 127.0.0.1:").and_then(|r| r.split_once(" -> ")) {
            break l.parse().unwrap();
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    (common::KillOnDrop(child), local)
}

fn pod(s: &Server, name: &str) -> Value {
    s.get_json(&format!("/api/v1/namespaces/default/pods/{name}")).1
}

#[test]
fn agents_join_with_a_token_and_run_their_pods() {
    let s = Server::start();
    let work = s.dir.path().join("image");
    std::fs::create_dir_all(&work).unwrap();
    let (archive, _) = build_image(&work, "testbox:1.0");
    let token = ok(&nanokube(&["token", "create", "--kubeconfig"]).arg(s.kubeconfig()).output().unwrap()).trim().to_string();

    // A wrong token is refused before anything is written.
    let bad = s.dir.path().join("bad");
    let out =
        nanokube(&["agent", "--server", &s.url, "--token", "abcdef.0123456789abcdef", "--discovery-token-unsafe-skip-ca-verification", "--node-name", "bad"])
            .arg("--data-dir")
            .arg(&bad)
            .output()
            .unwrap();
    assert!(!out.status.success(), "an agent with a wrong token started");
    assert!(!bad.join("kubelet.conf").exists());
    refused(&s.kubectl(&["get", "node", "bad"]), "not found");

    // One joins with the command kubeadm would print (the CA pinned by its key's hash),
    // the other trusting what the token's signature vouches for.
    let printed = ok(&nanokube(&["token", "create", "--print-join-command", "--kubeconfig"]).arg(s.kubeconfig()).output().unwrap());
    let pinned: Vec<&str> = printed.split_whitespace().skip(1).collect();
    assert!(
        printed.starts_with(&format!("nanokube agent --server {} --token ", s.url)) && printed.contains("--discovery-token-ca-cert-hash sha256:"),
        "{printed}"
    );
    let trusting = ["agent", "--server", &s.url, "--token", &token, "--discovery-token-unsafe-skip-ca-verification"];
    let mut agents = Vec::new();
    for (name, join) in [("agent-1", &pinned[..]), ("agent-2", &trusting[..])] {
        let data = s.dir.path().join(name);
        ok(&nanokube(&["image", "load"]).arg(&archive).arg("--data-dir").arg(&data).output().unwrap());
        agents.push(Agent::start(join, name, &data));
    }
    let mut cidrs: Vec<String> = Vec::new();
    for (a, name) in agents.iter().zip(["agent-1", "agent-2"]) {
        let ready = eventually(Duration::from_secs(60), || {
            let (_, node) = s.get_json(&format!("/api/v1/nodes/{name}"));
            node.pointer("/status/conditions").and_then(Value::as_array).is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
                && node.pointer("/spec/podCIDR").is_some()
        });
        assert!(ready, "{name} did not become Ready: {}", ok(&s.kubectl(&["get", "nodes", "-o", "wide"])));
        let (_, node) = s.get_json(&format!("/api/v1/nodes/{name}"));
        assert_eq!(node.pointer("/metadata/labels/kubernetes.io~1hostname").and_then(Value::as_str), Some(name));
        assert!(node.pointer("/metadata/labels/node-role.kubernetes.io~1control-plane").is_none(), "a joined node is no control plane");
        // Its pod range: a /24 of the cluster's given by the node IPAM controller, no
        // other node's.
        let cidr = node.pointer("/spec/podCIDR").and_then(Value::as_str).unwrap_or("").to_string();
        assert!(cidr.starts_with("127.244.") && cidr.ends_with(".0/24"), "{name}'s podCIDR {cidr:?}");
        assert_eq!(node.pointer("/spec/podCIDRs/0").and_then(Value::as_str), Some(cidr.as_str()));
        assert!(!cidrs.contains(&cidr), "{name}'s podCIDR {cidr} is another node's: {cidrs:?}");
        cidrs.push(cidr);
        // The certificate the join produced is the node's own identity.
        let who = ok(&as_node(&s, a, &["auth", "whoami", "-o", "jsonpath={.status.userInfo.username} {.status.userInfo.groups}"]));
        assert!(who.starts_with(&format!("system:node:{name} ")) && who.contains("system:nodes"), "{who}");
        let (_, lease) = s.get_json(&format!("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}"));
        assert_eq!(lease.pointer("/spec/holderIdentity").and_then(Value::as_str), Some(name));
    }

    // A pod scheduled to each agent runs there.
    let mut outs = Vec::new();
    for (i, node) in ["agent-1", "agent-2"].iter().enumerate() {
        ok(&s.kubectl(&["create", "configmap", &format!("config-{node}"), &format!("--from-literal=greeting=hello from {node}")]));
        let out = s.dir.path().join(format!("out-{i}"));
        ok(&s.k_stdin(&["apply", "-f", "-"], &pod_yaml(&format!("web-{i}"), node, &out)));
        outs.push(out);
    }
    for (i, node) in ["agent-1", "agent-2"].iter().enumerate() {
        let name = format!("web-{i}");
        let mut last = Value::Null;
        let running = eventually(Duration::from_secs(60), || {
            last = pod(&s, &name);
            last.pointer("/status/phase") == Some(&Value::from("Running")) && outs[i].join("done").exists()
        });
        assert!(running, "{name} on {node}: {}", serde_json::to_string_pretty(&last["status"]).unwrap());
        assert_eq!(last.pointer("/spec/nodeName").and_then(Value::as_str), Some(*node));
        let ip = last.pointer("/status/podIP").and_then(Value::as_str).unwrap_or("");
        let range = &cidrs[i];
        assert!(ip.starts_with(range.trim_end_matches("0/24")), "{name}'s IP {ip} is not from {node}'s range {range}");
        assert_eq!(last.pointer("/status/hostIP").and_then(Value::as_str), Some("127.0.0.1"));
        let ready = last.pointer("/status/conditions").and_then(Value::as_array).unwrap().iter().any(|c| c["type"] == "Ready" && c["status"] == "True");
        assert!(ready, "{}", last["status"]);
        // The container ran from the image with the volumes the agent read.
        assert_eq!(std::fs::read_to_string(outs[i].join("greeting")).unwrap(), format!("hello from {node}"));
        assert_eq!(std::fs::read_to_string(outs[i].join("hostname")).unwrap().trim(), name);
        // Its token came from TokenRequest, bound to this pod.
        let jwt = std::fs::read_to_string(outs[i].join("token")).unwrap();
        let payload = jwt.split('.').nth(1).expect("a JWT");
        let claims: Value = serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        assert_eq!(claims.pointer("/kubernetes.io/pod/name").and_then(Value::as_str), Some(name.as_str()), "{claims}");
        assert_eq!(claims.pointer("/kubernetes.io/node/name").and_then(Value::as_str), Some(*node), "{claims}");
        // kubelet's events, written by the agent.
        let events = ok(&s.kubectl(&[
            "get",
            "events",
            "--field-selector",
            &format!("involvedObject.name={name}"),
            "-o",
            "jsonpath={range .items[*]}{.reason}/{.source.host} {end}",
        ]));
        assert!(events.contains(&format!("Started/{node}")), "{events}");
        // The API server reaches the agent's kubelet API for logs and exec.
        let logs = ok(&s.kubectl(&["logs", &name]));
        assert_eq!(logs.trim(), format!("started on {name}"));
        assert_eq!(ok(&s.kubectl(&["exec", &name, "--", "cat", "/config/greeting"])), format!("hello from {node}"));
        let out = s.k_stdin(&["exec", "-i", &name, "--", "sh", "-c", "read line; echo got $line; exit 3"], "ping\n");
        assert_eq!((out.status.code(), String::from_utf8_lossy(&out.stdout).trim()), (Some(3), "got ping"));
        // And for port-forward.
        let (_forward, local) = port_forward(&s, &name, 8080);
        let page = Command::new("curl").args(["-sS", "--max-time", "10", &format!("http://127.0.0.1:{local}/greeting")]).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&page.stdout), format!("hello from {node}"), "{}", String::from_utf8_lossy(&page.stderr));
    }

    // The agents' kubelet APIs judge their callers through the API server: anonymous
    // callers get 401, another node's certificate 403 in kubelet's words.
    let (_, node1) = s.get_json("/api/v1/nodes/agent-1");
    let port = node1.pointer("/status/daemonEndpoints/kubeletEndpoint/Port").and_then(Value::as_i64).unwrap_or(0);
    assert!(port > 0, "agent-1 publishes no kubelet port");
    let kubelet = format!("https://127.0.0.1:{port}/pods");
    let curl = |extra: &[&str]| -> String {
        let out = Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(s.data.join("ca.crt"))
            .args(extra)
            .arg(&kubelet)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(curl(&[]), "401");
    let (cert, key) = node_credentials(&agents[1], s.dir.path());
    assert_eq!(curl(&["--cert", cert.to_str().unwrap(), "--key", key.to_str().unwrap()]), "403");
    let admin = [s.data.join("client.crt"), s.data.join("client.key")];
    assert_eq!(curl(&["--cert", admin[0].to_str().unwrap(), "--key", admin[1].to_str().unwrap()]), "200");

    // Each node's credentials reach its own pod and what it uses, not the other's.
    let (a1, a2) = (&agents[0], &agents[1]);
    ok(&as_node(&s, a1, &["get", "pod", "web-0"]));
    refused(&as_node(&s, a1, &["get", "pod", "web-1"]), "forbidden");
    ok(&as_node(&s, a1, &["get", "configmap", "config-agent-1"]));
    refused(&as_node(&s, a1, &["get", "configmap", "config-agent-2"]), "forbidden");
    ok(&s.kubectl(&["create", "secret", "generic", "unused", "--from-literal=k=v"]));
    refused(&as_node(&s, a2, &["get", "secret", "unused"]), "forbidden");
    refused(&as_node(&s, a2, &["label", "node", "agent-1", "x=y"]), "forbidden");

    // A node's serving certificate is approved only for its own name and addresses.
    let ask = |name: &str, subject: &str, sans: &str, signer: &str, usages: &str| {
        let dir = s.dir.path();
        let run = |args: &[&str]| assert!(Command::new("openssl").current_dir(dir).args(args).status().unwrap().success(), "openssl {args:?}");
        run(&["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", &format!("{name}.key")]);
        let (key, csr, san) = (format!("{name}.key"), format!("{name}.csr"), format!("subjectAltName={sans}"));
        let mut req = vec!["req", "-new", "-key", &key, "-subj", subject, "-out", &csr];
        if !sans.is_empty() {
            req.extend(["-addext", &san]);
        }
        run(&req);
        let request = base64::engine::general_purpose::STANDARD.encode(std::fs::read(dir.join(format!("{name}.csr"))).unwrap());
        let yaml = format!("apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata: {{name: {name}}}\nspec:\n  request: {request}\n  signerName: {signer}\n  usages: [{usages}]\n");
        let cfg = agents[1].kubeconfig();
        let mut child = Command::new(common::kubectl_path("kubectl"))
            .args(["--kubeconfig", cfg.to_str().unwrap(), "create", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), yaml.as_bytes()).unwrap();
        assert!(child.wait().unwrap().success());
    };
    // The refused ones first: the approver has seen them once it approved the last.
    let serving = |name: &str, node: &str, sans: &str| {
        ask(name, &format!("/O=system:nodes/CN=system:node:{node}"), sans, "kubernetes.io/kubelet-serving", "digital signature, server auth")
    };
    serving("foreign-address", "agent-2", "IP:127.0.0.99,DNS:agent-2");
    serving("other-node", "agent-1", "IP:127.0.0.1,DNS:agent-1");
    // Nor is the service proxy's certificate given with more than its name.
    ask("proxy-as-node", "/O=system:nodes/CN=system:kube-proxy", "", "kubernetes.io/kube-apiserver-client", "digital signature, client auth");
    serving("own-serving", "agent-2", "IP:127.0.0.1,DNS:agent-2");
    let approved = |name: &str| ok(&s.kubectl(&["get", "csr", name, "-o", "jsonpath={.status.conditions[*].type}"])).contains("Approved");
    assert!(eventually(Duration::from_secs(20), || approved("own-serving")), "agent-2's own serving request was not approved");
    for refused in ["foreign-address", "other-node", "proxy-as-node"] {
        assert!(!approved(refused), "{refused} was approved");
    }

    // A pod on one node reaches a Service whose endpoint runs on the other, by its DNS
    // name: each agent keeps the Service table with the service proxy's credentials.
    ok(&s.kubectl(&["create", "service", "clusterip", "greeter", "--tcp=80:8080"]));
    ok(&s.kubectl(&["set", "selector", "service", "greeter", "app=web-1"]));
    let mut answer = String::new();
    let reached = eventually(Duration::from_secs(30), || {
        let out = s.kubectl(&["exec", "web-0", "--", "timeout", "5", "wget", "-qO-", "http://greeter/greeting"]);
        answer = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        out.status.success() && answer == "hello from agent-2"
    });
    assert!(reached, "web-0 on agent-1 did not reach the Service greeter on agent-2: {answer}");
    let approved_proxy =
        ok(&s.kubectl(&["get", "csr", "-o", "jsonpath={range .items[*]}{.spec.username}:{.spec.signerName}:{.status.conditions[0].type} {end}"]));
    for node in ["agent-1", "agent-2"] {
        assert!(approved_proxy.contains(&format!("system:node:{node}:kubernetes.io/kube-apiserver-client:Approved")), "{approved_proxy}");
    }

    // Deleting a pod stops it on its node, which then removes it.
    ok(&s.kubectl(&["delete", "pod", "web-0", "--wait=false"]));
    assert!(eventually(Duration::from_secs(30), || pod(&s, "web-0").get("kind") == Some(&Value::from("Status"))), "web-0 was not removed by its node");

    // A stopped agent stops its pods' containers.
    let pid_of = |uid: &str, data: &Path| -> Option<i32> {
        std::fs::read_to_string(data.join("pods").join(uid).join("containers/main/0/shim.pid")).ok()?.trim().parse().ok()
    };
    let uid = pod(&s, "web-1").pointer("/metadata/uid").and_then(Value::as_str).unwrap_or("").to_string();
    let shim = pid_of(&uid, &a2.data);
    assert!(shim.is_some(), "no shim recorded for web-1");
    let status = agents[1].stop().expect("agent-2 ran");
    assert!(status.success(), "agent-2 exited with {status}");
    assert!(!Path::new(&format!("/proc/{}", shim.unwrap())).exists(), "web-1's shim outlived its agent");
    ok(&s.kubectl(&["delete", "pod", "web-1", "--grace-period=0", "--force"]));
    agents[0].stop();
}
