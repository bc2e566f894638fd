//! `cafe crds [--out DIR]`: the CRDs generated from the Rust types (never edited by hand).
//!
//! With `--out DIR` they are written in two parts, each a kustomize base of its own, since
//! kustomize loads no file outside a kustomization's directory and the hub and the members
//! serve different kinds: `DIR/hub/` (CafeDeployment, MemberCluster) and `DIR/member/`
//! (InPlaceSet), each with the CRD files and a `kustomization.yaml` listing them. `deploy/hub`
//! and `deploy/member` take the CRDs from there.

use std::path::{Path, PathBuf};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::api::{CafeDeployment, InPlaceSet, MemberCluster};

#[derive(Debug, clap::Args)]
pub struct CrdsArgs {
    /// Write the CRDs into this directory instead of printing them: `hub/` and `member/`, each
    /// with one file per CRD and a kustomization.yaml.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum CrdsError {
    #[error("serialising CRD {name}: {message}")]
    Serialise { name: String, message: String },
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Where a CRD is installed: the hub cluster, or every member cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Hub,
    Member,
}

impl Part {
    pub const ALL: [Part; 2] = [Part::Hub, Part::Member];

    /// The sub-directory of `cafe crds --out DIR` holding this part.
    pub fn dir_name(self) -> &'static str {
        match self {
            Part::Hub => "hub",
            Part::Member => "member",
        }
    }

    /// The CRDs of this part, as installed (see [`fit_for_client_side_apply`]).
    pub fn crds(self) -> Vec<CustomResourceDefinition> {
        let crds = match self {
            Part::Hub => vec![CafeDeployment::crd(), MemberCluster::crd()],
            Part::Member => vec![InPlaceSet::crd()],
        };
        crds.into_iter().map(fit_for_client_side_apply).collect()
    }
}

/// Client-side `kubectl apply` keeps the whole applied object in an annotation, and Kubernetes
/// caps an object's annotations at 256 KiB; the embedded pod template's upstream descriptions
/// alone are larger than that. Inside the pod template each description keeps its first
/// sentence, which is what `kubectl explain` needs to name the field; cafe's own fields keep
/// their whole text.
pub fn fit_for_client_side_apply(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    let Ok(mut value) = serde_json::to_value(&crd) else {
        return crd;
    };
    if let Some(versions) = value
        .pointer_mut("/spec/versions")
        .and_then(serde_json::Value::as_array_mut)
    {
        for version in versions {
            let template = version.pointer_mut(
                "/schema/openAPIV3Schema/properties/spec/properties/template/properties",
            );
            if let Some(template) = template {
                first_sentences(template);
            }
        }
    }
    serde_json::from_value(value).unwrap_or(crd)
}

fn first_sentences(schema: &mut serde_json::Value) {
    match schema {
        serde_json::Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                match value {
                    serde_json::Value::String(text) if key == "description" => {
                        *text = first_sentence(text);
                    }
                    _ => first_sentences(value),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(first_sentences),
        _ => {}
    }
}

/// Up to and including the first full stop followed by white space, not counting those of
/// common abbreviations.
fn first_sentence(text: &str) -> String {
    const ABBREVIATIONS: [&str; 4] = ["e.g.", "i.e.", "etc.", "vs."];
    for (i, _) in text.match_indices('.') {
        let end = i + 1;
        let followed_by_space = text[end..].starts_with(char::is_whitespace);
        let abbreviated = ABBREVIATIONS.iter().any(|a| text[..end].ends_with(a));
        if followed_by_space && !abbreviated {
            return text[..end].to_string();
        }
    }
    text.to_string()
}

/// Every CRD cafe installs: CafeDeployment and MemberCluster on the hub, InPlaceSet in members.
pub fn all() -> Vec<CustomResourceDefinition> {
    Part::ALL.into_iter().flat_map(Part::crds).collect()
}

/// The YAML document of one CRD.
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, CrdsError> {
    let name = crd.metadata.name.clone().unwrap_or_default();
    serde_saphyr::to_string(crd).map_err(|e| CrdsError::Serialise {
        name,
        message: e.to_string(),
    })
}

pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.clone().unwrap_or_default())
}

/// The `kustomization.yaml` of one part: its CRD files as resources.
pub fn kustomization(part: Part) -> String {
    let mut text = format!(
        "# Generated by `cafe crds --out crds`: the {} CRDs as a kustomize base.\n\
         apiVersion: kustomize.config.k8s.io/v1beta1\n\
         kind: Kustomization\n\
         resources:\n",
        part.dir_name()
    );
    for crd in part.crds() {
        text.push_str(&format!("  - {}\n", file_name(&crd)));
    }
    text
}

/// Every file `--out DIR` writes, as (path relative to DIR, content).
pub fn files() -> Result<Vec<(PathBuf, String)>, CrdsError> {
    let mut files = vec![];
    for part in Part::ALL {
        let dir = Path::new(part.dir_name());
        for crd in part.crds() {
            files.push((dir.join(file_name(&crd)), to_yaml(&crd)?));
        }
        files.push((dir.join("kustomization.yaml"), kustomization(part)));
    }
    Ok(files)
}

pub fn write_all(dir: &Path) -> Result<(), CrdsError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| CrdsError::Write { path, source }
    };
    for (relative, content) in files()? {
        let path = dir.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::write(&path, content).map_err(io(&path))?;
    }
    Ok(())
}

pub fn run(args: CrdsArgs) -> Result<(), CrdsError> {
    match args.out {
        Some(dir) => write_all(&dir),
        None => {
            let docs = all().iter().map(to_yaml).collect::<Result<Vec<_>, _>>()?;
            cafe_base::out!("{}", docs.join("---\n"));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checked-in crds/ (CRDs and kustomizations) must match the types; regenerate with
    /// `cargo run -- crds --out crds`.
    #[test]
    fn checked_in_crds_match_the_types() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
        for (relative, expected) in files().unwrap() {
            let path = dir.join(relative);
            let on_disk = std::fs::read_to_string(&path).unwrap_or_else(|e| {
                panic!(
                    "{}: {e}; run `cargo run -- crds --out crds`",
                    path.display()
                )
            });
            assert_eq!(
                on_disk,
                expected,
                "{} drifted from the Rust types; run `cargo run -- crds --out crds`",
                path.display()
            );
        }
    }

    /// Nothing else lies in crds/: a CRD left behind by a rename would be installed by nobody
    /// yet look current.
    #[test]
    fn crds_holds_only_generated_files() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
        let mut expected: Vec<PathBuf> = files().unwrap().into_iter().map(|(p, _)| p).collect();
        expected.sort();
        let mut found = vec![];
        for part in Part::ALL {
            let sub = dir.join(part.dir_name());
            for entry in std::fs::read_dir(&sub).unwrap() {
                let name = entry.unwrap().file_name();
                found.push(Path::new(part.dir_name()).join(name));
            }
        }
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            if !entry.file_type().unwrap().is_dir() {
                found.push(PathBuf::from(entry.file_name()));
            }
        }
        found.sort();
        assert_eq!(
            found, expected,
            "run `cargo run -- crds --out crds` after removing strays"
        );
    }

    #[test]
    fn every_crd_is_in_exactly_one_part() {
        let names = |crds: Vec<CustomResourceDefinition>| -> Vec<String> {
            crds.iter().map(file_name).collect()
        };
        assert_eq!(
            names(Part::Hub.crds()),
            [CafeDeployment::crd_name(), MemberCluster::crd_name()].map(|n| format!("{n}.yaml"))
        );
        assert_eq!(
            names(Part::Member.crds()),
            [format!("{}.yaml", InPlaceSet::crd_name())]
        );
    }

    #[test]
    fn every_crd_fits_the_annotation_client_side_apply_writes() {
        for crd in all() {
            let applied = serde_json::to_string(&crd).expect("json");
            assert!(
                applied.len() < 256 * 1024,
                "{} is {} bytes as JSON: `kubectl apply` (client-side) would be refused",
                crd.metadata.name.clone().unwrap_or_default(),
                applied.len()
            );
        }
    }

    #[test]
    fn a_description_keeps_its_first_sentence() {
        assert_eq!(
            first_sentence("Name of the container, e.g. app. Each container must have one."),
            "Name of the container, e.g. app."
        );
        assert_eq!(first_sentence("No full stop"), "No full stop");
        assert_eq!(
            first_sentence("Version 1.2 is fine. More."),
            "Version 1.2 is fine."
        );
    }
}
