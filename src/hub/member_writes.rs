//! Writes to members: server-side apply and delete of InPlaceSets, each bounded by a timeout and
//! recorded as an expectation, so that a reconcile running before the member cache shows a write
//! does not repeat it.

use std::time::Duration;

use futures::future::join_all;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};

use super::expectations::{Expectations, SetKey};
use super::membership::Membership;
use super::projection::{ObservedSet, Write};
use crate::api::InPlaceSet;
use crate::api::labels::HUB_MANAGER;

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{action} InPlaceSet {namespace}/{name} in member {member}: {source}")]
    Rejected {
        action: &'static str,
        member: String,
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("member {0} is not connected")]
    NotConnected(String),
    #[error("member {member} did not answer within {timeout:?}")]
    Timeout { member: String, timeout: Duration },
}

impl WriteError {
    /// A fixed word for logs and metrics.
    pub fn category(&self) -> &'static str {
        match self {
            WriteError::Rejected { .. } => "member_write",
            WriteError::NotConnected(_) => "member_not_connected",
            WriteError::Timeout { .. } => "member_timeout",
        }
    }
}

/// Writes through the registry's member clients.
pub struct MemberWriter<'a> {
    pub membership: &'a Membership,
    pub expectations: &'a Expectations,
    /// Bound on each write (a member that accepts connections but never answers must not stall
    /// the reconcile).
    pub timeout: Duration,
}

impl MemberWriter<'_> {
    /// Drops writes the member caches (`sets`) have not caught up with yet.
    pub fn without_pending(&self, writes: Vec<Write>, sets: &[ObservedSet]) -> Vec<Write> {
        writes
            .into_iter()
            .filter(|w| match w {
                Write::Apply {
                    member,
                    set,
                    fingerprint,
                    ..
                } => {
                    let key = set_key(member, set.namespace(), set.name_any());
                    let observed = sets
                        .iter()
                        .find(|s| {
                            &s.member == member
                                && s.set.name_any() == key.2
                                && s.set.namespace().as_deref() == Some(&key.1)
                        })
                        .map(|s| &*s.set);
                    !self.expectations.apply_pending(&key, fingerprint, observed)
                }
                Write::Delete {
                    member,
                    namespace,
                    name,
                    uid,
                    ..
                } => {
                    let key = set_key(member, Some(namespace.clone()), name.clone());
                    !self.expectations.delete_pending(&key, uid.as_deref())
                }
            })
            .collect()
    }

    /// Performs every write (members in parallel) and returns each one's outcome.
    pub async fn execute<'w>(
        &self,
        writes: &'w [Write],
    ) -> Vec<(&'w Write, Result<(), WriteError>)> {
        join_all(writes.iter().map(|w| async move {
            let write = async {
                match w {
                    Write::Apply {
                        member,
                        set,
                        fingerprint,
                        create,
                        ..
                    } => self.apply(member, set, fingerprint, *create).await,
                    Write::Delete {
                        member,
                        namespace,
                        name,
                        uid,
                        ..
                    } => self.delete(member, namespace, name, uid.clone()).await,
                }
            };
            let result = tokio::time::timeout(self.timeout, write)
                .await
                .unwrap_or_else(|_| {
                    Err(WriteError::Timeout {
                        member: w.member().to_string(),
                        timeout: self.timeout,
                    })
                });
            (w, result)
        }))
        .await
    }

    fn client(&self, member: &str) -> Result<kube::Client, WriteError> {
        self.membership
            .client(member)
            .ok_or_else(|| WriteError::NotConnected(member.to_string()))
    }

    /// Server-side apply (field manager `cafe-hub`, forced: the hub owns these fields), creating
    /// the namespace first when the InPlaceSet is new.
    async fn apply(
        &self,
        member: &str,
        set: &InPlaceSet,
        fingerprint: &str,
        create: bool,
    ) -> Result<(), WriteError> {
        let client = self.client(member)?;
        let (namespace, name) = (set.namespace().unwrap_or_default(), set.name_any());
        let rejected = |action: &'static str| {
            let (member, namespace, name) = (member.to_string(), namespace.clone(), name.clone());
            move |source| WriteError::Rejected {
                action,
                member,
                namespace,
                name,
                source: Box::new(source),
            }
        };
        if create {
            ensure_namespace(&client, &namespace)
                .await
                .map_err(rejected("creating the namespace of"))?;
        }
        let api: Api<InPlaceSet> = Api::namespaced(client, &namespace);
        let written = api
            .patch(
                &name,
                &PatchParams::apply(HUB_MANAGER).force(),
                &Patch::Apply(set),
            )
            .await
            .map_err(rejected("applying"))?;
        self.expectations.applied(
            set_key(member, Some(namespace), name),
            fingerprint.to_string(),
            &written,
        );
        Ok(())
    }

    /// Deletes the InPlaceSet with that uid (its pods follow by garbage collection in the
    /// member). Already gone (404) or replaced by another object (409 on the uid precondition)
    /// counts as done.
    async fn delete(
        &self,
        member: &str,
        namespace: &str,
        name: &str,
        uid: Option<String>,
    ) -> Result<(), WriteError> {
        let api: Api<InPlaceSet> = Api::namespaced(self.client(member)?, namespace);
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::background()
        };
        match api.delete(name, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(source) => {
                return Err(WriteError::Rejected {
                    action: "deleting",
                    member: member.to_string(),
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                    source: Box::new(source),
                });
            }
        }
        self.expectations.deleted(
            set_key(member, Some(namespace.to_string()), name.to_string()),
            uid,
        );
        Ok(())
    }
}

fn set_key(member: &str, namespace: Option<String>, name: String) -> SetKey {
    (member.to_string(), namespace.unwrap_or_default(), name)
}

/// The namespace exists in the member, created if missing (409 from a concurrent create is fine).
async fn ensure_namespace(client: &kube::Client, namespace: &str) -> Result<(), kube::Error> {
    let api: Api<Namespace> = Api::all(client.clone());
    if api.get_opt(namespace).await?.is_some() {
        return Ok(());
    }
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(namespace.to_string()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}
