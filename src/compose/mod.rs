//! The text mxspool writes into mail: the delivery status notifications
//! it returns to senders (`dsn`) and the Received header it adds to what
//! it accepts (`received`). A leaf: it is handed plain data (strings,
//! times, flags) and knows nothing of the spool, sessions or delivery.

pub mod dsn;
pub mod received;

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
