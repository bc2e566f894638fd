//! `cafe cluster register|list|remove` against simulated clusters: what registration writes on
//! the hub, that a failed registration writes nothing, and the command line as documented.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use cafe::api::MemberCluster;
use cafe::cli::cluster::{self, ClusterError, Credentials};
// Registration creates cafe-system on the hub: these clusters start without it.
use common::{TWO_MEMBERS, client, install_crds, start_bare_sim as start_sim};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::Api;
use kube::config::Kubeconfig;

fn dca_unit() -> Vec<(String, String)> {
    vec![("DataCenter".into(), "DCA".into())]
}

async fn secret(hub: &kube::Client, name: &str) -> Option<Secret> {
    Api::<Secret>::namespaced(hub.clone(), "cafe-system")
        .get_opt(name)
        .await
        .unwrap()
}

async fn member(hub: &kube::Client, name: &str) -> Option<MemberCluster> {
    Api::<MemberCluster>::all(hub.clone())
        .get_opt(name)
        .await
        .unwrap()
}

/// Nothing a registration writes exists on the hub: no MemberCluster, no Secret, not even the
/// namespace.
async fn assert_nothing_written(hub: &kube::Client) {
    let members = Api::<MemberCluster>::all(hub.clone())
        .list(&Default::default())
        .await
        .unwrap();
    assert!(members.items.is_empty(), "no MemberCluster written");
    let ns = Api::<Namespace>::all(hub.clone())
        .get_opt("cafe-system")
        .await
        .unwrap();
    assert!(ns.is_none(), "namespace cafe-system not created");
}

fn stored_kubeconfig(s: &Secret) -> String {
    let data = s.data.as_ref().expect("secret data");
    String::from_utf8(data["kubeconfig"].0.clone()).expect("utf-8 kubeconfig")
}

#[tokio::test]
async fn register_writes_the_kubeconfig_secret_and_a_labelled_membercluster() {
    let sim = start_sim(TWO_MEMBERS).await;
    let hub = client(&sim, "hub").await;
    install_crds(&hub).await;

    // The sim's kubeconfig has every cluster in it; only dca's context must be stored.
    let all = sim.kubeconfig(Some("hub"));
    cluster::register(
        &hub,
        "dca",
        &all,
        Some("dca"),
        &dca_unit(),
        Credentials::Kubeconfig,
    )
    .await
    .expect("registered");

    let s = secret(&hub, "dca-kubeconfig")
        .await
        .expect("Secret written");
    let text = stored_kubeconfig(&s);
    let stored = Kubeconfig::from_yaml(&text).unwrap();
    assert_eq!(stored.current_context.as_deref(), Some("dca"));
    assert_eq!(stored.contexts.len(), 1, "only the chosen context: {text}");
    assert_eq!(stored.clusters.len(), 1);
    assert!(
        stored.clusters[0]
            .cluster
            .as_ref()
            .unwrap()
            .certificate_authority_data
            .is_some(),
        "CA inline"
    );
    // What the hub will do with it: a client that reaches dca.
    let from_secret = cafe::runtime::kubeconfig::client_from_yaml(&text, None, "secret")
        .await
        .unwrap();
    from_secret.apiserver_version().await.expect("dca answers");

    let m = member(&hub, "dca").await.expect("MemberCluster written");
    let labels = m.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels
            .get("unit.apps.cafe.io/DataCenter")
            .map(String::as_str),
        Some("DCA")
    );
    let r = &m.spec.kubeconfig_secret_ref;
    assert_eq!(
        (r.namespace.as_str(), r.name.as_str(), r.key.as_str()),
        ("cafe-system", "dca-kubeconfig", "kubeconfig")
    );

    // Registering again updates: the new unit replaces the old one.
    cluster::register(
        &hub,
        "dca",
        &all,
        Some("dca"),
        &[("Zone".into(), "Z1".into())],
        Credentials::Kubeconfig,
    )
    .await
    .expect("re-registered");
    let labels = member(&hub, "dca")
        .await
        .unwrap()
        .metadata
        .labels
        .unwrap_or_default();
    assert_eq!(
        labels.get("unit.apps.cafe.io/Zone").map(String::as_str),
        Some("Z1")
    );
    assert!(
        !labels.contains_key("unit.apps.cafe.io/DataCenter"),
        "{labels:?}"
    );
}

#[tokio::test]
async fn register_refuses_an_unreachable_member_and_writes_nothing() {
    let sim = start_sim(TWO_MEMBERS).await;
    let hub = client(&sim, "hub").await;
    install_crds(&hub).await;
    sim.cluster("dca")
        .unwrap()
        .faults
        .outage(Duration::from_secs(60));
    let err = cluster::register(
        &hub,
        "dca",
        &sim.kubeconfig(Some("dca")),
        Some("dca"),
        &dca_unit(),
        Credentials::Kubeconfig,
    )
    .await
    .expect_err("unreachable member refused");
    assert!(matches!(err, ClusterError::Unreachable { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("dca") && text.contains("127.0.0.1") && !text.contains('\n'),
        "{text}"
    );
    assert_nothing_written(&hub).await;
}

#[tokio::test]
async fn register_refuses_bad_kubeconfigs_and_writes_nothing() {
    let sim = start_sim(TWO_MEMBERS).await;
    let hub = client(&sim, "hub").await;
    install_crds(&hub).await;
    let good = sim.kubeconfig(Some("dca"));
    let token = &sim.cluster("dca").unwrap().identity.token;

    let err = cluster::register(
        &hub,
        "dca",
        "clusters: [: nope",
        None,
        &dca_unit(),
        Credentials::Kubeconfig,
    )
    .await
    .expect_err("not YAML");
    assert!(
        matches!(err, ClusterError::InvalidKubeconfig { .. }),
        "{err}"
    );

    let err = cluster::register(
        &hub,
        "dca",
        &good,
        Some("dcz"),
        &dca_unit(),
        Credentials::Kubeconfig,
    )
    .await
    .expect_err("unknown context");
    let text = err.to_string();
    assert!(
        text.contains("\"dcz\"") && text.contains("dca") && text.contains("--context"),
        "{text}"
    );

    let wrong_token = good.replace(token.as_str(), "not-the-token");
    let err = cluster::register(
        &hub,
        "dca",
        &wrong_token,
        Some("dca"),
        &dca_unit(),
        Credentials::Kubeconfig,
    )
    .await
    .expect_err("bad credentials");
    assert!(matches!(err, ClusterError::Unauthorized { .. }), "{err}");

    let err = cluster::register(
        &hub,
        "DCA!",
        &good,
        Some("dca"),
        &dca_unit(),
        Credentials::Kubeconfig,
    )
    .await
    .expect_err("bad name");
    assert!(matches!(err, ClusterError::Name(_)), "{err}");

    let err = cluster::register(
        &hub,
        "dca",
        &good,
        Some("dca"),
        &[],
        Credentials::Kubeconfig,
    )
    .await
    .expect_err("no units");
    assert!(matches!(err, ClusterError::NoUnits), "{err}");

    assert_nothing_written(&hub).await;
}

#[tokio::test]
async fn register_refuses_a_hub_without_the_crds() {
    let sim = start_sim(TWO_MEMBERS).await;
    let hub = client(&sim, "hub").await;
    let err = cluster::register(
        &hub,
        "dca",
        &sim.kubeconfig(Some("dca")),
        Some("dca"),
        &dca_unit(),
        Credentials::Kubeconfig,
    )
    .await
    .expect_err("no CRD");
    assert!(matches!(err, ClusterError::NoCrd), "{err}");
    assert!(
        secret(&hub, "dca-kubeconfig").await.is_none(),
        "no Secret written"
    );
}

#[tokio::test]
async fn list_shows_registered_members_and_remove_deletes_membercluster_and_secret() {
    let sim = start_sim(TWO_MEMBERS).await;
    let hub = client(&sim, "hub").await;
    install_crds(&hub).await;
    let all = sim.kubeconfig(None);
    cluster::register(
        &hub,
        "dca",
        &all,
        Some("dca"),
        &dca_unit(),
        Credentials::Kubeconfig,
    )
    .await
    .unwrap();
    cluster::register(
        &hub,
        "dcb",
        &all,
        Some("dcb"),
        &[("DataCenter".into(), "DCB".into())],
        Credentials::Kubeconfig,
    )
    .await
    .unwrap();

    let members = cluster::list(&hub).await.unwrap();
    let names: Vec<_> = members
        .iter()
        .map(|m| m.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["dca", "dcb"]);
    let table = cluster::render_list(&members);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        table.contains("DataCenter=DCA") && table.contains("DataCenter=DCB"),
        "{table}"
    );

    cluster::remove(&hub, "dca", false).await.expect("removed");
    assert!(member(&hub, "dca").await.is_none(), "MemberCluster deleted");
    assert!(
        secret(&hub, "dca-kubeconfig").await.is_none(),
        "Secret deleted"
    );
    assert!(member(&hub, "dcb").await.is_some(), "dcb untouched");
    assert!(secret(&hub, "dcb-kubeconfig").await.is_some());

    let err = cluster::remove(&hub, "dca", false)
        .await
        .expect_err("already gone");
    assert!(
        err.to_string().contains("cafe cluster list"),
        "says how to see what exists: {err}"
    );
}

#[test]
fn example_kubeconfigs_hold_one_registrable_context_each() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("kubeconfigs.example");
    for (file, context) in [
        ("hub.yaml", "hub"),
        ("dca.yaml", "dca"),
        ("dcb.yaml", "dcb"),
    ] {
        let kubeconfig = Kubeconfig::read_from(dir.join(file))
            .unwrap_or_else(|e| panic!("{file} parses as a kubeconfig: {e}"));
        assert_eq!(
            kubeconfig.current_context.as_deref(),
            Some(context),
            "{file}"
        );
        let flat = cluster::flatten(kubeconfig, None)
            .unwrap_or_else(|e| panic!("{file} is accepted by registration: {e}"));
        assert_eq!(flat.contexts[0].name, context);
    }
}

// The command line, as an operator types it.

struct Files {
    dir: PathBuf,
    hub: PathBuf,
    members: PathBuf,
}

fn files(sim: &cafe_sim::sim::Sim, tag: &str) -> Files {
    let dir = std::env::temp_dir().join(format!("cafe-cli-cluster-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let hub = dir.join("hub.yaml");
    std::fs::write(&hub, sim.kubeconfig(Some("hub"))).unwrap();
    // One file with every cluster, current context dcb: --context picks the member.
    let members = dir.join("members.yaml");
    std::fs::write(&members, sim.kubeconfig(Some("dcb"))).unwrap();
    Files { dir, hub, members }
}

async fn cafe(args: &[&str], kubeconfig_env: Option<&Path>) -> (bool, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_cafe"));
    cmd.args(args)
        .env_remove("KUBECONFIG")
        .env("RUST_LOG", "error");
    if let Some(path) = kubeconfig_env {
        cmd.env("KUBECONFIG", path);
    }
    let out = cmd.output().await.expect("cafe runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test]
async fn cli_register_list_and_remove_as_documented() {
    let sim = start_sim(TWO_MEMBERS).await;
    let hub = client(&sim, "hub").await;
    install_crds(&hub).await;
    let f = files(&sim, "ok");
    let members = f.members.to_str().unwrap();
    let hub_file = f.hub.to_str().unwrap();

    // The member through --kubeconfig/--context; the hub through $KUBECONFIG.
    let (ok, stdout, stderr) = cafe(
        &[
            "cluster",
            "register",
            "dca",
            "--kubeconfig",
            members,
            "--context",
            "dca",
            "--unit",
            "DataCenter=DCA",
        ],
        Some(&f.hub),
    )
    .await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains("dca"), "{stdout}");

    // The hub through --hub-kubeconfig/--hub-context.
    let (ok, _, stderr) = cafe(
        &[
            "cluster",
            "register",
            "dcb",
            "--kubeconfig",
            members,
            "--unit",
            "DataCenter=DCB",
            "--hub-kubeconfig",
            hub_file,
            "--hub-context",
            "hub",
        ],
        None,
    )
    .await;
    assert!(ok, "{stderr}");
    let dcb = member(&hub, "dcb").await.expect("dcb registered");
    assert_eq!(
        dcb.metadata.labels.unwrap()["unit.apps.cafe.io/DataCenter"],
        "DCB"
    );

    let (ok, stdout, stderr) = cafe(&["cluster", "list", "--kubeconfig", hub_file], None).await;
    assert!(ok, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("MEMORY"),
        "{stdout}"
    );
    assert!(
        lines[1].starts_with("dca") && lines[1].contains("DataCenter=DCA"),
        "{stdout}"
    );
    assert!(
        lines[2].starts_with("dcb") && lines[2].contains("DataCenter=DCB"),
        "{stdout}"
    );

    let (ok, _, stderr) = cafe(
        &["cluster", "remove", "dcb", "--hub-kubeconfig", hub_file],
        None,
    )
    .await;
    assert!(ok, "{stderr}");
    assert!(member(&hub, "dcb").await.is_none());
    assert!(secret(&hub, "dcb-kubeconfig").await.is_none());

    let (ok, _, stderr) = cafe(&["cluster", "remove", "dcb"], Some(&f.hub)).await;
    assert!(!ok);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    let _ = std::fs::remove_dir_all(&f.dir);
}

#[tokio::test]
async fn cli_register_errors_are_one_line_and_write_nothing() {
    let sim = start_sim(TWO_MEMBERS).await;
    let hub = client(&sim, "hub").await;
    install_crds(&hub).await;
    let f = files(&sim, "bad");
    let members = f.members.to_str().unwrap();
    let missing = f.dir.join("missing.yaml");
    let garbage = f.dir.join("garbage.yaml");
    std::fs::write(&garbage, "this: [is not a kubeconfig").unwrap();
    sim.cluster("dca")
        .unwrap()
        .faults
        .outage(Duration::from_secs(60));

    for (args, named) in [
        (
            vec![
                "--kubeconfig",
                members,
                "--context",
                "dcb",
                "--unit",
                "DataCenter",
            ],
            "TYPE=VALUE",
        ),
        (
            vec![
                "--kubeconfig",
                members,
                "--context",
                "dcb",
                "--unit",
                "Data Center=DCB",
            ],
            "TYPE=VALUE",
        ),
        (
            vec![
                "--kubeconfig",
                members,
                "--context",
                "nope",
                "--unit",
                "DataCenter=DCB",
            ],
            "\"nope\"",
        ),
        (
            vec![
                "--kubeconfig",
                missing.to_str().unwrap(),
                "--unit",
                "DataCenter=DCB",
            ],
            "missing.yaml",
        ),
        (
            vec![
                "--kubeconfig",
                garbage.to_str().unwrap(),
                "--unit",
                "DataCenter=DCB",
            ],
            "garbage.yaml",
        ),
        // dca is down.
        (
            vec![
                "--kubeconfig",
                members,
                "--context",
                "dca",
                "--unit",
                "DataCenter=DCA",
            ],
            "did not answer",
        ),
    ] {
        let mut full = vec!["cluster", "register", "dcx"];
        full.extend(args.iter().copied());
        let (ok, _, stderr) = cafe(&full, Some(&f.hub)).await;
        assert!(!ok, "{args:?} must fail");
        assert!(
            stderr.contains(named),
            "{args:?}: {named} not named in {stderr}"
        );
        assert!(
            stderr.contains("dcx"),
            "{args:?}: the member not named in {stderr}"
        );
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "{args:?}: one line: {stderr}"
        );
    }
    assert_nothing_written(&hub).await;
    let _ = std::fs::remove_dir_all(&f.dir);
}

/// The demo CafeDeployment on the hub (units DCA and DCB) and, in dcb, the InPlaceSet the hub
/// would have made for it.
async fn demo_placed_on_dcb(sim: &cafe_sim::sim::Sim, hub: &kube::Client) {
    let demo: cafe::api::CafeDeployment =
        serde_json::from_value(cafe::cli::dev::demo_object().unwrap()).unwrap();
    Api::<cafe::api::CafeDeployment>::namespaced(hub.clone(), "default")
        .create(&Default::default(), &demo)
        .await
        .unwrap();
    let dcb = client(sim, "dcb").await;
    install_crds(&dcb).await;
    let set: cafe::api::InPlaceSet = serde_json::from_value(serde_json::json!({
        "apiVersion": "apps.cafe.io/v1alpha1", "kind": "InPlaceSet",
        "metadata": {"name": "demo", "namespace": "default",
                     "labels": {"apps.cafe.io/cafedeployment": "demo",
                                "apps.cafe.io/cafedeployment-namespace": "default"}},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "demo"}},
                 "template": {"metadata": {"labels": {"app": "demo"}},
                              "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}},
    }))
    .unwrap();
    Api::<cafe::api::InPlaceSet>::namespaced(dcb, "default")
        .create(&Default::default(), &set)
        .await
        .unwrap();
}

#[tokio::test]
async fn cluster_remove_refuses_a_member_in_use() {
    let sim = start_sim(TWO_MEMBERS).await;
    let hub = client(&sim, "hub").await;
    install_crds(&hub).await;
    let f = files(&sim, "inuse");
    let all = sim.kubeconfig(None);
    for (name, unit) in [("dca", "DCA"), ("dcb", "DCB")] {
        cluster::register(
            &hub,
            name,
            &all,
            Some(name),
            &[("DataCenter".into(), unit.into())],
            Credentials::Kubeconfig,
        )
        .await
        .unwrap();
    }
    demo_placed_on_dcb(&sim, &hub).await;

    let (ok, stdout, stderr) = cafe(&["cluster", "remove", "dcb"], Some(&f.hub)).await;
    assert!(!ok, "refused; stdout: {stdout}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("member cluster dcb is in use") && stderr.contains("default/demo"),
        "{stderr}"
    );
    assert!(member(&hub, "dcb").await.is_some(), "MemberCluster kept");
    assert!(
        secret(&hub, "dcb-kubeconfig").await.is_some(),
        "Secret kept"
    );

    let (ok, stdout, stderr) = cafe(&["cluster", "remove", "dcb", "--force"], Some(&f.hub)).await;
    assert!(ok, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "member cluster dcb removed", "{stdout}");
    assert!(
        stdout.contains("left behind in dcb") && stdout.contains("InPlaceSets default/demo"),
        "{stdout}"
    );
    assert!(member(&hub, "dcb").await.is_none(), "MemberCluster deleted");
    assert!(
        secret(&hub, "dcb-kubeconfig").await.is_none(),
        "Secret deleted"
    );
    let _ = std::fs::remove_dir_all(&f.dir);
}
