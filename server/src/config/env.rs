//! `${VAR}` and `${VAR:-default}` expansion, applied to string scalars of the parsed
//! YAML tree (never to the raw text, so a value containing `#` or `: ` cannot change
//! the document's structure). Values are never logged.

use yaml_serde::Value;

/// The secrets whose documented default is their environment variable: a file
/// that leaves one out gets `${VAR:-}`, as if it had written it, so the variable
/// is read (through the same `lookup`) instead of silently ignored.
const SECRET_DEFAULTS: [(&str, &str); 3] = [
    ("management_token", "${PALISADE_MANAGEMENT_TOKEN:-}"),
    ("jwt_secret", "${PALISADE_JWT_SECRET:-}"),
    ("encryption_key", "${PALISADE_ENCRYPTION_KEY:-}"),
];

/// Adds the absent [`SECRET_DEFAULTS`] under `auth` (creating the section when
/// the file has none), before expansion. A key that is present, even empty,
/// stays as written; an `auth` that is not a mapping is left for the
/// deserializer to report.
pub fn fill_secret_defaults(tree: &mut Value) {
    let Value::Mapping(root) = tree else {
        return;
    };
    let auth = root
        .entry(Value::String("auth".to_owned()))
        .or_insert_with(|| Value::Mapping(Default::default()));
    let Value::Mapping(auth) = auth else {
        return;
    };
    for (key, default) in SECRET_DEFAULTS {
        auth.entry(Value::String(key.to_owned()))
            .or_insert_with(|| Value::String(default.to_owned()));
    }
}

/// Expands every string scalar in place. Returns the path and name of each variable
/// that is unset and has no default, so start-up can name them all at once.
pub fn expand_tree(
    value: &mut Value,
    path: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    missing: &mut Vec<String>,
) {
    match value {
        Value::String(s) => match expand_str(s, lookup) {
            Ok(expanded) => *s = expanded,
            Err(vars) => {
                for var in vars {
                    missing.push(format!("{path}: environment variable {var} is not set"));
                }
            }
        },
        Value::Sequence(seq) => {
            for (i, item) in seq.iter_mut().enumerate() {
                expand_tree(item, &format!("{path}[{i}]"), lookup, missing);
            }
        }
        Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                let key = k.as_str().unwrap_or("?");
                let child = if path.is_empty() {
                    key.to_owned()
                } else {
                    format!("{path}.{key}")
                };
                expand_tree(v, &child, lookup, missing);
            }
        }
        Value::Tagged(t) => expand_tree(&mut t.value, path, lookup, missing),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// Expands one string; `$$` is a literal `$`. Errors with the unset variable names.
pub fn expand_str(
    input: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, Vec<String>> {
    let mut out = String::with_capacity(input.len());
    let mut missing = Vec::new();
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('{') {
            let Some(end) = body.find('}') else {
                out.push_str(&rest[pos..]);
                rest = "";
                break;
            };
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            match (lookup(name), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => missing.push(name.to_owned()),
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    if missing.is_empty() {
        Ok(out)
    } else {
        Err(missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "SET" => Some("value".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_set_default_and_literal() {
        assert_eq!(expand_str("a-${SET}-b", &env).unwrap(), "a-value-b");
        assert_eq!(expand_str("${UNSET:-dflt}", &env).unwrap(), "dflt");
        assert_eq!(expand_str("${UNSET:-}", &env).unwrap(), "");
        assert_eq!(expand_str("${EMPTY:-x}", &env).unwrap(), "");
        assert_eq!(expand_str("cost $$5 $x", &env).unwrap(), "cost $5 $x");
    }

    #[test]
    fn unset_without_default_names_the_variable() {
        assert_eq!(
            expand_str("${NOPE}", &env).unwrap_err(),
            vec!["NOPE".to_owned()]
        );
    }
}
