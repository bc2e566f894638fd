//! `cafe sim` and `cafe sim ctl` as an operator runs them.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn cafe() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cafe"))
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("cafe-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn bad_config_names_the_field_and_exits_non_zero() {
    let d = temp_dir("badcfg");
    for (text, field) in [
        ("clusters: [{name: dca, nodez: []}]", "nodez"),
        (
            "clusters: [{name: dca, nodes: [{cpu: lots}]}]",
            "clusters[0].nodes[0].cpu",
        ),
        (
            "kubernetesVersion: banana\nclusters: [{name: dca}]",
            "kubernetesVersion",
        ),
    ] {
        let cfg = d.join("c.yaml");
        std::fs::write(&cfg, text).unwrap();
        let out = cafe()
            .args(["sim", "--config"])
            .arg(&cfg)
            .arg("--state-dir")
            .arg(d.join("state"))
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(field), "{field} not named in: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one-line cause: {err}");
    }
}

#[test]
fn ctl_reaches_the_running_sim_through_sim_json() {
    let d = temp_dir("ctl");
    let cfg = d.join("c.yaml");
    std::fs::write(&cfg, "clusters: [{name: dca, nodes: [{count: 1}]}]").unwrap();
    let mut sim = cafe()
        .args(["sim", "--config"])
        .arg(&cfg)
        .arg("--state-dir")
        .arg(d.join("state"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(sim.stdout.take().unwrap()).lines();
    let ready = lines.next().unwrap().unwrap();
    assert!(ready.starts_with("ready"), "{ready}");
    let state = d.join("state");
    assert!(state.join("kubeconfig").exists() && state.join("sim.json").exists());
    for args in [
        vec!["cut-watches", "dca"],
        vec![
            "inject-errors",
            "dca",
            "--code",
            "500",
            "--rate",
            "0.5",
            "--seconds",
            "1",
        ],
        vec![
            "inject-errors",
            "dca",
            "--code",
            "500,409,429",
            "--rate",
            "0.1",
            "--seconds",
            "1",
        ],
        vec!["slow", "dca", "--max-delay-ms", "50", "--seconds", "0.5"],
        vec!["outage", "dca", "--seconds", "0.2"],
        vec!["compact", "dca"],
    ] {
        let out = cafe()
            .args(["sim", "ctl", "--state-dir"])
            .arg(&state)
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = cafe()
        .args(["sim", "ctl", "--state-dir"])
        .arg(&state)
        .args(["cut-watches", "nope"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("dca"),
        "lists the clusters there are"
    );
    let out = cafe()
        .args(["sim", "ctl", "--state-dir"])
        .arg(&state)
        .args([
            "inject-errors",
            "dca",
            "--code",
            "418",
            "--rate",
            "1",
            "--seconds",
            "1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "only 500, 409 and 429 are accepted");
    Command::new("kill")
        .args(["-INT", &sim.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(s) = sim.try_wait().unwrap() {
            assert!(s.success(), "exit 0 on SIGINT");
            break;
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn logs_have_no_colour_codes_when_stderr_is_not_a_terminal() {
    let d = temp_dir("nocolour");
    let cfg = d.join("c.yaml");
    std::fs::write(&cfg, "clusters: [{name: dca, nodes: [{count: 1}]}]").unwrap();
    let mut sim = cafe()
        .args(["sim", "--config"])
        .arg(&cfg)
        .arg("--state-dir")
        .arg(d.join("state"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(sim.stdout.take().unwrap()).lines();
    let ready = lines.next().unwrap().unwrap();
    assert!(ready.starts_with("ready"), "{ready}");
    Command::new("kill")
        .args(["-INT", &sim.id().to_string()])
        .status()
        .unwrap();
    // Reading stderr to its end waits for the exit; the sim logs its shutdown at INFO.
    let out = sim.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("shutting down"), "a log line: {stderr}");
    assert!(!stderr.contains('\x1b'), "no ANSI escapes: {stderr:?}");
}
