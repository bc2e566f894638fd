//! Waiting for CRDs to be Established before watching their kinds: a watch on a kind the API server
//! does not serve yet fails, and a controller started too early would only log errors.
//! https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/#create-a-customresourcedefinition

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use kube::api::Api;
use kube::runtime::wait::{Condition, await_condition, conditions};

use crate::api::{CafeDeployment, InPlaceSet, MemberCluster};

#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    #[error(
        "waiting for CRD {crd} to be Established: {source} (install the CRDs with `cafe crds | kubectl apply -f -`)"
    )]
    Wait {
        crd: String,
        #[source]
        source: kube::runtime::wait::Error,
    },
}

/// The CRDs the hub serves from: CafeDeployment and MemberCluster.
pub fn hub_crds() -> Vec<String> {
    vec![
        CafeDeployment::crd_name().into(),
        MemberCluster::crd_name().into(),
    ]
}

/// The CRD each member must serve.
pub fn member_crds() -> Vec<String> {
    vec![InPlaceSet::crd_name().into()]
}

/// Returns once every named CRD is Established; waits (logging once) while one is missing.
pub async fn wait_established(client: &kube::Client, names: &[String]) -> Result<(), CrdError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in names {
        let established = api
            .get_opt(name)
            .await
            .ok()
            .flatten()
            .is_some_and(|crd| conditions::is_crd_established().matches_object(Some(&crd)));
        if !established {
            tracing::info!(crd = %name, "waiting for CRD to be Established");
            await_condition(api.clone(), name, conditions::is_crd_established())
                .await
                .map_err(|source| CrdError::Wait {
                    crd: name.clone(),
                    source,
                })?;
        }
    }
    Ok(())
}
