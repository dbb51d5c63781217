//! Endpoints and EndpointSlices follow the pods a Service selects and their readiness, and
//! a pod reaches the Service's ClusterIP through them: `kubectl expose` of a Deployment,
//! named target ports, an unready pod, scaling to zero.

mod common;

use std::time::Duration;

use common::{eventually, server_with_image, Server};

fn endpoints(s: &Server) -> String {
    s.k(&["get", "endpoints", "web", "-o", "jsonpath={range .subsets[*]}{.addresses[*].ip}|{.notReadyAddresses[*].ip}|{.ports[*].port};{end}"])
}

fn slice(s: &Server) -> serde_json::Value {
    let list: serde_json::Value = serde_json::from_str(&s.k(&["get", "endpointslices", "-l", "kubernetes.io/service-name=web", "-o", "json"])).unwrap();
    list["items"][0].clone()
}

#[test]
fn endpoints_follow_pods_and_carry_service_traffic() {
    let s = server_with_image();
    // Two pods serving on a named port; a readiness probe on a file lets the test decide.
    let manifest = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 2\n  selector:\n    matchLabels: {app: web}\n  template:\n    metadata:\n      labels: {app: web}\n    spec:\n      terminationGracePeriodSeconds: 1\n      containers:\n      - name: main\n        image: testbox:1.0\n        command: [\"sh\", \"-c\", \"mkdir /www; hostname > /www/index.html; touch /tmp/ready; exec httpd -f -p 8080 -h /www\"]\n        ports: [{name: http, containerPort: 8080}]\n        readinessProbe:\n          exec: {command: [\"cat\", \"/tmp/ready\"]}\n          periodSeconds: 1\n";
    let out = s.k_stdin(&["apply", "-f", "-"], manifest);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    s.k(&["expose", "deployment", "web", "--port=80", "--target-port=http"]);
    let ok = s.kubectl(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let ips = s.k(&["get", "pods", "-l", "app=web", "-o", "jsonpath={.items[*].status.podIP}"]);
    let mut ips: Vec<&str> = ips.split_whitespace().collect();
    ips.sort();
    assert!(
        eventually(Duration::from_secs(20), || {
            let e = endpoints(&s);
            let parts: Vec<&str> = e.trim_end_matches(';').split('|').collect();
            let mut ready: Vec<&str> = parts[0].split_whitespace().collect();
            ready.sort();
            parts.len() == 3 && ready == ips && parts[1].is_empty() && parts[2] == "8080"
        }),
        "{}",
        endpoints(&s)
    );
    let sl = slice(&s);
    assert_eq!(sl["addressType"], "IPv4");
    assert_eq!(sl["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"], "endpointslice-controller.k8s.io");
    assert_eq!(sl["ports"][0]["port"], 8080);
    assert_eq!(sl["endpoints"].as_array().unwrap().len(), 2);
    assert!(sl["endpoints"].as_array().unwrap().iter().all(|e| e["conditions"]["ready"] == true && e["targetRef"]["kind"] == "Pod"));

    // From a pod, the ClusterIP answers through the endpoints.
    let ip = s.k(&["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    s.k(&["run", "client", "--image=testbox:1.0", "--restart=Never", "--", "wget", "-qO-", &format!("http://{ip}/")]);
    assert!(
        eventually(Duration::from_secs(30), || s.k(&["get", "pod", "client", "-o", "jsonpath={.status.phase}"]) == "Succeeded"),
        "{}",
        s.k(&["logs", "client"])
    );
    assert!(s.k(&["logs", "client"]).starts_with("web-"), "{}", s.k(&["logs", "client"]));

    // An unready pod moves to notReadyAddresses and `ready: false`.
    let pods = s.k(&["get", "pods", "-l", "app=web", "-o", "jsonpath={.items[0].metadata.name} {.items[0].status.podIP}"]);
    let (pod, pod_ip) = pods.split_once(' ').unwrap();
    s.k(&["exec", pod, "--", "rm", "/tmp/ready"]);
    assert!(eventually(Duration::from_secs(20), || endpoints(&s).split('|').nth(1).is_some_and(|not_ready| not_ready.contains(pod_ip))), "{}", endpoints(&s));
    assert!(eventually(Duration::from_secs(10), || {
        slice(&s)["endpoints"].as_array().unwrap().iter().any(|e| e["addresses"][0] == pod_ip && e["conditions"]["ready"] == false)
    }));

    // Scaled to zero: nothing left to list.
    s.k(&["scale", "deployment/web", "--replicas=0"]);
    assert!(
        eventually(Duration::from_secs(30), || endpoints(&s).is_empty() && slice(&s)["endpoints"].as_array().is_none_or(|a| a.is_empty())),
        "{}",
        endpoints(&s)
    );
    s.k(&["delete", "service", "web"]);
    assert!(eventually(Duration::from_secs(10), || !s.kubectl(&["get", "endpoints", "web"]).status.success()));
}

/// The Endpoints a user writes for a Service without a selector are mirrored into
/// EndpointSlices (kube-controller-manager's mirroring controller), and the mirror
/// follows them: updated, skipped with `skip-mirror`, gone with them.
#[test]
fn endpoints_of_selectorless_services_are_mirrored_into_slices() {
    let s = Server::start_with(&["--node=false"]);
    let out = s.k_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Service\nmetadata: {name: outside}\nspec:\n  ports: [{name: db, port: 5432}]\n---\n\
         apiVersion: v1\nkind: Endpoints\nmetadata: {name: outside, labels: {team: data}}\nsubsets:\n\
         - addresses: [{ip: 127.0.0.21, hostname: one}]\n  notReadyAddresses: [{ip: 127.0.0.22}]\n  ports: [{name: db, port: 5432}]\n",
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mirrored = || -> serde_json::Value {
        let list: serde_json::Value = serde_json::from_str(&s.k(&[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=outside,endpointslice.kubernetes.io/managed-by=endpointslicemirroring-controller.k8s.io",
            "-o",
            "json",
        ]))
        .unwrap();
        list["items"].clone()
    };
    assert!(eventually(Duration::from_secs(10), || mirrored().as_array().is_some_and(|a| a.len() == 1)), "{}", mirrored());
    let slice = mirrored()[0].clone();
    assert_eq!(slice["metadata"]["labels"]["team"], "data");
    assert_eq!(slice["metadata"]["ownerReferences"][0]["kind"], "Endpoints");
    assert_eq!(slice["ports"], serde_json::json!([{"name": "db", "port": 5432, "protocol": "TCP"}]));
    assert_eq!(slice["endpoints"][0]["addresses"][0], "127.0.0.21");
    assert_eq!(slice["endpoints"][0]["conditions"]["ready"], true);
    assert_eq!(slice["endpoints"][0]["hostname"], "one");
    assert_eq!(slice["endpoints"][1]["conditions"]["ready"], false);
    // An update reaches the mirror.
    s.k(&["patch", "endpoints", "outside", "--type=json", "-p", r#"[{"op":"replace","path":"/subsets/0/addresses/0/ip","value":"127.0.0.23"}]"#]);
    assert!(eventually(Duration::from_secs(10), || mirrored()[0]["endpoints"][0]["addresses"][0] == "127.0.0.23"), "{}", mirrored());
    // skip-mirror takes the mirror away; removing it brings it back.
    s.k(&["label", "endpoints", "outside", "endpointslice.kubernetes.io/skip-mirror=true"]);
    assert!(eventually(Duration::from_secs(10), || mirrored().as_array().is_some_and(|a| a.is_empty())), "{}", mirrored());
    s.k(&["label", "endpoints", "outside", "endpointslice.kubernetes.io/skip-mirror-"]);
    assert!(eventually(Duration::from_secs(10), || mirrored().as_array().is_some_and(|a| a.len() == 1)), "{}", mirrored());
    // Deleting the Endpoints deletes the mirror; the bootstrap's `kubernetes` Endpoints
    // (labelled skip-mirror) never had one.
    s.k(&["delete", "endpoints", "outside"]);
    assert!(eventually(Duration::from_secs(10), || mirrored().as_array().is_some_and(|a| a.is_empty())), "{}", mirrored());
    let kube = s.k(&["get", "endpointslices", "-l", "endpointslice.kubernetes.io/managed-by=endpointslicemirroring-controller.k8s.io", "-A", "-o", "name"]);
    assert_eq!(kube, "", "nothing else mirrored");
}

/// `publishNotReadyAddresses`: a Service that publishes unready pods lists them as ready
/// (as StatefulSets' headless Services need for peer discovery); one that does not puts
/// them in `notReadyAddresses` and marks their slice endpoints not ready. The pods are on
/// a simulated node, crashing (so never Ready) but with an IP.
#[test]
fn unready_pods_are_published_only_when_the_service_asks() {
    let s = Server::start_with(&["--node=false", "--simulated-nodes", "1", "--simulated-start-delay", "0s"]);
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: crash, labels: {app: crash}, annotations: {nanokube.io/simulated-exit-code: \"1\"}}\nspec:\n  tolerations: [{key: nanokube.io/simulated, operator: Exists}]\n  containers: [{name: main, image: \"web:1\", ports: [{containerPort: 80}]}]\n";
    let services = "apiVersion: v1\nkind: Service\nmetadata: {name: hidden}\nspec: {selector: {app: crash}, ports: [{port: 80}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: published}\nspec: {selector: {app: crash}, publishNotReadyAddresses: true, ports: [{port: 80}]}\n";
    for yaml in [pod, services] {
        let out = s.k_stdin(&["apply", "-f", "-"], yaml);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let ip = || s.k(&["get", "pod", "crash", "-o", "jsonpath={.status.podIP}"]);
    assert!(eventually(Duration::from_secs(20), || !ip().is_empty()));
    let ip = ip();
    assert_eq!(s.k(&["get", "pod", "crash", "-o", "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}"]), "False");
    let of = |svc: &str| s.k(&["get", "endpoints", svc, "-o", "jsonpath={.subsets[*].addresses[*].ip}|{.subsets[*].notReadyAddresses[*].ip}"]);
    let slice_ready = |svc: &str| {
        s.k(&[
            "get",
            "endpointslices",
            "-l",
            &format!("kubernetes.io/service-name={svc}"),
            "-o",
            "jsonpath={.items[0].endpoints[0].addresses[0]}:{.items[0].endpoints[0].conditions.ready}",
        ])
    };
    assert!(
        eventually(Duration::from_secs(20), || of("hidden") == format!("|{ip}") && of("published") == format!("{ip}|")),
        "{} / {}",
        of("hidden"),
        of("published")
    );
    assert!(eventually(Duration::from_secs(10), || slice_ready("hidden") == format!("{ip}:false") && slice_ready("published") == format!("{ip}:true")));
}
