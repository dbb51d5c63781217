//! Fuzzing of every parser that sees client bytes (and the node's: image references,
//! `$(VAR)` expansion, image archives), as a bounded property test: each
//! target gets seeds of real input, mutated at random (bytes flipped, inserted, cut,
//! repeated; brackets nested; multi-byte characters spliced in), and must answer with a
//! value or an error, never a panic or a stack overflow. Runs for `FUZZ_SECONDS` per
//! target (default 1) with seed `FUZZ_SEED` (default random, printed); a longer run:
//!
//! ```sh
//! FUZZ_SECONDS=300 cargo test --release -p nanokube-apiserver --test fuzz_parsers -- --nocapture
//! ```
//!
//! Inputs that once crashed the server are kept as regression cases in `REGRESSIONS`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nanokube_api::json::{depth_upto, flow_depth_exceeds, MAX_DEPTH};
use nanokube_api::resources;
use nanokube_api::selector::{FieldSelector, LabelSelector};
use nanokube_apiserver::authn::TokenAuthenticator;
use nanokube_apiserver::patch::{self, PatchType};
use nanokube_apiserver::registry::{ListOptions, Registry, RegistryConfig};
use nanokube_apiserver::satoken::{ServiceAccountAuthenticator, TokenIssuer};
use nanokube_store::sqlite::{SqliteBackend, SqliteOptions};
use serde_json::{json, Value};

/// Inputs found to crash earlier versions (each from the hardening issue or a fuzz run).
const REGRESSIONS: &[(&str, &[u8])] = &[
    ("field selector", "é=x".as_bytes()),
    ("field selector", b"a\\"),
    ("label selector", "é in (x)".as_bytes()),
    ("path", "/api/v1/namespaces/é/pods/%C3".as_bytes()),
    // Found by this fuzzer: the watch prefix alone indexed an empty path.
    ("path", b"/api/v1/watch"),
    ("path", b"/apis/apps/v1/watch/"),
];

fn budget() -> Duration {
    Duration::from_secs_f64(std::env::var("FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(1.0))
}

fn rng() -> fastrand::Rng {
    let seed = std::env::var("FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| fastrand::u64(..));
    eprintln!("FUZZ_SEED={seed}");
    fastrand::Rng::with_seed(seed)
}

/// One random mutation of `input`.
fn mutate(rng: &mut fastrand::Rng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    let rounds = rng.usize(1..4);
    for _ in 0..rounds {
        let at = rng.usize(..=out.len());
        match rng.u8(..8) {
            0 if !out.is_empty() => {
                let i = rng.usize(..out.len());
                out[i] ^= 1 << rng.u8(..8);
            }
            1 => out.insert(at, rng.u8(..)),
            2 if !out.is_empty() => {
                let end = (at + rng.usize(..16)).min(out.len());
                out.drain(at.min(end)..end);
            }
            3 if !out.is_empty() => {
                let start = rng.usize(..out.len());
                let end = (start + rng.usize(1..64)).min(out.len());
                let chunk = out[start..end].to_vec();
                for _ in 0..rng.usize(1..50) {
                    out.splice(at..at, chunk.iter().copied());
                }
            }
            4 => {
                let open = [b"[".as_slice(), b"{\"a\":", b"- ", b"(", b"%"][rng.usize(..5)];
                let n = rng.usize(1..400);
                out.splice(at..at, open.iter().copied().cycle().take(open.len() * n));
            }
            5 => out.splice(at..at, "é€😀".bytes()).for_each(drop),
            6 => out.splice(at..at, [b'\\', b'"', b'\'', b',', b'=', b'!', b')', b'~', b'/', 0xff][rng.usize(..10)..].iter().copied().take(1)).for_each(drop),
            _ => out.truncate(at),
        }
    }
    out
}

/// Run `target` on the regressions for `name`, the seeds, and mutations until the budget ends.
fn fuzz(name: &str, seeds: &[&[u8]], mut target: impl FnMut(&[u8])) {
    let mut rng = rng();
    for (n, input) in REGRESSIONS {
        if *n == name {
            target(input);
        }
    }
    for s in seeds {
        target(s);
    }
    let deadline = Instant::now() + budget();
    let mut runs = 0u64;
    while Instant::now() < deadline {
        let seed = seeds[rng.usize(..seeds.len())];
        let input = mutate(&mut rng, seed);
        target(&input);
        runs += 1;
    }
    eprintln!("{name}: {runs} inputs");
}

const POD: &str = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","labels":{"a":"b"},"annotations":{"x":"y"},"finalizers":["f"]},"spec":{"containers":[{"name":"c","image":"i","ports":[{"containerPort":80}],"env":[{"name":"A","value":"1"}]}]}}"#;

#[test]
fn json_bodies() {
    fuzz("json", &[POD.as_bytes(), br#"{"apiVersion":"apps/v1","kind":"Deployment","spec":{"replicas":3}}"#], |b| {
        if let Ok(v) = serde_json::from_slice::<Value>(b) {
            let _ = nanokube_api::protobuf::type_error("v1", "Pod", &v);
            let _ = nanokube_api::protobuf::unknown_fields("v1", "Pod", &v);
            let _ = depth_upto(&v, MAX_DEPTH);
            let _ = nanokube_api::json::duplicate_fields(b);
        }
    });
}

#[test]
fn yaml_bodies() {
    let yaml = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n  labels: {a: b}\ndata:\n  k: [1, 2]\n";
    fuzz("yaml", &[yaml.as_slice(), b"a: &x [*x]\n"], |b| {
        if !flow_depth_exceeds(b, MAX_DEPTH) {
            let _ = serde_norway::from_slice::<Value>(b);
        }
    });
}

#[test]
fn protobuf_bodies() {
    // A ConfigMap in the k8s\0 envelope: typeMeta{apiVersion, kind}, raw{metadata{name}, data{k: v}}.
    fn field(tag: u8, data: &[u8]) -> Vec<u8> {
        let mut out = vec![(tag << 3) | 2];
        let mut n = data.len();
        while n >= 0x80 {
            out.push((n as u8) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
        out.extend_from_slice(data);
        out
    }
    let type_meta = [field(1, b"v1"), field(2, b"ConfigMap")].concat();
    let raw = [field(1, &field(1, b"cm")), field(2, &[field(1, b"k"), field(2, b"v")].concat())].concat();
    let body = [b"k8s\0".to_vec(), field(1, &type_meta), field(2, &raw)].concat();
    // A CRD nesting its schema: JSONSchemaProps inside JSONSchemaProps.
    let mut props = field(1, b"id");
    for _ in 0..50 {
        props = field(9, &props);
    }
    let crd_type = [field(1, b"apiextensions.k8s.io/v1"), field(2, b"CustomResourceDefinition")].concat();
    let crd = [b"k8s\0".to_vec(), field(1, &crd_type), field(2, &field(2, &field(4, &field(4, &field(1, &props)))))].concat();
    assert!(nanokube_api::protobuf::decode_request(&body).is_ok());
    fuzz("protobuf", &[&body, &crd], |b| {
        let _ = nanokube_api::protobuf::decode_request(b);
    });
}

#[test]
fn selectors() {
    fuzz("label selector", &[b"a=b,c!=d,e in (f,g),!h,i notin (j)", b"x"], |b| {
        let _ = LabelSelector::parse(&String::from_utf8_lossy(b));
    });
    fuzz("field selector", &[b"metadata.name=a\\,b,metadata.namespace!=x", b"status.phase==Running"], |b| {
        if let Ok(f) = FieldSelector::parse(&String::from_utf8_lossy(b)) {
            let _ = f.check_supported("", "pods", true);
            let _ = f.matches("", "pods", true, &serde_json::from_str::<Value>(POD).unwrap_or_default());
        }
    });
}

#[test]
fn request_paths() {
    fuzz("path", &[b"/api/v1/namespaces/default/pods/p/status", b"/apis/apps/v1/watch/namespaces/x/deployments"], |b| {
        let path = String::from_utf8_lossy(b);
        for m in ["GET", "POST", "DELETE", "PATCH"] {
            let _ = nanokube_apiserver::request::parse(m, &path, false);
        }
    });
}

#[test]
fn patches() {
    let current: Value = serde_json::from_str(POD).unwrap();
    let msg = nanokube_api::protobuf::intern("api.core.v1.Pod");
    let json_patch = br#"[{"op":"add","path":"/metadata/labels/z","value":"1"},{"op":"copy","from":"/spec","path":"/metadata/annotations/s"},{"op":"move","from":"/metadata/finalizers","path":"/m"}]"#;
    let smp = br#"{"metadata":{"finalizers":["g"],"$deleteFromPrimitiveList/finalizers":["f"]},"spec":{"containers":[{"name":"c","$patch":"delete"}],"$setElementOrder/containers":[{"name":"c"}]}}"#;
    for (ty, seed) in
        [(PatchType::Json, json_patch.as_slice()), (PatchType::Merge, br#"{"metadata":{"labels":null}}"#.as_slice()), (PatchType::Strategic, smp.as_slice())]
    {
        fuzz("patch", &[seed], |b| {
            if let Ok(out) = patch::apply(ty, &current, b, msg) {
                assert!(depth_upto(&out, 200) <= 200, "a patch built a tree deeper than any parser allows");
            }
        });
    }
}

#[test]
fn server_side_apply() {
    let live: Value = serde_json::from_str(POD).unwrap();
    let schema = nanokube_api::protobuf::intern("api.core.v1.Pod").map(nanokube_apiserver::fieldmanager::Schema::Message).unwrap();
    let applied = b"apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  labels: {b: c}\nspec:\n  containers:\n  - name: c\n    image: j\n";
    fuzz("apply", &[applied.as_slice()], |b| {
        if flow_depth_exceeds(b, MAX_DEPTH) {
            return;
        }
        if let Ok(v) = serde_norway::from_slice::<Value>(b) {
            let _ = nanokube_apiserver::fieldmanager::apply(schema, Some(&live), &v, "m", false, "v1", "", true);
            let _ = nanokube_apiserver::fieldmanager::apply(schema, None, &v, "m", true, "v1", "", true);
        }
    });
}

fn registry() -> Arc<Registry> {
    let store = Arc::new(SqliteBackend::open(SqliteOptions::default()).unwrap());
    Arc::new(
        Registry::new(store, RegistryConfig { service_cidr: "127.96.0.0/16".into(), node_ports: (30000, 32767), pod_security: Default::default() }).unwrap(),
    )
}

#[test]
fn continue_tokens() {
    let reg = registry();
    let cms = resources::find("", "v1", "configmaps").unwrap();
    use base64::Engine;
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"v":"meta.k8s.io/v1","rv":5,"start":"/registry/configmaps/default/a"}"#);
    fuzz("continue", &[token.as_bytes(), br#"{"v":"meta.k8s.io/v1","rv":-1,"start":""}"#], |b| {
        let opts = ListOptions { limit: 2, continue_token: Some(String::from_utf8_lossy(b).into_owned()), ..Default::default() };
        let _ = reg.list(cms, Some("default"), &opts);
        // The token's JSON itself, base64-wrapped, reaches the decoder too.
        let wrapped = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let _ = reg.list(cms, Some("default"), &ListOptions { limit: 2, continue_token: Some(wrapped), ..Default::default() });
    });
}

#[test]
fn service_account_tokens() {
    let key = rcgen::KeyPair::generate().unwrap();
    let issuer = Arc::new(TokenIssuer::new(&key.serialize_pem(), &key.public_key_pem(), "https://kubernetes.default.svc.cluster.local").unwrap());
    let auth = ServiceAccountAuthenticator { issuer: issuer.clone(), registry: registry() };
    let (bound, _) = issuer.bound_token("default", "default", "uid", &[], 3600, None);
    let claims = json!({"iss": "https://kubernetes.default.svc.cluster.local", "aud": ["x"], "exp": 1.5, "nbf": "0",
        "kubernetes.io": {"namespace": "default", "serviceaccount": {"name": "default", "uid": "u"}}});
    let api = issuer.api_audiences.clone();
    fuzz("jwt", &[bound.as_bytes()], |b| {
        let t = String::from_utf8_lossy(b);
        let _ = auth.authenticate(&t);
        let _ = auth.authenticate_for(&t, &["vault".into()], &api);
    });
    // Claims of every shape, validly signed: what the decoder sees after the signature.
    fuzz("jwt claims", &[claims.to_string().as_bytes()], |b| {
        if let Ok(c) = serde_json::from_slice::<Value>(b) {
            assert_eq!(auth.authenticate(&issuer.sign(&c)).and_then(Result::ok), None, "a token for a missing ServiceAccount authenticated");
        }
    });
}

#[test]
fn image_references_and_variable_expansion() {
    fuzz(
        "image reference",
        &[b"docker.io/library/busybox:1.36", b"127.0.0.1:5000/a/b@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"],
        |b| {
            if let Ok(r) = nanokube_runtime::Reference::parse(&String::from_utf8_lossy(b)) {
                // What it normalizes to parses to itself.
                assert_eq!(nanokube_runtime::Reference::parse(&r.to_string()).as_ref(), Ok(&r));
            }
        },
    );
    fuzz("expansion", &[b"$(A) $$(B) $(C", "é$(A)ü$$".as_bytes()], |b| {
        let text = String::from_utf8_lossy(b);
        let env = vec![("A".to_string(), "1".to_string())];
        let _ = nanokube_runtime::command::argv(&[text.to_string()], &[text.to_string()], &[], &[], &env);
    });
}

#[test]
fn image_archives() {
    // A docker-save archive of one empty layer, mutated as bytes: load answers, never panics.
    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }
    let layer = tar_of(&[("a", b"x")]);
    let diff = nanokube_runtime::store::sha256(&layer);
    let config = format!(r#"{{"rootfs":{{"type":"layers","diff_ids":["{diff}"]}}}}"#);
    let seed =
        tar_of(&[("manifest.json", br#"[{"Config":"c.json","RepoTags":["x:1"],"Layers":["l.tar"]}]"#), ("c.json", config.as_bytes()), ("l.tar", &layer)]);
    let dir = std::env::temp_dir().join(format!("nanokube-fuzz-archives-{}", std::process::id()));
    let store = nanokube_runtime::ImageStore::open(&dir).unwrap();
    let file = dir.join("archive.tar");
    fuzz("image archive", &[&seed], |b| {
        std::fs::write(&file, b).unwrap();
        let _ = nanokube_runtime::archive::load(&store, &file);
    });
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn container_log_lines_and_log_options() {
    fuzz("cri log line", &[b"2026-12-02T19:00:00.123456789Z stdout F hello", b"2026-12-02T19:00:00Z stderr P part"], |b| {
        if let Some(r) = nanokube_runtime::cri_log::parse(b) {
            assert!(r.text.len() <= b.len());
        }
    });
    // pods/log parameters, checked before any node is asked (none is attached here).
    let nodes = nanokube_apiserver::pod_logs::Nodes::default();
    let pod = serde_json::json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n", "containers": [{"name": "c"}]}});
    fuzz("pod log options", &[b"follow=true&tailLines=10&timestamps=1", b"sinceTime=2024-01-01T00:00:00Z&limitBytes=5&container=c"], |b| {
        let params: Vec<(String, String)> = form_urlencoded::parse(b).into_owned().collect();
        let get = |k: &str| params.iter().rev().find(|(a, _)| a == k).map(|(_, v)| v.clone());
        let _ = nanokube_apiserver::pod_logs::open(&nodes, &pod, &get);
    });
}

#[test]
fn pod_files_from_any_pod() {
    // /etc/hosts, /etc/resolv.conf and downward API values from whatever a pod holds.
    let seed = br#"{"metadata":{"name":"p","namespace":"n","labels":{"a":"b"}},"spec":{"hostname":"h","subdomain":"s","hostAliases":[{"ip":"127.0.0.9","hostnames":["x"]}],"dnsPolicy":"None","dnsConfig":{"nameservers":["127.0.0.53"],"options":[{"name":"ndots","value":"2"}]}}}"#;
    fuzz("pod files", &[seed], |b| {
        let Ok(pod) = serde_json::from_slice::<serde_json::Value>(b) else { return };
        let _ = nanokube_node::pods::files::hosts_file(&pod, "127.244.0.2", "cluster.local");
        let _ = nanokube_node::pods::files::resolv_conf(&pod, "127.96.0.10", "cluster.local");
        for path in ["metadata.labels", "metadata.labels['a']", "metadata.annotations", "status.podIPs"] {
            let _ = nanokube_node::pods::files::field_ref(&pod, path);
        }
    });
}

#[test]
fn grpc_health_answers() {
    // What a probed container answers to a gRPC health check.
    fuzz("grpc health response", &[b"\x08\x01", b"\x08\x02\x12\x03abc", b"\x0d\x01\x00\x00\x00\x08\x01"], |b| {
        let status = nanokube_node::pods::probe::health_status(b);
        assert!(status == 0 || b.len() >= 2);
    });
}

#[test]
fn spdy_frames() {
    // What kubectl 1.27-1.30 send on an upgraded exec or port-forward connection: SYN_STREAMs
    // with zlib header blocks (one stream of zlib across the connection), data, pings.
    use nanokube_apiserver::spdy::{Decoder, Encoder, Frame};
    let mut enc = Encoder::default();
    let mut wire = bytes::BytesMut::new();
    for f in [
        Frame::SynStream { id: 1, fin: false, headers: vec![("streamtype".into(), "error".into())] },
        Frame::SynStream {
            id: 3,
            fin: false,
            headers: vec![("streamtype".into(), "data".into()), ("port".into(), "8080".into()), ("requestid".into(), "0".into())],
        },
        Frame::Data { id: 3, fin: false, data: bytes::Bytes::from_static(b"GET / HTTP/1.1\r\n\r\n") },
        Frame::Data { id: 3, fin: true, data: bytes::Bytes::new() },
        Frame::Ping(1),
        Frame::GoAway { last_id: 3, status: 0 },
    ] {
        enc.encode(&f, &mut wire);
    }
    let whole = wire.to_vec();
    fuzz("spdy frames", &[&whole, &whole[..whole.len() / 2], &[0x80, 3, 0, 4, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0]], |b| {
        let mut dec = Decoder::default();
        let mut buf = bytes::BytesMut::from(b);
        // Every frame out, until one is incomplete or broken; never a panic, never a loop.
        for _ in 0..b.len() + 1 {
            match dec.decode(&mut buf) {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    });
    fuzz("port-forward ports", &[b"8080", b"8080,9090", b"0", b"65536"], |b| {
        let _ = nanokube_apiserver::pod_portforward::ports(&[String::from_utf8_lossy(b).into_owned()]);
    });
}

#[test]
fn dashboard_cookies_origins_and_csrf() {
    use nanokube_dashboard::session;
    let sessions = session::Sessions::default();
    let (id, _) = sessions.create("token").expect("random");
    let seed = format!("a=b; {}={id}; c=d", session::COOKIE);
    fuzz("dashboard headers", &[seed.as_bytes(), b"https://127.0.0.1:6443", b"nanokube-session=;;=="], |input| {
        let mut headers = http::HeaderMap::new();
        if let Ok(v) = http::HeaderValue::from_bytes(input) {
            headers.insert(http::header::COOKIE, v.clone());
            headers.insert(http::header::ORIGIN, v.clone());
            headers.insert(session::CSRF_HEADER, v);
        }
        let found = session::cookie(&headers);
        if let Some(s) = found.as_deref().and_then(|c| sessions.get(c)) {
            let _ = session::csrf_ok(&s, &headers);
        }
        let _ = session::same_origin(&headers, std::str::from_utf8(input).ok(), true);
    });
}

#[test]
fn bootstrap_tokens_and_node_requests() {
    use nanokube_apiserver::authn::UserInfo;
    use nanokube_apiserver::authz::Authorizer;
    use nanokube_apiserver::bootstrap_token::{secret_for, BootstrapTokenAuthenticator};
    use nanokube_apiserver::node_authz::{NodeAuthorizer, NodeGraph};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _entered = rt.enter();
    let store = Arc::new(SqliteBackend::open(SqliteOptions::default()).unwrap());
    let reg = Arc::new(
        Registry::new(store.clone(), RegistryConfig { service_cidr: "127.96.0.0/16".into(), node_ports: (30000, 32767), pod_security: Default::default() })
            .unwrap(),
    );
    let secret = secret_for("abcdef.0123456789abcdef", 0, "", &["system:bootstrappers:x".into()]).unwrap();
    let opts = nanokube_apiserver::registry::WriteOptions::default();
    for ns in ["kube-system", "default"] {
        rt.block_on(reg.create(resources::find("", "v1", "namespaces").unwrap(), "", json!({"metadata": {"name": ns}}), &opts)).unwrap();
    }
    rt.block_on(reg.create(resources::find("", "v1", "secrets").unwrap(), "kube-system", secret, &opts)).unwrap();
    let pod = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i",
        "env": [{"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}]}});
    rt.block_on(reg.create(resources::find("", "v1", "pods").unwrap(), "default", pod, &opts)).unwrap();
    let auth = BootstrapTokenAuthenticator { registry: reg.clone() };
    assert!(matches!(auth.authenticate("abcdef.0123456789abcdef"), Some(Ok(_))));
    fuzz("bootstrap token", &[b"abcdef.0123456789abcdef", b"abcdef.0123456789abcdeg"], |b| {
        let t = String::from_utf8_lossy(b);
        if let Some(Ok(u)) = auth.authenticate(&t) {
            assert_eq!(t, "abcdef.0123456789abcdef", "{u:?}");
        }
    });
    // What a node asks, with any path and field selector: an answer, never a panic.
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let node_authz = NodeAuthorizer::new(NodeGraph::start(store, shutdown), Vec::new());
    let node = UserInfo::authenticated("system:node:n1", "", vec!["system:nodes".into()]);
    fuzz("node request", &[b"/api/v1/namespaces/default/secrets/s?spec.nodeName=n1", b"/api/v1/pods?metadata.name=p,spec.nodeName!=n1"], |b| {
        let text = String::from_utf8_lossy(b);
        let (path, selector) = text.split_once('?').unwrap_or((&text, ""));
        for verb in ["GET", "PATCH", "POST"] {
            let mut req = nanokube_apiserver::request::parse(verb, path, false);
            req.field_selector = selector.to_string();
            let _ = node_authz.authorize(&node, &req);
        }
    });
}
