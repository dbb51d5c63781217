//! Events as client-go's recorder writes them for a controller (core/v1, `source` and
//! `reportingComponent` the controller's name), repeats aggregated into one Event's
//! `count` (see [`nanokube_apiserver::events::Recorder`]).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use nanokube_apiserver::events::Recorder;
use nanokube_apiserver::registry::Registry;
use serde_json::Value;

/// One recorder per component, for the life of the process.
static RECORDERS: LazyLock<Mutex<HashMap<String, Arc<Recorder>>>> = LazyLock::new(|| Mutex::new(HashMap::new()));

/// Record `reason`/`message` about `obj` (as stored, with its `kind` and `apiVersion`)
/// from `component`.
pub(crate) async fn record(registry: &Registry, component: &str, obj: &Value, ty: &str, reason: &str, message: &str) {
    let recorder = match RECORDERS.lock() {
        Ok(mut m) => m.entry(component.to_string()).or_insert_with(|| Arc::new(Recorder::new(component, None))).clone(),
        Err(_) => return,
    };
    recorder.record(registry, obj, None, ty, reason, message).await;
}
