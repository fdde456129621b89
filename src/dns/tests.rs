//! Resolver tests: hand-built packets through the pure core, and the async
//! driver against tiny in-process fake servers on 127.0.0.1. Packets are
//! built with simple-dns, an encoder independent of ours.

use super::wire::{self, Outcome, RData, TYPE_A, TYPE_AAAA, TYPE_MX, TYPE_TXT};
use super::*;
use simple_dns::rdata::{self as sd, RData as SR};
use simple_dns::{CLASS, Name, Packet, PacketFlag, RCODE, ResourceRecord};
use std::cell::Cell;
use std::net::Ipv6Addr;

// ---------- packet helpers ----------

fn rr(name: &'static str, ttl: u32, rd: SR<'static>) -> ResourceRecord<'static> {
    ResourceRecord::new(Name::new_unchecked(name), CLASS::IN, ttl, rd)
}
fn a(name: &'static str, ttl: u32, ip: [u8; 4]) -> ResourceRecord<'static> {
    rr(
        name,
        ttl,
        SR::A(sd::A {
            address: u32::from_be_bytes(ip),
        }),
    )
}
fn cname(name: &'static str, ttl: u32, target: &'static str) -> ResourceRecord<'static> {
    rr(name, ttl, SR::CNAME(sd::CNAME(Name::new_unchecked(target))))
}
fn mx(name: &'static str, pref: u16, ex: &'static str) -> ResourceRecord<'static> {
    rr(
        name,
        300,
        SR::MX(sd::MX {
            preference: pref,
            exchange: Name::new_unchecked(ex),
        }),
    )
}
fn soa(zone: &'static str, ttl: u32, minimum: u32) -> ResourceRecord<'static> {
    rr(
        zone,
        ttl,
        SR::SOA(sd::SOA {
            mname: Name::new_unchecked("ns.example"),
            rname: Name::new_unchecked("host.example"),
            serial: 1,
            refresh: 3600,
            retry: 600,
            expire: 86400,
            minimum,
        }),
    )
}

/// A reply to `query` (our wire bytes) echoing its id and question.
fn reply(
    query: &[u8],
    rcode: RCODE,
    tc: bool,
    answers: Vec<ResourceRecord<'static>>,
    authority: Vec<ResourceRecord<'static>>,
) -> Vec<u8> {
    let q = Packet::parse(query).expect("our query parses");
    let mut p = Packet::new_reply(q.id());
    p.questions = q.questions.clone();
    *p.rcode_mut() = rcode;
    if tc {
        p.set_flags(PacketFlag::TRUNCATION);
    }
    p.answers = answers;
    p.name_servers = authority;
    p.build_bytes_vec_compressed().expect("builds")
}

fn ok(query: &[u8], answers: Vec<ResourceRecord<'static>>) -> Vec<u8> {
    reply(query, RCODE::NoError, false, answers, vec![])
}

/// (name, type) asked by a query.
fn qinfo(query: &[u8]) -> (String, u16) {
    let q = Packet::parse(query).expect("our query parses");
    let qq = &q.questions[0];
    (qq.qname.to_string(), u16::from(qq.qtype))
}

fn parse(b: &[u8]) -> wire::Response {
    wire::parse_response(b).expect("parses")
}

// ---------- pure: query building and matching ----------

/// Our query is a valid recursive query with one question and EDNS0 1232,
/// as read by an independent parser.
#[test]
fn query_is_well_formed() {
    let q = wire::build_query(0xBEEF, "example.com", TYPE_MX, true);
    let p = Packet::parse(&q).expect("parses");
    assert_eq!(p.id(), 0xBEEF);
    assert!(p.has_flags(PacketFlag::RECURSION_DESIRED));
    assert!(!p.has_flags(PacketFlag::RESPONSE));
    assert_eq!(qinfo(&q), ("example.com".into(), TYPE_MX));
    assert_eq!(p.opt().map(|o| o.udp_packet_size), Some(1232));
}

/// Spoofing defence: a response with another id, another question name or
/// type, or without QR is not taken as our answer.
#[test]
fn mismatched_responses_are_ignored() {
    let q = wire::build_query(7, "example.com", TYPE_A, true);
    let r = parse(&ok(&q, vec![a("example.com", 60, [192, 0, 2, 1])]));
    assert!(wire::matches(&r, 7, "example.com", TYPE_A));
    assert!(!wire::matches(&r, 8, "example.com", TYPE_A), "wrong id");
    assert!(!wire::matches(&r, 7, "example.org", TYPE_A), "wrong name");
    assert!(
        !wire::matches(&r, 7, "example.com", TYPE_AAAA),
        "wrong type"
    );
    let q2 = wire::build_query(7, "example.com", TYPE_A, true);
    assert!(
        !wire::matches(&parse(&q2), 7, "example.com", TYPE_A),
        "a query is no answer"
    );
}

/// Question names compare case-insensitively (servers may echo 0x20 case).
#[test]
fn question_case_is_ignored() {
    let q = wire::build_query(9, "ExAmPlE.CoM", TYPE_A, true);
    let r = parse(&ok(&q, vec![]));
    assert!(wire::matches(&r, 9, "example.com", TYPE_A));
}

/// Caller names are validated and lower-cased; a trailing dot is optional.
#[test]
fn names_are_normalized() {
    assert_eq!(
        wire::normalize_name("Mail.Example.COM.").as_deref(),
        Ok("mail.example.com")
    );
    for bad in [
        "",
        ".",
        "a..b",
        "a b.example",
        "bücher.example",
        &"x".repeat(64),
    ] {
        assert!(wire::normalize_name(bad).is_err(), "{bad:?}");
    }
}

/// PTR query names, both families.
#[test]
fn reverse_names() {
    assert_eq!(
        wire::reverse_name("192.0.2.10".parse().unwrap()),
        "10.2.0.192.in-addr.arpa"
    );
    let v6 = wire::reverse_name("2001:db8::1".parse().unwrap());
    assert!(v6.starts_with("1.0.0.0.0.0.0.0."), "{v6}");
    assert!(v6.ends_with("8.b.d.0.1.0.0.2.ip6.arpa"), "{v6}");
}

// ---------- pure: interpretation ----------

/// TC bit → the driver must go to TCP.
#[test]
fn truncated_means_tcp() {
    let q = wire::build_query(1, "big.example", TYPE_TXT, true);
    let r = parse(&reply(&q, RCODE::NoError, true, vec![], vec![]));
    assert_eq!(
        wire::interpret(&r, "big.example", TYPE_TXT, 8),
        Ok(Outcome::Truncated)
    );
}

/// A CNAME chain inside the answer is followed; the canonical name and the
/// smallest TTL along the chain are reported.
#[test]
fn cname_chain_followed() {
    let q = wire::build_query(1, "www.example", TYPE_A, true);
    let r = parse(&ok(
        &q,
        vec![
            cname("www.example", 300, "web.example"),
            cname("web.example", 100, "host.example"),
            a("host.example", 200, [192, 0, 2, 7]),
            a("other.example", 1, [192, 0, 2, 99]),
        ],
    ));
    assert_eq!(
        wire::interpret(&r, "www.example", TYPE_A, 8),
        Ok(Outcome::Answer {
            records: vec![RData::A([192, 0, 2, 7].into())],
            canonical: Some("host.example".into()),
            ttl: 100,
        })
    );
}

/// A chain that ends without the wanted type asks for re-querying the target.
#[test]
fn cname_without_target_data_requeries() {
    let q = wire::build_query(1, "www.example", TYPE_A, true);
    let r = parse(&ok(&q, vec![cname("www.example", 300, "far.example")]));
    assert_eq!(
        wire::interpret(&r, "www.example", TYPE_A, 8),
        Ok(Outcome::Alias {
            target: "far.example".into(),
            hops: 1,
            ttl: 300
        })
    );
}

/// A CNAME loop is an error, not a hang.
#[test]
fn cname_loop_detected() {
    let q = wire::build_query(1, "a.example", TYPE_A, true);
    let r = parse(&ok(
        &q,
        vec![
            cname("a.example", 60, "b.example"),
            cname("b.example", 60, "a.example"),
        ],
    ));
    assert!(
        matches!(wire::interpret(&r, "a.example", TYPE_A, 8), Err(DnsError::Protocol(m)) if m.contains("loop"))
    );
}

/// More than 8 CNAMEs is refused.
#[test]
fn cname_chain_bounded() {
    const N: [&str; 10] = [
        "c0.x", "c1.x", "c2.x", "c3.x", "c4.x", "c5.x", "c6.x", "c7.x", "c8.x", "c9.x",
    ];
    let q = wire::build_query(1, "c0.x", TYPE_A, true);
    let recs = (0..9)
        .map(|i| cname(N[i], 60, N[i + 1]))
        .chain([a("c9.x", 60, [192, 0, 2, 1])]);
    let r = parse(&ok(&q, recs.collect()));
    assert!(matches!(
        wire::interpret(&r, "c0.x", TYPE_A, 8),
        Err(DnsError::Protocol(_))
    ));
    assert!(matches!(
        wire::interpret(&r, "c0.x", TYPE_A, 9),
        Ok(Outcome::Answer { .. })
    ));
}

/// NXDOMAIN with an SOA: negative TTL = min(SOA TTL, SOA MINIMUM) (RFC 2308).
#[test]
fn nxdomain_negative_ttl_from_soa() {
    let q = wire::build_query(1, "nope.example", TYPE_MX, true);
    let r = parse(&reply(
        &q,
        RCODE::NameError,
        false,
        vec![],
        vec![soa("example", 3600, 300)],
    ));
    assert_eq!(
        wire::interpret(&r, "nope.example", TYPE_MX, 8),
        Ok(Outcome::NxDomain {
            negative_ttl: Some(300)
        })
    );
    let r = parse(&reply(
        &q,
        RCODE::NameError,
        false,
        vec![],
        vec![soa("example", 60, 300)],
    ));
    assert_eq!(
        wire::interpret(&r, "nope.example", TYPE_MX, 8),
        Ok(Outcome::NxDomain {
            negative_ttl: Some(60)
        })
    );
}

/// NODATA: NOERROR, no records of the type (records of other types ignored).
#[test]
fn nodata() {
    let q = wire::build_query(1, "example", TYPE_MX, true);
    let r = parse(&reply(
        &q,
        RCODE::NoError,
        false,
        vec![a("example", 60, [192, 0, 2, 1])],
        vec![soa("example", 900, 120)],
    ));
    assert_eq!(
        wire::interpret(&r, "example", TYPE_MX, 8),
        Ok(Outcome::NoData {
            negative_ttl: Some(120)
        })
    );
}

/// SERVFAIL and REFUSED are reported for failover, not as answers.
#[test]
fn server_errors() {
    let q = wire::build_query(1, "example", TYPE_A, true);
    let r = parse(&reply(&q, RCODE::ServerFailure, false, vec![], vec![]));
    assert_eq!(
        wire::interpret(&r, "example", TYPE_A, 8),
        Ok(Outcome::ServFail)
    );
    let r = parse(&reply(&q, RCODE::Refused, false, vec![], vec![]));
    assert_eq!(
        wire::interpret(&r, "example", TYPE_A, 8),
        Ok(Outcome::Refused)
    );
}

/// MX data: lower-cased, no trailing dot, the null MX "." as "".
#[test]
fn mx_rdata() {
    let q = wire::build_query(1, "example", TYPE_MX, true);
    let r = parse(&ok(
        &q,
        vec![mx("example", 10, "MX1.Example"), mx("example", 0, ".")],
    ));
    let data: Vec<_> = r.answers.iter().map(|r| r.data.clone()).collect();
    assert_eq!(
        data,
        vec![
            RData::Mx(10, "mx1.example".into()),
            RData::Mx(0, String::new())
        ]
    );
}

// ---------- pure: hostile packets ----------

fn header(qd: u16, an: u16) -> Vec<u8> {
    let mut h = vec![0, 7, 0x81, 0x80];
    h.extend_from_slice(&qd.to_be_bytes());
    h.extend_from_slice(&an.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 0]);
    h
}

/// Compression pointer loops (self, two-pointer cycle, and a label loop)
/// fail fast instead of hanging.
#[test]
fn compression_pointer_loops_fail() {
    // Question name at offset 12 is a pointer to itself.
    let mut p = header(1, 0);
    p.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1]);
    assert!(wire::parse_response(&p).is_err());
    // Two pointers pointing at each other: 12 → 14 → 12.
    let mut p = header(1, 0);
    p.extend_from_slice(&[0xC0, 14, 0xC0, 12, 0, 1, 0, 1]);
    assert!(wire::parse_response(&p).is_err());
    // A label followed by a pointer back to it: grows until 255 octets.
    let mut p = header(1, 0);
    p.extend_from_slice(&[1, b'a', 0xC0, 12, 0, 1, 0, 1]);
    assert!(wire::parse_response(&p).is_err());
}

/// Huge header counts on a short packet are an error, with no allocation
/// sized by the counts (simple-dns would reserve 65535 x 144 bytes here).
#[test]
fn lying_counts_fail() {
    let mut p = header(1, 65535);
    p.extend_from_slice(&[0, 0, 1, 0, 1]);
    assert!(wire::parse_response(&p).is_err());
}

/// Every truncation and thousands of random corruptions of a real answer
/// parse or fail, never panic (the daemon must not die on a packet).
#[test]
fn corrupted_packets_never_panic() {
    let q = wire::build_query(3, "www.example", TYPE_MX, true);
    let good = reply(
        &q,
        RCODE::NoError,
        false,
        vec![
            cname("www.example", 60, "mail.example"),
            mx("mail.example", 5, "mx.mail.example"),
        ],
        vec![soa("example", 60, 60)],
    );
    for n in 0..good.len() {
        let _ = wire::parse_response(&good[..n]);
    }
    let mut seed = 0x1234_5678_9abc_def0u64;
    for _ in 0..20_000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut p = good.clone();
        let i = (seed as usize) % p.len();
        p[i] = (seed >> 32) as u8;
        if let Ok(r) = wire::parse_response(&p) {
            let _ = wire::interpret(&r, "www.example", TYPE_MX, 8);
        }
    }
}

// ---------- resolv.conf ----------

/// resolv.conf parsing: comments and other lines ignored, port 53, IPv6
/// with a numeric zone kept, a named zone skipped, duplicates dropped.
#[test]
fn resolv_conf_parsing() {
    let text = "# comment\nsearch lan\nnameserver 192.0.2.53\nnameserver 2001:db8::53\n\
                nameserver fe80::1%eth0\nnameserver fe80::2%3\nnameserver 192.0.2.53\nnameserver bogus\n";
    let v = parse_resolv_conf(text);
    assert_eq!(v.len(), 3);
    assert_eq!(v[0], "192.0.2.53:53".parse().unwrap());
    assert_eq!(v[1], "[2001:db8::53]:53".parse().unwrap());
    assert!(matches!(v[2], SocketAddr::V6(s) if s.scope_id() == 3));
}

/// Source order: configured resolver, else resolv.conf.auto, else
/// /etc/resolv.conf (also when the first file exists but lists none), else
/// a clear error.
#[test]
fn nameserver_source_order() {
    let dir = std::env::temp_dir().join(format!("mxspool-dns-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let auto = dir.join("auto");
    let etc = dir.join("etc");
    let missing = dir.join("missing");
    std::fs::write(&auto, "nameserver 198.51.100.1\n").unwrap();
    std::fs::write(&etc, "nameserver 127.0.0.1\n").unwrap();
    let conf: SocketAddr = "10.0.0.1:5353".parse().unwrap();
    assert_eq!(nameservers_from(Some(conf), &[&auto, &etc]), Ok(vec![conf]));
    assert_eq!(
        nameservers_from(None, &[&auto, &etc]),
        Ok(vec!["198.51.100.1:53".parse().unwrap()])
    );
    assert_eq!(
        nameservers_from(None, &[&missing, &etc]),
        Ok(vec!["127.0.0.1:53".parse().unwrap()])
    );
    std::fs::write(&auto, "# wan down\n").unwrap();
    assert_eq!(
        nameservers_from(None, &[&auto, &etc]),
        Ok(vec!["127.0.0.1:53".parse().unwrap()])
    );
    assert_eq!(
        nameservers_from(None, &[&missing]),
        Err(DnsError::NoNameservers)
    );
    assert!(DnsError::NoNameservers.to_string().contains("resolver"));
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------- async: fake servers ----------

type Handler = dyn Fn(&[u8], bool) -> Vec<Vec<u8>>;

struct Fake {
    addr: SocketAddr,
    /// Queries received (UDP and TCP).
    hits: Rc<Cell<u32>>,
}

/// A UDP+TCP server on one 127.0.0.1 port; `h(query, is_tcp)` returns the
/// messages to send back (none = stay silent).
async fn fake(
    ex: &Rc<smol::LocalExecutor<'static>>,
    h: impl Fn(&[u8], bool) -> Vec<Vec<u8>> + 'static,
) -> Fake {
    let h: Rc<Handler> = Rc::new(h);
    let hits = Rc::new(Cell::new(0));
    let (udp, tcp) = loop {
        let udp = async_net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = udp.local_addr().unwrap().port();
        if let Ok(tcp) = async_net::TcpListener::bind(("127.0.0.1", port)).await {
            break (udp, tcp);
        }
    };
    let addr = udp.local_addr().unwrap();
    let (h2, hits2) = (h.clone(), hits.clone());
    ex.spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, peer)) = udp.recv_from(&mut buf).await {
            hits2.set(hits2.get() + 1);
            for m in h2(&buf[..n], false) {
                let _ = udp.send_to(&m, peer).await;
            }
        }
    })
    .detach();
    let ex2 = ex.clone();
    let hits3 = hits.clone();
    ex.spawn(async move {
        use futures_lite::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = tcp.accept().await {
            let (h, hits) = (h.clone(), hits3.clone());
            ex2.spawn(async move {
                let mut lb = [0u8; 2];
                if s.read_exact(&mut lb).await.is_err() {
                    return;
                }
                let mut q = vec![0u8; usize::from(u16::from_be_bytes(lb))];
                if s.read_exact(&mut q).await.is_err() {
                    return;
                }
                hits.set(hits.get() + 1);
                for m in h(&q, true) {
                    let _ = s.write_all(&(m.len() as u16).to_be_bytes()).await;
                    let _ = s.write_all(&m).await;
                }
            })
            .detach();
        }
    })
    .detach();
    Fake { addr, hits }
}

fn block<T>(f: impl AsyncFnOnce(Rc<smol::LocalExecutor<'static>>) -> T) -> T {
    let ex = Rc::new(smol::LocalExecutor::new());
    smol::block_on(ex.run(f(ex.clone())))
}

fn quick() -> Options {
    Options {
        timeout: Duration::from_millis(300),
        attempts: 1,
        ..Options::default()
    }
}

/// Flips the id of an answer (a spoofed packet with the wrong id).
fn with_wrong_id(mut m: Vec<u8>) -> Vec<u8> {
    m[0] ^= 0x55;
    m
}

/// A plain MX answer; a second lookup is served from the cache.
#[test]
fn mx_answer_and_cache() {
    block(async |ex| {
        let s = fake(&ex, |q, _| {
            vec![ok(
                q,
                vec![
                    mx("example.com", 20, "MX2.example.com."),
                    mx("example.com", 10, "mx1.example.com"),
                ],
            )]
        })
        .await;
        let r = Resolver::new(vec![s.addr], quick());
        let want = MxAnswer {
            records: vec![
                Mx {
                    preference: 10,
                    exchange: "mx1.example.com".into(),
                },
                Mx {
                    preference: 20,
                    exchange: "mx2.example.com".into(),
                },
            ],
            exists: true,
        };
        assert_eq!(r.mx("Example.COM.").await, Ok(want.clone()));
        assert_eq!(r.clone().mx("example.com").await, Ok(want));
        assert_eq!(
            s.hits.get(),
            1,
            "second lookup from cache (shared by clones)"
        );
    });
}

/// A spoofed answer with the wrong id, and one for another question, are
/// ignored; the real answer that follows is taken.
#[test]
fn spoofed_answers_ignored() {
    block(async |ex| {
        let s = fake(&ex, |q, _| {
            let mut evil = wire::build_query(0, "evil.example", TYPE_A, true);
            evil[..2].copy_from_slice(&q[..2]); // right id, wrong question
            vec![
                with_wrong_id(ok(q, vec![a("host.example", 60, [6, 6, 6, 6])])),
                ok(&evil, vec![a("evil.example", 60, [6, 6, 6, 6])]),
                ok(q, vec![a("host.example", 60, [192, 0, 2, 1])]),
            ]
        })
        .await;
        let r = Resolver::new(vec![s.addr], quick());
        let a = r.a("host.example").await;
        assert_eq!(a, Ok(vec![Ipv4Addr::new(192, 0, 2, 1)]));
    });
}

/// TC over UDP → the same question over TCP to the same server.
#[test]
fn truncation_falls_back_to_tcp() {
    block(async |ex| {
        let s = fake(&ex, |q, tcp| {
            if tcp {
                vec![ok(
                    q,
                    vec![rr(
                        "big.example",
                        60,
                        SR::TXT(sd::TXT::new().with_string("v=spf1 -all").unwrap()),
                    )],
                )]
            } else {
                vec![reply(q, RCODE::NoError, true, vec![], vec![])]
            }
        })
        .await;
        let r = Resolver::new(vec![s.addr], quick());
        assert_eq!(
            r.txt("big.example").await,
            Ok(vec!["v=spf1 -all".to_string()])
        );
        assert_eq!(s.hits.get(), 2, "one UDP, one TCP");
    });
}

/// A silent server times out and the next one answers; with only silent
/// servers the error is a (temporary) timeout.
#[test]
fn timeout_then_next_server() {
    block(async |ex| {
        let dead = fake(&ex, |_, _| vec![]).await;
        let live = fake(&ex, |q, _| {
            vec![ok(q, vec![a("h.example", 60, [192, 0, 2, 9])])]
        })
        .await;
        let r = Resolver::new(vec![dead.addr, live.addr], quick());
        let t = Instant::now();
        assert_eq!(
            r.a("h.example").await,
            Ok(vec![Ipv4Addr::new(192, 0, 2, 9)])
        );
        assert!(t.elapsed() >= Duration::from_millis(300));
        assert_eq!(dead.hits.get(), 1);

        let r = Resolver::new(
            vec![dead.addr],
            Options {
                attempts: 2,
                ..quick()
            },
        );
        let e = r.a("h.example").await;
        assert_eq!(e, Err(DnsError::Timeout));
        assert!(DnsError::Timeout.is_temporary());
        assert_eq!(dead.hits.get(), 3, "two rounds");
    });
}

/// SERVFAIL moves on to the next server; NXDOMAIN is final (the next
/// server is not asked) and cached by the SOA.
#[test]
fn servfail_fails_over_nxdomain_is_final() {
    block(async |ex| {
        let bad = fake(&ex, |q, _| {
            vec![reply(q, RCODE::ServerFailure, false, vec![], vec![])]
        })
        .await;
        let nx = fake(&ex, |q, _| {
            vec![reply(
                q,
                RCODE::NameError,
                false,
                vec![],
                vec![soa("example", 600, 600)],
            )]
        })
        .await;
        let spare = fake(&ex, |q, _| vec![ok(q, vec![])]).await;
        let r = Resolver::new(vec![bad.addr, nx.addr, spare.addr], quick());
        assert_eq!(r.mx("gone.example").await, Err(DnsError::NxDomain));
        assert_eq!(r.mx("gone.example").await, Err(DnsError::NxDomain));
        assert_eq!((bad.hits.get(), nx.hits.get(), spare.hits.get()), (1, 1, 0));
        assert!(!DnsError::NxDomain.is_temporary());

        let r = Resolver::new(vec![bad.addr], quick());
        assert_eq!(r.mx("x.example").await, Err(DnsError::ServFail));
    });
}

/// NODATA for MX: the domain exists with no MX records.
#[test]
fn mx_nodata() {
    block(async |ex| {
        let s = fake(&ex, |q, _| {
            vec![reply(
                q,
                RCODE::NoError,
                false,
                vec![],
                vec![soa("example", 60, 60)],
            )]
        })
        .await;
        let r = Resolver::new(vec![s.addr], quick());
        assert_eq!(
            r.mx("example").await,
            Ok(MxAnswer {
                records: vec![],
                exists: true
            })
        );
    });
}

/// ip(): A then AAAA, alias reported, the chain's target re-queried when the
/// server only returned the CNAME; IP literals need no DNS.
#[test]
fn ip_with_alias_and_requery() {
    block(async |ex| {
        let s = fake(&ex, |q, _| {
            let (name, t) = qinfo(q);
            match (name.as_str(), t) {
                ("alias.example", _) => {
                    vec![ok(q, vec![cname("alias.example", 60, "real.example")])]
                }
                ("real.example", TYPE_A) => {
                    vec![ok(q, vec![a("real.example", 60, [192, 0, 2, 5])])]
                }
                ("real.example", TYPE_AAAA) => vec![ok(
                    q,
                    vec![rr(
                        "real.example",
                        60,
                        SR::AAAA(sd::AAAA {
                            address: u128::from(Ipv6Addr::LOCALHOST),
                        }),
                    )],
                )],
                _ => vec![reply(q, RCODE::NameError, false, vec![], vec![])],
            }
        })
        .await;
        let r = Resolver::new(vec![s.addr], quick());
        let got = r.ip("alias.example").await;
        assert_eq!(
            got,
            Ok(IpAnswer {
                addrs: vec!["192.0.2.5".parse().unwrap(), "::1".parse().unwrap()],
                cname: Some("real.example".into()),
            })
        );
        assert_eq!(s.hits.get(), 4);
        assert_eq!(r.ip("nope.example").await, Err(DnsError::NxDomain));
        let lit = r.ip("[2001:db8::1]").await;
        assert_eq!(
            lit.map(|a| a.addrs),
            Ok(vec!["2001:db8::1".parse().unwrap()])
        );
    });
}

/// PTR lookups ask the reverse name.
#[test]
fn ptr_lookup() {
    block(async |ex| {
        let s = fake(&ex, |q, _| match qinfo(q).0.as_str() {
            "1.2.0.192.in-addr.arpa" => vec![ok(
                q,
                vec![rr(
                    "1.2.0.192.in-addr.arpa",
                    60,
                    SR::PTR(sd::PTR(Name::new_unchecked("Mail.Example."))),
                )],
            )],
            _ => vec![reply(q, RCODE::NameError, false, vec![], vec![])],
        })
        .await;
        let r = Resolver::new(vec![s.addr], quick());
        assert_eq!(
            r.ptr("192.0.2.1".parse().unwrap()).await,
            Ok(vec!["mail.example".to_string()])
        );
    });
}

/// No servers at all: a clear, temporary error rather than a panic.
#[test]
fn no_servers() {
    let r = Resolver::new(vec![], quick());
    assert_eq!(
        smol::block_on(r.a("x.example")),
        Err(DnsError::NoNameservers)
    );
}

/// A server whose port is closed (ICMP port unreachable) is skipped at
/// once, without waiting for the timeout.
#[test]
fn closed_port_fails_over_fast() {
    block(async |ex| {
        let closed = {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap()
        };
        let live = fake(&ex, |q, _| {
            vec![ok(q, vec![a("h.example", 60, [192, 0, 2, 9])])]
        })
        .await;
        let opts = Options {
            timeout: Duration::from_secs(5),
            ..quick()
        };
        let r = Resolver::new(vec![closed, live.addr], opts);
        let t = Instant::now();
        assert_eq!(
            r.a("h.example").await,
            Ok(vec![Ipv4Addr::new(192, 0, 2, 9)])
        );
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "took {:?}",
            t.elapsed()
        );
    });
}

/// A server that rejects EDNS with FORMERR is asked again without it; other
/// error codes (NOTIMP) move on to the next server.
#[test]
fn formerr_retries_without_edns_other_codes_fail_over() {
    block(async |ex| {
        let old = fake(&ex, |q, _| {
            if Packet::parse(q).is_ok_and(|p| p.opt().is_some()) {
                vec![reply(q, RCODE::FormatError, false, vec![], vec![])]
            } else {
                vec![ok(q, vec![a("h.example", 60, [192, 0, 2, 3])])]
            }
        })
        .await;
        let r = Resolver::new(vec![old.addr], quick());
        assert_eq!(
            r.a("h.example").await,
            Ok(vec![Ipv4Addr::new(192, 0, 2, 3)])
        );
        assert_eq!(old.hits.get(), 2);

        let notimp = fake(&ex, |q, _| {
            vec![reply(q, RCODE::NotImplemented, false, vec![], vec![])]
        })
        .await;
        let r = Resolver::new(vec![notimp.addr, old.addr], quick());
        assert_eq!(
            r.a("h.example").await,
            Ok(vec![Ipv4Addr::new(192, 0, 2, 3)])
        );
        assert_eq!(notimp.hits.get(), 1);
    });
}
