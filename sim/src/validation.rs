//! Validation of custom resources against a CRD version's structural
//! `openAPIV3Schema` and its CEL `x-kubernetes-validations`, producing the
//! causes of a kube-apiserver `422 Invalid`.
//!
//! What runs, in the apiserver's order (customResourceStrategy.Validate):
//! 1. OpenAPI value validation (kube-openapi), see the `openapi` submodule;
//! 2. embedded-resource apiVersion/kind/metadata checks, see the `structural` submodule;
//! 3. `x-kubernetes-list-type` set/map uniqueness (same submodule);
//! 4. CEL rules, see [`crate::cel_rules`], unless step 1-3 found a
//!    "blocking" error (wrong type, required, enum, too long, too many), in
//!    which case a single `<nil>` cause says the rules were not checked.
//!
//! Reference: <https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/#validation>
//! and <https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/#validation-rules>.
//!
//! Messages target Kubernetes 1.30+ (`field.TooLongMaxLength`'s "may not be
//! longer than N"; CRD validation ratcheting on update).

mod formats;
mod gofmt;
mod keywords;
mod node;
mod openapi;
mod prune;
mod structural;

use crate::cel_rules::{self, Outcome, RuleError, RuleReason, to_cel};
use gofmt::{Bad, ErrType, cause, child, index, key};
use node::Node;
use serde_json::Value;
use std::sync::Arc;

/// One cause of a 422, as in metav1.StatusCause.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Cause {
    /// The `metav1.CauseType`, e.g. `FieldValueInvalid`.
    pub reason: String,
    /// `field.Error.ErrorBody()`, e.g. `Invalid value: -1: spec.replicas in body should be ...`.
    pub message: String,
    /// The field path, e.g. `spec.values[1]`; `<nil>` for the object itself.
    pub field: String,
}

/// Why an `openAPIV3Schema` could not be compiled; the path names the
/// offending schema node, e.g. `openAPIV3Schema.properties[spec]`.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The schema is not structurally usable (wrong JSON types, unknown `type`).
    #[error("{path}: {message}")]
    Invalid {
        /// The schema node.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// A `pattern` is not a valid regular expression.
    #[error("{path}: Invalid value: {pattern:?}: {source}")]
    Pattern {
        /// The schema node's `pattern`.
        path: String,
        /// The pattern as written.
        pattern: String,
        /// The regex parser's complaint.
        source: regex::Error,
    },
    /// An `x-kubernetes-validations` entry does not compile.
    #[error("{path}: {source}")]
    Rule {
        /// The rule entry, e.g. `openAPIV3Schema.properties[spec].x-kubernetes-validations[0]`.
        path: String,
        /// What is wrong with it.
        source: RuleError,
    },
}

/// A compiled CRD version schema: compile once when a CRD is created/updated, reuse for every object.
pub struct Schema {
    root: Node,
    env: Arc<cel::Env>,
}

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // cel::Env has no Debug; the schema tree is what identifies a Schema.
        f.debug_struct("Schema")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

/// The message the apiserver adds instead of running CEL rules on an
/// object that already failed a blocking check (`hasBlockingErr`).
const RULES_NOT_CHECKED: &str = "some validation rules were not checked because the object was \
invalid; correct the existing errors to complete validation";

impl Schema {
    /// Parses an `openAPIV3Schema`, compiling its patterns and CEL rules.
    pub fn compile(open_api_v3_schema: &Value) -> Result<Schema, SchemaError> {
        const ROOT: &str = "openAPIV3Schema";
        let mut root = Node::parse(open_api_v3_schema, ROOT, true)?;
        let env = cel_rules::new_env().map_err(|source| SchemaError::Rule {
            path: ROOT.to_string(),
            source,
        })?;
        node::compile_rules(&mut root, ROOT, &env, &[], None)?;
        Ok(Schema { root, env })
    }

    /// Apply `default`s (for absent fields, recursively, as the apiserver does on create/update), then prune fields not in the schema (unless x-kubernetes-preserve-unknown-fields; metadata of the root object is left alone except that apiVersion/kind/metadata are always kept). Returns the pruned/defaulted object and the JSON paths of unknown fields that were dropped (e.g. ".spec.foo") so the caller can reject them under fieldValidation=Strict or warn.
    pub fn default_and_prune(&self, obj: &Value) -> (Value, Vec<String>) {
        let mut x = obj.clone();
        prune::apply_defaults(&mut x, &self.root);
        let mut unknown = Vec::new();
        prune::prune_root(&mut x, &self.root, &mut unknown);
        prune::drop_disallowed_nulls(&mut x, &self.root);
        (x, unknown)
    }

    /// Validate an object (already defaulted/pruned). `old` is the previous object on update (enables CEL transition rules that use oldSelf; rules referencing oldSelf are skipped on create). Returns all causes; empty = valid.
    pub fn validate(&self, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
        let mut causes = Vec::new();
        openapi::validate(&self.root, "", obj, old, &mut causes);
        structural::embedded_resources(&self.root, "", obj, &mut causes);
        let mut list_errs = Vec::new();
        structural::list_sets_and_maps(&self.root, "", obj, &mut list_errs);
        // On update, list uniqueness is only enforced if the old object met it.
        let old_lists_ok = old.is_none_or(|o| {
            let mut old_errs = Vec::new();
            structural::list_sets_and_maps(&self.root, "", o, &mut old_errs);
            old_errs.is_empty()
        });
        if old_lists_ok {
            causes.extend(list_errs);
        }
        if self.root.has_rules() {
            let blocking = causes.iter().any(|c| {
                matches!(
                    c.reason.as_str(),
                    "FieldValueNotSupported"
                        | "FieldValueRequired"
                        | "FieldValueTooLong"
                        | "FieldValueTooMany"
                        | "FieldValueTypeInvalid"
                )
            });
            if blocking {
                causes.push(cause(
                    ErrType::Invalid,
                    "",
                    Bad::Json(&Value::Null),
                    RULES_NOT_CHECKED,
                ));
            } else {
                let ratchet = old == Some(obj);
                self.check_rules(&self.root, "", obj, old, ratchet, &mut causes);
            }
        }
        causes
    }

    /// Runs the CEL rules of `node` and below (the apiserver's cel
    /// `Validator.validate`). `ratchet` is true when the value is unchanged
    /// from `old`: failures of non-transition rules then become warnings.
    fn check_rules(
        &self,
        node: &Node,
        path: &str,
        data: &Value,
        old: Option<&Value>,
        ratchet: bool,
        out: &mut Vec<Cause>,
    ) {
        if data.is_null() || !node.has_rules() {
            return;
        }
        // A null old value is no old value: transition rules do not run.
        let old = old.filter(|o| !o.is_null());
        if !node.rules.is_empty() {
            let this = to_cel(data, &node.shape);
            let old_cel = old.map(|o| to_cel(o, &node.shape));
            let type_name = Bad::Str(&node.type_name);
            for rule in &node.rules {
                match rule.evaluate(&self.env, &this, old_cel.as_ref()) {
                    Outcome::Pass | Outcome::Skipped => {}
                    Outcome::Error(detail) => {
                        out.push(cause(ErrType::Invalid, path, type_name, &detail))
                    }
                    Outcome::Fail {
                        uses_old_self: false,
                        ..
                    } if ratchet => {}
                    Outcome::Fail {
                        detail,
                        reason,
                        field_path,
                        ..
                    } => {
                        let p = field_path.map_or_else(|| path.to_string(), |fp| child(path, &fp));
                        out.push(match reason {
                            RuleReason::Invalid => cause(ErrType::Invalid, &p, type_name, &detail),
                            RuleReason::Forbidden => {
                                cause(ErrType::Forbidden, &p, Bad::Omit, &detail)
                            }
                            RuleReason::Required => {
                                cause(ErrType::Required, &p, Bad::Omit, &detail)
                            }
                            RuleReason::Duplicate => cause(ErrType::Duplicate, &p, type_name, ""),
                        });
                    }
                }
            }
        }
        match data {
            Value::Object(map) => {
                if let Some(additional) = node.additional_schema() {
                    for (k, v) in map {
                        let o = node.old_field(old, k);
                        self.check_rules(
                            additional,
                            &key(path, k),
                            v,
                            o,
                            ratchet || o == Some(v),
                            out,
                        );
                    }
                }
                for (k, v) in map {
                    if let Some(prop) = node.prop(k) {
                        let o = node.old_field(old, k);
                        self.check_rules(prop, &child(path, k), v, o, ratchet || o == Some(v), out);
                    }
                }
            }
            Value::Array(items) => {
                if let Some(item_schema) = &node.items {
                    for (i, v) in items.iter().enumerate() {
                        let o = node.old_item(old, v);
                        self.check_rules(
                            item_schema,
                            &index(path, i),
                            v,
                            o,
                            ratchet || o == Some(v),
                            out,
                        );
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn crd_schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["batchSize", "values"],
                    "x-kubernetes-validations": [
                        {"rule": "self.batchSize > 0", "message": "batchSize must be positive"},
                        {"rule": "!has(self.unitReplicas) || self.unitReplicas.all(k, k in self.values)",
                         "message": "unitReplicas keys must be listed in values", "fieldPath": ".unitReplicas"},
                        {"rule": "self.values.all(v, self.values.exists_one(w, w == v))",
                         "reason": "FieldValueDuplicate", "fieldPath": ".values"},
                        {"rule": "self.replicas >= oldSelf.replicas", "message": "replicas may not decrease"},
                        {"rule": "self.batchSize <= self.replicas",
                         "messageExpression": "'batchSize ' + string(self.batchSize) + ' exceeds replicas ' + string(self.replicas)"}
                    ],
                    "properties": {
                        "replicas": {"type": "integer", "minimum": 0, "default": 1},
                        "batchSize": {"type": "integer"},
                        "strategy": {"type": "string", "enum": ["Beta", "Batch"], "default": "Batch"},
                        "values": {"type": "array", "maxItems": 4,
                                   "items": {"type": "string", "pattern": "^DC[A-Z]$"}},
                        "unitReplicas": {"type": "object",
                                         "additionalProperties": {"x-kubernetes-int-or-string": true}},
                        "template": {"type": "object", "properties": {"containers": {"type": "array",
                            "items": {"type": "object", "required": ["name"],
                                      "x-kubernetes-validations": [{"rule": "self.name != 'forbidden'",
                                          "reason": "FieldValueForbidden", "message": "name is reserved"}],
                                      "properties": {"name": {"type": "string", "minLength": 1},
                                                     "image": {"type": "string"}}}}}}
                    }
                },
                "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
            }
        })
    }

    fn schema() -> Schema {
        Schema::compile(&crd_schema()).unwrap()
    }

    fn obj(spec: Value) -> Value {
        json!({"apiVersion": "cafe.example/v1", "kind": "Cafe", "metadata": {"name": "c"}, "spec": spec})
    }

    fn c(reason: &str, field: &str, message: &str) -> Cause {
        Cause {
            reason: reason.into(),
            field: field.into(),
            message: message.into(),
        }
    }

    #[test]
    fn valid_object_has_no_causes() {
        let s = schema();
        let (o, unknown) = s.default_and_prune(&obj(json!({"batchSize": 1, "values": ["DCA"]})));
        assert!(unknown.is_empty());
        assert_eq!(o["spec"]["replicas"], json!(1));
        assert_eq!(o["spec"]["strategy"], json!("Batch"));
        assert_eq!(s.validate(&o, None), vec![]);
    }

    #[test]
    fn several_schema_errors_at_once_block_the_rules() {
        let s = schema();
        let bad = obj(
            json!({"replicas": -1, "batchSize": 2, "strategy": "Foo", "values": ["DCA", "dcb"],
            "unitReplicas": {"DCA": 1, "DCC": true}, "template": {"containers": [{"image": "x"}]}}),
        );
        assert_eq!(
            s.validate(&bad, None),
            vec![
                c(
                    "FieldValueInvalid",
                    "spec.replicas",
                    "Invalid value: -1: spec.replicas in body should be greater than or equal to 0"
                ),
                c(
                    "FieldValueNotSupported",
                    "spec.strategy",
                    "Unsupported value: \"Foo\": supported values: \"Beta\", \"Batch\""
                ),
                c(
                    "FieldValueInvalid",
                    "spec.values[1]",
                    "Invalid value: \"dcb\": spec.values[1] in body should match '^DC[A-Z]$'"
                ),
                c(
                    "FieldValueTypeInvalid",
                    "spec.unitReplicas.DCC",
                    "Invalid value: \"boolean\": spec.unitReplicas.DCC in body must be of type integer,string: \"boolean\""
                ),
                c(
                    "FieldValueRequired",
                    "spec.template.containers[0].name",
                    "Required value"
                ),
                c(
                    "FieldValueInvalid",
                    "<nil>",
                    &format!("Invalid value: \"null\": {RULES_NOT_CHECKED}")
                ),
            ]
        );
    }

    #[test]
    fn cel_rules_report_like_the_apiserver() {
        let s = schema();
        let bad = obj(
            json!({"replicas": 1, "batchSize": 0, "values": ["DCA", "DCB", "DCA"],
            "unitReplicas": {"DCC": 1}, "template": {"containers": [{"name": "ok"}, {"name": "forbidden"}]}}),
        );
        assert_eq!(
            s.validate(&bad, None),
            vec![
                c(
                    "FieldValueInvalid",
                    "spec",
                    "Invalid value: \"object\": batchSize must be positive"
                ),
                c(
                    "FieldValueInvalid",
                    "spec.unitReplicas",
                    "Invalid value: \"object\": unitReplicas keys must be listed in values"
                ),
                c(
                    "FieldValueDuplicate",
                    "spec.values",
                    "Duplicate value: \"object\""
                ),
                c(
                    "FieldValueForbidden",
                    "spec.template.containers[1]",
                    "Forbidden: name is reserved"
                ),
            ]
        );
    }

    #[test]
    fn message_expression_and_default_message() {
        let s = schema();
        let bad = obj(json!({"replicas": 1, "batchSize": 3, "values": ["DCA"]}));
        assert_eq!(
            s.validate(&bad, None),
            vec![c(
                "FieldValueInvalid",
                "spec",
                "Invalid value: \"object\": batchSize 3 exceeds replicas 1"
            )]
        );
        let s2 = Schema::compile(
            &json!({"type": "object", "x-kubernetes-validations": [{"rule": "has(self.spec)"}]}),
        )
        .unwrap();
        assert_eq!(
            s2.validate(&json!({"kind": "K"}), None),
            vec![c(
                "FieldValueInvalid",
                "<nil>",
                "Invalid value: \"object\": failed rule: has(self.spec)"
            )]
        );
    }

    #[test]
    fn transition_rules_run_only_on_update() {
        let s = schema();
        let old = obj(json!({"replicas": 3, "batchSize": 1, "values": ["DCA"]}));
        let new = obj(json!({"replicas": 2, "batchSize": 1, "values": ["DCA"]}));
        assert_eq!(s.validate(&new, None), vec![]);
        assert_eq!(
            s.validate(&new, Some(&old)),
            vec![c(
                "FieldValueInvalid",
                "spec",
                "Invalid value: \"object\": replicas may not decrease"
            )]
        );
        assert_eq!(s.validate(&old, Some(&new)), vec![]);
    }

    #[test]
    fn unchanged_invalid_values_are_ratcheted_on_update() {
        let s = schema();
        let old = obj(json!({"replicas": 2, "batchSize": 1, "strategy": "Foo", "values": ["DCA"]}));
        let new = obj(json!({"replicas": 3, "batchSize": 1, "strategy": "Foo", "values": ["DCA"]}));
        assert_eq!(s.validate(&new, Some(&old)), vec![]);
        assert_eq!(
            s.validate(&new, None).len(),
            2,
            "enum error + rules not checked"
        );
    }

    #[test]
    fn runtime_errors_become_causes() {
        let s = Schema::compile(
            &json!({"type": "object", "properties": {"spec": {"type": "object",
            "properties": {"a": {"type": "integer"}},
            "x-kubernetes-validations": [{"rule": "self.a > 0"}]}}}),
        )
        .unwrap();
        assert_eq!(
            s.validate(&json!({"spec": {}}), None),
            vec![c(
                "FieldValueInvalid",
                "spec",
                "Invalid value: \"object\": no such key: a evaluating rule: self.a > 0"
            )]
        );
    }

    #[test]
    fn bad_rules_and_patterns_fail_to_compile() {
        let mut bad = crd_schema();
        bad["properties"]["spec"]["x-kubernetes-validations"][0]["rule"] =
            json!("self.batchSize >");
        let err = Schema::compile(&bad).unwrap_err();
        assert!(matches!(err, SchemaError::Rule { .. }));
        let text = err.to_string();
        assert!(
            text.starts_with("openAPIV3Schema.properties[spec].x-kubernetes-validations[0]: "),
            "{text}"
        );
        assert!(
            text.contains("compilation failed: ERROR: <input>:1:17: Syntax error"),
            "{text}"
        );
        let err = Schema::compile(&json!({"type": "string", "pattern": "[unclosed"})).unwrap_err();
        assert!(matches!(err, SchemaError::Pattern { .. }), "{err}");
    }

    #[test]
    fn pruning_keeps_preserved_and_reports_dropped_fields() {
        let s = schema();
        let mut o = obj(json!({"batchSize": 1, "values": ["DCA"], "foo": 1,
            "template": {"containers": [{"name": "a", "bar": 2}]}}));
        o["status"] = json!({"anything": {"goes": true}});
        o["extra"] = json!(1);
        let (pruned, unknown) = s.default_and_prune(&o);
        assert_eq!(
            unknown,
            vec![".spec.foo", ".spec.template.containers[0].bar", ".extra"]
        );
        assert_eq!(pruned["status"], json!({"anything": {"goes": true}}));
        assert_eq!(pruned["metadata"], json!({"name": "c"}));
        assert_eq!(s.validate(&pruned, None), vec![]);
    }

    #[test]
    fn list_type_set_duplicates() {
        let s = Schema::compile(
            &json!({"type": "object", "properties": {"values": {"type": "array",
            "x-kubernetes-list-type": "set", "items": {"type": "string"}}}}),
        )
        .unwrap();
        let dup = json!({"values": ["DCA", "DCB", "DCA"]});
        assert_eq!(
            s.validate(&dup, None),
            vec![c(
                "FieldValueDuplicate",
                "values[2]",
                "Duplicate value: \"DCA\""
            )]
        );
        assert_eq!(
            s.validate(&dup, Some(&json!({"values": ["DCA", "DCA"]}))),
            vec![],
            "not enforced when the old object already violated it"
        );
    }

    #[test]
    fn schema_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Schema>();
    }
}
