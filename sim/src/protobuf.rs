//! Request bodies in Kubernetes' protobuf encoding, for the few kinds kubectl sends that way.
//!
//! kubectl's typed clients (`kubectl auth can-i`, `kubectl create token`, `kubectl auth whoami`)
//! POST built-in kinds as `application/vnd.kubernetes.protobuf`: the magic `k8s\0`, then a
//! `runtime.Unknown` {typeMeta = 1 {apiVersion = 1, kind = 2}, raw = 2} whose raw bytes are the
//! object's own message. Only the spec fields the simulator reads are decoded; responses stay
//! JSON, which client-go decodes by the response's Content-Type.
//! https://kubernetes.io/docs/reference/using-api/api-concepts/#protobuf-encoding

use serde_json::{Map, Value, json};

pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";
const MAGIC: &[u8] = b"k8s\0";

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ProtoError {
    #[error("missing the k8s protobuf magic prefix")]
    Magic,
    #[error("truncated or malformed protobuf")]
    Malformed,
    #[error("protobuf bodies of kind {0:?} are not supported by this server; send JSON")]
    Unsupported(String),
}

#[derive(Debug, Clone, Copy)]
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

fn varint(buf: &[u8], pos: &mut usize) -> Result<u64, ProtoError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *buf.get(*pos).ok_or(ProtoError::Malformed)?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(ProtoError::Malformed)
}

fn fields(buf: &[u8]) -> Result<Vec<(u64, Field<'_>)>, ProtoError> {
    let mut out = vec![];
    let mut pos = 0;
    while pos < buf.len() {
        let key = varint(buf, &mut pos)?;
        let field = match key & 7 {
            0 => Field::Varint(varint(buf, &mut pos)?),
            1 | 5 => {
                pos += if key & 7 == 1 { 8 } else { 4 };
                Field::Fixed
            }
            2 => {
                let len =
                    usize::try_from(varint(buf, &mut pos)?).map_err(|_| ProtoError::Malformed)?;
                let end = pos.checked_add(len).ok_or(ProtoError::Malformed)?;
                let bytes = buf.get(pos..end).ok_or(ProtoError::Malformed)?;
                pos = end;
                Field::Bytes(bytes)
            }
            _ => return Err(ProtoError::Malformed),
        };
        out.push((key >> 3, field));
    }
    if pos > buf.len() {
        return Err(ProtoError::Malformed);
    }
    Ok(out)
}

fn bytes_of<'a, 'f>(fs: &'f [(u64, Field<'a>)], n: u64) -> impl Iterator<Item = &'a [u8]> + 'f {
    fs.iter().filter_map(move |(k, f)| match f {
        Field::Bytes(b) if *k == n => Some(*b),
        _ => None,
    })
}

fn message<'a>(fs: &[(u64, Field<'a>)], n: u64) -> Result<Vec<(u64, Field<'a>)>, ProtoError> {
    bytes_of(fs, n).last().map_or(Ok(vec![]), fields)
}

/// The named string fields of a message, as a JSON object (absent fields left out).
fn strings(fs: &[(u64, Field<'_>)], names: &[(u64, &str)]) -> Value {
    let mut out = Map::new();
    for (n, name) in names {
        if let Some(b) = bytes_of(fs, *n).last() {
            out.insert((*name).into(), json!(String::from_utf8_lossy(b)));
        }
    }
    Value::Object(out)
}

/// Decodes a protobuf request body into the JSON object it stands for.
pub fn to_json(body: &[u8]) -> Result<Value, ProtoError> {
    let unknown = fields(body.strip_prefix(MAGIC).ok_or(ProtoError::Magic)?)?;
    let type_meta = strings(&message(&unknown, 1)?, &[(1, "apiVersion"), (2, "kind")]);
    let kind = type_meta["kind"].as_str().unwrap_or("").to_string();
    let object = message(&unknown, 2)?;
    let spec = message(&object, 2)?;
    let spec = match kind.as_str() {
        "SelfSubjectAccessReview" => {
            let mut out = Map::new();
            let resource = message(&spec, 1)?;
            if !resource.is_empty() {
                let names = [
                    (1, "namespace"),
                    (2, "verb"),
                    (3, "group"),
                    (4, "version"),
                    (5, "resource"),
                    (6, "subresource"),
                    (7, "name"),
                ];
                out.insert("resourceAttributes".into(), strings(&resource, &names));
            }
            let non_resource = message(&spec, 2)?;
            if !non_resource.is_empty() {
                out.insert(
                    "nonResourceAttributes".into(),
                    strings(&non_resource, &[(1, "path"), (2, "verb")]),
                );
            }
            Value::Object(out)
        }
        "SelfSubjectRulesReview" => strings(&spec, &[(1, "namespace")]),
        "SelfSubjectReview" => json!({}),
        "TokenRequest" => {
            let audiences: Vec<String> = bytes_of(&spec, 1)
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .collect();
            let mut out = json!({"audiences": audiences});
            if let Some(seconds) = spec.iter().rev().find_map(|(k, f)| match f {
                Field::Varint(v) if *k == 4 => Some(*v),
                _ => None,
            }) {
                out["expirationSeconds"] = json!(seconds as i64);
            }
            let bound = message(&spec, 3)?;
            if !bound.is_empty() {
                out["boundObjectRef"] = strings(
                    &bound,
                    &[(1, "kind"), (2, "apiVersion"), (3, "name"), (4, "uid")],
                );
            }
            out
        }
        _ => return Err(ProtoError::Unsupported(kind)),
    };
    let mut object = type_meta;
    object["spec"] = spec;
    Ok(object)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(n: u64, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![((n << 3) | 2) as u8, bytes.len() as u8];
        out.extend_from_slice(bytes);
        out
    }

    fn envelope(kind: &str, object: &[u8]) -> Vec<u8> {
        let type_meta = [
            field(1, b"authorization.k8s.io/v1"),
            field(2, kind.as_bytes()),
        ]
        .concat();
        [MAGIC.to_vec(), field(1, &type_meta), field(2, object)].concat()
    }

    #[test]
    fn decodes_an_access_review_as_kubectl_sends_it() {
        let attrs = [field(1, b"apps"), field(2, b"create"), field(5, b"pods")].concat();
        let object = field(2, &field(1, &attrs));
        let v = to_json(&envelope("SelfSubjectAccessReview", &object)).unwrap();
        assert_eq!(v["kind"], "SelfSubjectAccessReview");
        assert_eq!(
            v["spec"]["resourceAttributes"],
            json!({"namespace": "apps", "verb": "create", "resource": "pods"})
        );
    }

    #[test]
    fn decodes_a_token_request_expiration() {
        let spec = [field(1, b"api"), vec![(4 << 3), 0xd8, 0x04]].concat();
        let v = to_json(&envelope("TokenRequest", &field(2, &spec))).unwrap();
        assert_eq!(v["spec"]["expirationSeconds"], 600);
        assert_eq!(v["spec"]["audiences"], json!(["api"]));
    }

    #[test]
    fn rejects_other_kinds_and_garbage() {
        assert_eq!(to_json(b"{}"), Err(ProtoError::Magic));
        assert!(
            matches!(to_json(&envelope("Pod", &[])), Err(ProtoError::Unsupported(k)) if k == "Pod")
        );
        assert_eq!(
            to_json(&[MAGIC, &[0x0a, 0x10]].concat()),
            Err(ProtoError::Malformed)
        );
    }
}
