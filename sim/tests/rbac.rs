//! Authentication, RBAC and impersonation behave as in a real cluster, seen through kube-rs and
//! kubectl: ServiceAccount tokens, Roles and bindings, aggregation, reviews, the call record.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{start, wait_for};
use k8s_openapi::api::authentication::v1::{SelfSubjectReview, TokenRequest};
use k8s_openapi::api::authorization::v1::SelfSubjectAccessReview;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::core::Status;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(5);

/// A kube-rs client of the admin's kubeconfig, changed by `edit` (token, impersonation).
async fn client_with(
    sim: &cafe_sim::sim::Sim,
    edit: impl FnOnce(&mut kube::Config),
) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&sim.kubeconfig(Some("dca"))).unwrap();
    let options = kube::config::KubeConfigOptions {
        context: Some("dca".into()),
        ..Default::default()
    };
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .unwrap();
    edit(&mut config);
    kube::Client::try_from(config).unwrap()
}

async fn token_client(sim: &cafe_sim::sim::Sim, token: &str) -> kube::Client {
    let token = token.to_string();
    client_with(sim, move |c| c.auth_info.token = Some(token.into())).await
}

async fn impersonating(sim: &cafe_sim::sim::Sim, user: &str, groups: &[&str]) -> kube::Client {
    let (user, groups): (String, Vec<String>) =
        (user.into(), groups.iter().map(|g| g.to_string()).collect());
    client_with(sim, move |c| {
        c.auth_info.impersonate = Some(user);
        if !groups.is_empty() {
            c.auth_info.impersonate_groups = Some(groups);
        }
    })
    .await
}

fn obj<T: DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap()
}

fn api_err(e: kube::Error) -> Status {
    match e {
        kube::Error::Api(s) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// Creates the namespace (unless it exists) and a ServiceAccount in it.
async fn service_account(admin: &kube::Client, ns: &str, name: &str) -> ServiceAccount {
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    if namespaces.get_opt(ns).await.unwrap().is_none() {
        namespaces
            .create(
                &PostParams::default(),
                &obj(json!({"metadata": {"name": ns}})),
            )
            .await
            .unwrap();
    }
    Api::<ServiceAccount>::namespaced(admin.clone(), ns)
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": name}})),
        )
        .await
        .unwrap()
}

async fn request_token(
    admin: &kube::Client,
    ns: &str,
    name: &str,
    seconds: Option<i64>,
) -> Result<TokenRequest, kube::Error> {
    let spec = match seconds {
        Some(s) => json!({"audiences": [], "expirationSeconds": s}),
        None => json!({"audiences": []}),
    };
    Api::<ServiceAccount>::namespaced(admin.clone(), ns)
        .create_token_request(name, &PostParams::default(), &obj(json!({"spec": spec})))
        .await
}

async fn token_of(admin: &kube::Client, ns: &str, name: &str) -> String {
    let tr = request_token(admin, ns, name, None).await.unwrap();
    tr.status.unwrap().token
}

async fn role(admin: &kube::Client, ns: &str, name: &str, rules: Value) {
    Api::<Role>::namespaced(admin.clone(), ns)
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": name}, "rules": rules})),
        )
        .await
        .unwrap();
}

/// Replaces the rules of Role `ns/name`.
async fn rules_of(admin: &kube::Client, ns: &str, name: &str, rules: Value) {
    Api::<Role>::namespaced(admin.clone(), ns)
        .patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"rules": rules})),
        )
        .await
        .unwrap();
}

async fn cluster_role(admin: &kube::Client, name: &str, labels: Value, rules: Value) {
    Api::<ClusterRole>::all(admin.clone())
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": name, "labels": labels}, "rules": rules})),
        )
        .await
        .unwrap();
}

fn sa_subject(ns: &str, name: &str) -> Value {
    json!([{"kind": "ServiceAccount", "name": name, "namespace": ns}])
}

async fn role_binding(
    admin: &kube::Client,
    ns: &str,
    name: &str,
    kind: &str,
    role: &str,
    subjects: Value,
) {
    Api::<RoleBinding>::namespaced(admin.clone(), ns)
        .create(
            &PostParams::default(),
            &obj(json!({
                "metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role},
                "subjects": subjects,
            })),
        )
        .await
        .unwrap();
}

/// A client of ServiceAccount `ns/name` (created), allowed `rules` through Role `role` in `ns`
/// and a RoleBinding `<name>-<role>`.
async fn bound_service_account(
    sim: &cafe_sim::sim::Sim,
    admin: &kube::Client,
    (ns, name): (&str, &str),
    role_name: &str,
    rules: Value,
) -> kube::Client {
    service_account(admin, ns, name).await;
    role(admin, ns, role_name, rules).await;
    let binding = format!("{name}-{role_name}");
    role_binding(admin, ns, &binding, "Role", role_name, sa_subject(ns, name)).await;
    token_client(sim, &token_of(admin, ns, name).await).await
}

async fn whoami(client: &kube::Client) -> Result<(String, Vec<String>), kube::Error> {
    let review: SelfSubjectReview = Api::<SelfSubjectReview>::all(client.clone())
        .create(&PostParams::default(), &obj(json!({})))
        .await?;
    let info = review.status.and_then(|s| s.user_info).unwrap_or_default();
    Ok((
        info.username.unwrap_or_default(),
        info.groups.unwrap_or_default(),
    ))
}

async fn can_i(client: &kube::Client, attributes: Value) -> (bool, String) {
    let review: SelfSubjectAccessReview = Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(
            &PostParams::default(),
            &obj(json!({"spec": {"resourceAttributes": attributes}})),
        )
        .await
        .unwrap();
    let status = review.status.unwrap();
    (status.allowed, status.reason.unwrap_or_default())
}

fn pod(name: &str) -> Pod {
    obj(
        json!({"metadata": {"name": name}, "spec": {"containers": [{"name": "app", "image": "nginx"}]}}),
    )
}

#[tokio::test]
async fn a_role_lets_a_service_account_list_pods_in_its_namespace_only() {
    let sim = start().await;
    let admin = common::client(&sim, "dca").await;
    let bot = bound_service_account(
        &sim,
        &admin,
        ("apps", "bot"),
        "pod-reader",
        json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]),
    )
    .await;

    Api::<Pod>::namespaced(bot.clone(), "apps")
        .list(&ListParams::default())
        .await
        .expect("list in apps");

    let elsewhere = api_err(
        Api::<Pod>::namespaced(bot.clone(), "default")
            .list(&ListParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(elsewhere.code, 403);
    assert_eq!(elsewhere.reason, "Forbidden");
    assert_eq!(
        elsewhere.message,
        "pods is forbidden: User \"system:serviceaccount:apps:bot\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
    );
    let details = elsewhere.details.unwrap();
    assert_eq!(
        (
            details.kind.as_str(),
            details.group.as_str(),
            details.name.as_str()
        ),
        ("pods", "", "")
    );

    let create = api_err(
        Api::<Pod>::namespaced(bot.clone(), "apps")
            .create(&PostParams::default(), &pod("p"))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        create.message,
        "pods is forbidden: User \"system:serviceaccount:apps:bot\" cannot create resource \"pods\" in API group \"\" in the namespace \"apps\""
    );
    let nodes = api_err(
        Api::<k8s_openapi::api::core::v1::Node>::all(bot.clone())
            .get("dca-node-1")
            .await
            .unwrap_err(),
    );
    assert_eq!(
        nodes.message,
        "nodes \"dca-node-1\" is forbidden: User \"system:serviceaccount:apps:bot\" cannot get resource \"nodes\" in API group \"\" at the cluster scope"
    );

    // The call record names the ServiceAccount and what it did, denied calls included.
    let cluster = sim.cluster("dca").unwrap();
    let calls: Vec<_> = cluster
        .calls()
        .into_iter()
        .filter(|c| c.user == "system:serviceaccount:apps:bot")
        .collect();
    let seen = |verb: &str, ns: &str, code: u16| {
        calls.iter().any(|c| {
            c.verb == verb
                && c.resource == "pods"
                && c.api_group.is_empty()
                && c.namespace == ns
                && c.code == code
        })
    };
    assert!(seen("list", "apps", 200), "{calls:?}");
    assert!(seen("list", "default", 403), "{calls:?}");
    assert!(seen("create", "apps", 403), "{calls:?}");
    assert!(
        calls
            .iter()
            .any(|c| c.resource == "nodes" && c.name == "dca-node-1" && c.code == 403)
    );
    let admin_calls = cluster
        .calls()
        .into_iter()
        .filter(|c| c.user == "kubernetes-admin")
        .count();
    assert!(admin_calls > 0);
    assert!(
        cluster
            .metrics
            .count(|l| l.code == "403" && l.resource == "pods")
            >= 2
    );
}

#[tokio::test]
async fn cluster_role_bindings_grant_everywhere_and_resource_names_restrict_get_but_not_list() {
    let sim = start().await;
    let admin = common::client(&sim, "dca").await;
    service_account(&admin, "default", "watcher").await;
    cluster_role(
        &admin,
        "pods-read",
        json!({}),
        json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}]),
    )
    .await;
    Api::<ClusterRoleBinding>::all(admin.clone())
        .create(
            &PostParams::default(),
            &obj(json!({
                "metadata": {"name": "watcher-pods"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "pods-read"},
                "subjects": sa_subject("default", "watcher"),
            })),
        )
        .await
        .unwrap();
    cluster_role(&admin, "one-config", json!({}), json!([{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["one"], "verbs": ["get", "list"]}])).await;
    role_binding(
        &admin,
        "default",
        "watcher-one",
        "ClusterRole",
        "one-config",
        sa_subject("default", "watcher"),
    )
    .await;
    let cms: Api<ConfigMap> = Api::namespaced(admin.clone(), "default");
    for name in ["one", "two"] {
        cms.create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": name}})),
        )
        .await
        .unwrap();
    }
    let watcher = token_client(&sim, &token_of(&admin, "default", "watcher").await).await;

    Api::<Pod>::all(watcher.clone())
        .list(&ListParams::default())
        .await
        .expect("cluster-wide list");
    Api::<Pod>::namespaced(watcher.clone(), "kube-system")
        .list(&ListParams::default())
        .await
        .expect("any namespace");

    let mine: Api<ConfigMap> = Api::namespaced(watcher.clone(), "default");
    mine.get("one").await.expect("the named configmap");
    let two = api_err(mine.get("two").await.unwrap_err());
    assert_eq!(
        two.message,
        "configmaps \"two\" is forbidden: User \"system:serviceaccount:default:watcher\" cannot get resource \"configmaps\" in API group \"\" in the namespace \"default\""
    );
    assert_eq!(two.details.unwrap().name, "two");
    let list = api_err(mine.list(&ListParams::default()).await.unwrap_err());
    assert_eq!(list.code, 403, "resourceNames never match an unnamed list");
    // A list narrowed to the one name by field selector is a request for that name, as upstream.
    let narrowed = mine
        .list(&ListParams::default().fields("metadata.name=one"))
        .await
        .expect("named list");
    assert_eq!(narrowed.items.len(), 1);
}

#[tokio::test]
async fn token_request_tokens_expire_and_die_with_their_service_account() {
    let sim = start().await;
    let admin = common::client(&sim, "dca").await;
    service_account(&admin, "apps", "bot").await;

    let short = api_err(
        request_token(&admin, "apps", "bot", Some(599))
            .await
            .unwrap_err(),
    );
    assert_eq!(short.code, 422);
    assert!(
        short
            .message
            .contains("may not specify a duration less than 10 minutes"),
        "{}",
        short.message
    );
    let default = request_token(&admin, "apps", "bot", None).await.unwrap();
    assert_eq!(default.spec.expiration_seconds, Some(3600));

    let minimal = request_token(&admin, "apps", "bot", Some(600))
        .await
        .unwrap();
    let expires = serde_json::to_value(&minimal).unwrap()["status"]["expirationTimestamp"]
        .as_str()
        .unwrap()
        .to_string();
    let left = chrono::DateTime::parse_from_rfc3339(&expires)
        .unwrap()
        .timestamp()
        - chrono::Utc::now().timestamp();
    let status = minimal.status.unwrap();
    assert!((590..=600).contains(&left), "expires in {left}s");
    let bot = token_client(&sim, &status.token).await;
    let (user, groups) = whoami(&bot).await.expect("a fresh token authenticates");
    assert_eq!(user, "system:serviceaccount:apps:bot");
    assert_eq!(
        groups,
        [
            "system:serviceaccounts",
            "system:serviceaccounts:apps",
            "system:authenticated"
        ]
    );

    sim.cluster("dca")
        .unwrap()
        .tokens
        .advance_clock(Duration::from_secs(601));
    assert_eq!(
        api_err(whoami(&bot).await.unwrap_err()).code,
        401,
        "expired"
    );

    let long = token_client(&sim, &default.status.unwrap().token).await;
    whoami(&long).await.expect("an hour-long token still works");
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), "apps");
    sas.delete("bot", &DeleteParams::default()).await.unwrap();
    assert_eq!(
        api_err(whoami(&long).await.unwrap_err()).code,
        401,
        "its ServiceAccount is gone"
    );
    sas.create(
        &PostParams::default(),
        &obj(json!({"metadata": {"name": "bot"}})),
    )
    .await
    .unwrap();
    assert_eq!(
        api_err(whoami(&long).await.unwrap_err()).code,
        401,
        "a new ServiceAccount of the same name is another one"
    );
    let unknown = token_client(&sim, "not-a-token").await;
    assert_eq!(api_err(whoami(&unknown).await.unwrap_err()).code, 401);
}

#[tokio::test]
async fn token_secrets_are_filled_by_the_controller_and_revoked_by_deletion() {
    let sim = start().await;
    let admin = common::client(&sim, "dca").await;
    let sa = service_account(&admin, "apps", "builder").await;
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), "apps");
    secrets
        .create(
            &PostParams::default(),
            &obj(json!({
                "metadata": {"name": "builder-token", "annotations": {"kubernetes.io/service-account.name": "builder"}},
                "type": "kubernetes.io/service-account-token",
            })),
        )
        .await
        .unwrap();
    let filled = wait_for("the token controller fills the Secret", WAIT, || {
        let secrets = secrets.clone();
        async move {
            let s = secrets.get("builder-token").await.ok()?;
            s.data.as_ref()?.contains_key("token").then_some(s)
        }
    })
    .await;
    let data = filled.data.unwrap();
    let cluster = sim.cluster("dca").unwrap();
    assert_eq!(data["ca.crt"].0, cluster.identity.ca_pem.as_bytes());
    assert_eq!(data["namespace"].0, b"apps");
    assert_eq!(
        filled.metadata.annotations.unwrap()["kubernetes.io/service-account.uid"],
        sa.metadata.uid.unwrap()
    );
    let token = String::from_utf8(data["token"].0.clone()).unwrap();
    let builder = token_client(&sim, &token).await;
    assert_eq!(
        whoami(&builder).await.unwrap().0,
        "system:serviceaccount:apps:builder"
    );

    secrets
        .delete("builder-token", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(api_err(whoami(&builder).await.unwrap_err()).code, 401);
}

#[tokio::test]
async fn labelled_cluster_roles_aggregate_into_view_edit_and_admin() {
    let sim = start().await;
    let admin = common::client(&sim, "dca").await;
    let roles: Api<ClusterRole> = Api::all(admin.clone());
    let widget_rule = json!({"apiGroups": ["example.com"], "resources": ["widgets"], "verbs": ["get", "list", "watch"]});
    cluster_role(
        &admin,
        "widgets-view",
        json!({"rbac.authorization.k8s.io/aggregate-to-view": "true"}),
        json!([widget_rule]),
    )
    .await;
    let has_rule = |role: ClusterRole| {
        role.rules
            .unwrap_or_default()
            .iter()
            .any(|r| r.resources.as_deref() == Some(&["widgets".to_string()][..]))
    };
    for name in ["view", "edit", "admin"] {
        wait_for(&format!("{name} aggregates widgets"), WAIT, || {
            let roles = roles.clone();
            async move { roles.get(name).await.ok().filter(|r| has_rule(r.clone())) }
        })
        .await;
    }
    service_account(&admin, "apps", "reader").await;
    role_binding(
        &admin,
        "apps",
        "reader-view",
        "ClusterRole",
        "view",
        sa_subject("apps", "reader"),
    )
    .await;
    let reader = impersonating(&sim, "system:serviceaccount:apps:reader", &[]).await;
    let widgets =
        json!({"namespace": "apps", "verb": "list", "group": "example.com", "resource": "widgets"});
    let (allowed, reason) = can_i(&reader, widgets.clone()).await;
    assert!(allowed);
    assert_eq!(
        reason,
        "RBAC: allowed by RoleBinding \"reader-view/apps\" of ClusterRole \"view\" to ServiceAccount \"reader/apps\""
    );
    assert!(
        !can_i(
            &reader,
            json!({"namespace": "apps", "verb": "get", "resource": "secrets"})
        )
        .await
        .0,
        "view reads no secrets"
    );

    roles
        .delete("widgets-view", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("view drops the widgets rule", WAIT, || {
        let roles = roles.clone();
        async move {
            roles
                .get("view")
                .await
                .ok()
                .filter(|r| !has_rule(r.clone()))
        }
    })
    .await;
    assert!(!can_i(&reader, widgets).await.0);
}

#[tokio::test]
async fn self_subject_access_reviews_answer_for_the_caller() {
    let sim = start().await;
    let admin = common::client(&sim, "dca").await;
    service_account(&admin, "apps", "deployer").await;
    role(
        &admin,
        "apps",
        "pod-creator",
        json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]}]),
    )
    .await;
    role_binding(
        &admin,
        "apps",
        "deployer-creates",
        "Role",
        "pod-creator",
        sa_subject("apps", "deployer"),
    )
    .await;
    let deployer = token_client(&sim, &token_of(&admin, "apps", "deployer").await).await;

    let (allowed, reason) = can_i(
        &deployer,
        json!({"namespace": "apps", "verb": "create", "resource": "pods"}),
    )
    .await;
    assert!(allowed);
    assert_eq!(
        reason,
        "RBAC: allowed by RoleBinding \"deployer-creates/apps\" of Role \"pod-creator\" to ServiceAccount \"deployer/apps\""
    );
    assert!(
        !can_i(
            &deployer,
            json!({"namespace": "apps", "verb": "delete", "resource": "pods"})
        )
        .await
        .0
    );
    assert!(
        !can_i(
            &deployer,
            json!({"namespace": "default", "verb": "create", "resource": "pods"})
        )
        .await
        .0
    );
    assert!(
        can_i(&admin, json!({"verb": "delete", "resource": "nodes"}))
            .await
            .0
    );
    let (user, groups) = whoami(&admin).await.unwrap();
    assert_eq!(user, "kubernetes-admin");
    assert!(groups.contains(&"system:masters".to_string()));
}

#[tokio::test]
async fn impersonation_is_allowed_for_the_admin_and_forbidden_without_the_impersonate_verb() {
    let sim = start().await;
    let admin = common::client(&sim, "dca").await;
    service_account(&admin, "apps", "bot").await;
    service_account(&admin, "apps", "other").await;

    let as_bot = impersonating(&sim, "system:serviceaccount:apps:bot", &[]).await;
    let (user, groups) = whoami(&as_bot).await.unwrap();
    assert_eq!(user, "system:serviceaccount:apps:bot");
    assert_eq!(
        groups,
        [
            "system:serviceaccounts",
            "system:serviceaccounts:apps",
            "system:authenticated"
        ]
    );
    let denied = api_err(
        Api::<Pod>::namespaced(as_bot, "apps")
            .list(&ListParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(
        denied.message,
        "pods is forbidden: User \"system:serviceaccount:apps:bot\" cannot list resource \"pods\" in API group \"\" in the namespace \"apps\""
    );
    let as_alice = impersonating(&sim, "alice", &["devs"]).await;
    assert_eq!(
        whoami(&as_alice).await.unwrap(),
        (
            "alice".to_string(),
            vec!["devs".to_string(), "system:authenticated".to_string()]
        )
    );

    // A ServiceAccount without `impersonate` may not act as anyone else.
    let token = token_of(&admin, "apps", "bot").await;
    let bot_as_alice = client_with(&sim, {
        let token = token.clone();
        move |c| {
            c.auth_info.token = Some(token.into());
            c.auth_info.impersonate = Some("alice".into());
        }
    })
    .await;
    let forbidden = api_err(whoami(&bot_as_alice).await.unwrap_err());
    assert_eq!(forbidden.code, 403);
    assert_eq!(
        forbidden.message,
        "users \"alice\" is forbidden: User \"system:serviceaccount:apps:bot\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"
    );

    // Granted `impersonate` on ServiceAccounts of its namespace, it may act as one of them.
    role(
        &admin,
        "apps",
        "sa-impersonator",
        json!([{"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["impersonate"]}]),
    )
    .await;
    role_binding(
        &admin,
        "apps",
        "bot-impersonates",
        "Role",
        "sa-impersonator",
        sa_subject("apps", "bot"),
    )
    .await;
    let bot_as_other = client_with(&sim, move |c| {
        c.auth_info.token = Some(token.into());
        c.auth_info.impersonate = Some("system:serviceaccount:apps:other".into());
    })
    .await;
    assert_eq!(
        whoami(&bot_as_other).await.unwrap().0,
        "system:serviceaccount:apps:other"
    );
}

#[tokio::test]
async fn granting_more_than_you_hold_needs_escalate_or_bind() {
    let sim = start().await;
    let admin = common::client(&sim, "dca").await;
    service_account(&admin, "apps", "lead").await;
    role(
        &admin,
        "apps",
        "rbac-writer",
        json!([
            {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"], "verbs": ["create", "patch"]},
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
        ]),
    )
    .await;
    role_binding(
        &admin,
        "apps",
        "lead-writes-rbac",
        "Role",
        "rbac-writer",
        sa_subject("apps", "lead"),
    )
    .await;
    let lead = token_client(&sim, &token_of(&admin, "apps", "lead").await).await;
    let roles: Api<Role> = Api::namespaced(lead.clone(), "apps");
    let granting = |verb: &str| {
        obj::<Role>(
            json!({"metadata": {"name": format!("pods-{verb}")}, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": [verb]}]}),
        )
    };
    roles
        .create(&PostParams::default(), &granting("get"))
        .await
        .expect("a subset of what it holds");
    let escalation = api_err(
        roles
            .create(&PostParams::default(), &granting("delete"))
            .await
            .unwrap_err(),
    );
    assert_eq!(escalation.code, 403);
    assert!(
        escalation
            .message
            .contains("is attempting to grant RBAC permissions not currently held"),
        "{}",
        escalation.message
    );
    // Patching in more than it holds is the same escalation.
    let widen =
        json!({"rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "delete"]}]});
    let patch = roles
        .patch(
            "pods-get",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&widen),
        )
        .await;
    assert_eq!(api_err(patch.unwrap_err()).code, 403);
    let bind_admin = obj::<RoleBinding>(json!({
        "metadata": {"name": "lead-admin"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": sa_subject("apps", "lead"),
    }));
    let bindings: Api<RoleBinding> = Api::namespaced(lead.clone(), "apps");
    assert_eq!(
        api_err(
            bindings
                .create(&PostParams::default(), &bind_admin)
                .await
                .unwrap_err()
        )
        .code,
        403
    );
}

// kubectl, the real client, against the same clusters.

fn kubectl_installed() -> bool {
    Command::new("kubectl")
        .args(["version", "--client"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

async fn kubectl(dir: &Path, args: &[&str]) -> Output {
    let dir = dir.to_path_buf();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(dir.join("kubeconfig"))
            .arg("--cache-dir")
            .arg(dir.join("cache"))
            .args(&args)
            .output()
            .expect("kubectl runs")
    })
    .await
    .unwrap()
}

async fn kubectl_ok(dir: &Path, args: &[&str]) -> String {
    let out = kubectl(dir, args).await;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "kubectl {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

const DEPLOYER_RBAC: &str = r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: deployer, namespace: default}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: pod-creator, namespace: default}
rules:
- apiGroups: [""]
  resources: [pods]
  verbs: [create, get, list]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: deployer-creates-pods, namespace: default}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-creator}
subjects:
- {kind: ServiceAccount, name: deployer, namespace: default}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applies_rbac_creates_tokens_and_checks_access() {
    if !kubectl_installed() {
        println!("NOTICE: kubectl is not installed; skipping");
        return;
    }
    let sim = start().await;
    let dir: PathBuf = std::env::temp_dir().join(format!("cafe-sim-rbac-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("kubeconfig"), sim.kubeconfig(Some("dca"))).unwrap();
    std::fs::write(dir.join("rbac.yaml"), DEPLOYER_RBAC).unwrap();
    let d = dir.as_path();

    let applied = kubectl_ok(
        d,
        &["apply", "-f", &dir.join("rbac.yaml").display().to_string()],
    )
    .await;
    assert!(
        applied.contains("role.rbac.authorization.k8s.io/pod-creator created"),
        "{applied}"
    );
    assert!(
        applied.contains("rolebinding.rbac.authorization.k8s.io/deployer-creates-pods created"),
        "{applied}"
    );
    let again = kubectl_ok(
        d,
        &["apply", "-f", &dir.join("rbac.yaml").display().to_string()],
    )
    .await;
    assert!(
        again.contains("role.rbac.authorization.k8s.io/pod-creator unchanged"),
        "{again}"
    );

    let roles = kubectl_ok(d, &["get", "clusterroles"]).await;
    for name in ["cluster-admin", "admin", "edit", "view", "system:discovery"] {
        assert!(
            roles
                .lines()
                .any(|l| l.split_whitespace().next() == Some(name)),
            "{name} in\n{roles}"
        );
    }
    let described = kubectl_ok(d, &["describe", "rolebinding", "deployer-creates-pods"]).await;
    assert!(described.contains("pod-creator"), "{described}");

    let yes = kubectl(
        d,
        &[
            "auth",
            "can-i",
            "create",
            "pods",
            "--as=system:serviceaccount:default:deployer",
        ],
    )
    .await;
    assert_eq!(
        String::from_utf8_lossy(&yes.stdout).trim(),
        "yes",
        "{}",
        String::from_utf8_lossy(&yes.stderr)
    );
    assert!(yes.status.success());
    let no = kubectl(
        d,
        &[
            "auth",
            "can-i",
            "create",
            "pods",
            "--as=system:serviceaccount:default:nobody",
        ],
    )
    .await;
    assert_eq!(String::from_utf8_lossy(&no.stdout).trim(), "no");
    assert_eq!(no.status.code(), Some(1));
    let listed = kubectl_ok(
        d,
        &[
            "auth",
            "can-i",
            "--list",
            "--as=system:serviceaccount:default:deployer",
        ],
    )
    .await;
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("pods ") && l.contains("[create get list]")),
        "{listed}"
    );

    let token = kubectl_ok(
        d,
        &[
            "create",
            "token",
            "deployer",
            "-n",
            "default",
            "--duration",
            "10m",
        ],
    )
    .await;
    let token = token.trim();
    assert!(!token.is_empty());
    let who = kubectl_ok(d, &["auth", "whoami", "--token", token]).await;
    assert!(
        who.contains("system:serviceaccount:default:deployer"),
        "{who}"
    );
    let admin_who = kubectl_ok(d, &["auth", "whoami"]).await;
    assert!(
        admin_who.contains("kubernetes-admin") && admin_who.contains("system:masters"),
        "{admin_who}"
    );

    let denied = kubectl(d, &["get", "secrets", "-n", "default", "--token", token]).await;
    assert!(!denied.status.success());
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert!(
        stderr.contains("secrets is forbidden: User \"system:serviceaccount:default:deployer\" cannot list resource \"secrets\" in API group \"\" in the namespace \"default\""),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A server-side apply that creates its object needs `create` as well as `patch`, as the API
/// server's patch handler checks; an apply to an existing object needs `patch` only.
#[tokio::test]
async fn an_apply_that_creates_needs_create_as_well_as_patch() {
    let sim = start().await;
    let admin = common::client(&sim, "dca").await;
    let applier = bound_service_account(
        &sim,
        &admin,
        ("apps", "applier"),
        "patch-only",
        json!([{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "patch"]}]),
    )
    .await;
    let configmaps: Api<ConfigMap> = Api::namespaced(applier.clone(), "apps");
    let apply = |data: &str| {
        kube::api::Patch::Apply(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "settings"}, "data": {"mode": data},
        }))
    };
    let params = kube::api::PatchParams::apply("applier").force();

    let refused = api_err(
        configmaps
            .patch("settings", &params, &apply("a"))
            .await
            .unwrap_err(),
    );
    assert_eq!(refused.code, 403);
    assert!(
        refused
            .message
            .contains("cannot create resource \"configmaps\""),
        "{}",
        refused.message
    );

    // Once it exists, the same apply needs only patch.
    Api::<ConfigMap>::namespaced(admin.clone(), "apps")
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "settings"}, "data": {"mode": "z"}})),
        )
        .await
        .unwrap();
    configmaps
        .patch("settings", &params, &apply("b"))
        .await
        .expect("an apply to an existing object needs patch only");

    let checks: Vec<(String, u16)> = sim
        .calls("dca")
        .into_iter()
        .filter(|c| c.user == "system:serviceaccount:apps:applier" && c.resource == "configmaps")
        .map(|c| (c.verb, c.code))
        .collect();
    assert_eq!(
        checks,
        [
            ("create".to_string(), 403),
            ("patch".to_string(), 403),
            ("patch".to_string(), 200)
        ],
        "the create check is recorded, then the refused request; the second apply only patches"
    );
}

/// OwnerReferencesPermissionEnforcement, as kubeadm and kind clusters run it: a pod that blocks
/// its owner's deletion needs `update` on the owner's `finalizers`; setting any owner reference
/// needs `delete` on the object; a patch that changes the references is checked on the object it
/// makes. Each check is in the call record.
#[tokio::test]
async fn blocking_an_owners_deletion_needs_update_on_its_finalizers() {
    let sim = start().await;
    let admin = common::client(&sim, "dca").await;
    Api::<Namespace>::all(admin.clone())
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "apps"}})),
        )
        .await
        .unwrap();
    let owner: ConfigMap = Api::namespaced(admin.clone(), "apps")
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "owner"}})),
        )
        .await
        .unwrap();
    let owned = |name: &str, block: bool| -> Pod {
        let mut p = pod(name);
        p.metadata.owner_references = Some(vec![obj(json!({
            "apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
            "uid": owner.metadata.uid.clone().unwrap(), "controller": true,
            "blockOwnerDeletion": block,
        }))]);
        p
    };
    let creator = bound_service_account(
        &sim,
        &admin,
        ("apps", "creator"),
        "pods",
        json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "patch"]}]),
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(creator.clone(), "apps");

    let refused = api_err(
        pods.create(&PostParams::default(), &owned("a", false))
            .await
            .unwrap_err(),
    );
    assert_eq!(refused.code, 403);
    assert_eq!(
        refused.message,
        "pods \"a\" is forbidden: cannot set an ownerRef on a resource you can't delete: , <nil>"
    );

    rules_of(
        &admin,
        "apps",
        "pods",
        json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "patch", "delete"]}]),
    )
    .await;
    pods.create(&PostParams::default(), &owned("a", false))
        .await
        .expect("an owner reference that does not block needs delete only");
    let refused = api_err(
        pods.create(&PostParams::default(), &owned("b", true))
            .await
            .unwrap_err(),
    );
    assert_eq!(refused.code, 403);
    assert_eq!(
        refused.message,
        "pods \"b\" is forbidden: cannot set blockOwnerDeletion if an ownerReference refers to a resource you can't set finalizers on: , <nil>"
    );
    // Marking an existing reference blocking is the same change, seen through the patch.
    let block = json!({"metadata": {"ownerReferences": [{
        "apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
        "uid": owner.metadata.uid.clone().unwrap(), "controller": true,
        "blockOwnerDeletion": true}]}});
    let refused = api_err(
        pods.patch(
            "a",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&block),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(refused.code, 403, "{}", refused.message);

    rules_of(
        &admin,
        "apps",
        "pods",
        json!([
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "patch", "delete"]},
            {"apiGroups": [""], "resources": ["configmaps/finalizers"], "verbs": ["update"],
             "resourceNames": ["owner"]},
        ]),
    )
    .await;
    pods.create(&PostParams::default(), &owned("b", true))
        .await
        .expect("allowed once it may update the owner's finalizers");
    pods.patch(
        "a",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&block),
    )
    .await
    .expect("the patch too");

    let checks: Vec<(String, String, String, u16)> = sim
        .calls("dca")
        .into_iter()
        .filter(|c| c.user == "system:serviceaccount:apps:creator")
        .filter(|c| c.verb == "delete" || c.subresource == "finalizers")
        .map(|c| (c.verb, c.resource, c.name, c.code))
        .collect();
    let check = |verb: &str, resource: &str, name: &str, code: u16| {
        (
            verb.to_string(),
            resource.to_string(),
            name.to_string(),
            code,
        )
    };
    assert_eq!(
        checks,
        [
            check("delete", "pods", "a", 403),
            check("delete", "pods", "a", 200),
            check("delete", "pods", "b", 200),
            check("update", "configmaps", "owner", 403),
            check("delete", "pods", "a", 200),
            check("update", "configmaps", "owner", 403),
            check("delete", "pods", "b", 200),
            check("update", "configmaps", "owner", 200),
            check("delete", "pods", "a", 200),
            check("update", "configmaps", "owner", 200),
        ]
    );
}
