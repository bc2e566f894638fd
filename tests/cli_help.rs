//! What `cafe ... --help` tells an operator before anything runs.

use std::process::Command;

fn help(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_cafe"))
        .args(args)
        .arg("--help")
        .output()
        .expect("cafe runs");
    assert!(out.status.success(), "{args:?} --help");
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn member_help_says_it_takes_the_member_kubeconfig() {
    let text = help(&["member"]);
    let flag = text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("--kubeconfig"))
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        flag.contains("MEMBER"),
        "--kubeconfig names the member: {text}"
    );
    assert!(!flag.contains("of the hub"), "{text}");
    assert!(help(&[]).contains("MEMBER"), "the command list says it too");
}

#[test]
fn sim_help_shows_state_dir_as_required() {
    let text = help(&["sim"]);
    let usage = text
        .lines()
        .find(|l| l.starts_with("Usage:"))
        .unwrap_or_default();
    assert!(
        usage.contains(" --state-dir <DIR>") && !usage.contains("[--state-dir"),
        "required in the usage line: {text}"
    );
    // Without it, clap refuses before anything starts; `sim ctl` still takes its own.
    let out = Command::new(env!("CARGO_BIN_EXE_cafe"))
        .arg("sim")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("required") && stderr.contains("--state-dir"),
        "{stderr}"
    );
    assert!(help(&["sim", "ctl"]).contains("--state-dir"));
}
