//! The simulator's configuration file: which clusters to run, their nodes, and kubelet timing.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use thiserror::Error;

pub use cafe_base::is_dns_label;

use crate::quantity;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: String, message: String },
    #[error("config field {field}: {message}")]
    Invalid { field: String, message: String },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// Top-level configuration (YAML).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SimConfig {
    /// "1.33": the minor reported by /version (kubectl's dispatcher picks its client from it).
    #[serde(default = "default_version")]
    pub kubernetes_version: String,
    #[serde(default)]
    pub kubelet: KubeletTiming,
    pub clusters: Vec<ClusterConfig>,
}

fn default_version() -> String {
    "1.33".to_string()
}

/// Delays that make the simulated kubelet look like a real one.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KubeletTiming {
    /// From binding to containers running and ready.
    #[serde(default = "default_start")]
    pub start_millis: u64,
    /// From an in-place image change to the container running and ready again.
    #[serde(default = "default_restart")]
    pub restart_millis: u64,
}

fn default_start() -> u64 {
    300
}
fn default_restart() -> u64 {
    300
}

impl Default for KubeletTiming {
    fn default() -> Self {
        Self {
            start_millis: default_start(),
            restart_millis: default_restart(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Hub,
    #[default]
    Member,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterConfig {
    pub name: String,
    /// Used by `cafe dev`; `cafe sim` accepts and ignores it.
    #[serde(default)]
    pub role: Role,
    /// Used by `cafe dev` to register the member with these unit labels.
    #[serde(default)]
    pub units: BTreeMap<String, String>,
    #[serde(default)]
    pub nodes: Vec<NodeGroup>,
}

/// `count` identical nodes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeGroup {
    #[serde(default = "one")]
    pub count: u32,
    #[serde(default = "default_cpu")]
    pub cpu: String,
    #[serde(default = "default_memory")]
    pub memory: String,
    #[serde(default = "default_pods")]
    pub pods: u32,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub taints: Vec<Taint>,
}

fn one() -> u32 {
    1
}
fn default_cpu() -> String {
    "8".into()
}
fn default_memory() -> String {
    "16Gi".into()
}
fn default_pods() -> u32 {
    110
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Taint {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    pub effect: String,
}

impl SimConfig {
    /// hub (no nodes), dca and dcb with 3 nodes of 8 CPU, 16Gi, 110 pods each.
    pub fn default_clusters() -> Self {
        let member = |name: &str, unit: &str| ClusterConfig {
            name: name.into(),
            role: Role::Member,
            units: BTreeMap::from([("DataCenter".to_string(), unit.to_string())]),
            nodes: vec![NodeGroup {
                count: 3,
                cpu: default_cpu(),
                memory: default_memory(),
                pods: default_pods(),
                labels: BTreeMap::new(),
                taints: vec![],
            }],
        };
        SimConfig {
            kubernetes_version: default_version(),
            kubelet: KubeletTiming::default(),
            clusters: vec![
                ClusterConfig {
                    name: "hub".into(),
                    role: Role::Hub,
                    units: BTreeMap::new(),
                    nodes: vec![],
                },
                member("dca", "DCA"),
                member("dcb", "DCB"),
            ],
        }
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: SimConfig = serde_saphyr::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            // The parser appends a source snippet; the first line already names line, column and field.
            message: e
                .to_string()
                .lines()
                .next()
                .unwrap_or("")
                .trim_start_matches("error: ")
                .to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values serde cannot: names, quantities, versions, taint effects.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let minor = self
            .kubernetes_version
            .strip_prefix("1.")
            .and_then(|m| m.parse::<u32>().ok());
        if minor.is_none() {
            return Err(invalid(
                "kubernetesVersion",
                format!(
                    "{:?} is not a version like \"1.33\"",
                    self.kubernetes_version
                ),
            ));
        }
        if self.clusters.is_empty() {
            return Err(invalid("clusters", "at least one cluster is required"));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, cluster) in self.clusters.iter().enumerate() {
            let field = format!("clusters[{i}].name");
            if !is_dns_label(&cluster.name) {
                return Err(invalid(
                    field,
                    format!(
                        "{:?} must be a lowercase DNS label (a-z, 0-9, '-'), e.g. \"dca\"",
                        cluster.name
                    ),
                ));
            }
            if !seen.insert(cluster.name.clone()) {
                return Err(invalid(
                    field,
                    format!("duplicate cluster {:?}", cluster.name),
                ));
            }
            for (j, group) in cluster.nodes.iter().enumerate() {
                let at = format!("clusters[{i}].nodes[{j}]");
                if group.count == 0 {
                    return Err(invalid(format!("{at}.count"), "must be at least 1"));
                }
                match quantity::cpu_millis(&group.cpu) {
                    Ok(v) if v > 0 => {}
                    _ => {
                        return Err(invalid(
                            format!("{at}.cpu"),
                            format!(
                                "{:?} is not a positive CPU quantity (e.g. \"8\" or \"500m\")",
                                group.cpu
                            ),
                        ));
                    }
                }
                match quantity::units(&group.memory) {
                    Ok(v) if v > 0 => {}
                    _ => {
                        return Err(invalid(
                            format!("{at}.memory"),
                            format!(
                                "{:?} is not a positive memory quantity (e.g. \"16Gi\")",
                                group.memory
                            ),
                        ));
                    }
                }
                if group.pods == 0 {
                    return Err(invalid(format!("{at}.pods"), "must be at least 1"));
                }
                for (k, taint) in group.taints.iter().enumerate() {
                    if !["NoSchedule", "PreferNoSchedule", "NoExecute"]
                        .contains(&taint.effect.as_str())
                    {
                        return Err(invalid(
                            format!("{at}.taints[{k}].effect"),
                            format!(
                                "{:?} is not one of NoSchedule, PreferNoSchedule, NoExecute",
                                taint.effect
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_config() {
        let text = r#"
kubernetesVersion: "1.32"
kubelet: {startMillis: 10, restartMillis: 20}
clusters:
  - name: hub
    role: hub
  - name: dca
    role: member
    units: {DataCenter: DCA}
    nodes:
      - {count: 2, cpu: "4", memory: 8Gi, pods: 10, labels: {zone: a}, taints: [{key: k, value: v, effect: NoSchedule}]}
"#;
        let c = SimConfig::parse(text, "t").expect("valid");
        assert_eq!(c.kubernetes_version, "1.32");
        assert_eq!(c.kubelet.restart_millis, 20);
        assert_eq!(c.clusters[1].nodes[0].count, 2);
        assert_eq!(c.clusters[0].role, Role::Hub);
    }

    #[test]
    fn unknown_field_is_named() {
        let err = SimConfig::parse("clusters: [{name: a, nodez: []}]", "t").unwrap_err();
        assert!(err.to_string().contains("nodez"), "{err}");
    }

    #[test]
    fn bad_values_name_the_field() {
        let err = SimConfig::parse("clusters: [{name: a, nodes: [{cpu: lots}]}]", "t").unwrap_err();
        assert!(
            err.to_string().contains("clusters[0].nodes[0].cpu"),
            "{err}"
        );
        let err = SimConfig::parse("clusters: [{name: A}]", "t").unwrap_err();
        assert!(err.to_string().contains("clusters[0].name"), "{err}");
        let err = SimConfig::parse("kubernetesVersion: x\nclusters: [{name: a}]", "t").unwrap_err();
        assert!(err.to_string().contains("kubernetesVersion"), "{err}");
        let err = SimConfig::parse("clusters: [{name: a, role: boss}]", "t").unwrap_err();
        assert!(
            err.to_string().contains("boss") || err.to_string().contains("role"),
            "{err}"
        );
    }
}
