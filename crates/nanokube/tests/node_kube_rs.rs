//! kube-rs into a running pod, as an operator's tests would: `Api::exec` with
//! `AttachParams` (stdin in, stdout out, the exit code in the Status), and
//! `Api::portforward` (a `Portforwarder` stream to an HTTP server in the pod).

mod common;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, AttachParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_exec_and_port_forward() {
    let s = common::server_with_image();
    let script = "mkdir /www; echo one > /www/one; httpd -p 8080 -h /www; while true; do sleep 1; done";
    s.k(&["run", "web", "--image=testbox:1.0", "--", "sh", "-c", script]);
    let ok = s.kubectl(&["wait", "--for=condition=Ready", "pod/web", "--timeout=30s"]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));

    let kubeconfig = Kubeconfig::read_from(s.kubeconfig()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.unwrap();
    let pods: Api<Pod> = Api::default_namespaced(kube::Client::try_from(config).unwrap());

    // exec: five bytes in, their checksum out, exit code 4.
    let mut p = pods.exec("web", vec!["sh", "-c", "head -c 5 | md5sum; exit 4"], &AttachParams::default().stdin(true).stderr(false)).await.unwrap();
    let mut stdin = p.stdin().unwrap();
    stdin.write_all(b"hello").await.unwrap();
    let mut out = String::new();
    p.stdout().unwrap().read_to_string(&mut out).await.unwrap();
    assert_eq!(out.split_whitespace().next(), Some("5d41402abc4b2a76b9719d911017c592"));
    let status = p.take_status().unwrap().await.unwrap();
    assert_eq!(status.reason.as_deref(), Some("NonZeroExitCode"), "{status:?}");
    let causes = status.details.and_then(|d| d.causes).unwrap_or_default();
    assert_eq!(causes[0].reason.as_deref(), Some("ExitCode"));
    assert_eq!(causes[0].message.as_deref(), Some("4"));
    p.join().await.unwrap();

    // port-forward: an HTTP request through the stream, the pod's answer back, then the
    // stream dropped and the forwarder joined (kube-rs's own example).
    let ready = common::eventually(std::time::Duration::from_secs(10), || s.kubectl(&["exec", "web", "--", "test", "-f", "/www/one"]).status.success());
    assert!(ready);
    let mut pf = pods.portforward("web", &[8080]).await.unwrap();
    let mut stream = pf.take_stream(8080).unwrap();
    stream.write_all(b"GET /one HTTP/1.1\r\nHost: pod\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.ends_with(b"\r\n\r\none\n") {
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(answer.starts_with(b"HTTP/1.1 200 OK\r\n"), "{}", String::from_utf8_lossy(&answer));
    drop(stream);
    pf.join().await.unwrap();
}

/// A Deployment made with kube-rs and awaited with kube-runtime's
/// `is_deployment_completed`, as an operator's tests wait for one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_awaits_a_deployment() {
    use k8s_openapi::api::apps::v1::Deployment;
    let s = common::server_with_image();
    let kubeconfig = Kubeconfig::read_from(s.kubeconfig()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.unwrap();
    let deployments: Api<Deployment> = Api::default_namespaced(kube::Client::try_from(config).unwrap());
    let d: Deployment = serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "main", "image": "testbox:1.0", "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]}]}}},
    }))
    .unwrap();
    deployments.create(&Default::default(), &d).await.unwrap();
    let done = kube::runtime::wait::await_condition(deployments.clone(), "web", kube::runtime::wait::conditions::is_deployment_completed());
    let d = tokio::time::timeout(std::time::Duration::from_secs(60), done).await.expect("completed within a minute").unwrap().unwrap();
    let status = d.status.unwrap();
    assert_eq!((status.updated_replicas, status.available_replicas), (Some(2), Some(2)));
    deployments.delete("web", &Default::default()).await.unwrap();
}
