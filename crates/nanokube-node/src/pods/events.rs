//! Events about pods as kubelet records them: the shared recorder
//! ([`nanokube_apiserver::events::Recorder`]) as component `kubelet` on this host, about
//! a container (`fieldPath: spec.containers{c}`) or the pod.

pub use nanokube_apiserver::events::Recorder;

/// The recorder of the kubelet on `node`.
pub fn kubelet(node: &str) -> Recorder {
    Recorder::new("kubelet", Some(node))
}
