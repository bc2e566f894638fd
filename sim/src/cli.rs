//! `cafe sim` and `cafe sim ctl`: run simulated clusters, and inject faults into running ones.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::config::{ConfigError, SimConfig};
use crate::sim::{Sim, SimError, SimState};

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Sim(#[from] SimError),
    #[error("{0}")]
    Usage(String),
    #[error("reading {path}: {message} (is `cafe sim --state-dir` running there?)")]
    State { path: String, message: String },
    #[error("control request failed: {0}")]
    Control(String),
    #[error("waiting for signals: {0}")]
    Signal(std::io::Error),
}

/// Run simulated Kubernetes clusters on 127.0.0.1.
#[derive(Debug, Args)]
// `ctl` reaches a running simulator through its own --state-dir; the simulator itself always
// needs one (that is where its kubeconfig goes), which `subcommand_negates_reqs` lets clap say.
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct SimCommand {
    #[command(subcommand)]
    pub command: Option<SimSubcommand>,
    /// Cluster configuration (YAML); default: hub, dca and dcb.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Where to write kubeconfig and sim.json (required to run the simulator).
    #[arg(long, required = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum SimSubcommand {
    /// Inject faults into a running simulator.
    Ctl(CtlArgs),
}

#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The running simulator's --state-dir.
    #[arg(long)]
    pub state_dir: PathBuf,
    #[command(subcommand)]
    pub action: CtlAction,
}

#[derive(Debug, Subcommand)]
pub enum CtlAction {
    /// Make a cluster's API refuse and drop connections for a while.
    Outage {
        cluster: String,
        #[arg(long)]
        seconds: f64,
    },
    /// Answer a fraction of a cluster's requests with an error code.
    InjectErrors {
        cluster: String,
        /// 500, 409 or 429 (with Retry-After); several, comma-separated, are picked at random
        /// (e.g. 500,409,429).
        #[arg(long, value_parser = error_codes)]
        code: String,
        /// Fraction of requests, 0.0 to 1.0.
        #[arg(long)]
        rate: f64,
        #[arg(long)]
        seconds: f64,
    },
    /// Delay every answer of a cluster by a random time up to --max-delay-ms (a slow member).
    Slow {
        cluster: String,
        #[arg(long, default_value_t = 500)]
        max_delay_ms: u64,
        #[arg(long)]
        seconds: f64,
    },
    /// Close every open watch on a cluster.
    CutWatches { cluster: String },
    /// Forget the watch history (as etcd compaction does): older resourceVersions get 410.
    Compact { cluster: String },
}

pub async fn run(cmd: SimCommand) -> Result<(), CliError> {
    match cmd.command {
        Some(SimSubcommand::Ctl(ctl)) => run_ctl(ctl).await,
        None => {
            let dir = cmd.state_dir.ok_or_else(|| {
                CliError::Usage("cafe sim needs --state-dir DIR (where the kubeconfig goes)".into())
            })?;
            let config = match &cmd.config {
                Some(path) => SimConfig::load(path)?,
                None => SimConfig::default_clusters(),
            };
            run_sim(config, dir).await
        }
    }
}

async fn run_sim(config: SimConfig, dir: PathBuf) -> Result<(), CliError> {
    // Handlers before the ready line: whoever reads it may answer with a signal at once.
    let signals = Signals::install().map_err(CliError::Signal)?;
    let mut sim = Sim::start(config).await?;
    let kubeconfig = sim.publish(&dir, None).await?;
    sim.wait_ready(Duration::from_secs(30))
        .await
        .map_err(CliError::Usage)?;
    let list: Vec<String> = sim
        .clusters
        .iter()
        .map(|c| format!("{}={}", c.name, c.url()))
        .collect();
    crate::outln!(
        "ready {} kubeconfig={}",
        list.join(" "),
        kubeconfig.display()
    );
    crate::outln!(
        "try: KUBECONFIG={} kubectl --context {} get nodes",
        kubeconfig.display(),
        sim.clusters
            .get(1)
            .or(sim.clusters.first())
            .map_or("hub", |c| c.name.as_str())
    );
    signals.recv().await;
    tracing::info!("shutting down the simulated clusters");
    sim.stop();
    let _ = std::fs::remove_file(dir.join("sim.json"));
    Ok(())
}

use cafe_base::signal::Signals;

async fn run_ctl(ctl: CtlArgs) -> Result<(), CliError> {
    let path = ctl.state_dir.join("sim.json");
    let text = std::fs::read_to_string(&path).map_err(|e| CliError::State {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let state: SimState = serde_json::from_str(&text).map_err(|e| CliError::State {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let request = match &ctl.action {
        CtlAction::Outage { cluster, seconds } => {
            format!("/outage?cluster={}&seconds={seconds}", enc(cluster))
        }
        CtlAction::InjectErrors {
            cluster,
            code,
            rate,
            seconds,
        } => {
            if !(0.0..=1.0).contains(rate) {
                return Err(CliError::Usage(format!(
                    "--rate {rate} is out of range: give a fraction between 0.0 and 1.0"
                )));
            }
            format!(
                "/inject-errors?cluster={}&code={code}&rate={rate}&seconds={seconds}",
                enc(cluster)
            )
        }
        CtlAction::Slow {
            cluster,
            max_delay_ms,
            seconds,
        } => format!(
            "/slow?cluster={}&max-delay-ms={max_delay_ms}&seconds={seconds}",
            enc(cluster)
        ),
        CtlAction::CutWatches { cluster } => format!("/cut-watches?cluster={}", enc(cluster)),
        CtlAction::Compact { cluster } => format!("/compact?cluster={}", enc(cluster)),
    };
    let addr = state.control.trim_start_matches("http://");
    let (code, body) = crate::client::post_plain(addr, &request, &state.control_token)
        .await
        .map_err(|e| CliError::Control(e.to_string()))?;
    if code != 200 {
        return Err(CliError::Control(body.trim().to_string()));
    }
    crate::out!("{body}");
    Ok(())
}

/// `--code`: 500, 409 or 429, or several of them comma-separated.
fn error_codes(text: &str) -> Result<String, String> {
    let codes: Vec<&str> = text.split(',').map(str::trim).collect();
    match codes.iter().find(|c| !matches!(**c, "500" | "409" | "429")) {
        Some(bad) => Err(format!(
            "{bad:?} is not an error the simulator injects: use 500, 409 or 429, or several comma-separated (500,409,429)"
        )),
        None => Ok(codes.join(",")),
    }
}
