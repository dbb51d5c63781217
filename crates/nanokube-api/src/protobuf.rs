//! Decoding of kubectl's protobuf request bodies (`application/vnd.kubernetes.protobuf`)
//! into JSON objects.

use serde_json::Value;

/// Decode a `k8s\0`-prefixed `runtime.Unknown` envelope into the JSON object it carries.
pub fn decode_request(_body: &[u8]) -> Result<Value, String> {
    Err("protobuf request bodies are not supported yet".into())
}
