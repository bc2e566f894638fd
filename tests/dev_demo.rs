//! `cafe dev --demo` as the README runs it: the built binary, its ready line, the kubeconfig it
//! writes, what it sets up on the hub, kubectl against it, and a clean exit on SIGTERM.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use cafe::api::{CafeDeployment, MemberCluster};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;
use kube::config::Kubeconfig;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `cafe dev`, killed if the test fails before it is stopped.
struct Dev {
    child: Child,
    dir: PathBuf,
    kubeconfig: PathBuf,
    ready: String,
    _stdout: Lines<BufReader<ChildStdout>>,
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cafe-dev-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn cafe() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cafe"));
    cmd.env_remove("KUBECONFIG").env("RUST_LOG", "warn");
    cmd
}

/// Starts `cafe dev ARGS --state-dir DIR/state` and waits for its `ready` line.
async fn start_dev(tag: &str, args: &[&str]) -> Dev {
    let dir = temp_dir(tag);
    let state = dir.join("state");
    let mut child = cafe()
        .arg("dev")
        .args(args)
        .arg("--state-dir")
        .arg(&state)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("cafe dev starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(READY_TIMEOUT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.starts_with("ready") {
                return line;
            }
        }
        panic!("cafe dev exited before printing a ready line");
    })
    .await
    .unwrap_or_else(|_| panic!("no ready line within {READY_TIMEOUT:?}"));
    Dev {
        child,
        dir,
        kubeconfig: state.join("kubeconfig"),
        ready,
        _stdout: lines,
    }
}

impl Dev {
    async fn client(&self, context: &str) -> kube::Client {
        cafe::runtime::kubeconfig::client_from_file(&self.kubeconfig, Some(context))
            .await
            .expect("client from the written kubeconfig")
    }

    /// SIGTERM, then exit 0 within a deadline.
    async fn stop(mut self) {
        let pid = self.child.id().expect("still running").to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap();
        assert!(sent.success());
        let status = tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("cafe dev exits within 20s of SIGTERM")
            .unwrap();
        assert!(status.success(), "exit 0 on SIGTERM, got {status}");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls `check` every 100 ms until it returns Some, or panics after `timeout` naming `what`.
async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn established(client: &kube::Client, crd: &str) -> bool {
    Api::<CustomResourceDefinition>::all(client.clone())
        .get_opt(crd)
        .await
        .ok()
        .flatten()
        .and_then(|c| c.status?.conditions)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        })
}

#[tokio::test]
async fn dev_demo_prints_ready_registers_the_members_applies_the_demo_and_exits_0_on_sigterm() {
    let dev = start_dev("demo", &["--demo"]).await;
    assert!(
        dev.ready
            .contains(&format!("kubeconfig={}", dev.kubeconfig.display())),
        "the ready line names the kubeconfig: {}",
        dev.ready
    );

    // The kubeconfig: one context per cluster, the hub current.
    let kubeconfig = Kubeconfig::read_from(&dev.kubeconfig).unwrap();
    let mut contexts: Vec<_> = kubeconfig
        .contexts
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    contexts.sort();
    assert_eq!(contexts, ["dca", "dcb", "hub"]);
    assert_eq!(kubeconfig.current_context.as_deref(), Some("hub"));

    // The hub has the CRDs, both members registered with their units, and the demo.
    let hub = dev.client("hub").await;
    assert!(established(&hub, "cafedeployments.apps.cafe.io").await);
    assert!(established(&hub, "memberclusters.apps.cafe.io").await);
    let members: Api<MemberCluster> = Api::all(hub.clone());
    let secrets: Api<Secret> = Api::namespaced(hub.clone(), "cafe-system");
    for (name, unit) in [("dca", "DCA"), ("dcb", "DCB")] {
        let m = members.get(name).await.expect("member registered");
        assert_eq!(
            m.metadata.labels.unwrap_or_default()["unit.apps.cafe.io/DataCenter"],
            unit
        );
        assert!(
            secrets
                .get_opt(&format!("{name}-kubeconfig"))
                .await
                .unwrap()
                .is_some()
        );
        let member = dev.client(name).await;
        assert!(established(&member, "inplacesets.apps.cafe.io").await);
    }
    let demo = Api::<CafeDeployment>::namespaced(hub.clone(), "default")
        .get("demo")
        .await
        .expect("the demo is applied");
    assert_eq!(demo.spec.replicas, 6);

    // The README's commands reach the hub through $KUBECONFIG alone.
    for (args, shows) in [
        (vec!["status", "demo"], "6 desired"),
        (vec!["status"], "demo"),
        (vec!["cluster", "list"], "DataCenter=DCB"),
    ] {
        let out = cafe()
            .args(&args)
            .env("KUBECONFIG", &dev.kubeconfig)
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "cafe {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains(shows), "cafe {args:?}: {stdout}");
    }
    dev.stop().await;
}

#[tokio::test]
async fn dev_registers_each_configured_member_with_its_units() {
    let dir = temp_dir("config-file");
    let config = dir.join("clusters.yaml");
    std::fs::write(
        &config,
        "kubelet: {startMillis: 50, restartMillis: 50}\nclusters:\n\
         - {name: central, role: hub}\n\
         - {name: east, role: member, units: {DataCenter: EAST, Zone: Z1}, nodes: [{count: 1}]}\n",
    )
    .unwrap();
    let dev = start_dev("config", &["--config", config.to_str().unwrap()]).await;
    let kubeconfig = Kubeconfig::read_from(&dev.kubeconfig).unwrap();
    assert_eq!(kubeconfig.current_context.as_deref(), Some("central"));
    let hub = dev.client("central").await;
    let east = Api::<MemberCluster>::all(hub.clone())
        .get("east")
        .await
        .expect("east registered");
    let labels = east.metadata.labels.unwrap_or_default();
    assert_eq!(labels["unit.apps.cafe.io/DataCenter"], "EAST");
    assert_eq!(labels["unit.apps.cafe.io/Zone"], "Z1");
    assert!(
        Api::<CafeDeployment>::namespaced(hub, "default")
            .get_opt("demo")
            .await
            .unwrap()
            .is_none(),
        "no demo without --demo"
    );
    dev.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn dev_config_without_a_hub_is_a_one_line_error() {
    let dir = temp_dir("nohub");
    let config = dir.join("clusters.yaml");
    std::fs::write(&config, "clusters: [{name: dca, units: {DataCenter: DCA}}]").unwrap();
    let out = cafe()
        .args(["dev", "--config"])
        .arg(&config)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("role: hub"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

// With the controllers: the demo becomes Ready and the README walkthrough works, in kubectl.

fn kubectl_installed() -> bool {
    std::process::Command::new("kubectl")
        .args(["version", "--client"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Success and stdout (stderr is appended on failure, for the assertion message).
async fn kubectl(dev: &Dev, args: &[&str]) -> (bool, String) {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&dev.kubeconfig)
        .arg("--cache-dir")
        .arg(dev.dir.join("kubectl-cache"))
        .args(args)
        .output()
        .await
        .expect("kubectl runs");
    let mut text = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        text.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    (out.status.success(), text)
}

/// The cells of `name`'s row in a kubectl table, by header. Columns are cut at the header's
/// offsets, so empty cells (a phase not reported yet) stay empty instead of shifting the rest.
fn row(table: &str, name: &str) -> Option<std::collections::HashMap<String, String>> {
    let mut lines = table.lines();
    let header = lines.next()?;
    let starts: Vec<usize> = header
        .char_indices()
        .filter(|&(i, c)| c != ' ' && (i == 0 || header.as_bytes()[i - 1] == b' '))
        .map(|(i, _)| i)
        .collect();
    let line = lines.find(|l| l.split_whitespace().next() == Some(name))?;
    let cell = |k: usize| {
        let end = starts
            .get(k + 1)
            .copied()
            .unwrap_or(line.len())
            .min(line.len());
        line.get(starts[k].min(end)..end)
            .unwrap_or("")
            .trim()
            .to_string()
    };
    Some(
        (0..starts.len())
            .map(|k| {
                (
                    header[starts[k]..]
                        .split_whitespace()
                        .next()
                        .unwrap_or("")
                        .to_string(),
                    cell(k),
                )
            })
            .collect(),
    )
}

/// Waits until `kubectl --context hub get cafedeployments` shows demo with READY == DESIRED == n.
async fn wait_ready_in_kubectl(dev: &Dev, n: &str) {
    wait_for(
        &format!("kubectl to show demo READY {n}/{n}"),
        Duration::from_secs(90),
        || async {
            let (ok, out) = kubectl(dev, &["--context", "hub", "get", "cafedeployments"]).await;
            let r = row(&out, "demo").filter(|_| ok)?;
            (r.get("DESIRED")? == n && r.get("READY")? == n).then_some(())
        },
    )
    .await;
}

fn examples(file: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(file)
        .display()
        .to_string()
}

#[tokio::test]
async fn dev_demo_becomes_ready_in_kubectl_and_the_readme_walkthrough_works() {
    if !kubectl_installed() {
        println!("NOTICE: kubectl is not installed; skipping the cafe dev walkthrough");
        return;
    }
    let dev = start_dev("walkthrough", &["--demo"]).await;
    wait_ready_in_kubectl(&dev, "6").await;

    // cafe status: one row per unit, each with its share ready.
    let out = cafe()
        .args(["status", "demo"])
        .env("KUBECONFIG", &dev.kubeconfig)
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (unit, cluster) in [("DCA", "dca"), ("DCB", "dcb")] {
        let cells: Vec<&str> = text
            .lines()
            .find(|l| l.starts_with(unit))
            .unwrap_or_else(|| panic!("no {unit} row:\n{text}"))
            .split_whitespace()
            .collect();
        assert_eq!(&cells[..4], [unit, cluster, "3", "3"], "{text}");
    }

    // Scale: the hub and the members follow.
    let (ok, out) = kubectl(&dev, &["scale", "cafedeployment", "demo", "--replicas=8"]).await;
    assert!(ok, "{out}");
    wait_ready_in_kubectl(&dev, "8").await;
    let (ok, out) = kubectl(
        &dev,
        &[
            "--context",
            "dca",
            "get",
            "inplacesets",
            "demo",
            "-o",
            "jsonpath={.spec.replicas}",
        ],
    )
    .await;
    assert!(ok && out.trim() == "4", "dca runs half of 8: {out}");

    // Delete: gone from the hub and from every member.
    let (ok, out) = kubectl(&dev, &["delete", "cafedeployment", "demo"]).await;
    assert!(ok, "{out}");
    for context in ["dca", "dcb"] {
        wait_for(
            &format!("the InPlaceSet to leave {context}"),
            Duration::from_secs(60),
            || async {
                let (ok, out) = kubectl(
                    &dev,
                    &["--context", context, "get", "inplacesets", "-o", "name"],
                )
                .await;
                (ok && out.trim().is_empty()).then_some(())
            },
        )
        .await;
    }

    // Apply the example again, as the README does.
    let (ok, out) = kubectl(&dev, &["apply", "-f", &examples("cafedeployment.yaml")]).await;
    assert!(ok, "{out}");
    wait_ready_in_kubectl(&dev, "6").await;
    dev.stop().await;
}
