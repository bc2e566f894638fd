//! `cafe status [NAME] [-n NS | -A] [-w] [-o json]`: CafeDeployments as the hub reports them,
//! with the group-by-group progress of a rollout.
//!
//! Reading (and watching) is I/O; turning objects into text is done by the pure `render_*`
//! functions below, which the tests call with plain values.

use std::io::IsTerminal;

use chrono::Utc;
use futures::StreamExt;
use kube::api::{Api, ListParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, reflector};
use tokio_util::sync::CancellationToken;

use super::cluster::one_line;
use crate::api::CafeDeployment;
use crate::runtime::kubeconfig::{KubeconfigArgs, KubeconfigError};

mod render;
mod rollout;

pub use render::{
    RevisionImages, format_age, render, render_json_list, render_json_one, render_list, render_one,
    render_one_at, render_table,
};
pub use rollout::{group_name, render_rollout};

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The CafeDeployment to show; without it, one line per CafeDeployment.
    pub name: Option<String>,
    /// Namespace (default: the context's namespace, else "default").
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// List CafeDeployments in every namespace.
    #[arg(short = 'A', long, conflicts_with_all = ["namespace", "name"])]
    pub all_namespaces: bool,
    /// Keep watching and redraw on every change (Ctrl-C to stop).
    #[arg(short = 'w', long)]
    pub watch: bool,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    #[command(flatten)]
    pub kube: KubeconfigArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Human-readable text.
    Table,
    /// The status as JSON (for one CafeDeployment, its `.status`; for a list, an array of
    /// `{namespace, name, status}`).
    Json,
}

/// What to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    One { namespace: String, name: String },
    Namespace(String),
    AllNamespaces,
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    Kubeconfig(#[from] KubeconfigError),
    #[error(
        "no CafeDeployment {name:?} in namespace {namespace:?}; `cafe status -n {namespace}` lists the ones there (-A: every namespace)"
    )]
    NotFound { namespace: String, name: String },
    #[error(
        "the cluster has no CafeDeployment CRD: point --kubeconfig/--context (or $KUBECONFIG) at the hub, or install the CRDs there (`cafe crds | kubectl apply -f -`)"
    )]
    NoCrd,
    #[error(
        "reading CafeDeployments from the hub: {0}; check that the hub is running and --kubeconfig/--context (or $KUBECONFIG) point at it"
    )]
    Hub(String),
    #[error("installing the Ctrl-C handler: {0}")]
    Signal(#[source] std::io::Error),
}

pub async fn run(args: StatusArgs) -> Result<(), StatusError> {
    // Handlers before the first frame, so a signal while watching is a clean stop.
    let shutdown = match args.watch {
        true => Some(crate::runtime::shutdown::on_interrupt().map_err(StatusError::Signal)?),
        false => None,
    };
    let client = args.kube.client().await?;
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    let target = match (args.name, args.all_namespaces) {
        (Some(name), _) => Target::One { namespace, name },
        (None, true) => Target::AllNamespaces,
        (None, false) => Target::Namespace(namespace),
    };
    let items = super::cluster::quietly(fetch(&client, &target)).await?;
    let mut screen = Screen::new(args.watch);
    let images = revision_images(&client, &target, &items).await;
    screen.draw(&render(&target, &items, args.output, Utc::now(), &images));
    if let Some(shutdown) = shutdown {
        watch(&client, &target, args.output, &mut screen, &shutdown).await?;
    }
    Ok(())
}

/// For one CafeDeployment: the images of each revision in its history on the hub, so the
/// revision header says what each hash runs. Best effort: without history, hashes alone.
async fn revision_images(
    client: &kube::Client,
    target: &Target,
    items: &[CafeDeployment],
) -> RevisionImages {
    let (Target::One { namespace, .. }, [cd]) = (target, items) else {
        return RevisionImages::new();
    };
    let Ok(history) = crate::hub::history::list(client, namespace, cd).await else {
        return RevisionImages::new();
    };
    history
        .iter()
        .filter_map(|cr| {
            let hash = crate::hub::history::hash_of(cr)?;
            Some((hash.to_string(), crate::cli::rollout::images(cr)))
        })
        .collect()
}

/// The CafeDeployments `target` names, sorted by namespace and name. A named one that does not
/// exist is an error.
pub async fn fetch(
    client: &kube::Client,
    target: &Target,
) -> Result<Vec<CafeDeployment>, StatusError> {
    let hub = |e: kube::Error| StatusError::Hub(one_line(&e));
    match target {
        Target::One { namespace, name } => {
            let api: Api<CafeDeployment> = Api::namespaced(client.clone(), namespace);
            match api.get_opt(name).await.map_err(hub)? {
                Some(cd) => Ok(vec![cd]),
                None => {
                    // A 404 for the object and for the whole resource look alike; tell them apart.
                    list(&api).await?;
                    Err(StatusError::NotFound {
                        namespace: namespace.clone(),
                        name: name.clone(),
                    })
                }
            }
        }
        Target::Namespace(ns) => list(&Api::namespaced(client.clone(), ns)).await,
        Target::AllNamespaces => list(&Api::all(client.clone())).await,
    }
}

async fn list(api: &Api<CafeDeployment>) -> Result<Vec<CafeDeployment>, StatusError> {
    match api.list(&ListParams::default()).await {
        Ok(l) => Ok(sorted(l.items)),
        Err(kube::Error::Api(s)) if s.code == 404 => Err(StatusError::NoCrd),
        Err(e) => Err(StatusError::Hub(one_line(&e))),
    }
}

fn sorted(mut items: Vec<CafeDeployment>) -> Vec<CafeDeployment> {
    items.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });
    items
}

/// What `cafe status` prints for `target` once (without `-w`).
pub async fn snapshot(
    client: &kube::Client,
    target: &Target,
    output: Output,
) -> Result<String, StatusError> {
    let items = fetch(client, target).await?;
    let images = revision_images(client, target, &items).await;
    Ok(render(target, &items, output, Utc::now(), &images))
}

/// Redraws `target` on every change until `shutdown` is cancelled.
async fn watch(
    client: &kube::Client,
    target: &Target,
    output: Output,
    screen: &mut Screen,
    shutdown: &CancellationToken,
) -> Result<(), StatusError> {
    let (api, config) = match target {
        Target::One { namespace, name } => (
            Api::namespaced(client.clone(), namespace),
            watcher::Config::default().fields(&format!("metadata.name={name}")),
        ),
        Target::Namespace(ns) => (
            Api::namespaced(client.clone(), ns),
            watcher::Config::default(),
        ),
        Target::AllNamespaces => (Api::all(client.clone()), watcher::Config::default()),
    };
    let (reader, writer) = reflector::store::<CafeDeployment>();
    let events = reflector(writer, watcher::watcher(api, config)).default_backoff();
    futures::pin_mut!(events);
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            e = events.next() => e,
        };
        match event {
            None => return Ok(()),
            Some(Err(e)) => {
                // The watcher backs off and retries; say so once per failure.
                tracing::warn!("watching CafeDeployments: {}", one_line(&e));
                continue;
            }
            Some(Ok(Event::Init | Event::InitApply(_))) => continue,
            Some(Ok(Event::Apply(_) | Event::Delete(_) | Event::InitDone)) => {}
        }
        let items = sorted(reader.state().iter().map(|cd| (**cd).clone()).collect());
        let frame = match target {
            Target::One { namespace, name } if items.is_empty() => {
                format!("CafeDeployment {namespace}/{name}: deleted\n")
            }
            _ => {
                let images = revision_images(client, target, &items).await;
                render(target, &items, output, Utc::now(), &images)
            }
        };
        screen.draw(&frame);
    }
}

/// Where frames go: a terminal is cleared before each redraw; a pipe gets every new frame
/// appended. A frame identical to the last is not drawn again.
struct Screen {
    redraw: bool,
    last: Option<String>,
}

impl Screen {
    fn new(watching: bool) -> Self {
        Self {
            redraw: watching && std::io::stdout().is_terminal(),
            last: None,
        }
    }

    fn draw(&mut self, frame: &str) {
        if self.last.as_deref() == Some(frame) {
            return;
        }
        if self.redraw {
            // Cursor home, clear screen.
            cafe_base::out!("\x1b[H\x1b[2J{frame}");
        } else {
            if self.last.is_some() {
                cafe_base::outln!();
            }
            cafe_base::out!("{frame}");
        }
        self.last = Some(frame.to_string());
    }
}
