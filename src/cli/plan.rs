//! `cafe plan -f FILE [--current-replicas UNIT=N,...] [-o json]`: what a CafeDeployment's rollout
//! would do, computed offline from its manifest.
//!
//! The unit split and the groups come from the same pure functions the hub uses
//! (`plan::split`, `plan::rollout`), so the plan printed here is the plan the hub makes when every
//! member reports the given pods. Pods a unit runs now are taken to be on an older revision:
//! the plan updates them. No cluster is contacted.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;

use serde::Serialize;

use super::cluster::one_line;
use super::status::{group_name, render_table};
use crate::api::{CafeDeployment, UpgradeType};
use crate::hub::projection::unit_max_unavailable;
use crate::plan::rollout::{UnitWork, batch_size, groups};
use crate::plan::split::{SplitError, split};

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// The CafeDeployment manifest (YAML); `-` reads standard input.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub file: PathBuf,
    /// Pods a unit runs now, UNIT=N (repeatable, or comma-separated: DCA=5,DCB=5). They count
    /// as running an older revision, so the plan updates them; without it every pod is created.
    #[arg(
        long = "current-replicas",
        value_name = "UNIT=N",
        value_delimiter = ','
    )]
    pub current_replicas: Vec<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = PlanOutput::Table)]
    pub output: PlanOutput,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PlanOutput {
    /// The strategy, the unit split and one row per group.
    Table,
    /// The same as JSON.
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(
        "reading {file}: {message}; pass a CafeDeployment manifest with -f FILE (- reads standard input)"
    )]
    Read { file: String, message: String },
    #[error("{file} is not valid YAML: {message}")]
    Yaml { file: String, message: String },
    #[error("{file} holds no CafeDeployment (no document with kind: CafeDeployment)")]
    NoCafeDeployment { file: String },
    #[error("{file} holds {count} CafeDeployments; plan one at a time (one per file)")]
    Several { file: String, count: usize },
    #[error("{file}: the CafeDeployment is not valid: {message}")]
    Invalid { file: String, message: String },
    #[error(
        "--current-replicas {given:?}: {reason}; give UNIT=N, e.g. --current-replicas DCA=5,DCB=5"
    )]
    CurrentReplicas { given: String, reason: String },
    #[error(
        "--current-replicas names unit {unit}, which is not in spec.topology.values ({units}); use those unit names"
    )]
    UnknownUnit { unit: String, units: String },
    #[error("{file}: {source}")]
    Split {
        file: String,
        #[source]
        source: SplitError,
    },
}

/// The plan of one CafeDeployment: what `cafe plan` prints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub replicas: i32,
    pub strategy: Strategy,
    /// In `topology.values` order.
    pub units: Vec<UnitPlan>,
    pub groups: Vec<GroupPlan>,
}

/// The strategy with its counts resolved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Strategy {
    /// Beta or Batch.
    pub upgrade_type: String,
    /// `batchSize` as written (a count or a percent).
    pub batch_size_spec: String,
    /// Pods per group after the Beta group.
    pub batch_size: i32,
    /// Whether each group after the first waits for `cafe rollout confirm`.
    pub need_waiting_for_confirm: bool,
    pub pause: bool,
    /// `maxUnavailablePerUnit` as written; each unit's resolved value is in `units`.
    pub max_unavailable_per_unit: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UnitPlan {
    pub name: String,
    /// The unit's share of `spec.replicas`.
    pub replicas: i32,
    /// Pods it runs now (given with --current-replicas).
    pub current: i32,
    pub create: i32,
    pub update: i32,
    /// Extra pods beyond the share: removed at once, in no group.
    pub remove: i32,
    /// `maxUnavailablePerUnit` resolved against the unit's replicas.
    pub max_unavailable: i32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupPlan {
    /// 1-based, as in `status.rollout.batches`.
    pub index: i32,
    pub beta: bool,
    /// Pods the group creates or updates, per unit.
    pub units: BTreeMap<String, i32>,
    pub total: i32,
}

pub fn run(args: PlanArgs) -> Result<(), PlanError> {
    let file = args.file.display().to_string();
    let (origin, text) = read(&file)?;
    let cd = load(&text, &origin)?;
    let current = parse_current(&args.current_replicas)?;
    let plan = plan(&cd, &current, &origin)?;
    match args.output {
        PlanOutput::Table => cafe_base::out!("{}", render_text(&plan)),
        PlanOutput::Json => cafe_base::out!("{}", render_json(&plan)),
    }
    Ok(())
}

/// The file's text, and how errors name it.
fn read(file: &str) -> Result<(String, String), PlanError> {
    let failed = |origin: &str, e: std::io::Error| PlanError::Read {
        file: origin.to_string(),
        message: e.to_string(),
    };
    if file == "-" {
        let origin = "standard input";
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| failed(origin, e))?;
        return Ok((origin.to_string(), text));
    }
    let text = std::fs::read_to_string(file).map_err(|e| failed(file, e))?;
    Ok((file.to_string(), text))
}

/// The one CafeDeployment in `text` (other kinds of documents are skipped).
pub fn load(text: &str, origin: &str) -> Result<CafeDeployment, PlanError> {
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(text).map_err(|e| PlanError::Yaml {
            file: origin.to_string(),
            // The parser's message starts with its own "error: ".
            message: one_line(&e).trim_start_matches("error: ").to_string(),
        })?;
    let mut found: Vec<serde_json::Value> = docs
        .into_iter()
        .filter(|d| d.get("kind").and_then(|k| k.as_str()) == Some("CafeDeployment"))
        .collect();
    match found.len() {
        0 => Err(PlanError::NoCafeDeployment {
            file: origin.to_string(),
        }),
        1 => serde_json::from_value(found.remove(0)).map_err(|e| PlanError::Invalid {
            file: origin.to_string(),
            message: e.to_string(),
        }),
        count => Err(PlanError::Several {
            file: origin.to_string(),
            count,
        }),
    }
}

/// `--current-replicas` values (already split at commas) as unit -> pods.
pub fn parse_current(given: &[String]) -> Result<BTreeMap<String, i32>, PlanError> {
    let mut current = BTreeMap::new();
    for g in given.iter().map(|g| g.trim()).filter(|g| !g.is_empty()) {
        let bad = |reason: &str| PlanError::CurrentReplicas {
            given: g.to_string(),
            reason: reason.to_string(),
        };
        let (unit, n) = g.split_once('=').ok_or_else(|| bad("missing '='"))?;
        let unit = unit.trim();
        if unit.is_empty() {
            return Err(bad("the unit before '=' is empty"));
        }
        let n: i32 = n
            .trim()
            .parse()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| bad("the count after '=' must be a whole number >= 0"))?;
        if current.insert(unit.to_string(), n).is_some() {
            return Err(bad(&format!("unit {unit} is given more than once")));
        }
    }
    Ok(current)
}

/// The split and the groups of `cd` when each unit runs `current` pods of an older revision.
pub fn plan(
    cd: &CafeDeployment,
    current: &BTreeMap<String, i32>,
    origin: &str,
) -> Result<Plan, PlanError> {
    let values = &cd.spec.topology.values;
    if let Some(unit) = current.keys().find(|u| !values.contains(u)) {
        return Err(PlanError::UnknownUnit {
            unit: unit.clone(),
            units: values.join(", "),
        });
    }
    let shares =
        split(cd.spec.replicas, values, &cd.spec.topology.unit_replicas).map_err(|source| {
            PlanError::Split {
                file: origin.to_string(),
                source,
            }
        })?;
    let work: Vec<UnitWork> = shares
        .iter()
        .map(|s| {
            let now = current.get(&s.unit).copied().unwrap_or(0);
            UnitWork::new(&s.unit, s.replicas, now, 0)
        })
        .collect();
    let strategy = &cd.spec.strategy;
    let batch = batch_size(strategy, cd.spec.replicas);
    let units = work
        .iter()
        .map(|w| {
            let now = current.get(&w.unit).copied().unwrap_or(0);
            UnitPlan {
                name: w.unit.clone(),
                replicas: w.replicas,
                current: now,
                create: w.create,
                update: w.update,
                remove: (now - w.replicas).max(0),
                max_unavailable: unit_max_unavailable(cd, w.replicas),
            }
        })
        .collect();
    let groups = groups(&strategy.upgrade_type, batch, &work)
        .into_iter()
        .zip(1..)
        .map(|(g, index)| GroupPlan {
            index,
            beta: g.beta,
            total: g.total(),
            units: g.quota,
        })
        .collect();
    Ok(Plan {
        name: cd.metadata.name.clone().unwrap_or_default(),
        namespace: cd.metadata.namespace.clone(),
        replicas: cd.spec.replicas,
        strategy: Strategy {
            upgrade_type: match strategy.upgrade_type {
                UpgradeType::Beta => "Beta",
                UpgradeType::Batch => "Batch",
            }
            .to_string(),
            batch_size_spec: strategy.batch_size.0.to_string(),
            batch_size: batch,
            need_waiting_for_confirm: strategy.need_waiting_for_confirm,
            pause: strategy.pause,
            max_unavailable_per_unit: strategy.max_unavailable_per_unit.to_string(),
        },
        units,
        groups,
    })
}

/// The plan as text: a strategy header, the unit split, one row per group.
pub fn render_text(plan: &Plan) -> String {
    let s = &plan.strategy;
    let names: Vec<&str> = plan.units.iter().map(|u| u.name.as_str()).collect();
    let mut out = format!(
        "CafeDeployment {}: {} replicas over units {}\n",
        plan.name,
        plan.replicas,
        names.join(", ")
    );
    let batch = if s.batch_size_spec == s.batch_size.to_string() {
        s.batch_size.to_string()
    } else {
        format!("{} ({} pods)", s.batch_size_spec, s.batch_size)
    };
    let per_unit: Vec<String> = plan
        .units
        .iter()
        .map(|u| format!("{} {}", u.name, u.max_unavailable))
        .collect();
    out.push_str(&format!(
        "Strategy:    upgradeType {}, batchSize {batch}, confirmation between groups: {}, maxUnavailablePerUnit {} ({})\n",
        s.upgrade_type,
        if s.need_waiting_for_confirm { "yes" } else { "no" },
        s.max_unavailable_per_unit,
        per_unit.join(", ")
    ));
    if s.pause {
        out.push_str("Paused:      spec.strategy.pause is true: no group starts until `cafe rollout resume`\n");
    }

    out.push('\n');
    let mut rows = vec![
        ["UNIT", "REPLICAS", "CURRENT", "CREATE", "UPDATE"]
            .map(String::from)
            .to_vec(),
    ];
    for u in &plan.units {
        rows.push(vec![
            u.name.clone(),
            u.replicas.to_string(),
            u.current.to_string(),
            u.create.to_string(),
            u.update.to_string(),
        ]);
    }
    out.push_str(&render_table(&rows));
    for u in plan.units.iter().filter(|u| u.remove > 0) {
        out.push_str(&format!(
            "{} removes {} extra pod(s) at once, older revisions first; they are in no group\n",
            u.name, u.remove
        ));
    }

    out.push('\n');
    if plan.groups.is_empty() {
        out.push_str("Groups:      none: every unit already runs its share\n");
        return out;
    }
    let mut header = vec!["GROUP".to_string()];
    header.extend(names.iter().map(|n| n.to_string()));
    header.push("TOTAL".into());
    let mut rows = vec![header];
    for g in &plan.groups {
        let mut row = vec![group_name(g.index, g.beta)];
        row.extend(
            names
                .iter()
                .map(|n| g.units.get(*n).copied().unwrap_or(0).to_string()),
        );
        row.push(g.total.to_string());
        rows.push(row);
    }
    out.push_str(&render_table(&rows));
    if s.need_waiting_for_confirm && plan.groups.len() > 1 {
        out.push_str(&format!(
            "\nEach group after the first waits for `cafe rollout confirm {}`.\n",
            plan.name
        ));
    }
    out
}

/// The plan as JSON.
pub fn render_json(plan: &Plan) -> String {
    format!(
        "{}\n",
        serde_json::to_string_pretty(plan).unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = r#"
apiVersion: apps.cafe.io/v1alpha1
kind: CafeDeployment
metadata: {name: demo}
spec:
  replicas: 10
  selector: {matchLabels: {app: demo}}
  template:
    metadata: {labels: {app: demo}}
    spec: {containers: [{name: web, image: "nginx:1.27"}]}
  topology: {unitType: DataCenter, values: [DCA, DCB]}
  strategy: {upgradeType: Beta, batchSize: 4, needWaitingForConfirm: true}
"#;

    fn seed() -> CafeDeployment {
        load(SEED, "seed.yaml").unwrap()
    }

    fn cells(line: &str) -> Vec<&str> {
        line.split_whitespace().collect()
    }

    fn quotas(plan: &Plan) -> Vec<Vec<i32>> {
        plan.groups
            .iter()
            .map(|g| g.units.values().copied().collect())
            .collect()
    }

    #[test]
    fn the_seed_example_creates_in_groups_of_one_one_then_two_two() {
        let plan = plan(&seed(), &BTreeMap::new(), "seed.yaml").unwrap();
        assert_eq!(quotas(&plan), [vec![1, 1], vec![2, 2], vec![2, 2]]);
        assert!(plan.groups[0].beta && !plan.groups[1].beta);
        assert_eq!(plan.strategy.batch_size, 4);
        assert_eq!(
            plan.units
                .iter()
                .map(|u| (u.replicas, u.create, u.update))
                .collect::<Vec<_>>(),
            [(5, 5, 0), (5, 5, 0)]
        );

        let text = render_text(&plan);
        let lines: Vec<&str> = text.lines().collect();
        assert!(text.contains("upgradeType Beta, batchSize 4,"), "{text}");
        assert!(text.contains("confirmation between groups: yes"), "{text}");
        assert!(
            text.contains("maxUnavailablePerUnit 25% (DCA 1, DCB 1)"),
            "{text}"
        );
        let units = lines.iter().position(|l| l.starts_with("UNIT")).unwrap();
        assert_eq!(cells(lines[units + 1]), ["DCA", "5", "0", "5", "0"]);
        let header = lines.iter().position(|l| l.starts_with("GROUP")).unwrap();
        assert_eq!(cells(lines[header]), ["GROUP", "DCA", "DCB", "TOTAL"]);
        assert_eq!(cells(lines[header + 1]), ["1", "(Beta)", "1", "1", "2"]);
        assert_eq!(cells(lines[header + 2]), ["2", "2", "2", "4"]);
        assert_eq!(cells(lines[header + 3]), ["3", "2", "2", "4"]);
        assert!(text.contains("cafe rollout confirm demo"), "{text}");
    }

    #[test]
    fn current_pods_are_updated_and_extra_ones_removed() {
        let current = parse_current(&["DCA=7".into(), "DCB=2".into()]).unwrap();
        let plan = plan(&seed(), &current, "seed.yaml").unwrap();
        let dca = &plan.units[0];
        assert_eq!(
            (dca.current, dca.create, dca.update, dca.remove),
            (7, 0, 5, 2)
        );
        let dcb = &plan.units[1];
        assert_eq!(
            (dcb.current, dcb.create, dcb.update, dcb.remove),
            (2, 3, 2, 0)
        );
        assert_eq!(plan.groups.iter().map(|g| g.total).sum::<i32>(), 10);
        assert!(render_text(&plan).contains("DCA removes 2 extra pod(s)"));
    }

    #[test]
    fn batch_strategy_has_no_beta_group_and_percents_resolve() {
        let mut cd = seed();
        cd.spec.strategy.upgrade_type = UpgradeType::Batch;
        cd.spec.strategy.batch_size.0 = crate::api::IntOrPercent::Percent("30%".into());
        let plan = plan(&cd, &BTreeMap::new(), "f").unwrap();
        assert_eq!(plan.strategy.batch_size, 3);
        assert!(plan.groups.iter().all(|g| !g.beta));
        assert_eq!(
            plan.groups.iter().map(|g| g.total).collect::<Vec<_>>(),
            [3, 3, 3, 1]
        );
        assert!(render_text(&plan).contains("upgradeType Batch, batchSize 30% (3 pods),"));
    }

    #[test]
    fn json_has_the_same_numbers() {
        let plan = plan(&seed(), &BTreeMap::new(), "f").unwrap();
        let json: serde_json::Value = serde_json::from_str(&render_json(&plan)).unwrap();
        assert_eq!(json["strategy"]["batchSize"], 4);
        assert_eq!(json["units"][1]["name"], "DCB");
        assert_eq!(json["groups"][0]["beta"], true);
        assert_eq!(json["groups"][1]["units"]["DCA"], 2);
        assert_eq!(json["groups"][2]["total"], 4);
    }

    #[test]
    fn current_replicas_parse_and_errors_name_the_value() {
        let parsed = parse_current(&["DCA=5".into(), " DCB = 0 ".into(), "".into()]).unwrap();
        assert_eq!(
            parsed,
            BTreeMap::from([("DCA".into(), 5), ("DCB".into(), 0)])
        );
        for bad in ["DCA", "=3", "DCA=x", "DCA=-1"] {
            let err = parse_current(&[bad.to_string()]).unwrap_err().to_string();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
        let err = parse_current(&["DCA=1".into(), "DCA=2".into()]).unwrap_err();
        assert!(err.to_string().contains("more than once"), "{err}");
        let current = parse_current(&["DCX=1".into()]).unwrap();
        let err = plan(&seed(), &current, "f").unwrap_err().to_string();
        assert!(
            err.contains("unit DCX") && err.contains("DCA, DCB"),
            "{err}"
        );
    }

    #[test]
    fn bad_manifests_are_one_line_errors_naming_the_file() {
        for (text, expect) in [
            ("a: [b", "not valid YAML"),
            (
                "kind: Namespace\nmetadata: {name: x}\n",
                "holds no CafeDeployment",
            ),
            (&format!("{SEED}\n---\n{SEED}"), "holds 2 CafeDeployments"),
            (
                "kind: CafeDeployment\nmetadata: {name: x}\nspec: {replicas: 1}\n",
                "not valid",
            ),
        ] {
            let err = load(text, "x.yaml").unwrap_err().to_string();
            assert!(err.starts_with("x.yaml") && err.contains(expect), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
        let mut cd = seed();
        cd.spec.topology.unit_replicas =
            BTreeMap::from([("DCA".into(), crate::api::IntOrPercent::Int(11))]);
        let err = plan(&cd, &BTreeMap::new(), "x.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("x.yaml: spec.topology.unitReplicas"),
            "{err}"
        );
    }
}
