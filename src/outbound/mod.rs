//! Outbound SMTP connections, below both of their users (deliveries in
//! `deliver`, the call-ahead in `receive`): where a destination's mail goes
//! (`route`: a relay host or the MX hosts, with the loop and null-MX
//! rules), whether an address may have it (`guard`: the dynamic-IP guard),
//! and one connection to it (`conn`).

pub mod conn;
pub mod guard;
pub mod route;
