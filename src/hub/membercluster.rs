//! The MemberCluster controller: connects to each member with the kubeconfig from its Secret,
//! probes it on an interval, keeps the membership registry in step, and writes MemberCluster
//! status (Ready with a reason, version, last probe time, units, capacity) only when it changed or
//! the heartbeat is due.
//!
//! Every hub replica connects and probes (the member caches stay warm for a takeover); only the
//! leader writes status and Events. Gaining leadership reconciles every MemberCluster.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store, store::Writer};
use kube::runtime::utils::Predicate;
use kube::runtime::{WatchStreamExt, predicates, watcher};
use kube::{Resource, ResourceExt};
use tokio_util::sync::CancellationToken;

use super::HubOptions;
use super::access;
use super::membership::Membership;
use super::probe::{self, ProbeReport, Problem, ProblemReason};
use crate::api::labels::{HUB_MANAGER, ROOM_CONFIGMAP, SYSTEM_NAMESPACE, UNIT_LABEL_PREFIX};
use crate::api::{MemberCluster, MemberClusterStatus};
use crate::plan::unit_status::set_condition;
use crate::runtime::events::{EventType, EventWriter, Fact};
use crate::runtime::kubeconfig::KubeconfigError;
use crate::runtime::metrics::controllers;
use crate::runtime::status_patch::replace_status;

/// Condition type on MemberClusters.
pub const READY: &str = "Ready";
/// The Warning Event of a member going from Ready (or new) to not Ready, or from one reason to
/// another: it needs a person.
pub const MEMBER_NOT_READY: &str = "MemberNotReady";
/// Ready=True reason.
pub const PROBED: &str = "Probed";
/// The Warning Event of a token renewal that failed (the old token still works until it expires).
pub const TOKEN_RENEWAL_FAILED: &str = "TokenRenewalFailed";

#[derive(Debug, thiserror::Error)]
pub enum MemberClusterError {
    #[error("reading Secret {namespace}/{name} on the hub: {source}")]
    ReadSecret {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("writing status of MemberCluster {name}: {source}")]
    WriteStatus {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("MemberCluster has no name")]
    Unnamed,
    #[error("renewing the hub's token for member {name}: {source}")]
    RenewToken {
        name: String,
        #[source]
        source: super::access::AccessError,
    },
    #[error("storing the renewed token of member {name} in Secret {namespace}/{secret}: {source}")]
    StoreToken {
        name: String,
        namespace: String,
        secret: String,
        #[source]
        source: kube::Error,
    },
}

impl MemberClusterError {
    /// A fixed word for logs and metrics.
    pub fn category(&self) -> &'static str {
        match self {
            MemberClusterError::ReadSecret { .. } => "read_secret",
            MemberClusterError::WriteStatus { .. } => "write_status",
            MemberClusterError::Unnamed => "unnamed",
            MemberClusterError::RenewToken { .. } => "renew_token",
            MemberClusterError::StoreToken { .. } => "store_token",
        }
    }
}

struct Context {
    client: kube::Client,
    membership: Arc<Membership>,
    events: EventWriter,
    options: HubOptions,
}

/// Runs the MemberCluster controller until `shutdown`. `writer`/`members` are the MemberCluster
/// cache it fills, shared with the CafeDeployment controller.
pub async fn run(
    client: kube::Client,
    writer: Writer<MemberCluster>,
    members: Store<MemberCluster>,
    membership: Arc<Membership>,
    options: HubOptions,
    shutdown: CancellationToken,
) {
    let api: Api<MemberCluster> = Api::all(client.clone());
    let registry = membership.clone();
    let events = watcher(api, watcher::Config::default())
        .backoff(crate::runtime::backoff::watch_backoff())
        .modify(crate::runtime::strip_bookkeeping)
        .reflect(writer)
        .inspect_ok(move |event| {
            registry
                .telemetry()
                .readiness
                .observe(super::MEMBERCLUSTERS_WATCH, event);
            registry.observe(event);
        });
    let stream = crate::runtime::reconcile_triggers(events, members.clone())
        // Our own status writes must not trigger an extra probe: only spec and label changes do
        // (the probe interval drives the rest).
        .predicate_filter(
            predicates::generation.combine(predicates::labels),
            Default::default(),
        );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    let by_secret = members.clone();
    let gained = options.leadership.gained();
    let context = Arc::new(Context {
        events: EventWriter::new(client.clone(), HUB_MANAGER),
        client,
        membership,
        options,
    });
    Controller::for_stream(stream, members)
        .reconcile_all_on(gained)
        .watches(
            secrets,
            watcher::Config::default(),
            move |secret: Secret| members_using(&by_secret, &secret),
        )
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "MemberCluster reconcile failed");
            }
        })
        .await;
}

/// The MemberClusters whose kubeconfig is in `secret`.
fn members_using(members: &Store<MemberCluster>, secret: &Secret) -> Vec<ObjectRef<MemberCluster>> {
    let (name, namespace) = (secret.name_any(), secret.namespace().unwrap_or_default());
    members
        .state()
        .iter()
        .filter(|mc| {
            let r = &mc.spec.kubeconfig_secret_ref;
            r.name == name && r.namespace == namespace
        })
        .map(|mc| ObjectRef::from_obj(&**mc))
        .collect()
}

async fn reconcile(
    mc: Arc<MemberCluster>,
    ctx: Arc<Context>,
) -> Result<Action, MemberClusterError> {
    let metrics = ctx.membership.telemetry().metrics.clone();
    let object = kube::runtime::reflector::ObjectRef::from_obj(&*mc).to_string();
    metrics
        .measure(
            controllers::MEMBERCLUSTER,
            object,
            reconcile_one(mc, ctx),
            |e| e.category(),
        )
        .await
}

async fn reconcile_one(
    mc: Arc<MemberCluster>,
    ctx: Arc<Context>,
) -> Result<Action, MemberClusterError> {
    let name = mc
        .metadata
        .name
        .clone()
        .ok_or(MemberClusterError::Unnamed)?;
    let mut next = ctx.options.probe_interval;
    let outcome = match connect(&mc, &name, &ctx).await? {
        Ok((client, stored)) => {
            let outcome = probe::probe(&client, ctx.options.probe_timeout).await;
            if outcome.is_ok() {
                next = next.min(renew_token(&mc, &name, &client, &stored, &ctx).await);
            }
            outcome
        }
        Err(problem) => Err(problem),
    };
    // A failure stops the writes to the member at once; a recovery lets them resume only once
    // the MemberCluster says Ready again (below), so the hub never acts on a member it still
    // reports lost (a status write refused leaves it lost until the next probe).
    let recovered = outcome.is_ok();
    if let Err(problem) = &outcome {
        ctx.membership.set_health(&name, Some(problem.clone()));
        tracing::debug!(member = %name, %problem, "member probe failed");
    }
    // A member that answers but whose InPlaceSets the hub cannot watch is no more usable than
    // one that does not answer: its Ready condition says so, with the fix.
    let outcome = outcome.and_then(|report| match ctx.membership.watch_problem(&name) {
        Some(problem) => Err(problem),
        None => Ok(report),
    });
    ctx.membership
        .telemetry()
        .metrics
        .set_member_reachable(&name, outcome.is_ok());
    // Nor is one where no agent acts on the InPlaceSets.
    let outcome = outcome.and_then(|report| match ctx.membership.agent_problem(&name) {
        Some(problem) => Err(problem),
        None => Ok(report),
    });
    if !ctx.options.leadership.is_leader() {
        // A follower keeps the registry warm; the leader writes what it found. A member it
        // probes fine stays unusable here until the status says Ready: on becoming leader this
        // hub must not write to a member the status still reports lost (its CafeDeployments
        // may reconcile before the MemberCluster's Ready is written).
        if recovered {
            ctx.membership
                .set_health(&name, reported_problem(mc.status.as_ref()));
        }
        return Ok(Action::requeue(ctx.options.probe_interval));
    }
    let desired = desired_status(
        mc.status.as_ref(),
        mc.meta().generation,
        mc.metadata.labels.as_ref(),
        &outcome,
        &now(),
        ctx.options.status_heartbeat,
    );
    if let Some(status) = &desired {
        write_status(&ctx.client, &mc, &name, status).await?;
    }
    if recovered {
        ctx.membership.set_health(&name, None);
    }
    if let Some(status) = desired
        && let Some((reason, message)) = lost(mc.status.as_ref(), &status)
    {
        let fact = Fact {
            type_: EventType::Warning,
            reason: MEMBER_NOT_READY,
            message: &format!("member {name} is not Ready: {reason}: {message}"),
            action: "Probe",
            related: None,
        };
        if let Err(error) = ctx.events.publish(&mc.object_ref(&()), &fact).await {
            tracing::debug!(%error, "publishing an Event failed");
        }
    }
    Ok(Action::requeue(next))
}

/// Renews the hub's token for the member once [`access::renewal_time`] has come, through the
/// member's own client (the identity may request tokens for itself only), and stores it in the
/// Secret; the Secret's change then reconnects the member with it. A failure is reported
/// (Event, log) and retried at the next probe: the old token works until it expires. Returns how
/// long until the next renewal is due.
async fn renew_token(
    mc: &MemberCluster,
    name: &str,
    member: &kube::Client,
    stored: &Stored,
    ctx: &Context,
) -> Duration {
    let Some(due) = access::renewal_time(&stored.annotations) else {
        return Duration::MAX;
    };
    if !ctx.options.leadership.is_leader() {
        // Only the leader renews (and writes the Secret); a follower that becomes leader does.
        return ctx.options.probe_interval;
    }
    let now = chrono::Utc::now();
    if now < due {
        return (due - now).to_std().unwrap_or(Duration::ZERO);
    }
    match store_renewed_token(mc, name, member, stored, ctx).await {
        Ok(()) => {
            tracing::info!(member = %name, "hub token for the member renewed");
            ctx.options.probe_interval
        }
        Err(error) => {
            tracing::warn!(member = %name, %error, category = error.category(), "token renewal failed; retrying at the next probe");
            let fact = Fact {
                type_: EventType::Warning,
                reason: TOKEN_RENEWAL_FAILED,
                message: &error.to_string(),
                action: "RenewToken",
                related: None,
            };
            if let Err(error) = ctx.events.publish(&mc.object_ref(&()), &fact).await {
                tracing::debug!(%error, "publishing an Event failed");
            }
            ctx.options.probe_interval
        }
    }
}

async fn store_renewed_token(
    mc: &MemberCluster,
    name: &str,
    member: &kube::Client,
    stored: &Stored,
    ctx: &Context,
) -> Result<(), MemberClusterError> {
    let renew_error = |source| MemberClusterError::RenewToken {
        name: name.to_string(),
        source,
    };
    let issued = access::issue_token(member, access::TOKEN_LIFETIME)
        .await
        .map_err(renew_error)?;
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&stored.text)
        .map_err(|e| renew_error(access::AccessError::Kubeconfig(e.to_string())))?;
    let renewed = access::with_token(&kubeconfig, &issued.token).map_err(renew_error)?;
    let yaml = serde_saphyr::to_string(&renewed)
        .map_err(|e| renew_error(access::AccessError::Kubeconfig(e.to_string())))?;
    let r = &mc.spec.kubeconfig_secret_ref;
    let patch = serde_json::json!({
        "metadata": {"annotations": issued.annotations()},
        "data": {r.key.clone(): base64::Engine::encode(&base64::engine::general_purpose::STANDARD, yaml)},
    });
    Api::<Secret>::namespaced(ctx.client.clone(), &r.namespace)
        .patch(&r.name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map_err(|source| MemberClusterError::StoreToken {
            name: name.to_string(),
            namespace: r.namespace.clone(),
            secret: r.name.clone(),
            source,
        })?;
    Ok(())
}

fn error_policy(_: Arc<MemberCluster>, error: &MemberClusterError, ctx: Arc<Context>) -> Action {
    if !ctx.options.leadership.is_leader() {
        // Leadership lost mid-reconcile: the write gate refused; nothing for a person to see.
        tracing::debug!(%error, "MemberCluster reconcile stopped: not the leader");
        return Action::requeue(ctx.options.probe_interval);
    }
    tracing::warn!(%error, category = error.category(), "MemberCluster reconcile failed; retrying");
    Action::requeue(ctx.options.probe_interval)
}

/// Reads the kubeconfig Secret and makes sure the registry holds a client built from it. The
/// outer error is the hub's own failure (retried); the inner one is the member's problem.
async fn connect(
    mc: &MemberCluster,
    name: &str,
    ctx: &Context,
) -> Result<Result<(kube::Client, Stored), Problem>, MemberClusterError> {
    let stored = match read_kubeconfig(&ctx.client, mc).await? {
        Ok(stored) => stored,
        Err(problem) => {
            ctx.membership.disconnect(name);
            return Ok(Err(problem));
        }
    };
    let fingerprint = fingerprint(&stored.text);
    if ctx.membership.fingerprint(name) != Some(fingerprint) {
        let origin = format!("MemberCluster {name}");
        // The member's writes count under its name in `cafe_api_writes_total`.
        let metrics = &ctx.membership.telemetry().metrics;
        let client = crate::runtime::kubeconfig::config_from_yaml(&stored.text, None, &origin)
            .await
            .and_then(|mut config| {
                // The member's audit log names the hub replica that wrote.
                crate::runtime::identify(&mut config, "hub", &ctx.options.identity);
                metrics
                    .client(config, name)
                    .map_err(|e| KubeconfigError::Invalid {
                        origin: origin.clone(),
                        message: e.to_string(),
                    })
            });
        match client {
            Ok(client) => {
                let client = crate::runtime::leader::gated(client, &ctx.options.leadership);
                ctx.membership.connect(name, fingerprint, client)
            }
            Err(e) => {
                ctx.membership.disconnect(name);
                return Ok(Err(Problem::new(
                    ProblemReason::KubeconfigInvalid,
                    e.to_string(),
                )));
            }
        }
    }
    Ok(ctx
        .membership
        .client(name)
        .map(|client| (client, stored))
        .ok_or_else(|| Problem::new(ProblemReason::Connecting, "not connected yet")))
}

/// A member's kubeconfig as the hub stores it, with its Secret's annotations (a token's
/// validity, see [`access`]).
struct Stored {
    text: String,
    annotations: BTreeMap<String, String>,
}

/// The kubeconfig text, or why there is none. Only Secrets in `cafe-system` are read: that is
/// where `cafe cluster register` puts them and all the hub is allowed to read.
async fn read_kubeconfig(
    client: &kube::Client,
    mc: &MemberCluster,
) -> Result<Result<Stored, Problem>, MemberClusterError> {
    let r = &mc.spec.kubeconfig_secret_ref;
    if r.namespace != SYSTEM_NAMESPACE {
        return Ok(Err(Problem::new(
            ProblemReason::KubeconfigInvalid,
            format!(
                "spec.kubeconfigSecretRef.namespace is {:?}; the hub reads kubeconfig Secrets only in {SYSTEM_NAMESPACE}",
                r.namespace
            ),
        )));
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &r.namespace);
    let secret =
        secrets
            .get_opt(&r.name)
            .await
            .map_err(|source| MemberClusterError::ReadSecret {
                namespace: r.namespace.clone(),
                name: r.name.clone(),
                source,
            })?;
    let Some(secret) = secret else {
        return Ok(Err(Problem::new(
            ProblemReason::SecretNotFound,
            format!("Secret {}/{} not found", r.namespace, r.name),
        )));
    };
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&r.key))
        .map(|b| b.0.clone())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(&r.key))
                .map(|s| s.clone().into_bytes())
        });
    let Some(bytes) = bytes else {
        return Ok(Err(Problem::new(
            ProblemReason::SecretNotFound,
            format!("Secret {}/{} has no key {:?}", r.namespace, r.name, r.key),
        )));
    };
    let annotations = secret.annotations().clone();
    Ok(String::from_utf8(bytes)
        .map(|text| Stored { text, annotations })
        .map_err(|_| {
            Problem::new(
                ProblemReason::KubeconfigInvalid,
                format!(
                    "Secret {}/{} key {:?} is not UTF-8 text",
                    r.namespace, r.name, r.key
                ),
            )
        }))
}

/// Identifies a kubeconfig without keeping a second copy of the credentials around.
fn fingerprint(kubeconfig: &str) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    kubeconfig.hash(&mut hasher);
    hasher.finish()
}

async fn write_status(
    client: &kube::Client,
    mc: &MemberCluster,
    name: &str,
    status: &MemberClusterStatus,
) -> Result<(), MemberClusterError> {
    let api: Api<MemberCluster> = Api::all(client.clone());
    let old = serde_json::to_value(&mc.status).unwrap_or_default();
    let new = serde_json::to_value(status).unwrap_or_default();
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(replace_status(&old, &new)),
    )
    .await
    .map_err(|source| MemberClusterError::WriteStatus {
        name: name.to_string(),
        source,
    })?;
    Ok(())
}

/// Why the MemberCluster's status says the member is not Ready (None when it says Ready): what
/// a follower holds against a member its own probe finds healthy.
fn reported_problem(status: Option<&MemberClusterStatus>) -> Option<Problem> {
    let ready = status.and_then(|s| s.conditions.iter().find(|c| c.type_ == READY));
    match ready {
        Some(c) if c.status == "True" => None,
        Some(c) => Some(Problem::new(
            ProblemReason::from_reason(&c.reason).unwrap_or(ProblemReason::ProbeFailed),
            format!("reported not Ready: {}", c.message),
        )),
        None => Some(Problem::new(
            ProblemReason::Connecting,
            "not reported Ready yet",
        )),
    }
}

/// The Ready=False reason and message when `new` newly says the member is not Ready (it was
/// Ready, or not Ready for another reason, or had no condition).
fn lost(old: Option<&MemberClusterStatus>, new: &MemberClusterStatus) -> Option<(String, String)> {
    let ready = |s: &MemberClusterStatus| s.conditions.iter().find(|c| c.type_ == READY).cloned();
    // Connecting is the hub's own start-up, not something a person must look at.
    let now = ready(new).filter(|c| c.status == "False" && c.reason != "Connecting")?;
    let before = old.and_then(ready);
    if before.is_some_and(|b| b.status == "False" && b.reason == now.reason) {
        return None;
    }
    Some((now.reason, now.message))
}

fn now() -> Time {
    let secs = Timestamp::now().as_second();
    Time(Timestamp::from_second(secs).unwrap_or_else(|_| Timestamp::now()))
}

/// The status a MemberCluster should have after a probe, or None when the stored one is still
/// right: nothing but `lastProbeTime` would change and the heartbeat is not due. After a failed
/// probe, version and capacity stay as last seen.
pub fn desired_status(
    previous: Option<&MemberClusterStatus>,
    generation: Option<i64>,
    labels: Option<&BTreeMap<String, String>>,
    outcome: &Result<ProbeReport, Problem>,
    now: &Time,
    heartbeat: Duration,
) -> Option<MemberClusterStatus> {
    let old = previous.cloned().unwrap_or_default();
    let mut new = old.clone();
    let (status, reason, message) = match outcome {
        Ok(report) => {
            new.kubernetes_version = Some(report.version.clone());
            new.capacity = report.capacity.clone();
            let nodes = match &report.capacity {
                Some(c) => format!("{} ready schedulable nodes", c.nodes),
                None => format!(
                    "its room not published yet (ConfigMap {SYSTEM_NAMESPACE}/{ROOM_CONFIGMAP}, written by the member agent)"
                ),
            };
            (
                "True",
                PROBED.to_string(),
                format!("Kubernetes {}, {nodes}", report.version),
            )
        }
        Err(problem) => (
            "False",
            problem.reason.as_str().to_string(),
            problem.message.clone(),
        ),
    };
    set_condition(
        &mut new.conditions,
        Condition {
            type_: READY.into(),
            status: status.into(),
            reason,
            message,
            observed_generation: generation,
            last_transition_time: now.clone(),
        },
    );
    new.units = units(labels);
    let heartbeat_due = match &old.last_probe_time {
        Some(last) => {
            let age = now.0.as_second() - last.0.as_second();
            age < 0 || age >= i64::try_from(heartbeat.as_secs()).unwrap_or(i64::MAX)
        }
        None => true,
    };
    if new == old && !heartbeat_due {
        return None;
    }
    new.last_probe_time = Some(now.clone());
    Some(new)
}

/// "DataCenter=DCA" from the `unit.apps.cafe.io/*` labels (sorted, comma-separated).
pub fn units(labels: Option<&BTreeMap<String, String>>) -> Option<String> {
    let units: Vec<String> = labels
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| {
            k.strip_prefix(UNIT_LABEL_PREFIX)
                .map(|unit_type| format!("{unit_type}={v}"))
        })
        .collect();
    (!units.is_empty()).then(|| units.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Capacity, Resources};

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    fn report() -> Result<ProbeReport, Problem> {
        Ok(ProbeReport {
            version: "v1.33.0".into(),
            capacity: Some(Capacity {
                nodes: 3,
                allocatable: Resources {
                    cpu_millis: 24_000,
                    memory_bytes: 48 << 30,
                    pods: 330,
                },
                requested: Resources::default(),
                free: vec![],
                templates: Default::default(),
            }),
        })
    }

    fn labels() -> BTreeMap<String, String> {
        BTreeMap::from([
            (
                "unit.apps.cafe.io/DataCenter".to_string(),
                "DCA".to_string(),
            ),
            ("team".to_string(), "pay".to_string()),
        ])
    }

    /// A follower counts a member usable only once the status says Ready: a member the last
    /// leader reported lost stays unusable (with that reason) until Ready is written again.
    #[test]
    fn a_member_is_usable_to_a_follower_only_when_its_status_says_ready() {
        let probed = |previous: Option<&MemberClusterStatus>, outcome, secs| {
            desired_status(
                previous,
                Some(1),
                Some(&labels()),
                &outcome,
                &at(secs),
                Duration::from_secs(30),
            )
            .unwrap()
        };
        let unreachable = Problem::new(ProblemReason::Unreachable, "no answer within 2s");
        let lost = probed(None, Err(unreachable), 100);
        let held = reported_problem(Some(&lost)).expect("reported lost");
        assert_eq!(held.reason, ProblemReason::Unreachable);
        assert!(held.message.contains("no answer within 2s"), "{held:?}");
        let ready = probed(Some(&lost), report(), 200);
        assert_eq!(reported_problem(Some(&ready)), None);
        let never = reported_problem(None).expect("not reported yet");
        assert_eq!(never.reason, ProblemReason::Connecting);
        for reason in [
            ProblemReason::CrdNotInstalled,
            ProblemReason::AgentNotRunning,
        ] {
            assert_eq!(ProblemReason::from_reason(reason.as_str()), Some(reason));
        }
    }

    #[test]
    fn a_first_probe_writes_ready_version_units_and_capacity() {
        let s = desired_status(
            None,
            Some(1),
            Some(&labels()),
            &report(),
            &at(100),
            Duration::from_secs(60),
        )
        .unwrap();
        let ready = &s.conditions[0];
        assert_eq!(
            (
                ready.type_.as_str(),
                ready.status.as_str(),
                ready.reason.as_str()
            ),
            ("Ready", "True", "Probed")
        );
        assert_eq!(s.kubernetes_version.as_deref(), Some("v1.33.0"));
        assert_eq!(s.units.as_deref(), Some("DataCenter=DCA"));
        assert_eq!(s.capacity.as_ref().unwrap().nodes, 3);
        assert_eq!(s.last_probe_time, Some(at(100)));
    }

    #[test]
    fn nothing_is_written_until_something_changes_or_the_heartbeat_is_due() {
        let hb = Duration::from_secs(60);
        let first =
            desired_status(None, Some(1), Some(&labels()), &report(), &at(100), hb).unwrap();
        assert_eq!(
            desired_status(
                Some(&first),
                Some(1),
                Some(&labels()),
                &report(),
                &at(130),
                hb
            ),
            None
        );
        let beat = desired_status(
            Some(&first),
            Some(1),
            Some(&labels()),
            &report(),
            &at(160),
            hb,
        )
        .unwrap();
        assert_eq!(beat.last_probe_time, Some(at(160)));
        assert_eq!(beat.conditions[0].last_transition_time, at(100));
    }

    #[test]
    fn a_failed_probe_keeps_what_was_last_seen() {
        let hb = Duration::from_secs(60);
        let first =
            desired_status(None, Some(1), Some(&labels()), &report(), &at(100), hb).unwrap();
        let problem = Err(Problem::new(
            ProblemReason::Unauthorized,
            "the member answered 401",
        ));
        let s = desired_status(
            Some(&first),
            Some(1),
            Some(&labels()),
            &problem,
            &at(110),
            hb,
        )
        .unwrap();
        let ready = &s.conditions[0];
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "Unauthorized")
        );
        assert_eq!(ready.last_transition_time, at(110));
        assert_eq!(s.kubernetes_version.as_deref(), Some("v1.33.0"));
        assert!(s.capacity.is_some());
    }

    #[test]
    fn a_member_lost_is_told_once_per_transition() {
        let status = |outcome: &Result<ProbeReport, Problem>, previous| {
            desired_status(previous, Some(1), None, outcome, &at(100), Duration::ZERO).unwrap()
        };
        let ready = status(&report(), None);
        let no_crd = Err(Problem::new(ProblemReason::CrdNotInstalled, "install it"));
        let lost_crd = status(&no_crd, Some(&ready));
        assert_eq!(
            lost(Some(&ready), &lost_crd),
            Some(("CRDNotInstalled".into(), "install it".into()))
        );
        // Still the same problem: not told again.
        assert_eq!(
            lost(Some(&lost_crd), &status(&no_crd, Some(&lost_crd))),
            None
        );
        // Another problem is a new transition.
        let gone = Err(Problem::new(ProblemReason::Unreachable, "no answer"));
        assert!(lost(Some(&lost_crd), &status(&gone, Some(&lost_crd))).is_some());
        // Ready, or the hub still connecting, needs no one.
        assert_eq!(lost(Some(&lost_crd), &ready), None);
        let connecting = Err(Problem::new(ProblemReason::Connecting, "not connected yet"));
        assert_eq!(lost(None, &status(&connecting, None)), None);
    }
}
