//! CertificateSigningRequests: a key and request made with openssl, approved with
//! `kubectl certificate approve`, signed by the cluster CA and used with `curl --cert`;
//! a denied one never signed; who may approve (the `approve` verb on `signers`); the
//! system:masters group refused; a kubelet request the signer refuses.

mod common;

use std::process::Command;
use std::time::Duration;

use base64::Engine;
use common::{eventually, Server};

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().unwrap();
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A key and a request for `subject`, made as the walkthrough makes them.
fn request(dir: &std::path::Path, name: &str, subject: &str) -> String {
    openssl(dir, &["genrsa", "-out", &format!("{name}.key"), "2048"]);
    openssl(dir, &["req", "-new", "-key", &format!("{name}.key"), "-subj", subject, "-out", &format!("{name}.csr")]);
    base64::engine::general_purpose::STANDARD.encode(std::fs::read(dir.join(format!("{name}.csr"))).unwrap())
}

fn csr_yaml(name: &str, request: &str, signer: &str, usages: &str) -> String {
    format!(
        "apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata:\n  name: {name}\nspec:\n  request: {request}\n  signerName: {signer}\n  expirationSeconds: 86400\n  usages: [{usages}]\n"
    )
}

#[test]
fn approved_requests_are_signed_by_the_cluster_ca() {
    let s = Server::start_with(&["--node=false"]);
    let dir = s.dir.path().to_path_buf();
    let alice = request(&dir, "alice", "/CN=alice/O=devs");
    let out = s.k_stdin(&["apply", "-f", "-"], &csr_yaml("alice", &alice, "kubernetes.io/kube-apiserver-client", "client auth"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(s.k(&["get", "csr", "alice", "-o", "jsonpath={.status.certificate}"]), "", "signed before approval");

    s.k(&["certificate", "approve", "alice"]);
    let mut cert = String::new();
    assert!(eventually(Duration::from_secs(10), || {
        cert = s.k(&["get", "csr", "alice", "-o", "jsonpath={.status.certificate}"]);
        !cert.is_empty()
    }));
    let table = s.k(&["get", "csr", "alice"]);
    assert!(table.contains("Approved,Issued"), "{table}");
    std::fs::write(dir.join("alice.crt"), base64::engine::general_purpose::STANDARD.decode(&cert).unwrap()).unwrap();
    // The certificate: the CA's, the request's subject, client auth, about a day.
    let text = Command::new("openssl").args(["x509", "-noout", "-text", "-in"]).arg(dir.join("alice.crt")).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("Issuer: CN = nanokubeCA") || text.contains("Issuer: CN=nanokubeCA"), "{text}");
    assert!(text.contains("TLS Web Client Authentication"), "{text}");
    let verify = Command::new("openssl").arg("verify").arg("-CAfile").arg(s.data.join("ca.crt")).arg(dir.join("alice.crt")).output().unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));

    // Usable: curl with the key and certificate is alice, in group devs.
    let out = Command::new("curl")
        .args(["-sS", "-X", "POST", "-H", "Content-Type: application/json", "--cacert"])
        .arg(s.data.join("ca.crt"))
        .arg("--cert")
        .arg(dir.join("alice.crt"))
        .arg("--key")
        .arg(dir.join("alice.key"))
        .arg("-d")
        .arg(r#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#)
        .arg(format!("{}/apis/authentication.k8s.io/v1/selfsubjectreviews", s.url))
        .output()
        .unwrap();
    let review: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(review["status"]["userInfo"]["username"], "alice", "{review}");
    assert!(review["status"]["userInfo"]["groups"].as_array().unwrap().iter().any(|g| g == "devs"), "{review}");

    // Denied: never signed.
    let bob = request(&dir, "bob", "/CN=bob");
    s.k_stdin(&["apply", "-f", "-"], &csr_yaml("bob", &bob, "kubernetes.io/kube-apiserver-client", "client auth"));
    s.k(&["certificate", "deny", "bob"]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(s.k(&["get", "csr", "bob", "-o", "jsonpath={.status.certificate}"]), "");
    assert!(s.k(&["get", "csr", "bob"]).contains("Denied"));

    // Who may approve: the approval subresource is not enough without `approve` on the
    // signer.
    let carol = request(&dir, "carol", "/CN=carol");
    s.k_stdin(&["apply", "-f", "-"], &csr_yaml("carol", &carol, "kubernetes.io/kube-apiserver-client", "digital signature, client auth"));
    s.k(&["create", "clusterrole", "csr-approver", "--verb=get,list,update", "--resource=certificatesigningrequests,certificatesigningrequests/approval"]);
    s.k(&["create", "clusterrolebinding", "csr-approver", "--clusterrole=csr-approver", "--user=approver"]);
    let out = s.kubectl(&["--as=approver", "certificate", "approve", "carol"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("user not permitted to approve requests with signerName \"kubernetes.io/kube-apiserver-client\""), "{err}");
    // `signers` is no served resource, so the role is written out (as upstream's docs do).
    let role = "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: signer-approver}\nrules:\n- apiGroups: [certificates.k8s.io]\n  resources: [signers]\n  resourceNames: [\"kubernetes.io/*\"]\n  verbs: [approve]\n";
    assert!(s.k_stdin(&["apply", "-f", "-"], role).status.success());
    s.k(&["create", "clusterrolebinding", "signer-approver", "--clusterrole=signer-approver", "--user=approver"]);
    let out = s.kubectl(&["--as=approver", "certificate", "approve", "carol"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(eventually(Duration::from_secs(10), || !s.k(&["get", "csr", "carol", "-o", "jsonpath={.status.certificate}"]).is_empty()));

    // system:masters through this signer is refused outright.
    let root = request(&dir, "root", "/CN=root/O=system:masters");
    let out = s.k_stdin(&["apply", "-f", "-"], &csr_yaml("root", &root, "kubernetes.io/kube-apiserver-client", "client auth"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("use of kubernetes.io/kube-apiserver-client signer with system:masters group is not allowed"), "{err}");

    // The kubelet client signer wants system:nodes: an approved request it refuses fails.
    let node = request(&dir, "node", "/CN=system:node:n1/O=devs");
    s.k_stdin(&["apply", "-f", "-"], &csr_yaml("node", &node, "kubernetes.io/kube-apiserver-client-kubelet", "client auth"));
    s.k(&["certificate", "approve", "node"]);
    let mut conditions = String::new();
    assert!(eventually(Duration::from_secs(10), || {
        conditions = s.k(&["get", "csr", "node", "-o", "jsonpath={range .status.conditions[*]}{.type}:{.reason}:{.message};{end}"]);
        conditions.contains("Failed")
    }));
    assert!(conditions.contains("Failed:SignerValidationFailure:subject organization is not system:nodes"), "{conditions}");
    assert_eq!(s.k(&["get", "csr", "node", "-o", "jsonpath={.status.certificate}"]), "");
}

/// kubectl against an in-process cluster.
fn kubectl_tc(tc: &nanokube::testing::TestCluster, args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write;
    let mut child = Command::new(common::kubectl_path("kubectl"))
        .arg("--kubeconfig")
        .arg(tc.kubeconfig_path())
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// kube-controller-manager's csrcleaner, on a test clock: decided requests go an hour after
/// the decision, undecided ones after a day.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn old_requests_are_cleaned_up() {
    use nanokube_controllers::clock::ManualClock;
    use std::sync::Arc;
    let clock = Arc::new(ManualClock::new(time::OffsetDateTime::now_utc()));
    let c = clock.clone();
    let tc = nanokube::testing::TestCluster::start_with(move |cfg| {
        cfg.node = false;
        cfg.controller_clock = c;
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    for name in ["issued", "denied", "pending"] {
        let req = request(dir.path(), name, &format!("/CN={name}"));
        kubectl_tc(&tc, &["create", "-f", "-"], Some(&csr_yaml(name, &req, "kubernetes.io/kube-apiserver-client", "client auth")));
    }
    kubectl_tc(&tc, &["certificate", "approve", "issued"], None);
    kubectl_tc(&tc, &["certificate", "deny", "denied"], None);
    assert!(eventually(Duration::from_secs(10), || !kubectl_tc(&tc, &["get", "csr", "issued", "-o", "jsonpath={.status.certificate}"], None).is_empty()));
    let names = || kubectl_tc(&tc, &["get", "csr", "-o", "name"], None).lines().map(String::from).collect::<Vec<_>>();
    // The clock moves; a touch makes the controller look (its own poll runs hourly on real time).
    let advance = |by: time::Duration| {
        clock.set(time::OffsetDateTime::now_utc() + by);
        for n in names() {
            kubectl_tc(&tc, &["annotate", "--overwrite", &n, &format!("test/touched={}", by.whole_minutes())], None);
        }
    };
    advance(time::Duration::minutes(50));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(names().len(), 3, "deleted before the hour: {:?}", names());
    advance(time::Duration::minutes(61));
    assert!(eventually(Duration::from_secs(10), || names() == ["certificatesigningrequest.certificates.k8s.io/pending"]), "{:?}", names());
    advance(time::Duration::hours(25));
    assert!(eventually(Duration::from_secs(10), || names().is_empty()), "{:?}", names());
}
