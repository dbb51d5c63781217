//! A node joining with a bootstrap token, as kubeadm's TLS bootstrap does, with the real
//! kubectl and openssl: `nanokube token create`, the token user and its groups, a wrong
//! token refused; the node's client-certificate request approved automatically (kubeadm's
//! bindings and the csrapproving controller) and signed; then the Node authorizer and
//! NodeRestriction: the node reads only the secrets and configmaps its pods use, lists
//! only its own pods, writes only itself and its pods' status, and gets tokens only for
//! its pods; a deleted or expired token stops working, and the cleaner removes it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use base64::Engine;
use common::{eventually, Server};

fn nanokube(s: &Server, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nanokube")).args(args).arg("--kubeconfig").arg(s.kubeconfig()).output().unwrap()
}

fn create_token(s: &Server, extra: &[&str]) -> String {
    let mut args = vec!["token", "create"];
    args.extend_from_slice(extra);
    let out = nanokube(s, &args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A kubeconfig for this cluster with the given user entry (YAML lines under `user:`).
fn kubeconfig(s: &Server, name: &str, user: &str) -> PathBuf {
    let path = s.dir.path().join(format!("{name}.kubeconfig"));
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: u\n  user:\n{user}\ncontexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n",
        s.url,
        s.data.join("ca.crt").display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn token_kubeconfig(s: &Server, name: &str, token: &str) -> PathBuf {
    kubeconfig(s, name, &format!("    token: {token}"))
}

/// kubectl with another identity's kubeconfig.
fn k_as(s: &Server, cfg: &Path, args: &[&str]) -> Output {
    let mut all = vec!["--kubeconfig", cfg.to_str().unwrap()];
    all.extend_from_slice(args);
    s.kubectl(&all)
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "stdout: {}\nstderr: {}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn refused(out: &Output, why: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success() && err.contains(why), "expected {why:?}; stdout: {}\nstderr: {err}", String::from_utf8_lossy(&out.stdout));
    err
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().unwrap();
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CSR object asking `signer` for `subject`, its key written to `<name>.key`.
fn csr(dir: &Path, name: &str, subject: &str, signer: &str, usages: &str) -> String {
    openssl(dir, &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", &format!("{name}.key")]);
    openssl(dir, &["req", "-new", "-key", &format!("{name}.key"), "-subj", subject, "-out", &format!("{name}.csr")]);
    let request = base64::engine::general_purpose::STANDARD.encode(std::fs::read(dir.join(format!("{name}.csr"))).unwrap());
    format!(
        "apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata:\n  name: {name}\nspec:\n  request: {request}\n  signerName: {signer}\n  usages: [{usages}]\n"
    )
}

/// A merge patch sent with curl as the holder of a client certificate: (status, body).
fn patch_with_cert(s: &Server, cert: &Path, key: &Path, path: &str, body: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "-w", "\\n%{http_code}", "-X", "PATCH", "-H", "Content-Type: application/merge-patch+json", "--data-binary", body, "--cacert"])
        .arg(s.data.join("ca.crt"))
        .arg("--cert")
        .arg(cert)
        .arg("--key")
        .arg(key)
        .arg(format!("{}{path}", s.url))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// GET with no credentials (trusting the cluster CA), as a joining node first reads.
fn anonymous_get(s: &Server, path: &str) -> serde_json::Value {
    let out = Command::new("curl").args(["-sS", "--cacert"]).arg(s.data.join("ca.crt")).arg(format!("{}{path}", s.url)).output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

const KUBELET_USAGES: &str = "digital signature, key encipherment, client auth";

#[test]
fn a_node_joins_with_a_bootstrap_token_and_is_kept_to_its_own() {
    let s = Server::start_with(&["--node=false"]);
    let dir = s.dir.path().to_path_buf();

    // The token: kubeadm's shape, listed with its usages, a user in the bootstrap groups.
    let token = create_token(&s, &["--description", "join n1"]);
    let (id, secret) = token.split_once('.').unwrap();
    assert!(id.len() == 6 && secret.len() == 16, "{token}");
    let listed = String::from_utf8(nanokube(&s, &["token", "list"]).stdout).unwrap();
    assert!(listed.contains(&token) && listed.contains("authentication,signing") && listed.contains("join n1"), "{listed}");
    let bootstrap = token_kubeconfig(&s, "bootstrap", &token);
    let who: serde_json::Value = serde_json::from_str(&ok(&k_as(&s, &bootstrap, &["auth", "whoami", "-o", "json"]))).unwrap();
    assert_eq!(who["status"]["userInfo"]["username"], format!("system:bootstrap:{id}"), "{who}");
    let groups = who["status"]["userInfo"]["groups"].to_string();
    for g in ["system:bootstrappers", "system:bootstrappers:kubeadm:default-node-token", "system:authenticated"] {
        assert!(groups.contains(&format!("\"{g}\"")), "{who}");
    }
    // A wrong secret for the right id, and a token nobody made: 401.
    let wrong = token_kubeconfig(&s, "wrong", &format!("{id}.{}", "0".repeat(16)));
    refused(&k_as(&s, &wrong, &["get", "--raw", "/api"]), "Unauthorized");
    let unknown = token_kubeconfig(&s, "unknown", "zzzzzz.0123456789abcdef");
    refused(&k_as(&s, &unknown, &["get", "--raw", "/api"]), "Unauthorized");
    // The token may ask for certificates, not read the cluster.
    refused(&k_as(&s, &bootstrap, &["get", "secrets", "-n", "kube-system"]), "Forbidden");

    // Discovery, as `kubeadm join` does it: anyone may read cluster-info, whose kubeconfig
    // (this server and its CA) carries the token's signature: HS256 over it, keyed with
    // the token's secret, checked here with openssl.
    let mut info = serde_json::Value::Null;
    assert!(
        eventually(Duration::from_secs(10), || {
            info = anonymous_get(&s, "/api/v1/namespaces/kube-public/configmaps/cluster-info");
            info["data"][format!("jws-kubeconfig-{id}")].is_string()
        }),
        "{info}"
    );
    let discovered = info["data"]["kubeconfig"].as_str().unwrap();
    assert!(discovered.contains(&format!("server: {}", s.url)), "{discovered}");
    let ca = base64::engine::general_purpose::STANDARD.encode(std::fs::read(s.data.join("ca.crt")).unwrap());
    assert!(discovered.contains(&format!("certificate-authority-data: {ca}")), "{discovered}");
    let jws = info["data"][format!("jws-kubeconfig-{id}")].as_str().unwrap();
    let (header, signature) = jws.split_once("..").unwrap();
    let url64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    assert_eq!(String::from_utf8(url64.decode(header).unwrap()).unwrap(), format!(r#"{{"alg":"HS256","kid":"{id}"}}"#));
    std::fs::write(dir.join("signed"), format!("{header}.{}", url64.encode(discovered))).unwrap();
    let mac = Command::new("openssl").current_dir(&dir).args(["dgst", "-sha256", "-binary", "-hmac", secret, "signed"]).output().unwrap();
    assert_eq!(url64.encode(&mac.stdout), signature, "the signature does not verify with the token's secret");

    // TLS bootstrap: the node's own request is approved by the controller and signed.
    let yaml = csr(&dir, "node-csr-n1", "/O=system:nodes/CN=system:node:n1", "kubernetes.io/kube-apiserver-client-kubelet", KUBELET_USAGES);
    ok(&s.k_stdin(&["--kubeconfig", bootstrap.to_str().unwrap(), "create", "-f", "-"], &yaml));
    let mut cert = String::new();
    assert!(eventually(Duration::from_secs(15), || {
        cert = s.k(&["get", "csr", "node-csr-n1", "-o", "jsonpath={.status.certificate}"]);
        !cert.is_empty()
    }));
    let approved = s.k(&["get", "csr", "node-csr-n1", "-o", "jsonpath={.status.conditions[0].reason}/{.spec.username}"]);
    assert_eq!(approved, format!("AutoApproved/system:bootstrap:{id}"));
    std::fs::write(dir.join("n1.crt"), base64::engine::general_purpose::STANDARD.decode(&cert).unwrap()).unwrap();
    // Requests that are not a kubelet's client certificate wait for a person.
    let other = csr(&dir, "someone", "/CN=someone", "kubernetes.io/kube-apiserver-client", "client auth");
    ok(&s.k_stdin(&["--kubeconfig", bootstrap.to_str().unwrap(), "create", "-f", "-"], &other));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(s.k(&["get", "csr", "someone", "-o", "jsonpath={.status.conditions}"]), "", "a non-kubelet request was approved");

    let n1 =
        kubeconfig(&s, "n1", &format!("    client-certificate: {}\n    client-key: {}", dir.join("n1.crt").display(), dir.join("node-csr-n1.key").display()));
    let who: serde_json::Value = serde_json::from_str(&ok(&k_as(&s, &n1, &["auth", "whoami", "-o", "json"]))).unwrap();
    assert_eq!(who["status"]["userInfo"]["username"], "system:node:n1", "{who}");

    // The node registers itself, not another.
    let node = |name: &str| format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels:\n    kubernetes.io/hostname: {name}\n");
    ok(&s.k_stdin(&["--kubeconfig", n1.to_str().unwrap(), "create", "-f", "-"], &node("n1")));
    refused(&s.k_stdin(&["--kubeconfig", n1.to_str().unwrap(), "create", "-f", "-"], &node("n2")), "node \"n1\" is not allowed to modify node \"n2\"");
    ok(&s.k_stdin(&["create", "-f", "-"], &node("n2")));
    refused(&k_as(&s, &n1, &["get", "nodes"]), "node 'n1' cannot read all nodes, only its own Node object");
    refused(&k_as(&s, &n1, &["label", "node", "n2", "x=y"]), "node 'n1' cannot read 'n2', only its own Node object");
    ok(&k_as(&s, &n1, &["label", "node", "n1", "example.com/role=worker"]));
    refused(
        &k_as(&s, &n1, &["label", "node", "n1", "node-restriction.kubernetes.io/pool=a"]),
        "is not allowed to modify labels: node-restriction.kubernetes.io/pool",
    );

    // Pods bound to each node, using a secret and a configmap each.
    for n in ["1", "2"] {
        s.k(&["create", "secret", "generic", &format!("s{n}"), "--from-literal=k=v"]);
        s.k(&["create", "configmap", &format!("c{n}"), "--from-literal=k=v"]);
        let pod = format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p{n}\nspec:\n  nodeName: n{n}\n  containers:\n  - name: c\n    image: busybox\n    env:\n    - name: S\n      valueFrom:\n        secretKeyRef: {{name: s{n}, key: k}}\n  volumes:\n  - name: v\n    configMap: {{name: c{n}}}\n"
        );
        ok(&s.k_stdin(&["create", "-f", "-"], &pod));
    }
    assert!(eventually(Duration::from_secs(10), || k_as(&s, &n1, &["get", "secret", "s1"]).status.success()));
    ok(&k_as(&s, &n1, &["get", "configmap", "c1"]));
    refused(&k_as(&s, &n1, &["get", "secret", "s2"]), "no relationship found between node 'n1' and this object");
    refused(&k_as(&s, &n1, &["get", "configmap", "c2"]), "no relationship found between node 'n1' and this object");
    refused(&k_as(&s, &n1, &["get", "secrets"]), "Forbidden");
    refused(&k_as(&s, &n1, &["get", "pods", "-A"]), "can only list/watch pods with spec.nodeName field selector");
    let own = ok(&k_as(&s, &n1, &["get", "pods", "-A", "--field-selector", "spec.nodeName=n1", "-o", "name"]));
    assert_eq!(own.trim(), "pod/p1");
    ok(&k_as(&s, &n1, &["get", "pod", "p1"]));
    refused(&k_as(&s, &n1, &["get", "pod", "p2"]), "Forbidden");

    // Writes: its pods' status, mirror pods only, tokens for its pods, its own lease.
    let status = r#"{"status":{"conditions":[{"type":"PodReadyToStartContainers","status":"True"}]}}"#;
    // (As a kubelet does: a PATCH, no GET of pods/status, which nodes may not read.)
    let out = patch_with_cert(&s, &dir.join("n1.crt"), &dir.join("node-csr-n1.key"), "/api/v1/namespaces/default/pods/p1/status", status);
    assert_eq!(out.0, 200, "{out:?}");
    // The authorizer lets nodes patch pod status in general; NodeRestriction refuses p2.
    let out = patch_with_cert(&s, &dir.join("n1.crt"), &dir.join("node-csr-n1.key"), "/api/v1/namespaces/default/pods/p2/status", status);
    assert!(out.0 == 403 && out.1.contains("can only update pod status for pods with spec.nodeName set to itself"), "{out:?}");
    let plain = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: sneaky\nspec:\n  nodeName: n1\n  containers:\n  - {name: c, image: busybox}\n";
    refused(&s.k_stdin(&["--kubeconfig", n1.to_str().unwrap(), "create", "-f", "-"], plain), "node \"n1\" can only create mirror pods");
    let token_for = |pod: &str| k_as(&s, &n1, &["create", "token", "default", "--bound-object-kind", "Pod", "--bound-object-name", pod]);
    assert!(ok(&token_for("p1")).starts_with("ey"));
    refused(&token_for("p2"), "node requested token bound to a pod scheduled on a different node");
    refused(&k_as(&s, &n1, &["create", "token", "default"]), "node requested token not bound to a pod");
    let lease = |name: &str| {
        format!("apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata:\n  name: {name}\n  namespace: kube-node-lease\nspec:\n  holderIdentity: {name}\n")
    };
    ok(&s.k_stdin(&["--kubeconfig", n1.to_str().unwrap(), "create", "-f", "-"], &lease("n1")));
    refused(
        &s.k_stdin(&["--kubeconfig", n1.to_str().unwrap(), "create", "-f", "-"], &lease("n2")),
        "can only access node lease with the same name as the requesting node",
    );

    // The token deleted: refused, its signature gone; the node's certificate goes on working.
    let out = nanokube(&s, &["token", "delete", id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    refused(&k_as(&s, &bootstrap, &["auth", "whoami"]), "Unauthorized");
    assert!(eventually(Duration::from_secs(10), || {
        anonymous_get(&s, "/api/v1/namespaces/kube-public/configmaps/cluster-info")["data"].get(format!("jws-kubeconfig-{id}")).is_none()
    }));
    ok(&k_as(&s, &n1, &["get", "node", "n1"]));
}

#[test]
fn an_expired_token_is_refused_and_cleaned_up() {
    let s = Server::start_with(&["--node=false"]);
    let token = create_token(&s, &["--ttl", "3s"]);
    let id = token.split('.').next().unwrap().to_string();
    let cfg = token_kubeconfig(&s, "short", &token);
    ok(&k_as(&s, &cfg, &["auth", "whoami"]));
    assert!(eventually(Duration::from_secs(10), || !k_as(&s, &cfg, &["auth", "whoami"]).status.success()));
    refused(&k_as(&s, &cfg, &["auth", "whoami"]), "Unauthorized");
    // kube-controller-manager's tokencleaner deletes the Secret.
    assert!(eventually(Duration::from_secs(10), || !s.kubectl(&["get", "secret", "-n", "kube-system", &format!("bootstrap-token-{id}")]).status.success()));
    // A token that is not of the bootstrap shape, or names groups outside the bootstrappers', is refused by the CLI.
    let out = nanokube(&s, &["token", "create", "not-a-token"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("is not a bootstrap token"));
    let out = nanokube(&s, &["token", "create", "--groups", "system:masters"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("must start with"));
}

/// `kubeadm join`'s discovery and kubelet's TLS bootstrap from a machine that has only the
/// server's address, a token and the CA's key hash (computed with openssl, as kubeadm's
/// documentation does): wrong pins, unknown tokens and wrong secrets are refused; then a
/// node client certificate for the key made there.
#[test]
fn a_machine_with_only_a_token_finds_the_cluster_and_gets_its_credentials() {
    let s = Server::start_with(&["--node=false"]);
    let dir = s.dir.path().to_path_buf();
    let token = create_token(&s, &[]);
    let id = token.split('.').next().unwrap().to_string();
    let hash = Command::new("sh")
        .arg("-c")
        .arg("openssl x509 -pubkey -noout -in ca.crt | openssl pkey -pubin -outform der | openssl dgst -sha256 -hex | sed 's/^.* //'")
        .current_dir(&s.data)
        .output()
        .unwrap();
    let hash = format!("sha256:{}", String::from_utf8(hash.stdout).unwrap().trim());
    assert_eq!(hash.len(), 71, "{hash}");
    assert!(eventually(Duration::from_secs(10), || {
        anonymous_get(&s, "/api/v1/namespaces/kube-public/configmaps/cluster-info")["data"][format!("jws-kubeconfig-{id}")].is_string()
    }));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use nanokube::join::{discover, request_client_certificate};
        let wrong_pin = format!("sha256:{}", "0".repeat(64));
        let err = discover(&s.url, &token, &[wrong_pin], false).await.unwrap_err();
        assert!(err.contains("none of the pinned"), "{err}");
        let err = discover(&s.url, "zzzzzz.0123456789abcdef", std::slice::from_ref(&hash), false).await.unwrap_err();
        assert!(err.contains("no signature for token id"), "{err}");
        let err = discover(&s.url, &format!("{id}.{}", "0".repeat(16)), std::slice::from_ref(&hash), false).await.unwrap_err();
        assert!(err.contains("does not verify"), "{err}");
        let err = discover(&s.url, &token, &[], false).await.unwrap_err();
        assert!(err.contains("CA's public key hash"), "{err}");

        let found = discover(&s.url, &token, std::slice::from_ref(&hash), false).await.unwrap();
        assert_eq!(found.ca_pem, std::fs::read_to_string(s.data.join("ca.crt")).unwrap());
        assert_eq!(found.server, s.url);
        let (cert, key) = request_client_certificate(&found, &token, "n3", Duration::from_secs(20)).await.unwrap();
        std::fs::write(dir.join("n3.crt"), cert).unwrap();
        std::fs::write(dir.join("n3.key"), key).unwrap();
    });
    let n3 = kubeconfig(&s, "n3", &format!("    client-certificate: {}\n    client-key: {}", dir.join("n3.crt").display(), dir.join("n3.key").display()));
    let who: serde_json::Value = serde_json::from_str(&ok(&k_as(&s, &n3, &["auth", "whoami", "-o", "json"]))).unwrap();
    assert_eq!(who["status"]["userInfo"]["username"], "system:node:n3", "{who}");
    assert!(who["status"]["userInfo"]["groups"].to_string().contains("\"system:nodes\""), "{who}");
}
