//! Choosing and changing the master: the pure decision ([`decide`]) and the
//! driver that records, promotes and routes in that order ([`driver`]).

pub mod decide;
pub mod driver;
