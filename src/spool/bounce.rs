//! Returning mail: the DSN message queued for recipients that failed for
//! good or expired. Its text comes from `compose::dsn`.

use redb::ReadableTable;

use super::ops::commit_message;
use super::schema::CHUNKS;
use super::writer::ThreadState;
use super::*;
use crate::compose::dsn;

/// The enhanced status of a reply line such as `550 5.1.1 no such user`,
/// or one made from its basic code.
fn status_of(reply: &str) -> Option<String> {
    let mut it = reply.split_whitespace();
    let code = it.next()?;
    if let Some(enh) = it.next()
        && crate::smtp::Enhanced::parse_prefix(enh).is_some()
    {
        return Some(enh.to_string());
    }
    match code.as_bytes().first() {
        Some(b'5') => Some("5.0.0".into()),
        Some(b'4') => Some("4.0.0".into()),
        _ => None,
    }
}

/// Queues the DSN for the recipients of `m` that failed (`failed`: refused
/// for good, `expired`: out of time); returns its id.
#[allow(clippy::too_many_arguments)]
pub(super) fn make_dsn(
    tx: &redb::WriteTransaction,
    st: &mut ThreadState,
    id: QueueId,
    m: &Message,
    failed: &[usize],
    expired: &[usize],
    policy: &ReturnPolicy,
    now: u64,
) -> Result<QueueId, SpoolError> {
    let mut reports = vec![];
    for &i in failed {
        let Some(r) = m.recipients.get(i) else {
            continue;
        };
        let status = status_of(&r.last_reply).unwrap_or_else(|| "5.0.0".into());
        reports.push(report(r, status));
    }
    for &i in expired {
        let Some(r) = m.recipients.get(i) else {
            continue;
        };
        // RFC 3463 X.4.7: delivery time expired.
        reports.push(report(r, "5.4.7".into()));
    }
    let headers = read_original_headers(tx, id, m.chunks)?;
    let dsn_id = {
        let mut next = lock(&st.shared.next_id);
        *next = (*next + 1).max(now << ID_SEQ_BITS);
        *next
    };
    let message_id = format!("<{}.dsn@{}>", format_id(dsn_id), policy.reporting_mta);
    let qid = format_id(id);
    let body = dsn::build(&dsn::DsnInput {
        reporting_mta: &policy.reporting_mta,
        sender: &m.sender,
        queue_id: &qid,
        // The DSN's dates are wall time: now, less the time that really
        // passed (spool time, see `clock`).
        arrival: crate::clock::to_unix(m.arrival),
        now: crate::clock::to_unix(now),
        recipients: &reports,
        original_headers: &headers,
        message_id: &message_id,
        utf8: m.flags & schema::FLAG_SMTPUTF8 != 0,
    });
    queue_dsn(tx, st, dsn_id, m, &body, policy, now)?;
    Ok(dsn_id)
}

/// One failed recipient, as the DSN reports it.
fn report(r: &Recipient, status: String) -> dsn::RecipientReport {
    dsn::RecipientReport {
        address: r.address.clone(),
        action: dsn::Action::Failed,
        status,
        diagnostic: (!r.last_reply.is_empty()).then(|| r.last_reply.clone()),
        remote_mta: remote_host(&r.remote),
        last_attempt: (r.last_attempt > 0).then(|| crate::clock::to_unix(r.last_attempt)),
    }
}

/// Stores the DSN `body` as message `dsn_id` from `<>` to the sender of `m`.
fn queue_dsn(
    tx: &redb::WriteTransaction,
    st: &mut ThreadState,
    dsn_id: QueueId,
    m: &Message,
    body: &[u8],
    policy: &ReturnPolicy,
    now: u64,
) -> Result<(), SpoolError> {
    // RFC 6533: to an SMTPUTF8 sender the DSN goes with SMTPUTF8 (its
    // address may need it); 8-bit text goes with BODY=8BITMIME.
    let mut flags = schema::FLAG_DSN | (m.flags & schema::FLAG_SMTPUTF8);
    if !body.is_ascii() {
        flags |= schema::FLAG_8BITMIME;
    }
    let destination = match &policy.smarthost {
        Some(d) => d.clone(),
        None => Destination::Mx {
            domain: m
                .sender
                .rsplit_once('@')
                .map(|(_, d)| d.to_ascii_lowercase())
                .unwrap_or_default(),
            port: 25,
        },
    };
    let mut chunks = 0u32;
    {
        let mut t = tx.open_table(CHUNKS).map_err(storage)?;
        for piece in body.chunks(crate::smtp::server::BODY_CHUNK) {
            t.insert((dsn_id, chunks), piece).map_err(storage)?;
            chunks += 1;
        }
    }
    let size = body.len() as u64;
    let envelope = Envelope {
        sender: String::new(),
        recipients: vec![(m.sender.clone(), destination)],
        flags,
        client: "mxspool (delivery status notification)".into(),
        arrival: now,
        first_attempt: now,
        note: String::new(),
    };
    commit_message(tx, dsn_id, envelope, chunks, size)?;
    st.bytes_delta += size as i64;
    st.messages_delta += 1;
    st.wake = true;
    Ok(())
}

fn remote_host(remote: &str) -> Option<String> {
    let host = remote.split('[').next().unwrap_or("").trim();
    (!host.is_empty()).then(|| host.to_string())
}

/// The original message's header section, up to the empty line, capped.
fn read_original_headers(
    tx: &redb::WriteTransaction,
    id: QueueId,
    chunks: u32,
) -> Result<Vec<u8>, SpoolError> {
    let t = tx.open_table(CHUNKS).map_err(storage)?;
    let mut out: Vec<u8> = vec![];
    for seq in 0..chunks {
        let Some(v) = t.get((id, seq)).map_err(storage)? else {
            break;
        };
        let start = out.len().saturating_sub(3);
        out.extend_from_slice(v.value());
        if let Some(p) = find(&out[start..], b"\r\n\r\n") {
            out.truncate(start + p + 2);
            return Ok(out);
        }
        if out.len() >= DSN_HEADER_CAP {
            break;
        }
    }
    out.truncate(DSN_HEADER_CAP);
    // Cut at the last whole line.
    if let Some(p) = memchr::memmem::rfind(&out, b"\r\n") {
        out.truncate(p + 2);
    }
    Ok(out)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}
