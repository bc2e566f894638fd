//! STUB: replaced by the real server-side-apply module.
use serde_json::Value;
#[derive(Debug, Clone, PartialEq)]
pub enum ListType { Map(Vec<String>), Set, Atomic }
pub trait ListTypes { fn list_type(&self, path: &[String]) -> ListType; }
pub struct BuiltinListTypes;
impl ListTypes for BuiltinListTypes { fn list_type(&self, _path: &[String]) -> ListType { ListType::Atomic } }
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
  #[error("{message}")] Conflict { message: String, conflicts: Vec<FieldConflict> },
  #[error("{0}")] Invalid(String),
}
#[derive(Debug)]
pub struct FieldConflict { pub manager: String, pub field: String }
#[allow(clippy::too_many_arguments)]
pub fn server_side_apply(live: Option<&Value>, applied: &Value, _manager: &str, _subresource: Option<&str>, _force: bool, _api_version: &str, _now: &str, _lists: &dyn ListTypes) -> Result<Value, ApplyError> {
    let mut base = live.cloned().unwrap_or(Value::Object(Default::default()));
    json_patch::merge(&mut base, applied);
    Ok(base)
}
pub fn record_update(_old: Option<&Value>, new: &Value, _manager: &str, _subresource: Option<&str>, _api_version: &str, _now: &str, _lists: &dyn ListTypes) -> Value { new.clone() }
