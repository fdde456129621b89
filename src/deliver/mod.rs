//! Delivery: scheduler, destinations, the SMTP client driver, DSNs.

pub mod dsn;
pub mod destination;
pub mod retry;
