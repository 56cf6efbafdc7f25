//! Choosing and changing the master: the pure decision ([`decide`]), the
//! driver that records, promotes and routes in that order ([`driver`]), and
//! its target for local processes without Kubernetes ([`local`]).

pub mod decide;
pub mod driver;
pub mod local;
