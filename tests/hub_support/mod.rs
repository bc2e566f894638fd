//! Shared set-up for the hub's end-to-end tests: a simulated hub and members DCA/DCB/DCC with
//! CRDs installed everywhere, members registered the way `cafe cluster register` does it by
//! default (the hub's own least-privilege identity in each member, its token in a kubeconfig
//! Secret in cafe-system, and a labelled MemberCluster), and the hub and member agents running
//! in-process on the tokens of their `deploy/` ServiceAccounts, RBAC enforced.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cafe::api::labels::SYSTEM_NAMESPACE;
use cafe::api::{CafeDeployment, InPlaceSet, MemberCluster};
use cafe::hub::HubOptions;
use cafe_sim::sim::Sim;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::common::{Part, client, controller_client, kubeconfig_with_token, start_sim, wait_for};

pub const THREE_MEMBERS: &str = r#"
kubelet: {startMillis: 50, restartMillis: 50}
clusters:
  - name: hub
    role: hub
  - name: dca
    role: member
    units: {DataCenter: DCA}
    nodes: [{count: 3, cpu: "8", memory: 16Gi, pods: 110}]
  - name: dcb
    role: member
    units: {DataCenter: DCB}
    nodes: [{count: 3, cpu: "8", memory: 16Gi, pods: 110}]
  - name: dcc
    role: member
    units: {DataCenter: DCC}
    nodes: [{count: 2, cpu: "4", memory: 8Gi, pods: 110}]
"#;

pub const MEMBERS: [(&str, &str); 3] = [("dca", "DCA"), ("dcb", "DCB"), ("dcc", "DCC")];

/// Long enough for a loaded 2-core machine, short enough to fail fast.
pub const WAIT: Duration = Duration::from_secs(20);

pub struct Hub {
    pub sim: Sim,
    /// The test's own (admin) client of the hub.
    pub hub: kube::Client,
    /// The hub controller's client: ServiceAccount cafe-system/cafe-hub from `deploy/hub`.
    pub controller: kube::Client,
    /// Per member, the member agent's client: ServiceAccount cafe-system/cafe-member from
    /// `deploy/member`.
    pub agents: BTreeMap<String, kube::Client>,
    /// Per member, the test's own (admin) client.
    pub members: BTreeMap<String, kube::Client>,
    pub running: Option<(
        CancellationToken,
        JoinHandle<Result<(), cafe::hub::HubError>>,
    )>,
    /// Per member, the stand-in for its agent's Lease (see [`Hub::keep_agent_lease`]) while no
    /// real agent runs there.
    pub agent_leases: Arc<Mutex<BTreeMap<String, StandIn>>>,
}

/// A stand-in agent Lease: its stop token and its task.
pub type StandIn = (CancellationToken, JoinHandle<()>);

/// The identity the stand-in agent Lease is held under.
pub const FAKE_AGENT: &str = "fake-agent";

/// Hub options for tests: probes every 200 ms.
pub fn options() -> HubOptions {
    HubOptions {
        probe_interval: Duration::from_millis(200),
        ..HubOptions::fast()
    }
}

impl Hub {
    /// Sim up, CRDs on the hub (CafeDeployment, MemberCluster) and every member (InPlaceSet),
    /// members registered (not yet Ready: no hub runs).
    pub async fn start() -> Hub {
        Hub::start_with(THREE_MEMBERS, &MEMBERS).await
    }

    /// As [`Hub::start`], with the clusters of `config` and its `members` (name, unit).
    pub async fn start_with(config: &str, members_of: &[(&str, &str)]) -> Hub {
        let sim = start_sim(config).await;
        let hub = client(&sim, "hub").await;
        let mut members = BTreeMap::new();
        for (name, _) in members_of {
            members.insert(name.to_string(), client(&sim, name).await);
        }
        // Only the CRDs each side serves, all clusters at once: CRD creation is the slow part of
        // a debug-built simulator.
        let mut installs = vec![install_crds(&hub, cafe::hub::crds::hub_crds())];
        for c in members.values() {
            installs.push(install_crds(c, cafe::hub::crds::member_crds()));
        }
        futures::future::join_all(installs).await;
        let controller = controller_client(&sim, "hub", Part::Hub).await;
        let mut agents = BTreeMap::new();
        for (name, _) in members_of {
            agents.insert(
                name.to_string(),
                controller_client(&sim, name, Part::Member).await,
            );
        }
        let fixture = Hub {
            sim,
            hub,
            controller,
            agents,
            members,
            running: None,
            agent_leases: Arc::default(),
        };
        for (name, _) in members_of {
            fixture.keep_agent_lease(name);
        }
        for (name, unit) in members_of {
            let kubeconfig = fixture.dedicated_kubeconfig(name).await;
            fixture.register(name, unit, &kubeconfig).await;
        }
        fixture
    }

    /// What `cafe cluster register` stores by default for `member`: a kubeconfig holding only
    /// a token of the hub's own least-privilege ServiceAccount there (set up with the admin's
    /// credentials, as the operator's would be).
    pub async fn dedicated_kubeconfig(&self, member: &str) -> String {
        let admin = client(&self.sim, member).await;
        cafe::hub::access::grant(&admin)
            .await
            .unwrap_or_else(|e| panic!("the hub's identity in {member}: {e}"));
        let issued = cafe::hub::access::issue_token(&admin, Duration::from_secs(24 * 3600))
            .await
            .unwrap_or_else(|e| panic!("the hub's token in {member}: {e}"));
        let kubeconfig = kubeconfig_with_token(&self.sim, member, &issued.token);
        serde_json::to_string(&kubeconfig).expect("kubeconfig as JSON, which is YAML")
    }

    /// Starts the hub controllers in this process.
    pub fn run_hub(&mut self) {
        let token = CancellationToken::new();
        let task = tokio::spawn(cafe::hub::run_with(
            self.controller.clone(),
            options(),
            token.clone(),
        ));
        self.running = Some((token, task));
    }

    /// Cancels the hub and waits for it to finish cleanly.
    pub async fn stop_hub(&mut self) {
        let (token, task) = self.running.take().expect("the hub is running");
        token.cancel();
        let result = tokio::time::timeout(WAIT, task)
            .await
            .expect("the hub stops in time")
            .expect("the hub task does not panic");
        result.expect("the hub stops without error");
    }

    /// Kills the hub wherever it is (no graceful shutdown), as a crash would.
    pub async fn kill_hub(&mut self) {
        let (_, task) = self.running.take().expect("the hub is running");
        task.abort();
        let _ = task.await;
    }

    /// Runs the member agent (InPlaceSet controller, identity `agent-<member>`, fast lease
    /// timings) of each named member in this process, once the stand-in agent Lease there is
    /// released; they stop (releasing their Lease) when the returned token is cancelled.
    pub fn run_member_agents(&self, members: &[&str]) -> CancellationToken {
        let token = CancellationToken::new();
        for member in members {
            let stand_in = lock(&self.agent_leases).remove(*member);
            let client = self
                .agents
                .get(*member)
                .unwrap_or_else(|| panic!("no agent ServiceAccount installed in {member}"))
                .clone();
            let options = cafe::member::MemberOptions {
                identity: format!("agent-{member}"),
                ..cafe::member::MemberOptions::fast()
            };
            let stop = token.child_token();
            tokio::spawn(async move {
                if let Some((stand_in, task)) = stand_in {
                    stand_in.cancel();
                    let _ = task.await;
                }
                cafe::member::run_with(client, options, stop).await
            });
        }
        token
    }

    /// Holds `member`'s `cafe-system/cafe-member` Lease as a running agent would (identity
    /// [`FAKE_AGENT`], fast timings), so that the hub counts its agent as running in tests that
    /// play the member controller themselves. [`Hub::run_member_agents`] ends it.
    pub fn keep_agent_lease(&self, member: &str) {
        let token = CancellationToken::new();
        let lock_ = cafe::runtime::leader::LeaseLock {
            namespace: SYSTEM_NAMESPACE.to_string(),
            name: cafe::member::MEMBER_LEASE.to_string(),
            identity: FAKE_AGENT.to_string(),
        };
        let task = tokio::spawn(cafe::runtime::leader::run_election(
            self.members[member].clone(),
            lock_,
            cafe::runtime::leader::LeaseTimings::fast(),
            cafe::runtime::leader::Leadership::elected(),
            token.clone(),
        ));
        if let Some((old, _)) = lock(&self.agent_leases).insert(member.to_string(), (token, task)) {
            old.cancel();
        }
    }

    /// Stops the stand-in agent Lease of `member`, releasing it (for an agent run by hand).
    pub async fn stop_agent_lease(&self, member: &str) {
        let stand_in = lock(&self.agent_leases).remove(member);
        if let Some((token, task)) = stand_in {
            token.cancel();
            let _ = task.await;
        }
    }

    /// Stores `kubeconfig` in Secret `<name>-kubeconfig` in cafe-system and creates MemberCluster
    /// `name` labelled `unit.apps.cafe.io/DataCenter=<unit>`.
    pub async fn register(&self, name: &str, unit: &str, kubeconfig: &str) {
        let namespaces: Api<Namespace> = Api::all(self.hub.clone());
        if namespaces
            .get_opt(SYSTEM_NAMESPACE)
            .await
            .unwrap()
            .is_none()
        {
            let ns: Namespace =
                serde_json::from_value(json!({"metadata": {"name": SYSTEM_NAMESPACE}})).unwrap();
            namespaces
                .create(&PostParams::default(), &ns)
                .await
                .unwrap();
        }
        self.set_kubeconfig(name, kubeconfig).await;
        let mcs: Api<MemberCluster> = Api::all(self.hub.clone());
        let mc: MemberCluster = serde_json::from_value(json!({
            "apiVersion": "apps.cafe.io/v1alpha1",
            "kind": "MemberCluster",
            "metadata": {"name": name, "labels": {"unit.apps.cafe.io/DataCenter": unit}},
            "spec": {"kubeconfigSecretRef": {"namespace": SYSTEM_NAMESPACE, "name": format!("{name}-kubeconfig"), "key": "kubeconfig"}},
        }))
        .unwrap();
        mcs.create(&PostParams::default(), &mc).await.unwrap();
    }

    /// Creates or replaces the data of Secret `<name>-kubeconfig` in cafe-system.
    pub async fn set_kubeconfig(&self, name: &str, kubeconfig: &str) {
        let secrets: Api<Secret> = Api::namespaced(self.hub.clone(), SYSTEM_NAMESPACE);
        let secret_name = format!("{name}-kubeconfig");
        let data = BTreeMap::from([(
            "kubeconfig".to_string(),
            ByteString(kubeconfig.as_bytes().to_vec()),
        )]);
        match secrets.get_opt(&secret_name).await.unwrap() {
            Some(mut secret) => {
                secret.data = Some(data);
                secrets
                    .replace(&secret_name, &PostParams::default(), &secret)
                    .await
                    .unwrap();
            }
            None => {
                let mut secret = Secret::default();
                secret.metadata.name = Some(secret_name);
                secret.data = Some(data);
                secrets
                    .create(&PostParams::default(), &secret)
                    .await
                    .unwrap();
            }
        }
    }

    /// The members as the invariant checker watches them: (unit, member) with the test's
    /// client and the simulated cluster (for its call record).
    pub fn watched(&self, units: &[(&str, &str)]) -> Vec<crate::invariants::Watched> {
        units
            .iter()
            .map(|(unit, member)| crate::invariants::Watched {
                unit: unit.to_string(),
                member: member.to_string(),
                client: self.members[*member].clone(),
                cluster: self
                    .sim
                    .cluster(member)
                    .expect("a simulated member")
                    .clone(),
            })
            .collect()
    }

    /// Waits until the MemberCluster's Ready condition has this status and reason.
    pub async fn wait_member(&self, name: &str, status: &str, reason: &str) -> MemberCluster {
        let mcs: Api<MemberCluster> = Api::all(self.hub.clone());
        wait_for(
            &format!("MemberCluster {name} Ready={status} ({reason})"),
            WAIT,
            || {
                let mcs = mcs.clone();
                async move {
                    let mc = mcs.get(name).await.ok()?;
                    let c = ready_of(&mc)?;
                    (c.status == status && c.reason == reason).then_some(mc)
                }
            },
        )
        .await
    }

    pub async fn wait_members_ready(&self) {
        for name in self.members.keys() {
            self.wait_member(name, "True", "Probed").await;
        }
    }

    pub fn deployments(&self) -> Api<CafeDeployment> {
        Api::namespaced(self.hub.clone(), "default")
    }

    pub fn sets(&self, member: &str) -> Api<InPlaceSet> {
        Api::namespaced(self.members[member].clone(), "default")
    }

    /// Waits until `member` holds InPlaceSet "demo" with `replicas`, or none when `None`.
    pub async fn wait_set(&self, member: &str, replicas: Option<i32>) -> Option<InPlaceSet> {
        let api = self.sets(member);
        wait_for(
            &format!("InPlaceSet demo in {member} with {replicas:?} replicas"),
            WAIT,
            || {
                let api = api.clone();
                async move {
                    let set = api.get_opt("demo").await.ok()?;
                    match (replicas, set) {
                        (None, None) => Some(None),
                        (Some(r), Some(s)) if s.spec.replicas == r => Some(Some(s)),
                        _ => None,
                    }
                }
            },
        )
        .await
    }

    /// Plays the member controller: reports every desired replica of the member's InPlaceSet
    /// "demo" as ready, available and updated, for the generation it has now.
    pub async fn report_running(&self, member: &str) {
        let api = self.sets(member);
        let set = api.get("demo").await.unwrap();
        let n = set.spec.replicas;
        api.patch_status(
            "demo",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "observedGeneration": set.meta().generation,
                "replicas": n, "readyReplicas": n, "availableReplicas": n,
                "updatedReplicas": n, "updatedReadyReplicas": n, "updatedAvailableReplicas": n,
                "updateRevision": cafe::plan::revision::revision_hash(&set.spec.template),
            }})),
        )
        .await
        .unwrap();
    }

    /// Plays every member's InPlaceSet controller, instantly: whenever an InPlaceSet's status
    /// is behind its generation, reports all its replicas ready, available and updated. Stops
    /// when the returned token is cancelled.
    pub fn fake_members(&self) -> CancellationToken {
        let token = CancellationToken::new();
        for client in self.members.values() {
            let api: Api<InPlaceSet> = Api::namespaced(client.clone(), "default");
            let token = token.clone();
            tokio::spawn(async move {
                loop {
                    for set in api
                        .list(&Default::default())
                        .await
                        .map(|l| l.items)
                        .unwrap_or_default()
                    {
                        let behind = set.status.as_ref().and_then(|s| s.observed_generation)
                            != set.meta().generation;
                        if behind {
                            let n = set.spec.replicas;
                            let _ = api
                                .patch_status(
                                    &set.name_any(),
                                    &PatchParams::default(),
                                    &Patch::Merge(json!({"status": {
                                        "observedGeneration": set.meta().generation,
                                        "replicas": n, "readyReplicas": n, "availableReplicas": n,
                                        "updatedReplicas": n, "updatedReadyReplicas": n,
                                        "updatedAvailableReplicas": n,
                                        "updateRevision": cafe::plan::revision::revision_hash(&set.spec.template),
                                    }})),
                                )
                                .await;
                        }
                    }
                    tokio::select! {
                        () = token.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_millis(50)) => {}
                    }
                }
            });
        }
        token
    }

    /// Waits until the CafeDeployment's status satisfies `check`.
    pub async fn wait_status(
        &self,
        what: &str,
        check: impl Fn(&CafeDeployment) -> bool,
    ) -> CafeDeployment {
        let api = self.deployments();
        let check = &check;
        wait_for(what, WAIT, || {
            let api = api.clone();
            async move {
                let cd = api.get("demo").await.ok()?;
                check(&cd).then_some(cd)
            }
        })
        .await
    }

    /// Writes to member InPlaceSets (not their status) counted by the member's API server.
    pub fn set_writes(&self, member: &str) -> u64 {
        self.sim.cluster(member).unwrap().metrics.count(|l| {
            matches!(
                l.verb.as_str(),
                "create" | "update" | "patch" | "apply" | "delete"
            ) && l.resource == "inplacesets"
                && l.subresource.is_empty()
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn ready_of(mc: &MemberCluster) -> Option<Condition> {
    mc.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .cloned()
}

pub fn condition(cd: &CafeDeployment, type_: &str) -> Option<Condition> {
    cd.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .cloned()
}

/// CafeDeployment "demo" in default: `replicas` over `values` with `unit_replicas`.
/// The pod template of the `demo` CafeDeployments of these tests, running `image`.
pub fn template(image: &str) -> Value {
    json!({
        "metadata": {"labels": {"app": "demo"}},
        "spec": {"containers": [{"name": "app", "image": image,
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]},
    })
}

/// The revision hash of [`template`] running `image`.
pub fn revision_of(image: &str) -> String {
    cafe::plan::revision::revision_hash(
        &serde_json::from_value(template(image)).expect("a pod template"),
    )
}

/// CafeDeployment `default/demo` over DCA and DCB running `demo:1`, with `strategy`.
pub fn rolling_deployment(replicas: i32, strategy: Value) -> CafeDeployment {
    serde_json::from_value(json!({
        "apiVersion": "apps.cafe.io/v1alpha1",
        "kind": "CafeDeployment",
        "metadata": {"name": "demo", "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "demo"}},
            "template": template("demo:1"),
            "topology": {"unitType": "DataCenter", "values": ["DCA", "DCB"], "unitReplicas": {}},
            "strategy": strategy,
        },
    }))
    .expect("a CafeDeployment")
}

pub fn deployment(replicas: i32, values: &[&str], unit_replicas: Value) -> CafeDeployment {
    serde_json::from_value(json!({
        "apiVersion": "apps.cafe.io/v1alpha1",
        "kind": "CafeDeployment",
        "metadata": {"name": "demo", "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "demo"}},
            "template": {
                "metadata": {"labels": {"app": "demo"}},
                "spec": {"containers": [{"name": "app", "image": "demo:1",
                    "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]},
            },
            "topology": {"unitType": "DataCenter", "values": values, "unitReplicas": unit_replicas},
            // One group with every pod: these tests are about placement; the rollout's groups
            // are tested in hub_rollout.
            "strategy": {"maxUnavailablePerUnit": "25%", "upgradeType": "Batch", "batchSize": "100%"},
        },
    }))
    .expect("a CafeDeployment")
}

pub async fn scale(api: &Api<CafeDeployment>, replicas: i32) {
    api.patch(
        "demo",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": replicas}})),
    )
    .await
    .unwrap();
}

pub fn name_of(cd: &CafeDeployment) -> String {
    cd.name_any()
}

/// Installs the named cafe CRDs and waits until each is Established.
pub async fn install_crds(client: &kube::Client, names: Vec<String>) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in cafe::cli::crds::all() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        if !names.contains(&name) {
            continue;
        }
        crds.create(&PostParams::default(), &crd)
            .await
            .unwrap_or_else(|e| panic!("installing {name}: {e}"));
        wait_for(&format!("{name} Established"), WAIT, || {
            let crds = crds.clone();
            let name = name.clone();
            async move {
                let c = crds.get(&name).await.ok()?;
                c.status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
                    .then_some(())
            }
        })
        .await;
    }
}
