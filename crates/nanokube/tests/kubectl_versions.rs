//! Every kubectl from 1.27 to 1.33 (installed beside `kubectl` as `kubectl.1.NN`) works
//! with no extra flags: discovery, Tables, protobuf creates, create -f / apply with
//! OpenAPI validation, delete with wait; a CRD and its custom objects (apply, printer
//! columns, strict field validation, explain).

mod common;

use common::{table, Server};

#[test]
fn kubectl_1_27_to_1_33() {
    // A control plane only: the pods stay Pending, as the tables asserted show them.
    let s = Server::start_with(&["--node=false"]);
    for minor in 27..=33 {
        let bin = format!("kubectl.1.{minor}");
        let run = |args: &[&str]| -> String {
            let out = s.kubectl_bin(&bin, args);
            assert!(out.status.success(), "{bin} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8(out.stdout).unwrap()
        };
        let ns = format!("v{minor}");
        assert_eq!(run(&["create", "namespace", &ns]).trim(), format!("namespace/{ns} created"));
        assert_eq!(run(&["create", "configmap", "c", "--from-literal=k=v", "-n", &ns]).trim(), "configmap/c created");
        let (h, rows) = table(&run(&["get", "cm", "-n", &ns]));
        assert_eq!(h, ["NAME", "DATA", "AGE"], "{bin}");
        assert!(rows.iter().any(|r| r[0] == "c" && r[1] == "1"), "{bin}");
        let manifest = std::env::temp_dir().join(format!("nk-{}-{minor}.yaml", std::process::id()));
        let m = manifest.to_str().unwrap();
        std::fs::write(&manifest, format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: applied\n  namespace: {ns}\ndata:\n  a: b\n")).unwrap();
        assert_eq!(run(&["apply", "-f", m]).trim(), "configmap/applied created", "{bin}");
        assert_eq!(run(&["apply", "-f", m]).trim(), "configmap/applied unchanged", "{bin}");
        // stringData is folded into data by the server.
        std::fs::write(&manifest, format!("apiVersion: v1\nkind: Secret\nmetadata:\n  name: s\n  namespace: {ns}\nstringData:\n  a: b\n")).unwrap();
        assert_eq!(run(&["create", "-f", m]).trim(), "secret/s created", "{bin}");
        std::fs::remove_file(&manifest).unwrap();
        assert_eq!(run(&["get", "secret", "s", "-n", &ns, "-o", "jsonpath={.data.a}"]), "Yg==", "{bin}");
        let (h, _) = table(&run(&["get", "deploy,svc", "-A"]));
        assert_eq!(h[0], "NAMESPACE", "{bin}");
        // The rest of issue #2's list, for every version.
        assert!(run(&["version"]).contains("v1.33.0+nanokube"), "{bin}");
        assert!(run(&["cluster-info"]).contains("is running at"), "{bin}");
        assert!(run(&["api-resources"]).lines().any(|l| l.starts_with("deployments ")), "{bin}");
        assert!(run(&["get", "all", "-A"]).contains("service/kubernetes"), "{bin}");
        assert_eq!(run(&["create", "deployment", "d", "--image=nginx", "-n", &ns]).trim(), "deployment.apps/d created", "{bin}");
        assert_eq!(run(&["label", "deploy", "d", "tier=web", "-n", &ns]).trim(), "deployment.apps/d labeled", "{bin}");
        // kubectl 1.27 itself prints "annotate" here; later versions "annotated".
        assert!(run(&["annotate", "deploy", "d", "note=x", "-n", &ns]).trim().starts_with("deployment.apps/d annotate"), "{bin}");
        assert!(run(&["describe", "deploy", "d", "-n", &ns]).contains("tier=web"), "{bin}");
        assert_eq!(run(&["get", "deploy", "d", "-n", &ns, "-o", "name"]).trim(), "deployment.apps/d", "{bin}");
        assert_eq!(run(&["get", "deploy", "d", "-n", &ns, "-o", "jsonpath={.spec.replicas}"]), "1", "{bin}");
        assert!(run(&["get", "deploy", "d", "-n", &ns, "-o", "yaml"]).contains("kind: Deployment"), "{bin}");
        assert!(run(&["get", "deploy", "d", "-n", &ns, "-o", "json"]).contains("\"kind\": \"Deployment\""), "{bin}");
        assert_eq!(run(&["run", "p", "--image=nginx", "-n", &ns]).trim(), "pod/p created", "{bin}");
        let (h, rows) = table(&run(&["get", "pods", "-n", &ns, "-o", "wide"]));
        assert_eq!(h[..5], ["NAME", "READY", "STATUS", "RESTARTS", "AGE"], "{bin}");
        assert!(h.contains(&"NODE".to_string()), "{bin}");
        let p = rows.iter().find(|r| r[0] == "p").expect("pod p listed");
        assert_eq!(p[..3], ["p", "0/1", "Pending"], "{bin}");
        // A finite watch (the server closes it) prints the table and exits 0.
        assert!(run(&["get", "cm", "-n", &ns, "--watch", "--request-timeout=2s"]).contains("kube-root-ca.crt"), "{bin}");
        assert!(run(&["config", "view", "--minify"]).contains("current-context: nanokube"), "{bin}");
        assert_eq!(run(&["delete", "cm", "c", "-n", &ns]).trim(), "configmap \"c\" deleted", "{bin}");

        // A CRD per version (its own group), and a custom object through it.
        let group = format!("v{minor}.example.com");
        std::fs::write(
            &manifest,
            format!(
                "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: gadgets.{group}\nspec:\n  group: {group}\n  scope: Namespaced\n  names:\n    plural: gadgets\n    kind: Gadget\n  versions:\n  - name: v1\n    served: true\n    storage: true\n    additionalPrinterColumns:\n    - {{name: Size, type: integer, jsonPath: .spec.size}}\n    schema:\n      openAPIV3Schema:\n        type: object\n        properties:\n          spec:\n            type: object\n            description: What the gadget is like.\n            properties:\n              size: {{type: integer, description: How big it is.}}\n"
            ),
        )
        .unwrap();
        assert_eq!(run(&["apply", "-f", m]).trim(), format!("customresourcedefinition.apiextensions.k8s.io/gadgets.{group} created"), "{bin}");
        run(&["wait", "--for", "condition=established", &format!("crd/gadgets.{group}"), "--timeout=5s"]);
        std::fs::write(&manifest, format!("apiVersion: {group}/v1\nkind: Gadget\nmetadata:\n  name: g\n  namespace: {ns}\nspec:\n  size: 3\n")).unwrap();
        assert_eq!(run(&["apply", "-f", m]).trim(), format!("gadget.{group}/g created"), "{bin}");
        assert_eq!(run(&["apply", "-f", m]).trim(), format!("gadget.{group}/g unchanged"), "{bin}");
        let (h, rows) = table(&run(&["get", &format!("gadgets.{group}"), "-n", &ns]));
        assert_eq!((h, rows[0][..2].to_vec()), (vec!["NAME".to_string(), "SIZE".to_string()], vec!["g".to_string(), "3".to_string()]), "{bin}");
        std::fs::write(&manifest, format!("apiVersion: {group}/v1\nkind: Gadget\nmetadata:\n  name: g2\n  namespace: {ns}\nspec:\n  size: 3\n  colour: red\n"))
            .unwrap();
        let out = s.kubectl_bin(&bin, &["apply", "-f", m]);
        assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field \"spec.colour\""), "{bin}: {}", String::from_utf8_lossy(&out.stderr));
        std::fs::remove_file(&manifest).unwrap();
        assert!(run(&["explain", &format!("gadgets.{group}.spec")]).contains("How big it is."), "{bin}");
    }
}

/// The checksum `md5sum` gives for `path`.
fn md5_of(path: &std::path::Path) -> String {
    let out = std::process::Command::new("md5sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or("").to_string()
}

/// `kubectl port-forward` running on free local ports: the child and, for each remote
/// port, the local one it printed.
fn port_forward(bin: &str, s: &Server, remote: &[u16]) -> (common::KillOnDrop, Vec<u16>) {
    use std::io::BufRead;
    let mut args = vec!["port-forward".to_string(), "pod/web".to_string()];
    args.extend(remote.iter().map(|p| format!(":{p}")));
    let mut child = std::process::Command::new(common::kubectl_path(bin))
        .args(&args)
        .env("KUBECONFIG", s.kubeconfig())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut local = vec![0u16; remote.len()];
    let mut lines = std::io::BufReader::new(stdout).lines();
    while local.contains(&0) {
        let line = lines.next().expect("kubectl port-forward ended").unwrap();
        // "Forwarding from 127.0.0.1:39215 -> 8080"
        if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
            let (l, r) = rest.split_once(" -> ").unwrap();
            let i = remote.iter().position(|p| p.to_string() == r.trim()).unwrap();
            local[i] = l.parse().unwrap();
        }
    }
    // Keep reading so kubectl never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (common::KillOnDrop(child), local)
}

#[test]
fn into_running_pods_with_every_kubectl() {
    // exec (exit code, stdin, a terminal), attach and run -i/-it --rm, debug -it, port-forward (two
    // ports, 20 connections at once, 10 MiB down and 3 MiB up checksummed), cp both ways,
    // logs -f and top, with every
    // kubectl: 1.27–1.29 over SPDY/3.1, 1.30 and newer over WebSocket (port-forward
    // tunnels SPDY inside it from 1.31).
    let s = common::server_with_image();
    let script = "busybox --install -s /bin; mkdir /www; dd if=/dev/urandom of=/www/big bs=1M count=10 2>/dev/null; md5sum /www/big > /www/big.md5; \
                  for i in $(seq 20); do echo page$i > /www/p$i; done; httpd -p 8080 -h /www; nc -ll -p 9000 -e md5sum & \
                  while true; do echo tick; sleep 0.2; done";
    s.k(&["run", "web", "--image=testbox:1.0", "--", "sh", "-c", script]);
    let ok = s.kubectl(&["wait", "--for=condition=Ready", "pod/web", "--timeout=30s"]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(common::eventually(std::time::Duration::from_secs(20), || s.kubectl(&["exec", "web", "--", "cat", "/www/big.md5"]).status.success()));
    let big_md5 = s.k(&["exec", "web", "--", "cat", "/www/big.md5"]).split_whitespace().next().unwrap().to_string();
    let work = s.dir.path().join("files");
    std::fs::create_dir_all(&work).unwrap();
    let upload = work.join("upload");
    let mut data = vec![0u8; 10 << 20];
    for (i, b) in data.iter_mut().enumerate() {
        *b = (i.wrapping_mul(2654435761) >> 13) as u8;
    }
    std::fs::write(&upload, &data).unwrap();
    let upload_md5 = md5_of(&upload);

    // Resource figures (metrics.k8s.io) come once the node has sampled the pod twice.
    assert!(common::eventually(std::time::Duration::from_secs(30), || s.kubectl(&["top", "pod", "web"]).status.success()));

    for minor in 27..=33 {
        let bin = format!("kubectl.1.{minor}");
        let kubectl = |args: &[&str]| s.kubectl_bin(&bin, args);

        // top: the pod's and the node's figures.
        let out = kubectl(&["top", "pod", "web", "--containers"]);
        let (h, rows) = common::table(&String::from_utf8_lossy(&out.stdout));
        assert_eq!(h, ["POD", "NAME", "CPU(cores)", "MEMORY(bytes)"], "{bin}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(rows[0][0] == "web" && rows[0][1] == "web" && rows[0][2].ends_with('m') && rows[0][3].ends_with("Mi"), "{bin}: {rows:?}");
        let out = kubectl(&["top", "node"]);
        let (h, rows) = common::table(&String::from_utf8_lossy(&out.stdout));
        // kubectl itself titles the percentages "CPU%" before 1.31, "CPU(%)" after.
        assert_eq!(h[..2], ["NAME", "CPU(cores)"], "{bin}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(h[2].starts_with("CPU") && h[4].starts_with("MEMORY"), "{bin}: {h:?}");
        assert_eq!(rows.len(), 1, "{bin}");

        // exec: stdout and stderr apart, the exit code.
        let out = kubectl(&["exec", "web", "--", "sh", "-c", "echo out; echo err >&2; exit 3"]);
        assert_eq!(out.status.code(), Some(3), "{bin}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n", "{bin}");
        // client-go 1.31's WebSocket reader can start before its streams exist and then
        // logs (and drops) the empty "ready" message the server sends first, as
        // kube-apiserver does: that log line is not the container's.
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Once the pod has debug containers kubectl also says which container it chose.
        let stderr: String =
            stderr.lines().filter(|l| !l.contains("Unknown stream id") && !l.starts_with("Defaulted container")).map(|l| format!("{l}\n")).collect();
        assert!(stderr.starts_with("err\n"), "{bin}: {stderr}");
        // stdin: 10 MiB in, its checksum out.
        let out = std::process::Command::new(common::kubectl_path(&bin))
            .args(["exec", "-i", "web", "--", "md5sum"])
            .env("KUBECONFIG", s.kubeconfig())
            .stdin(std::fs::File::open(&upload).unwrap())
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).split_whitespace().next(),
            Some(upload_md5.as_str()),
            "{bin}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // A terminal of the caller's size. The size comes on the resize channel once the
        // process runs (with containerd too), so it is read after a moment.
        let line = format!("stty cols 91 rows 33; {} exec -it web -- sh -c 'sleep 0.5; stty size'", common::kubectl_path(&bin).display());
        let out = std::process::Command::new("script")
            .args(["-qec", &line, "/dev/null"])
            .env("KUBECONFIG", s.kubeconfig())
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("33 91"), "{bin}: {}", String::from_utf8_lossy(&out.stdout));

        // attach: the container's live output; run -i --rm with stdin and the exit code;
        // run -it --rm on a terminal of the caller's size.
        let mut attached = std::process::Command::new(common::kubectl_path(&bin))
            .args(["attach", "web"])
            .env("KUBECONFIG", s.kubeconfig())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        {
            use std::io::BufRead;
            let lines = std::io::BufReader::new(attached.stdout.take().unwrap()).lines();
            assert_eq!(lines.take(2).filter(|l| l.as_deref().ok() == Some("tick")).count(), 2, "{bin}: attach");
        }
        let _ = attached.kill();
        let _ = attached.wait();
        let name = format!("once-{minor}");
        let out = s.kubectl_input(
            &bin,
            &["run", &name, "-i", "--rm", "--restart=Never", "--image=testbox:1.0", "--", "sh", "-c", "read l; echo got $l; exit 2"],
            b"hi\n",
        );
        assert_eq!(out.status.code(), Some(2), "{bin}: {} {}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("got hi"), "{bin}: {}", String::from_utf8_lossy(&out.stdout));
        let (screen, code) = s.kubectl_on_terminal(
            &bin,
            &format!("run tty-{minor} -it --rm --restart=Never --image=testbox:1.0 -- sh"),
            "try pressing enter",
            "sleep 0.5; stty size; exit 5\n",
        );
        assert!(screen.contains("33 91") && code == Some(5), "{bin}: {code:?} {screen}");

        // debug: an ephemeral container in the target's process namespace, on a terminal.
        let (screen, _) = s.kubectl_on_terminal(
            &bin,
            &format!("debug -it web --image=testbox:1.0 --target=web -c dbg-{minor} -- sh"),
            "try pressing enter",
            "ps -o args | grep -c '^httpd'; exit\n",
        );
        assert!(screen.lines().any(|l| l.trim() == "1"), "{bin}: the target's httpd seen: {screen}");

        // port-forward: two ports, 20 connections at once, big transfers both ways.
        let (forward, local) = port_forward(&bin, &s, &[8080, 9000]);
        let pages: Vec<_> = (1..=20)
            .map(|i| {
                let url = format!("http://127.0.0.1:{}/p{i}", local[0]);
                std::thread::spawn(move || std::process::Command::new("curl").args(["-sS", "-m", "20", &url]).output().unwrap())
            })
            .collect();
        for (i, p) in pages.into_iter().enumerate() {
            let out = p.join().unwrap();
            assert_eq!(String::from_utf8_lossy(&out.stdout), format!("page{}\n", i + 1), "{bin}: {}", String::from_utf8_lossy(&out.stderr));
        }
        let down = work.join(format!("down-{minor}"));
        let out =
            std::process::Command::new("curl").args(["-sS", "-m", "30", "-o"]).arg(&down).arg(format!("http://127.0.0.1:{}/big", local[0])).output().unwrap();
        assert!(out.status.success(), "{bin}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(md5_of(&down), big_md5, "{bin}: the download");
        {
            use std::io::{Read, Write};
            let mut c = std::net::TcpStream::connect(("127.0.0.1", local[1])).unwrap();
            c.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
            c.write_all(&data[..3 << 20]).unwrap();
            c.shutdown(std::net::Shutdown::Write).unwrap();
            let mut answer = String::new();
            c.read_to_string(&mut answer).unwrap();
            let expected = {
                let f = work.join("three");
                std::fs::write(&f, &data[..3 << 20]).unwrap();
                md5_of(&f)
            };
            assert_eq!(answer.split_whitespace().next(), Some(expected.as_str()), "{bin}: the upload");
        }
        drop(forward);

        // cp both ways (tar over exec).
        let into = format!("web:/www/in-{minor}");
        let out = kubectl(&["cp", upload.to_str().unwrap(), &into]);
        assert!(out.status.success(), "{bin}: {}", String::from_utf8_lossy(&out.stderr));
        let there = String::from_utf8(kubectl(&["exec", "web", "--", "md5sum", &format!("/www/in-{minor}")]).stdout).unwrap();
        assert_eq!(there.split_whitespace().next(), Some(upload_md5.as_str()), "{bin}: cp into the pod");
        let back = work.join(format!("back-{minor}"));
        let out = kubectl(&["cp", "web:/www/big", back.to_str().unwrap()]);
        assert!(out.status.success(), "{bin}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(md5_of(&back), big_md5, "{bin}: cp out of the pod");

        // logs -f follows while the container writes.
        let mut follow = std::process::Command::new(common::kubectl_path(&bin))
            .args(["logs", "-f", "--tail=1", "web"])
            .env("KUBECONFIG", s.kubeconfig())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::BufRead;
            let lines = std::io::BufReader::new(follow.stdout.take().unwrap()).lines();
            assert_eq!(lines.take(4).filter(|l| l.as_deref().ok() == Some("tick")).count(), 4, "{bin}: logs -f");
        }
        let _ = follow.kill();
        let _ = follow.wait();
    }

    // A port nothing listens on: kubelet's words on the error stream, which kubectl shows.
    let mut child = std::process::Command::new(common::kubectl_path("kubectl"))
        .args(["port-forward", "pod/web", ":9999"])
        .env("KUBECONFIG", s.kubeconfig())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let local: u16 = {
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let line = lines.next().unwrap().unwrap();
        // Keep reading: a closed pipe would end kubectl at its next line.
        std::thread::spawn(move || lines.for_each(drop));
        line.strip_prefix("Forwarding from 127.0.0.1:").unwrap().split(' ').next().unwrap().parse().unwrap()
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let forward = common::KillOnDrop(child);
    let out = std::process::Command::new("curl").args(["-sS", "-m", "10"]).arg(format!("http://127.0.0.1:{local}/")).output().unwrap();
    assert!(!out.status.success());
    let said = rx.recv_timeout(std::time::Duration::from_secs(10)).expect("kubectl said nothing");
    assert!(said.contains("error forwarding port 9999 to pod") && said.contains("connect: connection refused"), "{said}");
    drop(forward);
}
