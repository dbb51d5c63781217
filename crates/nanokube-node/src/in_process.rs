//! The agent of the server's own process: the registry's reads and writes
//! ([`Cluster`] for [`Registry`]) plus service-account tokens signed by the server's own
//! issuer, as a TokenRequest bound to the pod would return them.

use std::sync::Arc;

use nanokube_api::resources::{self, ResourceDef};
use nanokube_api::ApiError;
use nanokube_apiserver::cluster::{BoxFuture, Change, Cluster, Listed, TokenFor, Watch};
use nanokube_apiserver::registry::Registry;
use nanokube_apiserver::satoken::{BoundObject, TokenIssuer};
use serde_json::Value;

/// The registry and the token issuer of this process.
pub struct InProcess {
    /// The server's registry.
    pub registry: Arc<Registry>,
    /// The server's service-account token issuer.
    pub issuer: Arc<TokenIssuer>,
}

impl Cluster for InProcess {
    fn get(&self, def: &'static ResourceDef, namespace: &str, name: &str) -> Result<Value, ApiError> {
        Cluster::get(&*self.registry, def, namespace, name)
    }
    fn list(&self, def: &'static ResourceDef, namespace: Option<&str>, fields: &str) -> Result<Listed, ApiError> {
        Cluster::list(&*self.registry, def, namespace, fields)
    }
    fn watch<'a>(
        &'a self,
        def: &'static ResourceDef,
        namespace: Option<&'a str>,
        fields: &'a str,
        rv: &'a str,
    ) -> BoxFuture<'a, Result<Box<dyn Watch>, ApiError>> {
        Cluster::watch(&*self.registry, def, namespace, fields, rv)
    }
    fn create<'a>(&'a self, def: &'static ResourceDef, namespace: &'a str, obj: Value) -> BoxFuture<'a, Result<Value, ApiError>> {
        Cluster::create(&*self.registry, def, namespace, obj)
    }
    fn update_with<'a>(
        &'a self,
        def: &'static ResourceDef,
        namespace: &'a str,
        name: &'a str,
        subresource: Option<&'a str>,
        change: Change<'a>,
    ) -> BoxFuture<'a, Result<Value, ApiError>> {
        Cluster::update_with(&*self.registry, def, namespace, name, subresource, change)
    }
    fn delete<'a>(
        &'a self,
        def: &'static ResourceDef,
        namespace: &'a str,
        name: &'a str,
        grace: Option<i64>,
        uid: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), ApiError>> {
        Cluster::delete(&*self.registry, def, namespace, name, grace, uid)
    }

    fn service_account_token(&self, r: &TokenFor<'_>) -> Result<String, ApiError> {
        let def = resources::find("", "v1", "serviceaccounts").ok_or_else(|| ApiError::internal("no serviceaccounts resource"))?;
        let sa = Cluster::get(&*self.registry, def, r.namespace, r.service_account)?;
        let sa_uid = sa.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or("");
        let pods = resources::find("", "v1", "pods").ok_or_else(|| ApiError::internal("no pods resource"))?;
        let node = Cluster::get(&*self.registry, pods, r.namespace, r.pod_name).ok().and_then(|p| nanokube_apiserver::satoken::pod_node(&self.registry, &p));
        let bound = BoundObject { kind: "Pod".into(), name: r.pod_name.into(), uid: r.pod_uid.into(), node };
        let (token, _) = self.issuer.bound_token(r.namespace, r.service_account, sa_uid, r.audiences, r.expiration_seconds, Some(&bound));
        Ok(token)
    }
}
