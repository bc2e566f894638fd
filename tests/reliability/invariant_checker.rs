//! The invariant checker (tests/invariants) catches each kind of violation: a real hub and
//! member agents bring a CafeDeployment to a known state, then the controllers are frozen
//! (agents stopped, stand-in Leases held, or the hub stopped) and the test makes the one wrong
//! write a buggy controller would make. The checker must flag it: a checker that sees nothing
//! cannot pass these.

use crate::{common, hub_support, invariants};
use hub_support::{revision_of, template};

use cafe::api::CafeDeployment;
use cafe::api::labels::REVISION;
use hub_support::{Hub, WAIT};
use invariants::{Checker, Kind};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const UNITS: [(&str, &str); 2] = [("DCA", "dca"), ("DCB", "dcb")];

/// 3 + 3 replicas over DCA and DCB, Beta then groups of 2, one unavailable per unit.
fn demo(confirm: bool) -> CafeDeployment {
    // (`confirm` is what the strategy asks of later rollouts.)
    hub_support::rolling_deployment(
        6,
        json!({"upgradeType": "Beta", "batchSize": 2, "maxUnavailablePerUnit": 1,
               "needWaitingForConfirm": confirm}),
    )
}

struct Case {
    h: Hub,
    agents: CancellationToken,
}

impl Case {
    /// Hub and agents running, `demo` created and all 6 pods available.
    async fn start(confirm: bool) -> Case {
        let mut h = Hub::start_with(common::TWO_MEMBERS, &[("dca", "DCA"), ("dcb", "DCB")]).await;
        let agents = h.run_member_agents(&["dca", "dcb"]);
        h.run_hub();
        h.wait_members_ready().await;
        h.deployments()
            .create(&PostParams::default(), &demo(false))
            .await
            .expect("created");
        h.wait_status("6 available", |cd| {
            cd.status.as_ref().is_some_and(|s| {
                s.available_replicas == 6
                    && s.rollout
                        .as_ref()
                        .is_none_or(|r| r.phase.as_deref() == Some("Completed"))
            })
        })
        .await;
        // Confirmations from the next rollout on (the first one creates the pods).
        if confirm {
            h.deployments()
                .patch(
                    "demo",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"strategy": {"needWaitingForConfirm": true}}})),
                )
                .await
                .expect("strategy changed");
        }
        Case { h, agents }
    }

    /// demo:2 rolling out, waiting for a confirmation after the Beta group, the checker
    /// watching, then the agents frozen.
    async fn waiting_after_beta() -> (Case, Checker) {
        let case = Case::start(true).await;
        let checker = case.checker();
        case.set_image("demo:2").await;
        case.wait_confirm_at("demo:2", 1).await;
        case.freeze_agents().await;
        (case, checker)
    }

    fn checker(&self) -> Checker {
        Checker::start(self.h.hub.clone(), self.h.watched(&UNITS))
    }

    async fn set_image(&self, image: &str) {
        self.h
            .deployments()
            .patch(
                "demo",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"template": template(image)}})),
            )
            .await
            .expect("image changed");
    }

    /// Waits until the rollout to `image` waits for a confirmation after group `k`.
    async fn wait_confirm_at(&self, image: &str, k: i32) {
        let revision = revision_of(image);
        self.h
            .wait_status(&format!("{image} waiting after group {k}"), |cd| {
                cd.status
                    .as_ref()
                    .and_then(|s| s.rollout.as_ref())
                    .is_some_and(|r| {
                        r.revision.as_deref() == Some(revision.as_str())
                            && r.current_batch == k
                            && r.phase.as_deref() == Some("WaitingForConfirm")
                    })
            })
            .await;
    }

    /// The member agents stop; stand-ins hold their Leases so that the hub still counts the
    /// members Ready (nothing corrects what the test writes next).
    async fn freeze_agents(&self) {
        self.agents.cancel();
        for (_, member) in UNITS {
            self.h.keep_agent_lease(member);
        }
        for (_, member) in UNITS {
            self.h.wait_member(member, "True", "Probed").await;
        }
    }

    fn pods(&self, member: &str) -> Api<Pod> {
        Api::namespaced(self.h.members[member].clone(), "default")
    }

    async fn pods_at(&self, member: &str, revision: &str, at: bool) -> Vec<Pod> {
        let list = self
            .pods(member)
            .list(&ListParams::default().labels("app=demo"))
            .await
            .expect("pods listed");
        list.items
            .into_iter()
            .filter(|p| (p.labels().get(REVISION).map(String::as_str) == Some(revision)) == at)
            .collect()
    }

    /// Stops the checker and returns what it flagged of `kind`, which must not be empty.
    async fn flagged(checker: Checker, kind: Kind) -> Vec<invariants::Violation> {
        let state = checker.stop().await;
        let found: Vec<_> = state
            .violations
            .iter()
            .filter(|v| v.kind == kind)
            .cloned()
            .collect();
        assert!(
            !found.is_empty(),
            "{kind:?} not flagged; flagged: {:#?}",
            state.violations
        );
        found
    }
}

async fn wait_flagged(checker: &Checker, kind: Kind) {
    common::wait_for(&format!("{kind:?} flagged"), WAIT, || async {
        checker.has(kind).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_pod_beyond_the_units_target_is_flagged() {
    let case = Case::start(false).await;
    case.freeze_agents().await;
    let checker = case.checker();
    let mut extra = case.pods_at("dca", "", false).await.remove(0);
    extra.metadata = kube::core::ObjectMeta {
        name: Some("demo-extra".into()),
        labels: extra.metadata.labels.clone(),
        owner_references: extra.metadata.owner_references.clone(),
        ..Default::default()
    };
    extra.status = None;
    if let Some(spec) = extra.spec.as_mut() {
        spec.node_name = None;
    }
    case.pods("dca")
        .create(&PostParams::default(), &extra)
        .await
        .expect("a fourth pod in DCA");
    wait_flagged(&checker, Kind::OverTarget).await;
    let found = Case::flagged(checker, Kind::OverTarget).await;
    assert!(
        found[0].objects.contains(&"unit DCA".to_string()),
        "{found:?}"
    );
}

#[tokio::test]
async fn a_pod_on_the_new_revision_past_the_released_groups_is_flagged() {
    let (case, checker) = Case::waiting_after_beta().await;
    // Beta released one pod in DCA; a second one takes the new revision's label.
    let new = revision_of("demo:2");
    let old = case.pods_at("dca", &new, false).await.remove(0);
    case.pods("dca")
        .patch(
            &old.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {REVISION: new}}})),
        )
        .await
        .expect("relabelled");
    wait_flagged(&checker, Kind::PastRelease).await;
    Case::flagged(checker, Kind::PastRelease).await;
}

#[tokio::test]
async fn a_unit_below_its_floor_during_a_rollout_is_flagged() {
    let (case, checker) = Case::waiting_after_beta().await;
    // Floor 3 - 1 = 2 in DCA: two pods go at once.
    for pod in case.pods_at("dca", "", false).await.iter().take(2) {
        case.pods("dca")
            .delete(&pod.name_any(), &Default::default())
            .await
            .expect("deleted");
    }
    wait_flagged(&checker, Kind::BelowFloor).await;
    Case::flagged(checker, Kind::BelowFloor).await;
}

#[tokio::test]
async fn a_pod_restarted_twice_for_one_revision_is_flagged() {
    let (case, checker) = Case::waiting_after_beta().await;
    let new = revision_of("demo:2");
    let updated = case.pods_at("dcb", &new, true).await.remove(0);
    let restarts = updated
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map_or(0, |c| c[0].restart_count);
    let mut status = updated.status.clone().expect("a status");
    if let Some(c) = status.container_statuses.as_mut() {
        c[0].restart_count = restarts + 2;
    }
    case.pods("dcb")
        .patch_status(
            &updated.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await
        .expect("restarted twice more");
    wait_flagged(&checker, Kind::UpdatedTwice).await;
    Case::flagged(checker, Kind::UpdatedTwice).await;
}

#[tokio::test]
async fn a_pod_deleted_when_it_could_be_updated_in_place_is_flagged() {
    let (case, checker) = Case::waiting_after_beta().await;
    let new = revision_of("demo:2");
    let old = case.pods_at("dca", &new, false).await.remove(0);
    case.pods("dca")
        .delete(&old.name_any(), &Default::default())
        .await
        .expect("deleted");
    wait_flagged(&checker, Kind::Replaced).await;
    Case::flagged(checker, Kind::Replaced).await;
}

/// Writes the rollout's current group as a hub that skipped its checks would.
async fn start_group(case: &mut Case, k: i32) {
    case.h.stop_hub().await;
    case.h
        .deployments()
        .patch_status(
            "demo",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"rollout": {"currentBatch": k, "phase": "Progressing"}}}),
            ),
        )
        .await
        .expect("status written");
}

#[tokio::test]
async fn a_group_started_without_its_confirmation_is_flagged() {
    let mut case = Case::start(true).await;
    let checker = case.checker();
    case.set_image("demo:2").await;
    case.wait_confirm_at("demo:2", 1).await;
    start_group(&mut case, 2).await;
    wait_flagged(&checker, Kind::GroupUnconfirmed).await;
    Case::flagged(checker, Kind::GroupUnconfirmed).await;
}

#[tokio::test]
async fn a_group_started_before_the_previous_one_is_done_is_flagged() {
    let mut case = Case::start(false).await;
    let checker = case.checker();
    // The Beta group's pods never become ready.
    case.set_image("demo:2-unready").await;
    let new = revision_of("demo:2-unready");
    case.h
        .wait_status("the Beta group in flight", |cd| {
            cd.status
                .as_ref()
                .and_then(|s| s.rollout.as_ref())
                .is_some_and(|r| {
                    r.revision.as_deref() == Some(new.as_str()) && r.current_batch == 1
                })
        })
        .await;
    start_group(&mut case, 2).await;
    wait_flagged(&checker, Kind::GroupEarly).await;
    Case::flagged(checker, Kind::GroupEarly).await;
}

#[tokio::test]
async fn a_hub_write_to_a_member_it_reports_lost_is_flagged() {
    let case = Case::start(false).await;
    let checker = case.checker();
    // dcb's agent stops and nothing holds its Lease: the hub reports it AgentNotRunning.
    case.agents.cancel();
    case.h.keep_agent_lease("dca");
    case.h.stop_agent_lease("dcb").await;
    case.h.wait_member("dcb", "False", "AgentNotRunning").await;
    // A write that names itself the hub, as a hub that ignored the loss would send.
    let mut config = common::config(&case.h.sim, "dcb").await;
    cafe::runtime::identify(&mut config, "hub", "rogue");
    let rogue = kube::Client::try_from(config).expect("client");
    // A write sent before the hub saw the loss may land just after it said so; this one is
    // well past that allowance.
    tokio::time::sleep(invariants::IN_FLIGHT + std::time::Duration::from_millis(500)).await;
    Api::<cafe::api::InPlaceSet>::namespaced(rogue, "default")
        .patch(
            "demo",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"rogue": "write"}}})),
        )
        .await
        .expect("written");
    let found = Case::flagged(checker, Kind::LostMemberWritten).await;
    assert!(found[0].detail.contains("(rogue)"), "{found:?}");
}

/// The checker's watch of the hub may lag its watch of a member: a pod seen before the status
/// that released it is a suspect, cleared by a fresh read of that status; the same pod against
/// a fresh status that does not release it is a violation.
#[test]
fn a_pod_seen_before_the_status_that_released_it_is_confirmed_by_a_fresh_read() {
    use invariants::{PodView, State};

    let revision = revision_of("demo:2");
    let at_group = |k: i32, version: &str| at_group(false, k, "Progressing", version);
    let pod = |i: usize, revision: &str| PodView {
        namespace: "default".into(),
        name: format!("demo-{i}"),
        uid: format!("uid-{i}"),
        cafedeployment: "demo".into(),
        revision: revision.into(),
        ready: true,
        terminating: false,
        images: vec![("app".into(), "demo:2".into())],
        restarts: 0,
    };
    let mut state = State::new(&UNITS);
    state.deployment("default", "demo", Some(at_group(1, "10")));
    // DCA's second pod on the revision arrives before the watch shows group 2.
    for (i, rev) in [(0, revision.as_str()), (1, revision.as_str()), (2, "old")] {
        state.pod("dca", &format!("uid-{i}"), Some(pod(i, rev)));
    }
    let suspects = state.take_suspects();
    assert!(
        suspects.contains_key(&("default".to_string(), "demo".to_string())),
        "a breach against a status seen through the watch is a suspect first: {suspects:?}"
    );
    assert!(state.violations.is_empty(), "{:?}", state.violations);
    // The fresh read shows group 2 released: cleared.
    state.refreshed("default", "demo", Some(at_group(2, "11")));
    assert!(state.violations.is_empty(), "{:?}", state.violations);
    // A stale watch event after the fresh read does not step the view back.
    state.deployment("default", "demo", Some(at_group(1, "10")));
    assert!(state.take_suspects().is_empty());
    // A third pod on the revision in DCA: past its share of group 2 (4 in all are released, so
    // only the unit is breached), and a fresh read confirms it.
    state.pod("dca", "uid-2", Some(pod(2, &revision)));
    assert!(!state.take_suspects().is_empty());
    state.refreshed("default", "demo", Some(at_group(2, "11")));
    assert_eq!(
        state
            .violations
            .iter()
            .map(|v| (v.kind, v.objects.clone()))
            .collect::<Vec<_>>(),
        [(
            Kind::PastRelease,
            vec!["cafedeployment default/demo".to_string(), "unit DCA".into()]
        )],
        "{:?}",
        state.violations
    );
}

/// demo:2 rolling out at group `k` in `phase` (Beta 1 + 1, then 1 + 1 twice), at
/// resourceVersion `version`.
fn at_group(confirm: bool, k: i32, phase: &str, version: &str) -> CafeDeployment {
    use cafe::api::{BatchStatus, CafeDeploymentStatus, RolloutStatus, RolloutUnit, UpgradeType};

    let mut cd = demo(confirm);
    cd.metadata.namespace = Some("default".into());
    cd.metadata.resource_version = Some(version.into());
    cd.status = Some(CafeDeploymentStatus {
        rollout: Some(RolloutStatus {
            phase: Some(phase.into()),
            revision: Some(revision_of("demo:2")),
            current_batch: k,
            total_batches: 3,
            // The status keeps the groups around k.
            upgrade_type: Some(UpgradeType::Beta),
            batch_size: Some(2),
            batches: (k.max(1)..=(k + 1).min(3))
                .map(|i| BatchStatus {
                    index: i,
                    beta: i == 1,
                    units: [("DCA".to_string(), 1), ("DCB".to_string(), 1)].into(),
                    state: None,
                })
                .collect(),
            units: ["DCA", "DCB"]
                .map(|u| RolloutUnit {
                    name: u.into(),
                    replicas: 3,
                    create: 0,
                    update: 3,
                    done: 0,
                })
                .into(),
            ..RolloutStatus::default()
        }),
        ..CafeDeploymentStatus::default()
    });
    cd
}

/// `cd` with `apps.cafe.io/upgrade-confirmed` set to `value`.
fn confirmed(mut cd: CafeDeployment, value: &str) -> CafeDeployment {
    cd.annotations_mut()
        .insert(cafe::api::labels::UPGRADE_CONFIRMED.into(), value.into());
    cd
}

/// A fresh read (for a pod seen ahead of the hub's watch) may show a group whose
/// WaitingForConfirm the watch has not delivered yet: the group rules wait for the watch. A
/// relist (history compacted) loses the states in between for good: the annotation next to
/// the new group is then what proves the confirmation.
#[test]
fn a_confirmation_is_judged_on_the_watch_and_across_a_relist_on_the_annotation() {
    use invariants::State;

    let kinds = |state: &State| state.violations.iter().map(|v| v.kind).collect::<Vec<_>>();
    let mut state = State::new(&UNITS);
    state.deployment(
        "default",
        "demo",
        Some(at_group(true, 1, "Progressing", "10")),
    );
    // Read afresh ahead of the watch: group 2 already started.
    state.refreshed(
        "default",
        "demo",
        Some(confirmed(at_group(true, 2, "Progressing", "13"), "true")),
    );
    assert!(state.violations.is_empty(), "{:?}", state.violations);
    // The watch catches up: the wait, the confirmation, the start.
    state.deployment(
        "default",
        "demo",
        Some(at_group(true, 1, "WaitingForConfirm", "11")),
    );
    let waiting = confirmed(at_group(true, 1, "WaitingForConfirm", "12"), "true");
    state.deployment("default", "demo", Some(waiting));
    let started = confirmed(at_group(true, 2, "Progressing", "13"), "true");
    state.deployment("default", "demo", Some(started));
    assert!(state.violations.is_empty(), "{:?}", state.violations);

    // A relist shows group 3 started, the confirmation given after group 2's wait: clean.
    state.deployments_relisted();
    let started = confirmed(at_group(true, 3, "Progressing", "20"), "true");
    state.deployment("default", "demo", Some(started));
    assert!(state.violations.is_empty(), "{:?}", state.violations);

    // Without a relist, the same jump past an unseen wait is a violation...
    let mut state = State::new(&UNITS);
    state.deployment(
        "default",
        "demo",
        Some(at_group(true, 1, "Progressing", "10")),
    );
    let started = confirmed(at_group(true, 2, "Progressing", "13"), "true");
    state.deployment("default", "demo", Some(started));
    assert_eq!(kinds(&state), [Kind::GroupUnconfirmed]);
    // ...and across a relist a group started with the annotation still "false" is one too.
    let mut state = State::new(&UNITS);
    state.deployment(
        "default",
        "demo",
        Some(at_group(true, 1, "Progressing", "10")),
    );
    state.deployments_relisted();
    let started = confirmed(at_group(true, 2, "Progressing", "13"), "false");
    state.deployment("default", "demo", Some(started));
    assert_eq!(kinds(&state), [Kind::GroupUnconfirmed]);
}
