//! kube-rs against nanokube (seed S9): `Config::infer()` loads the kubeconfig nanokube
//! wrote ($KUBECONFIG or ~/.kube/config); list namespaces, create a ConfigMap, watch it
//! change, delete it.
//!
//!     KUBECONFIG=~/.nanokube/kubeconfig cargo run -p nanokube --example kube_client

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let client = kube::Client::try_default().await?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let names: Vec<String> = namespaces.list(&ListParams::default()).await?.items.into_iter().filter_map(|n| n.metadata.name).collect();
    println!("namespaces: {}", names.join(", "));

    let cms: Api<ConfigMap> = Api::default_namespaced(client);
    let name = "example-rust";
    let mut events = watcher::watcher(cms.clone(), watcher::Config::default().fields(&format!("metadata.name={name}"))).boxed();
    // The first event is the (empty) initial listing; after it the watch is open.
    while let Some(ev) = events.try_next().await? {
        if matches!(ev, Event::InitDone) {
            break;
        }
    }
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some(name.into());
    cm.data = Some([("hello".to_string(), "world".to_string())].into());
    cms.create(&PostParams::default(), &cm).await?;
    cms.patch(name, &PatchParams::default(), &Patch::Merge(serde_json::json!({"data": {"hello": "nanokube"}}))).await?;
    cms.delete(name, &DeleteParams::default()).await?;

    let mut seen = Vec::new();
    while let Some(ev) = tokio::time::timeout(std::time::Duration::from_secs(10), events.next()).await? {
        match ev? {
            Event::Apply(c) => {
                let v = c.data.unwrap_or_default().get("hello").cloned().unwrap_or_default();
                println!("watch: applied {name} (hello={v})");
                seen.push(format!("apply:{v}"));
            }
            Event::Delete(_) => {
                println!("watch: deleted {name}");
                seen.push("delete".into());
                break;
            }
            _ => {}
        }
    }
    assert_eq!(seen, ["apply:world", "apply:nanokube", "delete"]);
    println!("ok");
    Ok(())
}
