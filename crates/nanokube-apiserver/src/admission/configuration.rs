//! `--admission-control-config-file`: kube-apiserver's `AdmissionConfiguration`, a list of
//! plugins each with its configuration inline (`configuration`) or in a file of its own
//! (`path`, relative to this file). PodSecurity's is read; a configuration for any other
//! plugin is refused by name rather than ignored, since nanokube's other plugins take none.

use std::path::Path;

use serde_json::Value;

use super::pod_security::PodSecurityConfig;

/// The admission plugins' configurations.
#[derive(Debug, Clone, Default)]
pub struct AdmissionConfig {
    /// PodSecurity's.
    pub pod_security: PodSecurityConfig,
}

/// Most bytes of an admission configuration file read.
const MAX_FILE_BYTES: u64 = 1 << 20;

fn read_yaml(path: &Path) -> Result<Value, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!("{}: larger than {MAX_FILE_BYTES} bytes", path.display()));
    }
    let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_norway::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Read an `AdmissionConfiguration` file.
pub fn load(path: &Path) -> Result<AdmissionConfig, String> {
    let doc = read_yaml(path)?;
    let api_version = doc.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    if doc.get("kind").and_then(Value::as_str) != Some("AdmissionConfiguration")
        || !["apiserver.config.k8s.io/v1", "apiserver.k8s.io/v1alpha1"].contains(&api_version)
    {
        return Err(format!("{}: expected kind AdmissionConfiguration of apiVersion apiserver.config.k8s.io/v1", path.display()));
    }
    let mut config = AdmissionConfig::default();
    let plugins = doc.get("plugins").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    for plugin in plugins {
        let name = plugin.get("name").and_then(Value::as_str).unwrap_or("");
        let plugin_config = match (plugin.get("configuration"), plugin.get("path").and_then(Value::as_str)) {
            (Some(c), _) => c.clone(),
            (None, Some(p)) => read_yaml(&path.parent().unwrap_or(Path::new(".")).join(p))?,
            (None, None) => continue,
        };
        match name {
            "PodSecurity" => {
                config.pod_security = PodSecurityConfig::from_json(&plugin_config)
                    .map_err(|e| format!("{}: couldn't init admission plugin \"PodSecurity\": {e}", path.display()))?;
            }
            other => return Err(format!("{}: admission plugin {other:?} takes no configuration in nanokube (only PodSecurity does)", path.display())),
        }
    }
    Ok(config)
}
