//! The production binary (`--no-default-features`) carries no simulator.

use std::process::Command;

#[test]
fn the_production_build_does_not_depend_on_the_simulator() {
    // `cargo tree` resolves the graph without building or taking the build lock: fast.
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "-p",
            "cafe",
            "--no-default-features",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo runs");
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cargo tree: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let crates: Vec<&str> = tree.lines().filter_map(|l| l.split(' ').next()).collect();
    assert!(crates.contains(&"cafe-base"), "{tree}");
    assert!(crates.contains(&"kube"), "{tree}");
    assert!(
        !crates.contains(&"cafe-sim"),
        "cafe-sim is in the production build: {tree}"
    );
    // And the default build does have it (so the check above means something).
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "-p",
            "cafe",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo runs");
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(
        tree.lines().any(|l| l.starts_with("cafe-sim ")),
        "the default build runs `cafe dev`: {tree}"
    );
}
