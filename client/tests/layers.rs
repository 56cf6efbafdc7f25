//! The client's modules form layers without an import loop (see `src/lib.rs`
//! and `ARCHITECTURE.md`): every `crate::` and `super::` path in `src/` names
//! a module of the same layer or of a lower one, and no set of modules imports
//! each other in a circle. Unit tests (`mod tests`) may use anything. The
//! checker is the master's (`master/tests/layers_check`), shared by path.

use std::path::Path;

#[path = "../../master/tests/layers_check/mod.rs"]
mod layers_check;

/// Layer of a module (bottom = 1).
fn layer(module: &str) -> u32 {
    match module {
        "cache" | "chain" | "writebuf" | "filesize" | "readahead" | "layout" | "dirsnap"
        | "names" | "error" | "takeover" | "leases" | "groups" => 1,
        "session" | "journal" => 2,
        "namespace" | "locks" => 3,
        "file" => 4,
        "open_files" => 5,
        "client" => 6,
        "volumes" | "replay" => 7,
        "fuse" | "metrics" => 8,
        _ => panic!("module {module} has no layer: add it to tests/layers.rs"),
    }
}

fn edges() -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    layers_check::edges(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
}

#[test]
fn no_module_imports_a_higher_layer() {
    let edges = edges();
    assert!(edges.contains_key("session") && edges.contains_key("fuse"));
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
