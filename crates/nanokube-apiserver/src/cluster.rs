//! What a component that is a *client* of the API reads and writes, whichever side of
//! the network it is on: the node agent and the event recorder go through [`Cluster`].
//! In the server's own process it is the [`Registry`] itself (no HTTP, no copies beyond
//! the object handed out); on a node that joined over the network (`nanokube agent`) it
//! is an HTTPS client with the node's certificate, so every call passes the API server's
//! authentication, the Node authorizer and NodeRestriction like kubelet's.
//!
//! Reads (`get`, `list`) are synchronous: in process they are reads of the store's
//! memory, and the agent's callers (volume and environment builders) are synchronous
//! code. Writes and watches are asynchronous.

use std::future::Future;
use std::pin::Pin;

use nanokube_api::resources::ResourceDef;
use nanokube_api::selector::{FieldSelector, LabelSelector};
use nanokube_api::ApiError;
use serde_json::Value;

use crate::registry::{DeleteOptions, ListOptions, ObjectWatch, Registry, WriteOptions};

/// A boxed future, as trait objects return them.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A list: its items and the resourceVersion it was read at (where a watch starts).
#[derive(Debug, Clone, Default)]
pub struct Listed {
    /// The objects.
    pub items: Vec<Value>,
    /// The list's resourceVersion.
    pub resource_version: String,
}

/// One watch event: its type (`ADDED`, `MODIFIED`, `DELETED`) and object.
pub type Event = (String, Value);

/// A watch; `None` when it ended (the caller lists again).
pub trait Watch: Send {
    /// The next event; `Err` (410 Expired among others) ends the watch too.
    fn next(&mut self) -> BoxFuture<'_, Option<Result<Event, ApiError>>>;
}

/// A change applied to the current object by [`Cluster::update_with`] (retried on
/// conflicts with the newer object).
pub type Change<'a> = &'a mut (dyn FnMut(&Value) -> Result<Value, ApiError> + Send);

/// A service-account token for a pod (TokenRequest bound to the pod).
#[derive(Debug, Clone)]
pub struct TokenFor<'a> {
    /// The pod's namespace.
    pub namespace: &'a str,
    /// The service account.
    pub service_account: &'a str,
    /// The audiences (empty: the API server's).
    pub audiences: &'a [String],
    /// Lifetime in seconds.
    pub expiration_seconds: i64,
    /// The pod's name.
    pub pod_name: &'a str,
    /// The pod's uid.
    pub pod_uid: &'a str,
}

/// The API as a client sees it.
pub trait Cluster: Send + Sync {
    /// One object.
    fn get(&self, def: &'static ResourceDef, namespace: &str, name: &str) -> Result<Value, ApiError>;

    /// Every object of a kind (in `namespace`, or all) matching a field selector in its
    /// query form (`spec.nodeName=n`; empty: all).
    fn list(&self, def: &'static ResourceDef, namespace: Option<&str>, fields: &str) -> Result<Listed, ApiError>;

    /// Changes after `resource_version` (a list's).
    fn watch<'a>(
        &'a self,
        def: &'static ResourceDef,
        namespace: Option<&'a str>,
        fields: &'a str,
        resource_version: &'a str,
    ) -> BoxFuture<'a, Result<Box<dyn Watch>, ApiError>>;

    /// Create an object.
    fn create<'a>(&'a self, def: &'static ResourceDef, namespace: &'a str, obj: Value) -> BoxFuture<'a, Result<Value, ApiError>>;

    /// Read, change and write back (`subresource`: `status`), again on a conflict.
    fn update_with<'a>(
        &'a self,
        def: &'static ResourceDef,
        namespace: &'a str,
        name: &'a str,
        subresource: Option<&'a str>,
        change: Change<'a>,
    ) -> BoxFuture<'a, Result<Value, ApiError>>;

    /// Delete an object with a grace period and a uid precondition.
    fn delete<'a>(
        &'a self,
        def: &'static ResourceDef,
        namespace: &'a str,
        name: &'a str,
        grace_period: Option<i64>,
        uid: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), ApiError>>;

    /// A token for a pod's service account (`serviceaccounts/<sa>/token`).
    fn service_account_token(&self, request: &TokenFor<'_>) -> Result<String, ApiError> {
        let _ = request;
        Err(ApiError::new(405, "MethodNotAllowed", "this client issues no service-account tokens"))
    }
}

struct RegistryWatch(ObjectWatch);

impl Watch for RegistryWatch {
    fn next(&mut self) -> BoxFuture<'_, Option<Result<Event, ApiError>>> {
        Box::pin(async move { self.0.next().await.map(|r| r.map(|(ty, obj)| (ty.to_string(), obj.to_value()))) })
    }
}

fn parse_fields(fields: &str) -> Result<FieldSelector, ApiError> {
    if fields.is_empty() {
        Ok(FieldSelector::default())
    } else {
        FieldSelector::parse(fields)
    }
}

/// In process: the registry's own reads and writes, as the server's controllers make them
/// (no admission requester: the node agent of the server's own process is trusted).
impl Cluster for Registry {
    fn get(&self, def: &'static ResourceDef, namespace: &str, name: &str) -> Result<Value, ApiError> {
        Registry::get(self, def, namespace, name).map(|o| o.to_value())
    }

    fn list(&self, def: &'static ResourceDef, namespace: Option<&str>, fields: &str) -> Result<Listed, ApiError> {
        let opts = ListOptions { fields: parse_fields(fields)?, ..Default::default() };
        let l = Registry::list(self, def, namespace, &opts)?;
        Ok(Listed { items: l.items.iter().map(|o| o.to_value()).collect(), resource_version: l.revision.to_string() })
    }

    fn watch<'a>(
        &'a self,
        def: &'static ResourceDef,
        namespace: Option<&'a str>,
        fields: &'a str,
        rv: &'a str,
    ) -> BoxFuture<'a, Result<Box<dyn Watch>, ApiError>> {
        Box::pin(async move {
            let after = rv.parse().map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?;
            let w = Registry::watch(self, def, namespace, after, LabelSelector::default(), parse_fields(fields)?)?;
            Ok(Box::new(RegistryWatch(w)) as Box<dyn Watch>)
        })
    }

    fn create<'a>(&'a self, def: &'static ResourceDef, namespace: &'a str, obj: Value) -> BoxFuture<'a, Result<Value, ApiError>> {
        Box::pin(async move { Registry::create(self, def, namespace, obj, &WriteOptions::default()).await.map(|o| o.to_value()) })
    }

    fn update_with<'a>(
        &'a self,
        def: &'static ResourceDef,
        namespace: &'a str,
        name: &'a str,
        subresource: Option<&'a str>,
        change: Change<'a>,
    ) -> BoxFuture<'a, Result<Value, ApiError>> {
        Box::pin(async move {
            let opts = WriteOptions { subresource: subresource.map(String::from), ..Default::default() };
            Registry::update_with(self, def, namespace, name, &opts, change).await.map(|o| o.to_value())
        })
    }

    fn delete<'a>(
        &'a self,
        def: &'static ResourceDef,
        namespace: &'a str,
        name: &'a str,
        grace: Option<i64>,
        uid: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move {
            let opts = DeleteOptions { grace_period: grace, precondition_uid: uid.map(String::from), ..Default::default() };
            Registry::delete(self, def, namespace, name, &opts).await.map(|_| ())
        })
    }
}
