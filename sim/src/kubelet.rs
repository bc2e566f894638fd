//! The kubelet of every node of a simulated cluster.
//!
//! For each pod bound to a node it plays sandbox, container runtime and status manager: gives the
//! pod an IP for life, starts its containers after a configurable delay, reports containerStatuses
//! (image, imageID, containerID, ready, started, restartCount, state, lastState), computes the pod
//! phase and its PodReadyToStartContainers / Initialized / ContainersReady / Ready conditions (Ready
//! also waits for every readiness gate), restarts containers in place when their image changes,
//! applies in-place resizes, and completes graceful deletion. Images ending in `-unready` run but
//! never become ready; images ending in `-crash` crash-loop with a growing back-off.
//!
//! Like the scheduler it is driven by the store's change history (an in-memory index of the pods it
//! runs, updated incrementally) plus a queue of deadlines, so a wake-up costs what changed or fell
//! due, not what exists. Status is rendered from the simulated runtime state and written only when
//! it differs from what is stored, so its own writes never loop back into more writes.
//!
//! https://kubernetes.io/docs/concepts/workloads/pods/pod-lifecycle/
//! https://kubernetes.io/docs/concepts/workloads/pods/pod-lifecycle/#pod-readiness-gate
//! https://kubernetes.io/docs/tasks/configure-pod-container/resize-container-resources/

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

// tokio's clock, so the kubelet's deadlines follow a paused test clock too.
use tokio::time::Instant;

use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use crate::config::KubeletTiming;
use crate::delete::{self, DeleteOptions, Deleted};
use crate::meta;
use crate::nodes;
use crate::pods;
use crate::scheduler::{PodEvent, record_event};
use crate::store::{ChangeKind, Inner, Store, key_of, meta_str};
use crate::write::{self, WriteOptions};

/// The kubelet's field manager and event source component.
pub const COMPONENT: &str = "kubelet";

/// Pods synced per store lock.
const CHUNK: usize = 256;

/// How many history entries one read takes.
const CHANGES_PER_READ: usize = 4096;

/// The shortest crash-loop step, so that `startMillis: 0` cannot spin.
const MIN_CRASH_MILLIS: u64 = 50;

/// The crash-loop back-off cap for the default start delay (300 ms); real kubelets cap at 5 min,
/// which would make tests and demos wait for nothing.
const BACKOFF_CAP_MILLIS: u64 = 10_000;

/// Where pods of nodes without a podCIDR get their IPs: 10.128.0.0/10, apart from the
/// 10.244.0.0/16-and-up node ranges.
const FALLBACK_POOL: (u32, u32) = (0x0A80_0000, 1 << 22);

type Key = (String, String);

/// How a container is doing in the simulated runtime.
#[derive(Debug, Clone, PartialEq)]
enum Phase {
    /// Waiting to (re)start: ContainerCreating until the deadline.
    Creating { until: Instant },
    /// Running; images ending in `-crash` exit at `crash_at`.
    Running { crash_at: Option<Instant> },
    /// CrashLoopBackOff until the deadline, then restarted.
    BackOff { until: Instant, delay: Duration },
    /// Stopped for good (pod deletion, or a crash under restartPolicy Never).
    Terminated {
        exit_code: i64,
        reason: &'static str,
        finished_at: String,
    },
}

/// One container of a pod, as the simulated runtime sees it.
#[derive(Debug, Clone)]
struct ContainerRt {
    name: String,
    /// The image the next start runs (the spec's image when last synced).
    spec_image: String,
    /// The image of the current (or last) instance: what the status reports.
    image: String,
    container_id: Option<String>,
    started_at: String,
    restart_count: i64,
    /// Instances started so far; every start after the first is a restart.
    starts: u64,
    crashes: u32,
    last_terminated: Option<Value>,
    phase: Phase,
    /// Resources applied to the container (spec.containers[].resources when last applied).
    resources: Value,
    backoff_reported: bool,
}

/// Graceful deletion progress.
#[derive(Debug, Clone, PartialEq)]
enum Deletion {
    /// Containers were told to stop; they are gone at the deadline.
    Stopping { until: Instant },
    /// Containers stopped; the kubelet asked the API to finish the deletion.
    Done,
}

/// A pod the kubelet runs.
#[derive(Debug, Clone)]
struct PodRt {
    uid: String,
    node: String,
    ip: Option<u32>,
    host_ip: String,
    start_time: String,
    /// Init containers (if any) complete when the main containers first start.
    init_until: Instant,
    init_done: Option<(String, String)>,
    containers: Vec<ContainerRt>,
    deletion: Option<Deletion>,
    /// The timer currently queued for this pod.
    deadline: Option<Instant>,
    /// The resourceVersion of the kubelet's own last status write: its echo in the change
    /// history needs no sync.
    written_rv: Option<u64>,
}

/// An event to record about a pod.
#[derive(Debug, Clone, PartialEq)]
struct KEvent {
    type_: &'static str,
    reason: &'static str,
    message: String,
    container: Option<String>,
}

/// What one sync decided.
#[derive(Debug)]
struct SyncOutput {
    status: Value,
    events: Vec<KEvent>,
    /// Ask the API to finish the graceful deletion now.
    delete: bool,
}

fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

fn is_unready_image(image: &str) -> bool {
    image.ends_with("-unready")
}

fn is_crash_image(image: &str) -> bool {
    image.ends_with("-crash")
}

/// "cafe-sim://" and 64 hex digits, like containerd's IDs.
fn new_container_id() -> String {
    format!(
        "cafe-sim://{:032x}{:032x}",
        rand::random::<u128>(),
        rand::random::<u128>()
    )
}

/// The repository part of an image reference, normalised as container runtimes report it
/// ("nginx:1" -> "docker.io/library/nginx", "ghcr.io/a/b:2" -> "ghcr.io/a/b").
fn image_repository(image: &str) -> String {
    let name = image.split('@').next().unwrap_or(image);
    let name = match name.rfind(':') {
        Some(i) if !name[i..].contains('/') => &name[..i],
        _ => name,
    };
    match name.split_once('/') {
        None => format!("docker.io/library/{name}"),
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            name.to_string()
        }
        Some(_) => format!("docker.io/{name}"),
    }
}

/// imageID: "<repository>@sha256:<hash of the image reference>".
pub fn image_id(image: &str) -> String {
    format!(
        "{}@sha256:{}",
        image_repository(image),
        nodes::sha256_hex(image)
    )
}

/// A duration as Go's time.Duration prints it in kubelet messages ("300ms", "2.5s", "1m20s").
fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let minutes = ms / 60_000;
    let rest = ms % 60_000;
    let secs = if rest.is_multiple_of(1000) {
        format!("{}s", rest / 1000)
    } else {
        format!("{}", rest as f64 / 1000.0) + "s"
    };
    if minutes > 0 {
        format!("{minutes}m{secs}")
    } else {
        secs
    }
}

/// The crash-loop back-off after `crashes` crashes: start-delay based, doubling, capped small.
fn backoff(timing: &KubeletTiming, crashes: u32) -> Duration {
    let base = timing.start_millis.max(MIN_CRASH_MILLIS);
    let cap = base.max(BACKOFF_CAP_MILLIS.min(base.saturating_mul(32)));
    let shift = crashes.saturating_sub(1).min(16);
    millis(base.saturating_mul(1 << shift).min(cap))
}

fn spec_list(pod: &Value, field: &str) -> Vec<Value> {
    pod.pointer(&format!("/spec/{field}"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn str_of<'a>(v: &'a Value, field: &str) -> &'a str {
    v.get(field).and_then(Value::as_str).unwrap_or("")
}

/// Whether a resize of `old` to `new` restarts the container: a changed resource whose
/// resizePolicy says RestartContainer.
fn resize_needs_restart(container_spec: &Value, old: &Value, new: &Value) -> bool {
    let policies = container_spec
        .get("resizePolicy")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    ["cpu", "memory"].iter().any(|res| {
        let changed = ["requests", "limits"].iter().any(|kind| {
            old.pointer(&format!("/{kind}/{res}")) != new.pointer(&format!("/{kind}/{res}"))
        });
        changed
            && policies.iter().any(|p| {
                str_of(p, "resourceName") == *res
                    && str_of(p, "restartPolicy") == "RestartContainer"
            })
    })
}

impl ContainerRt {
    /// A container not created yet.
    fn fresh(spec: &Value, start_at: Instant) -> Self {
        let image = str_of(spec, "image").to_string();
        ContainerRt {
            name: str_of(spec, "name").to_string(),
            spec_image: image.clone(),
            image,
            container_id: None,
            started_at: String::new(),
            restart_count: 0,
            starts: 0,
            crashes: 0,
            last_terminated: None,
            phase: Phase::Creating { until: start_at },
            resources: spec.get("resources").cloned().unwrap_or(json!({})),
            backoff_reported: false,
        }
    }

    /// Picks a container up from a status written earlier (after the kubelet lost its index,
    /// e.g. when the change history was compacted), so restarts and IPs survive.
    fn adopt(spec: &Value, status: &Value, now: Instant, timing: &KubeletTiming) -> Self {
        let mut c = ContainerRt::fresh(spec, now + millis(timing.start_millis));
        let image = str_of(status, "image");
        if !image.is_empty() {
            c.image = image.to_string();
        }
        c.container_id = status
            .get("containerID")
            .and_then(Value::as_str)
            .map(String::from);
        c.restart_count = status
            .get("restartCount")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        c.last_terminated = status
            .pointer("/lastState/terminated")
            .cloned()
            .map(|t| json!({"terminated": t}));
        if let Some(r) = status.get("resources") {
            c.resources = r.clone();
        }
        if let Some(running) = status.pointer("/state/running") {
            c.started_at = str_of(running, "startedAt").to_string();
            c.starts = 1;
            // The running instance keeps running its image; a differing spec image restarts it.
            c.spec_image = c.image.clone();
            let crash_at = is_crash_image(&c.image)
                .then(|| now + millis(timing.start_millis.max(MIN_CRASH_MILLIS)));
            c.phase = Phase::Running { crash_at };
        } else if status
            .pointer("/state/waiting/reason")
            .and_then(Value::as_str)
            == Some("CrashLoopBackOff")
        {
            c.starts = 1;
            c.crashes = 1;
            c.backoff_reported = true;
            let delay = backoff(timing, 1);
            c.phase = Phase::BackOff {
                until: now + delay,
                delay,
            };
        } else if c.container_id.is_some() {
            c.starts = 1;
        }
        c
    }

    fn deadline(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Creating { until } | Phase::BackOff { until, .. } => Some(*until),
            Phase::Running { crash_at } => *crash_at,
            Phase::Terminated { .. } => None,
        }
    }

    fn ready(&self) -> bool {
        matches!(self.phase, Phase::Running { .. })
            && !is_unready_image(&self.image)
            && !is_crash_image(&self.image)
    }

    /// Records the current instance as terminated (lastState) with the given exit.
    fn terminate_instance(&mut self, exit_code: i64, reason: &str) {
        let mut t = json!({
            "exitCode": exit_code,
            "reason": reason,
            "startedAt": self.started_at,
            "finishedAt": meta::now(),
        });
        if let Some(id) = &self.container_id {
            t["containerID"] = json!(id);
        }
        self.last_terminated = Some(json!({"terminated": t}));
    }

    /// Kills a running instance so that the spec's definition starts after `delay`
    /// (in-place image change, or a resize whose policy is RestartContainer).
    fn restart(&mut self, now: Instant, delay: Duration) -> bool {
        let was_running = matches!(self.phase, Phase::Running { .. });
        if was_running {
            self.terminate_instance(0, "Completed");
        }
        if !matches!(self.phase, Phase::Terminated { .. }) {
            self.phase = Phase::Creating { until: now + delay };
        }
        was_running
    }

    /// Starts a new instance at `at` (the deadline that fell due, so catching up is exact).
    fn start(&mut self, at: Instant, timing: &KubeletTiming, events: &mut Vec<KEvent>) {
        let quiet = self.crashes > 0 && self.spec_image == self.image;
        if self.starts > 0 {
            self.restart_count += 1;
        }
        self.starts += 1;
        self.image = self.spec_image.clone();
        self.container_id = Some(new_container_id());
        self.started_at = meta::now();
        let crash_at = is_crash_image(&self.image)
            .then(|| at + millis(timing.start_millis.max(MIN_CRASH_MILLIS)));
        self.phase = Phase::Running { crash_at };
        if quiet {
            // A crash-loop restart: the BackOff event already tells the story (real kubelets
            // aggregate the repeats into one event with a count).
            return;
        }
        let c = Some(self.name.clone());
        events.push(KEvent {
            type_: "Normal",
            reason: "Pulled",
            message: format!(
                "Container image \"{}\" already present on machine",
                self.image
            ),
            container: c.clone(),
        });
        events.push(KEvent {
            type_: "Normal",
            reason: "Created",
            message: format!("Created container: {}", self.name),
            container: c.clone(),
        });
        events.push(KEvent {
            type_: "Normal",
            reason: "Started",
            message: format!("Started container {}", self.name),
            container: c,
        });
    }

    /// Moves the container along every transition due by `now`.
    fn advance(
        &mut self,
        now: Instant,
        timing: &KubeletTiming,
        restart_always: bool,
        pod_ref: &str,
        events: &mut Vec<KEvent>,
    ) {
        // Bounded: every step moves a deadline forward by at least MIN_CRASH_MILLIS.
        for _ in 0..64 {
            match self.phase.clone() {
                Phase::Creating { until } | Phase::BackOff { until, .. } if until <= now => {
                    self.start(until, timing, events);
                }
                Phase::Running { crash_at: Some(at) } if at <= now => {
                    self.terminate_instance(1, "Error");
                    self.crashes += 1;
                    if !restart_always {
                        self.phase = Phase::Terminated {
                            exit_code: 1,
                            reason: "Error",
                            finished_at: meta::now(),
                        };
                        self.last_terminated = None;
                        continue;
                    }
                    let delay = backoff(timing, self.crashes);
                    self.phase = Phase::BackOff {
                        until: at + delay,
                        delay,
                    };
                    if !self.backoff_reported {
                        self.backoff_reported = true;
                        events.push(KEvent {
                            type_: "Warning",
                            reason: "BackOff",
                            message: format!(
                                "Back-off restarting failed container {} in pod {pod_ref}",
                                self.name
                            ),
                            container: Some(self.name.clone()),
                        });
                    }
                }
                _ => return,
            }
        }
        // Far behind (the process was suspended): resume from now.
        if let Phase::BackOff { delay, .. } = self.phase {
            self.phase = Phase::BackOff {
                until: now + delay,
                delay,
            };
        }
    }

    /// containerStatuses[] entry.
    fn render(&self, pod_ref: &str, deleting: bool, initialized: bool) -> Value {
        let state = match &self.phase {
            Phase::Creating { .. } => {
                let reason = if initialized {
                    "ContainerCreating"
                } else {
                    "PodInitializing"
                };
                json!({"waiting": {"reason": reason}})
            }
            Phase::Running { .. } => json!({"running": {"startedAt": self.started_at}}),
            Phase::BackOff { delay, .. } => json!({"waiting": {
                "reason": "CrashLoopBackOff",
                "message": format!(
                    "back-off {} restarting failed container={} pod={pod_ref}",
                    go_duration(*delay),
                    self.name
                ),
            }}),
            Phase::Terminated {
                exit_code,
                reason,
                finished_at,
            } => {
                let mut t = json!({
                    "exitCode": exit_code,
                    "reason": reason,
                    "startedAt": self.started_at,
                    "finishedAt": finished_at,
                });
                if let Some(id) = &self.container_id {
                    t["containerID"] = json!(id);
                }
                json!({"terminated": t})
            }
        };
        let created = self.starts > 0;
        let mut s = Map::new();
        s.insert("name".into(), json!(self.name));
        s.insert("image".into(), json!(self.image));
        s.insert(
            "imageID".into(),
            json!(if created {
                image_id(&self.image)
            } else {
                String::new()
            }),
        );
        if let Some(id) = self.container_id.as_ref().filter(|_| created) {
            s.insert("containerID".into(), json!(id));
        }
        s.insert("ready".into(), json!(self.ready() && !deleting));
        s.insert(
            "started".into(),
            json!(matches!(self.phase, Phase::Running { .. })),
        );
        s.insert("restartCount".into(), json!(self.restart_count));
        s.insert("state".into(), state);
        s.insert(
            "lastState".into(),
            self.last_terminated.clone().unwrap_or(json!({})),
        );
        if self.resources.as_object().is_some_and(|m| !m.is_empty()) {
            s.insert("resources".into(), self.resources.clone());
            if let Some(req) = self.resources.get("requests") {
                s.insert("allocatedResources".into(), req.clone());
            }
        }
        Value::Object(s)
    }
}

/// A pod condition to set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cond {
    pub status: &'static str,
    pub reason: Option<String>,
    pub message: Option<String>,
}

impl Cond {
    fn t() -> Self {
        Cond {
            status: "True",
            reason: None,
            message: None,
        }
    }

    fn f(reason: &str, message: Option<String>) -> Self {
        Cond {
            status: "False",
            reason: Some(reason.to_string()),
            message,
        }
    }
}

/// ContainersReady, as the kubelet's GenerateContainersReadyCondition words it: False with
/// "containers with unready status: [a b]" while any container is not ready; PodCompleted once the
/// pod finished.
pub fn containers_ready_condition(statuses: &[(String, bool)], completed: bool) -> Cond {
    if completed {
        return Cond::f("PodCompleted", None);
    }
    let unready: Vec<&str> = statuses
        .iter()
        .filter(|(_, ready)| !ready)
        .map(|(name, _)| name.as_str())
        .collect();
    if unready.is_empty() {
        Cond::t()
    } else {
        Cond::f(
            "ContainersNotReady",
            Some(format!(
                "containers with unready status: [{}]",
                unready.join(" ")
            )),
        )
    }
}

/// Ready = ContainersReady AND every spec.readinessGates[].conditionType has a True condition in
/// status.conditions, with GeneratePodReadyCondition's reasons and messages.
/// https://kubernetes.io/docs/concepts/workloads/pods/pod-lifecycle/#pod-readiness-gate
pub fn pod_ready_condition(pod: &Value, containers_ready: &Cond) -> Cond {
    if containers_ready.status != "True" {
        return containers_ready.clone();
    }
    let conditions = pod
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut unready = vec![];
    for gate in spec_list(pod, "readinessGates") {
        let t = str_of(&gate, "conditionType");
        match conditions.iter().find(|c| c["type"] == t) {
            None => unready.push(format!(
                "corresponding condition of pod readiness gate \"{t}\" does not exist."
            )),
            Some(c) if c["status"] != "True" => unready.push(format!(
                "the status of pod readiness gate \"{t}\" is not \"True\", but {}",
                c["status"].as_str().unwrap_or("")
            )),
            Some(_) => {}
        }
    }
    if unready.is_empty() {
        Cond::t()
    } else {
        Cond::f("ReadinessGatesNotReady", Some(unready.join(", ")))
    }
}

/// Sets a condition unless it already says exactly this (which also spares the clock read).
fn set_cond(status_holder: &mut Value, type_: &str, c: &Cond) {
    let same = status_holder
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|x| x["type"] == type_))
        .is_some_and(|x| {
            x["status"] == c.status
                && x.get("reason").and_then(Value::as_str) == c.reason.as_deref()
                && x.get("message").and_then(Value::as_str) == c.message.as_deref()
                && x.get("lastProbeTime") == Some(&Value::Null)
                && x.get("lastTransitionTime").is_some()
        });
    if same {
        return;
    }
    pods::set_condition(
        status_holder,
        type_,
        c.status,
        c.reason.as_deref(),
        c.message.as_deref(),
    );
}

impl PodRt {
    /// The runtime state for a pod newly seen on `node_name` (fresh, or adopted from its status).
    fn new(
        pod: &Value,
        node_name: &str,
        host_ip: &str,
        ip: Option<u32>,
        now: Instant,
        timing: &KubeletTiming,
    ) -> Self {
        let start_at = now + millis(timing.start_millis);
        let statuses = pod
            .pointer("/status/containerStatuses")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let containers = spec_list(pod, "containers")
            .iter()
            .map(
                |spec| match statuses.iter().find(|s| s["name"] == spec["name"]) {
                    Some(status) => ContainerRt::adopt(spec, status, now, timing),
                    None => ContainerRt::fresh(spec, start_at),
                },
            )
            .collect::<Vec<_>>();
        let already_started = containers.iter().any(|c| c.starts > 0);
        let start_time = meta::get_str(pod, "/status/startTime")
            .map(String::from)
            .unwrap_or_else(meta::now);
        PodRt {
            uid: meta_str(pod, "uid").to_string(),
            node: node_name.to_string(),
            ip,
            host_ip: host_ip.to_string(),
            init_until: start_at,
            init_done: already_started.then(|| (start_time.clone(), start_time.clone())),
            start_time,
            containers,
            deletion: None,
            deadline: None,
            written_rv: None,
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        if let Some(Deletion::Stopping { until }) = &self.deletion {
            return Some(*until);
        }
        if self.deletion.is_some() {
            return None;
        }
        let init = self.init_done.is_none().then_some(self.init_until);
        self.containers
            .iter()
            .filter_map(ContainerRt::deadline)
            .chain(init)
            .min()
    }

    /// Brings the runtime state in line with `pod` as of `now` and renders the status the kubelet
    /// would report. Pure apart from timestamps and container IDs.
    fn sync(&mut self, pod: &Value, now: Instant, timing: &KubeletTiming) -> SyncOutput {
        let mut events = vec![];
        let pod_ref = format!(
            "{}_{}({})",
            meta_str(pod, "name"),
            meta_str(pod, "namespace"),
            self.uid
        );
        let restart_always =
            meta::get_str(pod, "/spec/restartPolicy").unwrap_or("Always") != "Never";
        let specs = spec_list(pod, "containers");
        // Containers cannot be added or removed from a pod; keep the runtime list aligned anyway.
        for spec in &specs {
            if !self
                .containers
                .iter()
                .any(|c| c.name == str_of(spec, "name"))
            {
                self.containers
                    .push(ContainerRt::fresh(spec, now + millis(timing.start_millis)));
            }
        }
        let deleting = meta::is_deleting(pod);
        if !deleting {
            if self.init_done.is_none() && self.init_until <= now {
                self.init_done = Some((self.start_time.clone(), meta::now()));
            }
            for spec in &specs {
                let Some(c) = self
                    .containers
                    .iter_mut()
                    .find(|c| c.name == str_of(spec, "name"))
                else {
                    continue;
                };
                let image = str_of(spec, "image");
                if !image.is_empty() && image != c.spec_image {
                    // In-place image change: the kubelet kills the container and starts the new
                    // definition; the pod keeps its name, UID, node and IP.
                    // https://kubernetes.io/docs/concepts/workloads/pods/#pod-update-and-replacement
                    c.spec_image = image.to_string();
                    if c.restart(now, millis(timing.restart_millis)) {
                        events.push(KEvent {
                            type_: "Normal",
                            reason: "Killing",
                            message: format!(
                                "Container {} definition changed, will be restarted",
                                c.name
                            ),
                            container: Some(c.name.clone()),
                        });
                    }
                }
                let wanted = spec.get("resources").cloned().unwrap_or(json!({}));
                if wanted != c.resources {
                    // In-place resize: applied without a restart unless resizePolicy asks for one.
                    if resize_needs_restart(spec, &c.resources, &wanted) {
                        c.restart(now, millis(timing.restart_millis));
                    }
                    c.resources = wanted;
                }
                c.advance(now, timing, restart_always, &pod_ref, &mut events);
            }
        }
        let mut delete = false;
        if deleting {
            match &self.deletion {
                None => {
                    // Graceful termination: containers get SIGTERM and stop being ready; they are
                    // gone after the grace period, shortened here to the start delay so tests stay
                    // fast (the grace period only matters to hooks, which the sim does not run).
                    // https://kubernetes.io/docs/concepts/workloads/pods/pod-lifecycle/#pod-termination
                    let grace_ms = meta::get_i64(pod, "/metadata/deletionGracePeriodSeconds")
                        .unwrap_or(30)
                        .max(0) as u64
                        * 1000;
                    let delay = grace_ms.min(timing.start_millis);
                    self.deletion = Some(Deletion::Stopping {
                        until: now + millis(delay),
                    });
                    for c in &self.containers {
                        if matches!(c.phase, Phase::Running { .. }) {
                            events.push(KEvent {
                                type_: "Normal",
                                reason: "Killing",
                                message: format!("Stopping container {}", c.name),
                                container: Some(c.name.clone()),
                            });
                        }
                    }
                }
                Some(Deletion::Stopping { .. }) | Some(Deletion::Done) => {}
            }
            if let Some(Deletion::Stopping { until }) = self.deletion
                && until <= now
            {
                let finished = meta::now();
                for c in &mut self.containers {
                    if !matches!(c.phase, Phase::Terminated { .. }) {
                        c.phase = Phase::Terminated {
                            exit_code: 0,
                            reason: "Completed",
                            finished_at: finished.clone(),
                        };
                    }
                }
                self.deletion = Some(Deletion::Done);
            }
            // Confirm the deletion until the API has recorded it (a zero grace period).
            delete = self.deletion == Some(Deletion::Done)
                && meta::get_i64(pod, "/metadata/deletionGracePeriodSeconds") != Some(0);
        }
        let status = self.render(pod, &pod_ref, deleting);
        SyncOutput {
            status,
            events,
            delete,
        }
    }

    /// The pod phase, following the kubelet's getPhase.
    /// https://kubernetes.io/docs/concepts/workloads/pods/pod-lifecycle/#pod-phase
    fn phase(&self, restart_always: bool, initialized: bool) -> &'static str {
        if !initialized {
            return "Pending";
        }
        let (mut waiting, mut running, mut stopped, mut failed) = (0, 0, 0, 0);
        for c in &self.containers {
            match &c.phase {
                Phase::Running { .. } => running += 1,
                Phase::Creating { .. } if c.starts == 0 => waiting += 1,
                Phase::Terminated { exit_code, .. } => {
                    stopped += 1;
                    if *exit_code != 0 {
                        failed += 1;
                    }
                }
                Phase::Creating { .. } | Phase::BackOff { .. } => stopped += 1,
            }
        }
        let all_terminated = self
            .containers
            .iter()
            .all(|c| matches!(c.phase, Phase::Terminated { .. }));
        if waiting > 0 {
            "Pending"
        } else if running > 0 {
            "Running"
        } else if stopped > 0 && all_terminated && (!restart_always || self.deletion.is_some()) {
            if failed > 0 { "Failed" } else { "Succeeded" }
        } else {
            "Running"
        }
    }

    fn render(&self, pod: &Value, pod_ref: &str, deleting: bool) -> Value {
        let restart_always =
            meta::get_str(pod, "/spec/restartPolicy").unwrap_or("Always") != "Never";
        let initialized = self.init_done.is_some() || spec_list(pod, "initContainers").is_empty();
        let phase = self.phase(restart_always, initialized);
        let completed = matches!(phase, "Succeeded" | "Failed");
        let mut holder = json!({"status": pod.get("status").cloned().unwrap_or(json!({}))});
        let statuses: Vec<Value> = self
            .containers
            .iter()
            .map(|c| c.render(pod_ref, deleting, initialized))
            .collect();
        let readiness: Vec<(String, bool)> = statuses
            .iter()
            .map(|s| (str_of(s, "name").to_string(), s["ready"] == true))
            .collect();
        {
            let status = meta::ensure_object(&mut holder["status"]);
            status.insert("phase".into(), json!(phase));
            status.insert("hostIP".into(), json!(self.host_ip));
            status.insert("hostIPs".into(), json!([{"ip": self.host_ip}]));
            match self.ip {
                Some(ip) => {
                    let ip = Ipv4Addr::from(ip).to_string();
                    status.insert("podIP".into(), json!(ip));
                    status.insert("podIPs".into(), json!([{"ip": ip}]));
                }
                None => {
                    status.remove("podIP");
                    status.remove("podIPs");
                }
            }
            status.insert("startTime".into(), json!(self.start_time));
            status.insert("containerStatuses".into(), json!(statuses));
            let inits = spec_list(pod, "initContainers");
            if !inits.is_empty() {
                let list: Vec<Value> = inits
                    .iter()
                    .map(|spec| render_init(spec, self.init_done.as_ref()))
                    .collect();
                status.insert("initContainerStatuses".into(), json!(list));
            }
            // The resize (if any) has been applied to every container.
            status.remove("resize");
        }
        // The sandbox (and with it the pod network) is torn down once the containers are gone.
        let sandbox = Cond {
            status: if self.deletion == Some(Deletion::Done) {
                "False"
            } else {
                "True"
            },
            reason: None,
            message: None,
        };
        set_cond(&mut holder, "PodReadyToStartContainers", &sandbox);
        let init_cond = if initialized {
            Cond::t()
        } else {
            let names: Vec<String> = spec_list(pod, "initContainers")
                .iter()
                .map(|c| str_of(c, "name").to_string())
                .collect();
            Cond::f(
                "ContainersNotInitialized",
                Some(format!(
                    "containers with incomplete status: [{}]",
                    names.join(" ")
                )),
            )
        };
        set_cond(&mut holder, "Initialized", &init_cond);
        let containers_ready = containers_ready_condition(&readiness, completed);
        // Readiness gates are read from the pod as stored (others set those conditions).
        let ready = pod_ready_condition(pod, &containers_ready);
        set_cond(&mut holder, "ContainersReady", &containers_ready);
        set_cond(&mut holder, "Ready", &ready);
        holder["status"].take()
    }
}

/// initContainerStatuses[] entry: waiting until the pod initialises, then terminated Completed.
fn render_init(spec: &Value, done: Option<&(String, String)>) -> Value {
    let image = str_of(spec, "image");
    let state = match done {
        Some((started, finished)) => json!({"terminated": {
            "exitCode": 0,
            "reason": "Completed",
            "startedAt": started,
            "finishedAt": finished,
        }}),
        None => json!({"waiting": {"reason": "PodInitializing"}}),
    };
    json!({
        "name": str_of(spec, "name"),
        "image": image,
        "imageID": if done.is_some() { image_id(image) } else { String::new() },
        "ready": done.is_some(),
        "started": false,
        "restartCount": 0,
        "state": state,
        "lastState": {},
    })
}

/// Where a node's pods get their IPs.
#[derive(Debug, Clone)]
struct NodeRt {
    host_ip: String,
    /// spec.podCIDR as (first address, size).
    cidr: Option<(u32, u32)>,
    cursor: u32,
}

fn parse_cidr(text: &str) -> Option<(u32, u32)> {
    let (addr, prefix) = text.split_once('/')?;
    let addr: Ipv4Addr = addr.parse().ok()?;
    let prefix: u32 = prefix.parse().ok()?;
    if !(8..=30).contains(&prefix) {
        return None;
    }
    let size = 1u32 << (32 - prefix);
    Some((u32::from(addr) & !(size - 1), size))
}

/// Pod IPs in use in the cluster: never handed out twice while a pod holds one.
#[derive(Debug, Default)]
struct IpPool {
    used: HashSet<u32>,
    fallback_cursor: u32,
}

impl IpPool {
    /// The next free address of a range, skipping network, gateway (.1) and broadcast; ranges are
    /// walked round-robin so a released IP is not reused at once.
    fn take_from(&mut self, base: u32, size: u32, cursor: &mut u32) -> Option<u32> {
        let usable = size.checked_sub(3)?;
        for _ in 0..usable {
            let candidate = base + 2 + (*cursor % usable);
            *cursor = (*cursor + 1) % usable;
            if self.used.insert(candidate) {
                return Some(candidate);
            }
        }
        None
    }

    fn allocate(&mut self, node: Option<&mut NodeRt>) -> Option<u32> {
        if let Some(node) = node
            && let Some((base, size)) = node.cidr
        {
            let mut cursor = node.cursor;
            let got = self.take_from(base, size, &mut cursor);
            node.cursor = cursor;
            if got.is_some() {
                return got;
            }
        }
        let (base, size) = FALLBACK_POOL;
        let mut cursor = self.fallback_cursor;
        let got = self.take_from(base, size, &mut cursor);
        self.fallback_cursor = cursor;
        got
    }
}

/// The kubelet's index and queues.
struct Kubelet {
    timing: KubeletTiming,
    pods_storage: String,
    nodes_storage: String,
    cursor: u64,
    nodes: HashMap<String, NodeRt>,
    pods: HashMap<Key, PodRt>,
    /// Pods with a change or a due deadline, to sync.
    dirty: BTreeSet<Key>,
    timers: BTreeSet<(Instant, Key)>,
    /// Pods bound to a node that does not exist (yet), by node.
    orphans: HashMap<String, HashSet<Key>>,
    ips: IpPool,
    /// Nodes (by uid) whose status the kubelet completed; done once per node.
    readied: HashSet<String>,
    nodes_to_ready: BTreeSet<String>,
}

impl Kubelet {
    fn new(store: &Store, timing: KubeletTiming) -> Self {
        let registry = store.registry();
        Kubelet {
            timing,
            pods_storage: registry.core("pods").storage.clone(),
            nodes_storage: registry.core("nodes").storage.clone(),
            cursor: 0,
            nodes: HashMap::new(),
            pods: HashMap::new(),
            dirty: BTreeSet::new(),
            timers: BTreeSet::new(),
            orphans: HashMap::new(),
            ips: IpPool::default(),
            readied: HashSet::new(),
            nodes_to_ready: BTreeSet::new(),
        }
    }

    /// Re-reads everything (at start, and when the change history was compacted). Runtime state
    /// of pods that still exist is kept; the rest is dropped.
    fn relist(&mut self, store: &Store) {
        let (rv, nodes, pods) = store.read(|inner| {
            (
                inner.rv(),
                inner.list(&self.nodes_storage, None),
                inner.list(&self.pods_storage, None),
            )
        });
        self.cursor = rv;
        let node_names: HashSet<String> = nodes
            .iter()
            .map(|n| meta_str(n, "name").to_string())
            .collect();
        self.nodes.retain(|name, _| node_names.contains(name));
        for node in &nodes {
            self.apply_node(ChangeKind::Added, node);
        }
        let keys: HashSet<Key> = pods.iter().map(|p| key_of(p)).collect();
        let gone: Vec<Key> = self
            .pods
            .keys()
            .filter(|k| !keys.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            self.forget(&key);
        }
        for pod in &pods {
            self.apply_pod(ChangeKind::Added, pod, 0);
        }
    }

    fn drain(&mut self, store: &Store) {
        loop {
            let batch = store.read(|inner| inner.changes_since(self.cursor, CHANGES_PER_READ));
            let Some(batch) = batch else {
                tracing::debug!("kubelet: change history compacted; relisting");
                self.relist(store);
                continue;
            };
            let Some(last) = batch.last() else { return };
            self.cursor = last.rv;
            for change in &batch {
                if change.storage == self.pods_storage {
                    self.apply_pod(change.kind, &change.object(), change.rv);
                } else if change.storage == self.nodes_storage {
                    self.apply_node(change.kind, &change.object());
                }
            }
        }
    }

    fn apply_node(&mut self, kind: ChangeKind, node: &Value) {
        let name = meta_str(node, "name").to_string();
        if kind == ChangeKind::Deleted {
            // The pods stay (as after a real node failure) until someone deletes them.
            self.nodes.remove(&name);
            return;
        }
        let uid = meta_str(node, "uid").to_string();
        if !self.readied.contains(&uid) && nodes::ensure_node_ready(node).is_some() {
            self.nodes_to_ready.insert(name.clone());
        }
        let host_ip = nodes::internal_ip(node).unwrap_or("").to_string();
        let cidr = meta::get_str(node, "/spec/podCIDR").and_then(parse_cidr);
        let entry = self.nodes.entry(name.clone()).or_insert(NodeRt {
            host_ip: String::new(),
            cidr: None,
            cursor: 0,
        });
        entry.host_ip = host_ip;
        if entry.cidr != cidr {
            entry.cidr = cidr;
            entry.cursor = 0;
        }
        // Pods waiting for this node (and, if its address changed, pods on it) sync again.
        if let Some(waiting) = self.orphans.remove(&name) {
            self.dirty.extend(waiting);
        }
        for (key, rt) in &self.pods {
            if rt.node == name && rt.host_ip != entry.host_ip {
                self.dirty.insert(key.clone());
            }
        }
    }

    fn apply_pod(&mut self, kind: ChangeKind, pod: &Value, rv: u64) {
        let key = key_of(pod);
        if kind == ChangeKind::Deleted {
            if self
                .pods
                .get(&key)
                .is_some_and(|rt| rt.uid == meta_str(pod, "uid"))
            {
                self.forget(&key);
            }
            return;
        }
        if self
            .pods
            .get(&key)
            .is_some_and(|rt| rt.written_rv == Some(rv))
        {
            // Our own status write coming back: nothing new to react to.
            return;
        }
        let bound = meta::get_str(pod, "/spec/nodeName").is_some_and(|n| !n.is_empty());
        if bound || self.pods.contains_key(&key) {
            self.dirty.insert(key);
        }
    }

    /// Drops a pod's runtime state and releases its IP.
    fn forget(&mut self, key: &Key) {
        if let Some(rt) = self.pods.remove(key) {
            if let Some(ip) = rt.ip {
                self.ips.used.remove(&ip);
            }
            if let Some(d) = rt.deadline {
                self.timers.remove(&(d, key.clone()));
            }
        }
        self.dirty.remove(key);
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some((at, _)) = self.timers.first() {
            if *at > now {
                break;
            }
            if let Some((_, key)) = self.timers.pop_first() {
                if let Some(rt) = self.pods.get_mut(&key) {
                    rt.deadline = None;
                }
                self.dirty.insert(key);
            }
        }
    }

    fn schedule_timer(&mut self, key: &Key) {
        let Some(rt) = self.pods.get_mut(key) else {
            return;
        };
        let next = rt.next_deadline();
        if rt.deadline == next {
            return;
        }
        if let Some(old) = rt.deadline.take() {
            self.timers.remove(&(old, key.clone()));
        }
        if let Some(at) = next {
            rt.deadline = Some(at);
            self.timers.insert((at, key.clone()));
        }
    }

    /// Completes the status of Nodes created through the API without conditions.
    fn ready_nodes(&mut self, inner: &mut Inner) {
        let names = std::mem::take(&mut self.nodes_to_ready);
        let rt = inner.registry.core("nodes");
        for name in names {
            let Some(node) = inner.get(&self.nodes_storage, "", &name) else {
                continue;
            };
            let uid = meta_str(&node, "uid").to_string();
            if !self.readied.insert(uid) {
                continue;
            }
            let Some(ready) = nodes::ensure_node_ready(&node) else {
                continue;
            };
            if let Err(e) = write::commit_update(inner, &rt, &node, ready, &status_opts(), false) {
                tracing::debug!(node = %name, error = %e, "node status update failed");
            }
        }
    }

    /// Syncs one pod under the store lock: re-reads it, advances its runtime state, writes its
    /// status if it changed, records events and finishes deletions.
    fn sync_one(&mut self, inner: &mut Inner, key: &Key, now: Instant) {
        let Some(pod) = inner.get(&self.pods_storage, &key.0, &key.1) else {
            self.forget(key);
            return;
        };
        let uid = meta_str(&pod, "uid");
        if self.pods.get(key).is_some_and(|rt| rt.uid != uid) {
            // Same name, new pod: the old one's runtime state (and IP) go.
            self.forget(key);
        }
        let node_name = meta::get_str(&pod, "/spec/nodeName")
            .unwrap_or("")
            .to_string();
        if node_name.is_empty() {
            return;
        }
        if !self.pods.contains_key(key) {
            let phase = meta::get_str(&pod, "/status/phase").unwrap_or("");
            if phase == "Succeeded" || phase == "Failed" {
                // A finished pod has nothing left to run.
                return;
            }
            let Some(node) = self.nodes.get_mut(&node_name) else {
                self.orphans
                    .entry(node_name)
                    .or_default()
                    .insert(key.clone());
                return;
            };
            let host_ip = node.host_ip.clone();
            let existing = meta::get_str(&pod, "/status/podIP")
                .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
                .map(u32::from)
                .filter(|ip| self.ips.used.insert(*ip));
            let ip = existing.or_else(|| self.ips.allocate(Some(node)));
            let rt = PodRt::new(&pod, &node_name, &host_ip, ip, now, &self.timing);
            self.pods.insert(key.clone(), rt);
        }
        let host_ip = self.nodes.get(&node_name).map(|n| n.host_ip.clone());
        let Some(rt) = self.pods.get_mut(key) else {
            return;
        };
        if let Some(h) = host_ip {
            rt.host_ip = h;
        }
        let out = rt.sync(&pod, now, &self.timing);
        let node = rt.node.clone();
        let mut current = pod.clone();
        if pod.get("status") != Some(&out.status) {
            let mut new = (*pod).clone();
            new["status"] = out.status;
            let rt_pods = inner.registry.core("pods");
            match write::commit_update(inner, &rt_pods, &pod, new, &status_opts(), false) {
                Ok(updated) => {
                    rt.written_rv = meta_str(&updated, "resourceVersion").parse().ok();
                    current = updated;
                }
                Err(e) => {
                    tracing::debug!(namespace = %key.0, pod = %key.1, error = %e, "pod status update failed");
                }
            }
        }
        for ev in &out.events {
            record_event(
                inner,
                &current,
                &PodEvent {
                    type_: ev.type_,
                    reason: ev.reason,
                    message: ev.message.clone(),
                    action: ev.reason,
                    component: COMPONENT,
                    host: Some(&node),
                    field_path: ev
                        .container
                        .as_ref()
                        .map(|c| format!("spec.containers{{{c}}}")),
                },
            );
        }
        if out.delete {
            // The containers are gone: confirm the deletion with a zero grace period, as the
            // kubelet's status manager does. With finalizers left the pod stays Terminating and
            // the API removes it once they are gone.
            let rt_pods = inner.registry.core("pods");
            let opts = DeleteOptions {
                grace_period_seconds: Some(0),
                precondition_uid: Some(uid.to_string()),
                ..Default::default()
            };
            match delete::delete(inner, &rt_pods, &key.0, &key.1, &opts) {
                Ok(Deleted::Gone(_)) => {
                    self.forget(key);
                    return;
                }
                Ok(Deleted::Pending(_)) => {}
                Err(e) => {
                    tracing::debug!(namespace = %key.0, pod = %key.1, error = %e, "pod deletion failed");
                }
            }
        }
        self.schedule_timer(key);
    }

    /// Syncs every dirty pod, a chunk per store lock.
    async fn process(&mut self, store: &Store, shutdown: &CancellationToken) {
        if !self.nodes_to_ready.is_empty() {
            store.write(|inner| self.ready_nodes(inner));
        }
        while !self.dirty.is_empty() && !shutdown.is_cancelled() {
            let mut chunk = Vec::with_capacity(CHUNK);
            while chunk.len() < CHUNK {
                match self.dirty.pop_first() {
                    Some(k) => chunk.push(k),
                    None => break,
                }
            }
            store.write(|inner| {
                let now = Instant::now();
                for key in &chunk {
                    self.sync_one(inner, key, now);
                }
            });
            tokio::task::yield_now().await;
        }
    }
}

fn status_opts() -> WriteOptions {
    WriteOptions {
        manager: COMPONENT.into(),
        subresource: Some("status".into()),
        ..Default::default()
    }
}

/// Runs the kubelet of every node of one cluster until `shutdown` is cancelled.
///
/// Pods bound to a node get hostIP, a podIP unique in the cluster for their lifetime (from the
/// node's podCIDR), startTime, and containers that run after `timing.start_millis`; image changes
/// restart containers in place after `timing.restart_millis`; resizes are applied; deleted pods'
/// containers stop and the deletion is completed. Nodes created through the API without conditions
/// get a Ready status.
pub async fn run(store: Arc<Store>, timing: KubeletTiming, shutdown: CancellationToken) {
    let mut changed = store.subscribe();
    let mut kubelet = Kubelet::new(&store, timing);
    changed.borrow_and_update();
    kubelet.relist(&store);
    loop {
        kubelet.drain(&store);
        kubelet.fire_timers(Instant::now());
        kubelet.process(&store, &shutdown).await;
        let next = kubelet.timers.first().map(|(at, _)| *at);
        let sleep = async {
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            r = changed.changed() => {
                if r.is_err() {
                    return;
                }
                changed.borrow_and_update();
            }
            () = sleep => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodeGroup;
    use crate::store::Obj;
    use std::collections::BTreeMap;

    const FAST: KubeletTiming = KubeletTiming {
        start_millis: 20,
        restart_millis: 20,
    };

    fn test_pod(images: &[&str]) -> Value {
        let containers: Vec<Value> = images
            .iter()
            .enumerate()
            .map(|(i, img)| json!({"name": format!("c{i}"), "image": img}))
            .collect();
        json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
            "spec": {"nodeName": "n1", "containers": containers, "restartPolicy": "Always"},
            "status": {"phase": "Pending", "qosClass": "BestEffort"},
        })
    }

    fn cond<'a>(status: &'a Value, t: &str) -> &'a Value {
        status["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == t))
            .unwrap_or(&Value::Null)
    }

    fn with_status(pod: &Value, status: Value) -> Value {
        let mut p = pod.clone();
        p["status"] = status;
        p
    }

    #[test]
    fn starts_containers_after_the_delay() {
        let t0 = Instant::now();
        let pod = test_pod(&["nginx:1"]);
        let mut rt = PodRt::new(&pod, "n1", "172.18.0.1", Some(0x0AF4_0002), t0, &FAST);
        let out = rt.sync(&pod, t0, &FAST);
        let s = &out.status;
        assert_eq!(s["phase"], "Pending");
        assert_eq!(s["podIP"], "10.244.0.2");
        assert_eq!(s["hostIP"], "172.18.0.1");
        assert_eq!(
            s["containerStatuses"][0]["state"]["waiting"]["reason"],
            "ContainerCreating"
        );
        assert_eq!(cond(s, "Initialized")["status"], "True");
        assert_eq!(cond(s, "PodReadyToStartContainers")["status"], "True");
        assert_eq!(cond(s, "Ready")["status"], "False");
        assert!(out.events.is_empty());
        let pod = with_status(&pod, out.status);
        // Re-syncing without time passing changes nothing: no write loops.
        let again = rt.sync(&pod, t0, &FAST);
        assert_eq!(again.status, pod["status"]);
        let later = t0 + millis(25);
        let out = rt.sync(&pod, later, &FAST);
        let s = &out.status;
        assert_eq!(s["phase"], "Running");
        let c = &s["containerStatuses"][0];
        assert_eq!(c["ready"], true);
        assert_eq!(c["started"], true);
        assert_eq!(c["restartCount"], 0);
        assert_eq!(c["image"], "nginx:1");
        assert!(
            c["imageID"]
                .as_str()
                .unwrap()
                .starts_with("docker.io/library/nginx@sha256:")
        );
        assert!(
            c["containerID"]
                .as_str()
                .unwrap()
                .starts_with("cafe-sim://")
        );
        assert_eq!(cond(s, "ContainersReady")["status"], "True");
        assert_eq!(cond(s, "Ready")["status"], "True");
        let reasons: Vec<&str> = out.events.iter().map(|e| e.reason).collect();
        assert_eq!(reasons, ["Pulled", "Created", "Started"]);
        assert_eq!(rt.next_deadline(), None);
    }

    #[test]
    fn readiness_gates_hold_ready_back() {
        let mut pod = test_pod(&["nginx:1"]);
        pod["spec"]["readinessGates"] =
            json!([{"conditionType": "apps.cafe.io/InPlaceUpdateReady"}]);
        let all_ready = containers_ready_condition(&[("c0".into(), true)], false);
        let c = pod_ready_condition(&pod, &all_ready);
        assert_eq!(c.status, "False");
        assert_eq!(c.reason.as_deref(), Some("ReadinessGatesNotReady"));
        assert_eq!(
            c.message.as_deref(),
            Some(
                "corresponding condition of pod readiness gate \"apps.cafe.io/InPlaceUpdateReady\" does not exist."
            )
        );
        pod["status"]["conditions"] =
            json!([{"type": "apps.cafe.io/InPlaceUpdateReady", "status": "False"}]);
        let c = pod_ready_condition(&pod, &all_ready);
        assert_eq!(
            c.message.as_deref(),
            Some(
                "the status of pod readiness gate \"apps.cafe.io/InPlaceUpdateReady\" is not \"True\", but False"
            )
        );
        pod["status"]["conditions"][0]["status"] = json!("True");
        assert_eq!(pod_ready_condition(&pod, &all_ready).status, "True");
        let unready = containers_ready_condition(
            &[("a".into(), false), ("b".into(), true), ("c".into(), false)],
            false,
        );
        assert_eq!(
            unready.message.as_deref(),
            Some("containers with unready status: [a c]")
        );
        assert_eq!(pod_ready_condition(&pod, &unready), unready);
    }

    #[test]
    fn unready_and_crashing_images() {
        let t0 = Instant::now();
        let pod = test_pod(&["app:1-unready", "app:1-crash"]);
        let mut rt = PodRt::new(&pod, "n1", "h", None, t0, &FAST);
        let out = rt.sync(&pod, t0 + millis(25), &FAST);
        let cs = &out.status["containerStatuses"];
        assert!(cs[0]["state"]["running"].is_object());
        assert_eq!(cs[0]["ready"], false);
        assert_eq!(cs[1]["ready"], false);
        assert_eq!(out.status["phase"], "Running");
        assert_eq!(cond(&out.status, "Ready")["status"], "False");
        // The crash comes one run period later, then back-off, restart, crash again...
        let out = rt.sync(&pod, t0 + millis(20 + 50 + 1), &FAST);
        let c1 = &out.status["containerStatuses"][1];
        assert_eq!(c1["state"]["waiting"]["reason"], "CrashLoopBackOff");
        assert_eq!(c1["lastState"]["terminated"]["exitCode"], 1);
        assert_eq!(c1["lastState"]["terminated"]["reason"], "Error");
        assert!(
            out.events
                .iter()
                .any(|e| e.reason == "BackOff" && e.type_ == "Warning")
        );
        let out = rt.sync(&pod, t0 + millis(20 + 50 + 50 + 1), &FAST);
        let c1 = &out.status["containerStatuses"][1];
        assert_eq!(c1["restartCount"], 1);
        assert!(c1["state"]["running"].is_object());
        // Back-off grows and is capped.
        assert!(backoff(&FAST, 3) > backoff(&FAST, 1));
        assert_eq!(backoff(&KubeletTiming::default(), 30), millis(9600));
        assert_eq!(go_duration(millis(9600)), "9.6s");
        assert_eq!(go_duration(millis(80_000)), "1m20s");
    }

    #[test]
    fn image_change_restarts_in_place() {
        let t0 = Instant::now();
        let pod = test_pod(&["nginx:1"]);
        let mut rt = PodRt::new(&pod, "n1", "h", Some(0x0AF4_0005), t0, &FAST);
        let out = rt.sync(&pod, t0 + millis(25), &FAST);
        let first_id = out.status["containerStatuses"][0]["containerID"].clone();
        let mut pod = with_status(&pod, out.status);
        pod["spec"]["containers"][0]["image"] = json!("nginx:2");
        let t1 = t0 + millis(100);
        let out = rt.sync(&pod, t1, &FAST);
        let c = &out.status["containerStatuses"][0];
        assert_eq!(c["ready"], false);
        assert_eq!(c["lastState"]["terminated"]["reason"], "Completed");
        assert_eq!(c["lastState"]["terminated"]["exitCode"], 0);
        assert_eq!(out.status["phase"], "Running");
        assert_eq!(cond(&out.status, "Ready")["status"], "False");
        assert_eq!(out.events[0].reason, "Killing");
        assert_eq!(
            out.events[0].message,
            "Container c0 definition changed, will be restarted"
        );
        let out = rt.sync(&pod, t1 + millis(25), &FAST);
        let c = &out.status["containerStatuses"][0];
        assert_eq!(c["ready"], true);
        assert_eq!(c["image"], "nginx:2");
        assert_eq!(c["restartCount"], 1);
        assert_ne!(c["containerID"], first_id);
        assert_eq!(out.status["podIP"], "10.244.0.5");
        assert_eq!(cond(&out.status, "Ready")["status"], "True");
    }

    #[test]
    fn resize_applies_without_restart_unless_asked() {
        let t0 = Instant::now();
        let mut pod = test_pod(&["nginx:1"]);
        pod["spec"]["containers"][0]["resources"] = json!({"requests": {"cpu": "100m"}});
        pod["spec"]["containers"][0]["resizePolicy"] =
            json!([{"resourceName": "memory", "restartPolicy": "RestartContainer"}]);
        let mut rt = PodRt::new(&pod, "n1", "h", None, t0, &FAST);
        let out = rt.sync(&pod, t0 + millis(25), &FAST);
        let mut pod = with_status(&pod, out.status);
        pod["spec"]["containers"][0]["resources"] = json!({"requests": {"cpu": "200m"}});
        pod["status"]["resize"] = json!("InProgress");
        let out = rt.sync(&pod, t0 + millis(30), &FAST);
        let c = &out.status["containerStatuses"][0];
        assert_eq!(c["resources"]["requests"]["cpu"], "200m");
        assert_eq!(c["allocatedResources"]["cpu"], "200m");
        assert_eq!(c["restartCount"], 0);
        assert_eq!(c["ready"], true);
        assert!(out.status.get("resize").is_none());
        let mut pod = with_status(&pod, out.status);
        pod["spec"]["containers"][0]["resources"] =
            json!({"requests": {"cpu": "200m", "memory": "1Gi"}});
        let out = rt.sync(&pod, t0 + millis(40), &FAST);
        assert_eq!(out.status["containerStatuses"][0]["ready"], false);
        let out = rt.sync(&pod, t0 + millis(70), &FAST);
        assert_eq!(out.status["containerStatuses"][0]["restartCount"], 1);
        assert!(resize_needs_restart(
            &json!({"resizePolicy": [{"resourceName": "cpu", "restartPolicy": "RestartContainer"}]}),
            &json!({"limits": {"cpu": "1"}}),
            &json!({"limits": {"cpu": "2"}})
        ));
    }

    #[test]
    fn graceful_deletion_stops_then_deletes() {
        let t0 = Instant::now();
        let pod = test_pod(&["nginx:1"]);
        let mut rt = PodRt::new(&pod, "n1", "h", None, t0, &FAST);
        let out = rt.sync(&pod, t0 + millis(25), &FAST);
        let mut pod = with_status(&pod, out.status);
        pod["metadata"]["deletionTimestamp"] = json!(meta::now());
        pod["metadata"]["deletionGracePeriodSeconds"] = json!(30);
        let t1 = t0 + millis(100);
        let out = rt.sync(&pod, t1, &FAST);
        assert!(!out.delete);
        assert_eq!(out.status["containerStatuses"][0]["ready"], false);
        assert_eq!(cond(&out.status, "Ready")["status"], "False");
        assert_eq!(out.events[0].reason, "Killing");
        assert_eq!(rt.next_deadline(), Some(t1 + millis(20)));
        let out = rt.sync(&pod, t1 + millis(20), &FAST);
        assert!(out.delete);
        assert_eq!(out.status["phase"], "Succeeded");
        assert_eq!(
            out.status["containerStatuses"][0]["state"]["terminated"]["reason"],
            "Completed"
        );
        pod["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        assert!(!rt.sync(&pod, t1 + millis(30), &FAST).delete);
    }

    #[test]
    fn image_ids_and_pools() {
        assert!(image_id("nginx:1.25").starts_with("docker.io/library/nginx@sha256:"));
        assert!(image_id("ghcr.io/org/app:2").starts_with("ghcr.io/org/app@sha256:"));
        assert!(image_id("org/app").starts_with("docker.io/org/app@sha256:"));
        assert!(image_id("localhost:5000/app:1").starts_with("localhost:5000/app@sha256:"));
        assert_ne!(image_id("nginx:1"), image_id("nginx:2"));
        let mut pool = IpPool::default();
        let mut node = NodeRt {
            host_ip: "h".into(),
            cidr: parse_cidr("10.244.1.0/30"),
            cursor: 0,
        };
        // A /30 has one usable pod address; then the fallback pool takes over.
        assert_eq!(
            pool.allocate(Some(&mut node)),
            Some(u32::from(Ipv4Addr::new(10, 244, 1, 2)))
        );
        let next = pool.allocate(Some(&mut node)).unwrap();
        assert_eq!(Ipv4Addr::from(next).octets()[..2], [10, 128]);
        assert_eq!(parse_cidr("10.244.3.0/24"), Some((0x0AF4_0300, 256)));
    }

    // ---- the loops together, against a real store ----

    use crate::test_store::{create, new_store};

    fn get(store: &Store, name: &str) -> Option<Obj> {
        store.read(|inner| inner.get("/pods", "default", name))
    }

    async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn pod_cond(pod: &Value, t: &str) -> Value {
        cond(&pod["status"], t).clone()
    }

    fn is_ready(pod: &Value) -> bool {
        pod_cond(pod, "Ready")["status"] == "True"
    }

    fn app_pod(name: &str, image: &str, cpu: &str) -> Value {
        json!({"metadata": {"name": name}, "spec": {"containers": [{"name": "app", "image": image, "resources": {"requests": {"cpu": cpu}}}]}})
    }

    fn three_nodes(store: &Store) {
        let groups = [NodeGroup {
            count: 3,
            cpu: "8".into(),
            memory: "16Gi".into(),
            pods: 110,
            labels: BTreeMap::new(),
            taints: vec![],
        }];
        for n in nodes::node_objects("dca", &groups, "v1.33.0") {
            create(store, "nodes", "", n);
        }
    }

    fn status_update(store: &Store, name: &str, f: impl FnOnce(&mut Value)) {
        store.write(|inner| {
            let rt = inner.registry.core("pods");
            let old = inner.get("/pods", "default", name).unwrap();
            let mut new = (*old).clone();
            f(&mut new);
            let opts = WriteOptions {
                manager: "test".into(),
                subresource: Some("status".into()),
                ..Default::default()
            };
            write::commit_update(inner, &rt, &old, new, &opts, false).unwrap();
        });
    }

    #[tokio::test]
    async fn pods_run_restart_in_place_and_honour_gates() {
        let store = new_store();
        three_nodes(&store);
        let shutdown = CancellationToken::new();
        let sched = tokio::spawn(crate::scheduler::run(store.clone(), shutdown.clone()));
        let kubelet = tokio::spawn(run(store.clone(), FAST, shutdown.clone()));

        for i in 0..5 {
            create(
                &store,
                "pods",
                "default",
                app_pod(&format!("web-{i}"), "nginx:1", "500m"),
            );
        }
        let mut gated = app_pod("gated", "nginx:1", "100m");
        gated["spec"]["readinessGates"] =
            json!([{"conditionType": "apps.cafe.io/InPlaceUpdateReady"}]);
        create(&store, "pods", "default", gated);
        create(&store, "pods", "default", app_pod("huge", "nginx:1", "100"));

        wait_for("web pods running and ready", || {
            (0..5).all(|i| {
                get(&store, &format!("web-{i}"))
                    .is_some_and(|p| p["status"]["phase"] == "Running" && is_ready(&p))
            })
        })
        .await;
        let ips: HashSet<String> = (0..5)
            .map(|i| {
                get(&store, &format!("web-{i}")).unwrap()["status"]["podIP"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(ips.len(), 5);
        let web0 = get(&store, "web-0").unwrap();
        assert!(
            web0["status"]["hostIP"]
                .as_str()
                .unwrap()
                .starts_with("172.18.")
        );
        assert!(
            web0["status"]["podIP"]
                .as_str()
                .unwrap()
                .starts_with("10.244.")
        );

        // The pod that fits nowhere stays Pending with kube-scheduler's message...
        wait_for("huge unschedulable", || {
            get(&store, "huge")
                .is_some_and(|p| pod_cond(&p, "PodScheduled")["reason"] == "Unschedulable")
        })
        .await;
        let huge = get(&store, "huge").unwrap();
        assert_eq!(huge["status"]["phase"], "Pending");
        assert_eq!(pod_cond(&huge, "PodScheduled")["status"], "False");
        assert_eq!(
            pod_cond(&huge, "PodScheduled")["message"],
            "0/3 nodes are available: 3 Insufficient cpu."
        );
        // ...until a node with room is added through the API (without status: the kubelet
        // makes it Ready).
        create(
            &store,
            "nodes",
            "",
            json!({"metadata": {"name": "big"}, "status": {"capacity": {"cpu": "200", "memory": "64Gi", "pods": "110"}}}),
        );
        wait_for("huge running on big", || {
            get(&store, "huge").is_some_and(|p| p["spec"]["nodeName"] == "big" && is_ready(&p))
        })
        .await;
        let big = store.read(|inner| inner.get("/nodes", "", "big")).unwrap();
        assert!(nodes::is_ready(&big));
        let huge = get(&store, "huge").unwrap();
        assert!(
            huge["status"]["hostIP"]
                .as_str()
                .unwrap()
                .starts_with("172.30.")
        );

        // In-place image change: same pod, same IP, restartCount 1.
        let before = get(&store, "web-0").unwrap();
        store.write(|inner| {
            let rt = inner.registry.core("pods");
            let mut new = (*before).clone();
            new["spec"]["containers"][0]["image"] = json!("nginx:2");
            write::update(
                inner,
                &rt,
                "default",
                "web-0",
                new,
                &WriteOptions {
                    manager: "test".into(),
                    ..Default::default()
                },
            )
            .unwrap();
        });
        wait_for("web-0 restarted with nginx:2", || {
            get(&store, "web-0").is_some_and(|p| {
                let c = &p["status"]["containerStatuses"][0];
                c["image"] == "nginx:2"
                    && c["restartCount"] == 1
                    && c["ready"] == true
                    && is_ready(&p)
            })
        })
        .await;
        let after = get(&store, "web-0").unwrap();
        assert_eq!(after["metadata"]["uid"], before["metadata"]["uid"]);
        assert_eq!(after["status"]["podIP"], before["status"]["podIP"]);
        assert_eq!(after["spec"]["nodeName"], before["spec"]["nodeName"]);
        assert_eq!(
            after["status"]["containerStatuses"][0]["lastState"]["terminated"]["reason"],
            "Completed"
        );

        // The readiness gate keeps Ready False while containers are ready...
        wait_for("gated containers ready", || {
            get(&store, "gated")
                .is_some_and(|p| pod_cond(&p, "ContainersReady")["status"] == "True")
        })
        .await;
        let g = get(&store, "gated").unwrap();
        assert_eq!(pod_cond(&g, "Ready")["status"], "False");
        assert_eq!(pod_cond(&g, "Ready")["reason"], "ReadinessGatesNotReady");
        // ...until someone sets the gate's condition True through pods/status.
        status_update(&store, "gated", |p| {
            pods::set_condition(p, "apps.cafe.io/InPlaceUpdateReady", "True", None, None);
        });
        wait_for("gated ready", || {
            get(&store, "gated").is_some_and(|p| is_ready(&p))
        })
        .await;
        // And turning it False makes the pod unready again.
        status_update(&store, "gated", |p| {
            pods::set_condition(p, "apps.cafe.io/InPlaceUpdateReady", "False", None, None);
        });
        wait_for("gated unready", || {
            get(&store, "gated").is_some_and(|p| !is_ready(&p))
        })
        .await;

        // Quiet: with nothing happening, nobody writes.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let rv = store.read(|inner| inner.rv());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            store.read(|inner| inner.rv()),
            rv,
            "the loops must not write when nothing changes"
        );

        // Graceful deletion: the kubelet stops the containers and completes the deletion; with a
        // finalizer the pod stays Terminating until it is removed.
        store.write(|inner| {
            let rt = inner.registry.core("pods");
            let old = inner.get("/pods", "default", "web-1").unwrap();
            let mut new = (*old).clone();
            new["metadata"]["finalizers"] = json!(["example.com/hold"]);
            write::commit_update(inner, &rt, &old, new, &WriteOptions::default(), false).unwrap();
            delete::delete(inner, &rt, "default", "web-1", &DeleteOptions::default()).unwrap();
            delete::delete(inner, &rt, "default", "web-2", &DeleteOptions::default()).unwrap();
        });
        wait_for("web-2 gone", || get(&store, "web-2").is_none()).await;
        wait_for("web-1 terminated", || {
            get(&store, "web-1").is_some_and(|p| p["metadata"]["deletionGracePeriodSeconds"] == 0)
        })
        .await;
        let web1 = get(&store, "web-1").unwrap();
        assert_eq!(web1["status"]["phase"], "Succeeded");
        assert!(!is_ready(&web1));
        store.write(|inner| {
            let rt = inner.registry.core("pods");
            let old = inner.get("/pods", "default", "web-1").unwrap();
            let mut new = (*old).clone();
            new["metadata"]["finalizers"] = json!([]);
            write::commit_update(inner, &rt, &old, new, &WriteOptions::default(), false).unwrap();
        });
        wait_for("web-1 gone", || get(&store, "web-1").is_none()).await;

        let events = store.read(|inner| inner.list("/events", Some("default")));
        let for_web0: Vec<&str> = events
            .iter()
            .filter(|e| e["involvedObject"]["name"] == "web-0")
            .filter_map(|e| e["reason"].as_str())
            .collect();
        for r in ["Scheduled", "Pulled", "Created", "Started", "Killing"] {
            assert!(for_web0.contains(&r), "{r} missing in {for_web0:?}");
        }
        let started = events
            .iter()
            .find(|e| e["involvedObject"]["name"] == "web-0" && e["reason"] == "Started")
            .unwrap();
        assert_eq!(started["source"]["component"], "kubelet");
        assert_eq!(started["source"]["host"], web0["spec"]["nodeName"]);
        assert_eq!(
            started["involvedObject"]["fieldPath"],
            "spec.containers{app}"
        );

        shutdown.cancel();
        sched.await.unwrap();
        kubelet.await.unwrap();
    }

    /// Pods created as fast as the store takes them all get bound, Running and Ready, with unique
    /// IPs. 2,000 by default to keep the debug-build suite quick; `SIM_SCALE_PODS=10000` runs the
    /// full-size check (about 20 s in a release build on 2 cores, most of it in the API write path).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_pods_run_promptly() {
        let n: usize = std::env::var("SIM_SCALE_PODS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2_000);
        let store = new_store();
        let groups = [NodeGroup {
            count: 20,
            cpu: "64".into(),
            memory: "256Gi".into(),
            pods: 600,
            labels: BTreeMap::new(),
            taints: vec![],
        }];
        for node in nodes::node_objects("big", &groups, "v1.33.0") {
            create(&store, "nodes", "", node);
        }
        let shutdown = CancellationToken::new();
        let sched = tokio::spawn(crate::scheduler::run(store.clone(), shutdown.clone()));
        let kubelet = tokio::spawn(run(
            store.clone(),
            KubeletTiming {
                start_millis: 10,
                restart_millis: 10,
            },
            shutdown.clone(),
        ));
        let began = Instant::now();
        for i in 0..n {
            create(
                &store,
                "pods",
                "default",
                app_pod(&format!("p-{i}"), "nginx:1", "10m"),
            );
        }
        let created = began.elapsed();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let running = store.read(|inner| {
                inner
                    .list("/pods", Some("default"))
                    .iter()
                    .filter(|p| p["status"]["phase"] == "Running" && is_ready(p))
                    .count()
            });
            if running == n {
                break;
            }
            assert!(Instant::now() < deadline, "only {running}/{n} running");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let elapsed = began.elapsed();
        let ips: HashSet<String> = store.read(|inner| {
            inner
                .list("/pods", Some("default"))
                .iter()
                .map(|p| p["status"]["podIP"].as_str().unwrap_or("").to_string())
                .collect()
        });
        assert_eq!(ips.len(), n, "pod IPs must be unique");
        eprintln!("{n} pods created in {created:?}, all running and ready after {elapsed:?}");
        shutdown.cancel();
        sched.await.unwrap();
        kubelet.await.unwrap();
    }
}
