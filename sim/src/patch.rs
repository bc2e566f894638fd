//! STUB: replaced by the real patch module.
use serde_json::Value;
#[derive(Debug, thiserror::Error)]
pub enum PatchError { #[error("{0}")] Malformed(String), #[error("{0}")] Unprocessable(String) }
pub fn json_patch(doc: &Value, patch: &Value) -> Result<Value, PatchError> {
    let p: json_patch::Patch = serde_json::from_value(patch.clone()).map_err(|e| PatchError::Malformed(e.to_string()))?;
    let mut d = doc.clone();
    json_patch::patch(&mut d, &p).map_err(|e| PatchError::Unprocessable(e.to_string()))?;
    Ok(d)
}
pub fn merge_patch(doc: &Value, patch: &Value) -> Value { let mut d = doc.clone(); json_patch::merge(&mut d, patch); d }
pub fn strategic_merge_patch(doc: &Value, patch: &Value, _kind: &str) -> Result<Value, PatchError> { Ok(merge_patch(doc, patch)) }
