//! `cafe plan -f FILE`: the unit split and the rollout groups of a manifest, printed by the real
//! binary without any cluster; and its errors, one line each with a non-zero exit.

use std::path::PathBuf;
use std::process::{Output, Stdio};

use serde_json::Value;

/// 10 replicas over DCA and DCB, Beta, batchSize 4: groups 1+1, 2+2, 2+2.
const SEED: &str = r#"
apiVersion: apps.cafe.io/v1alpha1
kind: CafeDeployment
metadata:
  name: seed
spec:
  replicas: 10
  selector: {matchLabels: {app: seed}}
  template:
    metadata: {labels: {app: seed}}
    spec: {containers: [{name: web, image: "nginx:1.27"}]}
  topology: {unitType: DataCenter, values: [DCA, DCB]}
  strategy: {upgradeType: Beta, batchSize: 4, needWaitingForConfirm: true}
"#;

fn cafe(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_cafe"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("KUBECONFIG")
        .env("RUST_LOG", "error")
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The one line a failed command prints.
fn error_line(out: &Output) -> String {
    assert!(!out.status.success(), "expected a failure");
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    stderr
}

fn write_temp(tag: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cafe-cli-plan-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cafedeployment.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The rows after the line starting with `header`, as cells, up to the next blank line.
fn table(text: &str, header: &str) -> Vec<Vec<String>> {
    text.lines()
        .skip_while(|l| !l.starts_with(header))
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect()
}

#[test]
fn plan_of_the_example_prints_the_split_and_the_groups() {
    let text = stdout(&cafe(&["plan", "-f", "examples/cafedeployment.yaml"]));
    assert!(
        text.contains("upgradeType Beta, batchSize 2, confirmation between groups: no"),
        "{text}"
    );
    assert!(
        text.contains("maxUnavailablePerUnit 1 (DCA 1, DCB 1)"),
        "{text}"
    );
    assert_eq!(
        table(&text, "UNIT"),
        [
            vec!["UNIT", "REPLICAS", "CURRENT", "CREATE", "UPDATE"],
            vec!["DCA", "3", "0", "3", "0"],
            vec!["DCB", "3", "0", "3", "0"],
        ]
    );
    assert_eq!(
        table(&text, "GROUP"),
        [
            vec!["GROUP", "DCA", "DCB", "TOTAL"],
            vec!["1", "(Beta)", "1", "1", "2"],
            vec!["2", "1", "1", "2"],
            vec!["3", "1", "1", "2"],
        ]
    );
}

#[test]
fn plan_of_the_seed_example_is_one_one_then_two_two_twice() {
    let path = write_temp("seed", SEED);
    let text = stdout(&cafe(&["plan", "-f", path.to_str().unwrap()]));
    assert_eq!(
        table(&text, "GROUP")[1..],
        [
            vec!["1", "(Beta)", "1", "1", "2"],
            vec!["2", "2", "2", "4"],
            vec!["3", "2", "2", "4"],
        ]
    );
    assert!(text.contains("confirmation between groups: yes"), "{text}");

    // The same plan as JSON, and from standard input.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cafe"))
        .args(["plan", "-f", "-", "-o", "json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), SEED.as_bytes()).unwrap();
    let json: Value = serde_json::from_str(&stdout(&child.wait_with_output().unwrap())).unwrap();
    let groups: Vec<(i64, i64, bool)> = json["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["units"]["DCA"].as_i64().unwrap(),
                g["units"]["DCB"].as_i64().unwrap(),
                g["beta"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(groups, [(1, 1, true), (2, 2, false), (2, 2, false)]);
    assert_eq!(json["strategy"]["batchSize"], 4);
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[test]
fn current_replicas_are_updated_not_created() {
    let path = write_temp("current", SEED);
    let file = path.to_str().unwrap();
    // A comma list and repeated flags say the same.
    for args in [
        vec!["plan", "-f", file, "--current-replicas", "DCA=5,DCB=2"],
        vec![
            "plan",
            "-f",
            file,
            "--current-replicas",
            "DCA=5",
            "--current-replicas",
            "DCB=2",
        ],
    ] {
        let text = stdout(&cafe(&args));
        assert_eq!(
            table(&text, "UNIT")[1..],
            [
                vec!["DCA", "5", "5", "0", "5"],
                vec!["DCB", "5", "2", "3", "2"],
            ],
            "{text}"
        );
        let groups = table(&text, "GROUP");
        let total: i32 = groups[1..]
            .iter()
            .map(|r| r.last().unwrap().parse::<i32>().unwrap())
            .sum();
        assert_eq!(total, 10, "every pod in one group: {text}");
    }
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[test]
fn plan_errors_are_one_line_and_exit_non_zero() {
    let line = error_line(&cafe(&["plan", "-f", "no/such/file.yaml"]));
    assert!(line.contains("no/such/file.yaml"), "{line}");

    let bad = write_temp("bad-yaml", "kind: CafeDeployment\nspec: [unclosed\n");
    let line = error_line(&cafe(&["plan", "-f", bad.to_str().unwrap()]));
    assert!(
        line.contains(bad.to_str().unwrap()) && line.contains("not valid YAML"),
        "{line}"
    );

    let seed = write_temp("unknown-unit", SEED);
    let line = error_line(&cafe(&[
        "plan",
        "-f",
        seed.to_str().unwrap(),
        "--current-replicas",
        "DCA=1,DCX=2",
    ]));
    assert!(
        line.contains("DCX") && line.contains("topology.values"),
        "{line}"
    );

    let oversubscribed = write_temp(
        "split",
        &SEED.replace(
            "values: [DCA, DCB]}",
            "values: [DCA, DCB], unitReplicas: {DCA: 8, DCB: 4}}",
        ),
    );
    let line = error_line(&cafe(&["plan", "-f", oversubscribed.to_str().unwrap()]));
    assert!(
        line.contains("unitReplicas assign 12 replicas") && line.contains("spec.replicas is 10"),
        "{line}"
    );
    for p in [bad, seed, oversubscribed] {
        let _ = std::fs::remove_dir_all(p.parent().unwrap());
    }
}
