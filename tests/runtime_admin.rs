//! The admin servers of the hub and the member agent: `/healthz` while they run, `/readyz` only
//! once every watch has synced (503 naming the others before), and `/metrics` in Prometheus text
//! with the reconciles, member reachability, rollout phases and member writes; then the real
//! `cafe hub` binary with its flags, JSON logs and a clean exit on SIGTERM.

mod common;
mod hub_support;
mod invariants;

use std::net::SocketAddr;
use std::process::Stdio;

use cafe::runtime::Telemetry;
use cafe::runtime::admin::{self, AdminServer};
use common::{admin_get as get, config, start_sim, wait_for};
use hub_support::{Hub, WAIT, deployment, install_crds};
use kube::api::{DeleteParams, PostParams};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;

const HUB_AND_DCA: &str = r#"
kubelet: {startMillis: 50, restartMillis: 50}
clusters:
  - name: hub
    role: hub
  - name: dca
    role: member
    units: {DataCenter: DCA}
    nodes: [{count: 2, cpu: "8", memory: 16Gi, pods: 110}]
"#;

/// Every line of an OpenMetrics/Prometheus text exposition is a comment (`# HELP`, `# TYPE`,
/// `# UNIT`, `# EOF`) or `name{labels} value`, with a metric name, quoted label values and a
/// number.
fn assert_exposition(text: &str) {
    assert!(text.ends_with("# EOF\n"), "ends with # EOF: {text}");
    for line in text.lines() {
        if let Some(comment) = line.strip_prefix("# ") {
            let word = comment.split(' ').next().unwrap_or_default();
            assert!(
                ["HELP", "TYPE", "UNIT", "EOF"].contains(&word),
                "comment line: {line}"
            );
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("series and value");
        assert!(value.parse::<f64>().is_ok(), "numeric value: {line}");
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            name.starts_with("cafe_")
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "metric name: {line}"
        );
        if name_end < series.len() {
            let labels = series[name_end..]
                .strip_prefix('{')
                .and_then(|l| l.strip_suffix('}'))
                .expect("labels in braces");
            // label="value" pairs; values here never hold a comma or a quote.
            for pair in labels.split(',') {
                let (key, value) = pair.split_once('=').expect("label=value");
                assert!(
                    key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "label name: {line}"
                );
                assert!(
                    value.len() >= 2 && value.starts_with('"') && value.ends_with('"'),
                    "quoted label value: {line}"
                );
            }
        }
    }
}

/// The value of the first series whose line starts with `prefix` (name and labels).
fn value_of(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
}

async fn admin_server(telemetry: &Telemetry, stop: &CancellationToken) -> AdminServer {
    admin::start(
        "127.0.0.1:0".parse().unwrap(),
        telemetry.clone(),
        stop.clone(),
    )
    .await
    .expect("the admin server listens")
}

async fn wait_code(address: SocketAddr, path: &str, code: u16) -> String {
    wait_for(&format!("{path} answering {code}"), WAIT, || async move {
        let (got, body) = get(address, path).await;
        (got == code).then_some(body)
    })
    .await
}

#[tokio::test]
async fn hub_and_member_admin_servers_report_health_readiness_and_metrics() {
    let sim = start_sim(HUB_AND_DCA).await;
    let hub_client = common::client(&sim, "hub").await;
    let dca_config = config(&sim, "dca").await;
    let admin_stop = CancellationToken::new();

    // The hub starts before its CRDs exist: alive, not ready, and says what it waits for.
    let hub_telemetry = Telemetry::default();
    let hub_admin = admin_server(&hub_telemetry, &admin_stop).await;
    let hub_stop = CancellationToken::new();
    let hub_task = tokio::spawn(cafe::hub::run_with(
        hub_client.clone(),
        cafe::hub::HubOptions {
            telemetry: hub_telemetry.clone(),
            ..hub_support::options()
        },
        hub_stop.clone(),
    ));
    assert_eq!(
        get(hub_admin.address, "/healthz").await,
        (200, "ok\n".into())
    );
    let not_ready = wait_code(hub_admin.address, "/readyz", 503).await;
    assert!(
        not_ready.contains("hub CRDs") && not_ready.contains("cafedeployments"),
        "{not_ready}"
    );

    // The member agent, with its own admin server and its writes counted.
    let member_telemetry = Telemetry::default();
    let member_admin = admin_server(&member_telemetry, &admin_stop).await;
    let member_client = member_telemetry
        .metrics
        .client(dca_config, "local")
        .unwrap();
    let member_stop = CancellationToken::new();
    let member_task = tokio::spawn(cafe::member::run_with(
        member_client,
        cafe::member::MemberOptions {
            telemetry: member_telemetry.clone(),
            ..Default::default()
        },
        member_stop.clone(),
    ));
    let not_ready = wait_code(member_admin.address, "/readyz", 503).await;
    assert!(not_ready.contains("InPlaceSet CRD"), "{not_ready}");

    // CRDs and the registration, as `cafe cluster register` does it.
    let fixture = Hub {
        members: [("dca".to_string(), common::client(&sim, "dca").await)].into(),
        controller: hub_client.clone(),
        agents: Default::default(),
        hub: hub_client,
        sim,
        running: None,
        agent_leases: Default::default(),
    };
    futures::future::join(
        install_crds(&fixture.hub, cafe::hub::crds::hub_crds()),
        install_crds(&fixture.members["dca"], cafe::hub::crds::member_crds()),
    )
    .await;
    let kubeconfig = fixture.sim.kubeconfig(Some("dca"));
    fixture.register("dca", "DCA", &kubeconfig).await;

    wait_code(hub_admin.address, "/readyz", 200).await;
    wait_code(member_admin.address, "/readyz", 200).await;

    let cd = deployment(2, &["DCA"], json!({}));
    fixture
        .deployments()
        .create(&PostParams::default(), &cd)
        .await
        .unwrap();
    let metrics = wait_for("the hub's metrics of demo", WAIT, || async {
        let (code, text) = get(hub_admin.address, "/metrics").await;
        assert_eq!(code, 200);
        let reconciled = value_of(
            &text,
            r#"cafe_reconciles_total{controller="cafedeployment"}"#,
        )? > 0.0;
        let reachable = value_of(&text, r#"cafe_member_reachable{member="dca"}"#)? == 1.0;
        let phase = text.lines().any(|l| {
            l.starts_with(r#"cafe_rollout_phase{namespace="default",name="demo",phase=""#)
                && l.ends_with(" 1")
        });
        let writes = value_of(&text, r#"cafe_api_writes_total{member="dca",verb="apply"}"#)?;
        (reconciled && reachable && phase && writes > 0.0).then_some(text)
    })
    .await;
    assert_exposition(&metrics);
    assert!(
        metrics.contains("cafe_reconcile_duration_seconds_bucket{"),
        "{metrics}"
    );

    let member_metrics = wait_for("the agent's metrics", WAIT, || async {
        let (_, text) = get(member_admin.address, "/metrics").await;
        let reconciled =
            value_of(&text, r#"cafe_reconciles_total{controller="inplaceset"}"#)? > 0.0;
        let writes = value_of(
            &text,
            r#"cafe_api_writes_total{member="local",verb="create"}"#,
        )?;
        (reconciled && writes > 0.0).then_some(text)
    })
    .await;
    assert_exposition(&member_metrics);

    // A deleted CafeDeployment takes its phase series with it.
    fixture
        .deployments()
        .delete("demo", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("demo's phase series gone", WAIT, || async {
        let (_, text) = get(hub_admin.address, "/metrics").await;
        (!text.contains(r#"name="demo""#)).then_some(())
    })
    .await;

    hub_stop.cancel();
    member_stop.cancel();
    for task in [hub_task] {
        tokio::time::timeout(WAIT, task)
            .await
            .expect("the hub stops")
            .unwrap()
            .unwrap();
    }
    tokio::time::timeout(WAIT, member_task)
        .await
        .expect("the agent stops")
        .unwrap()
        .unwrap();
    admin_stop.cancel();
    for server in [hub_admin, member_admin] {
        tokio::time::timeout(WAIT, server.task)
            .await
            .expect("the admin server stops")
            .unwrap();
    }
}

#[tokio::test]
async fn cafe_hub_serves_admin_on_the_port_it_logs_in_json_and_exits_0_on_sigterm() {
    let mut sim = start_sim(HUB_AND_DCA).await;
    let dir = std::env::temp_dir().join(format!("cafe-runtime-admin-{}", std::process::id()));
    let kubeconfig = sim.publish(&dir, Some("hub")).await.unwrap();
    let hub = common::client(&sim, "hub").await;
    install_crds(&hub, cafe::hub::crds::hub_crds()).await;

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_cafe"))
        .args(["hub", "--kubeconfig"])
        .arg(&kubeconfig)
        .args([
            "--admin-address",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--probe-interval",
            "500ms",
        ])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("cafe hub starts");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let address: SocketAddr = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let event: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("a JSON log line ({e}): {line}"));
            if let Some(address) = event["address"].as_str() {
                return address.parse().unwrap();
            }
        }
        panic!("cafe hub exited without logging its admin address");
    })
    .await
    .expect("the admin address is logged");
    // Keep reading stderr so the process never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    assert_eq!(get(address, "/healthz").await.0, 200);
    wait_code(address, "/readyz", 200).await;
    let (code, text) = get(address, "/metrics").await;
    assert_eq!(code, 200);
    assert_exposition(&text);

    let pid = child.id().expect("still running").to_string();
    let sent = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(sent.success());
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("cafe hub exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "exit 0 on SIGTERM, got {status}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cafe_hub_refuses_bad_flag_values_with_a_one_line_cause_naming_the_flag() {
    for (flag, value) in [
        ("--admin-address", "nope"),
        ("--probe-interval", "soon"),
        ("--log-format", "xml"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cafe"))
            .args(["hub", flag, value])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{flag} {value}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let first = stderr.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("error: ") && first.contains(flag) && first.contains(value),
            "{flag} {value}: {stderr}"
        );
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cafe"))
        .args(["member", "--cache-sync-timeout", "0s"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .lines()
            .next()
            .unwrap_or_default()
            .contains("--cache-sync-timeout"),
        "{stderr}"
    );
}

#[test]
fn cafe_hub_without_any_configuration_says_where_it_looked() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cafe"))
        .args(["hub", "--admin-address", "off"])
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env("HOME", "/nonexistent")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr.lines().last().unwrap_or_default();
    assert!(
        line.starts_with("error: no cluster configuration found")
            && line.contains("$KUBECONFIG (/nonexistent/kubeconfig: no such file)")
            && line.contains("/nonexistent/.kube/config (no such file)")
            && line.contains("in-cluster"),
        "{stderr}"
    );
}
