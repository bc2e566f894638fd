//! The release invariant, watched from outside: a checker that polls every member's pods and the
//! hub's CafeDeployment through the API, as an auditor would, and records each moment at which
//! more pods run the update revision than the groups released so far allow, per unit and in
//! total.
//!
//! What a unit may run on the update revision: its own released quota (pods it had on the
//! revision when the plan was made, plus its share of the groups started so far), plus, for
//! each loan it carries, at most as many as the lender was released (a borrowed replica runs the
//! revision of the lender's replica it stands in for). In total the units run no more than the
//! released quotas, except for the pods of a lost or returning lender that still run in its own
//! member while a borrower carries them (the hub cannot touch a lost member; a returning loan
//! runs in both until the lender's pods serve).
//!
//! Pods are read first, then the status: what the pods show was released by that status or an
//! earlier one. A pod may outlive the loan or group that allowed it by the time its member
//! takes to remove it, so each check allows the largest quota seen in the last
//! [`GRACE`]; a pod that stays past that is a violation.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cafe::api::labels::{REVISION, UNIT};
use cafe::api::{CafeDeployment, CafeDeploymentStatus};
use cafe::plan::loans::scales_down_lender;
use cafe::plan::rollout::released;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a pod may outlive what released it.
pub const GRACE: Duration = Duration::from_secs(3);
const EVERY: Duration = Duration::from_millis(100);

/// What the released groups and loans allow, from one status.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Allowance {
    pub revision: String,
    /// Per unit: own quota plus what the loans it carries may add.
    pub per_unit: BTreeMap<String, i32>,
    pub total: i32,
}

/// The allowance of a CafeDeployment status; `None` while no rollout plan exists.
pub fn allowance(status: &CafeDeploymentStatus) -> Option<Allowance> {
    let rollout = status.rollout.as_ref()?;
    let revision = rollout.revision.clone()?;
    let quota = |unit: &str| -> i32 {
        rollout
            .units
            .iter()
            .find(|r| r.name == unit)
            .map_or(0, |r| {
                let already = r.replicas - r.create - r.update;
                already + released(&rollout.batches, unit, rollout.current_batch)
            })
    };
    let mut per_unit = BTreeMap::new();
    let mut total = 0;
    for row in &rollout.units {
        let carried: i32 = status
            .loans
            .iter()
            .filter(|l| l.to == row.name)
            .map(|l| l.replicas.min(quota(&l.from)))
            .sum();
        per_unit.insert(row.name.clone(), quota(&row.name) + carried);
        total += quota(&row.name);
    }
    total += status
        .loans
        .iter()
        .filter(|l| !scales_down_lender(l))
        .map(|l| l.replicas.min(quota(&l.from)))
        .sum::<i32>();
    Some(Allowance {
        revision,
        per_unit,
        total,
    })
}

/// Polls until stopped; [`Checker::stop`] returns the violations seen.
pub struct Checker {
    stop: CancellationToken,
    task: JoinHandle<Vec<String>>,
    pub checks: Arc<Mutex<u64>>,
}

impl Checker {
    /// Watches CafeDeployment `namespace/name` on `hub` and its pods in `members` (unit, client).
    pub fn start(
        hub: kube::Client,
        namespace: &str,
        name: &str,
        members: Vec<(String, kube::Client)>,
    ) -> Checker {
        let stop = CancellationToken::new();
        let checks = Arc::new(Mutex::new(0));
        let deployments: Api<CafeDeployment> = Api::namespaced(hub, namespace);
        let pods: Vec<(String, Api<Pod>)> = members
            .into_iter()
            .map(|(unit, c)| (unit, Api::namespaced(c, namespace)))
            .collect();
        let name = name.to_string();
        let token = stop.clone();
        let counter = checks.clone();
        let task = tokio::spawn(async move {
            let mut violations = vec![];
            let mut seen: Vec<(Instant, Allowance)> = vec![];
            let started = Instant::now();
            while !token.is_cancelled() {
                let at = Instant::now();
                // Pods first: what they show was released by the status read after.
                let mut on_revision: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
                for (unit, api) in &pods {
                    let Ok(list) = api.list(&ListParams::default().labels(UNIT)).await else {
                        continue; // unreachable: nothing to see
                    };
                    let running: Vec<(String, String)> = list
                        .items
                        .iter()
                        .filter(|p| p.metadata.deletion_timestamp.is_none())
                        .map(|p| {
                            let name = p.metadata.name.clone().unwrap_or_default();
                            let rev = p
                                .metadata
                                .labels
                                .as_ref()
                                .and_then(|l| l.get(REVISION).cloned())
                                .unwrap_or_default();
                            (name, rev)
                        })
                        .collect();
                    on_revision.insert(unit.clone(), running);
                }
                if let Ok(cd) = deployments.get(&name).await
                    && let Some(now) = cd.status.as_ref().and_then(allowance)
                {
                    seen.push((at, now.clone()));
                    seen.retain(|(t, _)| at.duration_since(*t) <= GRACE);
                    let window: Vec<&Allowance> = seen
                        .iter()
                        .map(|(_, a)| a)
                        .filter(|a| a.revision == now.revision)
                        .collect();
                    let mut total = 0;
                    for (unit, running) in &on_revision {
                        let new: Vec<&str> = running
                            .iter()
                            .filter(|(_, r)| *r == now.revision)
                            .map(|(n, _)| n.as_str())
                            .collect();
                        total += new.len();
                        let allowed = window
                            .iter()
                            .map(|a| a.per_unit.get(unit).copied().unwrap_or(0))
                            .max()
                            .unwrap_or(0);
                        if i32::try_from(new.len()).unwrap() > allowed {
                            violations.push(format!(
                                "{:?}: unit {unit} runs {} pods on {} ({new:?}), {allowed} released; status {:?}",
                                at.duration_since(started),
                                new.len(),
                                now.revision,
                                cd.status.as_ref().map(|s| (&s.rollout, &s.loans)),
                            ));
                        }
                    }
                    let allowed = window.iter().map(|a| a.total).max().unwrap_or(0);
                    if i32::try_from(total).unwrap() > allowed {
                        violations.push(format!(
                            "{:?}: {total} pods on {} in all, {allowed} released; status {:?}",
                            at.duration_since(started),
                            now.revision,
                            cd.status.as_ref().map(|s| (&s.rollout, &s.loans)),
                        ));
                    }
                    *counter.lock().unwrap() += 1;
                }
                tokio::select! {
                    _ = token.cancelled() => {}
                    _ = tokio::time::sleep(EVERY) => {}
                }
            }
            violations
        });
        Checker { stop, task, checks }
    }

    /// Stops polling; the violations seen, each with its time and the status it broke.
    pub async fn stop(self) -> Vec<String> {
        self.stop.cancel();
        self.task.await.expect("the checker does not panic")
    }
}
