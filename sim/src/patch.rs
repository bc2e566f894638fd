//! The three PATCH flavours the Kubernetes API server accepts:
//!
//! * `application/json-patch+json` — RFC 6902 JSON Patch ([`json_patch()`]),
//! * `application/merge-patch+json` — RFC 7386 JSON Merge Patch ([`merge_patch`]),
//! * `application/strategic-merge-patch+json` — Kubernetes' strategic merge patch
//!   ([`strategic_merge_patch`]).
//!
//! See <https://kubernetes.io/docs/tasks/manage-kubernetes-objects/update-api-object-kubectl-patch/>
//! for how the server picks between them.
//!
//! The table of list merge keys used by the strategic merge patch
//! ([`builtin_list_strategy`]) is also what server-side apply uses for built-in
//! kinds (see `crate::apply::BuiltinListTypes`), so the two write paths agree on
//! which lists are associative.

use serde_json::{Map, Value};

/// Why a patch could not be applied. The variants map to HTTP status codes the way
/// the Kubernetes API server maps them (see `interpretStrategicMergePatchError` and
/// `applyJSPatch` in `k8s.io/apiserver/pkg/endpoints/handlers/patch.go`).
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    /// 400 Bad Request: the patch body itself is malformed (not JSON, wrong shape, unknown op).
    #[error("{0}")]
    Malformed(String),
    /// 422 Unprocessable Entity: the patch is well-formed but cannot be applied (failed `test`, path missing for remove/replace, ...).
    #[error("{0}")]
    Unprocessable(String),
}

type Result<T> = std::result::Result<T, PatchError>;

fn malformed(msg: impl Into<String>) -> PatchError {
    PatchError::Malformed(msg.into())
}

fn unprocessable(msg: impl Into<String>) -> PatchError {
    PatchError::Unprocessable(msg.into())
}

// ---------------------------------------------------------------------------
// RFC 6902 JSON Patch
// ---------------------------------------------------------------------------

/// Applies an RFC 6902 JSON Patch (`patch` must be an array of operations) to `doc`.
///
/// The operations are applied to a copy, so the result is all-or-nothing: on any
/// error `doc` is untouched and no partial result is returned.
///
/// Mirrors the behaviour of the `evanphx/json-patch` library Kubernetes uses,
/// including its quirk that `test` on a missing object member compares as if the
/// member were `null` (kube-rs' finalizer helper relies on
/// `{"op":"test","path":"/metadata/finalizers","value":null}` succeeding when the
/// object has no finalizers). The *parent* of the tested path must still exist.
///
/// Errors: [`PatchError::Malformed`] for a patch that is not an array of valid
/// operation objects (unknown `op`, missing `path`, bad JSON pointer, ...);
/// [`PatchError::Unprocessable`] when a well-formed operation does not apply.
pub fn json_patch(doc: &Value, patch: &Value) -> Result<Value> {
    let ops = parse_json_patch(patch)?;
    let mut working = doc.clone();
    for op in &ops {
        apply_op(&mut working, op)?;
    }
    Ok(working)
}

/// One decoded RFC 6902 operation; pointers are already split into unescaped tokens.
#[derive(Debug)]
enum Op {
    Add { path: Pointer, value: Value },
    Remove { path: Pointer },
    Replace { path: Pointer, value: Value },
    Move { from: Pointer, path: Pointer },
    Copy { from: Pointer, path: Pointer },
    Test { path: Pointer, value: Value },
}

/// A parsed JSON pointer (RFC 6901): the raw text (for messages) and its tokens.
#[derive(Debug, Clone)]
struct Pointer {
    raw: String,
    tokens: Vec<String>,
}

impl Pointer {
    fn parse(raw: &str) -> Result<Self> {
        if raw.is_empty() {
            return Ok(Self {
                raw: String::new(),
                tokens: Vec::new(),
            });
        }
        let Some(rest) = raw.strip_prefix('/') else {
            return Err(malformed(format!(
                "invalid JSON pointer {raw:?}: must be empty or start with '/'"
            )));
        };
        let tokens = rest
            .split('/')
            .map(|t| t.replace("~1", "/").replace("~0", "~"))
            .collect();
        Ok(Self {
            raw: raw.to_string(),
            tokens,
        })
    }

    /// The pointer to the parent container and the last token, or `None` for the root.
    fn split_last(&self) -> Option<(&[String], &str)> {
        self.tokens
            .split_last()
            .map(|(last, parent)| (parent, last.as_str()))
    }
}

fn parse_json_patch(patch: &Value) -> Result<Vec<Op>> {
    let ops = patch
        .as_array()
        .ok_or_else(|| malformed("json patch must be a JSON array of operations"))?;
    ops.iter().map(parse_op).collect()
}

fn parse_op(op: &Value) -> Result<Op> {
    let obj = op
        .as_object()
        .ok_or_else(|| malformed(format!("json patch operation must be an object, got {op}")))?;
    let name = obj
        .get("op")
        .and_then(Value::as_str)
        .ok_or_else(|| malformed(format!("json patch operation is missing \"op\": {op}")))?;
    let pointer = |field: &str| -> Result<Pointer> {
        let raw = obj.get(field).and_then(Value::as_str).ok_or_else(|| {
            malformed(format!(
                "json patch {name} operation is missing \"{field}\": {op}"
            ))
        })?;
        Pointer::parse(raw)
    };
    let value = || -> Result<Value> {
        obj.get("value").cloned().ok_or_else(|| {
            malformed(format!(
                "json patch {name} operation is missing \"value\": {op}"
            ))
        })
    };
    Ok(match name {
        "add" => Op::Add {
            path: pointer("path")?,
            value: value()?,
        },
        "remove" => Op::Remove {
            path: pointer("path")?,
        },
        "replace" => Op::Replace {
            path: pointer("path")?,
            value: value()?,
        },
        "move" => Op::Move {
            from: pointer("from")?,
            path: pointer("path")?,
        },
        "copy" => Op::Copy {
            from: pointer("from")?,
            path: pointer("path")?,
        },
        // evanphx/json-patch treats a missing `value` in `test` as null.
        "test" => Op::Test {
            path: pointer("path")?,
            value: obj.get("value").cloned().unwrap_or(Value::Null),
        },
        other => return Err(malformed(format!("unknown json patch operation {other:?}"))),
    })
}

fn apply_op(doc: &mut Value, op: &Op) -> Result<()> {
    match op {
        Op::Add { path, value } => add_at(doc, path, value.clone(), "add"),
        Op::Remove { path } => remove_at(doc, path, "remove").map(drop),
        Op::Replace { path, value } => {
            let target = get_mut(doc, &path.tokens).ok_or_else(|| {
                unprocessable(format!(
                    "replace operation does not apply: doc is missing key: {}",
                    path.raw
                ))
            })?;
            *target = value.clone();
            Ok(())
        }
        Op::Move { from, path } => {
            // RFC 6902 §4.4: a location cannot be moved into one of its children.
            if path.tokens.len() > from.tokens.len() && path.tokens.starts_with(&from.tokens) {
                return Err(unprocessable(format!(
                    "move operation does not apply: cannot move {} into its child {}",
                    from.raw, path.raw
                )));
            }
            let value = remove_at(doc, from, "move")?;
            add_at(doc, path, value, "move")
        }
        Op::Copy { from, path } => {
            let value = get(doc, &from.tokens).cloned().ok_or_else(|| {
                unprocessable(format!(
                    "copy operation does not apply: doc is missing from path: {}",
                    from.raw
                ))
            })?;
            add_at(doc, path, value, "copy")
        }
        Op::Test { path, value } => test_at(doc, path, value),
    }
}

/// `test` with the Kubernetes (evanphx/json-patch v4) semantics: a missing member of
/// an existing object reads as `null`; a missing parent or a bad array index fails.
fn test_at(doc: &Value, path: &Pointer, expected: &Value) -> Result<()> {
    let failed = || unprocessable(format!("testing value {} failed", path.raw));
    let actual = match path.split_last() {
        None => Some(doc),
        Some((parent, last)) => match get(doc, parent) {
            Some(Value::Object(map)) => map.get(last),
            Some(Value::Array(items)) => Some(
                parse_index(last)
                    .and_then(|i| items.get(i))
                    .ok_or_else(|| {
                        unprocessable(format!("error in test for path: '{}'", path.raw))
                    })?,
            ),
            _ => {
                return Err(unprocessable(format!(
                    "test operation does not apply: is missing path: {}",
                    path.raw
                )));
            }
        },
    };
    match actual {
        Some(actual) if actual == expected => Ok(()),
        None if expected.is_null() => Ok(()),
        _ => Err(failed()),
    }
}

fn parse_index(token: &str) -> Option<usize> {
    // RFC 6901: array indexes are decimal without leading zeros.
    if token.is_empty() || (token.len() > 1 && token.starts_with('0')) {
        return None;
    }
    if !token.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    token.parse().ok()
}

fn get<'a>(doc: &'a Value, tokens: &[String]) -> Option<&'a Value> {
    tokens.iter().try_fold(doc, |cur, token| match cur {
        Value::Object(map) => map.get(token),
        Value::Array(items) => parse_index(token).and_then(|i| items.get(i)),
        _ => None,
    })
}

fn get_mut<'a>(doc: &'a mut Value, tokens: &[String]) -> Option<&'a mut Value> {
    tokens.iter().try_fold(doc, |cur, token| match cur {
        Value::Object(map) => map.get_mut(token),
        Value::Array(items) => parse_index(token).and_then(move |i| items.get_mut(i)),
        _ => None,
    })
}

fn add_at(doc: &mut Value, path: &Pointer, value: Value, op: &str) -> Result<()> {
    let Some((parent, last)) = path.split_last() else {
        *doc = value;
        return Ok(());
    };
    let missing = || {
        unprocessable(format!(
            "{op} operation does not apply: doc is missing path: \"{}\"",
            path.raw
        ))
    };
    match get_mut(doc, parent).ok_or_else(missing)? {
        Value::Object(map) => {
            // `insert` keeps the position of an existing key (preserve_order).
            map.insert(last.to_string(), value);
            Ok(())
        }
        Value::Array(items) => {
            let index = if last == "-" {
                items.len()
            } else {
                parse_index(last)
                    .filter(|i| *i <= items.len())
                    .ok_or_else(|| {
                        unprocessable(format!(
                            "{op} operation does not apply: index out of bounds: \"{}\"",
                            path.raw
                        ))
                    })?
            };
            items.insert(index, value);
            Ok(())
        }
        _ => Err(missing()),
    }
}

fn remove_at(doc: &mut Value, path: &Pointer, op: &str) -> Result<Value> {
    let missing = || {
        unprocessable(format!(
            "{op} operation does not apply: doc is missing path: \"{}\"",
            path.raw
        ))
    };
    let (parent, last) = path.split_last().ok_or_else(missing)?;
    match get_mut(doc, parent).ok_or_else(missing)? {
        // shift_remove keeps the order of the remaining keys (swap_remove would not).
        Value::Object(map) => map.shift_remove(last).ok_or_else(missing),
        Value::Array(items) => {
            let index = parse_index(last)
                .filter(|i| *i < items.len())
                .ok_or_else(missing)?;
            Ok(items.remove(index))
        }
        _ => Err(missing()),
    }
}

// ---------------------------------------------------------------------------
// RFC 7386 JSON Merge Patch
// ---------------------------------------------------------------------------

/// Applies an RFC 7386 JSON Merge Patch: objects merge recursively, `null` deletes a
/// key, anything else (including arrays) replaces. A non-object patch replaces the
/// whole document. Key order of `doc` is preserved; new keys are appended.
pub fn merge_patch(doc: &Value, patch: &Value) -> Value {
    let Value::Object(patch_map) = patch else {
        return patch.clone();
    };
    let mut result = match doc {
        Value::Object(map) => map.clone(),
        _ => Map::new(),
    };
    for (key, value) in patch_map {
        if value.is_null() {
            result.shift_remove(key);
        } else {
            let merged = merge_patch(result.get(key).unwrap_or(&Value::Null), value);
            result.insert(key.clone(), merged);
        }
    }
    Value::Object(result)
}

// ---------------------------------------------------------------------------
// Strategic merge patch
// ---------------------------------------------------------------------------

/// How a list of a built-in kind is merged, by strategic merge patch and by
/// server-side apply. Derived from the `patchStrategy`/`patchMergeKey` struct tags
/// of `k8s.io/api` (see
/// <https://github.com/kubernetes/community/blob/master/contributors/devel/sig-api-machinery/strategic-merge-patch.md>).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuiltinListStrategy {
    /// `patchStrategy:"merge"` with `patchMergeKey`: items are matched by this field.
    MergeKey(&'static str),
    /// `patchStrategy:"merge"` on a list of primitives: set union (like `finalizers`).
    MergeSet,
    /// No merge strategy: the list is replaced whole.
    Replace,
}

/// Kinds served by the built-in API groups, for which strategic merge patch is
/// defined. Kubernetes rejects strategic merge patch for custom resources with 415
/// Unsupported Media Type; callers should check [`is_builtin_kind`] first.
const BUILTIN_KINDS: &[&str] = &[
    "Binding",
    "ClusterRole",
    "ClusterRoleBinding",
    "ConfigMap",
    "ControllerRevision",
    "CronJob",
    "CSIDriver",
    "CSINode",
    "CustomResourceDefinition",
    "DaemonSet",
    "Deployment",
    "EndpointSlice",
    "Endpoints",
    "Event",
    "HorizontalPodAutoscaler",
    "Ingress",
    "IngressClass",
    "Job",
    "Lease",
    "LimitRange",
    "MutatingWebhookConfiguration",
    "Namespace",
    "NetworkPolicy",
    "Node",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "Pod",
    "PodDisruptionBudget",
    "PodTemplate",
    "PriorityClass",
    "ReplicaSet",
    "ReplicationController",
    "ResourceQuota",
    "Role",
    "RoleBinding",
    "RuntimeClass",
    "Secret",
    "Service",
    "ServiceAccount",
    "StatefulSet",
    "StorageClass",
    "ValidatingWebhookConfiguration",
    "VolumeAttachment",
];

/// Whether `kind` is a built-in kind for which strategic merge patch is supported.
pub fn is_builtin_kind(kind: &str) -> bool {
    BUILTIN_KINDS.contains(&kind)
}

fn is_container_list(field: &str) -> bool {
    matches!(
        field,
        "containers" | "initContainers" | "ephemeralContainers"
    )
}

/// The merge strategy of the list at `path` (field names from the object root; list
/// items add no segment, so a Deployment's containers are
/// `["spec","template","spec","containers"]`). Lists not in the table are replaced.
///
/// This single table serves both strategic merge patch and server-side apply for
/// built-in kinds. It is keyed by the field name plus, where a name is ambiguous,
/// its parent (e.g. `ports` under a container vs. a Service's `spec.ports`).
pub fn builtin_list_strategy<S: AsRef<str>>(path: &[S]) -> BuiltinListStrategy {
    use BuiltinListStrategy::{MergeKey, MergeSet, Replace};
    let Some((last, rest)) = path.split_last() else {
        return Replace;
    };
    let parent = rest.last().map(AsRef::as_ref).unwrap_or("");
    match (parent, last.as_ref()) {
        // ObjectMeta
        ("metadata", "finalizers") => MergeSet,
        ("metadata", "ownerReferences") => MergeKey("uid"),
        // Status of Pod, Node, Namespace, Deployment, ReplicaSet, StatefulSet, Job, ...
        ("status", "conditions") => MergeKey("type"),
        ("status", "addresses") => MergeKey("type"),
        ("status", "podIPs" | "hostIPs") => MergeKey("ip"),
        (
            "status",
            "containerStatuses" | "initContainerStatuses" | "ephemeralContainerStatuses",
        ) => MergeKey("name"),
        // Containers and their parts
        (_, "containers" | "initContainers" | "ephemeralContainers") => MergeKey("name"),
        (c, "ports") if is_container_list(c) => MergeKey("containerPort"),
        (c, "env") if is_container_list(c) => MergeKey("name"),
        (c, "volumeMounts") if is_container_list(c) => MergeKey("mountPath"),
        (c, "volumeDevices") if is_container_list(c) => MergeKey("devicePath"),
        // Service
        ("spec", "ports") => MergeKey("port"),
        // PodSpec
        ("spec", "volumes") => MergeKey("name"),
        ("spec", "imagePullSecrets") => MergeKey("name"),
        ("spec", "hostAliases") => MergeKey("ip"),
        ("spec", "topologySpreadConstraints") => MergeKey("topologyKey"),
        ("spec", "resourceClaims" | "schedulingGates") => MergeKey("name"),
        ("spec", "podCIDRs") => MergeSet,
        // ServiceAccount
        (_, "secrets") if path.len() == 1 => MergeKey("name"),
        // Explicitly atomic: tolerations, taints, readinessGates, and everything else.
        _ => Replace,
    }
}

const DIRECTIVE: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList/";
const SET_ELEMENT_ORDER: &str = "$setElementOrder/";

/// Applies a Kubernetes strategic merge patch to `doc`.
///
/// Like [`merge_patch`], except that lists with a known patch merge key (see
/// [`builtin_list_strategy`]) are merged item by item, primitive lists with the
/// merge strategy (finalizers) are unioned, and the directives `$patch`
/// (`replace`/`delete`), `$retainKeys`, `$deleteFromPrimitiveList/<field>` and
/// `$setElementOrder/<field>` are honoured. Directive keys never reach the result.
///
/// For kinds that are not built in (see [`is_builtin_kind`]) no list has a merge
/// key, so every list is replaced (Kubernetes would refuse the patch with 415).
///
/// Semantics follow
/// <https://github.com/kubernetes/community/blob/master/contributors/devel/sig-api-machinery/strategic-merge-patch.md>
/// and `k8s.io/apimachinery/pkg/util/strategicpatch`.
pub fn strategic_merge_patch(doc: &Value, patch: &Value, kind: &str) -> Result<Value> {
    let patch = patch
        .as_object()
        .ok_or_else(|| malformed("strategic merge patch must be a JSON object"))?;
    let merger = Smp {
        builtin: is_builtin_kind(kind),
    };
    let mut path = Vec::new();
    merger
        .merge_map(doc.as_object(), patch, &mut path)
        .map(Value::Object)
}

/// The strategic merge walker; `builtin` selects whether the merge-key table applies.
struct Smp {
    builtin: bool,
}

impl Smp {
    fn strategy(&self, path: &[String]) -> BuiltinListStrategy {
        if self.builtin {
            builtin_list_strategy(path)
        } else {
            BuiltinListStrategy::Replace
        }
    }

    /// Merges a patch map into an (optional) original map.
    fn merge_map(
        &self,
        original: Option<&Map<String, Value>>,
        patch: &Map<String, Value>,
        path: &mut Vec<String>,
    ) -> Result<Map<String, Value>> {
        let mut result = match patch.get(DIRECTIVE) {
            None => original.cloned().unwrap_or_default(),
            Some(Value::String(d)) if d == "merge" => original.cloned().unwrap_or_default(),
            // Upstream `handleDirectiveInMergeMap`: replace uses the patch as the new
            // map; delete yields an empty map.
            Some(Value::String(d)) if d == "replace" => Map::new(),
            Some(Value::String(d)) if d == "delete" => return Ok(Map::new()),
            Some(other) => {
                return Err(malformed(format!(
                    "unknown patch type {other} in map: {}",
                    Value::Object(patch.clone())
                )));
            }
        };
        self.apply_retain_keys(&mut result, patch)?;
        self.apply_delete_from_primitive_lists(&mut result, patch)?;
        for (key, value) in patch {
            if key.starts_with('$') {
                check_known_directive(key)?;
                continue;
            }
            if value.is_null() {
                result.shift_remove(key);
                continue;
            }
            path.push(key.clone());
            let merged = self.merge_value(result.get(key), value, path);
            path.pop();
            result.insert(key.clone(), merged?);
        }
        self.apply_set_element_order(&mut result, patch, path)?;
        Ok(result)
    }

    /// Merges one non-null patch value into the original value of the same field.
    fn merge_value(
        &self,
        original: Option<&Value>,
        patch: &Value,
        path: &mut Vec<String>,
    ) -> Result<Value> {
        match patch {
            Value::Object(p) => self
                .merge_map(original.and_then(Value::as_object), p, path)
                .map(Value::Object),
            Value::Array(p) => self
                .merge_list(original.and_then(Value::as_array), p, path)
                .map(Value::Array),
            scalar => Ok(scalar.clone()),
        }
    }

    /// `$retainKeys`: drop every key of the original not listed, before merging.
    fn apply_retain_keys(
        &self,
        result: &mut Map<String, Value>,
        patch: &Map<String, Value>,
    ) -> Result<()> {
        let Some(retain) = patch.get(RETAIN_KEYS) else {
            return Ok(());
        };
        let keys = string_list(retain)
            .ok_or_else(|| malformed(format!("{RETAIN_KEYS} must be a list of strings")))?;
        // Upstream (ErrPatchContentNotMatchRetainKeys, a 422): every field set by the
        // patch must be listed in $retainKeys.
        if let Some(extra) = patch
            .keys()
            .find(|k| !k.starts_with('$') && !keys.contains(&k.as_str()))
        {
            return Err(unprocessable(format!(
                "patch content doesn't match retainKeys list: {extra} not in {retain}"
            )));
        }
        result.retain(|k, _| keys.contains(&k.as_str()));
        Ok(())
    }

    /// `$deleteFromPrimitiveList/<field>`: remove the listed values from a primitive list.
    fn apply_delete_from_primitive_lists(
        &self,
        result: &mut Map<String, Value>,
        patch: &Map<String, Value>,
    ) -> Result<()> {
        for (key, value) in patch {
            let Some(field) = key.strip_prefix(DELETE_FROM_PRIMITIVE_LIST) else {
                continue;
            };
            let doomed = value
                .as_array()
                .ok_or_else(|| malformed(format!("{key} must be a list")))?;
            if let Some(Value::Array(items)) = result.get_mut(field) {
                items.retain(|item| !doomed.contains(item));
            }
        }
        Ok(())
    }

    /// `$setElementOrder/<field>`: reorder the merged list so the listed items come in
    /// the given order. Items not mentioned (server-only) keep their positions.
    fn apply_set_element_order(
        &self,
        result: &mut Map<String, Value>,
        patch: &Map<String, Value>,
        path: &mut Vec<String>,
    ) -> Result<()> {
        for (key, value) in patch {
            let Some(field) = key.strip_prefix(SET_ELEMENT_ORDER) else {
                continue;
            };
            let order = value
                .as_array()
                .ok_or_else(|| malformed(format!("{key} must be a list")))?;
            path.push(field.to_string());
            let strategy = self.strategy(path);
            path.pop();
            if let Some(Value::Array(items)) = result.get_mut(field) {
                reorder(items, order, strategy);
            }
        }
        Ok(())
    }

    fn merge_list(
        &self,
        original: Option<&Vec<Value>>,
        patch: &[Value],
        path: &mut Vec<String>,
    ) -> Result<Vec<Value>> {
        match self.strategy(path) {
            BuiltinListStrategy::Replace => self.replacement_list(patch, path),
            BuiltinListStrategy::MergeSet => {
                let mut result = original.cloned().unwrap_or_default();
                for item in patch {
                    if !result.contains(item) {
                        result.push(item.clone());
                    }
                }
                Ok(result)
            }
            BuiltinListStrategy::MergeKey(key) => self.merge_keyed_list(original, patch, key, path),
        }
    }

    /// A list that replaces the original wholesale; directives are still stripped
    /// from its items so they never reach the stored object.
    fn replacement_list(&self, patch: &[Value], path: &mut Vec<String>) -> Result<Vec<Value>> {
        let mut out = Vec::with_capacity(patch.len());
        for item in patch {
            match item {
                Value::Object(map) if directive_of(map) == Some("delete") => {}
                Value::Object(map) => out.push(Value::Object(self.merge_map(None, map, path)?)),
                other => out.push(other.clone()),
            }
        }
        Ok(out)
    }

    /// Merge by `key` (upstream `mergeSliceWithSpecialElements` + `mergeSlice`).
    fn merge_keyed_list(
        &self,
        original: Option<&Vec<Value>>,
        patch: &[Value],
        key: &str,
        path: &mut Vec<String>,
    ) -> Result<Vec<Value>> {
        let mut result = original.cloned().unwrap_or_default();
        let mut plain = Vec::new();
        let mut replace = false;
        for item in patch {
            let map = item.as_object().ok_or_else(|| {
                malformed(format!(
                    "list {} is merged by key {key:?}, but item {item} is not an object",
                    path.join(".")
                ))
            })?;
            match map.get(DIRECTIVE) {
                None => plain.push(map),
                Some(Value::String(d)) if d == "delete" => {
                    let wanted = map.get(key).ok_or_else(|| missing_merge_key(map, key))?;
                    result.retain(|existing| existing.get(key) != Some(wanted));
                }
                // A `{"$patch":"replace"}` element replaces the whole list with the
                // remaining elements.
                Some(Value::String(d)) if d == "replace" => replace = true,
                Some(other) => {
                    return Err(malformed(format!(
                        "unknown patch type {other} in list item: {item}"
                    )));
                }
            }
        }
        if replace {
            result.clear();
        }
        for item in plain {
            let wanted = item.get(key).ok_or_else(|| missing_merge_key(item, key))?;
            let position = result.iter().position(|e| e.get(key) == Some(wanted));
            match position {
                Some(i) => {
                    let merged = self.merge_map(result[i].as_object(), item, path)?;
                    result[i] = Value::Object(merged);
                }
                None => result.push(Value::Object(self.merge_map(None, item, path)?)),
            }
        }
        Ok(result)
    }
}

fn directive_of(map: &Map<String, Value>) -> Option<&str> {
    map.get(DIRECTIVE).and_then(Value::as_str)
}

fn missing_merge_key(item: &Map<String, Value>, key: &str) -> PatchError {
    malformed(format!(
        "map: {} does not contain declared merge key: {key}",
        Value::Object(item.clone())
    ))
}

fn check_known_directive(key: &str) -> Result<()> {
    let known = key == DIRECTIVE
        || key == RETAIN_KEYS
        || key.starts_with(DELETE_FROM_PRIMITIVE_LIST)
        || key.starts_with(SET_ELEMENT_ORDER);
    if known {
        Ok(())
    } else {
        Err(malformed(format!(
            "unknown strategic merge patch directive {key:?}"
        )))
    }
}

fn string_list(value: &Value) -> Option<Vec<&str>> {
    value.as_array()?.iter().map(Value::as_str).collect()
}

/// Reorders `items` in place: the slots holding items named in `order` are refilled
/// with those items sorted by `order`; other items stay where they are.
fn reorder(items: &mut [Value], order: &[Value], strategy: BuiltinListStrategy) {
    let identity = |v: &Value| -> Option<Value> {
        match strategy {
            BuiltinListStrategy::MergeKey(key) => v.get(key).cloned(),
            BuiltinListStrategy::MergeSet => Some(v.clone()),
            BuiltinListStrategy::Replace => None,
        }
    };
    let rank = |v: &Value| -> Option<usize> {
        let id = identity(v)?;
        order.iter().position(|o| identity(o).as_ref() == Some(&id))
    };
    let slots: Vec<usize> = (0..items.len())
        .filter(|&i| rank(&items[i]).is_some())
        .collect();
    let mut ordered: Vec<Value> = slots.iter().map(|&i| items[i].clone()).collect();
    ordered.sort_by_key(|v| rank(v).unwrap_or(usize::MAX));
    for (slot, value) in slots.into_iter().zip(ordered) {
        items[slot] = value;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    // ---- json_patch ----

    #[test]
    fn json_patch_basic_ops() {
        let doc = json!({"a": 1, "b": [1, 2], "c": {"d": "x"}});
        let patch = json!([
            {"op": "add", "path": "/b/-", "value": 3},
            {"op": "add", "path": "/b/0", "value": 0},
            {"op": "replace", "path": "/a", "value": 2},
            {"op": "remove", "path": "/c/d"},
            {"op": "copy", "from": "/a", "path": "/e"},
            {"op": "move", "from": "/e", "path": "/c/f"},
            {"op": "test", "path": "/c/f", "value": 2},
        ]);
        let out = json_patch(&doc, &patch).unwrap();
        assert_eq!(out, json!({"a": 2, "b": [0, 1, 2, 3], "c": {"f": 2}}));
    }

    #[test]
    fn json_patch_escaped_pointer() {
        let doc = json!({"metadata": {"labels": {"app.kubernetes.io/name": "x", "a~b": 1}}});
        let patch = json!([
            {"op": "remove", "path": "/metadata/labels/app.kubernetes.io~1name"},
            {"op": "replace", "path": "/metadata/labels/a~0b", "value": 2},
        ]);
        let out = json_patch(&doc, &patch).unwrap();
        assert_eq!(out, json!({"metadata": {"labels": {"a~b": 2}}}));
    }

    #[test]
    fn json_patch_test_on_missing_member_compares_as_null() {
        // kube-rs' finalizer helper sends exactly this pair.
        let doc = json!({"metadata": {"name": "x"}});
        let patch = json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": ["f"]},
        ]);
        let out = json_patch(&doc, &patch).unwrap();
        assert_eq!(out, json!({"metadata": {"name": "x", "finalizers": ["f"]}}));

        // ...and it fails once finalizers exist.
        let err = json_patch(&out, &patch).unwrap_err();
        match err {
            PatchError::Unprocessable(msg) => {
                assert_eq!(msg, "testing value /metadata/finalizers failed")
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn json_patch_test_missing_member_non_null_fails() {
        let doc = json!({"metadata": {}});
        let patch = json!([{"op": "test", "path": "/metadata/finalizers", "value": []}]);
        assert!(matches!(
            json_patch(&doc, &patch),
            Err(PatchError::Unprocessable(_))
        ));
    }

    #[test]
    fn json_patch_test_missing_parent_fails() {
        let doc = json!({});
        let patch = json!([{"op": "test", "path": "/metadata/finalizers", "value": null}]);
        assert!(matches!(
            json_patch(&doc, &patch),
            Err(PatchError::Unprocessable(_))
        ));
    }

    #[test]
    fn json_patch_is_atomic() {
        let doc = json!({"a": 1});
        let patch = json!([
            {"op": "replace", "path": "/a", "value": 2},
            {"op": "test", "path": "/a", "value": 1},
        ]);
        let err = json_patch(&doc, &patch).unwrap_err();
        assert!(matches!(err, PatchError::Unprocessable(ref m) if m == "testing value /a failed"));
        assert_eq!(doc, json!({"a": 1}));
    }

    #[test]
    fn json_patch_missing_paths_are_unprocessable() {
        let doc = json!({"a": {"b": [1]}});
        for op in [
            json!({"op": "remove", "path": "/x"}),
            json!({"op": "replace", "path": "/x", "value": 1}),
            json!({"op": "add", "path": "/x/y", "value": 1}),
            json!({"op": "add", "path": "/a/b/5", "value": 1}),
            json!({"op": "remove", "path": "/a/b/1"}),
            json!({"op": "move", "from": "/x", "path": "/y"}),
            json!({"op": "copy", "from": "/x", "path": "/y"}),
            json!({"op": "move", "from": "/a", "path": "/a/c"}),
        ] {
            let r = json_patch(&doc, &json!([op.clone()]));
            assert!(
                matches!(r, Err(PatchError::Unprocessable(_))),
                "{op}: {r:?}"
            );
        }
    }

    #[test]
    fn json_patch_malformed() {
        let doc = json!({});
        for patch in [
            json!({"op": "add"}),
            json!([1]),
            json!([{"path": "/a"}]),
            json!([{"op": "frobnicate", "path": "/a"}]),
            json!([{"op": "add", "path": "a", "value": 1}]),
            json!([{"op": "add", "path": "/a"}]),
            json!([{"op": "move", "path": "/a"}]),
        ] {
            let r = json_patch(&doc, &patch);
            assert!(matches!(r, Err(PatchError::Malformed(_))), "{patch}: {r:?}");
        }
    }

    #[test]
    fn json_patch_remove_preserves_key_order() {
        let doc = json!({"a": 1, "b": 2, "c": 3});
        let out = json_patch(&doc, &json!([{"op": "remove", "path": "/a"}])).unwrap();
        let keys: Vec<_> = out.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["b", "c"]);
    }

    // ---- merge_patch ----

    #[test]
    fn merge_patch_rfc7386() {
        let doc = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]});
        let patch = json!({"a": "z", "c": {"f": null}, "l": [3], "n": {"x": null, "y": 1}});
        assert_eq!(
            merge_patch(&doc, &patch),
            json!({"a": "z", "c": {"d": "e"}, "l": [3], "n": {"y": 1}})
        );
        assert_eq!(merge_patch(&doc, &json!([1])), json!([1]));
        assert_eq!(merge_patch(&json!(1), &json!({"a": 1})), json!({"a": 1}));
    }

    // ---- strategic_merge_patch ----

    fn pod() -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "finalizers": ["a", "b"], "labels": {"x": "1"}},
            "spec": {
                "containers": [
                    {"name": "app", "image": "app:1", "env": [{"name": "A", "value": "1"}]},
                    {"name": "sidecar", "image": "side:1"}
                ],
                "tolerations": [{"key": "k1"}]
            },
            "status": {
                "conditions": [
                    {"type": "Ready", "status": "False"},
                    {"type": "PodScheduled", "status": "True"}
                ]
            }
        })
    }

    #[test]
    fn smp_merges_containers_by_name() {
        let patch = json!({"spec": {"containers": [
            {"name": "app", "image": "app:2", "env": [{"name": "B", "value": "2"}]},
            {"name": "new", "image": "new:1"}
        ]}});
        let out = strategic_merge_patch(&pod(), &patch, "Pod").unwrap();
        assert_eq!(
            out["spec"]["containers"],
            json!([
                {"name": "app", "image": "app:2",
                 "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
                {"name": "sidecar", "image": "side:1"},
                {"name": "new", "image": "new:1"}
            ])
        );
    }

    #[test]
    fn smp_merges_nested_template_containers() {
        let doc = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "1"}, {"name": "b", "image": "1"}
        ]}}}});
        let patch = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "b", "image": "2"}
        ]}}}});
        let out = strategic_merge_patch(&doc, &patch, "Deployment").unwrap();
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"],
            json!([{"name": "a", "image": "1"}, {"name": "b", "image": "2"}])
        );
    }

    #[test]
    fn smp_merges_conditions_by_type() {
        let patch = json!({"status": {"conditions": [
            {"type": "Ready", "status": "True"},
            {"type": "Initialized", "status": "True"}
        ]}});
        let out = strategic_merge_patch(&pod(), &patch, "Pod").unwrap();
        assert_eq!(
            out["status"]["conditions"],
            json!([
                {"type": "Ready", "status": "True"},
                {"type": "PodScheduled", "status": "True"},
                {"type": "Initialized", "status": "True"}
            ])
        );
        // Node conditions too.
        let node = json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}});
        let out = strategic_merge_patch(
            &node,
            &json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
            "Node",
        )
        .unwrap();
        assert_eq!(
            out["status"]["conditions"],
            json!([{"type": "Ready", "status": "True"}])
        );
    }

    #[test]
    fn smp_delete_list_item() {
        let patch = json!({"spec": {"containers": [{"name": "sidecar", "$patch": "delete"}]}});
        let out = strategic_merge_patch(&pod(), &patch, "Pod").unwrap();
        let names: Vec<_> = out["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].clone())
            .collect();
        assert_eq!(names, [json!("app")]);
    }

    #[test]
    fn smp_replace_list_directive() {
        let patch = json!({"spec": {"containers": [
            {"$patch": "replace"},
            {"name": "only", "image": "o:1"}
        ]}});
        let out = strategic_merge_patch(&pod(), &patch, "Pod").unwrap();
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "only", "image": "o:1"}])
        );
    }

    #[test]
    fn smp_replace_and_delete_maps() {
        let doc = json!({"metadata": {"labels": {"a": "1", "b": "2"}, "annotations": {"x": "y"}}});
        let patch = json!({"metadata": {
            "labels": {"$patch": "replace", "c": "3"},
            "annotations": {"$patch": "delete"}
        }});
        let out = strategic_merge_patch(&doc, &patch, "ConfigMap").unwrap();
        assert_eq!(
            out,
            json!({"metadata": {"labels": {"c": "3"}, "annotations": {}}})
        );
    }

    #[test]
    fn smp_finalizers_union() {
        let patch = json!({"metadata": {"finalizers": ["b", "c"]}});
        let out = strategic_merge_patch(&pod(), &patch, "Pod").unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b", "c"]));
    }

    #[test]
    fn smp_delete_from_primitive_list() {
        let patch = json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}});
        let out = strategic_merge_patch(&pod(), &patch, "Pod").unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!(["b"]));
        assert!(
            !out["metadata"]
                .as_object()
                .unwrap()
                .keys()
                .any(|k| k.starts_with('$'))
        );
    }

    #[test]
    fn smp_lists_without_key_are_replaced() {
        let patch = json!({"spec": {"tolerations": [{"key": "k2"}]}});
        let out = strategic_merge_patch(&pod(), &patch, "Pod").unwrap();
        assert_eq!(out["spec"]["tolerations"], json!([{"key": "k2"}]));
    }

    #[test]
    fn smp_null_deletes_and_unknown_kind_replaces_lists() {
        let patch =
            json!({"metadata": {"labels": {"x": null}}, "spec": {"containers": [{"name": "z"}]}});
        let out = strategic_merge_patch(&pod(), &patch, "Widget").unwrap();
        assert_eq!(out["metadata"]["labels"], json!({}));
        assert_eq!(out["spec"]["containers"], json!([{"name": "z"}]));
    }

    #[test]
    fn smp_set_element_order() {
        let patch = json!({"spec": {
            "$setElementOrder/containers": [{"name": "sidecar"}, {"name": "app"}],
            "containers": [{"name": "app", "image": "app:3"}]
        }});
        let out = strategic_merge_patch(&pod(), &patch, "Pod").unwrap();
        let names: Vec<_> = out["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(names, ["sidecar", "app"]);
        assert_eq!(out["spec"]["containers"][1]["image"], json!("app:3"));
        assert!(out["spec"].get("$setElementOrder/containers").is_none());
    }

    #[test]
    fn smp_retain_keys() {
        let doc = json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}});
        let patch = json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}});
        let out = strategic_merge_patch(&doc, &patch, "Deployment").unwrap();
        assert_eq!(out, json!({"spec": {"strategy": {"type": "Recreate"}}}));

        let bad = json!({"spec": {"strategy": {"$retainKeys": ["type"], "other": 1}}});
        assert!(matches!(
            strategic_merge_patch(&doc, &bad, "Deployment"),
            Err(PatchError::Unprocessable(_))
        ));
    }

    #[test]
    fn smp_owner_references_by_uid() {
        let doc = json!({"metadata": {"ownerReferences": [{"uid": "1", "name": "a"}]}});
        let patch = json!({"metadata": {"ownerReferences": [{"uid": "2", "name": "b"}]}});
        let out = strategic_merge_patch(&doc, &patch, "Pod").unwrap();
        assert_eq!(
            out["metadata"]["ownerReferences"].as_array().unwrap().len(),
            2
        );
    }

    #[test]
    fn smp_directives_never_leak_into_new_values() {
        let patch = json!({"spec": {"newlist": [{"$patch": "delete", "a": 1}, {"b": {"$patch": "replace", "c": 1}}],
                                     "newmap": {"$patch": "replace", "k": {"z": null, "y": 2}}}});
        let out = strategic_merge_patch(&json!({}), &patch, "Pod").unwrap();
        assert_eq!(
            out,
            json!({"spec": {"newlist": [{"b": {"c": 1}}], "newmap": {"k": {"y": 2}}}})
        );
    }

    #[test]
    fn smp_malformed() {
        let doc = pod();
        for patch in [
            json!([1]),
            json!({"spec": {"containers": [{"image": "nokey"}]}}),
            json!({"spec": {"containers": ["x"]}}),
            json!({"spec": {"$patch": "explode"}}),
            json!({"spec": {"$bogus": 1}}),
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": "a"}}),
        ] {
            let r = strategic_merge_patch(&doc, &patch, "Pod");
            assert!(matches!(r, Err(PatchError::Malformed(_))), "{patch}: {r:?}");
        }
    }

    #[test]
    fn table_is_path_aware() {
        assert_eq!(
            builtin_list_strategy(&["spec", "template", "spec", "containers", "ports"]),
            BuiltinListStrategy::MergeKey("containerPort")
        );
        assert_eq!(
            builtin_list_strategy(&["spec", "ports"]),
            BuiltinListStrategy::MergeKey("port")
        );
        assert_eq!(
            builtin_list_strategy(&["spec", "tolerations"]),
            BuiltinListStrategy::Replace
        );
        assert_eq!(
            builtin_list_strategy(&["spec", "conditions"]),
            BuiltinListStrategy::Replace
        );
        assert_eq!(
            builtin_list_strategy(&["metadata", "finalizers"]),
            BuiltinListStrategy::MergeSet
        );
    }

    // ---- properties ----

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            "[a-z]{0,6}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map("[a-z]{1,4}", inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn merge_patch_empty_is_identity(doc in arb_json()) {
            // RFC 7386: an empty patch object leaves an object document unchanged; a
            // non-object document becomes {} (the patch "is" an object).
            let out = merge_patch(&doc, &json!({}));
            if doc.is_object() {
                prop_assert_eq!(out, doc);
            } else {
                prop_assert_eq!(out, json!({}));
            }
        }

        #[test]
        fn merge_patch_empty_is_identity_on_objects(
            m in prop::collection::btree_map("[a-z]{1,4}", arb_json(), 0..6)
        ) {
            let doc = Value::Object(m.into_iter().collect());
            prop_assert_eq!(merge_patch(&doc, &json!({})), doc);
        }

        #[test]
        fn json_patch_empty_is_identity(doc in arb_json()) {
            prop_assert_eq!(json_patch(&doc, &json!([])).unwrap(), doc);
        }

        #[test]
        fn smp_empty_is_identity_on_objects(
            m in prop::collection::btree_map("[a-z]{1,4}", arb_json(), 0..6)
        ) {
            let doc = Value::Object(m.into_iter().collect());
            prop_assert_eq!(strategic_merge_patch(&doc, &json!({}), "Pod").unwrap(), doc);
        }
    }
}
