#![allow(clippy::unwrap_used, clippy::expect_used)]

//! `server/src` is layered and every import points down (docs/architecture.md):
//!
//! | level | modules |
//! |---|---|
//! | entry | `cli`, `app` (and `main.rs`, outside the library) |
//! | http | `http` (routes, handlers, middleware, envelopes from domain errors) |
//! | state | `state` (`AppState`: handles only) |
//! | domain | `actors`, `providers`, `rate_limit`, `sessions` |
//! | data | `service`, `db`, `preflight`, `tls` |
//! | base | `error`, `config`, `telemetry`, `storage` |
//! | core | `ids`, `time`, `secret`, `policy`, `crypto`, `net`, `usage`, `records`, `limits`, `metrics` |
//!
//! A module may mention a module of its own level or a lower one, and the modules
//! may not mention one another in a circle (within a level either). This test
//! reads every `crate::…` path in the sources (tests included: a test is code
//! someone reads too), so it fails when an upward mention is added.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const LEVELS: &[(&str, &[&str])] = &[
    (
        "core",
        &[
            "ids", "time", "secret", "policy", "crypto", "net", "usage", "records", "limits",
            "metrics",
        ],
    ),
    ("base", &["error", "config", "telemetry", "storage"]),
    ("data", &["service", "db", "preflight", "tls"]),
    ("domain", &["actors", "providers", "rate_limit", "sessions"]),
    ("state", &["state"]),
    ("http", &["http"]),
    ("entry", &["cli", "app"]),
];

fn level_of(module: &str) -> Option<usize> {
    LEVELS.iter().position(|(_, mods)| mods.contains(&module))
}

fn src() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, with its top-level module's name.
fn files(dir: &Path, top: Option<&str>, out: &mut Vec<(String, std::path::PathBuf)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let module = top.map(str::to_owned).unwrap_or_else(|| name.clone());
        if path.is_dir() {
            files(&path, Some(&module), out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push((module, path));
        }
    }
}

/// The top-level modules a source mentions as `crate::name` or in
/// `use crate::{a, b::c}`.
fn mentions(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let ident = |s: &str| {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect::<String>()
    };
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Only the top level of the group names modules.
            let mut depth = 0;
            let mut start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if start && !c.is_whitespace() => {
                        start = false;
                        out.insert(ident(&group[j..]));
                    }
                    _ => {}
                }
            }
        } else {
            out.insert(ident(rest));
        }
    }
    out.retain(|m| !m.is_empty());
    out
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut all = Vec::new();
    files(&src(), None, &mut all);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, path) in all {
        if module == "main" || module == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let entry = graph.entry(module.clone()).or_default();
        entry.extend(mentions(&text).into_iter().filter(|m| *m != module));
    }
    graph
}

#[test]
fn every_module_has_a_level() {
    let graph = graph();
    let missing: Vec<_> = graph.keys().filter(|m| level_of(m).is_none()).collect();
    assert!(missing.is_empty(), "modules without a level: {missing:?}");
}

#[test]
fn every_import_points_down() {
    let mut upward = Vec::new();
    for (module, targets) in graph() {
        let Some(from) = level_of(&module) else {
            continue;
        };
        for target in targets {
            match level_of(&target) {
                Some(to) if to > from => upward.push(format!(
                    "{module} ({}) mentions {target} ({})",
                    LEVELS[from].0, LEVELS[to].0
                )),
                _ => {}
            }
        }
    }
    assert!(upward.is_empty(), "upward imports:\n{}", upward.join("\n"));
}

#[test]
fn no_two_modules_import_each_other_in_a_circle() {
    let graph = graph();
    // Depth-first search for a back edge.
    fn visit<'a>(
        node: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<String> {
        if let Some(i) = path.iter().position(|n| *n == node) {
            return Some(format!("{} -> {node}", path[i..].join(" -> ")));
        }
        if done.contains(node) {
            return None;
        }
        path.push(node);
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node);
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, &graph, &mut Vec::new(), &mut done) {
            panic!("import circle: {cycle}");
        }
    }
}

#[test]
fn the_reader_finds_grouped_and_nested_mentions() {
    let found = mentions("use crate::{a::{b, c}, d};\nfn f() { crate::e::g(); }");
    assert_eq!(
        found,
        ["a", "d", "e"].into_iter().map(str::to_owned).collect()
    );
}

/// What the domain must not mention: the HTTP error envelopes and actix-web's
/// request and response types. Domain code returns its own errors, which the
/// http layer maps (docs/architecture.md, "Errors").
const HTTP_ONLY: &[&str] = &[
    "ProxyError",
    "ManageError",
    "HttpRequest",
    "HttpResponse",
    "ServiceRequest",
];

/// `(file, name)` for every mention of an [`HTTP_ONLY`] name in a file of the
/// domain level.
fn http_mentions_in_domain() -> Vec<(String, &'static str)> {
    let domain = LEVELS
        .iter()
        .find(|(name, _)| *name == "domain")
        .map(|(_, mods)| *mods)
        .unwrap();
    let mut all = Vec::new();
    files(&src(), None, &mut all);
    let mut found = Vec::new();
    for (module, path) in all {
        if !domain.contains(&module.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for name in HTTP_ONLY {
            if words(&text).any(|w| w == *name) {
                let file = path.strip_prefix(src()).unwrap().display().to_string();
                found.push((file, *name));
            }
        }
    }
    found
}

/// The identifiers of a source, so `HttpResponseBuilder` is not `HttpResponse`.
fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
}

#[test]
fn domain_code_returns_domain_errors() {
    let found = http_mentions_in_domain();
    assert!(
        found.is_empty(),
        "domain files mention HTTP types (return a domain error and map it in http/):\n{}",
        found
            .iter()
            .map(|(file, name)| format!("{file}: {name}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn the_word_reader_matches_whole_identifiers() {
    let text = "fn f(r: &actix_web::HttpResponseBuilder) -> Result<(), crate::error::ProxyError>";
    let w: Vec<_> = words(text).collect();
    assert!(w.contains(&"ProxyError"));
    assert!(!w.contains(&"HttpResponse"));
}
