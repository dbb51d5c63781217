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
        assert_eq!(rows[0][..3], ["p", "0/1", "Pending"], "{bin}");
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
