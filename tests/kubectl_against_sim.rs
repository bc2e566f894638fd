//! kubectl, the real client, driven against a running `cafe sim`.
//!
//! Skipped (with a printed notice) only where kubectl is not installed.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CONFIG: &str = r#"
kubelet: {startMillis: 100, restartMillis: 100}
clusters:
  - name: hub
    role: hub
  - name: dca
    role: member
    units: {DataCenter: DCA}
    nodes: [{count: 3, cpu: "8", memory: 16Gi, pods: 110}]
"#;

const CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wd]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    additionalPrinterColumns:
    - {name: Size, type: integer, jsonPath: .spec.size}
    - {name: Age, type: date, jsonPath: .metadata.creationTimestamp}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer, minimum: 0}
"#;

const WIDGET: &str =
    "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w1}\nspec: {size: 3}\n";

const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec:
  containers:
  - name: app
    image: nginx:1.27
    resources: {requests: {cpu: 100m, memory: 64Mi}}
"#;

struct Sim {
    child: Child,
    dir: PathBuf,
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn kubectl_installed() -> bool {
    Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn start_sim() -> Sim {
    let dir = std::env::temp_dir().join(format!("cafe-kubectl-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("sim.yaml");
    std::fs::write(&config, CONFIG).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cafe"))
        .args(["sim", "--config"])
        .arg(&config)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("cafe sim starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("cafe sim prints a ready line within 30s");
        if line.starts_with("ready") {
            break;
        }
    }
    Sim { child, dir }
}

fn kubectl(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(dir.join("state/kubeconfig"))
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .args(["--context", "dca"])
        .args(args)
        .output()
        .expect("kubectl runs")
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = kubectl(dir, args);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "kubectl {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// Polls kubectl until `pred` holds for its output.
fn eventually(dir: &Path, args: &[&str], what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = kubectl(dir, args);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if out.status.success() && pred(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last output:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn kubectl_suite() {
    if !kubectl_installed() {
        println!("NOTICE: kubectl is not installed; skipping the kubectl suite");
        return;
    }
    let sim = start_sim();
    let d = sim.dir.clone();

    // Nodes are listed Ready.
    let nodes = ok(&d, &["get", "nodes"]);
    assert_eq!(
        nodes.lines().filter(|l| l.contains(" Ready ")).count(),
        3,
        "{nodes}"
    );

    // A CRD applies and becomes Established.
    let crd = write(&d, "crd.yaml", CRD);
    ok(&d, &["apply", "-f", &crd]);
    ok(
        &d,
        &[
            "wait",
            "--for=condition=Established",
            "crd/widgets.example.com",
            "--timeout=20s",
        ],
    );

    // A custom resource shows its printer columns.
    let widget = write(&d, "widget.yaml", WIDGET);
    ok(&d, &["apply", "-f", &widget]);
    let listed = ok(&d, &["get", "wd"]);
    let header = listed.lines().next().unwrap_or("");
    assert!(
        header.contains("NAME") && header.contains("SIZE") && header.contains("AGE"),
        "{listed}"
    );
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("w1") && l.split_whitespace().nth(1) == Some("3")),
        "{listed}"
    );

    // patch --type merge.
    ok(
        &d,
        &[
            "patch",
            "widget",
            "w1",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"size":5}}"#,
        ],
    );
    let size = ok(&d, &["get", "widget", "w1", "-o", "jsonpath={.spec.size}"]);
    assert_eq!(size.trim(), "5");

    // Server-side apply (forced: the merge patch above owns spec.size now).
    ok(
        &d,
        &["apply", "--server-side", "--force-conflicts", "-f", &widget],
    );
    let size = ok(&d, &["get", "widget", "w1", "-o", "jsonpath={.spec.size}"]);
    assert_eq!(size.trim(), "3");

    // A Pod runs: READY 1/1, Running, an IP in -o wide.
    let pod = write(&d, "pod.yaml", POD);
    ok(&d, &["apply", "-f", &pod]);
    ok(
        &d,
        &["wait", "--for=condition=Ready", "pod/web", "--timeout=20s"],
    );
    let wide = ok(&d, &["get", "pod", "web", "-o", "wide"]);
    let row: Vec<&str> = wide
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(row.get(1), Some(&"1/1"), "{wide}");
    assert_eq!(row.get(2), Some(&"Running"), "{wide}");
    assert!(
        row.get(5)
            .is_some_and(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok()),
        "{wide}"
    );

    // describe shows the pod's events.
    let described = ok(&d, &["describe", "pod", "web"]);
    assert!(
        described.contains("Events:") && described.contains("Scheduled"),
        "{described}"
    );

    // get -w prints changes as they happen.
    let mut watch = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(d.join("state/kubeconfig"))
        .arg("--cache-dir")
        .arg(d.join("cache"))
        .args(["--context", "dca", "get", "widgets", "-w"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(10)).expect("header");
    assert!(first.contains("NAME"), "{first}");
    rx.recv_timeout(Duration::from_secs(10))
        .expect("initial row");
    ok(
        &d,
        &[
            "patch",
            "widget",
            "w1",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"size":42}}"#,
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = false;
    while Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200))
            && line.starts_with("w1")
            && line.contains("42")
        {
            seen = true;
            break;
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(seen, "kubectl get -w printed the change");

    // delete waits for a finalizer to be removed.
    ok(
        &d,
        &[
            "patch",
            "widget",
            "w1",
            "--type",
            "merge",
            "-p",
            r#"{"metadata":{"finalizers":["example.com/hold"]}}"#,
        ],
    );
    let mut deleting = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(d.join("state/kubeconfig"))
        .arg("--cache-dir")
        .arg(d.join("cache"))
        .args([
            "--context",
            "dca",
            "delete",
            "widget",
            "w1",
            "--timeout=30s",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    eventually(
        &d,
        &[
            "get",
            "widget",
            "w1",
            "-o",
            "jsonpath={.metadata.deletionTimestamp}",
        ],
        "deletionTimestamp",
        |t| !t.trim().is_empty(),
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        deleting.try_wait().unwrap().is_none(),
        "delete must wait for the finalizer"
    );
    ok(
        &d,
        &[
            "patch",
            "widget",
            "w1",
            "--type",
            "json",
            "-p",
            r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
        ],
    );
    let status = deleting.wait().unwrap();
    assert!(
        status.success(),
        "delete finished once the finalizer was gone"
    );
    let gone = kubectl(&d, &["get", "widget", "w1"]);
    assert!(!gone.status.success());

    // SIGTERM stops the simulator cleanly (exit 0).
    let mut sim = sim;
    let pid = sim.child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = sim.child.try_wait().unwrap() {
            assert!(
                status.success(),
                "cafe sim exits 0 on SIGTERM, got {status}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "cafe sim did not exit on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
