//! Delivery: scheduler, destinations, the SMTP client driver, DSNs.

pub mod dsn;
