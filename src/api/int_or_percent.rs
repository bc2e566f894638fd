//! Counts given as an integer or a percent string ("25%"), like Kubernetes' IntOrString, with
//! schemas that reject negative numbers and percents outside 0-100% at the API.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// A non-negative count or a percent of a total: `3` or `"25%"`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IntOrPercent {
    Int(i32),
    Percent(String),
}

impl Default for IntOrPercent {
    fn default() -> Self {
        IntOrPercent::Int(0)
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{0:?} is not a count or a percent like \"25%\"")]
pub struct BadIntOrPercent(pub String);

impl IntOrPercent {
    /// The value against `total`; percents round down (use [`Self::resolve_up`] to round up).
    pub fn resolve(&self, total: i32) -> Result<i32, BadIntOrPercent> {
        self.scaled(total, false)
    }

    /// Percents round up, as Kubernetes does for maxUnavailable-style budgets.
    pub fn resolve_up(&self, total: i32) -> Result<i32, BadIntOrPercent> {
        self.scaled(total, true)
    }

    fn scaled(&self, total: i32, up: bool) -> Result<i32, BadIntOrPercent> {
        match self {
            IntOrPercent::Int(n) => Ok(*n),
            IntOrPercent::Percent(s) => {
                let p: i64 = s
                    .strip_suffix('%')
                    .and_then(|n| n.trim().parse().ok())
                    .filter(|p| (0..=100).contains(p))
                    .ok_or_else(|| BadIntOrPercent(s.clone()))?;
                let t = i64::from(total.max(0));
                let v = if up { (p * t + 99) / 100 } else { p * t / 100 };
                Ok(i32::try_from(v).unwrap_or(i32::MAX))
            }
        }
    }

    /// A budget of pods that may be down at once: the value against `total` (percents round
    /// down, as Kubernetes does for maxUnavailable), at least 1, since with no surge a budget of
    /// 0 would never let a pod be updated. A malformed value (the schema rejects those) counts 1.
    pub fn budget(&self, total: i32) -> i32 {
        self.resolve(total).unwrap_or(1).max(1)
    }

    pub fn is_percent(&self) -> bool {
        matches!(self, IntOrPercent::Percent(_))
    }
}

impl std::fmt::Display for IntOrPercent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IntOrPercent::Int(n) => write!(f, "{n}"),
            IntOrPercent::Percent(s) => write!(f, "{s}"),
        }
    }
}

impl JsonSchema for IntOrPercent {
    fn schema_name() -> Cow<'static, str> {
        "IntOrPercent".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        // A CEL rule rather than anyOf branches: structural schemas may not type anyOf branches,
        // and untyped `minimum`/`pattern` branches would each accept the other kind of value.
        // https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/#int-or-string
        json_schema!({
            "x-kubernetes-int-or-string": true,
            "x-kubernetes-validations": [{
                "rule": "type(self) == string ? self.matches('^(100|[1-9]?[0-9])%$') : self >= 0",
                "message": "must be a count >= 0 or a percent from 0% to 100%, like 3 or \"25%\""
            }]
        })
    }

    fn inline_schema() -> bool {
        true
    }
}

/// Like [`IntOrPercent`] but at least 1 (or 1%): a batch of zero pods would never finish.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PositiveIntOrPercent(pub IntOrPercent);

impl JsonSchema for PositiveIntOrPercent {
    fn schema_name() -> Cow<'static, str> {
        "PositiveIntOrPercent".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "x-kubernetes-int-or-string": true,
            "x-kubernetes-validations": [{
                "rule": "type(self) == string ? self.matches('^(100|[1-9][0-9]?)%$') : self >= 1",
                "message": "must be a count >= 1 or a percent from 1% to 100%, like 4 or \"25%\""
            }]
        })
    }

    fn inline_schema() -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves() {
        assert_eq!(IntOrPercent::Int(3).resolve(10), Ok(3));
        assert_eq!(IntOrPercent::Percent("30%".into()).resolve(10), Ok(3));
        assert_eq!(IntOrPercent::Percent("25%".into()).resolve(10), Ok(2));
        assert_eq!(IntOrPercent::Percent("25%".into()).resolve_up(10), Ok(3));
        assert!(IntOrPercent::Percent("120%".into()).resolve(10).is_err());
    }

    #[test]
    fn serde_forms() {
        let v: IntOrPercent = serde_json::from_str("\"60%\"").unwrap();
        assert_eq!(v, IntOrPercent::Percent("60%".into()));
        let v: IntOrPercent = serde_json::from_str("4").unwrap();
        assert_eq!(v, IntOrPercent::Int(4));
    }
}
