//! Unit tests of the spool as a whole, through its handle.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use smol::channel::bounded;

use redb::Database;

use super::ops::QUEUE_WIDE_SCAN;
use super::schema::CHUNKS;
use super::*;

const OPTS: SpoolOptions = SpoolOptions {
    cache_size: 1 << 20,
    journal_size: 1 << 20,
};

/// Opens the spool in `dir`, runs `f` on it, and shuts it down.
fn with_spool<T>(dir: &Path, opts: SpoolOptions, f: impl AsyncFnOnce(&Spool, Recovered) -> T) -> T {
    smol::block_on(async {
        let (wake, _w) = bounded(1);
        let (spool, thread, rec) = Spool::open(dir, opts, wake).unwrap();
        let out = f(&spool, rec).await;
        drop(spool);
        thread.join();
        out
    })
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mxspool-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Retries every minute, returned after ten minutes.
fn ten_minute_policy(smarthost: Option<Destination>) -> ReturnPolicy {
    ReturnPolicy {
        steps: vec![RetryStep {
            interval: Duration::from_secs(60),
            span: Duration::from_secs(600),
        }],
        reporting_mta: "mx2.test".into(),
        smarthost,
    }
}

fn envelope() -> Envelope {
    Envelope {
        sender: "a@b.test".into(),
        recipients: vec![(
            "u@example.com".into(),
            Destination::Relay {
                host: "127.0.0.1".into(),
                port: 25,
            },
        )],
        flags: 0,
        client: "test".into(),
        arrival: 1000,
        first_attempt: 1000,
        note: String::new(),
    }
}

/// Field case: when one destination's attempt finds the message
/// expired, only its own recipients are returned. The other
/// destination's recipient (its job may be delivering it right now)
/// stays pending, due at once, and is delivered when its job reports.
#[test]
fn expiry_returns_only_the_attempts_own_recipients() {
    let dir = tmpdir("expiry-per-job");
    let relay = |port| Destination::Relay {
        host: "127.0.0.1".into(),
        port,
    };
    let policy = ten_minute_policy(Some(relay(26)));
    let result = |index, outcome| RcptResult {
        index,
        outcome,
        reply: "451 4.3.0 later".into(),
        remote: String::new(),
    };
    with_spool(&dir, OPTS, async |spool: &Spool, _: Recovered| {
        let mut env = envelope();
        env.recipients.push(("v@example.org".into(), relay(2525)));
        let id = spool.new_id(1000);
        let body = b"Subject: e\r\n\r\nx\r\n".to_vec();
        spool
            .commit(id, env, 1, body.len() as u64, Some((0, body)))
            .await
            .unwrap();
        let expired = 1000 + 601;
        let report = |dest, index, outcome| AttemptReport {
            time: expired,
            destination: dest,
            relay: String::new(),
            summary: String::new(),
            results: vec![result(index, outcome)],
        };
        let f = spool
            .finish(id, report(relay(25), 0, Outcome::Deferred), policy.clone())
            .await
            .unwrap();
        assert_eq!(f.failed, vec!["u@example.com".to_string()]);
        assert!(!f.removed);
        assert_eq!(f.next_attempt, Some(expired), "the other job is due now");
        let m = spool.message(id).unwrap().unwrap();
        assert_eq!(m.recipients[1].state, RcptState::Pending);
        let f = spool
            .finish(
                id,
                report(relay(2525), 1, Outcome::Delivered),
                policy.clone(),
            )
            .await
            .unwrap();
        assert!(
            f.failed.is_empty(),
            "a delivered recipient is never returned"
        );
        assert!(f.removed);
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// A queue-wide change goes batch by batch (bounded memory, one
/// transaction each) and still reaches every matching message exactly
/// once, across both the change limit and the scan limit.
#[test]
fn queue_wide_changes_reach_every_message_in_batches() {
    let dir = tmpdir("queue-wide");
    let n = 4 * QUEUE_WIDE_SCAN + 3;
    let other = Destination::Relay {
        host: "127.0.0.2".into(),
        port: 2525,
    };
    with_spool(&dir, OPTS, async |spool: &Spool, _: Recovered| {
        let mut ids = vec![];
        for i in 0..n {
            let mut env = envelope();
            if i % 10 == 0 {
                env.recipients[0].0 = format!("u{i}@example.org");
            }
            let id = spool.new_id(1000);
            let body = b"Subject: q\r\n\r\nx\r\n".to_vec();
            spool
                .commit(id, env, 1, body.len() as u64, Some((0, body)))
                .await
                .unwrap();
            ids.push(id);
        }
        let flushed = spool.reschedule(Filter::All, 5000).await.unwrap();
        assert_eq!(flushed, n);
        let retagged = spool
            .retag("example.org".into(), other.clone(), 6000)
            .await
            .unwrap();
        assert_eq!(retagged, n.div_ceil(10));
        for (i, id) in ids.iter().enumerate() {
            let m = spool.message(*id).unwrap().unwrap();
            let (next, dest) = if i % 10 == 0 {
                (6000, other.clone())
            } else {
                (5000, envelope().recipients[0].1.clone())
            };
            assert_eq!(m.next_attempt, next, "message {i}");
            assert_eq!(m.recipients[0].destination, dest, "message {i}");
        }
        let by_dest = spool
            .reschedule(Filter::Destination(other.clone()), 7000)
            .await
            .unwrap();
        assert_eq!(by_dest, n.div_ceil(10));
    });
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_full_chunk_fits_one_page() {
    // A chunk one byte over its page run costs twice the flash writes:
    // 32 full chunks must take about 1 MiB of pages, not 2.
    let dir = tmpdir("chunkfit");
    std::fs::create_dir_all(&dir).unwrap();
    let db = Database::create(dir.join("t.redb")).unwrap();
    let before = db.begin_write().unwrap().stats().unwrap().allocated_pages();
    let tx = db.begin_write().unwrap();
    {
        let mut t = tx.open_table(CHUNKS).unwrap();
        let chunk = vec![b'x'; crate::smtp::server::BODY_CHUNK];
        for seq in 0..32 {
            t.insert((7, seq), chunk.as_slice()).unwrap();
        }
    }
    tx.commit().unwrap();
    let w = db.begin_write().unwrap();
    let stats = w.stats().unwrap();
    let used = (stats.allocated_pages() - before) * stats.page_size() as u64;
    assert!(
        used < 32 * 32 * 1024 + 64 * 1024,
        "{used} bytes for 32 chunks"
    );
    drop(w);
    drop(db);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_journaled_message_is_replayed_into_a_database_that_lost_it() {
    let dir = tmpdir("journal-replay");
    let db_path = dir.join(SPOOL_FILE);
    let journal_path = dir.join(JOURNAL_FILE);
    let (old_db, journal, id) = with_spool(&dir, OPTS, async |spool: &Spool, _: Recovered| {
        // The database as a power cut right now would leave it.
        let old_db = std::fs::read(&db_path).unwrap();
        let id = spool.new_id(1000);
        let body = b"Subject: j\r\n\r\nsmall\r\n".to_vec();
        spool
            .commit(id, envelope(), 1, body.len() as u64, Some((0, body)))
            .await
            .unwrap();
        // Acknowledged: the journal holds it, redb not durably yet.
        let journal = std::fs::read(&journal_path).unwrap();
        (old_db, journal, id)
    });
    std::fs::write(&db_path, old_db).unwrap();
    std::fs::write(&journal_path, &journal).unwrap();
    let reopen = || {
        with_spool(&dir, OPTS, async |spool: &Spool, rec: Recovered| {
            let body = spool.chunk(id, 0).unwrap();
            (rec.messages, rec.replayed, body)
        })
    };
    let body = Some(b"Subject: j\r\n\r\nsmall\r\n".to_vec());
    assert_eq!(reopen(), (1, 1, body.clone()));
    // Replayed once: the next start finds it in the database.
    assert_eq!(reopen(), (1, 0, body));
    // A journal left behind by a deleted database is not replayed.
    std::fs::remove_file(&db_path).unwrap();
    std::fs::write(&journal_path, &journal).unwrap();
    assert_eq!(reopen(), (0, 0, None));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn journal_size_0_retires_the_journal_after_replaying_it() {
    let dir = tmpdir("journal-off");
    with_spool(&dir, OPTS, async |spool: &Spool, _: Recovered| {
        let id = spool.new_id(1000);
        spool
            .commit(id, envelope(), 1, 4, Some((0, b"x\r\n\r\n".to_vec())))
            .await
            .unwrap();
    });
    assert!(dir.join(JOURNAL_FILE).exists());
    let off = SpoolOptions {
        journal_size: 0,
        ..OPTS
    };
    with_spool(&dir, off, async |spool: &Spool, rec: Recovered| {
        assert_eq!(rec.messages, 1);
        let id = spool.new_id(1000);
        spool
            .commit(id, envelope(), 1, 4, Some((0, b"y\r\n\r\n".to_vec())))
            .await
            .unwrap();
    });
    assert!(!dir.join(JOURNAL_FILE).exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn committed_messages_survive_a_reopen_and_half_received_bodies_do_not() {
    let dir = tmpdir("reopen");
    with_spool(&dir, OPTS, async |spool: &Spool, rec: Recovered| {
        assert_eq!(rec.messages, 0);
        let a = spool.new_id(1000);
        spool
            .append(a, 0, b"Subject: a\r\n\r\n".to_vec())
            .await
            .unwrap();
        spool.append(a, 1, b"body\r\n".to_vec()).await.unwrap();
        spool.commit(a, envelope(), 2, 20, None).await.unwrap();
        // A message whose client vanished mid-DATA: never committed.
        let b = spool.new_id(1000);
        spool.append(b, 0, b"partial".to_vec()).await.unwrap();
        spool.barrier().await.unwrap();
        assert_eq!(spool.state().messages, 1);
    });
    with_spool(&dir, OPTS, async |spool: &Spool, rec: Recovered| {
        assert_eq!((rec.messages, rec.leftovers, rec.bytes), (1, 1, 20));
        let list = spool.list().unwrap();
        let (id, m) = &list[0];
        let m = m.as_ref().unwrap();
        assert_eq!(m.sender, "a@b.test");
        assert_eq!(spool.chunk(*id, 1).unwrap().unwrap(), b"body\r\n");
        // The new ids never repeat the old ones, whatever the clock says.
        assert!(spool.new_id(0) > *id);
    });
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn pages_walk_the_queue_once_in_arrival_order() {
    let dir = tmpdir("pages");
    with_spool(&dir, OPTS, async |spool: &Spool, _: Recovered| {
        let mut ids = vec![];
        for i in 0..10 {
            let id = spool.new_id(1000 + i);
            let mut env = envelope();
            env.arrival = 1000 + i;
            let body = b"y\r\n\r\n".to_vec();
            spool.commit(id, env, 1, 5, Some((0, body))).await.unwrap();
            ids.push(id);
        }
        let first = spool.messages_after(None, 4).unwrap();
        assert_eq!((first.total, first.more, first.items.len()), (10, true, 4));
        // Walking page by page from each page's last id sees every
        // message once, in order; the last page says nothing follows.
        let (mut seen, mut cursor) = (vec![], None);
        loop {
            let p = spool.messages_after(cursor, 3).unwrap();
            assert_eq!(p.total, 10);
            seen.extend(p.items.iter().map(|(id, m)| {
                assert_eq!(m.as_ref().unwrap().sender, "a@b.test");
                *id
            }));
            cursor = seen.last().copied();
            if !p.more {
                break;
            }
        }
        assert_eq!(seen, ids);
        // The cursor is a position: it need not be queued any more.
        let p = spool.messages_after(Some(ids[3] + 1), 2).unwrap();
        assert_eq!(p.items.iter().map(|e| e.0).collect::<Vec<_>>(), ids[4..6]);
        let p = spool.messages_after(Some(ids[9]), 5).unwrap();
        assert!(p.items.is_empty() && !p.more);
        let p = spool.messages_after(None, 0).unwrap();
        assert!(p.items.is_empty() && p.more);
        assert_eq!(spool.oldest_arrival().unwrap(), Some(1000));
        spool.delete(ids[0]).await.unwrap();
        assert_eq!(spool.oldest_arrival().unwrap(), Some(1001));
        assert_eq!(
            spool
                .pending_destinations()
                .unwrap()
                .into_iter()
                .collect::<Vec<_>>(),
            vec![envelope().recipients[0].1.clone()]
        );
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// Ids are taken when DATA starts, arrival is its end: within the
/// same second a later id may have arrived first, and is found; the
/// scan stops at the first id from a later second.
#[test]
fn the_oldest_arrival_reads_only_the_head_of_the_queue() {
    let dir = tmpdir("oldest");
    with_spool(&dir, OPTS, async |spool: &Spool, _: Recovered| {
        assert_eq!(spool.oldest_arrival().unwrap(), None);
        for (start, arrival) in [(1000, 1005), (1000, 1003), (2000, 2000)] {
            let id = spool.new_id(start);
            let mut env = envelope();
            env.arrival = arrival;
            let body = b"y\r\n\r\n".to_vec();
            spool.commit(id, env, 1, 5, Some((0, body))).await.unwrap();
        }
        assert_eq!(spool.oldest_arrival().unwrap(), Some(1003));
    });
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_permanent_failure_returns_the_mail_and_a_temporary_one_reschedules() {
    let dir = tmpdir("finish");
    with_spool(&dir, OPTS, async |spool: &Spool, _: Recovered| {
        let id = spool.new_id(1000);
        spool
            .append(id, 0, b"Subject: x\r\n\r\nbody\r\n".to_vec())
            .await
            .unwrap();
        let mut env = envelope();
        env.recipients.push(env.recipients[0].clone());
        env.recipients[1].0 = "v@example.com".into();
        spool.commit(id, env, 1, 20, None).await.unwrap();
        let policy = ten_minute_policy(None);
        let report = AttemptReport {
            time: 1010,
            destination: envelope().recipients[0].1.clone(),
            relay: "h[127.0.0.1]:25".into(),
            summary: "mixed".into(),
            results: vec![
                RcptResult {
                    index: 0,
                    outcome: Outcome::Failed,
                    reply: "550 5.1.1 no such user".into(),
                    remote: "h[127.0.0.1]:25".into(),
                },
                RcptResult {
                    index: 1,
                    outcome: Outcome::Deferred,
                    reply: "451 4.3.0 later".into(),
                    remote: "h[127.0.0.1]:25".into(),
                },
            ],
        };
        let f = spool.finish(id, report, policy).await.unwrap();
        assert_eq!(f.failed, vec!["u@example.com".to_string()]);
        assert_eq!(f.next_attempt, Some(1060));
        let dsn = f.dsn.unwrap();
        let d = spool.message(dsn).unwrap().unwrap();
        assert_eq!(d.sender, "");
        assert_eq!(
            d.flags,
            schema::FLAG_DSN,
            "all ASCII: no SMTPUTF8, no 8BITMIME"
        );
        assert_eq!(d.recipients[0].address, "a@b.test");
        assert_eq!(
            d.recipients[0].destination,
            Destination::Mx {
                domain: "b.test".into(),
                port: 25
            }
        );
        let body = spool.chunk(dsn, 0).unwrap().unwrap();
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains("Final-Recipient: rfc822; u@example.com"));
        assert!(text.contains("Subject: x"));
        // The schedule index moved with the message.
        let (due, next) = spool.due(1059, 10, &HashSet::new()).unwrap();
        assert_eq!(due, vec![dsn]);
        assert_eq!(next, Some(1060));
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// RFC 6533: the DSN to a sender who used SMTPUTF8 is flagged so it goes
/// out with SMTPUTF8 and BODY=8BITMIME, in the global types.
#[test]
fn dsn_to_an_smtputf8_sender_is_smtputf8() {
    let dir = tmpdir("dsn-utf8");
    with_spool(&dir, OPTS, async |spool: &Spool, _: Recovered| {
        let id = spool.new_id(1000);
        let body = "Subject: gr\u{fc}\u{df}e\r\n\r\nbody\r\n"
            .as_bytes()
            .to_vec();
        spool.append(id, 0, body).await.unwrap();
        let mut env = envelope();
        env.sender = "d\u{ef}ana@b.test".into();
        env.flags = schema::FLAG_SMTPUTF8 | schema::FLAG_8BITMIME;
        spool.commit(id, env, 1, 30, None).await.unwrap();
        let policy = ten_minute_policy(None);
        let report = AttemptReport {
            time: 1010,
            destination: envelope().recipients[0].1.clone(),
            relay: "h[127.0.0.1]:25".into(),
            summary: "refused".into(),
            results: vec![RcptResult {
                index: 0,
                outcome: Outcome::Failed,
                reply: "553 5.6.7 h[127.0.0.1]:25 does not support SMTPUTF8".into(),
                remote: "h[127.0.0.1]:25".into(),
            }],
        };
        let f = spool.finish(id, report, policy).await.unwrap();
        let dsn = f.dsn.unwrap();
        let d = spool.message(dsn).unwrap().unwrap();
        assert_eq!(
            d.flags,
            schema::FLAG_DSN | schema::FLAG_SMTPUTF8 | schema::FLAG_8BITMIME
        );
        assert_eq!(d.recipients[0].address, "d\u{ef}ana@b.test");
        let text = String::from_utf8(spool.chunk(dsn, 0).unwrap().unwrap()).unwrap();
        assert!(text.contains("Content-Type: message/global-delivery-status"));
        assert!(text.contains("Content-Type: message/global-headers"));
        assert!(text.contains("Status: 5.6.7"));
        assert!(text.contains("To: <d\u{ef}ana@b.test>"));
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// A power cut while the spool file was first created leaves it with its
/// length set and parts of its header written, but not redb's magic
/// number (written last). redb refuses such a file for ever ("not a redb
/// database"): the daemon could never start. It holds nothing (no commit
/// without the header), so the spool creates it afresh and works.
#[test]
fn a_spool_file_cut_while_first_created_is_made_afresh() {
    let dir = tmpdir("never-initialised");
    std::fs::create_dir_all(&dir).unwrap();
    let mut image = vec![0u8; 73_728];
    image[9..16].copy_from_slice(&[4, 0, 0, 0, 16, 0, 0]);
    std::fs::write(dir.join(SPOOL_FILE), &image).unwrap();
    with_spool(&dir, OPTS, async |spool: &Spool, rec: Recovered| {
        assert_eq!(rec.messages, 0);
        let id = spool.new_id(1000);
        let body = b"Subject: x\r\n\r\nx\r\n".to_vec();
        spool
            .commit(id, envelope(), 1, body.len() as u64, Some((0, body)))
            .await
            .unwrap();
    });
    with_spool(&dir, OPTS, async |_: &Spool, rec: Recovered| {
        assert_eq!(rec.messages, 1, "the new spool keeps its mail");
    });
    let _ = std::fs::remove_dir_all(&dir);
}
