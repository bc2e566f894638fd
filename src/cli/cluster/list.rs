//! The `cafe cluster list` table.

use crate::api::MemberCluster;
use crate::api::labels::UNIT_LABEL_PREFIX;

/// The `cafe cluster list` table: NAME, UNITS, READY, VERSION, NODES, CPU and MEMORY as free over
/// total (allocatable), from the capacity the hub last probed; `-` until it has. The headers say
/// which number is which: "8/24" alone reads as used over total as often as free over total.
pub fn render_list(members: &[MemberCluster]) -> String {
    let mut rows = vec![
        [
            "NAME",
            "UNITS",
            "READY",
            "VERSION",
            "NODES",
            "CPU FREE/TOTAL",
            "MEMORY FREE/TOTAL",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for m in members {
        let units = m
            .metadata
            .labels
            .iter()
            .flatten()
            .filter_map(|(k, v)| {
                k.strip_prefix(UNIT_LABEL_PREFIX)
                    .map(|t| format!("{t}={v}"))
            })
            .collect::<Vec<_>>();
        let status = m.status.clone().unwrap_or_default();
        let ready = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .map_or_else(
                || "Unknown".to_string(),
                |c| match c.status.as_str() {
                    "False" if !c.reason.is_empty() => format!("False({})", c.reason),
                    s => s.to_string(),
                },
            );
        let dash = || "-".to_string();
        let (nodes, cpu, memory) = match &status.capacity {
            Some(c) => (
                c.nodes.to_string(),
                format!(
                    "{}/{}",
                    format_cpu(c.allocatable.cpu_millis - c.requested.cpu_millis),
                    format_cpu(c.allocatable.cpu_millis)
                ),
                format!(
                    "{}/{}",
                    format_memory(c.allocatable.memory_bytes - c.requested.memory_bytes),
                    format_memory(c.allocatable.memory_bytes)
                ),
            ),
            None => (dash(), dash(), dash()),
        };
        rows.push(vec![
            m.metadata.name.clone().unwrap_or_default(),
            if units.is_empty() {
                dash()
            } else {
                units.join(",")
            },
            ready,
            status.kubernetes_version.unwrap_or_else(dash),
            nodes,
            cpu,
            memory,
        ]);
    }
    crate::cli::status::render_table(&rows)
}

/// Millicores as cores: `24`, `23.5`, `0.25`.
pub fn format_cpu(millis: i64) -> String {
    let whole = millis / 1000;
    let frac = (millis % 1000).abs();
    let sign = if millis < 0 && whole == 0 { "-" } else { "" };
    if frac == 0 {
        format!("{sign}{whole}")
    } else {
        let frac = format!("{frac:03}");
        format!("{sign}{whole}.{}", frac.trim_end_matches('0'))
    }
}

/// Bytes in the largest binary unit that keeps one decimal meaningful: `48Gi`, `47.5Gi`, `512Mi`.
pub fn format_memory(bytes: i64) -> String {
    const UNITS: [(&str, i64); 4] = [
        ("Ti", 1 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ];
    for (suffix, size) in UNITS {
        if bytes.abs() >= size {
            let tenths = (bytes * 10) / size;
            return if tenths % 10 == 0 {
                format!("{}{suffix}", tenths / 10)
            } else {
                format!("{}.{}{suffix}", tenths / 10, (tenths % 10).abs())
            };
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cluster_list_headers_say_free_over_total() {
        let m: MemberCluster = serde_json::from_value(json!({
            "apiVersion": "apps.cafe.io/v1alpha1", "kind": "MemberCluster",
            "metadata": {"name": "dca", "labels": {"unit.apps.cafe.io/DataCenter": "DCA", "other": "x"}},
            "spec": {"kubeconfigSecretRef": {"namespace": "cafe-system", "name": "dca-kubeconfig"}},
            "status": {
                "conditions": [{"type": "Ready", "status": "True", "reason": "Probed", "message": "",
                                "lastTransitionTime": "2025-01-01T00:00:00Z"}],
                "kubernetesVersion": "v1.33.0",
                "capacity": {"nodes": 3,
                    "allocatable": {"cpuMillis": 24000, "memoryBytes": 51539607552i64, "pods": 330},
                    "requested": {"cpuMillis": 500, "memoryBytes": 536870912, "pods": 5}}
            }
        }))
        .unwrap();
        let fresh: MemberCluster = serde_json::from_value(json!({
            "apiVersion": "apps.cafe.io/v1alpha1", "kind": "MemberCluster",
            "metadata": {"name": "dcb", "labels": {"unit.apps.cafe.io/DataCenter": "DCB"}},
            "spec": {"kubeconfigSecretRef": {"namespace": "cafe-system", "name": "dcb-kubeconfig"}}
        }))
        .unwrap();
        let out = render_list(&[m, fresh]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        // Columns are separated by at least two spaces; a header may have one inside.
        let header: Vec<&str> = lines[0]
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        assert_eq!(
            header,
            [
                "NAME",
                "UNITS",
                "READY",
                "VERSION",
                "NODES",
                "CPU FREE/TOTAL",
                "MEMORY FREE/TOTAL"
            ]
        );
        let cols = |l: &str| l.split_whitespace().map(String::from).collect::<Vec<_>>();
        assert_eq!(
            cols(lines[1]),
            [
                "dca",
                "DataCenter=DCA",
                "True",
                "v1.33.0",
                "3",
                "23.5/24",
                "47.5Gi/48Gi"
            ]
        );
        assert_eq!(
            cols(lines[2]),
            ["dcb", "DataCenter=DCB", "Unknown", "-", "-", "-", "-"]
        );
    }

    #[test]
    fn quantities_read_like_kubectl() {
        assert_eq!(format_cpu(24000), "24");
        assert_eq!(format_cpu(250), "0.25");
        assert_eq!(format_cpu(1100), "1.1");
        assert_eq!(format_cpu(-500), "-0.5");
        assert_eq!(format_memory(16 << 30), "16Gi");
        assert_eq!(format_memory(512 << 20), "512Mi");
        assert_eq!(format_memory((3 << 30) / 2), "1.5Gi");
        assert_eq!(format_memory(100), "100");
    }
}
