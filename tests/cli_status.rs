//! `cafe status` against a hub where the test writes a CafeDeployment and its status itself (no
//! controllers): the one-object view, the list, JSON, a missing object, and `-w` redrawing.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

use cafe::api::CafeDeployment;
use cafe::cli::status::{self, Output, StatusError, Target};
use common::{client, install_crds, start_sim};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const HUB_AND_MEMBER: &str = r#"
clusters:
  - name: hub
    role: hub
  - name: dca
    role: member
    units: {DataCenter: DCA}
"#;

fn demo_status(ready_dcb: i32) -> Value {
    json!({
        "observedGeneration": 1,
        "replicas": 6, "readyReplicas": 3 + ready_dcb, "availableReplicas": 3 + ready_dcb,
        "updatedReplicas": 6, "updatedReadyReplicas": 3 + ready_dcb,
        "rollout": {"phase": "Progressing", "currentBatch": 1, "totalBatches": 2, "message": "creating pods"},
        "units": [
            {"name": "DCA", "cluster": "dca", "desiredReplicas": 3, "replicas": 3, "readyReplicas": 3,
             "availableReplicas": 3, "updatedReplicas": 3, "reachable": true},
            {"name": "DCB", "cluster": "dcb", "desiredReplicas": 3, "replicas": 3, "readyReplicas": ready_dcb,
             "availableReplicas": ready_dcb, "updatedReplicas": 3, "unschedulableReplicas": 3 - ready_dcb,
             "reachable": true},
        ],
        "conditions": [
            {"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable",
             "message": "DCB has 3 unschedulable replicas", "lastTransitionTime": "2025-01-01T00:00:00Z"},
        ],
    })
}

/// The demo manifest, created on the hub, with a status written through the status subresource.
async fn create_demo(hub: &kube::Client, status: Value) -> Api<CafeDeployment> {
    let api: Api<CafeDeployment> = Api::namespaced(hub.clone(), "default");
    let demo: CafeDeployment =
        serde_json::from_value(cafe::cli::dev::demo_object().unwrap()).unwrap();
    api.create(&PostParams::default(), &demo).await.unwrap();
    set_status(&api, status).await;
    api
}

async fn set_status(api: &Api<CafeDeployment>, status: Value) {
    api.patch_status(
        "demo",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": status})),
    )
    .await
    .unwrap();
}

fn one(name: &str) -> Target {
    Target::One {
        namespace: "default".into(),
        name: name.into(),
    }
}

#[tokio::test]
async fn status_shows_totals_units_rollout_and_failing_conditions() {
    let sim = start_sim(HUB_AND_MEMBER).await;
    let hub = client(&sim, "hub").await;
    install_crds(&hub).await;
    create_demo(&hub, demo_status(1)).await;

    let text = status::snapshot(&hub, &one("demo"), Output::Table)
        .await
        .unwrap();
    assert!(
        text.contains("Replicas:    6 desired, 4 ready, 6 updated, 4 available"),
        "{text}"
    );
    let row = |unit: &str| {
        text.lines()
            .find(|l| l.starts_with(unit))
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .unwrap_or_else(|| panic!("no row for {unit}:\n{text}"))
    };
    assert_eq!(row("DCA"), ["DCA", "dca", "3", "3", "3", "3", "0", "yes"]);
    assert_eq!(row("DCB"), ["DCB", "dcb", "3", "1", "3", "1", "2", "yes"]);
    assert!(
        text.contains("Rollout:     Progressing, batch 1/2: creating pods"),
        "{text}"
    );
    assert!(
        text.contains("Available=False MinimumReplicasUnavailable"),
        "{text}"
    );

    let json: Value = serde_json::from_str(
        &status::snapshot(&hub, &one("demo"), Output::Json)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(json["readyReplicas"], 4);
    assert_eq!(json["units"][1]["unschedulableReplicas"], 2);

    let list = status::snapshot(&hub, &Target::Namespace("default".into()), Output::Table)
        .await
        .unwrap();
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 2, "{list}");
    assert!(lines[0].starts_with("NAME"), "{list}");
    assert_eq!(
        lines[1].split_whitespace().take(7).collect::<Vec<_>>(),
        ["demo", "6", "4", "6", "4", "DCA:3/3,DCB:1/3", "Progressing"]
    );
    let all = status::snapshot(&hub, &Target::AllNamespaces, Output::Table)
        .await
        .unwrap();
    assert!(all.starts_with("NAMESPACE"), "{all}");
    assert!(
        all.lines()
            .any(|l| l.split_whitespace().take(2).eq(["default", "demo"])),
        "{all}"
    );
    let empty = status::snapshot(&hub, &Target::Namespace("other".into()), Output::Table)
        .await
        .unwrap();
    assert!(
        empty.contains("No CafeDeployments in namespace other"),
        "{empty}"
    );
}

#[tokio::test]
async fn status_of_a_missing_cafedeployment_or_a_hub_without_crds_is_an_error() {
    let sim = start_sim(HUB_AND_MEMBER).await;
    let hub = client(&sim, "hub").await;
    install_crds(&hub).await;
    let err = status::snapshot(&hub, &one("nope"), Output::Table)
        .await
        .expect_err("missing");
    assert!(matches!(err, StatusError::NotFound { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("\"nope\"") && text.contains("\"default\"") && !text.contains('\n'),
        "{text}"
    );

    // A member is no hub: the CRD is missing, and the error says where to point instead.
    let dca = client(&sim, "dca").await;
    let err = status::snapshot(&dca, &one("demo"), Output::Table)
        .await
        .expect_err("no CRD");
    assert!(matches!(err, StatusError::NoCrd), "{err}");
}

// The command line.

fn write_hub_kubeconfig(sim: &cafe_sim::sim::Sim, tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cafe-cli-status-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("kubeconfig");
    std::fs::write(&path, sim.kubeconfig(Some("hub"))).unwrap();
    path
}

fn cafe() -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_cafe"));
    cmd.env_remove("KUBECONFIG").env("RUST_LOG", "error");
    cmd
}

#[tokio::test]
async fn cli_status_prints_the_view_and_names_a_missing_cafedeployment() {
    let sim = start_sim(HUB_AND_MEMBER).await;
    let hub = client(&sim, "hub").await;
    install_crds(&hub).await;
    create_demo(&hub, demo_status(3)).await;
    let kubeconfig = write_hub_kubeconfig(&sim, "cli");

    let out = cafe()
        .arg("status")
        .arg("demo")
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("6 desired, 6 ready"), "{stdout}");

    let out = cafe()
        .args(["status", "-o", "json", "--kubeconfig"])
        .arg(&kubeconfig)
        .output()
        .await
        .unwrap();
    let list: Value = serde_json::from_slice(&out.stdout).expect("JSON list");
    assert_eq!(list[0]["status"]["readyReplicas"], 6);

    let out = cafe()
        .args(["status", "nope", "-n", "default", "--kubeconfig"])
        .arg(&kubeconfig)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("nope"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    let _ = std::fs::remove_dir_all(kubeconfig.parent().unwrap());
}

#[tokio::test]
async fn cli_status_watch_redraws_on_change_and_exits_on_sigterm() {
    let sim = start_sim(HUB_AND_MEMBER).await;
    let hub = client(&sim, "hub").await;
    install_crds(&hub).await;
    let api = create_demo(&hub, demo_status(1)).await;
    let kubeconfig = write_hub_kubeconfig(&sim, "watch");

    let mut child = cafe()
        .args(["status", "demo", "-w", "--kubeconfig"])
        .arg(&kubeconfig)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut wait_line = async |what: &str, pred: &dyn Fn(&str) -> bool| {
        let found = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if pred(&line) {
                    return true;
                }
            }
            false
        })
        .await;
        assert!(matches!(found, Ok(true)), "timed out waiting for {what}");
    };
    wait_line("the first frame", &|l| l.contains("4 ready")).await;

    // A change in status is redrawn.
    set_status(&api, demo_status(3)).await;
    wait_line("the redrawn frame", &|l| l.contains("6 ready")).await;

    let pid = child.id().expect("running").to_string();
    let killed = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("cafe status -w exits on SIGTERM")
        .unwrap();
    assert!(status.success(), "exit 0 on SIGTERM, got {status}");
    let _ = std::fs::remove_dir_all(kubeconfig.parent().unwrap());
}

#[tokio::test]
async fn status_watch_exits_on_ctrl_c_without_a_log_line() {
    let sim = start_sim(HUB_AND_MEMBER).await;
    let hub = client(&sim, "hub").await;
    install_crds(&hub).await;
    create_demo(&hub, demo_status(3)).await;
    let kubeconfig = write_hub_kubeconfig(&sim, "ctrlc");

    // Default log level (info), as a person at a terminal runs it.
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_cafe"))
        .args(["status", "demo", "-w", "--kubeconfig"])
        .arg(&kubeconfig)
        .env_remove("KUBECONFIG")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let drawn = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("6 ready") {
                return true;
            }
        }
        false
    })
    .await;
    assert!(matches!(drawn, Ok(true)), "the first frame");

    let pid = child.id().expect("running").to_string();
    let sent = tokio::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .await
        .unwrap();
    assert!(sent.success());
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("cafe status -w exits on Ctrl-C")
        .unwrap();
    assert!(out.status.success(), "exit 0 on Ctrl-C, got {}", out.status);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.is_empty(), "nothing logged: {stderr}");
    let _ = std::fs::remove_dir_all(kubeconfig.parent().unwrap());
}

#[tokio::test]
async fn cli_finds_the_hub_through_merged_kubeconfig_paths_or_home_like_kubectl() {
    let sim = start_sim(HUB_AND_MEMBER).await;
    let hub = client(&sim, "hub").await;
    install_crds(&hub).await;
    create_demo(&hub, demo_status(3)).await;
    let dir = std::env::temp_dir().join(format!("cafe-cli-kubeconfig-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("home/.kube")).unwrap();

    // $KUBECONFIG: the first file only names the current context (as a personal file
    // choosing among shared ones does); the last holds the clusters, with another current
    // context. Merged, the first file's choice wins; a missing file in between is skipped.
    let choice = dir.join("choice.yaml");
    std::fs::write(
        &choice,
        "apiVersion: v1\nkind: Config\ncurrent-context: hub\nclusters: []\ncontexts: []\nusers: []\n",
    )
    .unwrap();
    let clusters = dir.join("clusters.yaml");
    std::fs::write(&clusters, sim.kubeconfig(Some("dca"))).unwrap();
    let paths = std::env::join_paths([&choice, &dir.join("missing.yaml"), &clusters]).unwrap();
    let out = cafe()
        .args(["status", "demo"])
        .env("KUBECONFIG", &paths)
        .env("HOME", dir.join("home"))
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "$KUBECONFIG merged: {stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("6 desired"));

    // No $KUBECONFIG: ~/.kube/config.
    std::fs::write(dir.join("home/.kube/config"), sim.kubeconfig(Some("hub"))).unwrap();
    let out = cafe()
        .args(["status", "demo"])
        .env("HOME", dir.join("home"))
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "~/.kube/config: {stderr}");

    // Neither, outside a pod: one line naming every place looked at.
    std::fs::remove_file(dir.join("home/.kube/config")).unwrap();
    let out = cafe()
        .args(["status", "demo"])
        .env("HOME", dir.join("home"))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("$KUBECONFIG") && stderr.contains("/home/.kube/config (no such file)"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
