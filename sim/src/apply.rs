//! Server-side apply and `metadata.managedFields` bookkeeping.
//!
//! Mirrors <https://kubernetes.io/docs/reference/using-api/server-side-apply/> and the
//! structured-merge-diff library behind it: every field of an object is owned by
//! zero or more *managers*; an apply declares the full set of fields its manager
//! cares about, changing a field another manager owns is a conflict (409) unless
//! forced, and fields a manager stops applying are removed unless someone else
//! still owns them. Non-apply writes ([`record_update`]) take ownership of whatever
//! they changed.
//!
//! Ownership is tracked as sets of field paths. A path is a sequence of
//! FieldsV1 tokens: `f:<field>` for an object field, `k:<json of key fields>` for an
//! item of an associative list, `v:<json value>` for an item of a set list. In
//! FieldsV1 JSON the paths form a tree, and `"."` marks a node that is itself owned
//! (e.g. a list item) in addition to its children.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use crate::patch::{BuiltinListStrategy, builtin_list_strategy};

/// How lists at a given path merge: by key fields (associative, like containers by name, or CRD `x-kubernetes-list-type: map` with list-map-keys), as a set of primitives (`x-kubernetes-list-type: set`, finalizers), or atomically (replaced whole; the default for CRD lists).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListType {
    /// Associative list: items are identified by the values of these fields.
    Map(Vec<String>),
    /// Set of (usually primitive) values; items are identified by their value.
    Set,
    /// The list is a single value, owned and replaced as a whole.
    Atomic,
}

/// Caller-provided: list type for a field path, path given as field names from the root, e.g. ["spec","template","spec","containers"] (list items don't add a segment).
pub trait ListTypes {
    /// The list type of the list found at `path`.
    fn list_type(&self, path: &[String]) -> ListType;
}

/// A ListTypes implementation for built-in kinds with the same merge-key table as patch.rs (share the table, don't write it twice), and `Atomic` otherwise.
#[derive(Debug, Clone, Copy, Default)]
pub struct BuiltinListTypes;

impl ListTypes for BuiltinListTypes {
    fn list_type(&self, path: &[String]) -> ListType {
        match builtin_list_strategy(path) {
            BuiltinListStrategy::MergeKey(key) => ListType::Map(vec![key.to_string()]),
            BuiltinListStrategy::MergeSet => ListType::Set,
            BuiltinListStrategy::Replace => ListType::Atomic,
        }
    }
}

/// One field that an apply would change although another manager owns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldConflict {
    /// The name of the manager owning the field (e.g. `kubectl-client-side-apply`).
    pub manager: String,
    /// The field, like `.spec.replicas` or `.spec.containers[name="app"].image`.
    pub field: String,
}

/// Why a server-side apply was refused.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// 409: fields owned by other managers would change. Each conflict names the manager and the field path in the Kubernetes message format: `Apply failed with 1 conflict: conflict with "kubectl-client-side-apply" using v1: .spec.replicas`.
    #[error("{message}")]
    Conflict {
        /// The full Kubernetes-style message.
        message: String,
        /// The individual conflicts, sorted by manager then field.
        conflicts: Vec<FieldConflict>,
    },
    /// 422/400: e.g. applied config not an object.
    #[error("{0}")]
    Invalid(String),
}

const APPLY: &str = "Apply";
const UPDATE: &str = "Update";

/// Metadata fields that are system-owned: ignored in an applied configuration.
const IGNORED_META: &[&str] = &[
    "managedFields",
    "resourceVersion",
    "uid",
    "creationTimestamp",
    "generation",
    "selfLink",
];

// ---------------------------------------------------------------------------
// Public entry points
// ---------------------------------------------------------------------------

/// Server-side apply: `applied` is the user's (partial) intent. `live` is the current object (None when it doesn't exist: apply creates).
/// Returns the new object with metadata.managedFields updated: the manager (operation Apply) owns exactly the fields in `applied`;
/// fields it owned before but no longer applies are removed from the object unless another manager also owns them;
/// values in `applied` overwrite; fields owned by another manager whose value would change are conflicts unless `force`, in which case ownership moves to this manager (removed from the others; empty entries dropped).
/// Applying the same value a different manager already owns is not a conflict (both then share ownership).
/// metadata.managedFields, metadata.resourceVersion, uid, creationTimestamp, generation in `applied` are ignored for field ownership. `subresource` Some("status") records the entry with "subresource":"status".
///
/// Further details: those system metadata fields are not copied from `applied`
/// either (the live values stay; checking `resourceVersion` as a precondition is
/// the caller's job). `apiVersion`, `kind`, `metadata.name` and `metadata.namespace`
/// are copied but, as in Kubernetes' strip-meta manager, never owned. `null` values
/// in `applied` are dropped.
#[allow(clippy::too_many_arguments)] // the signature is fixed by the simulator's API layer
pub fn server_side_apply(
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    subresource: Option<&str>,
    force: bool,
    api_version: &str,
    now: &str,
    lists: &dyn ListTypes,
) -> Result<Value, ApplyError> {
    let applied = sanitize_applied(applied)?;
    let applied_set = strip_unowned(field_set(&applied, lists)?);
    let live_obj = match live {
        Some(v) if !v.is_object() => {
            return Err(ApplyError::Invalid(
                "live object is not a JSON object".into(),
            ));
        }
        Some(v) => without_managed_fields(v),
        None => Value::Object(Map::new()),
    };
    let mut managers = live.map(read_managers).unwrap_or_default();

    let mut merged = merge_applied(&live_obj, &applied, &mut Vec::new(), lists);
    let changes = compare(&live_obj, &merged, lists);
    let changed = changes
        .added
        .union(&changes.modified)
        .union(&changes.removed);

    let me = ManagerKey::new(manager, APPLY, subresource);
    let conflicts = find_conflicts(&managers, &me, &changed);
    if !conflicts.is_empty() {
        if !force {
            return Err(conflict_error(&managers, &conflicts));
        }
        // Forcing moves ownership: the others lose exactly the conflicting fields.
        for (index, set) in &conflicts {
            managers[*index].fields = managers[*index].fields.difference(set);
        }
    }

    let previous = managers
        .iter()
        .find(|e| e.key() == me)
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    let others = managers
        .iter()
        .filter(|e| e.key() != me)
        .fold(FieldSet::default(), |acc, e| acc.union(&e.fields));
    prune(&mut merged, &previous, &applied_set, &others);

    set_entry(&mut managers, &me, applied_set, api_version, now);
    write_managers(&mut merged, managers);
    Ok(merged)
}

/// Bookkeeping for non-apply writes (create, update/PUT, JSON/merge/strategic patch): the fields that changed between `old` (None on create) and `new` become owned by `manager` with operation "Update" (and are removed from other managers' sets). Returns `new` with managedFields set. Manager entries are per (manager, operation, subresource).
///
/// Fields that were removed are dropped from every manager. The manager's entry (and
/// its `time`) is only written when the write took ownership of something. As in
/// Kubernetes, if `new` carries a non-empty `managedFields` (and the write is not
/// through a subresource) those entries are the starting point instead of `old`'s,
/// and `[{}]` resets them
/// (<https://kubernetes.io/docs/reference/using-api/server-side-apply/#clearing-managedfields>).
pub fn record_update(
    old: Option<&Value>,
    new: &Value,
    manager: &str,
    subresource: Option<&str>,
    api_version: &str,
    now: &str,
    lists: &dyn ListTypes,
) -> Value {
    let mut managers = starting_managers(old, new, subresource);
    let old_obj = old
        .map(without_managed_fields)
        .unwrap_or_else(|| Value::Object(Map::new()));
    let mut result = without_managed_fields(new);

    let changes = compare(&old_obj, &result, lists);
    let taken = strip_unowned(changes.added.union(&changes.modified));
    let gone = changes.removed;

    let me = ManagerKey::new(manager, UPDATE, subresource);
    for entry in &mut managers {
        entry.fields = entry.fields.difference(&taken).without_below(&gone);
    }
    // Like Kubernetes' managedFieldsUpdater, the entry (and its time) is only
    // touched when the write took ownership of something.
    if !taken.is_empty() {
        let previous = managers
            .iter()
            .find(|e| e.key() == me)
            .map(|e| e.fields.clone())
            .unwrap_or_default();
        set_entry(&mut managers, &me, previous.union(&taken), api_version, now);
    }
    write_managers(&mut result, managers);
    result
}

// ---------------------------------------------------------------------------
// Field sets
// ---------------------------------------------------------------------------

/// A path of FieldsV1 tokens (`f:…`, `k:…`, `v:…`) from the object root.
type FieldPath = Vec<String>;

/// A set of owned field paths. Every path in the set is a *member*; its ancestors are
/// implied by the tree encoding but not owned themselves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct FieldSet(BTreeSet<FieldPath>);

impl FieldSet {
    fn insert(&mut self, path: FieldPath) {
        self.0.insert(path);
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn iter(&self) -> impl Iterator<Item = &FieldPath> {
        self.0.iter()
    }

    fn union(&self, other: &Self) -> Self {
        Self(self.0.union(&other.0).cloned().collect())
    }

    fn difference(&self, other: &Self) -> Self {
        Self(self.0.difference(&other.0).cloned().collect())
    }

    /// The set without any path at or below a path of `prefixes`.
    fn without_below(&self, prefixes: &Self) -> Self {
        Self(
            self.0
                .iter()
                .filter(|p| !(1..=p.len()).any(|n| prefixes.0.contains(&p[..n])))
                .cloned()
                .collect(),
        )
    }

    /// The paths at or below a path of `prefixes`.
    fn at_or_below(&self, prefixes: &Self) -> Self {
        self.difference(&self.without_below(prefixes))
    }

    /// Whether `prefix` or any path below it is in the set. Paths sharing a prefix
    /// sort contiguously right after it, so one range scan suffices.
    fn has_at_or_below(&self, prefix: &[String]) -> bool {
        self.0
            .range(prefix.to_vec()..)
            .next()
            .is_some_and(|p| p.starts_with(prefix))
    }

    /// Decodes a FieldsV1 tree; malformed parts are ignored rather than rejected so a
    /// strange stored entry never makes the object unwritable.
    fn from_fields_v1(value: &Value) -> Self {
        let mut set = Self::default();
        decode_fields_v1(value, &mut Vec::new(), &mut set);
        set
    }

    /// Encodes as a FieldsV1 tree: a member leaf is `{}`, a member with children gets
    /// a `"."` entry.
    fn to_fields_v1(&self) -> Value {
        #[derive(Default)]
        struct Node {
            member: bool,
            children: BTreeMap<String, Node>,
        }
        fn encode(node: &Node) -> Value {
            let mut map = Map::new();
            if node.member && !node.children.is_empty() {
                map.insert(".".into(), Value::Object(Map::new()));
            }
            for (token, child) in &node.children {
                map.insert(token.clone(), encode(child));
            }
            Value::Object(map)
        }
        let mut root = Node::default();
        for path in &self.0 {
            let node = path.iter().fold(&mut root, |node, token| {
                node.children.entry(token.clone()).or_default()
            });
            node.member = true;
        }
        encode(&root)
    }
}

fn decode_fields_v1(value: &Value, prefix: &mut FieldPath, set: &mut FieldSet) {
    let Some(map) = value.as_object() else {
        return;
    };
    if map.is_empty() && !prefix.is_empty() {
        set.insert(prefix.clone());
    }
    for (token, child) in map {
        if token == "." {
            if !prefix.is_empty() {
                set.insert(prefix.clone());
            }
            continue;
        }
        prefix.push(canonical_token(token));
        decode_fields_v1(child, prefix, set);
        prefix.pop();
    }
}

/// Normalises `k:`/`v:` tokens (key order, whitespace) so that tokens written by other
/// clients compare equal to the ones computed here.
fn canonical_token(token: &str) -> String {
    let parsed = |prefix: &str| {
        token
            .strip_prefix(prefix)
            .and_then(|json| serde_json::from_str::<Value>(json).ok())
    };
    if let Some(Value::Object(fields)) = parsed("k:") {
        let sorted: BTreeMap<&String, &Value> = fields.iter().collect();
        let keys: Map<String, Value> = sorted
            .into_iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        return format!("k:{}", Value::Object(keys));
    }
    if let Some(value) = parsed("v:") {
        return format!("v:{value}");
    }
    token.to_string()
}

fn field_token(name: &str) -> String {
    format!("f:{name}")
}

/// The `k:` token of an associative-list item, or `None` if a key field is missing.
fn key_token(item: &Value, keys: &[String]) -> Option<String> {
    let mut sorted: Vec<&String> = keys.iter().collect();
    sorted.sort();
    let mut fields = Map::new();
    for key in sorted {
        let value = item.get(key).filter(|v| !v.is_null())?;
        fields.insert(key.clone(), value.clone());
    }
    Some(format!("k:{}", Value::Object(fields)))
}

/// Renders a path the way structured-merge-diff prints it in conflict messages:
/// `.spec.containers[name="app"].image`, `.metadata.finalizers[="x"]`.
fn display_path(path: &[String]) -> String {
    let mut out = String::new();
    for token in path {
        if let Some(name) = token.strip_prefix("f:") {
            out.push('.');
            out.push_str(name);
        } else if let Some(json) = token.strip_prefix("k:") {
            let fields = match serde_json::from_str::<Value>(json) {
                Ok(Value::Object(fields)) => fields
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(","),
                _ => json.to_string(),
            };
            out.push_str(&format!("[{fields}]"));
        } else if let Some(json) = token.strip_prefix("v:") {
            out.push_str(&format!("[={json}]"));
        } else {
            out.push_str(&format!("[{token}]"));
        }
    }
    out
}

/// The set of fields an applied configuration sets, as structured-merge-diff's
/// `toFieldSet` computes it: scalars and atomic lists are leaf members, items of
/// associative and set lists are members, and objects only contribute their fields
/// (so an empty object or an empty granular list owns nothing).
///
/// Associative lists whose items lack their key fields, or repeat a key, are
/// rejected.
fn field_set(value: &Value, lists: &dyn ListTypes) -> Result<FieldSet, ApplyError> {
    let mut walker = FieldWalker {
        lists,
        set: FieldSet::default(),
        fpath: Vec::new(),
        spath: Vec::new(),
    };
    if let Value::Object(map) = value {
        walker.fields(map)?;
    }
    Ok(walker.set)
}

struct FieldWalker<'a> {
    lists: &'a dyn ListTypes,
    set: FieldSet,
    /// FieldsV1 tokens of the current position.
    fpath: FieldPath,
    /// Field names only (the schema path handed to `ListTypes`).
    spath: Vec<String>,
}

impl FieldWalker<'_> {
    fn fields(&mut self, map: &Map<String, Value>) -> Result<(), ApplyError> {
        for (name, value) in map {
            self.fpath.push(field_token(name));
            self.spath.push(name.clone());
            let result = self.value(value);
            self.spath.pop();
            self.fpath.pop();
            result?;
        }
        Ok(())
    }

    fn value(&mut self, value: &Value) -> Result<(), ApplyError> {
        match value {
            Value::Object(map) => self.fields(map),
            Value::Array(items) => self.list(items),
            _ => {
                self.set.insert(self.fpath.clone());
                Ok(())
            }
        }
    }

    fn list(&mut self, items: &[Value]) -> Result<(), ApplyError> {
        match self.lists.list_type(&self.spath) {
            ListType::Atomic => self.set.insert(self.fpath.clone()),
            ListType::Set => {
                for item in items {
                    self.fpath.push(format!("v:{item}"));
                    self.set.insert(self.fpath.clone());
                    self.fpath.pop();
                }
            }
            ListType::Map(keys) => {
                let tokens = item_tokens(items, &keys).map_err(|e| {
                    ApplyError::Invalid(format!("{}: {e}", display_path(&self.fpath)))
                })?;
                for (item, token) in items.iter().zip(tokens) {
                    self.fpath.push(token);
                    self.set.insert(self.fpath.clone());
                    let result = match item {
                        Value::Object(map) => self.fields(map),
                        _ => Ok(()),
                    };
                    self.fpath.pop();
                    result?;
                }
            }
        }
        Ok(())
    }
}

/// The `k:` tokens of an associative list's items, or why the list is not a valid
/// associative list (missing or repeated keys).
fn item_tokens(items: &[Value], keys: &[String]) -> Result<Vec<String>, String> {
    if keys.is_empty() {
        return Err("associative list declares no key fields".into());
    }
    let mut seen = BTreeSet::new();
    let mut tokens = Vec::with_capacity(items.len());
    for item in items {
        let token = key_token(item, keys)
            .ok_or_else(|| format!("item {item} is missing key field(s) {}", keys.join(",")))?;
        if !seen.insert(token.clone()) {
            return Err(format!(
                "duplicate entries for key {}",
                display_path(&[token])
            ));
        }
        tokens.push(token);
    }
    Ok(tokens)
}

/// Removes paths that are never owned, mirroring Kubernetes' strip-meta manager
/// (`k8s.io/apiserver/pkg/endpoints/handlers/fieldmanager/internal/stripmeta.go`).
fn strip_unowned(mut set: FieldSet) -> FieldSet {
    let meta = |name: &str| vec![field_token("metadata"), field_token(name)];
    set.0.remove(&vec![field_token("apiVersion")]);
    set.0.remove(&vec![field_token("kind")]);
    set.0.remove(&vec![field_token("metadata")]);
    for name in ["name", "namespace", "clusterName"]
        .iter()
        .chain(IGNORED_META)
    {
        set.0.remove(&meta(name));
    }
    set.0.retain(|p| !p.starts_with(&meta("managedFields")));
    set
}

// ---------------------------------------------------------------------------
// Values
// ---------------------------------------------------------------------------

/// Validates the applied configuration and drops what apply ignores: `null`s and
/// system metadata.
fn sanitize_applied(applied: &Value) -> Result<Value, ApplyError> {
    if !applied.is_object() {
        return Err(ApplyError::Invalid(
            "applied configuration must be a JSON object".into(),
        ));
    }
    let mut clean = strip_nulls(applied);
    if let Some(meta) = clean.get_mut("metadata") {
        match meta {
            Value::Object(meta) => {
                for name in IGNORED_META {
                    meta.shift_remove(*name);
                }
            }
            _ => return Err(ApplyError::Invalid("metadata must be a JSON object".into())),
        }
    }
    Ok(clean)
}

fn strip_nulls(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), strip_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(strip_nulls).collect()),
        other => other.clone(),
    }
}

fn without_managed_fields(value: &Value) -> Value {
    let mut copy = value.clone();
    if let Some(meta) = copy.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.shift_remove("managedFields");
    }
    copy
}

/// Merges the applied configuration into the live object: objects field by field,
/// associative lists item by item (new items appended), sets by union, and atomic
/// lists and scalars replaced.
fn merge_applied(
    live: &Value,
    applied: &Value,
    spath: &mut Vec<String>,
    lists: &dyn ListTypes,
) -> Value {
    match (live, applied) {
        (Value::Object(l), Value::Object(a)) => {
            let mut out = l.clone();
            for (name, value) in a {
                spath.push(name.clone());
                let merged = match l.get(name) {
                    Some(existing) => merge_applied(existing, value, spath, lists),
                    None => value.clone(),
                };
                spath.pop();
                out.insert(name.clone(), merged);
            }
            Value::Object(out)
        }
        (Value::Array(l), Value::Array(a)) => Value::Array(merge_list(l, a, spath, lists)),
        (_, a) => a.clone(),
    }
}

fn merge_list(
    live: &[Value],
    applied: &[Value],
    spath: &mut Vec<String>,
    lists: &dyn ListTypes,
) -> Vec<Value> {
    match lists.list_type(spath) {
        ListType::Atomic => applied.to_vec(),
        ListType::Set => {
            let mut out = live.to_vec();
            for item in applied {
                if !out.contains(item) {
                    out.push(item.clone());
                }
            }
            out
        }
        ListType::Map(keys) if keys.is_empty() => applied.to_vec(),
        ListType::Map(keys) => {
            let mut out = live.to_vec();
            for item in applied {
                let token = key_token(item, &keys);
                let position = out
                    .iter()
                    .position(|e| token.is_some() && key_token(e, &keys) == token);
                match position {
                    Some(i) => out[i] = merge_applied(&out[i], item, spath, lists),
                    None => out.push(item.clone()),
                }
            }
            out
        }
    }
}

fn step_mut<'a>(cur: &'a mut Value, token: &str) -> Option<&'a mut Value> {
    if let Some(name) = token.strip_prefix("f:") {
        return cur.as_object_mut()?.get_mut(name);
    }
    let items = cur.as_array_mut()?;
    let index = item_index(items, token)?;
    items.get_mut(index)
}

/// Position of the list item a `k:` or `v:` token designates.
fn item_index(items: &[Value], token: &str) -> Option<usize> {
    if let Some(json) = token.strip_prefix("k:") {
        let key: Map<String, Value> = serde_json::from_str(json).ok()?;
        return items
            .iter()
            .position(|item| key.iter().all(|(k, v)| item.get(k) == Some(v)));
    }
    let json = token.strip_prefix("v:")?;
    let wanted: Value = serde_json::from_str(json).ok()?;
    items.iter().position(|item| *item == wanted)
}

/// Removes the field or list item at `path`; a no-op if it is absent.
fn remove_path(value: &mut Value, path: &[String]) {
    let Some((last, parent_path)) = path.split_last() else {
        return;
    };
    let parent = parent_path
        .iter()
        .try_fold(value, |cur, token| step_mut(cur, token));
    match parent {
        Some(Value::Object(map)) => {
            if let Some(name) = last.strip_prefix("f:") {
                map.shift_remove(name);
            }
        }
        Some(Value::Array(items)) => {
            if let Some(i) = item_index(items, last) {
                items.remove(i);
            }
        }
        _ => {}
    }
}

/// Whether `path` names a key field of the associative-list item just above it
/// (e.g. `f:name` below `k:{"name":"app"}`); such fields live and die with the item.
fn is_key_field(path: &[String]) -> bool {
    let [.., parent, last] = path else {
        return false;
    };
    let (Some(json), Some(name)) = (parent.strip_prefix("k:"), last.strip_prefix("f:")) else {
        return false;
    };
    serde_json::from_str::<Map<String, Value>>(json).is_ok_and(|key| key.contains_key(name))
}

/// What changed between two versions of an object, as field sets.
#[derive(Default)]
struct Comparison {
    added: FieldSet,
    removed: FieldSet,
    modified: FieldSet,
}

/// Compares two versions of an object the way structured-merge-diff's merging
/// walker does: objects are walked field by field and granular lists item by item
/// (an item present on one side only is added/removed along with all its fields);
/// scalars and atomic lists are leaves, and so is an object or list that is empty or
/// absent on *both* sides (preserving the empty/absent distinction).
fn compare(old: &Value, new: &Value, lists: &dyn ListTypes) -> Comparison {
    let mut walker = Comparer {
        lists,
        out: Comparison::default(),
        fpath: Vec::new(),
        spath: Vec::new(),
    };
    walker.map(old.as_object(), new.as_object());
    walker.out
}

struct Comparer<'a> {
    lists: &'a dyn ListTypes,
    out: Comparison,
    fpath: FieldPath,
    spath: Vec<String>,
}

fn is_empty_or_absent(value: Option<&Value>) -> bool {
    match value {
        None => true,
        Some(Value::Object(map)) => map.is_empty(),
        Some(Value::Array(items)) => items.is_empty(),
        Some(_) => false,
    }
}

impl Comparer<'_> {
    fn node(&mut self, lhs: Option<&Value>, rhs: Option<&Value>) {
        let both_empty = is_empty_or_absent(lhs) && is_empty_or_absent(rhs);
        match (lhs, rhs) {
            (Some(Value::Object(l)), Some(Value::Object(r))) if !both_empty => {
                self.map(Some(l), Some(r))
            }
            (Some(Value::Object(l)), None) if !both_empty => self.map(Some(l), None),
            (None, Some(Value::Object(r))) if !both_empty => self.map(None, Some(r)),
            (Some(Value::Array(l)), Some(Value::Array(r))) if !both_empty => {
                self.list(Some(l), Some(r), lhs, rhs)
            }
            (Some(Value::Array(l)), None) if !both_empty => self.list(Some(l), None, lhs, rhs),
            (None, Some(Value::Array(r))) if !both_empty => self.list(None, Some(r), lhs, rhs),
            _ => self.leaf(lhs, rhs),
        }
    }

    fn leaf(&mut self, lhs: Option<&Value>, rhs: Option<&Value>) {
        let path = self.fpath.clone();
        match (lhs, rhs) {
            (None, Some(_)) => self.out.added.insert(path),
            (Some(_), None) => self.out.removed.insert(path),
            (Some(l), Some(r)) if l != r => self.out.modified.insert(path),
            _ => {}
        }
    }

    fn map(&mut self, lhs: Option<&Map<String, Value>>, rhs: Option<&Map<String, Value>>) {
        let mut names: Vec<&String> = lhs.into_iter().flat_map(|m| m.keys()).collect();
        for name in rhs.into_iter().flat_map(|m| m.keys()) {
            if !lhs.is_some_and(|m| m.contains_key(name)) {
                names.push(name);
            }
        }
        for name in names {
            self.fpath.push(field_token(name));
            self.spath.push(name.clone());
            self.node(lhs.and_then(|m| m.get(name)), rhs.and_then(|m| m.get(name)));
            self.spath.pop();
            self.fpath.pop();
        }
    }

    /// `lhs_value`/`rhs_value` are the lists as values, for the atomic fallback.
    fn list(
        &mut self,
        lhs: Option<&Vec<Value>>,
        rhs: Option<&Vec<Value>>,
        lhs_value: Option<&Value>,
        rhs_value: Option<&Value>,
    ) {
        let empty = Vec::new();
        let (l, r) = (lhs.unwrap_or(&empty), rhs.unwrap_or(&empty));
        let tokens = match self.lists.list_type(&self.spath) {
            ListType::Atomic => None,
            ListType::Set => Some((
                l.iter().map(|v| format!("v:{v}")).collect::<Vec<_>>(),
                r.iter().map(|v| format!("v:{v}")).collect::<Vec<_>>(),
            )),
            // A stored list that is not a valid associative list is compared
            // atomically rather than failing the write.
            ListType::Map(keys) => item_tokens(l, &keys)
                .and_then(|lt| Ok((lt, item_tokens(r, &keys)?)))
                .ok(),
        };
        let Some((l_tokens, r_tokens)) = tokens else {
            return self.leaf(lhs_value, rhs_value);
        };
        let mut order: Vec<&String> = l_tokens.iter().collect();
        order.extend(r_tokens.iter().filter(|t| !l_tokens.contains(t)));
        for token in order {
            let find = |tokens: &[String], items: &'_ [Value]| {
                tokens
                    .iter()
                    .position(|t| t == token)
                    .map(|i| items[i].clone())
            };
            let (li, ri) = (find(&l_tokens, l), find(&r_tokens, r));
            self.fpath.push(token.clone());
            match (&li, &ri) {
                (None, Some(_)) => self.out.added.insert(self.fpath.clone()),
                (Some(_), None) => self.out.removed.insert(self.fpath.clone()),
                _ => {}
            }
            if token.starts_with("k:") {
                self.map(
                    li.as_ref().and_then(Value::as_object),
                    ri.as_ref().and_then(Value::as_object),
                );
            }
            self.fpath.pop();
        }
    }
}

/// Drops from `merged` the fields this manager applied last time but not now,
/// unless another manager (or this apply, below them) still owns something there.
fn prune(merged: &mut Value, previous: &FieldSet, applied: &FieldSet, others: &FieldSet) {
    for path in previous.difference(applied).iter() {
        if others.has_at_or_below(path) || applied.has_at_or_below(path) || is_key_field(path) {
            continue;
        }
        remove_path(merged, path);
    }
}

// ---------------------------------------------------------------------------
// Managers
// ---------------------------------------------------------------------------

/// Identity of a managedFields entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ManagerKey {
    manager: String,
    operation: String,
    subresource: Option<String>,
}

impl ManagerKey {
    fn new(manager: &str, operation: &str, subresource: Option<&str>) -> Self {
        Self {
            manager: manager.to_string(),
            operation: operation.to_string(),
            subresource: subresource.filter(|s| !s.is_empty()).map(str::to_string),
        }
    }
}

/// One decoded `metadata.managedFields` entry.
#[derive(Debug, Clone)]
struct ManagerEntry {
    manager: String,
    operation: String,
    api_version: String,
    time: Option<String>,
    subresource: Option<String>,
    fields: FieldSet,
}

impl ManagerEntry {
    fn key(&self) -> ManagerKey {
        ManagerKey::new(&self.manager, &self.operation, self.subresource.as_deref())
    }

    fn from_json(value: &Value) -> Option<Self> {
        let obj = value.as_object()?;
        let text = |name: &str| obj.get(name).and_then(Value::as_str).map(str::to_string);
        Some(Self {
            manager: text("manager").unwrap_or_default(),
            operation: text("operation").unwrap_or_default(),
            api_version: text("apiVersion").unwrap_or_default(),
            time: text("time"),
            subresource: text("subresource").filter(|s| !s.is_empty()),
            fields: obj
                .get("fieldsV1")
                .map(FieldSet::from_fields_v1)
                .unwrap_or_default(),
        })
    }

    /// Encodes with the field order of `metav1.ManagedFieldsEntry`.
    fn to_json(&self) -> Value {
        let mut obj = Map::new();
        obj.insert("manager".into(), self.manager.clone().into());
        obj.insert("operation".into(), self.operation.clone().into());
        obj.insert("apiVersion".into(), self.api_version.clone().into());
        if let Some(time) = &self.time {
            obj.insert("time".into(), time.clone().into());
        }
        obj.insert("fieldsType".into(), "FieldsV1".into());
        obj.insert("fieldsV1".into(), self.fields.to_fields_v1());
        if let Some(sub) = &self.subresource {
            obj.insert("subresource".into(), sub.clone().into());
        }
        Value::Object(obj)
    }

    /// How Kubernetes names a manager in conflict messages (`printManager` in
    /// `fieldmanager/internal/conflict.go`): Update managers carry their API version.
    fn display(&self) -> String {
        let mut out = format!("{:?}", self.manager);
        if let Some(sub) = &self.subresource {
            out.push_str(&format!(" with subresource {sub:?}"));
        }
        if self.operation == UPDATE {
            out.push_str(&format!(" using {}", self.api_version));
        }
        out
    }
}

fn read_managers(obj: &Value) -> Vec<ManagerEntry> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|entries| entries.iter().filter_map(ManagerEntry::from_json).collect())
        .unwrap_or_default()
}

/// The entries an update starts from, as `decodeLiveOrNew` in Kubernetes'
/// fieldmanager picks them: the request's own if it carries any (a single empty
/// entry `[{}]` clears them all), otherwise the stored ones.
fn starting_managers(
    old: Option<&Value>,
    new: &Value,
    subresource: Option<&str>,
) -> Vec<ManagerEntry> {
    let stored = || old.map(read_managers).unwrap_or_default();
    // Writes through a subresource cannot touch managedFields (`decodeLiveOrNew`).
    if subresource.is_some() {
        return stored();
    }
    match new
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
    {
        Some(entries) if entries.len() == 1 && entries[0] == Value::Object(Map::new()) => {
            Vec::new()
        }
        Some(entries) if !entries.is_empty() => read_managers(new),
        _ => stored(),
    }
}

/// Replaces (or inserts) the entry for `key`; an empty set removes it.
fn set_entry(
    managers: &mut Vec<ManagerEntry>,
    key: &ManagerKey,
    fields: FieldSet,
    api_version: &str,
    now: &str,
) {
    managers.retain(|e| e.key() != *key);
    if fields.is_empty() {
        return;
    }
    managers.push(ManagerEntry {
        manager: key.manager.clone(),
        operation: key.operation.clone(),
        api_version: api_version.to_string(),
        time: Some(now.to_string()),
        subresource: key.subresource.clone(),
        fields,
    });
}

/// Writes the entries back, dropping empty ones and sorting like Kubernetes'
/// `sortEncodedManagedFields` (operation, time, manager, apiVersion, subresource;
/// RFC 3339 UTC timestamps sort correctly as strings).
fn write_managers(obj: &mut Value, mut managers: Vec<ManagerEntry>) {
    managers.retain(|e| !e.fields.is_empty());
    managers.sort_by(|a, b| {
        (
            &a.operation,
            &a.time,
            &a.manager,
            &a.api_version,
            &a.subresource,
        )
            .cmp(&(
                &b.operation,
                &b.time,
                &b.manager,
                &b.api_version,
                &b.subresource,
            ))
    });
    let Value::Object(root) = obj else {
        return;
    };
    if managers.is_empty() {
        if let Some(Value::Object(meta)) = root.get_mut("metadata") {
            meta.shift_remove("managedFields");
        }
        return;
    }
    let entries = Value::Array(managers.iter().map(ManagerEntry::to_json).collect());
    let meta = root
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(meta) = meta {
        meta.insert("managedFields".into(), entries);
    }
}

// ---------------------------------------------------------------------------
// Conflicts
// ---------------------------------------------------------------------------

/// For every other manager, the owned fields the apply would change (index into
/// `managers`). A field below a changed one counts too: replacing an object by a
/// scalar, or removing a list item, destroys what others own inside it.
fn find_conflicts(
    managers: &[ManagerEntry],
    me: &ManagerKey,
    changed: &FieldSet,
) -> Vec<(usize, FieldSet)> {
    let mut conflicts: Vec<(usize, FieldSet)> = managers
        .iter()
        .enumerate()
        .filter(|(_, e)| e.key() != *me)
        .map(|(i, e)| (i, e.fields.at_or_below(changed)))
        .filter(|(_, set)| !set.is_empty())
        .collect();
    conflicts.sort_by(|(a, _), (b, _)| {
        let (a, b) = (&managers[*a], &managers[*b]);
        (&a.manager, &a.operation, &a.subresource).cmp(&(&b.manager, &b.operation, &b.subresource))
    });
    conflicts
}

/// Builds the 409 error with Kubernetes' message (`getConflictMessage` in
/// `fieldmanager/internal/conflict.go`).
fn conflict_error(managers: &[ManagerEntry], conflicts: &[(usize, FieldSet)]) -> ApplyError {
    let list: Vec<FieldConflict> = conflicts
        .iter()
        .flat_map(|(i, set)| {
            set.iter().map(|path| FieldConflict {
                manager: managers[*i].manager.clone(),
                field: display_path(path),
            })
        })
        .collect();
    let message = match (conflicts, list.as_slice()) {
        ([(i, _)], [only]) => format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            managers[*i].display(),
            only.field
        ),
        _ => {
            let groups: Vec<String> = conflicts
                .iter()
                .map(|(i, set)| {
                    let paths: Vec<String> = set
                        .iter()
                        .map(|p| format!("- {}", display_path(p)))
                        .collect();
                    format!(
                        "conflicts with {}:\n{}",
                        managers[*i].display(),
                        paths.join("\n")
                    )
                })
                .collect();
            format!(
                "Apply failed with {} conflicts: {}",
                list.len(),
                groups.join("\n")
            )
        }
    };
    ApplyError::Conflict {
        message,
        conflicts: list,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const T0: &str = "2026-01-01T00:00:00Z";
    const T1: &str = "2026-01-01T00:01:00Z";

    fn apply(
        live: Option<&Value>,
        applied: &Value,
        manager: &str,
        force: bool,
    ) -> Result<Value, ApplyError> {
        server_side_apply(
            live,
            applied,
            manager,
            None,
            force,
            "apps/v1",
            T0,
            &BuiltinListTypes,
        )
    }

    fn entries(obj: &Value) -> Vec<Value> {
        obj["metadata"]["managedFields"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn entry<'a>(obj: &'a Value, manager: &str) -> &'a Value {
        obj["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["manager"] == manager)
            .unwrap_or_else(|| panic!("no entry for {manager}"))
    }

    fn deployment(replicas: i64, image: &str) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
            "spec": {
                "replicas": replicas,
                "template": {"spec": {"containers": [{"name": "app", "image": image}]}}
            }
        })
    }

    #[test]
    fn create_via_apply_records_fields() {
        let obj = apply(None, &deployment(1, "nginx:1"), "kubectl", false).unwrap();
        assert_eq!(obj["spec"]["replicas"], json!(1));
        assert_eq!(obj["metadata"]["name"], json!("web"));
        let e = entries(&obj);
        assert_eq!(e.len(), 1);
        assert_eq!(
            e[0],
            json!({
                "manager": "kubectl", "operation": "Apply", "apiVersion": "apps/v1",
                "time": T0, "fieldsType": "FieldsV1",
                "fieldsV1": {
                    "f:metadata": {"f:labels": {"f:app": {}}},
                    "f:spec": {
                        "f:replicas": {},
                        "f:template": {"f:spec": {"f:containers": {
                            "k:{\"name\":\"app\"}": {".": {}, "f:image": {}, "f:name": {}}
                        }}}
                    }
                }
            })
        );
    }

    #[test]
    fn fields_v1_roundtrip_and_canonical_keys() {
        let v1 = json!({"f:spec": {"f:ports": {
            "k:{\"protocol\":\"TCP\",\"containerPort\":80}": {".": {}, "f:name": {}}
        }}, "f:metadata": {"f:finalizers": {"v:\"a\"": {}}}});
        let set = FieldSet::from_fields_v1(&v1);
        assert!(set.0.contains(&vec![
            "f:spec".to_string(),
            "f:ports".to_string(),
            "k:{\"containerPort\":80,\"protocol\":\"TCP\"}".to_string()
        ]));
        assert_eq!(FieldSet::from_fields_v1(&set.to_fields_v1()), set);
        assert_eq!(
            display_path(&[
                "f:spec".into(),
                "k:{\"containerPort\":80,\"protocol\":\"TCP\"}".into(),
                "f:name".into()
            ]),
            ".spec[containerPort=80,protocol=\"TCP\"].name"
        );
    }

    #[test]
    fn reapply_without_field_removes_it() {
        let mut cfg = deployment(1, "nginx:1");
        let obj = apply(None, &cfg, "kubectl", false).unwrap();
        cfg["metadata"].as_object_mut().unwrap().remove("labels");
        cfg["spec"].as_object_mut().unwrap().remove("replicas");
        let obj = apply(Some(&obj), &cfg, "kubectl", false).unwrap();
        assert!(obj["spec"].get("replicas").is_none());
        assert_eq!(obj["metadata"]["labels"], json!({}));
        let fields = &entry(&obj, "kubectl")["fieldsV1"];
        assert!(fields["f:spec"].get("f:replicas").is_none());
        assert!(fields.get("f:metadata").is_none());
    }

    #[test]
    fn dropped_field_kept_when_another_manager_owns_it() {
        let obj = apply(None, &deployment(1, "nginx:1"), "a", false).unwrap();
        let obj = apply(
            Some(&obj),
            &json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 1}}),
            "b",
            false,
        )
        .unwrap();
        let mut cfg = deployment(1, "nginx:1");
        cfg["spec"].as_object_mut().unwrap().remove("replicas");
        let obj = apply(Some(&obj), &cfg, "a", false).unwrap();
        assert_eq!(obj["spec"]["replicas"], json!(1));
        assert!(
            entry(&obj, "a")["fieldsV1"]["f:spec"]
                .get("f:replicas")
                .is_none()
        );
        assert!(
            entry(&obj, "b")["fieldsV1"]["f:spec"]
                .get("f:replicas")
                .is_some()
        );
    }

    #[test]
    fn two_appliers_conflict_with_kubernetes_message() {
        let obj = apply(None, &deployment(1, "nginx:1"), "a", false).unwrap();
        let err = apply(Some(&obj), &deployment(2, "nginx:1"), "b", false).unwrap_err();
        match err {
            ApplyError::Conflict { message, conflicts } => {
                assert_eq!(
                    message,
                    "Apply failed with 1 conflict: conflict with \"a\": .spec.replicas"
                );
                assert_eq!(
                    conflicts,
                    [FieldConflict {
                        manager: "a".into(),
                        field: ".spec.replicas".into()
                    }]
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn multiple_conflicts_message() {
        let obj = apply(None, &deployment(1, "nginx:1"), "a", false).unwrap();
        let err = apply(Some(&obj), &deployment(2, "nginx:2"), "b", false).unwrap_err();
        let ApplyError::Conflict { message, conflicts } = err else {
            panic!("expected conflict");
        };
        assert_eq!(conflicts.len(), 2);
        assert_eq!(
            message,
            "Apply failed with 2 conflicts: conflicts with \"a\":\n\
             - .spec.replicas\n\
             - .spec.template.spec.containers[name=\"app\"].image"
        );
    }

    #[test]
    fn force_moves_ownership() {
        let obj = apply(None, &deployment(1, "nginx:1"), "a", false).unwrap();
        let obj = apply(Some(&obj), &deployment(2, "nginx:1"), "b", true).unwrap();
        assert_eq!(obj["spec"]["replicas"], json!(2));
        assert!(
            entry(&obj, "a")["fieldsV1"]["f:spec"]
                .get("f:replicas")
                .is_none()
        );
        assert!(
            entry(&obj, "b")["fieldsV1"]["f:spec"]
                .get("f:replicas")
                .is_some()
        );
        // The image had the same value, so both share it.
        let key = "k:{\"name\":\"app\"}";
        for m in ["a", "b"] {
            let c = &entry(&obj, m)["fieldsV1"]["f:spec"]["f:template"]["f:spec"]["f:containers"];
            assert!(c[key].get("f:image").is_some(), "{m}");
        }
        // a now re-applying its old value conflicts with b.
        let err = apply(Some(&obj), &deployment(1, "nginx:1"), "a", false).unwrap_err();
        assert!(
            err.to_string()
                .contains("conflict with \"b\": .spec.replicas")
        );
    }

    #[test]
    fn force_drops_emptied_entries() {
        let cfg = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "1"}});
        let obj = apply(None, &cfg, "a", false).unwrap();
        let cfg2 = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "2"}});
        let obj = apply(Some(&obj), &cfg2, "b", true).unwrap();
        let e = entries(&obj);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0]["manager"], json!("b"));
    }

    #[test]
    fn same_value_is_shared() {
        let obj = apply(None, &deployment(1, "nginx:1"), "a", false).unwrap();
        let obj = apply(Some(&obj), &deployment(1, "nginx:1"), "b", false).unwrap();
        assert_eq!(entries(&obj).len(), 2);
        for m in ["a", "b"] {
            assert!(
                entry(&obj, m)["fieldsV1"]["f:spec"]
                    .get("f:replicas")
                    .is_some()
            );
        }
        // a drops replicas: b still owns it, so it stays.
        let mut cfg = deployment(1, "nginx:1");
        cfg["spec"].as_object_mut().unwrap().remove("replicas");
        let obj = apply(Some(&obj), &cfg, "a", false).unwrap();
        assert_eq!(obj["spec"]["replicas"], json!(1));
    }

    fn pod(containers: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
               "spec": {"containers": containers}})
    }

    #[test]
    fn containers_merge_by_name_across_managers() {
        let obj = apply(
            None,
            &pod(json!([{"name": "app", "image": "app:1"}])),
            "a",
            false,
        )
        .unwrap();
        let obj = apply(
            Some(&obj),
            &pod(json!([{"name": "sidecar", "image": "side:1"}])),
            "b",
            false,
        )
        .unwrap();
        assert_eq!(
            obj["spec"]["containers"],
            json!([{"name": "app", "image": "app:1"}, {"name": "sidecar", "image": "side:1"}])
        );
        // a updates its image: b's container untouched.
        let obj = apply(
            Some(&obj),
            &pod(json!([{"name": "app", "image": "app:2"}])),
            "a",
            false,
        )
        .unwrap();
        assert_eq!(
            obj["spec"]["containers"],
            json!([{"name": "app", "image": "app:2"}, {"name": "sidecar", "image": "side:1"}])
        );
        // b stops applying its container: it is removed, a's stays.
        let obj = apply(
            Some(&obj),
            &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}}),
            "b",
            false,
        )
        .unwrap();
        assert_eq!(
            obj["spec"]["containers"],
            json!([{"name": "app", "image": "app:2"}])
        );
        assert_eq!(entries(&obj).len(), 1);
    }

    #[test]
    fn finalizers_are_a_set() {
        let cfg = |f: Value| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "finalizers": f}});
        let obj = apply(None, &cfg(json!(["x"])), "a", false).unwrap();
        let obj = apply(Some(&obj), &cfg(json!(["y"])), "b", false).unwrap();
        assert_eq!(obj["metadata"]["finalizers"], json!(["x", "y"]));
        let fields = &entry(&obj, "b")["fieldsV1"];
        assert_eq!(
            fields,
            &json!({"f:metadata": {"f:finalizers": {"v:\"y\"": {}}}})
        );
        let obj = apply(Some(&obj), &cfg(json!([])), "a", false).unwrap();
        assert_eq!(obj["metadata"]["finalizers"], json!(["y"]));
    }

    struct CrdLists;
    impl ListTypes for CrdLists {
        fn list_type(&self, path: &[String]) -> ListType {
            match path
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .as_slice()
            {
                ["spec", "workers"] => ListType::Map(vec!["id".into()]),
                _ => ListType::Atomic,
            }
        }
    }

    fn crd(items: Value, workers: Value) -> Value {
        json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"},
               "spec": {"items": items, "workers": workers}})
    }

    #[test]
    fn crd_atomic_lists_replace_and_conflict() {
        let apply_crd = |live: Option<&Value>, cfg: &Value, m: &str, force: bool| {
            server_side_apply(live, cfg, m, None, force, "example.com/v1", T0, &CrdLists)
        };
        let obj = apply_crd(
            None,
            &crd(json!([1, 2]), json!([{"id": 1, "n": "a"}])),
            "a",
            false,
        )
        .unwrap();
        assert_eq!(
            entry(&obj, "a")["fieldsV1"]["f:spec"],
            json!({"f:items": {}, "f:workers": {"k:{\"id\":1}": {".": {}, "f:id": {}, "f:n": {}}}})
        );
        let err = apply_crd(Some(&obj), &crd(json!([3]), json!([])), "b", false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Apply failed with 1 conflict: conflict with \"a\": .spec.items"
        );
        let obj = apply_crd(Some(&obj), &crd(json!([3]), json!([{"id": 2}])), "b", true).unwrap();
        assert_eq!(obj["spec"]["items"], json!([3]));
        assert_eq!(
            obj["spec"]["workers"],
            json!([{"id": 1, "n": "a"}, {"id": 2}])
        );
    }

    #[test]
    fn update_then_apply_conflicts_on_updated_field() {
        let obj = apply(None, &deployment(1, "nginx:1"), "a", false).unwrap();
        let mut edited = obj.clone();
        edited["spec"]["replicas"] = json!(5);
        let obj = record_update(
            Some(&obj),
            &edited,
            "kubectl-client-side-apply",
            None,
            "v1",
            T1,
            &BuiltinListTypes,
        );
        assert!(
            entry(&obj, "a")["fieldsV1"]["f:spec"]
                .get("f:replicas")
                .is_none()
        );
        let upd = entry(&obj, "kubectl-client-side-apply");
        assert_eq!(upd["operation"], json!("Update"));
        assert_eq!(upd["fieldsV1"], json!({"f:spec": {"f:replicas": {}}}));

        let err = apply(Some(&obj), &deployment(3, "nginx:1"), "a", false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Apply failed with 1 conflict: conflict with \"kubectl-client-side-apply\" using v1: .spec.replicas"
        );
    }

    #[test]
    fn record_update_on_create_owns_everything_but_meta() {
        let obj = record_update(
            None,
            &deployment(1, "x"),
            "kubectl-create",
            None,
            "apps/v1",
            T0,
            &BuiltinListTypes,
        );
        let e = entries(&obj);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0]["operation"], json!("Update"));
        let f = &e[0]["fieldsV1"];
        assert!(f.get("f:apiVersion").is_none());
        assert!(f["f:metadata"].get("f:name").is_none());
        assert!(f["f:metadata"]["f:labels"].get("f:app").is_some());
        // An update that changes nothing keeps the entries as they are.
        let again = record_update(
            Some(&obj),
            &obj,
            "kubectl-create",
            None,
            "apps/v1",
            T1,
            &BuiltinListTypes,
        );
        assert_eq!(again, obj);
    }

    #[test]
    fn record_update_removed_fields_leave_all_managers() {
        let obj = apply(None, &deployment(1, "nginx:1"), "a", false).unwrap();
        let mut edited = obj.clone();
        edited["metadata"]["labels"]
            .as_object_mut()
            .unwrap()
            .remove("app");
        let obj = record_update(
            Some(&obj),
            &edited,
            "editor",
            None,
            "apps/v1",
            T1,
            &BuiltinListTypes,
        );
        assert!(entry(&obj, "a")["fieldsV1"].get("f:metadata").is_none());
        // Nothing was added or modified, so no entry for the editor.
        assert_eq!(entries(&obj).len(), 1);
    }

    #[test]
    fn record_update_reset_managed_fields() {
        let obj = apply(None, &deployment(1, "nginx:1"), "a", false).unwrap();
        let mut edited = obj.clone();
        edited["metadata"]["managedFields"] = json!([{}]);
        let obj = record_update(
            Some(&obj),
            &edited,
            "editor",
            None,
            "apps/v1",
            T1,
            &BuiltinListTypes,
        );
        assert!(obj["metadata"].get("managedFields").is_none());
    }

    #[test]
    fn status_subresource_entries() {
        let obj = apply(None, &deployment(1, "nginx:1"), "a", false).unwrap();
        let status = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
                            "status": {"conditions": [{"type": "Available", "status": "True"}]}});
        let obj = server_side_apply(
            Some(&obj),
            &status,
            "ctrl",
            Some("status"),
            false,
            "apps/v1",
            T1,
            &BuiltinListTypes,
        )
        .unwrap();
        let e = entry(&obj, "ctrl");
        assert_eq!(e["subresource"], json!("status"));
        assert_eq!(e["operation"], json!("Apply"));
        assert_eq!(
            e["fieldsV1"],
            json!({"f:status": {"f:conditions": {"k:{\"type\":\"Available\"}": {".": {}, "f:status": {}, "f:type": {}}}}})
        );
        // Entry order follows Kubernetes: operation, then time.
        let names: Vec<_> = entries(&obj).iter().map(|e| e["manager"].clone()).collect();
        assert_eq!(names, [json!("a"), json!("ctrl")]);

        // The same manager applying on the main resource is a separate entry...
        let obj2 = apply(Some(&obj), &json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "annotations": {"x": "y"}}}), "ctrl", false).unwrap();
        assert_eq!(entries(&obj2).len(), 3);

        // ...and an update through the status subresource by someone else conflicts
        // in the message with the subresource named.
        let mut edited = obj.clone();
        edited["status"]["conditions"][0]["status"] = json!("False");
        let obj = record_update(
            Some(&obj),
            &edited,
            "kubelet",
            Some("status"),
            "apps/v1",
            T1,
            &BuiltinListTypes,
        );
        let err = server_side_apply(
            Some(&obj),
            &status,
            "ctrl2",
            Some("status"),
            false,
            "apps/v1",
            T1,
            &BuiltinListTypes,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Apply failed with 1 conflict: conflict with \"kubelet\" with subresource \"status\" using apps/v1: .status.conditions[type=\"Available\"].status"
        );
    }

    #[test]
    fn system_metadata_is_ignored() {
        let mut cfg = deployment(1, "x");
        cfg["metadata"]["uid"] = json!("u1");
        cfg["metadata"]["resourceVersion"] = json!("7");
        cfg["metadata"]["managedFields"] = json!([{"manager": "evil"}]);
        cfg["metadata"]["generation"] = json!(3);
        let obj = apply(None, &cfg, "a", false).unwrap();
        assert!(obj["metadata"].get("uid").is_none());
        assert!(obj["metadata"].get("resourceVersion").is_none());
        assert_eq!(entries(&obj).len(), 1);
        assert_eq!(
            entry(&obj, "a")["fieldsV1"]["f:metadata"],
            json!({"f:labels": {"f:app": {}}})
        );
    }

    #[test]
    fn invalid_configs() {
        assert!(matches!(
            apply(None, &json!([1]), "a", false),
            Err(ApplyError::Invalid(_))
        ));
        let missing_key = pod(json!([{"image": "x"}]));
        assert!(matches!(
            apply(None, &missing_key, "a", false),
            Err(ApplyError::Invalid(_))
        ));
        let dup = pod(json!([{"name": "x"}, {"name": "x"}]));
        assert!(matches!(
            apply(None, &dup, "a", false),
            Err(ApplyError::Invalid(_))
        ));
    }

    #[test]
    fn key_fields_survive_while_item_is_co_owned() {
        let obj = apply(
            None,
            &pod(json!([{"name": "app", "image": "1"}])),
            "a",
            false,
        )
        .unwrap();
        let mut edited = obj.clone();
        edited["spec"]["containers"][0]["args"] = json!(["--x"]);
        let obj = record_update(
            Some(&obj),
            &edited,
            "editor",
            None,
            "v1",
            T1,
            &BuiltinListTypes,
        );
        // a stops applying the container; editor owns args inside it, so the item
        // (with its key) stays, but a's image goes.
        let obj = apply(
            Some(&obj),
            &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}}),
            "a",
            false,
        )
        .unwrap();
        assert_eq!(
            obj["spec"]["containers"],
            json!([{"name": "app", "args": ["--x"]}])
        );
    }

    #[test]
    fn replacing_an_object_conflicts_on_fields_inside_it() {
        let widget = |x: Value| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "spec": {"x": x}});
        let obj = apply(None, &widget(json!({"a": 1})), "b", false).unwrap();
        let err = apply(Some(&obj), &widget(json!("s")), "a", false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Apply failed with 1 conflict: conflict with \"b\": .spec.x.a"
        );
        let obj = apply(Some(&obj), &widget(json!("s")), "a", true).unwrap();
        assert_eq!(obj["spec"]["x"], json!("s"));
        assert_eq!(entries(&obj).len(), 1);
    }

    #[test]
    fn conflicts_from_several_managers_are_grouped_and_sorted() {
        let cm = |data: Value| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": data});
        let obj = apply(None, &cm(json!({"x": "1"})), "zeta", false).unwrap();
        let mut edited = obj.clone();
        edited["data"]["y"] = json!("1");
        let obj = record_update(
            Some(&obj),
            &edited,
            "alpha",
            None,
            "v1",
            T1,
            &BuiltinListTypes,
        );
        let err = apply(Some(&obj), &cm(json!({"x": "2", "y": "2"})), "me", false).unwrap_err();
        let ApplyError::Conflict { message, conflicts } = err else {
            panic!("expected conflict");
        };
        assert_eq!(
            message,
            "Apply failed with 2 conflicts: conflicts with \"alpha\" using v1:\n- .data.y\nconflicts with \"zeta\":\n- .data.x"
        );
        let managers: Vec<_> = conflicts.iter().map(|c| c.manager.as_str()).collect();
        assert_eq!(managers, ["alpha", "zeta"]);
    }

    #[test]
    fn updates_by_the_same_manager_accumulate() {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}});
        let obj = record_update(None, &cm, "ed", None, "v1", T0, &BuiltinListTypes);
        let mut edited = obj.clone();
        edited["data"]["b"] = json!("2");
        let obj = record_update(Some(&obj), &edited, "ed", None, "v1", T1, &BuiltinListTypes);
        let e = entries(&obj);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0]["time"], json!(T1));
        assert_eq!(e[0]["fieldsV1"], json!({"f:data": {"f:a": {}, "f:b": {}}}));
    }

    #[test]
    fn subresource_updates_cannot_rewrite_managed_fields() {
        let obj = apply(None, &deployment(1, "x"), "a", false).unwrap();
        let mut edited = obj.clone();
        edited["metadata"]["managedFields"] = json!([{}]);
        edited["status"] = json!({"replicas": 1});
        let obj = record_update(
            Some(&obj),
            &edited,
            "ctrl",
            Some("status"),
            "apps/v1",
            T1,
            &BuiltinListTypes,
        );
        assert_eq!(entries(&obj).len(), 2);
        assert_eq!(entry(&obj, "ctrl")["subresource"], json!("status"));
    }

    #[test]
    fn update_adding_a_list_item_owns_the_item() {
        let obj = apply(
            None,
            &pod(json!([{"name": "app", "image": "1"}])),
            "a",
            false,
        )
        .unwrap();
        let mut edited = obj.clone();
        edited["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "debug", "image": "busybox"}));
        let obj = record_update(Some(&obj), &edited, "ed", None, "v1", T1, &BuiltinListTypes);
        assert_eq!(
            entry(&obj, "ed")["fieldsV1"],
            json!({"f:spec": {"f:containers": {"k:{\"name\":\"debug\"}": {".": {}, "f:image": {}, "f:name": {}}}}})
        );
        // Removing the item again through an update clears every owner's fields in it.
        let mut edited = obj.clone();
        edited["spec"]["containers"].as_array_mut().unwrap().pop();
        let obj = record_update(
            Some(&obj),
            &edited,
            "other",
            None,
            "v1",
            T1,
            &BuiltinListTypes,
        );
        assert!(
            obj["metadata"]["managedFields"]
                .as_array()
                .unwrap()
                .iter()
                .all(|e| e["manager"] != "ed")
        );
    }

    // ---- properties ----

    fn arb_config() -> impl Strategy<Value = Value> {
        let scalar = prop_oneof![
            any::<bool>().prop_map(Value::Bool),
            (0i64..100).prop_map(|n| json!(n)),
            "[a-z]{0,4}".prop_map(Value::String),
        ];
        (
            prop::collection::btree_map("[a-z]{1,3}", "[a-z]{0,3}", 0..4),
            prop::collection::btree_map("[a-z]{1,3}", scalar.clone(), 0..4),
            prop::collection::btree_map("[a-z]{1,3}", prop::option::of("[a-z:0-9]{1,4}"), 0..4),
            prop::collection::vec("[a-c]", 0..4),
            prop::collection::vec(scalar, 0..3),
        )
            .prop_map(|(labels, spec, containers, finalizers, tolerations)| {
                let containers: Vec<Value> = containers
                    .into_iter()
                    .map(|(name, image)| match image {
                        Some(image) => json!({"name": name, "image": image}),
                        None => json!({"name": name}),
                    })
                    .collect();
                let mut spec: Map<String, Value> = spec.into_iter().collect();
                spec.insert("containers".into(), Value::Array(containers));
                spec.insert("tolerations".into(), Value::Array(tolerations));
                json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": "p", "labels": labels, "finalizers": finalizers},
                    "spec": spec
                })
            })
    }

    proptest! {
        #[test]
        fn apply_is_idempotent(cfg in arb_config(), other in arb_config()) {
            let once = apply(None, &cfg, "a", false).unwrap();
            let twice = apply(Some(&once), &cfg, "a", false).unwrap();
            prop_assert_eq!(&twice, &once);

            // Also on top of an object another manager shaped, once a has won any
            // conflicts with force: re-applying never conflicts with itself.
            let base = apply(None, &other, "b", false).unwrap();
            let forced = apply(Some(&base), &cfg, "a", true).unwrap();
            let again = apply(Some(&forced), &cfg, "a", false).unwrap();
            prop_assert_eq!(&again, &forced);
        }
    }
}
