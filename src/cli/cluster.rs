//! `cafe cluster register|list|remove`: member clusters as the hub knows them.
//!
//! Registration stores the member's kubeconfig (one context, flattened, credentials inline) in a
//! Secret in `cafe-system` on the hub and creates or updates the MemberCluster that points at it.
//! Everything that can be wrong with the member (its kubeconfig, its context, whether it answers)
//! is checked before the first write, so a failed registration leaves the hub untouched.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::Kubeconfig;
use serde_json::json;

use crate::api::labels::{CAFEDEPLOYMENT, SYSTEM_NAMESPACE, unit_label};
use crate::api::{CafeDeployment, InPlaceSet, MemberCluster, SecretKeyRef};
use crate::hub::access;
use crate::runtime::kubeconfig::{KubeconfigArgs, KubeconfigError};

mod flatten;
mod list;
mod units;

pub use flatten::flatten;
use flatten::read_member_kubeconfig;
pub use list::{format_cpu, format_memory, render_list};
use units::{check_name, check_units, render_units};
pub use units::{parse_unit, parse_units};

/// Key of the member kubeconfig inside its Secret.
pub const SECRET_KEY: &str = "kubeconfig";
/// Label on the kubeconfig Secret naming the MemberCluster it belongs to.
pub const SECRET_MEMBER_LABEL: &str = "apps.cafe.io/membercluster";
/// Field manager of everything `cafe cluster register` writes.
pub const FIELD_MANAGER: &str = "cafe-cli";
/// How long the member gets to answer `/version` before registration gives up.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Register, list and remove member clusters.
#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    pub command: ClusterCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum ClusterCommand {
    /// Register a member cluster with the hub (or update its registration).
    ///
    /// Here --kubeconfig/--context name the MEMBER cluster, as in
    /// `cafe cluster register dca --kubeconfig dca.yaml --unit DataCenter=DCA`.
    /// The hub is reached through --hub-kubeconfig/--hub-context, defaulting to $KUBECONFIG and
    /// its current context.
    Register(RegisterArgs),
    /// List the registered member clusters with their units, health and free capacity.
    List(HubArgs),
    /// Remove a member cluster: deletes its MemberCluster and its kubeconfig Secret.
    ///
    /// Refused while CafeDeployments place replicas there (their topology selects the member's
    /// unit, or their status names it): the hub would stop managing their InPlaceSets and pods
    /// in it, which keep running. --force removes it anyway and lists what is left behind.
    Remove(RemoveArgs),
}

#[derive(Debug, clap::Args)]
pub struct RegisterArgs {
    /// Name of the MemberCluster (a lowercase DNS label, e.g. dca).
    pub name: String,
    /// Kubeconfig file of the MEMBER cluster.
    #[arg(long, value_name = "MEMBER_FILE")]
    pub kubeconfig: PathBuf,
    /// Context of the member in that file (default: its current context).
    #[arg(long, value_name = "MEMBER_CONTEXT")]
    pub context: Option<String>,
    /// Topology unit of the member, TYPE=VALUE (repeatable), e.g. DataCenter=DCA.
    #[arg(long = "unit", value_name = "TYPE=VALUE", required = true)]
    pub units: Vec<String>,
    /// Kubeconfig of the HUB cluster (default, as kubectl: $KUBECONFIG, else ~/.kube/config).
    #[arg(long, value_name = "HUB_FILE")]
    pub hub_kubeconfig: Option<PathBuf>,
    /// Context of the hub in that file (default: its current context).
    #[arg(long, value_name = "HUB_CONTEXT")]
    pub hub_context: Option<String>,
    /// Store the member kubeconfig's own credentials in the hub, instead of creating a
    /// least-privilege ServiceAccount `cafe-system/cafe-hub` in the member and storing its token.
    #[arg(long)]
    pub use_kubeconfig_credentials: bool,
}

/// Which credentials the hub gets for a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Credentials {
    /// A ServiceAccount of the hub's own in the member, allowed exactly what the hub does there
    /// (see `hub::access`); its token is stored, and renewed by the hub.
    Dedicated,
    /// The given kubeconfig's credentials, as they are.
    Kubeconfig,
}

/// Where the hub is, for the subcommands that only talk to the hub.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct HubArgs {
    /// Kubeconfig of the hub cluster (default, as kubectl: $KUBECONFIG, else ~/.kube/config).
    #[arg(long, visible_alias = "hub-kubeconfig")]
    pub kubeconfig: Option<PathBuf>,
    /// Context of the hub in that file (default: its current context).
    #[arg(long, visible_alias = "hub-context")]
    pub context: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct RemoveArgs {
    /// Name of the MemberCluster to remove.
    pub name: String,
    /// Remove it even while CafeDeployments place replicas there; their InPlaceSets and pods in
    /// the member are left running, no longer managed by the hub.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub hub: HubArgs,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "cluster name {0:?} is not valid: use a lowercase DNS label (a-z, 0-9, '-', at most 50 characters), e.g. dca"
    )]
    Name(String),
    #[error("--unit {given:?}: {reason}; give TYPE=VALUE, e.g. --unit DataCenter=DCA")]
    Unit { given: String, reason: String },
    #[error("no unit given: pass at least one --unit TYPE=VALUE, e.g. --unit DataCenter=DCA")]
    NoUnits,
    #[error(
        "reading member kubeconfig {path}: {message}; pass the member's kubeconfig file with --kubeconfig"
    )]
    ReadKubeconfig { path: String, message: String },
    #[error("member kubeconfig {origin} is not a valid kubeconfig: {message}")]
    InvalidKubeconfig { origin: String, message: String },
    #[error(
        "member kubeconfig has no context {context:?}; pass one of its contexts with --context ({available})"
    )]
    UnknownContext { context: String, available: String },
    #[error("member kubeconfig has no current-context; pick one with --context ({available})")]
    NoContext { available: String },
    #[error(
        "member kubeconfig context {context:?} {problem}; fix the kubeconfig or pick another context with --context"
    )]
    IncompleteContext { context: String, problem: String },
    #[error(
        "member kubeconfig context {context:?} authenticates through {mechanism}, which the hub cannot run; use a kubeconfig with a bearer token or client certificate (e.g. a service-account token)"
    )]
    UnsupportedAuth { context: String, mechanism: String },
    #[error(
        "reading {path} (referenced by the member kubeconfig): {message}; make the file readable or inline its data"
    )]
    CredentialFile { path: String, message: String },
    #[error(
        "member cluster {name} at {server} did not answer: {message}; check that it is running and that its server address is reachable from here"
    )]
    Unreachable {
        name: String,
        server: String,
        message: String,
    },
    #[error(
        "member cluster {name} at {server} rejected the kubeconfig's credentials ({message}); refresh the token or certificate in the member kubeconfig"
    )]
    Unauthorized {
        name: String,
        server: String,
        message: String,
    },
    #[error("hub kubeconfig: {0}")]
    HubKubeconfig(#[from] KubeconfigError),
    #[error(
        "the hub has no MemberCluster CRD; install cafe's CRDs on the hub first (`cafe crds | kubectl apply -f -`)"
    )]
    NoCrd,
    #[error(
        "{action} on the hub: {message}; check that the hub is reachable and that your hub credentials may do this"
    )]
    Hub { action: String, message: String },
    #[error(
        "setting up the hub's own identity: {source}; your member credentials must be allowed to create a ServiceAccount, a ClusterRole and their bindings there, or pass --use-kubeconfig-credentials to store them instead"
    )]
    Access {
        #[source]
        source: crate::hub::access::AccessError,
    },
    #[error("no MemberCluster {0:?} on the hub; `cafe cluster list` shows the registered clusters")]
    NotFound(String),
    #[error(
        "member cluster {name} is in use: CafeDeployments {deployments} place replicas there; take its unit out of their topology.values first, or pass --force to remove it anyway (their InPlaceSets and pods in {name} keep running, no longer managed by the hub)"
    )]
    InUse { name: String, deployments: String },
    /// An error about the member being registered, named (its own text names only the file or
    /// the context).
    #[error("member cluster {name}: {source}")]
    Member {
        name: String,
        #[source]
        source: Box<ClusterError>,
    },
}

impl ClusterError {
    fn hub(action: impl Into<String>, err: &kube::Error) -> Self {
        ClusterError::Hub {
            action: action.into(),
            message: one_line(err),
        }
    }

    /// This error, naming member `name` if its text does not already.
    pub fn naming_member(self, name: &str) -> Self {
        match self {
            e @ (ClusterError::Unit { .. }
            | ClusterError::NoUnits
            | ClusterError::ReadKubeconfig { .. }
            | ClusterError::InvalidKubeconfig { .. }
            | ClusterError::UnknownContext { .. }
            | ClusterError::NoContext { .. }
            | ClusterError::IncompleteContext { .. }
            | ClusterError::UnsupportedAuth { .. }
            | ClusterError::CredentialFile { .. }
            | ClusterError::Access { .. }) => ClusterError::Member {
                name: name.to_string(),
                source: Box::new(e),
            },
            e => e,
        }
    }
}

pub async fn run(args: ClusterArgs) -> Result<(), ClusterError> {
    // A short command's failure is its one-line error; kube's own request logs would only
    // repeat it (see `quietly`).
    quietly(run_command(args)).await
}

async fn run_command(args: ClusterArgs) -> Result<(), ClusterError> {
    match args.command {
        ClusterCommand::Register(args) => {
            let name = args.name.clone();
            let units = register_command(args)
                .await
                .map_err(|e| e.naming_member(&name))?;
            cafe_base::outln!(
                "member cluster {name} registered with unit {}",
                render_units(&units)
            );
            Ok(())
        }
        ClusterCommand::List(hub) => {
            let hub = hub_client(hub.kubeconfig, hub.context).await?;
            cafe_base::out!("{}", render_list(&list(&hub).await?));
            Ok(())
        }
        ClusterCommand::Remove(args) => {
            let hub = hub_client(args.hub.kubeconfig, args.hub.context).await?;
            let removal = remove(&hub, &args.name, args.force).await?;
            cafe_base::outln!("{}", render_removal(&args.name, &removal));
            Ok(())
        }
    }
}

/// `cafe cluster register`: the units given, once registered.
async fn register_command(args: RegisterArgs) -> Result<Vec<(String, String)>, ClusterError> {
    let units = parse_units(&args.units)?;
    check_name(&args.name)?;
    let member = read_member_kubeconfig(&args.kubeconfig)?;
    let hub = hub_client(args.hub_kubeconfig, args.hub_context).await?;
    let credentials = if args.use_kubeconfig_credentials {
        Credentials::Kubeconfig
    } else {
        Credentials::Dedicated
    };
    register_kubeconfig(
        &hub,
        &args.name,
        member,
        args.context.as_deref(),
        &units,
        credentials,
    )
    .await?;
    Ok(units)
}

async fn hub_client(
    kubeconfig: Option<PathBuf>,
    context: Option<String>,
) -> Result<kube::Client, ClusterError> {
    Ok(KubeconfigArgs {
        kubeconfig,
        context,
    }
    .client()
    .await?)
}

/// Registers a member cluster with the hub, the way `cafe cluster register` does.
///
/// Guarantees, in order: the name, the units and the member kubeconfig are valid; the chosen
/// `context` (default: the kubeconfig's current context) exists; the member answers `/version`
/// and accepts those credentials (`/api`); with [`Credentials::Dedicated`], the hub's own
/// identity is set up in the member (`hub::access::grant`) and its token answers too; the hub has
/// the MemberCluster CRD. Only then does it write on the hub: namespace `cafe-system` (if
/// missing), Secret `<name>-kubeconfig` (key `kubeconfig`: that one context, flattened,
/// credentials inline; the token's validity in annotations) and MemberCluster `name` with one
/// `unit.apps.cafe.io/<TYPE>=<VALUE>` label per unit. Registering again updates both (units no
/// longer given are removed). On any error before the writes, nothing is written on the hub.
pub async fn register(
    hub: &kube::Client,
    name: &str,
    member_kubeconfig_yaml: &str,
    context: Option<&str>,
    units: &[(String, String)],
    credentials: Credentials,
) -> Result<(), ClusterError> {
    let kubeconfig = Kubeconfig::from_yaml(member_kubeconfig_yaml).map_err(|e| {
        ClusterError::InvalidKubeconfig {
            origin: "(given as text)".into(),
            message: one_line(&e),
        }
    })?;
    register_kubeconfig(hub, name, kubeconfig, context, units, credentials).await
}

async fn register_kubeconfig(
    hub: &kube::Client,
    name: &str,
    member: Kubeconfig,
    context: Option<&str>,
    units: &[(String, String)],
    credentials: Credentials,
) -> Result<(), ClusterError> {
    check_name(name)?;
    check_units(units)?;
    let flat = flatten(member, context)?;
    let yaml = to_yaml(&flat)?;
    let operator = probe(name, &flat, &yaml).await?;
    let (yaml, annotations) = match credentials {
        Credentials::Kubeconfig => (yaml, BTreeMap::new()),
        Credentials::Dedicated => {
            let issued = quietly(async {
                access::grant(&operator).await?;
                access::issue_token(&operator, access::TOKEN_LIFETIME).await
            })
            .await
            .map_err(|source| ClusterError::Access { source })?;
            let own = access::with_token(&flat, &issued.token)
                .map_err(|source| ClusterError::Access { source })?;
            let yaml = to_yaml(&own)?;
            // The token must work before the hub is told to use it.
            probe(name, &own, &yaml).await?;
            (yaml, issued.annotations())
        }
    };
    write_registration(hub, name, &yaml, units, &annotations).await
}

fn to_yaml(kubeconfig: &Kubeconfig) -> Result<String, ClusterError> {
    serde_saphyr::to_string(kubeconfig).map_err(|e| ClusterError::InvalidKubeconfig {
        origin: "(flattened)".into(),
        message: one_line(&e),
    })
}

/// The member must answer `/version` and accept the credentials of `yaml` (`/api`); the client
/// that did.
async fn probe(name: &str, flat: &Kubeconfig, yaml: &str) -> Result<kube::Client, ClusterError> {
    let server = flat
        .clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.server.clone())
        .unwrap_or_default();
    let client = crate::runtime::kubeconfig::client_from_yaml(yaml, None, "member kubeconfig")
        .await
        .map_err(|e| ClusterError::InvalidKubeconfig {
            origin: "member".into(),
            message: one_line(&e),
        })?;
    let unreachable = |message: String| ClusterError::Unreachable {
        name: name.to_string(),
        server: server.clone(),
        message,
    };
    // /version answers anonymous callers too; /api needs the credentials to be accepted.
    let answer = async {
        client.apiserver_version().await?;
        client.list_core_api_versions().await
    };
    match tokio::time::timeout(PROBE_TIMEOUT, quietly(answer)).await {
        Err(_) => Err(unreachable(format!("no answer within {PROBE_TIMEOUT:?}"))),
        Ok(Ok(_)) => Ok(client),
        Ok(Err(kube::Error::Api(s))) if s.code == 401 || s.code == 403 => {
            Err(ClusterError::Unauthorized {
                name: name.to_string(),
                server: server.clone(),
                message: format!("{} {}", s.code, s.reason),
            })
        }
        Ok(Err(e)) => Err(unreachable(one_line(&e))),
    }
}

async fn write_registration(
    hub: &kube::Client,
    name: &str,
    kubeconfig_yaml: &str,
    units: &[(String, String)],
    annotations: &BTreeMap<String, String>,
) -> Result<(), ClusterError> {
    let clusters: Api<MemberCluster> = Api::all(hub.clone());
    // Before the first write: the CRD must be there, or the Secret would be written for nothing.
    match clusters
        .list_metadata(&ListParams::default().limit(1))
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => return Err(ClusterError::NoCrd),
        Err(e) => return Err(ClusterError::hub("listing MemberClusters", &e)),
    }
    ensure_namespace(hub).await?;

    let secret_name = secret_name(name);
    let secrets: Api<Secret> = Api::namespaced(hub.clone(), SYSTEM_NAMESPACE);
    let existed = secrets
        .get_metadata_opt(&secret_name)
        .await
        .map_err(|e| {
            ClusterError::hub(
                format!("reading Secret {SYSTEM_NAMESPACE}/{secret_name}"),
                &e,
            )
        })?
        .is_some();
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let secret = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": secret_name,
            "namespace": SYSTEM_NAMESPACE,
            "labels": {SECRET_MEMBER_LABEL: name},
            "annotations": annotations,
        },
        "type": "Opaque",
        "data": {SECRET_KEY: BASE64.encode(kubeconfig_yaml)},
    });
    secrets
        .patch(&secret_name, &params, &Patch::Apply(&secret))
        .await
        .map_err(|e| {
            ClusterError::hub(
                format!("writing Secret {SYSTEM_NAMESPACE}/{secret_name}"),
                &e,
            )
        })?;

    let member = member_cluster(name, units);
    if let Err(e) = clusters.patch(name, &params, &Patch::Apply(&member)).await {
        // Do not leave a Secret behind that no MemberCluster points at.
        if !existed {
            let _ = secrets.delete(&secret_name, &DeleteParams::default()).await;
        }
        return Err(ClusterError::hub(
            format!("writing MemberCluster {name}"),
            &e,
        ));
    }
    Ok(())
}

async fn ensure_namespace(hub: &kube::Client) -> Result<(), ClusterError> {
    let namespaces: Api<Namespace> = Api::all(hub.clone());
    let action = format!("creating namespace {SYSTEM_NAMESPACE}");
    if namespaces
        .get_metadata_opt(SYSTEM_NAMESPACE)
        .await
        .map_err(|e| ClusterError::hub(&action, &e))?
        .is_some()
    {
        return Ok(());
    }
    let ns: Namespace = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": SYSTEM_NAMESPACE},
    }))
    .map_err(|e| ClusterError::Hub {
        action: action.clone(),
        message: e.to_string(),
    })?;
    match namespaces.create(&PostParams::default(), &ns).await {
        Ok(_) => Ok(()),
        // Someone else created it meanwhile.
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(ClusterError::hub(&action, &e)),
    }
}

/// `<name>-kubeconfig`
pub fn secret_name(member: &str) -> String {
    format!("{member}-kubeconfig")
}

/// The MemberCluster a registration applies (server-side): unit labels and the Secret reference.
pub fn member_cluster(name: &str, units: &[(String, String)]) -> serde_json::Value {
    let labels: BTreeMap<String, String> = units
        .iter()
        .map(|(t, v)| (unit_label(t), v.clone()))
        .collect();
    let secret = SecretKeyRef {
        namespace: SYSTEM_NAMESPACE.into(),
        name: secret_name(name),
        key: SECRET_KEY.into(),
    };
    // Only the fields registration owns: `spec.unschedulable` (cordon) stays with whoever set it.
    json!({
        "apiVersion": "apps.cafe.io/v1alpha1",
        "kind": "MemberCluster",
        "metadata": {"name": name, "labels": labels},
        "spec": {"kubeconfigSecretRef": secret},
    })
}

/// The registered member clusters, sorted by name.
pub async fn list(hub: &kube::Client) -> Result<Vec<MemberCluster>, ClusterError> {
    let api: Api<MemberCluster> = Api::all(hub.clone());
    let mut items = match api.list(&ListParams::default()).await {
        Ok(l) => l.items,
        Err(kube::Error::Api(s)) if s.code == 404 => return Err(ClusterError::NoCrd),
        Err(e) => return Err(ClusterError::hub("listing MemberClusters", &e)),
    };
    items.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    Ok(items)
}

/// What removing a member left behind: the CafeDeployments that placed replicas there (only
/// with `force`), and the hub-made InPlaceSets still in the member (`Err`: why they could not be
/// listed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removal {
    pub deployments: Vec<String>,
    pub inplacesets: Result<Vec<String>, String>,
    /// The hub's own identity in the member, when registration created one: `Ok` once removed,
    /// `Err` with why it could not be.
    pub identity: Option<Result<(), String>>,
}

/// Deletes MemberCluster `name` and the kubeconfig Secret it references. Refused while
/// CafeDeployments place replicas there ([`placing_replicas_on`]), unless `force`.
pub async fn remove(hub: &kube::Client, name: &str, force: bool) -> Result<Removal, ClusterError> {
    let api: Api<MemberCluster> = Api::all(hub.clone());
    let member = match api.get_opt(name).await {
        Ok(Some(m)) => m,
        Ok(None) => return Err(ClusterError::NotFound(name.to_string())),
        Err(e) => {
            return Err(ClusterError::hub(
                format!("reading MemberCluster {name}"),
                &e,
            ));
        }
    };
    let deployments = match Api::<CafeDeployment>::all(hub.clone())
        .list(&ListParams::default())
        .await
    {
        Ok(l) => placing_replicas_on(&member, &l.items),
        // No CafeDeployment CRD: nothing can be placed there.
        Err(kube::Error::Api(s)) if s.code == 404 => vec![],
        Err(e) => return Err(ClusterError::hub("listing CafeDeployments", &e)),
    };
    if !deployments.is_empty() && !force {
        return Err(ClusterError::InUse {
            name: name.to_string(),
            deployments: deployments.join(", "),
        });
    }
    // While the credentials are still there: what the hub made in the member stays behind.
    let inplacesets = if deployments.is_empty() {
        Ok(vec![])
    } else {
        hub_inplacesets(hub, &member).await
    };
    let stored = stored_kubeconfig(hub, &member).await;
    // The MemberCluster first: the hub stops using the member before its credentials go.
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => {
            return Err(ClusterError::hub(
                format!("deleting MemberCluster {name}"),
                &e,
            ));
        }
    }
    // Then the identity registration made in the member, with its own token (it may delete
    // itself, and nothing else), while the Secret still holds that token.
    let identity = match &stored {
        Ok((yaml, true)) => Some(revoke(yaml).await),
        Ok((_, false)) => None,
        Err(cause) => Some(Err(cause.clone())),
    };
    let r = &member.spec.kubeconfig_secret_ref;
    let secrets: Api<Secret> = Api::namespaced(hub.clone(), &r.namespace);
    match secrets.delete(&r.name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => {
            return Err(ClusterError::hub(
                format!("deleting Secret {}/{}", r.namespace, r.name),
                &e,
            ));
        }
    }
    Ok(Removal {
        deployments,
        inplacesets,
        identity,
    })
}

/// The member kubeconfig the hub holds for `member`, and whether its token is one registration
/// issued (so there is an identity to remove). `Err` says why it could not be read.
async fn stored_kubeconfig(
    hub: &kube::Client,
    member: &MemberCluster,
) -> Result<(String, bool), String> {
    let r = &member.spec.kubeconfig_secret_ref;
    let secret = match Api::<Secret>::namespaced(hub.clone(), &r.namespace)
        .get_opt(&r.name)
        .await
    {
        Ok(Some(secret)) => secret,
        // Nothing stored: nothing of the hub's can be in the member either.
        Ok(None) => return Ok((String::new(), false)),
        Err(e) => {
            return Err(format!(
                "reading Secret {}/{}: {}",
                r.namespace,
                r.name,
                one_line(&e)
            ));
        }
    };
    let issued = secret
        .annotations()
        .contains_key(access::TOKEN_SERVICE_ACCOUNT);
    let yaml = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&r.key))
        .map(|b| String::from_utf8_lossy(&b.0).to_string());
    match yaml {
        Some(yaml) => Ok((yaml, issued)),
        None if !issued => Ok((String::new(), false)),
        None => Err(format!(
            "Secret {}/{} has no key {}",
            r.namespace, r.name, r.key
        )),
    }
}

/// Removes the hub's identity from the member through `yaml`, the hub's stored kubeconfig.
async fn revoke(yaml: &str) -> Result<(), String> {
    let client = crate::runtime::kubeconfig::client_from_yaml(yaml, None, "member kubeconfig")
        .await
        .map_err(|e| one_line(&e))?;
    match tokio::time::timeout(PROBE_TIMEOUT, quietly(access::revoke(&client))).await {
        Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(one_line(&e)),
    }
}

/// `namespace/name` of each CafeDeployment that places replicas on `member`: its topology
/// selects a unit the member is labelled with, or its status names the member as a unit's
/// cluster. Sorted.
pub fn placing_replicas_on(member: &MemberCluster, deployments: &[CafeDeployment]) -> Vec<String> {
    let name = member.metadata.name.as_deref().unwrap_or_default();
    let labels = member.metadata.labels.clone().unwrap_or_default();
    let mut found: Vec<String> = deployments
        .iter()
        .filter(|cd| {
            let topology = &cd.spec.topology;
            let selected = labels
                .get(&unit_label(&topology.unit_type))
                .is_some_and(|v| topology.values.contains(v));
            let reported = cd
                .status
                .as_ref()
                .is_some_and(|s| s.units.iter().any(|u| u.cluster.as_deref() == Some(name)));
            selected || reported
        })
        .map(|cd| {
            format!(
                "{}/{}",
                cd.metadata.namespace.as_deref().unwrap_or_default(),
                cd.metadata.name.as_deref().unwrap_or_default()
            )
        })
        .collect();
    found.sort();
    found.dedup();
    found
}

/// `namespace/name` of the InPlaceSets the hub made in `member` (labelled with their
/// CafeDeployment), through the member's kubeconfig Secret; `Err` says why they could not be
/// listed.
async fn hub_inplacesets(
    hub: &kube::Client,
    member: &MemberCluster,
) -> Result<Vec<String>, String> {
    let r = &member.spec.kubeconfig_secret_ref;
    let secret = Api::<Secret>::namespaced(hub.clone(), &r.namespace)
        .get(&r.name)
        .await
        .map_err(|e| {
            format!(
                "reading Secret {}/{}: {}",
                r.namespace,
                r.name,
                one_line(&e)
            )
        })?;
    let yaml = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&r.key))
        .map(|b| String::from_utf8_lossy(&b.0).to_string())
        .ok_or_else(|| format!("Secret {}/{} has no key {}", r.namespace, r.name, r.key))?;
    let client = crate::runtime::kubeconfig::client_from_yaml(&yaml, None, "member kubeconfig")
        .await
        .map_err(|e| one_line(&e))?;
    let api: Api<InPlaceSet> = Api::all(client);
    let listed = tokio::time::timeout(
        PROBE_TIMEOUT,
        quietly(api.list_metadata(&ListParams::default().labels(CAFEDEPLOYMENT))),
    )
    .await
    .map_err(|_| format!("no answer within {PROBE_TIMEOUT:?}"))?
    .map_err(|e| one_line(&e))?;
    let mut names: Vec<String> = listed
        .items
        .iter()
        .map(|m| {
            format!(
                "{}/{}",
                m.metadata.namespace.as_deref().unwrap_or_default(),
                m.metadata.name.as_deref().unwrap_or_default()
            )
        })
        .collect();
    names.sort();
    Ok(names)
}

/// What `cafe cluster remove` prints: that the member is gone and, when CafeDeployments placed
/// replicas there, what keeps running in it without the hub.
pub fn render_removal(name: &str, removal: &Removal) -> String {
    let mut out = format!("member cluster {name} removed");
    match &removal.identity {
        Some(Ok(())) => out.push_str(&format!(
            "\nthe hub's ServiceAccount {}/{} and its roles were removed from {name}",
            SYSTEM_NAMESPACE,
            access::IDENTITY
        )),
        Some(Err(cause)) => out.push_str(&format!(
            "\ncould not remove the hub's ServiceAccount and roles from {name} ({cause}); remove them there with `kubectl --context {name} delete clusterrole {}` (everything else goes with it)",
            access::IDENTITY
        )),
        None => {}
    }
    if removal.deployments.is_empty() {
        return out;
    }
    out.push_str(&format!(
        "\nCafeDeployments {} placed replicas there; the hub no longer manages them in {name}",
        removal.deployments.join(", ")
    ));
    match &removal.inplacesets {
        Ok(sets) if sets.is_empty() => {
            out.push_str(&format!("\nno InPlaceSet of theirs is left in {name}"));
        }
        Ok(sets) => out.push_str(&format!(
            "\nleft behind in {name}, still running with their pods: InPlaceSets {} (delete them there when done: `kubectl --context {name} delete inplaceset -n NAMESPACE NAME`)",
            sets.join(", ")
        )),
        Err(cause) => out.push_str(&format!(
            "\ncould not list what is left behind in {name} ({cause}); their InPlaceSets and pods there keep running"
        )),
    }
    out
}

/// Runs `f` with tracing off. kube-client logs every failed request at ERROR level; where the
/// failure is returned (and reported) as an error anyway, those lines would only repeat it,
/// and a command's error must stay one line.
pub async fn quietly<F: std::future::Future>(f: F) -> F::Output {
    use tracing::instrument::WithSubscriber;
    f.with_subscriber(tracing::subscriber::NoSubscriber::default())
        .await
}

/// An error and its causes on one line (`a: b: c`): the first line of each, without repeating
/// a cause the message already contains.
pub fn one_line(err: &(dyn std::error::Error + 'static)) -> String {
    // Parsers append source snippets after the first line; the first line names the problem.
    let first = |e: &dyn std::error::Error| e.to_string().lines().next().unwrap_or("").to_string();
    let mut text = first(err);
    let mut source = err.source();
    while let Some(s) = source {
        let part = first(s);
        if !part.is_empty() && !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_cluster_has_unit_labels_and_secret_ref() {
        let m = member_cluster("dca", &[("DataCenter".into(), "DCA".into())]);
        assert_eq!(
            m["metadata"]["labels"]["unit.apps.cafe.io/DataCenter"],
            "DCA"
        );
        assert_eq!(
            m["spec"]["kubeconfigSecretRef"],
            json!({"namespace": "cafe-system", "name": "dca-kubeconfig", "key": "kubeconfig"})
        );
        let typed: MemberCluster = serde_json::from_value(m).unwrap();
        assert!(!typed.spec.unschedulable);
    }

    fn member(name: &str, unit: &str) -> MemberCluster {
        serde_json::from_value(json!({
            "apiVersion": "apps.cafe.io/v1alpha1", "kind": "MemberCluster",
            "metadata": {"name": name, "labels": {"unit.apps.cafe.io/DataCenter": unit}},
            "spec": {"kubeconfigSecretRef": {"namespace": "cafe-system", "name": format!("{name}-kubeconfig")}},
        }))
        .unwrap()
    }

    fn deployment(
        ns: &str,
        name: &str,
        unit_type: &str,
        values: &[&str],
        status: serde_json::Value,
    ) -> CafeDeployment {
        serde_json::from_value(json!({
            "apiVersion": "apps.cafe.io/v1alpha1", "kind": "CafeDeployment",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": {"app": name}},
                             "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}},
                "topology": {"unitType": unit_type, "values": values},
            },
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn cluster_remove_refuses_a_member_in_use_by_topology_or_status() {
        let dcb = member("dcb", "DCB");
        let deployments = [
            deployment("shop", "web", "DataCenter", &["DCA", "DCB"], json!({})),
            deployment("default", "demo", "DataCenter", &["DCB"], json!({})),
            // Another unit type with the same value: not this member's unit.
            deployment("default", "zoned", "Zone", &["DCB"], json!({})),
            deployment("default", "elsewhere", "DataCenter", &["DCA"], json!({})),
            // Its topology moved off DCB, but the hub still reports replicas there.
            deployment(
                "default",
                "leaving",
                "DataCenter",
                &["DCA"],
                json!({"units": [{"name": "DCB", "cluster": "dcb"}]}),
            ),
        ];
        assert_eq!(
            placing_replicas_on(&dcb, &deployments),
            ["default/demo", "default/leaving", "shop/web"]
        );
        assert!(placing_replicas_on(&member("dcc", "DCC"), &deployments).is_empty());

        let err = ClusterError::InUse {
            name: "dcb".into(),
            deployments: "default/demo, shop/web".into(),
        }
        .to_string();
        assert!(
            err.contains("member cluster dcb is in use")
                && err.contains("default/demo, shop/web")
                && err.contains("--force")
                && !err.contains('\n'),
            "{err}"
        );
    }

    #[test]
    fn cluster_remove_with_force_says_what_is_left_behind_and_where() {
        let quiet = Removal {
            deployments: vec![],
            inplacesets: Ok(vec![]),
            identity: None,
        };
        assert_eq!(render_removal("dcb", &quiet), "member cluster dcb removed");

        let forced = Removal {
            deployments: vec!["default/demo".into()],
            inplacesets: Ok(vec!["default/demo".into(), "shop/web".into()]),
            identity: None,
        };
        let out = render_removal("dcb", &forced);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "member cluster dcb removed");
        assert!(lines[1].contains("CafeDeployments default/demo"), "{out}");
        assert!(
            lines[2].starts_with("left behind in dcb")
                && lines[2].contains("InPlaceSets default/demo, shop/web"),
            "{out}"
        );

        let unreachable = Removal {
            deployments: vec!["default/demo".into()],
            inplacesets: Err("no answer within 10s".into()),
            identity: Some(Err("no answer within 10s".into())),
        };
        let out = render_removal("dcb", &unreachable);
        assert!(
            out.contains("could not list what is left behind in dcb (no answer within 10s)"),
            "{out}"
        );
        assert!(
            out.contains("kubectl --context dcb delete clusterrole cafe-hub"),
            "{out}"
        );
    }

    #[test]
    fn cli_errors_about_a_member_name_the_member() {
        let named = ClusterError::UnknownContext {
            context: "nope".into(),
            available: "dca, dcb".into(),
        }
        .naming_member("dcx")
        .to_string();
        assert!(named.starts_with("member cluster dcx: "), "{named}");
        // Already named: not twice.
        let unreachable = ClusterError::Unreachable {
            name: "dcx".into(),
            server: "https://127.0.0.1:1".into(),
            message: "refused".into(),
        };
        let text = unreachable.naming_member("dcx").to_string();
        assert_eq!(text.matches("dcx").count(), 1, "{text}");
    }
}
