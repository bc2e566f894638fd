//! `cafe rollout status` as a release engineer runs it: the real binary following a rollout that
//! a real hub releases into member agents running pods in simulated clusters. Exit 0 once the
//! rollout completes, non-zero when the progress deadline passes or on --timeout, and a line
//! naming `cafe rollout confirm` while it waits for confirmation.

mod common;
mod hub_support;
mod invariants;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use cafe::api::CafeDeployment;
use hub_support::Hub;
use kube::api::PostParams;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio_util::sync::CancellationToken;

/// Rollouts wait on real pods in two members; generous for a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(90);

/// 4 replicas over DCA and DCB, Beta then groups of 2: groups 1+1, 1+1.
fn demo(image: &str, strategy: Value) -> CafeDeployment {
    let mut strategy = strategy;
    strategy["upgradeType"] = json!("Beta");
    strategy["batchSize"] = json!(2);
    serde_json::from_value(json!({
        "apiVersion": "apps.cafe.io/v1alpha1",
        "kind": "CafeDeployment",
        "metadata": {"name": "demo", "namespace": "default"},
        "spec": {
            "replicas": 4,
            "selector": {"matchLabels": {"app": "demo"}},
            "template": {
                "metadata": {"labels": {"app": "demo"}},
                "spec": {"containers": [{"name": "app", "image": image,
                    "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]},
            },
            "topology": {"unitType": "DataCenter", "values": ["DCA", "DCB"]},
            "strategy": strategy,
        },
    }))
    .expect("a CafeDeployment")
}

struct Fixture {
    _hub: Hub,
    _agents: CancellationToken,
    dir: PathBuf,
    kubeconfig: PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Hub and members DCA/DCB running, `cd` created on the hub.
async fn start(tag: &str, cd: &CafeDeployment) -> Fixture {
    let mut hub = Hub::start_with(common::TWO_MEMBERS, &[("dca", "DCA"), ("dcb", "DCB")]).await;
    let dir = std::env::temp_dir().join(format!(
        "cafe-cli-rollout-status-{tag}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = hub.sim.publish(&dir, Some("hub")).await.unwrap();
    let agents = hub.run_member_agents(&["dca", "dcb"]);
    hub.run_hub();
    hub.wait_members_ready().await;
    hub.deployments()
        .create(&PostParams::default(), cd)
        .await
        .unwrap();
    Fixture {
        _hub: hub,
        _agents: agents,
        dir,
        kubeconfig,
    }
}

impl Fixture {
    fn cafe(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_cafe"));
        cmd.arg("rollout")
            .args(args)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .env_remove("KUBECONFIG")
            .env("RUST_LOG", "error")
            .kill_on_drop(true);
        cmd
    }

    /// `cafe rollout status demo ARGS` to its end (the test's own deadline: WAIT).
    async fn status(&self, args: &[&str]) -> (bool, String, String) {
        let mut full = vec!["status", "demo"];
        full.extend(args);
        let out = tokio::time::timeout(WAIT, self.cafe(&full).output())
            .await
            .expect("cafe rollout status ends")
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    }
}

#[tokio::test]
async fn rollout_status_exits_zero_when_the_rollout_completes() {
    let f = start("done", &demo("demo:1", json!({}))).await;
    let (ok, stdout, stderr) = f.status(&[]).await;
    assert!(ok, "exit 0; stdout: {stdout}; stderr: {stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines
            .last()
            .is_some_and(|l| l.starts_with("cafedeployment \"demo\" successfully rolled out")),
        "{stdout}"
    );
    for group in [
        "group 1/2 (Beta) complete: DCA 1, DCB 1",
        "group 2/2 complete: DCA 1, DCB 1",
    ] {
        assert_eq!(
            lines.iter().filter(|l| **l == group).count(),
            1,
            "{group} once: {stdout}"
        );
    }
}

#[tokio::test]
async fn rollout_status_fails_when_the_progress_deadline_is_exceeded() {
    let f = start(
        "deadline",
        &demo("demo:1-unready", json!({"progressDeadlineSeconds": 2})),
    )
    .await;
    let (ok, stdout, stderr) = f.status(&["-n", "default"]).await;
    assert!(!ok, "non-zero; stdout: {stdout}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("rollout of CafeDeployment default/demo failed: ProgressDeadlineExceeded"),
        "{stderr}"
    );
}

#[tokio::test]
async fn rollout_status_fails_on_timeout() {
    // It waits for a confirmation nobody gives.
    let f = start(
        "timeout",
        &demo("demo:1", json!({"needWaitingForConfirm": true})),
    )
    .await;
    let (ok, stdout, stderr) = f.status(&["--timeout", "3s"]).await;
    assert!(!ok, "non-zero; stdout: {stdout}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr
            .contains("timed out after 3s waiting for the rollout of CafeDeployment default/demo"),
        "{stderr}"
    );
}

#[tokio::test]
async fn rollout_status_says_it_waits_for_cafe_rollout_confirm() {
    let f = start(
        "confirm",
        &demo("demo:1", json!({"needWaitingForConfirm": true})),
    )
    .await;
    let mut child = f
        .cafe(&["status", "demo"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = vec![];
    let mut confirmations = 0;
    let followed = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            seen.push(line.clone());
            if line.contains("`cafe rollout confirm demo`") {
                // It keeps following while someone confirms.
                let out = f.cafe(&["confirm", "demo"]).output().await.unwrap();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                confirmations += 1;
            }
        }
    })
    .await;
    assert!(followed.is_ok(), "cafe rollout status ends: {seen:#?}");
    let status = child.wait().await.unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await
        .unwrap();
    assert!(
        status.success(),
        "exit 0 once confirmed: {stderr}; {seen:#?}"
    );
    assert!(
        seen.iter().any(|l| l
            == "Waiting for confirmation: group 1/2 is complete; `cafe rollout confirm demo` starts group 2/2"),
        "{seen:#?}"
    );
    assert!(confirmations >= 1, "{seen:#?}");
    assert!(
        seen.last()
            .is_some_and(|l| l.starts_with("cafedeployment \"demo\" successfully rolled out")),
        "{seen:#?}"
    );
}
