//! The SMTP protocol: replies, paths, and the sans-IO server and client
//! state machines.

pub mod address;
pub mod client;
mod data;
pub mod dotstuff;
pub mod downgrade;
pub mod qp;
pub mod reply;
pub mod server;

pub use reply::{Enhanced, Reply};
