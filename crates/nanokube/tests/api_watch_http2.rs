//! Many watches and plain requests on one HTTP/2 connection, as client-go's informers
//! and writes share one: every watch gets every event in order, and every request its
//! answer, while the server coalesces the connection's writes.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::Server;
use http_body_util::BodyExt;
use nanokube::client::ApiClient;
use serde_json::{json, Value};

const WATCHES: usize = 30;
const CREATES: usize = 40;

/// Reads watch lines until `want` events arrived; returns (type, name) in order.
async fn collect(mut body: hyper::body::Incoming, want: usize) -> Result<Vec<(String, String, i64)>, String> {
    let mut partial = Vec::new();
    let mut got = Vec::new();
    while got.len() < want {
        let Some(frame) = body.frame().await else { return Err(format!("watch ended after {} events", got.len())) };
        let Ok(data) = frame.map_err(|e| e.to_string())?.into_data() else { continue };
        partial.extend_from_slice(&data);
        while let Some(end) = partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = partial.drain(..=end).collect();
            let ev: Value = serde_json::from_slice(&line).map_err(|e| e.to_string())?;
            let meta = &ev["object"]["metadata"];
            got.push((
                ev["type"].as_str().unwrap_or_default().to_string(),
                meta["name"].as_str().unwrap_or_default().to_string(),
                meta["resourceVersion"].as_str().and_then(|r| r.parse().ok()).unwrap_or(0),
            ));
        }
    }
    Ok(got)
}

#[test]
fn watches_and_writes_share_one_http2_connection() {
    let s = Server::start();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    // Bytes held back and never sent would show as a stall, not a wrong answer.
    let run = async {
        let client = ApiClient::from_kubeconfig(&s.kubeconfig(), true).unwrap();
        let ns = "/api/v1/namespaces/default/configmaps";
        let (code, list) = client.request("GET", ns, None, Some("application/json"), Bytes::new()).await.unwrap();
        assert_eq!(code, 200);
        let rv = serde_json::from_slice::<Value>(&list).unwrap()["metadata"]["resourceVersion"].as_str().unwrap().to_string();

        // The first watch opens the connection; the rest and every write share it.
        let mut watchers = Vec::new();
        for _ in 0..WATCHES {
            let body = client.stream(&format!("{ns}?watch=true&resourceVersion={rv}&timeoutSeconds=60")).await.unwrap();
            watchers.push(tokio::spawn(collect(body, CREATES + 2)));
        }
        for i in 0..CREATES {
            let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("cm-{i}")}, "data": {"i": i.to_string()}});
            let (code, body) = client.request("POST", ns, Some("application/json"), None, Bytes::from(cm.to_string())).await.unwrap();
            assert_eq!(code, 201, "{}", String::from_utf8_lossy(&body));
        }
        let patch = json!({"data": {"changed": "yes"}}).to_string();
        let (code, _) = client.request("PATCH", &format!("{ns}/cm-0"), Some("application/merge-patch+json"), None, Bytes::from(patch)).await.unwrap();
        assert_eq!(code, 200);
        let (code, _) = client.request("DELETE", &format!("{ns}/cm-1"), None, None, Bytes::new()).await.unwrap();
        assert_eq!(code, 200);
        // A request answered with an error before its body is read gets its answer too.
        let (code, body) = client.request("POST", "/api/v1/namespaces/default/nosuchthings", Some("application/json"), None, Bytes::from("{}")).await.unwrap();
        assert_eq!(code, 404, "{}", String::from_utf8_lossy(&body));

        for w in watchers {
            let events = tokio::time::timeout(Duration::from_secs(30), w).await.expect("a watch stalled").unwrap().unwrap();
            let kinds: Vec<(&str, &str)> = events.iter().map(|(t, n, _)| (t.as_str(), n.as_str())).collect();
            let mut want: Vec<(&str, String)> = (0..CREATES).map(|i| ("ADDED", format!("cm-{i}"))).collect();
            want.push(("MODIFIED", "cm-0".into()));
            want.push(("DELETED", "cm-1".into()));
            let want: Vec<(&str, &str)> = want.iter().map(|(t, n)| (*t, n.as_str())).collect();
            assert_eq!(kinds, want);
            assert!(events.windows(2).all(|p| p[0].2 < p[1].2), "resourceVersions rise");
        }
    };
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(60), run).await.expect("the connection stalled") });
}
