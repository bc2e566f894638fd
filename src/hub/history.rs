//! The template history of each CafeDeployment, kept on the hub as ControllerRevisions (apps/v1)
//! in its namespace, for `cafe rollout undo`.
//!
//! One ControllerRevision per template: named `<cafedeployment>-<hash>`, labelled with the
//! CafeDeployment's name and the revision hash, controlled by the CafeDeployment (garbage
//! collection removes the history with it), holding `{"template": <PodTemplateSpec>}`. Its
//! `.revision` orders the history: the current template always has the highest number, and a
//! template that comes back (an undo) is renumbered rather than recorded twice, as Deployments
//! renumber the ReplicaSet they roll back to
//! (<https://kubernetes.io/docs/concepts/workloads/controllers/deployment/#rolling-back-a-deployment>).
//! At most `spec.historyLimit` revisions are kept besides the current one.

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use crate::api::CafeDeployment;
use crate::api::labels::{CAFEDEPLOYMENT, HUB_MANAGER, REVISION};
use crate::plan::revision::revision_hash;
use crate::runtime::api_cause;
use crate::runtime::controller_revision::{self, DeleteError};

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("CafeDeployment {0} has no namespace or uid; it was not read from the API")]
    NotFromApi(String),
    #[error("listing the ControllerRevisions of CafeDeployment {cd}: {}", api_cause(.source))]
    List {
        cd: String,
        #[source]
        source: kube::Error,
    },
    #[error("creating ControllerRevision {name}: {}", api_cause(.source))]
    Create {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "ControllerRevision {name} already exists but is not CafeDeployment {cd}'s (another owner, or none); \
         one left by a deleted namesake goes with garbage collection, anything else: delete it"
    )]
    Taken { name: String, cd: String },
    #[error("renumbering ControllerRevision {name}: {}", api_cause(.source))]
    Renumber {
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
    #[error("{cd} has no earlier revision to go back to ({history}); nothing to undo")]
    NothingToUndo { cd: String, history: String },
    #[error("{cd} has no revision {wanted}; its history holds revisions {available}")]
    NoSuchRevision {
        cd: String,
        wanted: i64,
        available: String,
    },
    #[error(
        "ControllerRevision {name} holds no valid pod template ({problem}); pick another revision with --to-revision"
    )]
    BadTemplate { name: String, problem: String },
}

impl HistoryError {
    /// A fixed label for metrics and logs.
    pub fn category(&self) -> &'static str {
        match self {
            Self::NotFromApi(_) => "invalid_object",
            Self::List { .. } => "list_history",
            Self::Create { .. } => "create_revision",
            Self::Taken { .. } => "revision_taken",
            Self::Renumber { .. } => "renumber_revision",
            Self::Delete { .. } => "delete_revision",
            Self::NothingToUndo { .. } => "nothing_to_undo",
            Self::NoSuchRevision { .. } => "no_such_revision",
            Self::BadTemplate { .. } => "bad_template",
        }
    }
}

/// The annotation saying why a change was made (`kubectl ... --record`, or set by hand). As a
/// Deployment's ReplicaSets do, each revision keeps the one its CafeDeployment had when the
/// revision was recorded, so `cafe rollout history` can show it.
pub const CHANGE_CAUSE: &str = "kubernetes.io/change-cause";

/// The `kubernetes.io/change-cause` annotation of `cd`, if any.
pub fn change_cause(cd: &CafeDeployment) -> Option<&str> {
    cd.annotations().get(CHANGE_CAUSE).map(String::as_str)
}

/// The name of the ControllerRevision holding template `hash` of CafeDeployment `cd`.
pub fn revision_name(cd: &str, hash: &str) -> String {
    format!("{cd}-{hash}")
}

/// The template hash a ControllerRevision records (its [`REVISION`] label).
pub fn hash_of(cr: &ControllerRevision) -> Option<&str> {
    cr.labels().get(REVISION).map(String::as_str)
}

/// `namespace/name` of `cd`, for messages.
fn key(cd: &CafeDeployment) -> String {
    format!("{}/{}", cd.namespace().unwrap_or_default(), cd.name_any())
}

/// The ControllerRevision recording the current template of `cd` as number `number`; `None`
/// when `cd` lacks a namespace or uid (it was not read from the API).
pub fn snapshot(cd: &CafeDeployment, number: i64) -> Option<ControllerRevision> {
    let hash = revision_hash(&cd.spec.template);
    let labels = [
        (CAFEDEPLOYMENT.to_string(), cd.name_any()),
        (REVISION.to_string(), hash.clone()),
    ];
    let mut cr = controller_revision::build(
        cd.controller_owner_ref(&())?,
        &cd.namespace()?,
        &revision_name(&cd.name_any(), &hash),
        labels.into(),
        &cd.spec.template,
        number,
    );
    if let Some(cause) = change_cause(cd) {
        cr.metadata.annotations = Some([(CHANGE_CAUSE.to_string(), cause.to_string())].into());
    }
    Some(cr)
}

/// What keeping template `hash` in the history takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// It is recorded and has the highest number.
    Current,
    /// It is new: record it as this number.
    Create(i64),
    /// It is recorded under an older number (an undo brought it back): renumber it.
    Renumber { name: String, number: i64 },
}

/// How `history` (one CafeDeployment's) must change so that `hash` is its newest revision.
pub fn to_record(history: &[ControllerRevision], hash: &str) -> Record {
    let newest = history.iter().map(|cr| cr.revision).max().unwrap_or(0);
    let recorded = history
        .iter()
        .filter(|cr| hash_of(cr) == Some(hash))
        .max_by_key(|cr| cr.revision);
    match recorded {
        None => Record::Create(newest + 1),
        Some(cr) if cr.revision == newest => Record::Current,
        Some(cr) => Record::Renumber {
            name: cr.name_any(),
            number: newest + 1,
        },
    }
}

/// The revisions of `history` to delete so that at most `limit` remain besides those of the
/// current template `current`: the lowest-numbered go first.
pub fn to_prune(history: &[ControllerRevision], current: &str, limit: i32) -> Vec<String> {
    let mut older: Vec<&ControllerRevision> = history
        .iter()
        .filter(|cr| hash_of(cr) != Some(current))
        .collect();
    // Newest first; the name breaks ties so the choice is stable.
    older.sort_by(|a, b| {
        (b.revision, a.metadata.name.as_deref()).cmp(&(a.revision, b.metadata.name.as_deref()))
    });
    let keep = usize::try_from(limit).unwrap_or(0);
    older
        .into_iter()
        .skip(keep)
        .map(|cr| cr.name_any())
        .collect()
}

/// The revision `cafe rollout undo` returns to: number `to`, or else the newest whose template
/// is not the current one (`current` is its hash). `history` is one CafeDeployment's, `cd`
/// names it in errors.
pub fn undo_target<'a>(
    history: &'a [ControllerRevision],
    current: &str,
    to: Option<i64>,
    cd: &str,
) -> Result<&'a ControllerRevision, HistoryError> {
    let numbers = || {
        let mut n: Vec<i64> = history.iter().map(|cr| cr.revision).collect();
        n.sort_unstable();
        n.iter().map(i64::to_string).collect::<Vec<_>>().join(", ")
    };
    match to {
        Some(wanted) => history
            .iter()
            .find(|cr| cr.revision == wanted)
            .ok_or_else(|| HistoryError::NoSuchRevision {
                cd: cd.to_string(),
                wanted,
                available: if history.is_empty() {
                    "none".into()
                } else {
                    numbers()
                },
            }),
        None => history
            .iter()
            .filter(|cr| hash_of(cr) != Some(current))
            .max_by_key(|cr| cr.revision)
            .ok_or_else(|| HistoryError::NothingToUndo {
                cd: cd.to_string(),
                history: if history.is_empty() {
                    "the hub has recorded no revision of it yet".into()
                } else {
                    format!(
                        "its history holds only the current template, revision {}",
                        numbers()
                    )
                },
            }),
    }
}

/// The pod template `cr` holds, as JSON, checked to be a PodTemplateSpec.
pub fn template_of(cr: &ControllerRevision) -> Result<serde_json::Value, HistoryError> {
    let bad = |problem: String| HistoryError::BadTemplate {
        name: cr.name_any(),
        problem,
    };
    let template = controller_revision::stored_template(cr)
        .cloned()
        .ok_or_else(|| bad("no data.template".into()))?;
    serde_json::from_value::<PodTemplateSpec>(template.clone()).map_err(|e| bad(e.to_string()))?;
    Ok(template)
}

/// The ControllerRevisions of `cd` in `namespace` (labelled with its name and controlled by its
/// uid: a deleted namesake's leftovers are not its history), oldest first.
pub async fn list(
    client: &Client,
    namespace: &str,
    cd: &CafeDeployment,
) -> Result<Vec<ControllerRevision>, HistoryError> {
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), namespace);
    let selector = format!("{CAFEDEPLOYMENT}={}", cd.name_any());
    let listed = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|source| HistoryError::List {
            cd: format!("{namespace}/{}", cd.name_any()),
            source,
        })?;
    let uid = cd.uid();
    let mut history: Vec<ControllerRevision> = listed
        .items
        .into_iter()
        .filter(|cr| {
            cr.owner_references()
                .iter()
                .any(|o| o.controller == Some(true) && Some(&o.uid) == uid.as_ref())
        })
        .collect();
    history.sort_by_key(|cr| cr.revision);
    Ok(history)
}

/// Makes the current template of `cd` the newest revision of its history (recording or
/// renumbering it), then deletes the revisions beyond `spec.historyLimit`. Idempotent; the hub
/// calls it whenever a new update revision appears.
pub async fn record(client: &Client, cd: &CafeDeployment) -> Result<(), HistoryError> {
    let (Some(namespace), Some(_)) = (cd.namespace(), cd.uid()) else {
        return Err(HistoryError::NotFromApi(key(cd)));
    };
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), &namespace);
    let mut history = list(client, &namespace, cd).await?;
    let hash = revision_hash(&cd.spec.template);
    let params = PatchParams {
        field_manager: Some(HUB_MANAGER.to_string()),
        ..PatchParams::default()
    };
    match to_record(&history, &hash) {
        Record::Current => {}
        Record::Create(number) => {
            let cr = snapshot(cd, number).ok_or_else(|| HistoryError::NotFromApi(key(cd)))?;
            let name = format!("{namespace}/{}", cr.name_any());
            let post = PostParams {
                field_manager: Some(HUB_MANAGER.to_string()),
                ..PostParams::default()
            };
            match api.create(&post, &cr).await {
                Ok(created) => {
                    tracing::info!(revision = %name, number, "recorded a template revision");
                    history.push(created);
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    return Err(HistoryError::Taken { name, cd: key(cd) });
                }
                Err(source) => return Err(HistoryError::Create { name, source }),
            }
        }
        Record::Renumber { name, number } => {
            // The template came back for a reason of its own: keep that one, if given.
            let patch = match change_cause(cd) {
                Some(cause) => json!({
                    "revision": number,
                    "metadata": {"annotations": {CHANGE_CAUSE: cause}},
                }),
                None => json!({ "revision": number }),
            };
            let renumbered = api
                .patch(&name, &params, &Patch::Merge(patch))
                .await
                .map_err(|source| HistoryError::Renumber {
                    name: format!("{namespace}/{name}"),
                    source,
                })?;
            tracing::info!(revision = %format!("{namespace}/{name}"), number,
                           "a template came back; renumbered its revision");
            history.retain(|cr| cr.name_any() != name);
            history.push(renumbered);
        }
    }
    let doomed = to_prune(&history, &hash, cd.spec.history_limit);
    let logged_as = "deleted a revision beyond historyLimit";
    controller_revision::delete_listed(&api, &namespace, &history, doomed, logged_as)
        .await
        .map_err(|DeleteError { name, source }| HistoryError::Delete { name, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::runtime::RawExtension;

    fn cd(image: &str) -> CafeDeployment {
        serde_json::from_value(json!({
            "apiVersion": "apps.cafe.io/v1alpha1",
            "kind": "CafeDeployment",
            "metadata": {"name": "demo", "namespace": "prod", "uid": "u-1"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "demo"}},
                "template": {"metadata": {"labels": {"app": "demo"}},
                             "spec": {"containers": [{"name": "web", "image": image}]}},
                "topology": {"unitType": "DataCenter", "values": ["DCA"]},
            },
        }))
        .unwrap()
    }

    /// Revisions of images `web:1`, `web:2`, ... numbered in the order given.
    fn history(images: &[(&str, i64)]) -> Vec<ControllerRevision> {
        images
            .iter()
            .map(|(image, n)| snapshot(&cd(image), *n).unwrap())
            .collect()
    }

    fn hash(image: &str) -> String {
        revision_hash(&cd(image).spec.template)
    }

    #[test]
    fn a_snapshot_is_named_labelled_owned_and_holds_the_template() {
        let demo = cd("web:1");
        let cr = snapshot(&demo, 4).unwrap();
        let h = hash("web:1");
        assert_eq!(
            cr.metadata.name.as_deref(),
            Some(format!("demo-{h}").as_str())
        );
        assert_eq!(cr.metadata.namespace.as_deref(), Some("prod"));
        let labels = cr.metadata.labels.clone().unwrap();
        assert_eq!(labels[CAFEDEPLOYMENT], "demo");
        assert_eq!(labels[REVISION], h);
        let owner = &cr.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("CafeDeployment", "u-1")
        );
        assert_eq!(owner.controller, Some(true));
        assert_eq!(cr.revision, 4);
        let back: PodTemplateSpec = serde_json::from_value(template_of(&cr).unwrap()).unwrap();
        assert_eq!(back, demo.spec.template);

        let mut local = demo;
        local.metadata.uid = None;
        assert!(snapshot(&local, 1).is_none(), "not read from the API");
    }

    #[test]
    fn a_revision_keeps_the_change_cause_its_cafedeployment_had() {
        let mut demo = cd("web:2");
        assert!(snapshot(&demo, 1).unwrap().metadata.annotations.is_none());
        demo.metadata.annotations =
            Some([(CHANGE_CAUSE.to_string(), "new image web:2".to_string())].into());
        let cr = snapshot(&demo, 2).unwrap();
        assert_eq!(
            cr.metadata.annotations.unwrap()[CHANGE_CAUSE],
            "new image web:2"
        );
    }

    #[test]
    fn a_new_template_is_numbered_past_the_newest_and_a_returning_one_renumbered() {
        assert_eq!(to_record(&[], &hash("web:1")), Record::Create(1));
        let h = history(&[("web:1", 1), ("web:2", 2)]);
        assert_eq!(to_record(&h, &hash("web:2")), Record::Current);
        assert_eq!(to_record(&h, &hash("web:3")), Record::Create(3));
        assert_eq!(
            to_record(&h, &hash("web:1")),
            Record::Renumber {
                name: revision_name("demo", &hash("web:1")),
                number: 3
            }
        );
    }

    #[test]
    fn pruning_keeps_the_current_and_the_newest_others() {
        let h = history(&[("web:1", 1), ("web:2", 2), ("web:3", 3), ("web:4", 4)]);
        let current = hash("web:3");
        let names = |images: &[&str]| -> Vec<String> {
            images
                .iter()
                .map(|i| revision_name("demo", &hash(i)))
                .collect()
        };
        assert_eq!(to_prune(&h, &current, 2), names(&["web:1"]));
        assert_eq!(to_prune(&h, &current, 1), names(&["web:2", "web:1"]));
        assert_eq!(to_prune(&h, &current, 0).len(), 3);
        assert!(to_prune(&h, &current, 10).is_empty());
    }

    #[test]
    fn undo_picks_the_newest_other_template_or_the_number_asked_for() {
        let h = history(&[("web:1", 1), ("web:2", 2), ("web:3", 3)]);
        let picked = undo_target(&h, &hash("web:3"), None, "prod/demo").unwrap();
        assert_eq!(picked.revision, 2);
        // After an undo to 1, the current template is renumbered 4; undo goes to 3 next.
        let h = history(&[("web:2", 2), ("web:3", 3), ("web:1", 4)]);
        assert_eq!(
            undo_target(&h, &hash("web:1"), None, "d").unwrap().revision,
            3
        );
        assert_eq!(
            undo_target(&h, &hash("web:1"), Some(2), "d")
                .unwrap()
                .revision,
            2
        );

        let err = undo_target(&h, &hash("web:1"), Some(9), "prod/demo").unwrap_err();
        assert_eq!(
            err.to_string(),
            "prod/demo has no revision 9; its history holds revisions 2, 3, 4"
        );
        let only = history(&[("web:1", 1)]);
        let err = undo_target(&only, &hash("web:1"), None, "prod/demo").unwrap_err();
        assert!(
            err.to_string()
                .contains("only the current template, revision 1")
                && err.to_string().contains("nothing to undo"),
            "{err}"
        );
        let err = undo_target(&[], &hash("web:1"), None, "prod/demo").unwrap_err();
        assert_eq!(err.category(), "nothing_to_undo");
    }

    #[test]
    fn a_revision_without_a_template_is_an_error_naming_it() {
        let mut cr = snapshot(&cd("web:1"), 1).unwrap();
        cr.data = Some(RawExtension(json!({"template": "nope"})));
        let err = template_of(&cr).unwrap_err();
        assert!(
            err.to_string().starts_with("ControllerRevision demo-"),
            "{err}"
        );
        cr.data = None;
        assert!(template_of(&cr).is_err());
    }
}
