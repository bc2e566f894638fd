//! The cafe API (`apps.cafe.io/v1alpha1`): CafeDeployment and MemberCluster on the hub,
//! InPlaceSet in each member, and the well-known names they share.

// kube-derive emits one `#[serde]`/`#[schemars]` attribute per `#[kube(...)]` option, which
// clippy reads as duplicates; the attributes are generated, not written twice by hand.
#![allow(clippy::duplicated_attributes)]

pub mod cafedeployment;
pub mod inplaceset;
pub mod int_or_percent;
pub mod labels;
pub mod membercluster;

pub use cafedeployment::*;
pub use inplaceset::*;
pub use int_or_percent::*;
pub use membercluster::*;

pub const GROUP: &str = "apps.cafe.io";
pub const VERSION: &str = "v1alpha1";

#[cfg(test)]
mod tests {
    use kube::CustomResourceExt;
    use serde_json::Value;

    use super::*;

    /// Properties whose schema comes from k8s-openapi types and carries its own descriptions: the
    /// walk checks that the property has a description but does not descend into it.
    const EMBEDDED: &[&str] = &[".spec.selector", ".spec.template", ".status.conditions"];

    /// Every property under `path` without a description.
    fn undescribed(path: &str, schema: &Value, out: &mut Vec<String>) {
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            for (name, prop) in props {
                let here = format!("{path}.{name}");
                if prop
                    .get("description")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    out.push(here.clone());
                }
                if !EMBEDDED.iter().any(|e| here.ends_with(e)) {
                    undescribed(&here, prop, out);
                }
            }
        }
        for nested in ["items", "additionalProperties"] {
            if let Some(inner) = schema.get(nested).filter(|v| v.is_object()) {
                undescribed(&format!("{path}[*]"), inner, out);
            }
        }
    }

    /// `kubectl explain` shows each field's description, taken from the doc comments.
    #[test]
    fn every_crd_field_has_a_description() {
        let mut missing = Vec::new();
        for crd in [
            CafeDeployment::crd(),
            InPlaceSet::crd(),
            MemberCluster::crd(),
        ] {
            let kind = crd.spec.names.kind.clone();
            for version in &crd.spec.versions {
                let schema = serde_json::to_value(&version.schema).expect("schema serialises");
                let root = &schema["openAPIV3Schema"];
                // apiVersion, kind and metadata are the apiserver's own, described by it.
                for part in ["spec", "status"] {
                    let Some(node) = root["properties"].get(part) else {
                        continue;
                    };
                    if node.get("description").is_none() {
                        missing.push(format!("{kind}.{part}"));
                    }
                    undescribed(&format!("{kind}.{part}"), node, &mut missing);
                }
            }
        }
        assert!(
            missing.is_empty(),
            "fields without a description: {missing:#?}"
        );
    }

    /// `kubectl get cafed -o wide` adds the unit count and the update revision.
    #[test]
    fn wide_columns_show_units_and_revision() {
        let crd = CafeDeployment::crd();
        let columns = crd.spec.versions[0]
            .additional_printer_columns
            .clone()
            .unwrap_or_default();
        let wide: Vec<(&str, &str)> = columns
            .iter()
            .filter(|c| c.priority == Some(1))
            .map(|c| (c.name.as_str(), c.json_path.as_str()))
            .collect();
        assert_eq!(
            wide,
            [
                ("Units", ".status.unitCount"),
                ("Revision", ".status.updateRevision")
            ]
        );
        assert!(
            columns
                .iter()
                .any(|c| c.json_path == ".status.rollout.phase" && c.priority.is_none()),
            "the rollout phase is a default column"
        );
    }
}
