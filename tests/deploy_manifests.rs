//! The install manifests in deploy/: what `kubectl kustomize` renders from them (locked-down
//! containers, least-privilege RBAC without wildcards, the generated CRDs unchanged), and
//! `kubectl apply -k` of each part against a simulated cluster (everything is created, and a
//! second apply changes nothing).
//!
//! kubectl renders and applies, as an operator would; where it is not installed these tests are
//! skipped with a printed notice.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const IMAGE: &str = "ghcr.io/cafe-project/cafe:0.1.0";

/// One install part: its kustomization, the kinds of CRDs it carries, and its controller.
struct Part {
    /// `hub` or `member`: the directory under deploy/ and crds/, the container's argument and
    /// the component label.
    name: &'static str,
    /// The CRDs it installs.
    crds: &'static [&'static str],
}

const HUB: Part = Part {
    name: "hub",
    crds: &[
        "cafedeployments.apps.cafe.io",
        "memberclusters.apps.cafe.io",
    ],
};

const MEMBER: Part = Part {
    name: "member",
    crds: &["inplacesets.apps.cafe.io"],
};

impl Part {
    fn app(&self) -> String {
        format!("cafe-{}", self.name)
    }

    fn dir(&self) -> PathBuf {
        repo().join("deploy").join(self.name)
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn kubectl_installed() -> bool {
    Command::new("kubectl")
        .args(["version", "--client"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Skips the calling test, saying why, where kubectl is missing.
macro_rules! require_kubectl {
    () => {
        if !kubectl_installed() {
            println!("NOTICE: kubectl is not installed; skipping");
            return;
        }
    };
}

/// `kubectl kustomize deploy/<part>`, parsed: one JSON value per document.
fn render(part: &Part) -> Vec<Value> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(part.dir())
        .output()
        .expect("kubectl runs");
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed: {}",
        part.dir().display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8 output");
    serde_saphyr::from_multiple(&text).expect("kustomize renders YAML")
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn one<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    let found: Vec<&Value> = of_kind(docs, kind)
        .into_iter()
        .filter(|d| d["metadata"]["name"] == name)
        .collect();
    assert_eq!(found.len(), 1, "exactly one {kind} {name}");
    found[0]
}

/// `v` with every number as a float: the generated CRDs write `minimum: 0.0` (a float in the
/// OpenAPI types), which kustomize renders as `0`; both are the same number to the API server.
fn numbers_as_floats(v: &Value) -> Value {
    match v {
        Value::Number(n) => n
            .as_f64()
            .and_then(serde_json::Number::from_f64)
            .map_or_else(|| v.clone(), Value::Number),
        Value::Array(items) => Value::Array(items.iter().map(numbers_as_floats).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), numbers_as_floats(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

#[test]
fn rbac_rules_name_every_group_resource_and_verb_without_wildcards() {
    require_kubectl!();
    for part in [HUB, MEMBER] {
        let docs = render(&part);
        let roles: Vec<&Value> = of_kind(&docs, "ClusterRole")
            .into_iter()
            .chain(of_kind(&docs, "Role"))
            .collect();
        assert!(!roles.is_empty(), "{}: no roles", part.name);
        for role in roles {
            let name = &role["metadata"]["name"];
            let rules = role["rules"].as_array().expect("rules");
            assert!(!rules.is_empty(), "{name}: no rules");
            for rule in rules {
                for field in ["apiGroups", "resources", "verbs"] {
                    assert!(
                        !strings(&rule[field]).is_empty(),
                        "{name}: a rule without {field}: {rule}"
                    );
                }
                let text = rule.to_string();
                assert!(!text.contains('*'), "{name}: a wildcard in {rule}");
                assert!(
                    rule.get("nonResourceURLs").is_none(),
                    "{name}: nonResourceURLs in {rule}"
                );
            }
        }
    }
}

/// Secrets are read in cafe-system only (a Role), never cluster-wide; the member agent reads
/// none.
#[test]
fn secrets_are_readable_by_the_hub_in_cafe_system_only() {
    require_kubectl!();
    let grants_secrets = |role: &Value| {
        role["rules"].as_array().is_some_and(|rules| {
            rules
                .iter()
                .any(|r| strings(&r["resources"]).contains(&"secrets"))
        })
    };
    let hub = render(&HUB);
    assert!(!of_kind(&hub, "ClusterRole").into_iter().any(grants_secrets));
    let role = one(&hub, "Role", "cafe-hub");
    assert_eq!(role["metadata"]["namespace"], "cafe-system");
    assert!(grants_secrets(role));
    let member = render(&MEMBER);
    assert!(
        !of_kind(&member, "ClusterRole")
            .into_iter()
            .chain(of_kind(&member, "Role"))
            .any(grants_secrets)
    );
}

/// Each binding gives its role to the part's own service account in cafe-system.
#[test]
fn bindings_grant_the_roles_to_the_parts_service_account() {
    require_kubectl!();
    for part in [HUB, MEMBER] {
        let docs = render(&part);
        one(&docs, "ServiceAccount", &part.app());
        for (binding, role) in [
            ("ClusterRoleBinding", "ClusterRole"),
            ("RoleBinding", "Role"),
        ] {
            let b = one(&docs, binding, &part.app());
            assert_eq!(b["roleRef"]["kind"], role);
            assert_eq!(b["roleRef"]["name"], part.app().as_str());
            one(&docs, role, &part.app());
            let subjects = b["subjects"].as_array().expect("subjects");
            assert_eq!(subjects.len(), 1, "{b}");
            assert_eq!(subjects[0]["kind"], "ServiceAccount");
            assert_eq!(subjects[0]["name"], part.app().as_str());
            assert_eq!(subjects[0]["namespace"], "cafe-system");
        }
        // Leader election: the Lease named after the part, by name wherever Kubernetes allows.
        let role = one(&docs, "Role", &part.app());
        let lease_rules: Vec<&Value> = role["rules"]
            .as_array()
            .expect("rules")
            .iter()
            .filter(|r| strings(&r["resources"]) == ["leases"])
            .collect();
        assert!(
            lease_rules
                .iter()
                .any(|r| strings(&r["verbs"]) == ["create"] && r.get("resourceNames").is_none()),
            "{role}"
        );
        assert!(
            lease_rules
                .iter()
                .any(|r| strings(&r["verbs"]) == ["get", "update"]
                    && strings(&r["resourceNames"]) == [part.app().as_str()]),
            "{role}"
        );
    }
}

#[test]
fn every_container_runs_unprivileged_with_probes_and_resources() {
    require_kubectl!();
    for part in [HUB, MEMBER] {
        let docs = render(&part);
        let deployment = one(&docs, "Deployment", &part.app());
        let pod = &deployment["spec"]["template"]["spec"];
        assert_eq!(pod["serviceAccountName"], part.app().as_str());
        assert_eq!(pod["automountServiceAccountToken"], true);
        let containers = pod["containers"].as_array().expect("containers");
        assert!(!containers.is_empty());
        for c in containers {
            let name = &c["name"];
            let sc = &c["securityContext"];
            assert_eq!(sc["runAsNonRoot"], true, "{name}");
            assert_eq!(sc["runAsUser"], 65532, "{name}");
            assert_eq!(sc["runAsGroup"], 65532, "{name}");
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
            assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"], "{name}");
            assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{name}");

            let admin = c["ports"]
                .as_array()
                .and_then(|ps| ps.iter().find(|p| p["name"] == "admin"))
                .unwrap_or_else(|| panic!("{name}: no port named admin"));
            assert_eq!(admin["containerPort"], 8080, "{name}");
            for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
                let get = &c[probe]["httpGet"];
                assert_eq!(get["port"], "admin", "{name} {probe}");
                assert_eq!(get["path"], path, "{name} {probe}");
            }
            for bound in ["requests", "limits"] {
                for resource in ["cpu", "memory"] {
                    assert!(
                        c["resources"][bound][resource].is_string(),
                        "{name}: no {bound}.{resource}"
                    );
                }
            }
            assert_eq!(c["image"], IMAGE, "{name}");
            assert_eq!(strings(&c["args"]), [part.name], "{name}");
            let pod_name = c["env"]
                .as_array()
                .and_then(|env| env.iter().find(|e| e["name"] == "POD_NAME"))
                .unwrap_or_else(|| panic!("{name}: no POD_NAME"));
            assert_eq!(
                pod_name["valueFrom"]["fieldRef"]["fieldPath"],
                "metadata.name"
            );
        }
    }
}

#[test]
fn deployments_run_two_replicas_spread_over_nodes_behind_a_budget() {
    require_kubectl!();
    for part in [HUB, MEMBER] {
        let docs = render(&part);
        let deployment = one(&docs, "Deployment", &part.app());
        assert_eq!(deployment["spec"]["replicas"], 2);
        let selector = &deployment["spec"]["selector"]["matchLabels"];
        let template_labels = &deployment["spec"]["template"]["metadata"]["labels"];
        for (k, v) in selector.as_object().expect("matchLabels") {
            assert_eq!(&template_labels[k], v, "the selector selects the template");
        }
        let spread = &deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
            [0]["podAffinityTerm"];
        assert_eq!(spread["topologyKey"], "kubernetes.io/hostname");
        assert_eq!(&spread["labelSelector"]["matchLabels"], selector);

        let budget = one(&docs, "PodDisruptionBudget", &part.app());
        assert_eq!(budget["spec"]["minAvailable"], 1);
        assert_eq!(&budget["spec"]["selector"]["matchLabels"], selector);

        let service = one(&docs, "Service", &format!("{}-metrics", part.app()));
        assert_eq!(&service["spec"]["selector"], selector);
        let port = &service["spec"]["ports"][0];
        assert_eq!(
            (&port["name"], &port["port"], &port["targetPort"]),
            (&"metrics".into(), &8080.into(), &"admin".into())
        );
        let annotations = &service["metadata"]["annotations"];
        assert_eq!(annotations["prometheus.io/scrape"], "true");
        assert_eq!(annotations["prometheus.io/port"], "8080");
        assert_eq!(annotations["prometheus.io/path"], "/metrics");
    }
}

/// Every object but the CRDs carries the common labels and lives in cafe-system; the CRDs are
/// exactly the generated ones (as `cafe crds` prints them), and the kustomization takes them
/// from crds/, whose files are what `cafe crds --out crds` writes.
#[test]
fn the_crds_are_the_generated_files_and_the_rest_is_labelled() {
    require_kubectl!();
    let generated: Vec<(PathBuf, String)> = cafe::cli::crds::files().expect("CRDs serialise");
    for (relative, text) in &generated {
        let on_disk = std::fs::read_to_string(repo().join("crds").join(relative))
            .unwrap_or_else(|e| panic!("crds/{}: {e}", relative.display()));
        assert_eq!(
            &on_disk,
            text,
            "crds/{} is not generated",
            relative.display()
        );
    }
    for part in [HUB, MEMBER] {
        let kustomization =
            std::fs::read_to_string(part.dir().join("kustomization.yaml")).expect("readable");
        let kustomization: Value = serde_saphyr::from_str(&kustomization).expect("YAML");
        assert!(
            strings(&kustomization["resources"])
                .contains(&format!("../../crds/{}", part.name).as_str()),
            "deploy/{} takes its CRDs from crds/{}",
            part.name,
            part.name
        );

        let docs = render(&part);
        let mut rendered: Vec<&Value> = of_kind(&docs, "CustomResourceDefinition");
        rendered.sort_by_key(|d| {
            d["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        });
        let names: Vec<&str> = rendered
            .iter()
            .filter_map(|d| d["metadata"]["name"].as_str())
            .collect();
        assert_eq!(names, part.crds, "deploy/{}", part.name);
        for crd in rendered {
            let name = crd["metadata"]["name"].as_str().unwrap_or_default();
            let path = Path::new(part.name).join(format!("{name}.yaml"));
            let text = &generated
                .iter()
                .find(|(p, _)| *p == path)
                .unwrap_or_else(|| panic!("{} is not generated", path.display()))
                .1;
            let expected: Value = serde_saphyr::from_str(text).expect("YAML");
            assert_eq!(
                numbers_as_floats(crd),
                numbers_as_floats(&expected),
                "{name} is rendered unchanged"
            );
        }

        for doc in docs
            .iter()
            .filter(|d| d["kind"] != "CustomResourceDefinition")
        {
            let what = format!("{} {}", doc["kind"], doc["metadata"]["name"]);
            let labels = &doc["metadata"]["labels"];
            assert_eq!(
                labels["app.kubernetes.io/name"],
                part.app().as_str(),
                "{what}"
            );
            assert_eq!(labels["app.kubernetes.io/component"], part.name, "{what}");
            assert_eq!(labels["app.kubernetes.io/part-of"], "cafe", "{what}");
            let cluster_scoped = ["Namespace", "ClusterRole", "ClusterRoleBinding"]
                .contains(&doc["kind"].as_str().unwrap_or_default());
            if !cluster_scoped {
                assert_eq!(doc["metadata"]["namespace"], "cafe-system", "{what}");
            }
        }
    }
}

// ---- against a simulated cluster ----

const SIM_CONFIG: &str = r#"
kubelet: {startMillis: 100, restartMillis: 100}
clusters:
  - name: hub
    role: hub
  - name: dca
    role: member
    units: {DataCenter: DCA}
    nodes: [{count: 2, cpu: "8", memory: 16Gi, pods: 110}]
"#;

/// A `cafe sim` process with its own state and kubectl cache directories.
struct Sim {
    child: Child,
    dir: PathBuf,
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Sim {
    fn start(test: &str) -> Sim {
        let dir = std::env::temp_dir().join(format!("cafe-deploy-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let config = dir.join("sim.yaml");
        std::fs::write(&config, SIM_CONFIG).expect("config written");
        let mut child = Command::new(env!("CARGO_BIN_EXE_cafe"))
            .args(["sim", "--config"])
            .arg(&config)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cafe sim starts");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let sim = Sim { child, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .expect("cafe sim prints a ready line within 30s");
            if line.starts_with("ready") {
                return sim;
            }
        }
    }

    fn kubectl(&self, context: &str, args: &[&str]) -> std::process::Output {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(self.dir.join("state/kubeconfig"))
            .arg("--cache-dir")
            .arg(self.dir.join("cache"))
            .args(["--context", context])
            .args(args)
            .output()
            .expect("kubectl runs")
    }

    fn ok(&self, context: &str, args: &[&str]) -> String {
        let out = self.kubectl(context, args);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "kubectl --context {context} {args:?} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }
}

/// `kind/name=resourceVersion` of every object of deploy/<part> in the cluster, one per line.
fn versions(sim: &Sim, context: &str, dir: &str) -> String {
    sim.ok(
        context,
        &[
            "get",
            "-k",
            dir,
            "-o",
            "jsonpath={range .items[*]}{.kind}/{.metadata.name}={.metadata.resourceVersion}{\"\\n\"}{end}",
        ],
    )
}

/// Applies deploy/<part> to `context` twice with a plain (client-side) `kubectl apply -k`, as
/// the README says: the first apply creates every object the rendering holds (the CRDs fit the
/// 256 KiB annotation client-side apply records, which the simulator enforces as Kubernetes
/// does), the second says `unchanged` for each and changes none of them (no resourceVersion
/// moves).
fn apply_twice(sim: &Sim, context: &str, part: &Part) {
    let dir = part.dir().display().to_string();
    let apply = ["apply", "-k", &dir];
    let first = sim.ok(context, &apply);
    let docs = render(part);
    assert_eq!(
        first.lines().count(),
        docs.len(),
        "one line per object:\n{first}"
    );
    assert!(first.lines().all(|l| l.ends_with(" created")), "{first}");

    for crd in part.crds {
        sim.ok(
            context,
            &[
                "wait",
                "--for=condition=Established",
                &format!("crd/{crd}"),
                "--timeout=20s",
            ],
        );
    }
    let app = part.app();
    let get = |args: &[&str]| sim.ok(context, &[&["get"][..], args].concat());
    let name = "jsonpath={.metadata.name}";
    assert_eq!(
        get(&["namespace", "cafe-system", "-o", name]),
        "cafe-system"
    );
    for kind in [
        "serviceaccount",
        "role",
        "rolebinding",
        "poddisruptionbudget",
    ] {
        assert_eq!(
            get(&["-n", "cafe-system", kind, &app, "-o", name]),
            app,
            "{kind}"
        );
    }
    for kind in ["clusterrole", "clusterrolebinding"] {
        assert_eq!(get(&[kind, &app, "-o", name]), app, "{kind}");
    }
    let replicas = get(&[
        "-n",
        "cafe-system",
        "deployment",
        &app,
        "-o",
        "jsonpath={.spec.replicas}",
    ]);
    assert_eq!(replicas, "2");
    let service = format!("{app}-metrics");
    let port = get(&[
        "-n",
        "cafe-system",
        "service",
        &service,
        "-o",
        "jsonpath={.spec.ports[0].name}:{.spec.ports[0].port}",
    ]);
    assert_eq!(port, "metrics:8080");

    let before = versions(sim, context, &dir);
    assert_eq!(before.lines().count(), docs.len(), "{before}");
    let second = sim.ok(context, &apply);
    assert_eq!(second.lines().count(), docs.len(), "{second}");
    // kubectl always re-sends a PodDisruptionBudget's selector (its patch strategy is
    // `replace`), so it says `configured` for it; the resourceVersions below show that nothing
    // changed.
    assert!(
        second
            .lines()
            .all(|l| l.ends_with(" unchanged") || l.starts_with("poddisruptionbudget.policy/")),
        "{second}"
    );
    assert_eq!(
        versions(sim, context, &dir),
        before,
        "a second apply changes nothing"
    );
}

#[test]
fn kubectl_apply_k_installs_the_hub_and_a_second_apply_changes_nothing() {
    require_kubectl!();
    let sim = Sim::start("hub");
    apply_twice(&sim, "hub", &HUB);
}

#[test]
fn kubectl_apply_k_installs_the_member_agent_and_a_second_apply_changes_nothing() {
    require_kubectl!();
    let sim = Sim::start("member");
    apply_twice(&sim, "dca", &MEMBER);
}
