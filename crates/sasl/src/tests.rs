use super::*;

const SECRET: [u8; 32] = [7; 32];

/// RFC 7677 §3: the SCRAM-SHA-256 example exchange, byte for byte.
#[test]
fn rfc7677_example() {
    let salt = decode(b"W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
    let creds = ScramCredentials::derive("pencil", &salt, 4096);
    let (mut x, next) = Exchange::start(
        Mechanism::ScramSha256,
        Some(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"),
        SECRET,
    );
    assert_eq!(
        next,
        Next::Lookup {
            user: "user".into()
        }
    );
    let next = x.credentials(Some(creds.clone()), "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0");
    assert_eq!(
        next,
        Next::Challenge(
            b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
                .to_vec()
        )
    );
    let next = x.respond(b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=");
    assert_eq!(
        next,
        Next::Verified {
            user: "user".into(),
            ok: true,
            server_final: b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=".to_vec(),
        }
    );
    // The stored form round-trips.
    assert_eq!(
        ScramCredentials::from_stored(&creds.to_stored()),
        Some(creds)
    );
}

#[test]
fn scram_refusals() {
    let salt = decode(b"W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
    let creds = ScramCredentials::derive("pencil", &salt, 4096);
    let start = |first: &[u8]| Exchange::start(Mechanism::ScramSha256, Some(first), SECRET);
    // A wrong proof: verified, not ok.
    let (mut x, _) = start(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
    x.credentials(Some(creds.clone()), "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0");
    let next = x.respond(b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=AAAAZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=");
    assert!(matches!(next, Next::Verified { ok: false, .. }));
    // A nonce that is not ours, a wrong c=.
    let (mut x, _) = start(b"n,,n=user,r=abc");
    x.credentials(Some(creds.clone()), "XYZ");
    assert!(matches!(
        x.respond(b"c=biws,r=abcXYQ,p=AAAA"),
        Next::Failed(_)
    ));
    let (mut x, _) = start(b"n,,n=user,r=abc");
    x.credentials(Some(creds.clone()), "XYZ");
    assert!(matches!(
        x.respond(b"c=eSws,r=abcXYZ,p=AAAA"),
        Next::Failed(_)
    ));
    // Channel binding asked for; mandatory extension; another authzid; bad saslname.
    assert_eq!(
        start(b"p=tls-unique,,n=user,r=abc").1,
        Next::Failed(Error::ChannelBinding)
    );
    assert!(matches!(start(b"n,,m=x,n=user,r=abc").1, Next::Failed(_)));
    assert_eq!(
        start(b"n,a=other,n=user,r=abc").1,
        Next::Failed(Error::Authzid)
    );
    assert!(matches!(start(b"n,,n=us=er,r=abc").1, Next::Failed(_)));
    assert_eq!(
        start(b"n,a=us=2Cer,n=us=2Cer,r=abc").1,
        Next::Lookup {
            user: "us,er".into()
        }
    );
    // An unknown user gets a stable salt, and a proof never matches.
    let (mut x, _) = start(b"n,,n=ghost,r=abc");
    let a = x.credentials(None, "N");
    let (mut y, _) = start(b"n,,n=ghost,r=abc");
    assert_eq!(a, y.credentials(None, "N"));
    // Out-of-order use and junk are failures, never panics.
    let (mut x, _) = Exchange::start(Mechanism::ScramSha256, None, SECRET);
    assert!(matches!(x.credentials(None, "N"), Next::Failed(_)));
    for junk in [
        &b""[..],
        b",",
        b"n,",
        b"n,,",
        b"n,,n=",
        b"n,,n=a",
        b"n,,r=x,n=a",
        b"\xff",
    ] {
        let (_, n) = start(junk);
        assert!(matches!(n, Next::Failed(_)), "{junk:?}: {n:?}");
    }
}

#[test]
fn plain_and_login() {
    let (_, n) = Exchange::start(Mechanism::Plain, Some(b"\0bob\0secret"), SECRET);
    assert_eq!(
        n,
        Next::CheckPassword {
            user: "bob".into(),
            password: "secret".into()
        }
    );
    let (_, n) = Exchange::start(Mechanism::Plain, Some(b"alice\0bob\0secret"), SECRET);
    assert_eq!(n, Next::Failed(Error::Authzid));
    let (mut x, n) = Exchange::start(Mechanism::Plain, None, SECRET);
    assert_eq!(n, Next::Challenge(vec![]));
    assert!(matches!(x.respond(b"bob\0secret"), Next::Failed(_)));
    let (mut x, n) = Exchange::start(Mechanism::Login, None, SECRET);
    assert_eq!(n, Next::Challenge(b"Username:".to_vec()));
    assert_eq!(x.respond(b"bob"), Next::Challenge(b"Password:".to_vec()));
    assert_eq!(
        x.respond(b"pw"),
        Next::CheckPassword {
            user: "bob".into(),
            password: "pw".into()
        }
    );
}

#[test]
fn base64_is_strict_everywhere() {
    assert_eq!(
        decode_response(b"AGJvYgBzZWNyZXQ=\r\n").unwrap(),
        b"\0bob\0secret"
    );
    assert_eq!(decode_response(b"="), Ok(vec![]));
    assert_eq!(decode_response(b"*"), Err(Error::Cancelled));
    for bad in [
        &b"AGJvYgBzZWNyZXQ"[..],
        b"AGJv YgBz",
        b"!!!!",
        b"AGJvYgBzZWNyZXR=",
    ] {
        assert_eq!(decode_response(bad), Err(Error::Base64), "{bad:?}");
    }
    assert_eq!(decode_response(&vec![b'A'; 10_000]), Err(Error::TooLong));
}
