//! The SMTP protocol: replies, paths, and the sans-IO server and client
//! state machines.

pub mod address;
pub mod client;
mod data;
pub mod downgrade;
pub mod qp;
pub mod reply;
pub mod server;
pub mod stuff;

pub use reply::{Enhanced, Reply};
