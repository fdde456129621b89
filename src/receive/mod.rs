//! Receiving mail: listeners, per-connection session drivers, policy.

pub mod received;
