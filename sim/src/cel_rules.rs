//! CEL validation rules (`x-kubernetes-validations`) for custom resources.
//!
//! Follows "Validation rules" in
//! <https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/#validation-rules>
//! and the apiserver's implementation
//! (k8s.io/apiextensions-apiserver/pkg/apiserver/schema/cel/validation.go):
//! a rule sees the value of its schema node as `self` and, when it is a
//! transition rule, the previous value at the same place as `oldSelf`.
//!
//! Rules are compiled once (when the CRD is created or updated); evaluation
//! only converts JSON into CEL values and runs the precompiled programs.

mod check;
mod values;

pub(crate) use values::{Shape, escape_property, parse_go_duration, to_cel};

use cel::{Context, Env, ExecutionError, Program};
use check::{checked_compile, free_idents, normalize_field_path};
use serde_json::Value as Json;
use std::sync::Arc;

/// Why a rule (or its message expression) was rejected when the schema was compiled.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    /// The rule entry is not an object with a non-empty string `rule`.
    #[error("Required value: rule must be a non-empty string")]
    MissingRule,
    /// The rule does not parse, or names a variable other than `self`/`oldSelf`.
    #[error("Invalid value: {rule:?}: compilation failed: {message}")]
    Compile {
        /// The rule source.
        rule: String,
        /// The compiler's diagnostic, in cel-go's `ERROR: <input>:L:C: ...` form.
        message: String,
    },
    /// The `messageExpression` does not compile.
    #[error("Invalid value: {expression:?}: messageExpression compilation failed: {message}")]
    MessageExpression {
        /// The expression source.
        expression: String,
        /// The compiler's diagnostic.
        message: String,
    },
    /// `fieldPath` does not name a field of the node's schema.
    #[error("Invalid value: {field_path:?}: {message}")]
    FieldPath {
        /// The `fieldPath` as written.
        field_path: String,
        /// What is wrong with it.
        message: String,
    },
    /// `reason` is not one of the four the apiserver accepts.
    #[error(
        "Unsupported value: {0:?}: supported values: \"FieldValueInvalid\", \"FieldValueForbidden\", \"FieldValueRequired\", \"FieldValueDuplicate\""
    )]
    Reason(String),
    /// The CEL environment could not be built.
    #[error("CEL environment: {0}")]
    Environment(String),
}

/// Builds the CEL environment rules are compiled and run in: the standard
/// library plus the strings/lists/math extensions (Kubernetes' environment
/// has the strings extension; the other two are a harmless superset here).
pub(crate) fn new_env() -> Result<Arc<Env>, RuleError> {
    let mut env = Env::stdlib();
    for ext in [
        cel::extensions::strings,
        cel::extensions::lists,
        cel::extensions::math,
    ] {
        env.add_extension(ext)
            .map_err(|e| RuleError::Environment(e.to_string()))?;
    }
    Ok(Arc::new(env))
}

/// `reason` of a rule: the type of the field error its failure produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RuleReason {
    Invalid,
    Forbidden,
    Required,
    Duplicate,
}

/// Lets a rule's `fieldPath` be checked against the schema node it sits on.
pub(crate) trait FieldPathSchema {
    /// Whether the node declares `properties`.
    fn has_properties(&self) -> bool;
    /// The schema of a declared property.
    fn property(&self, name: &str) -> Option<&Self>;
    /// The `additionalProperties` schema, if any.
    fn additional(&self) -> Option<&Self>;
}

/// One compiled `x-kubernetes-validations` entry.
#[derive(Debug)]
pub(crate) struct CompiledRule {
    rule: String,
    message: Option<String>,
    message_expression: Option<Program>,
    reason: RuleReason,
    field_path: Option<String>,
    uses_old_self: bool,
    program: Program,
}

/// The result of running one rule.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
    /// The rule held.
    Pass,
    /// A transition rule without an old value: not evaluated.
    Skipped,
    /// The rule evaluated to something other than `true`.
    Fail {
        detail: String,
        reason: RuleReason,
        /// Normalized `fieldPath` to append to the node's path.
        field_path: Option<String>,
        /// Transition rules are never ratcheted.
        uses_old_self: bool,
    },
    /// The rule could not be evaluated (no such key, overflow, ...).
    Error(String),
}

impl CompiledRule {
    /// Compiles one rule entry found on `node`.
    pub(crate) fn compile<S: FieldPathSchema>(
        raw: &Json,
        env: &Env,
        node: &S,
    ) -> Result<Self, RuleError> {
        let rule = raw
            .get("rule")
            .and_then(Json::as_str)
            .filter(|r| !r.trim().is_empty())
            .ok_or(RuleError::MissingRule)?;
        let text = |k: &str| raw.get(k).and_then(Json::as_str).map(str::trim);
        let program = checked_compile(env, rule).map_err(|message| RuleError::Compile {
            rule: rule.to_string(),
            message,
        })?;
        let uses_old_self = free_idents(&program).iter().any(|(_, n)| n == "oldSelf");
        let message_expression = match text("messageExpression").filter(|m| !m.is_empty()) {
            None => None,
            Some(expr) => Some(checked_compile(env, expr).map_err(|message| {
                RuleError::MessageExpression {
                    expression: expr.to_string(),
                    message,
                }
            })?),
        };
        let reason = match text("reason") {
            None | Some("FieldValueInvalid") => RuleReason::Invalid,
            Some("FieldValueForbidden") => RuleReason::Forbidden,
            Some("FieldValueRequired") => RuleReason::Required,
            Some("FieldValueDuplicate") => RuleReason::Duplicate,
            Some(other) => return Err(RuleError::Reason(other.to_string())),
        };
        let field_path =
            match text("fieldPath").filter(|p| !p.is_empty()) {
                None => None,
                Some(fp) => Some(normalize_field_path(fp, node).map_err(|message| {
                    RuleError::FieldPath {
                        field_path: fp.to_string(),
                        message,
                    }
                })?),
            };
        Ok(CompiledRule {
            rule: rule.to_string(),
            message: text("message")
                .filter(|m| !m.is_empty())
                .map(str::to_string),
            message_expression,
            reason,
            field_path,
            uses_old_self,
            program,
        })
    }

    /// Whether the rule is a transition rule (it mentions `oldSelf`).
    pub(crate) fn uses_old_self(&self) -> bool {
        self.uses_old_self
    }

    /// `ruleErrorString`: the message if there is one, else the rule.
    fn error_string(&self) -> &str {
        self.message.as_deref().unwrap_or(self.rule.trim())
    }

    /// Runs the rule against `self` (and `oldSelf`, for transition rules).
    pub(crate) fn evaluate(
        &self,
        env: &Arc<Env>,
        this: &cel::Value,
        old: Option<&cel::Value>,
    ) -> Outcome {
        if self.uses_old_self && old.is_none() {
            // Transition rules only run when there is an old value to compare.
            return Outcome::Skipped;
        }
        let mut ctx = Context::with_env(Arc::clone(env));
        ctx.add_variable_from_value("self", this.clone());
        if let Some(old) = old {
            ctx.add_variable_from_value("oldSelf", old.clone());
        }
        match self.program.execute(&ctx) {
            Ok(cel::Value::Bool(true)) => Outcome::Pass,
            Ok(_) => Outcome::Fail {
                detail: self.failure_detail(&ctx),
                reason: self.reason,
                field_path: self.field_path.clone(),
                uses_old_self: self.uses_old_self,
            },
            Err(err) => Outcome::Error(match runtime_error(&err) {
                None => format!(
                    "'no such overload': call arguments did not match a supported operator, \
                     function or macro signature for rule: {}",
                    self.error_string()
                ),
                Some(msg) => format!("{msg} evaluating rule: {}", self.error_string()),
            }),
        }
    }

    /// The message of a failed rule: `messageExpression` when it yields a
    /// usable string, else `message`, else `failed rule: <rule>`.
    fn failure_detail(&self, ctx: &Context) -> String {
        if let Some(expr) = &self.message_expression {
            // The apiserver silently falls back when the expression errors,
            // is not a string, is blank, too long (5 KiB) or multi-line.
            if let Ok(cel::Value::String(s)) = expr.execute(ctx) {
                let s = s.trim();
                if !s.is_empty() && s.len() <= 5 * 1024 && !s.contains('\n') {
                    return s.to_string();
                }
            }
        }
        match &self.message {
            Some(m) => m.clone(),
            None => format!("failed rule: {}", self.rule.trim()),
        }
    }
}

/// cel-go's wording of a runtime error; `None` for overload errors, which
/// the apiserver reports with a message of their own.
fn runtime_error(err: &ExecutionError) -> Option<String> {
    Some(match err {
        ExecutionError::NoSuchKey(k) => format!("no such key: {k}"),
        ExecutionError::IndexOutOfBounds(i) => format!("index out of bounds: {}", cel_display(i)),
        ExecutionError::DivisionByZero(_) => "division by zero".to_string(),
        ExecutionError::RemainderByZero(_) => "modulus by zero".to_string(),
        ExecutionError::Overflow(..) => "integer overflow".to_string(),
        ExecutionError::UndeclaredReference(n) => format!("undeclared reference to '{n}'"),
        ExecutionError::FunctionError { message, .. } => message.clone(),
        ExecutionError::NoSuchOverload(_)
        | ExecutionError::UnsupportedBinaryOperator(..)
        | ExecutionError::ValuesNotComparable(..)
        | ExecutionError::UnexpectedType { .. } => return None,
        other => other.to_string(),
    })
}

fn cel_display(v: &cel::Value) -> String {
    match v {
        cel::Value::Int(i) => i.to_string(),
        cel::Value::UInt(u) => u.to_string(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Flat(Vec<&'static str>);
    impl FieldPathSchema for Flat {
        fn has_properties(&self) -> bool {
            !self.0.is_empty()
        }
        fn property(&self, name: &str) -> Option<&Self> {
            self.0.contains(&name).then_some(self)
        }
        fn additional(&self) -> Option<&Self> {
            None
        }
    }

    fn compile(raw: Json) -> Result<CompiledRule, RuleError> {
        let env = new_env().unwrap();
        CompiledRule::compile(&raw, &env, &Flat(vec!["values", "replicas"]))
    }

    fn run(rule: &str, this: Json, old: Option<Json>) -> Outcome {
        let env = new_env().unwrap();
        let r = CompiledRule::compile(&json!({ "rule": rule }), &env, &Flat(vec![])).unwrap();
        let old = old.map(|o| to_cel(&o, &Shape::Dyn));
        r.evaluate(&env, &to_cel(&this, &Shape::Dyn), old.as_ref())
    }

    #[test]
    fn macros_and_string_functions_work() {
        let this = json!({"values": ["DCA", "DCB"], "unitReplicas": {"DCA": 1}});
        for rule in [
            "self.values.all(v, self.values.exists_one(w, w == v))",
            "!has(self.unitReplicas) || self.unitReplicas.all(k, k in self.values)",
            "self.values.exists(v, v.startsWith('DC') && v.endsWith('A') && v.contains('C'))",
            "self.values.map(v, v.lowerAscii()).filter(v, v.matches('^dc[ab]$')).size() == 2",
            "size(self.values) == 2 && 'DCA' in self.values",
        ] {
            assert_eq!(run(rule, this.clone(), None), Outcome::Pass, "{rule}");
        }
    }

    #[test]
    fn transition_rules_need_an_old_value() {
        let rule = "self.replicas >= oldSelf.replicas";
        assert_eq!(run(rule, json!({"replicas": 1}), None), Outcome::Skipped);
        assert_eq!(
            run(rule, json!({"replicas": 3}), Some(json!({"replicas": 2}))),
            Outcome::Pass
        );
        assert!(matches!(
            run(rule, json!({"replicas": 1}), Some(json!({"replicas": 2}))),
            Outcome::Fail {
                uses_old_self: true,
                ..
            }
        ));
    }

    #[test]
    fn runtime_errors_read_like_cel_go() {
        assert_eq!(
            run("self.foo > 0", json!({}), None),
            Outcome::Error("no such key: foo evaluating rule: self.foo > 0".into())
        );
        assert_eq!(
            run("self.x > 'a'", json!({"x": 1}), None),
            Outcome::Error(
                "'no such overload': call arguments did not match a supported operator, \
                 function or macro signature for rule: self.x > 'a'"
                    .into()
            )
        );
    }

    #[test]
    fn compile_errors() {
        assert!(matches!(
            compile(json!({"rule": "self.x >"})),
            Err(RuleError::Compile { .. })
        ));
        let err = compile(json!({"rule": "foo == 1"}))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ERROR: <input>:1:1: undeclared reference to 'foo'"),
            "{err}"
        );
        assert!(compile(json!({"rule": "self.values.all(v, v != '')"})).is_ok());
        assert!(matches!(
            compile(json!({"rule": ""})),
            Err(RuleError::MissingRule)
        ));
        assert!(matches!(
            compile(json!({"rule": "true", "reason": "Nope"})),
            Err(RuleError::Reason(_))
        ));
        assert!(matches!(
            compile(json!({"rule": "true", "fieldPath": ".nope"})),
            Err(RuleError::FieldPath { .. })
        ));
        let ok = compile(json!({"rule": "true", "fieldPath": ".values"})).unwrap();
        assert_eq!(ok.field_path.as_deref(), Some("values"));
    }

    #[test]
    fn message_expression_falls_back_when_unusable() {
        let env = new_env().unwrap();
        let node = Flat(vec![]);
        let rule = |raw: Json| CompiledRule::compile(&raw, &env, &node).unwrap();
        let this = to_cel(&json!({"n": 2}), &Shape::Dyn);
        let detail = |r: CompiledRule| match r.evaluate(&env, &this, None) {
            Outcome::Fail { detail, .. } => detail,
            other => panic!("{other:?}"),
        };
        let expr = "'n is ' + string(self.n)";
        assert_eq!(
            detail(rule(
                json!({"rule": "self.n > 5", "messageExpression": expr})
            )),
            "n is 2"
        );
        let bad = json!({"rule": "self.n > 5", "message": "m", "messageExpression": "self.n"});
        assert_eq!(detail(rule(bad)), "m");
        assert_eq!(
            detail(rule(json!({"rule": " self.n > 5 "}))),
            "failed rule: self.n > 5"
        );
    }
}
