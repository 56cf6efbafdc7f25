//! The master's modules form layers without an import loop (see `src/lib.rs`):
//! every `crate::` and `super::` path in `src/` names a module of the same
//! layer or of a lower one, and no set of modules imports each other in a
//! circle. Unit tests (`mod tests`, `*_tests.rs`) may use anything.

use std::path::Path;

mod layers_check;

/// Layer of a module, by the first segment of its path (bottom = 1).
fn layer(module: &str) -> u32 {
    let top = module.split("::").next().unwrap_or(module);
    match (top, module) {
        ("state", _) => 1,
        ("disk" | "runtime" | "metrics", _) => 2,
        ("core", _) => 3,
        ("domain", _) | (_, "metalogger::follower" | "metalogger::replica") => 4,
        ("services", _) => 5,
        ("server" | "metalogger" | "config" | "fuzzing", _) => 6,
        _ => panic!("module {module} has no layer: add it to tests/layers.rs"),
    }
}

fn edges() -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    layers_check::edges(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
}

#[test]
fn no_module_imports_a_higher_layer() {
    let edges = edges();
    assert!(edges.contains_key("state::namespace") && edges.contains_key("services::master"));
    let wrong = layers_check::upward_imports(&edges, layer);
    assert!(
        wrong.is_empty(),
        "imports pointing up:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn no_import_loop() {
    let loops = layers_check::modules_in_loops(&edges());
    assert!(loops.is_empty(), "modules in an import loop: {loops:?}");
}
