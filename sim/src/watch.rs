//! Watches: newline-delimited JSON events, flushed one by one.
//!
//! https://kubernetes.io/docs/reference/using-api/api-concepts/#efficient-detection-of-changes
//! - unset or "0" resourceVersion: synthetic ADDED events for the current state first;
//! - a resourceVersion older than the kept history: an in-stream ERROR event with a 410 Expired
//!   Status (an HTTP-level 410 would make kube-rs' watcher retry the same request forever);
//! - BOOKMARK events (kind and apiVersion set, only metadata.resourceVersion) when asked;
//! - `sendInitialEvents=true` ends the initial events with a bookmark annotated
//!   `k8s.io/initial-events-end`;
//! - `timeoutSeconds` closes the stream.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::api::{Request, selectors};
use crate::cluster::Cluster;
use crate::registry::{Conversion, ResourceType};
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::ApiError;
use crate::store::{ChangeKind, Obj, meta_str};
use crate::table::{self, IncludeObject};
use crate::write;

/// How often idle watches that asked for bookmarks get one.
const BOOKMARK_EVERY: Duration = Duration::from_secs(5);
/// Changes read from the store per lock acquisition.
const BATCH: usize = 512;

pub struct WatchRequest {
    rt: Arc<ResourceType>,
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
    resource_version: Option<u64>,
    bookmarks: bool,
    initial_events: bool,
    timeout: Duration,
    table: Option<IncludeObject>,
}

impl WatchRequest {
    pub fn from_request(
        rt: Arc<ResourceType>,
        namespace: Option<String>,
        req: &Request,
    ) -> Result<Self, ApiError> {
        let (labels, fields) = selectors(req)?;
        let resource_version = match req.param("resourceVersion") {
            None | Some("") | Some("0") => None,
            Some(rv) => Some(rv.parse::<u64>().map_err(|_| {
                ApiError::bad_request(format!("invalid resourceVersion {rv:?}: expected a number"))
            })?),
        };
        let timeout = req
            .param("timeoutSeconds")
            .and_then(|t| t.parse::<u64>().ok())
            .filter(|t| *t > 0)
            .map(Duration::from_secs)
            // The API server's default: a random 30-60 minutes; one hour is as good for us.
            .unwrap_or(Duration::from_secs(3600));
        Ok(WatchRequest {
            rt,
            namespace,
            labels,
            fields,
            resource_version,
            bookmarks: matches!(req.param("allowWatchBookmarks"), Some("true" | "1")),
            initial_events: matches!(req.param("sendInitialEvents"), Some("true" | "1")),
            timeout,
            table: req
                .wants_table()
                .then(|| IncludeObject::parse(req.param("includeObject"))),
        })
    }

    fn matches(&self, obj: &Value) -> bool {
        if let Some(ns) = &self.namespace
            && meta_str(obj, "namespace") != ns
        {
            return false;
        }
        self.labels.matches(obj) && self.fields.matches(obj)
    }

    fn event(&self, kind: &str, obj: &Value) -> Bytes {
        let object = match self.table {
            Some(include) => table::table(
                &self.rt,
                &[obj],
                json!({"resourceVersion": meta_str(obj, "resourceVersion")}),
                include,
            )
            .to_string(),
            None => obj.to_string(),
        };
        event_line(kind, object.as_bytes())
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        line(&json!({"type": "BOOKMARK", "object": {
            "kind": self.rt.kind, "apiVersion": self.rt.api_version(), "metadata": meta,
        }}))
    }
}

fn line(v: &Value) -> Bytes {
    let mut s = v.to_string();
    s.push('\n');
    Bytes::from(s)
}

fn expired(rv: u64, oldest: u64) -> Bytes {
    let status =
        ApiError::expired(format!("too old resource version: {rv} ({oldest})")).to_status();
    line(&json!({"type": "ERROR", "object": status}))
}

/// Streams events into `tx` until the client goes away, the timeout passes or watches are cut.
pub async fn run(cluster: Arc<Cluster>, w: WatchRequest, tx: mpsc::Sender<Bytes>) {
    let cut = cluster.faults.watch_token();
    let deadline = tokio::time::Instant::now() + w.timeout;
    let mut changed = cluster.store.subscribe();
    changed.borrow_and_update();
    let start = cluster.store.read(|s| match w.resource_version {
        Some(rv) if rv < s.compacted() => Err((rv, s.compacted() + 1)),
        Some(rv) if !w.initial_events => Ok((rv, vec![])),
        _ => Ok((s.rv(), s.list(&w.rt.storage, w.namespace.as_deref()))),
    });
    let (mut cursor, initial) = match start {
        Ok(x) => x,
        Err((rv, oldest)) => {
            let _ = tx.send(expired(rv, oldest)).await;
            return;
        }
    };
    for obj in initial {
        let served = write::served(&w.rt, obj);
        if w.matches(&served) && tx.send(w.event("ADDED", &served)).await.is_err() {
            return;
        }
    }
    if w.initial_events && tx.send(w.bookmark(cursor, true)).await.is_err() {
        return;
    }
    let mut next_bookmark = tokio::time::Instant::now() + BOOKMARK_EVERY;
    loop {
        let batch = cluster.store.read(|s| s.changes_since(cursor, BATCH));
        let Some(changes) = batch else {
            let oldest = cluster.store.read(|s| s.compacted() + 1);
            let _ = tx.send(expired(cursor, oldest)).await;
            return;
        };
        let full = changes.len() == BATCH;
        for change in changes {
            cursor = change.rv;
            if change.storage != w.rt.storage {
                continue;
            }
            let previous = change.previous();
            let Some((kind, obj)) = translate(&w, change.kind, &change.object(), previous.as_ref())
            else {
                continue;
            };
            let shareable = w.table.is_none()
                && kind == change.kind.as_str()
                && w.rt.conversion == Conversion::None;
            let line = match change.object_json() {
                // A replay of an older change: its JSON is all it keeps.
                Some(json) if shareable => event_line(kind, json),
                _ if shareable => change.encoded.get_or_init(|| w.event(kind, &obj)).clone(),
                _ => w.event(kind, &obj),
            };
            if tx.send(line).await.is_err() {
                return;
            }
        }
        if full {
            continue;
        }
        // A custom resource whose CRD is gone is no longer served: Kubernetes tears down its
        // storage and ends its watches (after the DELETED events of its objects, which the CRD
        // finalizer removes first), and a client that watches again gets 404.
        // https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/#delete-a-customresourcedefinition
        if !w.rt.builtin
            && cluster
                .store
                .read(|s| s.registry.find(&w.rt.group, &w.rt.version, &w.rt.plural))
                .is_none()
        {
            return;
        }
        tokio::select! {
            res = changed.changed() => {
                if res.is_err() {
                    return;
                }
            }
            _ = cut.cancelled() => return,
            _ = tokio::time::sleep_until(deadline) => return,
            _ = tokio::time::sleep_until(next_bookmark) => {
                next_bookmark = tokio::time::Instant::now() + BOOKMARK_EVERY;
                if w.bookmarks && tx.send(w.bookmark(cursor, false)).await.is_err() {
                    return;
                }
            }
            _ = tx.closed() => return,
        }
    }
}

/// A watch event line around an object's JSON. Written by hand so the object is serialised
/// once, not cloned into a wrapper first.
fn event_line(kind: &str, object: &[u8]) -> Bytes {
    let head = format!("{{\"type\":\"{kind}\",\"object\":");
    let mut line = Vec::with_capacity(head.len() + object.len() + 2);
    line.extend_from_slice(head.as_bytes());
    line.extend_from_slice(object);
    line.extend_from_slice(b"}\n");
    Bytes::from(line)
}

/// A store change as this watch sees it: objects moving in or out of the selection become
/// ADDED or DELETED, as in Kubernetes' filtered watches.
fn translate(
    w: &WatchRequest,
    kind: ChangeKind,
    object: &Obj,
    previous: Option<&Obj>,
) -> Option<(&'static str, Obj)> {
    let now = write::served(&w.rt, object.clone());
    let now_matches = w.matches(&now);
    match kind {
        ChangeKind::Added => now_matches.then(|| ("ADDED", now.clone())),
        ChangeKind::Deleted => {
            let before = previous.map(|p| write::served(&w.rt, p.clone()));
            let matched = before.as_ref().map_or(now_matches, |b| w.matches(b));
            matched.then(|| ("DELETED", now.clone()))
        }
        ChangeKind::Modified => {
            let before = previous
                .map(|p| w.matches(&write::served(&w.rt, p.clone())))
                .unwrap_or(false);
            match (before, now_matches) {
                (true, true) => Some(("MODIFIED", now.clone())),
                (false, true) => Some(("ADDED", now.clone())),
                (true, false) => Some(("DELETED", now.clone())),
                (false, false) => None,
            }
        }
    }
}
