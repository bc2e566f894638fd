//! One reconcile's work for an InPlaceSet, decided without a client: the update planner says
//! which pods may start being taken down (scale, partition, `maxUnavailable`), the per-pod state
//! machine says the next step of every pod already in flight. The controller performs the result.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use super::apply::PodWrite;
use super::cached::CachedPod;
use super::inplace::{self, UpdatePath};
use super::lifecycle::{self, Step, StepInputs, holders, stage_of};
use super::pod::PodView;
use super::status::BlockedPod;
use crate::api::InPlaceSet;
use crate::plan::update::{self, PodUpdateFacts, Stage, UpdateSpec};

/// Hooks time out after this long unless `lifecycle.timeoutSeconds` says otherwise.
const DEFAULT_HOOK_TIMEOUT: i32 = 300;
/// How often to look again at a pod a hook has blocked (its events wake us sooner).
const BLOCKED_RECHECK: Duration = Duration::from_secs(30);

/// What the controller observed.
pub struct Observed<'a> {
    pub ips: &'a InPlaceSet,
    pub update_revision: &'a str,
    pub pods: &'a [(Arc<CachedPod>, PodView)],
    /// For every revision a pod runs other than the update revision: how it gets there.
    pub paths: &'a BTreeMap<String, UpdatePath>,
    pub now: Timestamp,
}

/// What to do now.
#[derive(Debug, Default)]
pub struct Work {
    /// New pods to create at the update revision.
    pub create: usize,
    /// New pods to create at the old revision (the partition keeps more old pods than run).
    pub create_old: usize,
    pub writes: Vec<(Arc<CachedPod>, PodWrite)>,
    /// Pods a hook has held past its timeout.
    pub blocked: Vec<BlockedPod>,
    /// When to look again if no event comes first.
    pub wake: Option<Duration>,
    /// Old pods owed an update that the availability budget holds back.
    pub held_back: usize,
    /// Pods were taken toward the update revision in this decision: what the rollout step is.
    pub update: Option<UpdateStep>,
}

/// What the pods the partition lets through have to go through, announced once per rollout
/// step in one Event (per-pod detail is on each pod's lifecycle label and in the status).
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateStep {
    /// Pods the partition wants at the update revision that are not there yet.
    pub pods: usize,
    pub partition: usize,
    /// How they get there: "in place (app=demo:2)", "by recreation (why)".
    pub how: String,
}

impl UpdateStep {
    /// The Event note.
    pub fn note(&self, revision: &str) -> String {
        format!(
            "updating {} pods to revision {revision} {} (partition {})",
            self.pods, self.how, self.partition
        )
    }
}

/// How pods on the other revisions reach the update revision, in words.
fn how(paths: &BTreeMap<String, UpdatePath>) -> String {
    let mut in_place = None;
    let mut recreate = None;
    for path in paths.values() {
        match path {
            UpdatePath::InPlace(change) => {
                in_place.get_or_insert_with(|| inplace::describe(change));
            }
            UpdatePath::Recreate { why } => {
                recreate.get_or_insert_with(|| why.clone());
            }
        }
    }
    match (in_place, recreate) {
        (Some(change), None) => format!("in place{change}"),
        (None, Some(why)) => format!("by recreation ({why})"),
        (Some(change), Some(why)) => {
            format!("in place{change}, and by recreation where that cannot be ({why})")
        }
        (None, None) => "(nothing to change)".to_string(),
    }
}

fn seconds(s: i32) -> Duration {
    Duration::from_secs(u64::try_from(s).unwrap_or(0))
}

fn sooner(a: Option<Duration>, b: Duration) -> Option<Duration> {
    Some(a.map_or(b, |a| a.min(b)))
}

/// `maxUnavailable` resolved against the replicas (see [`crate::api::IntOrPercent::budget`]).
pub fn max_unavailable(ips: &InPlaceSet) -> usize {
    let budget = ips.spec.strategy.max_unavailable.budget(ips.spec.replicas);
    usize::try_from(budget).unwrap_or(1)
}

pub fn decide(o: &Observed<'_>) -> Work {
    let spec = &o.ips.spec;
    let lifecycle_spec = spec.lifecycle.as_ref();
    let pre_update = lifecycle_spec.and_then(|l| l.pre_update.as_ref());
    let pre_delete = lifecycle_spec.and_then(|l| l.pre_delete.as_ref());
    let hook_timeout = seconds(lifecycle_spec.map_or(DEFAULT_HOOK_TIMEOUT, |l| l.timeout_seconds));
    let min_ready = seconds(spec.min_ready_seconds);
    let path_of = |view: &PodView| -> Option<&UpdatePath> {
        match view.revision.as_deref() {
            Some(r) if r == o.update_revision => None,
            other => o.paths.get(other.unwrap_or_default()),
        }
    };

    let facts: Vec<PodUpdateFacts> = o
        .pods
        .iter()
        .map(|(pod, view)| {
            let path = path_of(view);
            let recreate = matches!(path, Some(UpdatePath::Recreate { .. }));
            let stage = stage_of(view.lifecycle.as_deref());
            let ready_for = view
                .ready_since
                .and_then(|s| o.now.duration_since(s).try_into().ok());
            PodUpdateFacts {
                pod: view.facts.clone(),
                updated: view.revision.as_deref() == Some(o.update_revision),
                stage,
                available: stage == Stage::Normal
                    && ready_for.is_some_and(|d: Duration| d >= min_ready),
                hooked: !holders(pod, if recreate { pre_delete } else { pre_update }).is_empty(),
                recreate,
            }
        })
        .collect();
    let replicas = usize::try_from(spec.replicas).unwrap_or(0);
    let partition = usize::try_from(spec.strategy.partition)
        .unwrap_or(0)
        .min(replicas);
    let plan = update::plan(
        UpdateSpec {
            replicas,
            partition,
            max_unavailable: max_unavailable(o.ips),
        },
        &facts,
    );
    let mut starts: HashMap<&str, Stage> = HashMap::new();
    for id in plan.scale_down.iter().chain(&plan.recreate) {
        starts.insert(id.uid.as_str(), Stage::PreparingDelete);
    }
    for id in &plan.update_in_place {
        starts.insert(id.uid.as_str(), Stage::PreparingUpdate);
    }

    let started = plan.update_in_place.len() + plan.recreate.len();
    let wanted = replicas - partition;
    let updated = facts.iter().filter(|f| f.updated).count();
    let mut work = Work {
        create: plan.create,
        create_old: plan.create_old,
        held_back: plan.waiting,
        update: (started > 0).then(|| UpdateStep {
            pods: wanted.saturating_sub(updated),
            partition,
            how: how(o.paths),
        }),
        ..Work::default()
    };
    for (pod, view) in o.pods {
        if let Some(stage) = starts.get(view.facts.uid.as_str()) {
            work.writes.push((
                pod.clone(),
                PodWrite::Mark {
                    to: *stage,
                    gate: Some(false),
                },
            ));
            continue;
        }
        let path = path_of(view);
        let input = StepInputs {
            path,
            min_ready,
            grace: seconds(spec.strategy.grace_period_seconds),
            pre_update,
            pre_delete,
            hook_timeout,
            now: o.now,
        };
        let write = match lifecycle::step(pod, view, &input) {
            Step::Idle => None,
            Step::Wait { after, why } => {
                tracing::debug!(pod = %view.facts.name, %why, ?after, "waiting");
                work.wake = sooner(work.wake, after);
                None
            }
            Step::Blocked {
                hook,
                holders,
                waited,
            } => {
                work.blocked.push(BlockedPod {
                    pod: view.facts.name.clone(),
                    hook: hook.field(),
                    holders,
                    waited_seconds: waited.as_secs(),
                });
                work.wake = sooner(work.wake, BLOCKED_RECHECK);
                None
            }
            Step::Gate(v) => Some(PodWrite::Gate(v)),
            Step::StartInPlace(change) => Some(PodWrite::InPlace {
                change,
                from: view.revision.clone().unwrap_or_default(),
                to: o.update_revision.to_string(),
            }),
            Step::Resize(body) => Some(PodWrite::Resize(body)),
            Step::Mark { to, gate } => Some(PodWrite::Mark { to, gate }),
            Step::Delete => Some(PodWrite::Delete),
        };
        if let Some(w) = write {
            work.writes.push((pod.clone(), w));
        }
    }
    work.blocked.sort_by(|a, b| a.pod.cmp(&b.pod));
    work
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::labels::*;
    use serde_json::json;

    fn ips(replicas: i32, partition: i32, max_unavailable: serde_json::Value) -> InPlaceSet {
        serde_json::from_value(json!({
            "apiVersion": "apps.cafe.io/v1alpha1", "kind": "InPlaceSet",
            "metadata": {"name": "demo", "namespace": "prod", "uid": "u"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "demo"}},
                     "template": {"spec": {"containers": [{"name": "app", "image": "demo:2"}]}},
                     "strategy": {"partition": partition, "maxUnavailable": max_unavailable}},
        }))
        .unwrap()
    }

    fn ready_pod(name: &str, revision: &str, state: &str) -> (Arc<CachedPod>, PodView) {
        let pod: CachedPod = serde_json::from_value(json!({
            "metadata": {"name": name, "uid": name, "creationTimestamp": "1970-01-01T00:00:00Z",
                         "labels": {REVISION: revision, LIFECYCLE_STATE: state}},
            "spec": {"nodeName": "n", "containers": [{"name": "app", "image": "demo:1"}]},
            "status": {"conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": "1970-01-01T00:00:00Z"},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": "1970-01-01T00:00:00Z"},
                {"type": READINESS_GATE, "status": "True", "lastTransitionTime": "1970-01-01T00:00:00Z"}]},
        }))
        .unwrap();
        let view = PodView::of(&pod);
        (Arc::new(pod), view)
    }

    fn observe<'a>(
        set: &'a InPlaceSet,
        pods: &'a [(Arc<CachedPod>, PodView)],
        paths: &'a BTreeMap<String, UpdatePath>,
    ) -> Observed<'a> {
        Observed {
            ips: set,
            update_revision: "new",
            pods,
            paths,
            now: Timestamp::from_second(1000).unwrap(),
        }
    }

    #[test]
    fn starts_max_unavailable_pods_and_moves_nothing_else() {
        let set = ips(4, 0, json!(2));
        let pods: Vec<_> = (0..4)
            .map(|i| ready_pod(&format!("p{i}"), "old", STATE_NORMAL))
            .collect();
        let paths = BTreeMap::from([("old".to_string(), UpdatePath::InPlace(Default::default()))]);
        let work = decide(&observe(&set, &pods, &paths));
        let marks: Vec<_> = work
            .writes
            .iter()
            .filter(|(_, w)| {
                *w == PodWrite::Mark {
                    to: Stage::PreparingUpdate,
                    gate: Some(false),
                }
            })
            .collect();
        assert_eq!(
            marks.len(),
            2,
            "leaving service is one write: state and gate"
        );
        assert_eq!(work.writes.len(), 2);
        assert_eq!(work.held_back, 2);
        let step = work.update.expect("the step is announced");
        assert_eq!((step.pods, step.partition), (4, 0));
    }

    #[test]
    fn recreates_start_in_preparing_delete() {
        let set = ips(2, 0, json!("50%"));
        let pods: Vec<_> = (0..2)
            .map(|i| ready_pod(&format!("p{i}"), "old", STATE_NORMAL))
            .collect();
        let paths = BTreeMap::from([(
            "old".to_string(),
            UpdatePath::Recreate { why: "env".into() },
        )]);
        let work = decide(&observe(&set, &pods, &paths));
        assert_eq!(
            work.writes
                .iter()
                .map(|(_, w)| w.clone())
                .collect::<Vec<_>>(),
            vec![PodWrite::Mark {
                to: Stage::PreparingDelete,
                gate: Some(false)
            }]
        );
        assert_eq!(
            work.update.map(|u| u.note("new")),
            Some("updating 2 pods to revision new by recreation (env) (partition 0)".to_string())
        );
    }

    #[test]
    fn percent_max_unavailable_rounds_down_but_never_to_zero() {
        assert_eq!(max_unavailable(&ips(10, 0, json!("25%"))), 2);
        assert_eq!(max_unavailable(&ips(3, 0, json!("25%"))), 1);
        assert_eq!(max_unavailable(&ips(3, 0, json!(0))), 1);
    }
}
