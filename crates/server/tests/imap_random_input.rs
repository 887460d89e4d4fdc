//! Seeded random IMAP input (fragments of real commands and noise) against a real store:
//! the session never panics or stalls. The fuzz target `imap_session` runs the same
//! property on coverage-guided input.

use yubin_server::imap::testing::{exercise, sample_store};
use yubin_smtp::testing::Rng;

const FRAGMENTS: &[&[u8]] = &[
    b"a SELECT INBOX\r\n",
    b"b FETCH 1:* (FLAGS BODY[] BODYSTRUCTURE ENVELOPE)\r\n",
    b"c UID FETCH 1:* (BODY.PEEK[1.2.HEADER] BODY[2.MIME]<0.5>)\r\n",
    b"d STORE 1 +FLAGS (\\Seen)\r\n",
    b"e SEARCH OR FROM a NOT BODY x\r\n",
    b"f APPEND INBOX {5}\r\n",
    b"hello",
    b"g IDLE\r\n",
    b"DONE\r\n",
    b"h EXPUNGE\r\n",
    b"i COPY 1:* Archive\r\n",
    b"j MOVE 2 Trash\r\n",
    b"k LIST \"\" *\r\n",
    b"l CREATE a/b\r\n",
    b"m RENAME a x\r\n",
    b"n STATUS INBOX (MESSAGES UIDNEXT)\r\n",
    b"o AUTHENTICATE PLAIN\r\n",
    b"p ENABLE QRESYNC\r\n",
    b"q UID FETCH 1:* FLAGS (CHANGEDSINCE 1 VANISHED)\r\n",
    b"{3}\r\n",
    b"{99999999}\r\n",
    b"{4+}\r\n",
    b"(",
    b")",
    b"\"",
    b"\\",
    b"*",
    b"\r\n",
    b"\0",
    b"\xff",
    b" ",
    b"1:*",
    b"r GETQUOTAROOT INBOX\r\n",
    b"s UID EXPUNGE 1:*\r\n",
    b"t STARTTLS\r\n",
    b"u LOGOUT\r\n",
    // The forms ext.rs rewrites before imap-codec decodes them.
    b"v LIST \"\" (INBOX \"a b\" %/x)\r\n",
    b"w LIST (SUBSCRIBED RECURSIVEMATCH) \"\" % RETURN (CHILDREN)\r\n",
    b"x UID SORT RETURN (MIN MAX COUNT ALL) (REVERSE DATE) UTF-8 ALL\r\n",
    b"y FETCH 1:* (PREVIEW (LAZY) FLAGS)\r\n",
    b"z CREATE q (USE (\\Sent))\r\n",
    b"A SETMETADATA INBOX (/private/c \"v\" /shared/x NIL)\r\n",
    b"B GETMETADATA (DEPTH infinity MAXSIZE 3) \"\" /shared\r\n",
    b"C APPEND INBOX UTF8 (~{3+}\r\nabc)\r\n",
    b"D ENABLE UTF8=ACCEPT IMAP4rev2\r\n",
    b"E SEARCH YOUNGER 10 OLDER 5 RECENT NEW OLD\r\n",
    b"F LSUB \"\" %\r\n",
    b"G SUBSCRIBE x/y\r\n",
    b"H DELETE x\r\n",
    b"I SEARCH RETURN (SAVE MIN) ALL\r\n",
    b"J UID FETCH $ (FLAGS)\r\n",
    b"K SEARCH $ OR $ SEEN\r\n",
    // Extensions parsed by hand (extcmd, imapurl, notify) and CATENATE.
    b"L ENABLE UIDONLY\r\n",
    b"M UID FETCH 1:* (FLAGS) (PARTIAL -1:-3)\r\n",
    b"N UID SEARCH RETURN (UPDATE ALL) UNSEEN\r\n",
    b"O CANCELUPDATE \"N\"\r\n",
    b"P MYRIGHTS INBOX\r\n",
    b"Q GETACL \"INBOX\"\r\n",
    b"R SETACL INBOX anyone lr\r\n",
    b"S NOTIFY SET STATUS (selected (MessageNew (UID BODY.PEEK[HEADER.FIELDS (SUBJECT)]) MessageExpunge FlagChange)) (personal (MessageNew MessageExpunge MailboxName SubscriptionChange))\r\n",
    b"T NOTIFY NONE\r\n",
    b"U APPEND Drafts CATENATE (URL \"/INBOX/;UID=1/;SECTION=1\" TEXT {3+}\r\nabc)\r\n",
    b"V GENURLAUTH \"imap://bob%40example.test@h/INBOX/;UID=1;URLAUTH=anonymous\" INTERNAL\r\n",
    b"W URLFETCH \"imap://bob%40example.test@h/INBOX/;UID=1;URLAUTH=anonymous:internal:00\"\r\n",
    b"X RESETKEY INBOX\r\n",
    b"Y SORT RETURN (UPDATE) (SUBJECT) UTF-8 ALL\r\n",
    b" CATENATE (",
    b" URL \";UID=1\"",
    b"(subtree (",
    b";PARTIAL=0.5",
    b"$",
    b"UTF8 (",
    b"~{",
    b" PREVIEW",
    b" RETURN (",
    b" (USE (",
];

#[test]
fn random_input_never_breaks_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let store = sample_store(dir.path());
    let mut rng = Rng(0x5DEE_CE66_D1CE_4E5B);
    for _ in 0..400 {
        let mut input = Vec::new();
        for _ in 0..rng.below(25) {
            if rng.below(5) == 0 {
                let n = rng.below(200);
                input.extend((0..n).map(|_| rng.next_u64() as u8));
            } else {
                input.extend_from_slice(FRAGMENTS[rng.below(FRAGMENTS.len())]);
            }
        }
        let login = rng.below(4) != 0;
        exercise(store.clone(), login, &input, || rng.below(64) + 1);
    }
}
