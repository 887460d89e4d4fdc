use super::*;

fn authed(domain: &str) -> Evidence {
    Evidence {
        checked: true,
        spf_mail_from: Some(AuthResult::Pass),
        dkim: vec![(AuthResult::Pass, domain.into())],
        dmarc: Some(Dmarc {
            result: AuthResult::Pass,
            policy: DmarcPolicy::Reject,
            domain: domain.into(),
        }),
        from_domain: Some(domain.into()),
        ..Default::default()
    }
}

fn dmarc_fail(policy: DmarcPolicy) -> Evidence {
    Evidence {
        checked: true,
        spf_mail_from: Some(AuthResult::Fail),
        dkim: vec![(AuthResult::Fail, "example.com".into())],
        dmarc: Some(Dmarc {
            result: AuthResult::Fail,
            policy,
            domain: "example.com".into(),
        }),
        from_domain: Some("example.com".into()),
        ..Default::default()
    }
}

const ONE: &[RcptPolicy] = &[RcptPolicy {
    junk: None,
    reject: None,
    known_sender: false,
}];

#[test]
fn authenticated_mail_goes_to_inbox() {
    let d = decide(&authed("example.com"), &Policy::default(), ONE);
    assert_eq!(d.rcpts, vec![Outcome::Inbox]);
    assert!(d.score < 0.0);
    assert!(d.headers.replace("\r\n\t", "").starts_with("X-Spam-Status: No, score=-1.4 required=5.0 tests=SPF_PASS(-0.2),DKIM_PASS(-0.2),DMARC_PASS(-1.0)\r\n"), "{}", d.headers);
    assert!(d.refusal().is_none());
}

#[test]
fn dmarc_reject_is_refused_or_junked() {
    let d = decide(&dmarc_fail(DmarcPolicy::Reject), &Policy::default(), ONE);
    assert!(
        matches!(&d.rcpts[0], Outcome::Reject { code: 550, text } if text.contains("DMARC policy of example.com"))
    );
    assert!(d.refusal().is_some());
    let p = Policy {
        dmarc_reject: OnDmarcReject::Quarantine,
        ..Policy::default()
    };
    let d = decide(&dmarc_fail(DmarcPolicy::Reject), &p, ONE);
    assert_eq!(d.rcpts, vec![Outcome::Junk]);
    assert!(d.headers.contains("X-Spam-Flag: YES\r\n"));
    let d = decide(
        &dmarc_fail(DmarcPolicy::Quarantine),
        &Policy::default(),
        ONE,
    );
    assert_eq!(d.rcpts, vec![Outcome::Junk]);
    // p=none: scored, not enforced.
    let d = decide(&dmarc_fail(DmarcPolicy::None), &Policy::default(), ONE);
    assert_eq!(d.rcpts, vec![Outcome::Inbox]);
    assert!(d.reasons.iter().any(|r| r.rule == "DMARC_NONE_FAIL"));
}

#[test]
fn forged_local_from() {
    let e = Evidence {
        checked: true,
        from_is_local: true,
        from_domain: Some("ours.example".into()),
        spf_mail_from: Some(AuthResult::None),
        ..Default::default()
    };
    let d = decide(&e, &Policy::default(), ONE);
    assert_eq!(d.rcpts, vec![Outcome::Junk]);
    let p = Policy {
        forgery: OnForgery::Reject,
        ..Policy::default()
    };
    assert!(matches!(
        decide(&e, &p, ONE).rcpts[0],
        Outcome::Reject { code: 550, .. }
    ));
    // An aligned DKIM pass (a subdomain signing) is not a forgery, even without DMARC.
    let e = Evidence {
        dkim: vec![(AuthResult::Pass, "mail.ours.example".into())],
        ..e
    };
    assert_eq!(decide(&e, &p, ONE).rcpts, vec![Outcome::Inbox]);
    // Not checked (a local client, or authenticated submission): nothing is judged.
    let e = Evidence {
        checked: false,
        dkim: vec![],
        ..e
    };
    assert_eq!(decide(&e, &p, ONE).rcpts, vec![Outcome::Inbox]);
}

#[test]
fn blocklists_and_allow_list() {
    let listed = |reject| Evidence {
        checked: true,
        listings: vec![Listing {
            zone: "zen.example".into(),
            what: "192.0.2.1".into(),
            weight: 6.0,
            reject,
        }],
        ..Default::default()
    };
    let d = decide(&listed(false), &Policy::default(), ONE);
    assert_eq!(d.rcpts, vec![Outcome::Junk]);
    assert!(d.headers.contains("BLOCKLISTED(6.0)"));
    let d = decide(&listed(true), &Policy::default(), ONE);
    assert_eq!(
        d.rcpts,
        vec![Outcome::Reject {
            code: 554,
            text: "192.0.2.1 is listed by zen.example".into()
        }]
    );
    let e = Evidence {
        allowed: true,
        ..listed(true)
    };
    assert_eq!(
        decide(&e, &Policy::default(), ONE).rcpts,
        vec![Outcome::Inbox]
    );
}

#[test]
fn per_recipient_thresholds() {
    let e = Evidence {
        checked: true,
        spf_mail_from: Some(AuthResult::Fail),
        dkim: vec![(AuthResult::Fail, "x.example".into())],
        ..Default::default()
    };
    // Score 3.0: INBOX by the server's threshold, Junk for the stricter user, refused
    // for the strictest.
    let rcpts = [
        RcptPolicy::default(),
        RcptPolicy {
            junk: Some(2.0),
            ..Default::default()
        },
        RcptPolicy {
            junk: Some(1.0),
            reject: Some(2.5),
            ..Default::default()
        },
    ];
    let d = decide(&e, &Policy::default(), &rcpts);
    assert_eq!(d.score, 3.0);
    assert_eq!(d.rcpts[0], Outcome::Inbox);
    assert_eq!(d.rcpts[1], Outcome::Junk);
    assert!(matches!(d.rcpts[2], Outcome::Reject { .. }));
    // Some copies are stored, so the message as a whole is accepted.
    assert!(d.refusal().is_none());
}

#[test]
fn timeouts_follow_policy() {
    let e = Evidence {
        checked: true,
        timed_out: true,
        spf_mail_from: Some(AuthResult::TempError),
        ..Default::default()
    };
    let d = decide(&e, &Policy::default(), ONE);
    assert_eq!(d.rcpts, vec![Outcome::Inbox]);
    assert!(d.headers.contains("CHECKS_TIMED_OUT"));
    let p = Policy {
        on_timeout: OnTimeout::TempFail,
        ..Policy::default()
    };
    let d = decide(&e, &p, ONE);
    assert!(matches!(d.refusal(), Some(Outcome::TempFail(_))));
}

#[test]
fn header_text_is_clean() {
    let e = Evidence {
        checked: true,
        listings: vec![Listing {
            zone: "z\r\nX-Evil: 1".into(),
            what: "a".into(),
            weight: 1.0,
            reject: true,
        }],
        ..Default::default()
    };
    let d = decide(&e, &Policy::default(), ONE);
    let Outcome::Reject { text, .. } = &d.rcpts[0] else {
        panic!("{:?}", d.rcpts)
    };
    assert!(!text.contains('\r') && !text.contains('\n'));
    assert!(!d.headers.contains("X-Evil"));
}

#[test]
fn partial_results_name_what_did_not_finish() {
    let e = Evidence {
        checked: true,
        spf_mail_from: Some(AuthResult::Pass),
        from_domain: Some("ex\r\nample.com".into()),
        ..Default::default()
    };
    let h = partial_results("mx.example.org", &e, "a@example.com");
    assert_eq!(
        h,
        "Authentication-Results: mx.example.org;\r\n\tdkim=temperror;\r\n\t\
         spf=pass smtp.mailfrom=a@example.com;\r\n\tdmarc=temperror header.from=\"ex  ample.com\"\r\n"
    );
}

#[test]
fn dmarc_percentages() {
    assert_eq!(dmarc_pct("v=DMARC1; p=reject; pct=20"), Some(20));
    assert_eq!(dmarc_pct("v=DMARC1; p=reject; PCT = 0 ;"), Some(0));
    assert_eq!(dmarc_pct("v=DMARC1; p=reject"), None);
    assert_eq!(dmarc_pct("v=DMARC1; pct=101"), None);
    assert_eq!(dmarc_pct("v=spf1 pct=5"), None);
    assert_eq!(
        apply_pct(DmarcPolicy::Reject, 0, 0),
        DmarcPolicy::Quarantine
    );
    assert_eq!(apply_pct(DmarcPolicy::Reject, 100, 99), DmarcPolicy::Reject);
    assert_eq!(
        apply_pct(DmarcPolicy::Quarantine, 50, 50),
        DmarcPolicy::None
    );
    assert_eq!(
        apply_pct(DmarcPolicy::Quarantine, 50, 49),
        DmarcPolicy::Quarantine
    );
}

#[test]
fn explanation_of_a_stored_verdict() {
    let d = decide(
        &dmarc_fail(DmarcPolicy::Quarantine),
        &Policy::default(),
        ONE,
    );
    let msg = format!(
        "Authentication-Results: mx.example.org;\r\n\tspf=fail smtp.mailfrom=a@example.com\r\n{}Subject: x\r\n\r\nbody",
        d.headers
    );
    let e = explain(msg.as_bytes());
    assert!(
        e.starts_with("Verdict: Yes, score=6.0 required=5.0\n"),
        "{e}"
    );
    assert!(
        e.contains("DMARC_QUARANTINE") && e.contains("asks for quarantine"),
        "{e}"
    );
    assert!(
        e.contains("  spf=fail smtp.mailfrom=a@example.com\n"),
        "{e}"
    );
    assert!(explain(b"Subject: x\r\n\r\n").starts_with("No verdict"));
}

#[test]
fn hostile_input_seeded() {
    // Each seed is up to a few MiB; the fuzz target goes on from here.
    for seed in 0..100 {
        exercise(&generate(seed));
    }
    // Deep and long: a megabyte of open comments, of folding, of links.
    exercise(&vec![b'('; 1 << 20]);
    exercise(&b"A: x\r\n\t".repeat(100_000));
    exercise(&b"http://a.b/ ".repeat(100_000));
    exercise(&b"\r".repeat(1 << 20));
}
