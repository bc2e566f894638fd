//! cafe installed as in production: `kubectl apply -k deploy/hub` on the hub and
//! `kubectl apply -k deploy/member` in each member, the members registered the default way (the
//! hub's own least-privilege ServiceAccount in each member), the hub and member controllers
//! running with the tokens of their ServiceAccounts, RBAC enforced by the simulator.
//!
//! One scenario exercises every path that needs a permission (create, scale, roll out, renew the
//! hub's token, delete, remove a member); the simulator's per-user call record then shows that
//! no call was refused, and that `deploy/` and the hub's member role grant nothing the
//! controllers were not seen to use.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cafe::api::{CafeDeployment, InPlaceSet};
use cafe::cli::cluster::{self, Credentials};
use cafe::hub::access;
use common::{TWO_MEMBERS, client_with_token, service_account_token, start_sim, wait_for};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::PolicyRule;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::Kubeconfig;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(60);
const HUB_USER: &str = "system:serviceaccount:cafe-system:cafe-hub";
const MEMBER_USER: &str = "system:serviceaccount:cafe-system:cafe-member";

/// Everything the controllers log, for the check that no credential ever reaches a log line.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).to_string()
    }
}

fn kubectl(kubeconfig: &Path, cache: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(cache)
        .args(args)
        .output()
        .expect("kubectl is installed (it is on every machine that runs these tests)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The rendered manifests of a `deploy/` base, as JSON objects.
fn rendered(kubeconfig: &Path, cache: &Path, base: &str) -> Vec<Value> {
    let (ok, yaml) = kubectl(kubeconfig, cache, &["kustomize", base]);
    assert!(ok, "kubectl kustomize {base}: {yaml}");
    serde_saphyr::from_multiple::<Value>(&yaml)
        .expect("rendered manifests parse")
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

/// The rules bound to ServiceAccount `cafe-system/<account>` by the rendered manifests.
fn granted_rules(objects: &[Value], account: &str) -> Vec<PolicyRule> {
    let bound = |binding: &Value| {
        binding["subjects"].as_array().is_some_and(|s| {
            s.iter().any(|s| {
                s["kind"] == "ServiceAccount"
                    && s["name"] == account
                    && s["namespace"] == "cafe-system"
            })
        })
    };
    let mut rules = vec![];
    for binding in objects
        .iter()
        .filter(|o| {
            matches!(
                o["kind"].as_str(),
                Some("RoleBinding" | "ClusterRoleBinding")
            )
        })
        .filter(|b| bound(b))
    {
        let role = &binding["roleRef"];
        let found = objects
            .iter()
            .find(|o| o["kind"] == role["kind"] && o["metadata"]["name"] == role["name"])
            .unwrap_or_else(|| panic!("binding refers to a role not in deploy/: {role}"));
        for rule in found["rules"].as_array().cloned().unwrap_or_default() {
            rules.push(serde_json::from_value(rule).expect("a PolicyRule"));
        }
    }
    rules
}

/// (verb, API group, resource or `resource/subresource`).
type Permission = (String, String, String);

/// (verb, group, resource) a rule grants, with `resource` as `resource/subresource` where given.
fn permissions(rules: &[PolicyRule]) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for rule in rules {
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    out.insert((verb.clone(), group.clone(), resource.clone()));
                }
            }
        }
    }
    out
}

/// (verb, group, resource) of every call `user` made to `cluster`, and the calls refused.
fn used(
    sim: &cafe_sim::sim::Sim,
    cluster: &str,
    user: &str,
) -> (BTreeSet<(String, String, String)>, Vec<String>) {
    let calls = sim.cluster(cluster).expect("cluster").calls();
    let mut seen = BTreeSet::new();
    let mut refused = vec![];
    for c in calls.iter().filter(|c| c.user == user) {
        let resource = if c.subresource.is_empty() {
            c.resource.clone()
        } else {
            format!("{}/{}", c.resource, c.subresource)
        };
        if c.code == 403 {
            refused.push(format!(
                "{} {}/{} {}/{}",
                c.verb, c.api_group, resource, c.namespace, c.name
            ));
        }
        seen.insert((c.verb.clone(), c.api_group.clone(), resource));
    }
    (seen, refused)
}

fn deployment(namespace: &str) -> CafeDeployment {
    serde_json::from_value(json!({
        "apiVersion": "apps.cafe.io/v1alpha1",
        "kind": "CafeDeployment",
        "metadata": {"name": "web", "namespace": namespace},
        "spec": {
            "replicas": 4,
            "historyLimit": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "topology": {"unitType": "DataCenter", "values": ["DCA", "DCB"]},
            "strategy": {"maxUnavailablePerUnit": 1},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "app", "image": "nginx:1.27",
                    "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]},
            },
        },
    }))
    .expect("a CafeDeployment")
}

async fn set_image(cds: &Api<CafeDeployment>, image: &str) {
    cds.patch(
        "web",
        &PatchParams::default(),
        &Patch::Json::<()>(
            serde_json::from_value(json!([
                {"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": image}
            ]))
            .expect("patch"),
        ),
    )
    .await
    .expect("image changed");
}

/// Whether a granted permission can be seen used in this scenario (see [`NOT_REACHED`]). The
/// `update` on `<owner>/finalizers` and the `delete` that OwnerReferencesPermissionEnforcement
/// asks of an object with owner references are in the call record like any request.
fn observable(permission: &(String, String, String)) -> bool {
    !NOT_REACHED.contains(&permission_str(permission).as_str())
}

/// Granted for code paths this scenario does not reach, each named with the path:
/// - the member agent reads a ControllerRevision left by an earlier InPlaceSet of the same name
///   (`member::revisions::ensure`, on a 409) before it replaces it;
/// - an exact repeat of one of the agent's Events is counted on the Event (`runtime::events`).
const NOT_REACHED: [&str; 2] = ["get apps/controllerrevisions", "patch /events"];

fn permission_str((verb, group, resource): &(String, String, String)) -> String {
    format!("{verb} {group}/{resource}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn installed_from_deploy_the_controllers_need_no_more_than_they_are_granted() {
    let logs = Logs::default();
    let writer = logs.clone();
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_env_filter("debug")
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish(),
    )
    .expect("the only subscriber of this test binary");

    let sim = start_sim(TWO_MEMBERS).await;
    let dir = std::env::temp_dir().join(format!("cafe-production-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, sim.kubeconfig(Some("hub"))).expect("kubeconfig written");
    let cache = dir.join("cache");

    // Installed exactly as the README says.
    for (context, base) in [
        ("hub", "deploy/hub"),
        ("dca", "deploy/member"),
        ("dcb", "deploy/member"),
    ] {
        let (ok, out) = kubectl(
            &kubeconfig,
            &cache,
            &["--context", context, "apply", "-k", base],
        );
        assert!(ok, "kubectl apply -k {base} in {context}: {out}");
    }
    let hub_objects = rendered(&kubeconfig, &cache, "deploy/hub");
    let member_objects = rendered(&kubeconfig, &cache, "deploy/member");

    let admin_hub = common::client(&sim, "hub").await;
    let hub_token = service_account_token(&admin_hub, "cafe-hub").await;
    let mut tokens = vec![hub_token.clone()];
    let hub = client_with_token(&sim, "hub", &hub_token).await;

    // Registered the default way: the operator's (admin) member credentials set up the hub's
    // own identity there; only its token reaches the hub.
    for (name, unit) in [("dca", "DCA"), ("dcb", "DCB")] {
        cluster::register(
            &admin_hub,
            name,
            &sim.kubeconfig(Some(name)),
            Some(name),
            &[("DataCenter".into(), unit.into())],
            Credentials::Dedicated,
        )
        .await
        .unwrap_or_else(|e| panic!("registering {name}: {e}"));
    }

    let stop = CancellationToken::new();
    let mut tasks = vec![];
    for name in ["dca", "dcb"] {
        let admin = common::client(&sim, name).await;
        let token = service_account_token(&admin, "cafe-member").await;
        tokens.push(token.clone());
        let client = client_with_token(&sim, name, &token).await;
        tasks.push(tokio::spawn(cafe::member::run(client, stop.clone())));
    }
    let options = cafe::hub::HubOptions {
        probe_interval: Duration::from_millis(200),
        ..cafe::hub::HubOptions::fast()
    };
    let hub_task = tokio::spawn(cafe::hub::run_with(hub.clone(), options, stop.clone()));

    // Create in a namespace the members do not have yet, roll out, scale in.
    let cds: Api<CafeDeployment> = Api::namespaced(admin_hub.clone(), "shop");
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(admin_hub.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "shop"}})).expect("namespace"),
        )
        .await
        .expect("namespace shop");
    cds.create(&PostParams::default(), &deployment("shop"))
        .await
        .expect("created");
    let ready = |replicas: i32, image: &'static str| {
        let cds = cds.clone();
        move || {
            let cds = cds.clone();
            async move {
                let cd = cds.get("web").await.ok()?;
                let s = cd.status?;
                // The status must be of this template, not the previous one's.
                let hash = cafe::plan::revision::revision_hash(&cd.spec.template);
                let current = cd.spec.template.spec.as_ref()?.containers[0]
                    .image
                    .as_deref()
                    == Some(image)
                    && s.observed_generation == cd.metadata.generation
                    && s.update_revision.as_deref() == Some(hash.as_str());
                (current
                    && s.ready_replicas == replicas
                    && s.updated_replicas == replicas
                    && s.replicas == replicas)
                    .then_some(())
            }
        }
    };
    wait_for("4 replicas ready", WAIT, ready(4, "nginx:1.27")).await;
    set_image(&cds, "nginx:1.28").await;
    wait_for("rolled out to nginx:1.28", WAIT, ready(4, "nginx:1.28")).await;
    // Back to an earlier template (its revision is renumbered), then a third one (the oldest
    // older revision beyond historyLimit is deleted).
    for image in ["nginx:1.27", "nginx:1.29", "nginx:1.28"] {
        set_image(&cds, image).await;
        wait_for(&format!("rolled out to {image}"), WAIT, ready(4, image)).await;
    }
    // A CPU change is made in place through pods/resize.
    cds.patch(
        "web",
        &PatchParams::default(),
        &Patch::Json::<()>(
            serde_json::from_value(json!([{"op": "replace",
                "path": "/spec/template/spec/containers/0/resources/requests/cpu", "value": "200m"}]))
            .expect("patch"),
        ),
    )
    .await
    .expect("cpu changed");
    wait_for("resized to 200m", WAIT, || {
        let cds = cds.clone();
        async move {
            let cd = cds.get("web").await.ok()?;
            let s = cd.status?;
            (s.updated_replicas == 4
                && s.ready_replicas == 4
                && s.replicas == 4
                && s.observed_generation == cd.metadata.generation
                && s.update_revision
                    == Some(cafe::plan::revision::revision_hash(&cd.spec.template)))
            .then_some(())
        }
    })
    .await;
    cds.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 2}})),
    )
    .await
    .expect("scaled");
    wait_for("scaled to 2", WAIT, ready(2, "nginx:1.28")).await;
    // Each agent publishes the room the scale-in freed (its ConfigMap replaced): one pod left
    // in each member.
    for name in ["dca", "dcb"] {
        let configmaps: Api<k8s_openapi::api::core::v1::ConfigMap> =
            Api::namespaced(common::client(&sim, name).await, "cafe-system");
        wait_for(
            &format!("{name}'s room summary shows one pod"),
            WAIT,
            || {
                let configmaps = configmaps.clone();
                async move {
                    let cm = configmaps
                        .get(cafe::api::labels::ROOM_CONFIGMAP)
                        .await
                        .ok()?;
                    let room = cafe::hub::probe::summary_of(&cm)?;
                    (room.requested.pods == 1).then_some(())
                }
            },
        )
        .await;
    }

    // The hub renews its member token once most of its lifetime has passed: make it look old.
    let secrets: Api<Secret> = Api::namespaced(admin_hub.clone(), "cafe-system");
    let token_of = |s: &Secret| -> String {
        let yaml =
            String::from_utf8_lossy(&s.data.as_ref().expect("data")["kubeconfig"].0).to_string();
        let k = Kubeconfig::from_yaml(&yaml).expect("stored kubeconfig");
        serde_json::to_value(&k.auth_infos[0]).expect("json")["user"]["token"]
            .as_str()
            .expect("a token, not the operator's credentials")
            .to_string()
    };
    for name in ["dca", "dcb"] {
        let secret = secrets
            .get(&format!("{name}-kubeconfig"))
            .await
            .expect("kubeconfig Secret");
        tokens.push(token_of(&secret));
    }
    let before = secrets.get("dca-kubeconfig").await.expect("Secret");
    secrets
        .patch(
            "dca-kubeconfig",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {
                access::TOKEN_ISSUED_AT: "2020-01-01T00:00:00Z",
                access::TOKEN_EXPIRES_AT: "2021-01-01T00:00:00Z",
            }}})),
        )
        .await
        .expect("aged");
    let renewed = wait_for("the hub renews its dca token", WAIT, || {
        let secrets = secrets.clone();
        let old = token_of(&before);
        async move {
            let s = secrets.get("dca-kubeconfig").await.ok()?;
            let t = token_of(&s);
            (t != old).then_some(t)
        }
    })
    .await;
    tokens.push(renewed);
    // And keeps working with it.
    cds.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 4}})),
    )
    .await
    .expect("scaled");
    wait_for(
        "scaled to 4 with the renewed token",
        WAIT,
        ready(4, "nginx:1.28"),
    )
    .await;

    // Deleted: the finalizer removes the InPlaceSets from the members.
    cds.delete("web", &DeleteParams::default())
        .await
        .expect("deleted");
    wait_for("the CafeDeployment is gone", WAIT, || {
        let cds = cds.clone();
        async move { cds.get_opt("web").await.ok()?.is_none().then_some(()) }
    })
    .await;
    for name in ["dca", "dcb"] {
        let sets: Api<InPlaceSet> = Api::all(common::client(&sim, name).await);
        assert!(
            sets.list(&Default::default())
                .await
                .expect("listed")
                .items
                .is_empty(),
            "{name} keeps InPlaceSets"
        );
    }

    // The hub's identity in a member is what `kubectl auth can-i` says it is.
    let (_, answer) = kubectl(
        &kubeconfig,
        &cache,
        &[
            "--context",
            "dca",
            "auth",
            "can-i",
            "create",
            "pods",
            &format!("--as={HUB_USER}"),
        ],
    );
    assert_eq!(answer.trim(), "no", "the hub may create pods in dca");

    // Removing a member removes the identity registration made there.
    let removal = cluster::remove(&admin_hub, "dcb", true)
        .await
        .expect("removed");
    assert_eq!(removal.identity, Some(Ok(())), "{removal:?}");
    let admin_dcb = common::client(&sim, "dcb").await;
    wait_for("the hub's ServiceAccount is gone from dcb", WAIT, || {
        let api: Api<ServiceAccount> = Api::namespaced(admin_dcb.clone(), "cafe-system");
        async move { api.get_opt("cafe-hub").await.ok()?.is_none().then_some(()) }
    })
    .await;

    stop.cancel();
    let _ = tokio::time::timeout(WAIT, hub_task).await;
    for t in tasks {
        let _ = tokio::time::timeout(WAIT, t).await;
    }

    // No call was refused, and nothing is granted that was not used.
    let checks: [(&str, &str, BTreeSet<Permission>); 4] = [
        (
            "hub",
            HUB_USER,
            permissions(&granted_rules(&hub_objects, "cafe-hub")),
        ),
        (
            "dca",
            MEMBER_USER,
            permissions(&granted_rules(&member_objects, "cafe-member")),
        ),
        (
            "dcb",
            MEMBER_USER,
            permissions(&granted_rules(&member_objects, "cafe-member")),
        ),
        (
            "dca",
            HUB_USER,
            permissions(
                &access::cluster_rules()
                    .into_iter()
                    .chain(access::namespace_rules())
                    .collect::<Vec<_>>(),
            ),
        ),
    ];
    let mut report = BTreeMap::new();
    for (cluster, user, granted) in checks {
        let (mut seen, refused) = used(&sim, cluster, user);
        if cluster == "dca" && user == HUB_USER {
            // Removal (the identity deleting itself) happened in dcb.
            seen.extend(used(&sim, "dcb", user).0);
        }
        assert!(
            refused.is_empty(),
            "{user} was refused in {cluster}: {refused:#?}"
        );
        let unused: Vec<_> = granted
            .difference(&seen)
            .filter(|p| observable(p))
            .collect();
        report.insert(format!("{user} in {cluster}"), seen.clone());
        assert!(
            unused.is_empty(),
            "{user} in {cluster} is granted more than it was seen to use: {unused:?}\nused: {seen:#?}"
        );
    }
    for (who, seen) in &report {
        eprintln!("{who} used:");
        for (verb, group, resource) in seen {
            eprintln!("  {verb} {group}/{resource}");
        }
    }

    // No credential ever reached a log line, a status or an Event.
    let text = logs.text();
    assert!(!text.is_empty(), "the controllers logged nothing");
    for token in &tokens {
        assert!(!text.contains(token.as_str()), "a token was logged");
    }
    let statuses = serde_json::to_string(
        &Api::<cafe::api::MemberCluster>::all(admin_hub.clone())
            .list(&Default::default())
            .await
            .expect("listed")
            .items,
    )
    .expect("json");
    let events = serde_json::to_string(
        &Api::<k8s_openapi::api::core::v1::Event>::all(admin_hub.clone())
            .list(&Default::default())
            .await
            .expect("listed")
            .items,
    )
    .expect("json");
    for token in &tokens {
        assert!(!statuses.contains(token.as_str()), "a token in a status");
        assert!(!events.contains(token.as_str()), "a token in an Event");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
