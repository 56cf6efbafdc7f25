//! Lists every top-level message of `proto/alces/v1/*.proto` for the `wire`
//! target, so a message added to the protocol is fuzzed without an edit here.

use std::fmt::Write;

fn main() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/alces/v1");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("proto/alces/v1 is readable")
        .map(|e| e.expect("proto/alces/v1 lists").path())
        .filter(|p| p.extension().is_some_and(|e| e == "proto"))
        .collect();
    files.sort();
    let mut names = Vec::new();
    for f in files {
        println!("cargo:rerun-if-changed={}", f.display());
        let text = std::fs::read_to_string(&f).expect("a proto file is readable");
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("message ") {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                names.push(name);
            }
        }
    }
    assert!(
        names.len() > 100,
        "found only {} messages in {}",
        names.len(),
        dir.display()
    );
    let mut out = String::from("alces_messages!(");
    for n in &names {
        write!(out, "{n}, ").unwrap();
    }
    out.push_str(");\n");
    let dst = std::path::Path::new(&std::env::var("OUT_DIR").unwrap()).join("messages.rs");
    std::fs::write(dst, out).expect("OUT_DIR is writable");
}
