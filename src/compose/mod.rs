//! The text mxspool writes into mail: the delivery status notifications
//! it returns to senders (`dsn`) and the Received header it adds to what
//! it accepts (`received`). A leaf: it is handed plain data (strings,
//! times, flags) and knows nothing of the spool, sessions or delivery.

pub mod dsn;
pub mod received;

/// Fold target for lines we write (RFC 5322 2.1.1 SHOULD).
pub(crate) const FOLD: usize = 78;
/// Hard line limit without CRLF (RFC 5322 2.1.1 MUST).
pub(crate) const MAX_LINE: usize = 998;
/// Longest host name we copy (RFC 1035).
pub(crate) const MAX_HOST: usize = 255;

/// Atom characters only (host names, queue ids); `unknown` if none. Both
/// the DSN and the Received header put such tokens into header lines,
/// where nothing else may get through.
pub(crate) fn token(s: &str, max: usize) -> String {
    let t: String = s
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .take(max)
        .collect();
    if t.is_empty() { "unknown".into() } else { t }
}
