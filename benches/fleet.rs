//! Benchmark: what the hub, the member agents and the simulator cost at fleet scale, each a
//! separate process (`cafe sim`, `cafe hub`, one `cafe member` per member) as in production, with
//! memory and CPU read from the OS (`/proc/PID/status` VmHWM, VmRSS; `/proc/PID/stat` utime +
//! stime).
//!
//! Scenarios (members `dca` and `dcb` of 60 nodes each, kubelet start 50 ms):
//! - `small`: 100 CafeDeployments x 2 replicas;
//! - `wide`: the same 100 x 40 replicas (2,000 pods per member);
//! - `many`: 1,000 x 2;
//! - `idle`: 100 x 50 (2,500 pods per member), then each process' CPU over one idle minute;
//! - `huge`: 10,000 x 2;
//! - `member10k`: one member, no hub: one InPlaceSet of 10,000 pods, the agent's RSS and the
//!   time until all are ready;
//! - `all`: every scenario above in turn.
//!
//! Each prints one Markdown row: the time until every CafeDeployment has all its replicas
//! available, each process' peak and current RSS, and the simulator's RSS per 1,000 live pods.
//!
//! Run: `cargo bench --bench fleet -- SCENARIO` (default `small`). To see where a controller's
//! memory goes, `FLEET_WRAP="heaptrack -o /tmp/{name}"` runs every process under that command,
//! `{name}` replaced by the process' name (`sim`, `hub`, `member-dca`, ...), or only those named
//! in `FLEET_WRAP_ONLY=sim,hub`; the RSS figures then are the profiler's, not cafe's.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cafe::api::{CafeDeployment, InPlaceSet};
use cafe::cli::cluster::{Credentials, register};
use cafe::cli::crds::Part;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

/// One process of the fleet, killed when dropped with its children (cafe itself, when a
/// profiler wraps it).
struct Proc {
    name: String,
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("pkill")
            .args(["-KILL", "-P", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// (peak, current) resident set size in MiB.
    fn rss_mib(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
                .map_or(0.0, |kb| kb / 1024.0)
        };
        (field("VmHWM:"), field("VmRSS:"))
    }

    /// CPU seconds used so far (user + system).
    fn cpu_secs(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the command name (which may hold spaces) start at state, field 3.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // utime and stime are fields 14 and 15, i.e. 11 and 12 after the state.
        (ticks(11) + ticks(12)) / clock_ticks()
    }
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// `cafe ARGS`, run by `wrapper` (a profiler, say) when given.
fn cafe_wrapped(wrapper: Option<&str>, args: &[&str], log: &Path) -> Child {
    let log = std::fs::File::create(log).expect("log file");
    // Split on whitespace: a profiler's command line needs no quoting.
    let words: Vec<&str> = wrapper.unwrap_or_default().split_whitespace().collect();
    let mut command = match words.split_first() {
        Some((program, rest)) => {
            let mut c = Command::new(program);
            c.args(rest).arg(env!("CARGO_BIN_EXE_cafe"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_cafe")),
    };
    command
        .args(args)
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("cafe starts")
}

/// The `FLEET_WRAP` command for process `name`, unless `FLEET_WRAP_ONLY` (a comma-separated list
/// of names) leaves it out.
fn wrapper_for(name: &str) -> Option<String> {
    let only = std::env::var("FLEET_WRAP_ONLY").ok();
    if only.is_some_and(|only| !only.split(',').any(|n| n.trim() == name)) {
        return None;
    }
    std::env::var("FLEET_WRAP")
        .ok()
        .map(|w| w.replace("{name}", name))
}

/// `cafe sim` with `config`, once it printed its `ready` line.
fn start_sim(dir: &Path, config: &str) -> Proc {
    let file = dir.join("sim.yaml");
    std::fs::write(&file, config).expect("sim config");
    let mut child = cafe_wrapped(
        wrapper_for("sim").as_deref(),
        &[
            "sim",
            "--config",
            &file.to_string_lossy(),
            "--state-dir",
            &dir.to_string_lossy(),
        ],
        &dir.join("sim.log"),
    );
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("ready") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(120))
        .expect("cafe sim printed its ready line");
    Proc {
        name: "sim".into(),
        child,
    }
}

fn start_controller(dir: &Path, part: &str, context: &str) -> Proc {
    let kubeconfig = dir.join("kubeconfig");
    let file_name = if part == "hub" {
        part.to_string()
    } else {
        format!("{part}-{context}")
    };
    let child = cafe_wrapped(
        wrapper_for(&file_name).as_deref(),
        &[
            part,
            "--kubeconfig",
            &kubeconfig.to_string_lossy(),
            "--context",
            context,
            "--admin-address",
            "127.0.0.1:0",
        ],
        &dir.join(format!("{part}-{context}.log")),
    );
    let name = if part == "hub" {
        part.to_string()
    } else {
        format!("{part} {context}")
    };
    Proc { name, child }
}

async fn client(dir: &Path, context: &str) -> kube::Client {
    let yaml = std::fs::read_to_string(dir.join("kubeconfig")).expect("kubeconfig");
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&yaml).expect("kubeconfig parses");
    let options = kube::config::KubeConfigOptions {
        context: Some(context.to_string()),
        ..Default::default()
    };
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .expect("config");
    kube::Client::try_from(config).expect("client")
}

/// Namespace cafe-system and the CRDs of `part`.
async fn install(client: &kube::Client, part: Part) {
    common::create_system_namespace(client).await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in part.crds() {
        match crds.create(&PostParams::default(), &crd).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => panic!("creating a CRD: {e}"),
        }
    }
}

/// Creates `object`, retrying for up to a minute while its CRD is not served yet.
async fn create_when_served<K>(api: &Api<K>, object: &K)
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::Serialize + serde::de::DeserializeOwned,
{
    let started = Instant::now();
    while let Err(e) = api.create(&PostParams::default(), object).await {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "creating {:?}: {e}",
            object.meta().name
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn sim_config(members: &[(&str, &str)], pods_per_node: u32) -> String {
    let mut config = String::from("kubelet: {startMillis: 50, restartMillis: 50}\nclusters:\n");
    if members.len() > 1 {
        config.push_str("  - name: hub\n    role: hub\n");
    }
    for (name, unit) in members {
        config.push_str(&format!(
            "  - name: {name}\n    role: member\n    units: {{DataCenter: {unit}}}\n    \
             nodes: [{{count: 60, cpu: \"64\", memory: 256Gi, pods: {pods_per_node}}}]\n"
        ));
    }
    config
}

fn cafedeployment(name: &str, replicas: usize) -> CafeDeployment {
    serde_json::from_value(json!({
        "apiVersion": "apps.cafe.io/v1alpha1",
        "kind": "CafeDeployment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "fleet:1",
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]},
            },
            "topology": {"unitType": "DataCenter", "values": ["DCA", "DCB"]},
            "strategy": {"upgradeType": "Batch", "batchSize": "100%", "maxUnavailablePerUnit": 1},
        },
    }))
    .expect("a CafeDeployment")
}

/// Polls `done` (returning (done, total) counts) every `every` until it reports all done; says
/// where it is every 15 s; panics after `deadline`.
async fn wait_all<F, Fut>(what: &str, every: Duration, deadline: Duration, mut done: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = (usize, usize)>,
{
    let started = Instant::now();
    let mut said = Instant::now();
    loop {
        let (n, total) = done().await;
        if n == total {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < deadline,
            "{what}: {n} of {total} after {deadline:?}"
        );
        if said.elapsed() > Duration::from_secs(15) {
            eprintln!(
                "{what}: {n} of {total} ({:.0} s)",
                started.elapsed().as_secs_f64()
            );
            said = Instant::now();
        }
        tokio::time::sleep(every).await;
    }
}

fn temp_dir(scenario: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cafe-fleet-{scenario}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn rss_cells(procs: &[&Proc]) -> String {
    procs
        .iter()
        .map(|p| {
            let (peak, now) = p.rss_mib();
            format!("{}: {peak:.0} MiB peak, {now:.0} now", p.name)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// `count` CafeDeployments of `replicas` over two members; with `idle`, each process' CPU over
/// a quiet minute after convergence.
async fn fleet(scenario: &str, count: usize, replicas: usize, idle: bool) {
    let dir = temp_dir(scenario);
    let members = [("dca", "DCA"), ("dcb", "DCB")];
    let pods_per_member = count * replicas / 2;
    let per_node = (pods_per_member / 60 + 20).max(110) as u32;
    let sim = start_sim(&dir, &sim_config(&members, per_node));
    let hub = client(&dir, "hub").await;
    install(&hub, Part::Hub).await;
    let kubeconfig = std::fs::read_to_string(dir.join("kubeconfig")).expect("kubeconfig");
    for (name, unit) in members {
        install(&client(&dir, name).await, Part::Member).await;
        register(
            &hub,
            name,
            &kubeconfig,
            Some(name),
            &[("DataCenter".into(), unit.into())],
            Credentials::Kubeconfig,
        )
        .await
        .unwrap_or_else(|e| panic!("registering {name}: {e}"));
    }
    let agents: Vec<Proc> = members
        .iter()
        .map(|(name, _)| start_controller(&dir, "member", name))
        .collect();
    let hub_proc = start_controller(&dir, "hub", "hub");

    let api: Api<CafeDeployment> = Api::default_namespaced(hub.clone());
    let creating = Instant::now();
    for i in 0..count {
        create_when_served(&api, &cafedeployment(&format!("cd-{i}"), replicas)).await;
    }
    let created = creating.elapsed();
    let deadline = Duration::from_secs(600 + (count * replicas) as u64 / 10);
    // Each poll lists every CafeDeployment: at 10,000 that is tens of MB the simulator encodes,
    // so the poll slows with the fleet instead of loading the machine it measures.
    let every = Duration::from_secs((count as u64 / 500).max(2));
    let converged = wait_all("CafeDeployments available", every, deadline, || async {
        let list = api.list(&ListParams::default()).await.map(|l| l.items);
        let done = list.as_deref().unwrap_or_default().iter().filter(|cd| {
            cd.status
                .as_ref()
                .is_some_and(|s| s.available_replicas == replicas as i32)
        });
        (done.count(), count)
    })
    .await;
    let mut procs: Vec<&Proc> = vec![&hub_proc];
    procs.extend(agents.iter());
    procs.push(&sim);
    let pods = count * replicas;
    let (_, sim_now) = sim.rss_mib();
    println!(
        "| {scenario} | {count} x {replicas} | {pods} | {:.0} s | {:.0} s | {} | {:.0} MiB |",
        created.as_secs_f64(),
        converged.as_secs_f64(),
        rss_cells(&procs),
        sim_now / (pods as f64 / 1000.0)
    );
    if idle {
        // Let the last status writes and room reports settle, then a quiet minute.
        tokio::time::sleep(Duration::from_secs(30)).await;
        let before: Vec<f64> = procs.iter().map(|p| p.cpu_secs()).collect();
        tokio::time::sleep(Duration::from_secs(60)).await;
        let cells: Vec<String> = procs
            .iter()
            .zip(before)
            .map(|(p, b)| format!("{}: {:.2} CPU-s/min", p.name, p.cpu_secs() - b))
            .collect();
        println!("| {scenario}, idle minute | {} |", cells.join("; "));
    }
}

/// One member, no hub: an InPlaceSet of `pods` pods, the agent's RSS and time to all ready.
async fn member_alone(scenario: &str, pods: usize) {
    let dir = temp_dir(scenario);
    let per_node = (pods / 60 + 20).max(110) as u32;
    let sim = start_sim(&dir, &sim_config(&[("dca", "DCA")], per_node));
    let member = client(&dir, "dca").await;
    install(&member, Part::Member).await;
    let agent = start_controller(&dir, "member", "dca");
    let set: InPlaceSet = serde_json::from_value(json!({
        "apiVersion": "apps.cafe.io/v1alpha1", "kind": "InPlaceSet",
        "metadata": {"name": "fleet", "namespace": "default"},
        "spec": {"replicas": pods, "selector": {"matchLabels": {"app": "fleet"}},
                 "template": {"metadata": {"labels": {"app": "fleet"}},
                              "spec": {"containers": [{"name": "app", "image": "fleet:1",
                                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}}},
    }))
    .expect("an InPlaceSet");
    let sets: Api<InPlaceSet> = Api::default_namespaced(member.clone());
    create_when_served(&sets, &set).await;
    let ready = wait_all(
        "pods ready",
        Duration::from_secs(2),
        Duration::from_secs(1200),
        || async {
            let ready = sets
                .get_status("fleet")
                .await
                .ok()
                .and_then(|s| s.status)
                .map_or(0, |s| s.ready_replicas as usize);
            (ready.min(pods), pods)
        },
    )
    .await;
    let (_, sim_now) = sim.rss_mib();
    println!(
        "| {scenario} | 1 InPlaceSet x {pods} | {pods} | {:.0} s | {} | {:.0} MiB |",
        ready.as_secs_f64(),
        rss_cells(&[&agent, &sim]),
        sim_now / (pods as f64 / 1000.0)
    );
}

async fn scenario(name: &str) {
    match name {
        "small" => fleet(name, 100, 2, false).await,
        "wide" => fleet(name, 100, 40, false).await,
        "many" => fleet(name, 1000, 2, false).await,
        "idle" => fleet(name, 100, 50, true).await,
        "huge" => fleet(name, 10_000, 2, false).await,
        "member10k" => member_alone(name, 10_000).await,
        other => {
            panic!("unknown scenario {other}: small, wide, many, idle, huge, member10k or all")
        }
    }
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; the first other argument names the scenario.
    let chosen = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_else(|| "small".into());
    println!(
        "| scenario | CafeDeployments x replicas | pods | created in | all available after the last | RSS (peak, now) | sim RSS / 1,000 pods |"
    );
    println!("|---|---|---|---|---|---|---|");
    if chosen == "all" {
        for name in ["small", "wide", "many", "idle", "member10k", "huge"] {
            scenario(name).await;
        }
    } else {
        scenario(&chosen).await;
    }
}
