//! The private network namespace the clusters run in.
//!
//! MooseFS chunkservers refuse a master on a 127.x address, so MooseFS (and Alces, for
//! the same conditions) runs in a namespace of its own with a veth pair whose two ends
//! both live inside it and carry private addresses: no traffic leaves the namespace.

use std::process::Command;

use anyhow::Result;

use crate::cleanup::Guard;
use crate::exec::{run, run_quiet};

/// Name of the namespace.
pub const NAME: &str = "alces-bench";
/// Address of the first veth end (the masters listen here).
pub const ADDR_A: &str = "10.213.0.1";
/// Address of the second veth end.
pub const ADDR_B: &str = "10.213.0.2";

/// A created namespace; deleted when dropped.
pub struct Netns {
    _guard: Guard,
}

fn ip(args: &[&str]) -> Result<String> {
    run(Command::new("ip").args(args))
}

/// Deletes the namespace if it exists (leftover of a crashed run).
pub fn delete() {
    run_quiet(&["ip", "netns", "delete", NAME]);
}

impl Netns {
    /// Creates the namespace with loopback up and the veth pair addressed.
    pub fn create() -> Result<Netns> {
        delete();
        ip(&["netns", "add", NAME])?;
        let guard = Guard::new(format!("network namespace {NAME}"), delete);
        ip(&["-n", NAME, "link", "set", "lo", "up"])?;
        ip(&[
            "-n", NAME, "link", "add", "abv0", "type", "veth", "peer", "name", "abv1",
        ])?;
        ip(&[
            "-n",
            NAME,
            "addr",
            "add",
            &format!("{ADDR_A}/24"),
            "dev",
            "abv0",
        ])?;
        ip(&[
            "-n",
            NAME,
            "addr",
            "add",
            &format!("{ADDR_B}/24"),
            "dev",
            "abv1",
        ])?;
        ip(&["-n", NAME, "link", "set", "abv0", "up"])?;
        ip(&["-n", NAME, "link", "set", "abv1", "up"])?;
        Ok(Netns { _guard: guard })
    }
}
