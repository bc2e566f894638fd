//! `cafe rollout confirm|pause|resume|restart|undo|status|history NAME`: steering and following a
//! CafeDeployment's rollout on the hub.
//!
//! Each steering command is one read and at most one write of the CafeDeployment; the hub
//! controller does the rest. `status` watches the CafeDeployment until its rollout completes
//! (what to print and when to stop is decided in [`follow`]); `history` lists the revisions
//! ([`revisions`]). `confirm` sets the confirmation annotation only while the rollout waits for it, so a
//! stray confirmation cannot release a group early; `undo` puts back a template from the history
//! the hub keeps as ControllerRevisions ([`crate::hub::history`]).

use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use futures::StreamExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use super::cluster::{FIELD_MANAGER, one_line, quietly};
use crate::api::CafeDeployment;
use crate::api::labels::{RESTARTED_AT, UPGRADE_CONFIRMED};
use crate::hub::history::{self, HistoryError};
use crate::plan::revision::revision_hash;
use crate::plan::rollout::PHASE_WAITING_FOR_CONFIRM;
use crate::runtime::kubeconfig::{KubeconfigArgs, KubeconfigError};

pub mod follow;
pub mod revisions;

pub use follow::{Follow, Verdict, parse_duration};
pub use revisions::render_history;
pub(crate) use revisions::{images, images_text};

/// How the commands name the object they changed, like kubectl.
const KIND: &str = "cafedeployment.apps.cafe.io";

#[derive(Debug, clap::Args)]
pub struct RolloutArgs {
    #[command(subcommand)]
    pub command: RolloutCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum RolloutCommand {
    /// Let the next group start, when the rollout waits for confirmation (needWaitingForConfirm).
    Confirm(NameArgs),
    /// Start no new group (work in flight finishes) until `resume`.
    Pause(NameArgs),
    /// Go on with a paused rollout.
    Resume(NameArgs),
    /// Replace every pod with a new one of the same template, group by group.
    Restart(NameArgs),
    /// Return the template to an earlier revision (by default the one before the current);
    /// the way back goes through the same groups.
    Undo(UndoArgs),
    /// Follow the rollout until it completes (exit 0), printing each group as it completes;
    /// non-zero when its progress deadline is exceeded or on --timeout. Says when it waits for
    /// `cafe rollout confirm`.
    Status(StatusArgs),
    /// List the revisions the hub keeps (number, hash, images, age, change-cause): the numbers
    /// `cafe rollout undo --to-revision` takes.
    History(NameArgs),
}

#[derive(Debug, clap::Args)]
pub struct NameArgs {
    /// The CafeDeployment.
    pub name: String,
    /// Its namespace (default: the context's namespace, else "default").
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    #[command(flatten)]
    pub kube: KubeconfigArgs,
}

#[derive(Debug, clap::Args)]
pub struct UndoArgs {
    #[command(flatten)]
    pub target: NameArgs,
    /// The revision to return to (`.revision` of its ControllerRevision on the hub).
    #[arg(long, value_name = "N")]
    pub to_revision: Option<i64>,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub target: NameArgs,
    /// Give up after this long (e.g. 90s, 5m, 1h30m); 0, the default, waits for ever.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "0")]
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error(transparent)]
    Kubeconfig(#[from] KubeconfigError),
    #[error(
        "no CafeDeployment {name:?} in namespace {namespace:?}; `cafe status -n {namespace}` lists the ones there"
    )]
    NotFound { namespace: String, name: String },
    #[error(
        "the cluster has no CafeDeployment CRD: point --kubeconfig/--context (or $KUBECONFIG) at the hub"
    )]
    NoCrd,
    #[error(
        "{action} on the hub: {message}; check that the hub is reachable and that your credentials may do this"
    )]
    Hub { action: String, message: String },
    #[error("{name} is not waiting for confirmation ({state}); nothing to confirm{hint}")]
    NotWaiting {
        name: String,
        state: String,
        hint: String,
    },
    #[error(transparent)]
    History(#[from] HistoryError),
    #[error("rollout of CafeDeployment {namespace}/{name} failed: {cause}")]
    Failed {
        namespace: String,
        name: String,
        cause: String,
    },
    #[error(
        "timed out after {after} waiting for the rollout of CafeDeployment {namespace}/{name}{state}"
    )]
    TimedOut {
        namespace: String,
        name: String,
        after: String,
        state: String,
    },
    #[error("CafeDeployment {namespace}/{name} was deleted while its rollout was followed")]
    Deleted { namespace: String, name: String },
}

/// Which CafeDeployment a command acts on.
struct Target {
    api: Api<CafeDeployment>,
    namespace: String,
    name: String,
}

impl Target {
    fn hub(&self, action: &str, err: &kube::Error) -> RolloutError {
        match err {
            kube::Error::Api(s) if s.code == 404 => self.not_found(),
            _ => RolloutError::Hub {
                action: format!("{action} CafeDeployment {}/{}", self.namespace, self.name),
                message: one_line(err),
            },
        }
    }

    fn not_found(&self) -> RolloutError {
        RolloutError::NotFound {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }

    async fn get(&self) -> Result<CafeDeployment, RolloutError> {
        match self.api.get_opt(&self.name).await {
            Ok(Some(cd)) => Ok(cd),
            Ok(None) => {
                // A missing object and a missing resource are both 404s; tell them apart.
                match self.api.list(&ListParams::default().limit(1)).await {
                    Err(kube::Error::Api(s)) if s.code == 404 => Err(RolloutError::NoCrd),
                    _ => Err(self.not_found()),
                }
            }
            Err(e) => Err(self.hub("reading", &e)),
        }
    }

    async fn merge(&self, patch: Value) -> Result<(), RolloutError> {
        self.api
            .patch(&self.name, &params(), &Patch::Merge(patch))
            .await
            .map(drop)
            .map_err(|e| self.hub("patching", &e))
    }
}

fn params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..PatchParams::default()
    }
}

pub async fn run(args: RolloutArgs) -> Result<(), RolloutError> {
    let text = if matches!(args.command, RolloutCommand::Status(_)) {
        // It prints as it goes, and a watch that fails and retries is worth its warning.
        run_command(args).await?
    } else {
        // A short command's failure is its one-line error; kube's request logs would repeat it.
        quietly(run_command(args)).await?
    };
    if !text.is_empty() {
        cafe_base::outln!("{}", text.trim_end());
    }
    Ok(())
}

fn namespace_of(target: &NameArgs, client: &Client) -> String {
    target
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string())
}

async fn run_command(args: RolloutArgs) -> Result<String, RolloutError> {
    let (target, to_revision) = match &args.command {
        RolloutCommand::Confirm(t)
        | RolloutCommand::Pause(t)
        | RolloutCommand::Resume(t)
        | RolloutCommand::Restart(t)
        | RolloutCommand::History(t) => (t, None),
        RolloutCommand::Status(s) => (&s.target, None),
        RolloutCommand::Undo(u) => (&u.target, u.to_revision),
    };
    let client = target.kube.client().await?;
    let namespace = namespace_of(target, &client);
    let name = &target.name;
    match &args.command {
        RolloutCommand::Confirm(_) => confirm(&client, &namespace, name).await,
        RolloutCommand::Pause(_) => set_pause(&client, &namespace, name, true).await,
        RolloutCommand::Resume(_) => set_pause(&client, &namespace, name, false).await,
        RolloutCommand::Restart(_) => restart(&client, &namespace, name).await,
        RolloutCommand::Undo(_) => undo(&client, &namespace, name, to_revision).await,
        RolloutCommand::History(_) => history(&client, &namespace, name).await,
        RolloutCommand::Status(s) => {
            let timeout = (!s.timeout.is_zero()).then_some(s.timeout);
            follow_rollout(&client, &namespace, name, timeout).await?;
            Ok(String::new())
        }
    }
}

/// The revisions of CafeDeployment `name`, as `cafe rollout history` prints them.
pub async fn history(client: &Client, namespace: &str, name: &str) -> Result<String, RolloutError> {
    let t = target(client, namespace, name);
    let cd = t.get().await?;
    let revisions = history::list(client, namespace, &cd).await?;
    Ok(render_history(
        &format!("{namespace}/{name}"),
        &revisions,
        Utc::now(),
    ))
}

/// Follows the rollout of CafeDeployment `name` through a watch, printing what [`Follow`] says
/// of each state seen, until it completes (Ok), fails, or `timeout` passes.
pub async fn follow_rollout(
    client: &Client,
    namespace: &str,
    name: &str,
    timeout: Option<Duration>,
) -> Result<(), RolloutError> {
    let t = target(client, namespace, name);
    let first = quietly(t.get()).await?;
    let mut follow = Follow::new(name);
    let watch = async {
        if let Some(end) = report(&mut follow, &first, &t) {
            return end;
        }
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let events = watcher::watcher(t.api.clone(), config).default_backoff();
        futures::pin_mut!(events);
        while let Some(event) = events.next().await {
            match event {
                Ok(Event::Apply(cd) | Event::InitApply(cd)) => {
                    if let Some(end) = report(&mut follow, &cd, &t) {
                        return end;
                    }
                }
                Ok(Event::Delete(_)) => {
                    return Err(RolloutError::Deleted {
                        namespace: t.namespace.clone(),
                        name: t.name.clone(),
                    });
                }
                Ok(Event::Init | Event::InitDone) => {}
                // The watcher backs off and retries; say so once per failure.
                Err(e) => tracing::warn!(
                    "watching CafeDeployment {namespace}/{name}: {}",
                    one_line(&e)
                ),
            }
        }
        Err(RolloutError::Hub {
            action: format!("watching CafeDeployment {namespace}/{name}"),
            message: "the watch ended".into(),
        })
    };
    let Some(limit) = timeout else {
        return watch.await;
    };
    let outcome = tokio::time::timeout(limit, watch).await;
    outcome.unwrap_or_else(|_| {
        Err(RolloutError::TimedOut {
            namespace: namespace.to_string(),
            name: name.to_string(),
            after: format!("{limit:?}"),
            state: follow
                .last_state()
                .map(|s| format!(" (last: {s})"))
                .unwrap_or_default(),
        })
    })
}

/// Prints what `follow` says of `cd`; `Some` when that ends the command.
fn report(
    follow: &mut Follow,
    cd: &CafeDeployment,
    t: &Target,
) -> Option<Result<(), RolloutError>> {
    let (lines, verdict) = follow.observe(cd);
    for line in lines {
        cafe_base::outln!("{line}");
    }
    match verdict {
        Verdict::Waiting => None,
        Verdict::Complete => Some(Ok(())),
        Verdict::Failed(cause) => Some(Err(RolloutError::Failed {
            namespace: t.namespace.clone(),
            name: t.name.clone(),
            cause,
        })),
    }
}

fn target(client: &Client, namespace: &str, name: &str) -> Target {
    Target {
        api: Api::namespaced(client.clone(), namespace),
        namespace: namespace.to_string(),
        name: name.to_string(),
    }
}

/// `group 2/3`: the group a confirmation of `cd` releases; an error when its rollout is not
/// waiting for one.
pub fn next_group(cd: &CafeDeployment) -> Result<String, RolloutError> {
    let rollout = cd.status.as_ref().and_then(|s| s.rollout.as_ref());
    match rollout {
        Some(r) if r.phase.as_deref() == Some(PHASE_WAITING_FOR_CONFIRM) => {
            Ok(format!("group {}/{}", r.current_batch + 1, r.total_batches))
        }
        _ => {
            let state = match rollout {
                Some(r) => format!(
                    "phase {}, group {}/{}",
                    r.phase.as_deref().unwrap_or("unknown"),
                    r.current_batch,
                    r.total_batches
                ),
                None => "the hub has reported no rollout".to_string(),
            };
            let hint = if cd.spec.strategy.need_waiting_for_confirm {
                String::new()
            } else {
                ": its groups start without confirmation (needWaitingForConfirm is false)".into()
            };
            Err(RolloutError::NotWaiting {
                name: cd.name_any(),
                state,
                hint,
            })
        }
    }
}

/// Releases the next group of a rollout waiting for confirmation.
pub async fn confirm(client: &Client, namespace: &str, name: &str) -> Result<String, RolloutError> {
    let t = target(client, namespace, name);
    let cd = t.get().await?;
    let next = next_group(&cd)?;
    t.merge(json!({"metadata": {"annotations": {UPGRADE_CONFIRMED: "true"}}}))
        .await?;
    Ok(format!("{KIND}/{name} confirmed: {next} may start"))
}

/// Sets `spec.strategy.pause`.
pub async fn set_pause(
    client: &Client,
    namespace: &str,
    name: &str,
    pause: bool,
) -> Result<String, RolloutError> {
    let t = target(client, namespace, name);
    let cd = t.get().await?;
    let done = if pause { "paused" } else { "resumed" };
    if cd.spec.strategy.pause == pause {
        let state = if pause { "paused" } else { "not paused" };
        return Ok(format!(
            "{KIND}/{name} was already {state}; nothing changed"
        ));
    }
    t.merge(json!({"spec": {"strategy": {"pause": pause}}}))
        .await?;
    Ok(format!("{KIND}/{name} {done}"))
}

/// Stamps the template with the time, so every pod is replaced, group by group.
pub async fn restart(client: &Client, namespace: &str, name: &str) -> Result<String, RolloutError> {
    let t = target(client, namespace, name);
    let cd = t.get().await?;
    let now = Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true);
    t.merge(json!({"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: now}}}}}))
        .await?;
    let mut line = format!("{KIND}/{name} restarted");
    if cd.spec.strategy.pause {
        line.push_str(" (it is paused: the pods are replaced once it is resumed)");
    }
    Ok(line)
}

/// Puts back the template of revision `to` (default: the newest one that differs from the
/// current template).
pub async fn undo(
    client: &Client,
    namespace: &str,
    name: &str,
    to: Option<i64>,
) -> Result<String, RolloutError> {
    let t = target(client, namespace, name);
    let cd = t.get().await?;
    let revisions = history::list(client, namespace, &cd).await?;
    let current = revision_hash(&cd.spec.template);
    let chosen = history::undo_target(&revisions, &current, to, &format!("{namespace}/{name}"))?;
    let hash = history::hash_of(chosen).unwrap_or("?").to_string();
    let number = chosen.revision;
    if hash == current {
        return Ok(format!(
            "{KIND}/{name} already runs revision {number} ({hash}); nothing changed"
        ));
    }
    let template = history::template_of(chosen)?;
    // A JSON patch replaces the template whole: a merge would keep fields of the current one
    // that the old one lacks. The uid test makes sure it lands on the object just read.
    let mut ops = vec![];
    if let Some(uid) = cd.uid() {
        ops.push(json!({"op": "test", "path": "/metadata/uid", "value": uid}));
    }
    ops.push(json!({"op": "replace", "path": "/spec/template", "value": template}));
    let patch = serde_json::from_value(Value::Array(ops)).map_err(|e| RolloutError::Hub {
        action: format!("building the patch of CafeDeployment {namespace}/{name}"),
        message: e.to_string(),
    })?;
    t.api
        .patch(name, &params(), &Patch::Json::<()>(patch))
        .await
        .map_err(|e| t.hub("patching", &e))?;
    Ok(format!(
        "{KIND}/{name} rolled back to revision {number} ({hash})"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo(rollout: Value, confirm: bool) -> CafeDeployment {
        serde_json::from_value(json!({
            "apiVersion": "apps.cafe.io/v1alpha1",
            "kind": "CafeDeployment",
            "metadata": {"name": "demo", "namespace": "default"},
            "spec": {
                "replicas": 10,
                "selector": {"matchLabels": {"app": "demo"}},
                "template": {"spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}},
                "topology": {"unitType": "DataCenter", "values": ["DCA", "DCB"]},
                "strategy": {"needWaitingForConfirm": confirm},
            },
            "status": {"rollout": rollout},
        }))
        .unwrap()
    }

    #[test]
    fn a_rollout_waiting_for_confirmation_releases_the_next_group() {
        let cd = demo(
            json!({"phase": "WaitingForConfirm", "currentBatch": 1, "totalBatches": 3}),
            true,
        );
        assert_eq!(next_group(&cd).unwrap(), "group 2/3");
    }

    #[test]
    fn any_other_phase_is_nothing_to_confirm() {
        let cd = demo(
            json!({"phase": "Progressing", "currentBatch": 1, "totalBatches": 3}),
            true,
        );
        assert_eq!(
            next_group(&cd).unwrap_err().to_string(),
            "demo is not waiting for confirmation (phase Progressing, group 1/3); nothing to confirm"
        );
        let mut cd = demo(json!(null), false);
        cd.status = None;
        let err = next_group(&cd).unwrap_err().to_string();
        assert!(
            err.contains("no rollout") && err.contains("needWaitingForConfirm is false"),
            "{err}"
        );
    }
}
