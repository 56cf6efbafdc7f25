//! The private network namespace the clusters run in.
//!
//! MooseFS chunkservers refuse a master on a 127.x address, so MooseFS (and Alces, for
//! the same conditions) runs in a namespace of its own with a veth pair whose two ends
//! both live inside it and carry private addresses: no traffic leaves the namespace.
//! The namespace itself is made by the harness's one helper, [`alces_e2e::netns`].

use anyhow::Result;

use crate::cleanup::Guard;

/// Name of the namespace.
pub const NAME: &str = "alces-bench";
/// Address of the first veth end (the masters listen here).
pub const ADDR_A: &str = "10.213.0.1";
/// Address of the second veth end.
pub const ADDR_B: &str = "10.213.0.2";
/// The subnet of [`ADDR_A`] and [`ADDR_B`].
const NET: &str = "10.213.0";
/// Prefix of the veth ends' names (`abv0`, `abv1`).
const VETH: &str = "abv";

/// The created namespace; deleted when dropped (and by the cleanup on a signal).
pub struct Netns {
    _ns: alces_e2e::netns::Netns,
    _guard: Guard,
}

/// Deletes the namespace if it exists (leftover of a crashed run).
pub fn delete() {
    alces_e2e::netns::delete(NAME);
}

impl Netns {
    /// Creates the namespace with loopback up and the veth pair addressed.
    pub fn create() -> Result<Netns> {
        let guard = Guard::new(format!("network namespace {NAME}"), delete);
        let ns = alces_e2e::netns::Netns::isolated(NAME, VETH, NET).map_err(anyhow::Error::msg)?;
        debug_assert_eq!((ns.host_ip.as_str(), ns.ns_ip.as_str()), (ADDR_A, ADDR_B));
        Ok(Netns {
            _ns: ns,
            _guard: guard,
        })
    }
}
