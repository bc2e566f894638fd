//! events.k8s.io/v1 Event <-> core/v1 Event: one store, two served forms.
//!
//! Field mapping from k8s.io/kubernetes/pkg/apis/events/v1/conversion.go: regarding <->
//! involvedObject, note <-> message, reportingController <-> reportingComponent,
//! deprecatedSource/FirstTimestamp/LastTimestamp/Count <-> source/firstTimestamp/lastTimestamp/count.

use serde_json::{Map, Value, json};

use crate::registry::{Conversion, ResourceType};

const RENAMES: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

fn rename(obj: &Value, forward: bool, api_version: &str) -> Value {
    let Value::Object(m) = obj else {
        return obj.clone();
    };
    let mut out = Map::new();
    for (k, v) in m {
        let target = RENAMES
            .iter()
            .find(|(a, b)| if forward { a == k } else { b == k })
            .map(|(a, b)| if forward { *b } else { *a })
            .unwrap_or(k.as_str());
        out.insert(target.to_string(), v.clone());
    }
    out.insert("apiVersion".into(), json!(api_version));
    out.insert("kind".into(), json!("Event"));
    Value::Object(out)
}

/// Served form -> storage form.
pub fn to_storage(rt: &ResourceType, obj: Value) -> Value {
    match rt.conversion {
        Conversion::None => obj,
        Conversion::EventsV1 => {
            let mut core = rename(&obj, true, "v1");
            // core/v1 readers (kubectl describe) need a count and timestamps.
            if core.get("count").is_none() {
                let count = obj.pointer("/series/count").cloned().unwrap_or(json!(1));
                core["count"] = count;
            }
            if core.get("lastTimestamp").is_none_or(Value::is_null)
                && let Some(t) = obj
                    .pointer("/series/lastObservedTime")
                    .or_else(|| obj.get("eventTime"))
                    .and_then(Value::as_str)
            {
                let seconds = format!("{}Z", t.get(..19).unwrap_or(t));
                core["lastTimestamp"] = json!(seconds);
                if core.get("firstTimestamp").is_none_or(Value::is_null) {
                    core["firstTimestamp"] = json!(seconds);
                }
            }
            if core.get("source").is_none()
                && let Some(c) = obj.get("reportingController")
            {
                core["source"] = json!({"component": c});
            }
            core
        }
    }
}

/// Storage form -> served form.
pub fn to_served(rt: &ResourceType, obj: &Value) -> Value {
    match rt.conversion {
        Conversion::None => obj.clone(),
        Conversion::EventsV1 => rename(obj, false, "events.k8s.io/v1"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;

    #[test]
    fn round_trip_events() {
        let reg = Registry::with_builtins();
        let rt = reg.find("events.k8s.io", "v1", "events").unwrap();
        let ev = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"},
            "regarding": {"kind": "Pod", "name": "p"}, "note": "hello", "reason": "Started",
            "reportingController": "cafe", "eventTime": "2026-01-01T00:00:00.000000Z", "type": "Normal"});
        let core = to_storage(&rt, ev.clone());
        assert_eq!(core["involvedObject"]["name"], "p");
        assert_eq!(core["message"], "hello");
        assert_eq!(core["apiVersion"], "v1");
        assert_eq!(core["count"], 1);
        assert_eq!(core["lastTimestamp"], "2026-01-01T00:00:00Z");
        let back = to_served(&rt, &core);
        assert_eq!(back["regarding"]["name"], "p");
        assert_eq!(back["note"], "hello");
    }
}
