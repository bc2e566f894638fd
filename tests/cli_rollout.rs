//! `cafe rollout confirm|pause|resume|restart|undo` run as the real binary against a simulated
//! hub with cafe's CRDs and no controllers: the test plays the hub, writing the rollout status
//! through the status subresource and recording template history with
//! `cafe::hub::history::record`.

mod common;

use std::path::PathBuf;
use std::process::Output;

use cafe::api::CafeDeployment;
use cafe::api::labels::{CAFEDEPLOYMENT, RESTARTED_AT, REVISION, UPGRADE_CONFIRMED};
use cafe::hub::history;
use cafe::plan::revision::revision_hash;
use cafe_sim::sim::Sim;
use common::{client, install_crds, start_sim};
use k8s_openapi::api::apps::v1::ControllerRevision;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const HUB: &str = r#"
clusters:
  - name: hub
    role: hub
"#;

/// A hub with the CRDs and the demo CafeDeployment, and a kubeconfig file for the binary.
struct Hub {
    _sim: Sim,
    client: kube::Client,
    api: Api<CafeDeployment>,
    kubeconfig: PathBuf,
}

impl Drop for Hub {
    fn drop(&mut self) {
        if let Some(dir) = self.kubeconfig.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

async fn hub(tag: &str) -> Hub {
    let sim = start_sim(HUB).await;
    let client = client(&sim, "hub").await;
    install_crds(&client).await;
    let api: Api<CafeDeployment> = Api::namespaced(client.clone(), "default");
    let demo: CafeDeployment =
        serde_json::from_value(cafe::cli::dev::demo_object().unwrap()).unwrap();
    api.create(&PostParams::default(), &demo).await.unwrap();
    let dir = std::env::temp_dir().join(format!("cafe-cli-rollout-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, sim.kubeconfig(Some("hub"))).unwrap();
    Hub {
        _sim: sim,
        client,
        api,
        kubeconfig,
    }
}

impl Hub {
    async fn cafe(&self, args: &[&str]) -> Output {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_cafe"))
            .arg("rollout")
            .args(args)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .env_remove("KUBECONFIG")
            .env("RUST_LOG", "error")
            .output()
            .await
            .unwrap()
    }

    async fn demo(&self) -> CafeDeployment {
        self.api.get("demo").await.unwrap()
    }

    /// Writes `status.rollout` as the hub would.
    async fn set_rollout(&self, rollout: Value) {
        self.api
            .patch_status(
                "demo",
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"rollout": rollout}})),
            )
            .await
            .unwrap();
    }

    /// Changes the demo's image and adds a template annotation, then records the new template
    /// as the hub does when a new revision appears.
    async fn new_template(&self, image: &str) -> CafeDeployment {
        let patch = json!([
            {"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": image},
            {"op": "add", "path": "/spec/template/metadata/annotations",
             "value": {"example.com/image": image}},
        ]);
        self.api
            .patch(
                "demo",
                &PatchParams::default(),
                &Patch::Json::<()>(serde_json::from_value(patch).unwrap()),
            )
            .await
            .unwrap();
        self.record().await
    }

    async fn record(&self) -> CafeDeployment {
        let cd = self.demo().await;
        history::record(&self.client, &cd).await.unwrap();
        cd
    }

    async fn revisions(&self) -> Vec<(i64, String)> {
        let list = Api::<ControllerRevision>::namespaced(self.client.clone(), "default")
            .list(&ListParams::default().labels(&format!("{CAFEDEPLOYMENT}=demo")))
            .await
            .unwrap();
        let mut out: Vec<(i64, String)> = list
            .items
            .iter()
            .map(|cr| {
                (
                    cr.revision,
                    cr.metadata.labels.clone().unwrap()[REVISION].clone(),
                )
            })
            .collect();
        out.sort();
        out
    }
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn error_line(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected a failure; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    stderr
}

fn confirmed(cd: &CafeDeployment) -> Option<String> {
    cd.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(UPGRADE_CONFIRMED).cloned())
}

#[tokio::test]
async fn confirm_is_refused_unless_the_rollout_waits_for_it() {
    let hub = hub("confirm").await;
    hub.api
        .patch(
            "demo",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"strategy": {"needWaitingForConfirm": true}}})),
        )
        .await
        .unwrap();
    hub.set_rollout(
        json!({"phase": "Progressing", "revision": "abc", "currentBatch": 1, "totalBatches": 3}),
    )
    .await;
    let line = error_line(&hub.cafe(&["confirm", "demo"]).await);
    assert_eq!(
        line,
        "error: demo is not waiting for confirmation (phase Progressing, group 1/3); nothing to confirm"
    );
    assert_eq!(confirmed(&hub.demo().await), None, "nothing written");

    hub.set_rollout(json!({"phase": "WaitingForConfirm", "currentBatch": 1, "totalBatches": 3}))
        .await;
    let line = stdout(&hub.cafe(&["confirm", "demo", "-n", "default"]).await);
    assert_eq!(
        line,
        "cafedeployment.apps.cafe.io/demo confirmed: group 2/3 may start"
    );
    assert_eq!(confirmed(&hub.demo().await).as_deref(), Some("true"));

    let line = error_line(&hub.cafe(&["confirm", "nope"]).await);
    assert!(
        line.contains("\"nope\"") && line.contains("\"default\""),
        "{line}"
    );
}

#[tokio::test]
async fn pause_resume_and_restart_write_the_spec() {
    let hub = hub("pause").await;
    assert!(!hub.demo().await.spec.strategy.pause);
    let line = stdout(&hub.cafe(&["pause", "demo"]).await);
    assert_eq!(line, "cafedeployment.apps.cafe.io/demo paused");
    assert!(hub.demo().await.spec.strategy.pause);

    let line = stdout(&hub.cafe(&["resume", "demo"]).await);
    assert_eq!(line, "cafedeployment.apps.cafe.io/demo resumed");
    assert!(!hub.demo().await.spec.strategy.pause);

    let before = revision_hash(&hub.demo().await.spec.template);
    let line = stdout(&hub.cafe(&["restart", "demo"]).await);
    assert_eq!(line, "cafedeployment.apps.cafe.io/demo restarted");
    let cd = hub.demo().await;
    let stamp = cd
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(RESTARTED_AT))
        .cloned()
        .expect("restartedAt annotation on the template");
    assert!(
        chrono::DateTime::parse_from_rfc3339(&stamp).is_ok(),
        "RFC 3339: {stamp}"
    );
    assert_ne!(
        revision_hash(&cd.spec.template),
        before,
        "a new revision: every pod is replaced"
    );
    assert_eq!(
        cd.spec.template.spec.as_ref().unwrap().containers[0]
            .image
            .as_deref(),
        Some("nginx:1.27"),
        "the rest of the template is kept"
    );

    let line = error_line(&hub.cafe(&["pause", "nope"]).await);
    assert!(line.contains("nope"), "{line}");
}

#[tokio::test]
async fn undo_returns_to_the_previous_template_or_the_revision_asked_for() {
    let hub = hub("undo").await;
    let first = hub.record().await;
    let first_hash = revision_hash(&first.spec.template);
    let second = hub.new_template("nginx:1.28").await;
    let second_hash = revision_hash(&second.spec.template);
    assert_eq!(
        hub.revisions().await,
        [(1, first_hash.clone()), (2, second_hash.clone())]
    );

    let line = stdout(&hub.cafe(&["undo", "demo"]).await);
    assert_eq!(
        line,
        format!("cafedeployment.apps.cafe.io/demo rolled back to revision 1 ({first_hash})")
    );
    let now = hub.demo().await;
    assert_eq!(
        now.spec.template, first.spec.template,
        "the first template, whole: the annotation the second added is gone"
    );

    // The hub records the template that came back: renumbered, not recorded twice.
    hub.record().await;
    assert_eq!(
        hub.revisions().await,
        [(2, second_hash.clone()), (3, first_hash.clone())]
    );

    let line = error_line(&hub.cafe(&["undo", "demo", "--to-revision", "9"]).await);
    assert!(
        line.contains("no revision 9") && line.contains("2, 3"),
        "{line}"
    );
    let line = stdout(&hub.cafe(&["undo", "demo", "--to-revision", "2"]).await);
    assert_eq!(
        line,
        format!("cafedeployment.apps.cafe.io/demo rolled back to revision 2 ({second_hash})")
    );
    assert_eq!(hub.demo().await.spec.template, second.spec.template);
}

#[tokio::test]
async fn undo_without_an_earlier_revision_is_an_error() {
    let hub = hub("nothing").await;
    let before = hub.demo().await.spec.template;
    let line = error_line(&hub.cafe(&["undo", "demo"]).await);
    assert!(
        line.contains("default/demo") && line.contains("nothing to undo"),
        "{line}"
    );
    hub.record().await;
    let line = error_line(&hub.cafe(&["undo", "demo"]).await);
    assert!(
        line.contains("only the current template, revision 1") && line.contains("nothing to undo"),
        "{line}"
    );
    assert_eq!(hub.demo().await.spec.template, before, "nothing changed");
}

#[tokio::test]
async fn history_is_owned_by_the_cafedeployment_and_pruned_to_its_limit() {
    let hub = hub("history").await;
    hub.api
        .patch(
            "demo",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"historyLimit": 1}})),
        )
        .await
        .unwrap();
    let first = hub.record().await;
    hub.record().await; // idempotent
    assert_eq!(hub.revisions().await.len(), 1);
    let name = format!("demo-{}", revision_hash(&first.spec.template));
    let cr = Api::<ControllerRevision>::namespaced(hub.client.clone(), "default")
        .get(&name)
        .await
        .unwrap();
    let owner = &cr.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(owner.uid, first.metadata.uid.clone().unwrap());
    assert_eq!(owner.controller, Some(true));
    assert_eq!(
        cr.data.unwrap().0["template"],
        serde_json::to_value(&first.spec.template).unwrap()
    );

    hub.new_template("nginx:1.28").await;
    let third = hub.new_template("nginx:1.29").await;
    // historyLimit 1: the current template and one other.
    let kept = hub.revisions().await;
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert_eq!(kept[1], (3, revision_hash(&third.spec.template)));
    assert_eq!(kept[0].0, 2);
}

#[tokio::test]
async fn rollout_history_lists_revisions_with_images_and_change_cause() {
    let hub = hub("listing").await;
    let line = stdout(&hub.cafe(&["history", "demo"]).await);
    assert!(line.starts_with("No revisions of default/demo"), "{line}");

    let first = hub.record().await;
    hub.api
        .patch(
            "demo",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"kubernetes.io/change-cause": "image 1.28 for the fix"}}}),
            ),
        )
        .await
        .unwrap();
    let second = hub.new_template("nginx:1.28").await;
    let out = stdout(&hub.cafe(&["history", "demo", "-n", "default"]).await);
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        ["REVISION", "HASH", "IMAGES", "AGE", "CHANGE-CAUSE"],
        "{out}"
    );
    let first_hash = revision_hash(&first.spec.template);
    let second_hash = revision_hash(&second.spec.template);
    assert_eq!(
        rows[1][..3],
        ["1", first_hash.as_str(), "nginx:1.27"],
        "{out}"
    );
    assert_eq!(rows[1][4..], ["<none>"], "{out}");
    assert_eq!(
        rows[2][..3],
        ["2", second_hash.as_str(), "nginx:1.28"],
        "{out}"
    );
    assert_eq!(
        rows[2][4..],
        ["image", "1.28", "for", "the", "fix"],
        "{out}"
    );

    // The numbers are the ones undo takes.
    let line = stdout(&hub.cafe(&["undo", "demo", "--to-revision", "1"]).await);
    assert!(line.contains("rolled back to revision 1"), "{line}");
}
