//! Every command's stdout may be a pipe whose reader has gone (`cafe crds | head -1`): the
//! command ends quietly, exit 0, no panic message.

use std::process::{Command, Output, Stdio};

/// Runs `cafe args` with stdout a pipe whose read end is closed before it starts, so its first
/// write meets a closed pipe whatever the size of its output.
fn cafe_into_a_closed_pipe(args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let child = Command::new(env!("CARGO_BIN_EXE_cafe"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("KUBECONFIG")
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .spawn()
        .expect("cafe starts");
    child.wait_with_output().expect("cafe runs")
}

fn assert_quiet(args: &[&str]) {
    let out = cafe_into_a_closed_pipe(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "cafe {args:?} into a closed pipe: {}; stderr: {stderr}",
        out.status
    );
    assert!(stderr.is_empty(), "cafe {args:?} said: {stderr}");
}

#[test]
fn crds_exits_quietly_on_a_closed_pipe() {
    assert_quiet(&["crds"]);
}

#[test]
fn plan_exits_quietly_on_a_closed_pipe() {
    assert_quiet(&["plan", "-f", "examples/cafedeployment.yaml"]);
    assert_quiet(&["plan", "-f", "examples/cafedeployment.yaml", "-o", "json"]);
}
