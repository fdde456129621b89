//! mxspool: a backup MX and mail relay for OpenWrt routers.
//!
//! Module map (one concern each): `config` (UCI parse, typed model),
//! `smtp` (protocol, sans-IO state machines), `receive` (listener, session
//! driver, policy), `spool` (redb schema, spool thread, the stored
//! destination tag and the retry rule), `deliver` (scheduler, routes,
//! client driver), `compose` (the text we write: DSNs, Received), `dns` (resolver),
//! `control` (control socket, `queue` commands), `log`, `cli`, `clock`
//! (spool time: ages and retries that survive a router's clock steps).

pub mod alert;
pub mod base64;
pub mod cli;
pub mod clock;
pub mod compose;
pub mod config;
pub mod control;
pub mod ctx;
pub mod daemon;
pub mod deliver;
pub mod dns;
pub mod dnscheck;
pub mod log;
pub mod net;
pub mod outbound;
pub mod privilege;
pub mod receive;
pub mod smtp;
pub mod spool;
pub mod time;
pub mod tls;
