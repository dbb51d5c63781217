//! Every kubectl from 1.27 to 1.33 (installed beside `kubectl` as `kubectl.1.NN`) works
//! with no extra flags: discovery, Tables, protobuf creates, create -f / apply with
//! OpenAPI validation, delete with wait.

mod common;

use common::{table, Server};

#[test]
fn kubectl_1_27_to_1_33() {
    let s = Server::start();
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
        assert_eq!(run(&["delete", "cm", "c", "-n", &ns]).trim(), "configmap \"c\" deleted", "{bin}");
    }
}
