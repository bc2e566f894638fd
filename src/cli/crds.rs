//! `cafe crds [--out DIR]`: the CRDs generated from the Rust types (never edited by hand).

use std::path::{Path, PathBuf};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::api::{CafeDeployment, InPlaceSet, MemberCluster};

#[derive(Debug, clap::Args)]
pub struct CrdsArgs {
    /// Write one file per CRD into this directory instead of printing them.
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

/// Every CRD cafe installs: CafeDeployment and MemberCluster on the hub, InPlaceSet in members.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![
        CafeDeployment::crd(),
        MemberCluster::crd(),
        InPlaceSet::crd(),
    ]
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

pub fn write_all(dir: &Path) -> Result<(), CrdsError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| CrdsError::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    for crd in all() {
        let path = dir.join(file_name(&crd));
        std::fs::write(&path, to_yaml(&crd)?).map_err(io(&path))?;
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

    /// The checked-in crds/ must match the types; regenerate with `cargo run -- crds --out crds`.
    #[test]
    fn checked_in_crds_match_the_types() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
        for crd in all() {
            let path = dir.join(file_name(&crd));
            let on_disk = std::fs::read_to_string(&path).unwrap_or_else(|e| {
                panic!(
                    "{}: {e}; run `cargo run -- crds --out crds`",
                    path.display()
                )
            });
            assert_eq!(
                on_disk,
                to_yaml(&crd).unwrap(),
                "{} drifted from the Rust types; run `cargo run -- crds --out crds`",
                path.display()
            );
        }
    }
}
