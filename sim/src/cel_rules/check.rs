//! Compile-time checks the apiserver makes when a CRD is written and that
//! cel-rust does not: free identifiers (cel-go's type checker rejects
//! anything but `self`/`oldSelf`) and `fieldPath` resolution.

use super::FieldPathSchema;
use cel::common::ast::{EntryExpr, Expr, IdedExpr};
use cel::{Env, Program};

/// Parses `source` and rejects identifiers other than `self`, `oldSelf`,
/// comprehension variables and type names, as the apiserver's type checker
/// does when a CRD is written (cel-rust itself would only fail at runtime).
pub(super) fn checked_compile(env: &Env, source: &str) -> Result<Program, String> {
    let program = env.compile(source).map_err(|e| e.to_string())?;
    const KNOWN: &[&str] = &[
        "self",
        "oldSelf",
        "int",
        "uint",
        "double",
        "bool",
        "string",
        "bytes",
        "list",
        "map",
        "null_type",
        "type",
        "dyn",
        "optional",
        "math",
        "strings",
        "base64",
        "lists",
    ];
    if let Some((id, name)) = free_idents(&program)
        .into_iter()
        .find(|(_, n)| !KNOWN.contains(&n.as_str()))
    {
        let (line, col) = program
            .source_info()
            .offset_for(id)
            .map(|(start, _)| line_col(source, start as usize))
            .unwrap_or((1, 1));
        return Err(format!(
            "ERROR: <input>:{line}:{col}: undeclared reference to '{name}' (in container '')"
        ));
    }
    Ok(program)
}

fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let before: Vec<char> = source.chars().take(offset).collect();
    let line = before.iter().filter(|c| **c == '\n').count() + 1;
    let col = before.iter().rev().take_while(|c| **c != '\n').count() + 1;
    (line, col)
}

/// Identifiers not bound by a macro's comprehension, with their node ids.
pub(super) fn free_idents(program: &Program) -> Vec<(u64, String)> {
    fn walk(e: &IdedExpr, bound: &mut Vec<String>, out: &mut Vec<(u64, String)>) {
        match &e.expr {
            Expr::Ident(n) if !bound.contains(n) => out.push((e.id, n.clone())),
            Expr::Select(s) => walk(&s.operand, bound, out),
            Expr::Call(c) => {
                if let Some(t) = &c.target {
                    walk(t, bound, out);
                }
                c.args.iter().for_each(|a| walk(a, bound, out));
            }
            Expr::List(l) => l.elements.iter().for_each(|x| walk(x, bound, out)),
            Expr::Map(m) => m.entries.iter().for_each(|x| entry(&x.expr, bound, out)),
            Expr::Struct(s) => s.entries.iter().for_each(|x| entry(&x.expr, bound, out)),
            Expr::Comprehension(c) => {
                walk(&c.iter_range, bound, out);
                walk(&c.accu_init, bound, out);
                let depth = bound.len();
                bound.push(c.iter_var.clone());
                bound.extend(c.iter_var2.iter().cloned());
                bound.push(c.accu_var.clone());
                walk(&c.loop_cond, bound, out);
                walk(&c.loop_step, bound, out);
                walk(&c.result, bound, out);
                bound.truncate(depth);
            }
            _ => {}
        }
    }
    fn entry(e: &EntryExpr, bound: &mut Vec<String>, out: &mut Vec<(u64, String)>) {
        match e {
            EntryExpr::MapEntry(m) => {
                walk(&m.key, bound, out);
                walk(&m.value, bound, out);
            }
            EntryExpr::StructField(f) => walk(&f.value, bound, out),
        }
    }
    let mut out = Vec::new();
    walk(program.expression(), &mut Vec::new(), &mut out);
    out
}

/// `ValidFieldPath`: `.a.b`, `.m['key']` must name fields of the schema.
/// Returns the path as `field.Path.String()` prints it (`a.b`, `m[key]`).
pub(super) fn normalize_field_path<S: FieldPathSchema>(
    path: &str,
    schema: &S,
) -> Result<String, String> {
    let mut out = String::new();
    let mut node = schema;
    let mut rest = path;
    while !rest.is_empty() {
        let (name, tail) = if let Some(r) = rest.strip_prefix("['") {
            let end = r
                .find("']")
                .ok_or("expected single quoted string and ']'")?;
            (
                r[..end].replace("\\'", "'").replace("\\\\", "\\"),
                &r[end + 2..],
            )
        } else if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            if end == 0 {
                return Err("unexpected end of JSON path".to_string());
            }
            (r[..end].to_string(), &r[end..])
        } else {
            return Err(format!("expected [ or . but got: {rest}"));
        };
        if node.has_properties() {
            node = node
                .property(&name)
                .ok_or("does not refer to a valid field")?;
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&name);
        } else if let Some(additional) = node.additional() {
            node = additional;
            out.push_str(&format!("[{name}]"));
        } else {
            return Err("does not refer to a valid field".to_string());
        }
        rest = tail;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Tree(Vec<(&'static str, Tree)>, Option<Box<Tree>>);
    impl FieldPathSchema for Tree {
        fn has_properties(&self) -> bool {
            !self.0.is_empty()
        }
        fn property(&self, name: &str) -> Option<&Self> {
            self.0.iter().find(|(k, _)| *k == name).map(|(_, t)| t)
        }
        fn additional(&self) -> Option<&Self> {
            self.1.as_deref()
        }
    }

    #[test]
    fn field_paths_normalize_like_field_path_strings() {
        let map = Tree(vec![], Some(Box::new(Tree(vec![], None))));
        let t = Tree(
            vec![
                ("a", Tree(vec![("b", Tree(vec![], None))], None)),
                ("m", map),
            ],
            None,
        );
        assert_eq!(normalize_field_path(".a.b", &t).as_deref(), Ok("a.b"));
        assert_eq!(
            normalize_field_path(".m['x.y']", &t).as_deref(),
            Ok("m[x.y]")
        );
        assert_eq!(normalize_field_path("['a'].b", &t).as_deref(), Ok("a.b"));
        assert!(normalize_field_path(".a.c", &t).is_err());
        assert!(normalize_field_path("a", &t).is_err());
    }

    #[test]
    fn free_identifiers_skip_macro_variables() {
        let env = Env::stdlib();
        let p = env
            .compile("self.all(x, x > oldSelf.size()) && [1].map(y, y)[0] == 1")
            .unwrap();
        let names: Vec<String> = free_idents(&p).into_iter().map(|(_, n)| n).collect();
        assert!(names.contains(&"self".to_string()) && names.contains(&"oldSelf".to_string()));
        assert!(!names.iter().any(|n| n == "x" || n == "y"), "{names:?}");
        let err = checked_compile(&env, "self.a &&\n  bogus").unwrap_err();
        assert!(
            err.starts_with("ERROR: <input>:2:3: undeclared reference to 'bogus'"),
            "{err}"
        );
    }
}
