//! How objects are laid out in etcd, as kube-apiserver lays them out
//! (`--storage-media-type`, default `application/vnd.kubernetes.protobuf`): built-in
//! kinds in the protobuf encoding with the `k8s\0` envelope, custom resources (and
//! anything that is not an object) as JSON. Reading accepts both, as kube-apiserver's
//! storage decoder does, so a store written by either server (or by nanokube with
//! `application/json`) is read by the other.
//!
//! An object the protobuf tables cannot carry whole (a field they do not know) is kept
//! as JSON instead: nothing is dropped on the way to etcd.

use bytes::Bytes;
use nanokube_api::{protobuf, protobuf_encode};
use nanokube_store::ValueCodec;
use serde_json::Value;

/// The codec the etcd backend is given.
pub struct StorageCodec {
    /// Write built-in kinds as protobuf (else JSON).
    pub protobuf: bool,
}

/// Whether `key` holds a built-in kind (kept in protobuf by kube-apiserver): keys of
/// custom resources name their group, which has a dot; CRDs and APIServices are the
/// built-in kinds stored under their group.
fn built_in(key: &str) -> bool {
    let first = key.strip_prefix("/registry/").and_then(|r| r.split('/').next()).unwrap_or("");
    !first.contains('.') || matches!(first, "apiextensions.k8s.io" | "apiregistration.k8s.io")
}

impl ValueCodec for StorageCodec {
    fn encode(&self, key: &str, value: &[u8]) -> Bytes {
        if !self.protobuf || !built_in(key) {
            return Bytes::copy_from_slice(value);
        }
        let Ok(obj) = serde_json::from_slice::<Value>(value) else { return Bytes::copy_from_slice(value) };
        match protobuf_encode::encode_object(&obj) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                // Reservation keys and the like have no kind; anything else is worth knowing.
                if obj.get("kind").is_some() {
                    tracing::debug!(key, error = %e, "kept as JSON in etcd");
                }
                Bytes::copy_from_slice(value)
            }
        }
    }

    fn decode(&self, key: &str, stored: &[u8]) -> Bytes {
        if !stored.starts_with(b"k8s\0") {
            return Bytes::copy_from_slice(stored);
        }
        match protobuf::decode_stored(stored).and_then(|v| serde_json::to_vec(&v).map_err(|e| e.to_string())) {
            Ok(json) => Bytes::from(json),
            Err(e) => {
                tracing::warn!(key, error = %e, "a protobuf value in etcd could not be read");
                Bytes::copy_from_slice(stored)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_kinds_go_as_protobuf_and_come_back() {
        let codec = StorageCodec { protobuf: true };
        let cm = br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c","namespace":"d","generateName":""},"data":{"a":"b"}}"#;
        let stored = codec.encode("/registry/configmaps/d/c", cm);
        assert!(stored.starts_with(b"k8s\0"));
        let back: Value = serde_json::from_slice(&codec.decode("/registry/configmaps/d/c", &stored)).unwrap();
        assert_eq!(back, serde_json::from_slice::<Value>(cm).unwrap());
        // Custom resources stay JSON; so does what has no kind, and what the tables lack.
        let cr = br#"{"apiVersion":"apps.example.com/v1","kind":"Deployment","metadata":{"name":"x"}}"#;
        assert_eq!(codec.encode("/registry/apps.example.com/deployments/d/x", cr).as_ref(), cr);
        assert_eq!(codec.encode("/registry/ranges/servicenodeports/30000", br#"{"name":"s"}"#).as_ref(), br#"{"name":"s"}"#);
        let odd = br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"},"future":1}"#;
        assert_eq!(codec.encode("/registry/configmaps/d/c", odd).as_ref(), odd);
        assert!(codec
            .encode(
                "/registry/apiextensions.k8s.io/customresourcedefinitions/x",
                br#"{"apiVersion":"apiextensions.k8s.io/v1","kind":"CustomResourceDefinition","metadata":{"name":"x"}}"#
            )
            .starts_with(b"k8s\0"));
        // JSON written by anyone is read as it is.
        assert_eq!(codec.decode("/registry/configmaps/d/c", cm).as_ref(), cm);
    }
}
