//! The module-layer checker the master's and the client's `tests/layers.rs`
//! share (the client includes this file by path): which modules of a crate's
//! `src/` use which, from every `crate::` and `super::` path outside comments
//! and unit tests (`mod tests`, `*_tests.rs`), and whether any of them point
//! to a higher layer or form a loop.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Every module of `src/` (but the crate roots) with its source.
fn modules(src: &Path) -> BTreeMap<String, String> {
    fn walk(dir: &Path, src: &Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(dir).expect("read src") {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                if !p.ends_with("bin") {
                    walk(&p, src, out);
                }
                continue;
            }
            if p.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let rel = p.strip_prefix(src).expect("under src").with_extension("");
            let mut parts: Vec<String> = rel
                .iter()
                .map(|c| c.to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|l| l == "mod") {
                parts.pop();
            }
            let name = parts.join("::");
            if name == "lib" || name == "main" {
                continue;
            }
            out.insert(name, std::fs::read_to_string(&p).expect("read module"));
        }
    }
    let mut out = BTreeMap::new();
    walk(src, src, &mut out);
    out
}

/// The source without comments and unit tests.
fn code(module: &str, text: &str) -> String {
    if module.ends_with("_tests") {
        return String::new();
    }
    let mut out = String::new();
    for line in text.lines() {
        let line = line.split("//").next().unwrap_or("");
        if line.trim_start().starts_with("#[cfg(test)]") {
            break;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Paths following `prefix` (`crate::` or `super::`), groups expanded.
fn paths_after(code: &str, prefix: &str) -> Vec<String> {
    fn ident_path(s: &str) -> (String, &str) {
        let end = s
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(s.len());
        (s[..end].trim_end_matches(':').to_string(), &s[end..])
    }
    fn group(s: &str) -> Vec<String> {
        let (mut depth, mut cur, mut out) = (0, String::new(), Vec::new());
        for c in s.chars() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => break,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    out.push(std::mem::take(&mut cur));
                    continue;
                }
                _ => {}
            }
            cur.push(c);
        }
        out.push(cur);
        out.into_iter()
            .map(|i| i.split_whitespace().collect::<String>())
            .filter(|i| !i.is_empty())
            .collect()
    }
    let mut out = Vec::new();
    for (i, _) in code.match_indices(prefix) {
        let before = code[..i].chars().last();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let (head, rest) = ident_path(&code[i + prefix.len()..]);
        if let Some(inner) = rest.strip_prefix('{') {
            for item in group(inner) {
                out.push(format!(
                    "{head}{}{item}",
                    if head.is_empty() { "" } else { "::" }
                ));
            }
        } else {
            out.push(head);
        }
    }
    out
}

/// The module a path names: its longest prefix that is a module.
fn module_of(path: &str, names: &BTreeSet<String>) -> Option<String> {
    let segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    (1..=segs.len())
        .rev()
        .map(|n| segs[..n].join("::"))
        .find(|c| names.contains(c))
}

/// Module -> the modules of the same crate it uses, for every module of `src`.
pub fn edges(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mods = modules(src);
    let names: BTreeSet<String> = mods.keys().cloned().collect();
    let mut edges = BTreeMap::new();
    for (m, text) in &mods {
        let code = code(m, text);
        let parent: Vec<&str> = {
            let mut p: Vec<&str> = m.split("::").collect();
            p.pop();
            p
        };
        let mut to = BTreeSet::new();
        for p in paths_after(&code, "crate::") {
            to.extend(module_of(&p, &names));
        }
        for p in paths_after(&code, "super::") {
            let full = parent
                .iter()
                .copied()
                .chain(p.split("::"))
                .collect::<Vec<_>>()
                .join("::");
            to.extend(module_of(&full, &names));
        }
        to.retain(|t| t != m && !m.starts_with(&format!("{t}::")));
        edges.insert(m.clone(), to);
    }
    edges
}

/// Every import that points to a higher layer, as a sentence.
pub fn upward_imports(
    edges: &BTreeMap<String, BTreeSet<String>>,
    layer: impl Fn(&str) -> u32,
) -> Vec<String> {
    let mut wrong = Vec::new();
    for (m, to) in edges {
        for t in to {
            if layer(t) > layer(m) {
                wrong.push(format!(
                    "{m} (layer {}) uses {t} (layer {})",
                    layer(m),
                    layer(t)
                ));
            }
        }
    }
    wrong
}

/// The modules that reach themselves through their imports.
pub fn modules_in_loops(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut loops = Vec::new();
    for start in edges.keys() {
        let mut seen = BTreeSet::new();
        let mut todo: Vec<&String> = edges[start].iter().collect();
        while let Some(m) = todo.pop() {
            if m == start {
                loops.push(start.clone());
                break;
            }
            if seen.insert(m.clone()) {
                todo.extend(edges.get(m).into_iter().flatten());
            }
        }
    }
    loops
}

#[test]
fn the_checker_sees_imports() {
    let names: BTreeSet<String> = ["state::ops", "core", "domain::io", "services"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let text = "use crate::state::ops::{apply, Op};\nuse crate::{core::Core, domain::io};\n// crate::services in a comment\n#[cfg(test)]\nmod tests { use crate::services; }";
    let found: BTreeSet<String> = paths_after(&code("m", text), "crate::")
        .iter()
        .filter_map(|p| module_of(p, &names))
        .collect();
    assert_eq!(
        found,
        ["state::ops", "core", "domain::io"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
}
