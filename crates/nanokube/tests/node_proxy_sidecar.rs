//! The seed's sidecar recipe (S12): `nanokube proxy` runs in a container of its own, from
//! an image made of the binary itself (`nanokube image build-self`), and the pod's other
//! container calls the API on `localhost:8001`; the proxy reaches the API server at the
//! `kubernetes` Service's address with the pod's service-account token, so what the
//! neighbour may do is what the service account may do.

mod common;

use std::time::Duration;

use common::{eventually, server_with_image};

#[test]
fn a_proxy_sidecar_serves_the_api_to_its_neighbour_with_the_pods_credentials() {
    let s = server_with_image();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nanokube")).args(["image", "build-self", "--data-dir"]).arg(&s.data).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout);
    let image = said.trim().strip_prefix("Loaded image: ").expect("the image's name").to_string();
    assert!(image.starts_with("docker.io/library/nanokube:v"), "{image}");

    // A service account that may list pods and nothing more.
    s.k(&["create", "serviceaccount", "lister"]);
    s.k(&["create", "role", "pod-reader", "--verb=list", "--resource=pods"]);
    s.k(&["create", "rolebinding", "lister", "--role=pod-reader", "--serviceaccount=default:lister"]);
    let app = "until wget -qO /tmp/api http://localhost:8001/api; do sleep 0.2; done; cat /tmp/api; echo; \
               wget -qO- http://localhost:8001/api/v1/namespaces/default/pods; echo; \
               wget -qO- http://localhost:8001/api/v1/namespaces/default/secrets 2>&1 | head -n 1; echo done; sleep 3600";
    let manifest = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: with-proxy\nspec:\n  serviceAccountName: lister\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: proxy\n    image: {image}\n    args: [\"proxy\", \"--port=8001\"]\n  - name: app\n    image: testbox:1.0\n    command: [\"sh\", \"-c\", {app:?}]\n"
    );
    let out = s.k_stdin(&["apply", "-f", "-"], &manifest);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        eventually(Duration::from_secs(60), || s.kubectl(&["logs", "with-proxy", "-c", "app"]).stdout.ends_with(b"done\n")),
        "{}\n{}\n{}",
        s.k(&["get", "pod", "with-proxy", "-o", "yaml"]),
        String::from_utf8_lossy(&s.kubectl(&["logs", "with-proxy", "-c", "proxy"]).stdout),
        String::from_utf8_lossy(&s.kubectl(&["logs", "with-proxy", "-c", "app"]).stdout),
    );
    let log = s.k(&["logs", "with-proxy", "-c", "app"]);
    let mut lines = log.lines().filter(|l| !l.trim().is_empty());
    let api: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(api["kind"], "APIVersions");
    assert_eq!(api["versions"], serde_json::json!(["v1"]));
    let pods: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(pods["kind"], "PodList");
    assert!(pods["items"].as_array().unwrap().iter().any(|p| p["metadata"]["name"] == "with-proxy"));
    // Secrets are not the service account's to read: the API server says 403 through the proxy.
    assert!(lines.next().unwrap().contains("403"), "{log}");
    s.k(&["delete", "pod", "with-proxy", "--wait=true"]);
}
