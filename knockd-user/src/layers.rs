//! A host test of the crate's layout: its folders import one another one way only, and no
//! modules import each other in a circle (the README's "How it works" names the arrows).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

/// The folders (and root modules) each may import from, besides itself.
const ALLOWED: &[(&str, &[&str])] = &[
    ("clock", &[]),
    ("config", &[]),
    ("kernel", &["clock", "config"]),
    ("observe", &["clock", "config", "kernel"]),
    ("commands", &["clock", "config", "observe"]),
    ("fleet", &["clock", "config", "observe"]),
    ("daemon", &["clock", "config", "kernel", "observe", "commands", "fleet"]),
];

/// Every `.rs` file under `dir`, as (module path, text); `a/mod.rs` is module `a`.
fn modules(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            modules(root, &path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path.strip_prefix(root).unwrap().with_extension("");
            let name = rel.to_str().unwrap().replace('/', "::");
            let name = name.strip_suffix("::mod").unwrap_or(&name).to_owned();
            out.insert(name, std::fs::read_to_string(&path).unwrap());
        }
    }
}

/// The paths a use tree names: `a::{b, c::{d, e}}` gives `a::b`, `a::c::d`, `a::c::e`.
fn expand(prefix: &str, tree: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        out.push(format!("{prefix}{}", tree.split(" as ").next().unwrap_or(tree).trim()));
        return;
    };
    let head = format!("{prefix}{}", &tree[..open]);
    let inner = &tree[open + 1..tree.rfind('}').unwrap()];
    let (mut depth, mut start) = (0, 0);
    for (i, ch) in inner.char_indices() {
        match ch {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                expand(&head, &inner[start..i], out);
                start = i + 1;
            }
            _ => {}
        }
    }
    if !inner[start..].trim().is_empty() {
        expand(&head, &inner[start..], out);
    }
}

/// The `crate::` paths a module's code (its tests left out) names.
fn crate_paths(text: &str) -> Vec<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or(text);
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        if after.starts_with('{') {
            let end = after.find("};").unwrap();
            expand("", &after[..=end], &mut out);
            rest = &after[end..];
        } else {
            let end = after.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')).unwrap_or(after.len());
            out.push(after[..end].trim_end_matches(':').to_owned());
            rest = &after[end..];
        }
    }
    out
}

/// The module a path lands in: its longest prefix that is a module.
fn module_of<'a>(path: &str, modules: &'a BTreeMap<String, String>) -> Option<&'a str> {
    let mut segments: Vec<&str> = path.split("::").collect();
    while !segments.is_empty() {
        if let Some((name, _)) = modules.get_key_value(&segments.join("::")) {
            return Some(name);
        }
        segments.pop();
    }
    None
}

fn top(module: &str) -> &str {
    module.split("::").next().unwrap_or(module)
}

#[test]
fn folders_import_one_way_and_modules_in_no_circle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut mods = BTreeMap::new();
    modules(&root, &root, &mut mods);
    let mut edges: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (name, text) in &mods {
        for path in crate_paths(text) {
            if let Some(to) = module_of(&path, &mods).filter(|to| to != name) {
                edges.entry(name.as_str()).or_default().insert(to);
            }
        }
    }
    let mut wrong = Vec::new();
    for (from, tos) in &edges {
        let allowed = ALLOWED.iter().find(|(f, _)| *f == top(from)).map_or(&[][..], |(_, a)| *a);
        for to in tos {
            if top(to) != top(from) && !allowed.contains(&top(to)) {
                wrong.push(format!("{from} -> {to}"));
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the layers: {wrong:?}");
    // A circle: a module that reaches itself.
    for start in edges.keys() {
        let mut seen = BTreeSet::new();
        let mut todo: Vec<&str> = edges[start].iter().copied().collect();
        while let Some(m) = todo.pop() {
            assert_ne!(m, *start, "{start} imports itself through other modules");
            if seen.insert(m) {
                todo.extend(edges.get(m).into_iter().flatten());
            }
        }
    }
    assert!(edges.len() > 20, "the test reads the sources: {} modules import others", edges.len());
}

#[test]
fn use_trees_expand() {
    let mut out = Vec::new();
    expand("", "{a::b, c::{d, e::F}, g as h}", &mut out);
    assert_eq!(out, ["a::b", "c::d", "c::e::F", "g"]);
    assert_eq!(crate_paths("use crate::{x::{y, z}};\nlet a = crate::w::V;"), ["x::y", "x::z", "w::V"]);
}
