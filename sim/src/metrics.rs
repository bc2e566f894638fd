//! Request counters per cluster, verb, resource and code, served at /metrics (Prometheus text).
//! Names follow the API server's `apiserver_request_total`, so benchmarks can count writes.
//! Also the per-user call record tests read to prove which identity did what.

use std::collections::VecDeque;

use parking_lot::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub cluster: String,
    pub verb: String,
    pub resource: String,
    pub subresource: String,
    pub code: String,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
}

/// The verbs that change state.
pub const WRITE_VERBS: [&str; 6] = [
    "create",
    "update",
    "patch",
    "apply",
    "delete",
    "deletecollection",
];

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "apiserver_request",
            "Requests by cluster, verb, resource, subresource and HTTP code",
            requests.clone(),
        );
        Self { registry, requests }
    }
}

impl Metrics {
    pub fn record(&self, labels: RequestLabels) {
        self.requests.get_or_create(&labels).inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Total requests matching a predicate (for tests and benchmarks in-process).
    pub fn count(&self, pred: impl Fn(&RequestLabels) -> bool) -> u64 {
        // Family has no iterator; re-parse our own exposition, which is cheap at test scale.
        let text = self.encode();
        text.lines()
            .filter(|l| l.starts_with("apiserver_request_total{"))
            .filter_map(|l| {
                let (labels, value) = l.rsplit_once(' ')?;
                let parsed = parse_labels(labels)?;
                pred(&parsed).then(|| value.parse::<f64>().ok().map(|v| v as u64))?
            })
            .sum()
    }
}

/// One resource request as the call record keeps it (think of an audit log entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    pub user: String,
    pub user_agent: String,
    /// The authorization verb: get, list, watch, create, update, patch, delete, deletecollection.
    pub verb: String,
    pub api_group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    pub code: u16,
    /// When the answer was decided (for tests that bracket calls between observed moments).
    pub at: std::time::Instant,
}

/// How many calls the record keeps; older ones are dropped so long runs stay bounded.
pub const CALL_RECORD_LIMIT: usize = 200_000;

/// The last [`CALL_RECORD_LIMIT`] resource requests of one cluster.
#[derive(Default)]
pub struct CallLog {
    calls: Mutex<VecDeque<CallRecord>>,
}

impl CallLog {
    pub fn push(&self, call: CallRecord) {
        let mut calls = self.calls.lock();
        if calls.len() >= CALL_RECORD_LIMIT {
            calls.pop_front();
        }
        calls.push_back(call);
    }

    /// The recorded calls, oldest first.
    pub fn snapshot(&self) -> Vec<CallRecord> {
        self.calls.lock().iter().cloned().collect()
    }
}

fn parse_labels(text: &str) -> Option<RequestLabels> {
    let inner = text.split_once('{')?.1.strip_suffix('}')?;
    let mut l = RequestLabels {
        cluster: String::new(),
        verb: String::new(),
        resource: String::new(),
        subresource: String::new(),
        code: String::new(),
    };
    for part in inner.split("\",") {
        let (k, v) = part.split_once("=\"")?;
        let v = v.trim_end_matches('"').to_string();
        match k {
            "cluster" => l.cluster = v,
            "verb" => l.verb = v,
            "resource" => l.resource = v,
            "subresource" => l.subresource = v,
            "code" => l.code = v,
            _ => {}
        }
    }
    Some(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_label() {
        let m = Metrics::default();
        for verb in ["create", "create", "get"] {
            m.record(RequestLabels {
                cluster: "dca".into(),
                verb: verb.into(),
                resource: "pods".into(),
                subresource: String::new(),
                code: "201".into(),
            });
        }
        assert_eq!(m.count(|l| l.verb == "create"), 2);
        assert!(m.encode().contains("apiserver_request_total"));
    }
}
