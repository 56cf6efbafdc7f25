//! Prints the AlcesCluster CustomResourceDefinition as YAML (written to
//! `crds/alces.io_alcesclusters.yaml` by `cargo run -p alces-operator --bin crdgen > ...`).
#![warn(missing_docs)]

fn main() {
    print!("{}", alces_operator::crdgen::yaml());
}
