//! Delivery status notifications (RFC 3464, RFC 6522): the message we send
//! back to a sender when recipients fail for good or their time runs out.

/// What happened to one recipient, for the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientReport {
    /// The recipient address without brackets.
    pub address: String,
    /// `failed` (only failures are reported for now; `delayed` is ready
    /// for a later warning DSN).
    pub action: Action,
    /// RFC 3463 status, e.g. `5.1.1`, or `4.4.7` turned `5.4.7` on expiry.
    pub status: String,
    /// The remote server's last reply as one line (`550 5.1.1 no such
    /// user`), if there was one: becomes `Diagnostic-Code: smtp; ...`.
    pub diagnostic: Option<String>,
    /// `dns; host` of the server that answered, if any: `Remote-MTA`.
    pub remote_mta: Option<String>,
    /// Unix seconds of the last attempt, if any.
    pub last_attempt: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Failed,
    Delayed,
}

/// Everything the DSN is built from.
#[derive(Debug, Clone)]
pub struct DsnInput<'a> {
    /// Our hostname: `Reporting-MTA: dns; ...` and the From domain.
    pub reporting_mta: &'a str,
    /// The original sender (non-empty: never a DSN to `<>`).
    pub sender: &'a str,
    /// Queue id of the original message (for the human part).
    pub queue_id: &'a str,
    /// Unix seconds of arrival: `Arrival-Date`.
    pub arrival: u64,
    /// Unix seconds now: the `Date` header.
    pub now: u64,
    pub recipients: &'a [RecipientReport],
    /// The original message's header section (CRLF lines, up to but not
    /// including the empty line), already capped by the caller.
    pub original_headers: &'a [u8],
    /// A Message-ID for the DSN (`<...>`).
    pub message_id: &'a str,
}

/// Builds the whole DSN message (headers and body, CRLF line ends, every
/// line under 1000 octets, 7-bit unless the original headers carried 8-bit
/// text, which is then sent as `text/rfc822-headers` unchanged).
pub fn build(input: &DsnInput<'_>) -> Vec<u8> {
    let _ = input;
    todo!("deliver::dsn::build")
}
