//! The template history of each InPlaceSet, kept as ControllerRevisions (apps/v1) in the
//! member, as StatefulSets and DaemonSets keep theirs
//! (<https://kubernetes.io/docs/reference/kubernetes-api/workload-resources/controller-revision-v1/>).
//!
//! A pod records only the revision hash of the template it was made from; to decide whether it
//! can reach the current template in place, the controller needs that old template back. Each
//! ControllerRevision is named `<inplaceset>-<revision>`, labelled with both, owned by the
//! InPlaceSet (so garbage collection removes it with the InPlaceSet) and holds
//! `{"template": <PodTemplateSpec>}`.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::api::{Api, PostParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};

use super::controller::WatchFailure;
use crate::api::InPlaceSet;
use crate::api::labels::{INPLACESET, MEMBER_MANAGER, REVISION};
use crate::runtime::api_cause;
use crate::runtime::controller_revision::{self, DeleteError};

#[derive(Debug, thiserror::Error)]
pub enum RevisionError {
    #[error("InPlaceSet {0} has no namespace or uid; it was not read from the API")]
    NotFromApi(String),
    #[error("creating ControllerRevision {name}: {}", api_cause(.source))]
    Create {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("reading ControllerRevision {name}, which already exists: {}", api_cause(.source))]
    Read {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "ControllerRevision {name} already exists and is not an InPlaceSet's (no {INPLACESET} \
         label); delete it or rename the InPlaceSet"
    )]
    Foreign { name: String },
    #[error(
        "replacing ControllerRevision {name}, left by an earlier InPlaceSet of the same name: {}",
        api_cause(.source)
    )]
    Replace {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting ControllerRevision {name}: {}", api_cause(.source))]
    Delete {
        name: String,
        #[source]
        source: kube::Error,
    },
}

impl RevisionError {
    /// A fixed label for metrics and logs.
    pub fn category(&self) -> &'static str {
        match self {
            Self::NotFromApi(_) => "invalid_object",
            Self::Create { .. } => "create_revision",
            Self::Read { .. } => "read_revision",
            Self::Foreign { .. } => "foreign_revision",
            Self::Replace { .. } => "replace_revision",
            Self::Delete { .. } => "delete_revision",
        }
    }
}

fn is_status(err: &kube::Error, code: u16) -> bool {
    matches!(err, kube::Error::Api(s) if s.code == code)
}

/// A cache of the ControllerRevisions labelled [`INPLACESET`] in all namespaces, and the
/// future that fills it; the cache stays current for as long as the future is polled (it
/// retries with backoff on watch errors and never ends by itself).
// `use<>`: the future owns its client; it does not borrow `client` (edition 2024 would capture
// the reference's lifetime by default).
/// `failure` keeps the last watch error until a list succeeds (for a reconcile's status).
pub fn watch(
    client: &Client,
    failure: WatchFailure,
    readiness: crate::runtime::readiness::Readiness,
) -> (
    Store<ControllerRevision>,
    impl Future<Output = ()> + Send + 'static + use<>,
) {
    let (store, writer) = reflector::store();
    let config = watcher::Config::default().labels(INPLACESET);
    let events = watcher(Api::<ControllerRevision>::all(client.clone()), config)
        .backoff(crate::runtime::backoff::watch_backoff())
        .modify(crate::runtime::strip_bookkeeping)
        .reflect(writer);
    let run = events.for_each(move |event| {
        match &event {
            Err(err) => {
                tracing::warn!(error = %err, "ControllerRevision watch failed; retrying");
                failure.set(err);
            }
            Ok(watcher::Event::InitDone) => {
                failure.clear();
                readiness.mark_synced(super::REVISIONS_WATCH);
            }
            Ok(_) => {}
        }
        std::future::ready(())
    });
    (store, run)
}

/// The name of the ControllerRevision of `revision` of InPlaceSet `inplaceset`.
pub fn name(inplaceset: &str, revision: &str) -> String {
    format!("{inplaceset}-{revision}")
}

/// Whether `cr` belongs to `ips`: same namespace, labelled with its name, owned by its uid
/// (a namesake InPlaceSet deleted and created again has another uid and other templates).
fn belongs_to(cr: &ControllerRevision, ips: &InPlaceSet) -> bool {
    let Some(uid) = ips.metadata.uid.as_deref() else {
        return false;
    };
    cr.metadata.namespace == ips.metadata.namespace
        && cr.labels().get(INPLACESET) == Some(&ips.name_any())
        && cr.owner_references().iter().any(|o| o.uid == uid)
}

/// The ControllerRevisions of `ips` in the cache.
fn owned(cache: &Store<ControllerRevision>, ips: &InPlaceSet) -> Vec<Arc<ControllerRevision>> {
    cache
        .state()
        .into_iter()
        .filter(|cr| belongs_to(cr, ips))
        .collect()
}

/// The template of `revision` of `ips`, if the cache holds it.
pub fn template_of(
    cache: &Store<ControllerRevision>,
    ips: &InPlaceSet,
    revision: &str,
) -> Option<PodTemplateSpec> {
    let namespace = ips.namespace()?;
    let key = ObjectRef::new(&name(&ips.name_any(), revision)).within(&namespace);
    let cr = cache.get(&key)?;
    if !belongs_to(&cr, ips) || cr.labels().get(REVISION).map(String::as_str) != Some(revision) {
        return None;
    }
    controller_revision::template(&cr)
}

/// The revision (and its template) at which pods the partition keeps on the old revision are
/// created: the InPlaceSet's current revision when it is not `update` and its template is
/// recorded, else the newest recorded revision other than `update`. `None` when none is
/// recorded: the InPlaceSet never had another template, so there is nothing older to keep.
pub fn old_revision(
    cache: &Store<ControllerRevision>,
    ips: &InPlaceSet,
    update: &str,
) -> Option<(String, PodTemplateSpec)> {
    let current = ips
        .status
        .as_ref()
        .and_then(|s| s.current_revision.as_deref())
        .filter(|r| *r != update);
    if let Some(template) = current.and_then(|r| template_of(cache, ips, r)) {
        return current.map(|r| (r.to_string(), template));
    }
    let mut others = owned(cache, ips);
    others.sort_by_key(|cr| std::cmp::Reverse(cr.revision));
    others.iter().find_map(|cr| {
        let revision = cr.labels().get(REVISION).filter(|r| *r != update)?;
        Some((revision.clone(), template_of(cache, ips, revision)?))
    })
}

/// The ControllerRevision holding the current template of `ips` as `revision`, numbered
/// `number`; `None` when `ips` lacks a uid or namespace (it was not read from the API).
pub fn build(ips: &InPlaceSet, revision: &str, number: i64) -> Option<ControllerRevision> {
    let labels = [
        (INPLACESET.to_string(), ips.name_any()),
        (REVISION.to_string(), revision.to_string()),
    ];
    Some(controller_revision::build(
        ips.controller_owner_ref(&())?,
        &ips.namespace()?,
        &name(&ips.name_any(), revision),
        labels.into(),
        &ips.spec.template,
        number,
    ))
}

fn params() -> PostParams {
    PostParams {
        field_manager: Some(MEMBER_MANAGER.to_string()),
        ..PostParams::default()
    }
}

/// Makes sure the ControllerRevision of the current template of `ips` (revision `revision`)
/// exists, creating it when the cache lacks it; numbered one past the newest of `ips`. One that
/// already exists for `ips` is success (the cache was behind); one left by an earlier namesake
/// InPlaceSet (another uid) is replaced. `api` must address the InPlaceSet's namespace.
pub async fn ensure(
    api: &Api<ControllerRevision>,
    cache: &Store<ControllerRevision>,
    ips: &InPlaceSet,
    revision: &str,
) -> Result<(), RevisionError> {
    if template_of(cache, ips, revision).is_some() {
        return Ok(());
    }
    let newest = owned(cache, ips).iter().map(|cr| cr.revision).max();
    let number = newest.unwrap_or(0) + 1;
    let not_from_api = || {
        RevisionError::NotFromApi(format!(
            "{}/{}",
            ips.namespace().unwrap_or_default(),
            ips.name_any()
        ))
    };
    let cr = build(ips, revision, number).ok_or_else(not_from_api)?;
    let name = cr.name_any();
    let key = format!("{}/{name}", ips.namespace().unwrap_or_default());
    let err = match api.create(&params(), &cr).await {
        Ok(_) => {
            tracing::info!(revision = %key, number, "created ControllerRevision");
            return Ok(());
        }
        Err(err) if is_status(&err, 409) => err,
        Err(source) => return Err(RevisionError::Create { name: key, source }),
    };
    tracing::debug!(revision = %key, error = %err, "ControllerRevision already exists");
    let existing = api.get(&name).await.map_err(|source| RevisionError::Read {
        name: key.clone(),
        source,
    })?;
    if belongs_to(&existing, ips) {
        return Ok(());
    }
    if !existing.labels().contains_key(INPLACESET) {
        return Err(RevisionError::Foreign { name: key });
    }
    // Left by a deleted InPlaceSet of the same name: its garbage collection may not have
    // reached it yet. The uid precondition deletes exactly the object read; unlike
    // `controller_revision::delete_exactly`, a 409 (the name holds yet another object) is an
    // error here, as there is then nothing this InPlaceSet may replace.
    match api
        .delete(&name, &controller_revision::exactly(existing.uid()))
        .await
    {
        Ok(_) => {}
        Err(e) if is_status(&e, 404) => {}
        Err(source) => return Err(RevisionError::Replace { name: key, source }),
    }
    api.create(&params(), &cr)
        .await
        .map_err(|source| RevisionError::Replace {
            name: key.clone(),
            source,
        })?;
    tracing::info!(revision = %key, number, "replaced a stale ControllerRevision");
    Ok(())
}

/// The names of the ControllerRevisions among `revisions` that may go: those not `current`,
/// not used by any pod (`in_use` holds revision hashes), and older than the newest `keep` of
/// such. As with a StatefulSet's `revisionHistoryLimit`, revisions in use never count toward
/// `keep`. Revisions without a [`REVISION`] label are never chosen.
pub fn prunable<'a>(
    revisions: impl IntoIterator<Item = &'a ControllerRevision>,
    in_use: &BTreeSet<String>,
    current: &str,
    keep: usize,
) -> Vec<String> {
    let mut idle: Vec<&ControllerRevision> = revisions
        .into_iter()
        .filter(|cr| {
            cr.labels()
                .get(REVISION)
                .is_some_and(|r| r != current && !in_use.contains(r))
        })
        .collect();
    // Newest first; the name breaks ties so the choice is stable.
    idle.sort_by(|a, b| {
        b.revision
            .cmp(&a.revision)
            .then_with(|| a.name_any().cmp(&b.name_any()))
    });
    idle.into_iter()
        .skip(keep)
        .map(|cr| cr.name_any())
        .collect()
}

/// Deletes the ControllerRevisions of `ips` that [`prunable`] chooses. Ones already gone (or
/// replaced meanwhile) are skipped. `api` must address the InPlaceSet's namespace.
pub async fn prune(
    api: &Api<ControllerRevision>,
    cache: &Store<ControllerRevision>,
    ips: &InPlaceSet,
    in_use: &BTreeSet<String>,
    revision: &str,
    keep: usize,
) -> Result<(), RevisionError> {
    let owned = owned(cache, ips);
    let doomed = prunable(owned.iter().map(AsRef::as_ref), in_use, revision, keep);
    let namespace = ips.namespace().unwrap_or_default();
    let logged_as = "deleted an old ControllerRevision";
    controller_revision::delete_listed(api, &namespace, &owned, doomed, logged_as)
        .await
        .map_err(|DeleteError { name, source }| RevisionError::Delete { name, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
    use kube::runtime::watcher::Event;
    use serde_json::json;

    fn ips(uid: &str) -> InPlaceSet {
        serde_json::from_value(json!({
            "apiVersion": "apps.cafe.io/v1alpha1",
            "kind": "InPlaceSet",
            "metadata": {"name": "demo", "namespace": "prod", "uid": uid},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "demo"}},
                "template": {
                    "metadata": {"labels": {"app": "demo"}},
                    "spec": {"containers": [{"name": "app", "image": "demo:1"}]},
                },
            },
        }))
        .unwrap()
    }

    #[test]
    fn a_built_revision_is_named_labelled_owned_and_holds_the_template() {
        let set = ips("u-1");
        let cr = build(&set, "abc", 3).unwrap();
        assert_eq!(cr.metadata.name.as_deref(), Some("demo-abc"));
        assert_eq!(cr.metadata.namespace.as_deref(), Some("prod"));
        let labels = cr.metadata.labels.clone().unwrap();
        assert_eq!(labels[INPLACESET], "demo");
        assert_eq!(labels[REVISION], "abc");
        let owner = &cr.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("InPlaceSet", "u-1")
        );
        assert_eq!(owner.controller, Some(true));
        assert_eq!(owner.block_owner_deletion, Some(true));
        assert_eq!(cr.revision, 3);
        let template: PodTemplateSpec =
            serde_json::from_value(cr.data.unwrap().0["template"].clone()).unwrap();
        assert_eq!(template, set.spec.template);
    }

    #[test]
    fn an_inplaceset_not_from_the_api_builds_nothing() {
        let mut set = ips("u-1");
        set.metadata.uid = None;
        assert!(build(&set, "abc", 1).is_none());
    }

    fn cache(items: Vec<ControllerRevision>) -> Store<ControllerRevision> {
        let (store, mut writer) = reflector::store();
        writer.apply_watcher_event(&Event::Init);
        for cr in items {
            writer.apply_watcher_event(&Event::InitApply(cr));
        }
        writer.apply_watcher_event(&Event::InitDone);
        store
    }

    #[test]
    fn template_of_matches_the_owner_uid() {
        let set = ips("u-1");
        let store = cache(vec![build(&set, "abc", 1).unwrap()]);
        assert_eq!(
            template_of(&store, &set, "abc"),
            Some(set.spec.template.clone())
        );
        assert_eq!(template_of(&store, &set, "other"), None);
        assert_eq!(
            template_of(&store, &ips("u-2"), "abc"),
            None,
            "a namesake InPlaceSet"
        );
        let mut corrupt = build(&set, "def", 2).unwrap();
        corrupt.data = Some(RawExtension(json!({"template": "nope"})));
        let store = cache(vec![corrupt]);
        assert_eq!(template_of(&store, &set, "def"), None);
    }

    #[test]
    fn owned_revisions_are_found_by_uid() {
        let set = ips("u-1");
        let store = cache(vec![
            build(&set, "a", 1).unwrap(),
            build(&set, "b", 2).unwrap(),
            {
                let mut other = build(&ips("u-0"), "c", 7).unwrap();
                other.metadata.name = Some("demo-c".into());
                other
            },
        ]);
        let mut names: Vec<String> = owned(&store, &set).iter().map(|c| c.name_any()).collect();
        names.sort();
        assert_eq!(names, ["demo-a", "demo-b"]);
    }

    #[test]
    fn prunable_keeps_current_used_and_the_newest_idle() {
        let set = ips("u-1");
        let crs: Vec<ControllerRevision> = ["a", "b", "c", "d", "e", "f"]
            .iter()
            .zip(1..)
            .map(|(r, n)| build(&set, r, n).unwrap())
            .collect();
        let in_use = BTreeSet::from(["b".to_string()]);
        // Idle besides current "f" and used "b": a(1), c(3), d(4), e(5).
        assert_eq!(
            prunable(&crs, &in_use, "f", 2),
            ["demo-c", "demo-a"].map(String::from)
        );
        assert_eq!(prunable(&crs, &in_use, "f", 10), Vec::<String>::new());
        assert_eq!(prunable(&crs, &in_use, "f", 0).len(), 4);
        let mut unlabelled = build(&set, "z", 0).unwrap();
        unlabelled.metadata.labels = None;
        assert!(prunable([&unlabelled], &in_use, "f", 0).is_empty());
    }

    #[test]
    fn errors_have_categories_and_name_the_revision() {
        let err = RevisionError::Foreign {
            name: "prod/demo-abc".into(),
        };
        assert_eq!(err.category(), "foreign_revision");
        assert!(err.to_string().contains("prod/demo-abc"));
    }
}
