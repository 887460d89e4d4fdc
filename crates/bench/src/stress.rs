//! `yubin-bench stress`: many clients, each looping LOGIN → SELECT → FETCH → STORE of flags
//! and keywords → APPEND → EXPUNGE → LOGOUT on one shared mailbox, checking every reply
//! it gets — the load of imaptest's stress mode, where real clients log in all the time.
//!
//! What a reply must satisfy (each violation is a protocol error, counted and shown):
//! - every command ends in a tagged OK (a NO is allowed only for STORE/FETCH of a message
//!   another session expunged, RFC 9051 §7.5.1 / RFC 2180 §4);
//! - `* n EXISTS` never goes down, `* n EXPUNGE` and `* n FETCH` name a message that
//!   exists, `* n RECENT` is at most EXISTS (RFC 3501 §7.3, §7.4.1);
//! - a keyword in a FETCH's FLAGS was in the last `* FLAGS` (RFC 3501 §7.2.6);
//! - LOGOUT's `* BYE` comes before its tagged OK.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{Account, Rng, ms};

/// Keywords the clients set and clear (a fixed pool, as imaptest's).
const KEYWORDS: u64 = 20;
/// Messages put in the mailbox before the clock starts.
const PREFILL: usize = 50;
/// Longest line the checker accepts (a hostile or broken server cannot exhaust it).
const MAX_LINE: usize = 1 << 20;

#[derive(Default)]
struct Totals {
    commands: AtomicU64,
    logins: AtomicU64,
    errors: AtomicU64,
}

struct Conn {
    io: BufReader<TcpStream>,
    tag: u64,
    exists: u64,
    keywords: HashSet<String>,
    line: Vec<u8>,
    literal: Vec<u8>,
    /// Protocol errors seen on this connection (described).
    errors: Vec<String>,
    bye: bool,
}

/// How a tagged reply ended.
#[derive(PartialEq, Eq, Debug)]
enum Done {
    Ok,
    /// NO for a message expunged meanwhile (allowed for STORE/FETCH).
    Expunged,
}

fn number(b: &[u8]) -> Option<u64> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// The words inside the first `FLAGS (` ... `)` of `l`.
fn flags_in(l: &[u8]) -> Option<Vec<String>> {
    let s = String::from_utf8_lossy(l);
    let at = s.find("FLAGS (")? + "FLAGS (".len();
    let end = s.get(at..)?.find(')')? + at;
    Some(
        s.get(at..end)?
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
    )
}

impl Conn {
    fn connect(addr: &str) -> Result<Conn> {
        let tcp = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut c = Conn {
            io: BufReader::with_capacity(64 * 1024, tcp),
            tag: 0,
            exists: 0,
            keywords: HashSet::new(),
            line: Vec::with_capacity(1024),
            literal: Vec::new(),
            errors: Vec::new(),
            bye: false,
        };
        c.read_line()?;
        if !c.line.starts_with(b"* OK") {
            bail!("greeting: {}", String::from_utf8_lossy(&c.line));
        }
        Ok(c)
    }

    fn read_line(&mut self) -> Result<()> {
        self.line.clear();
        let n = (&mut self.io)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut self.line)?;
        if n == 0 {
            bail!("connection closed");
        }
        Ok(())
    }

    fn error(&mut self, what: String) {
        if self.errors.len() < 20 {
            self.errors.push(what);
        }
    }

    /// Check one untagged line against what the session knows.
    fn untagged(&mut self, cmd: &str) {
        let l = self.line.clone();
        let text = String::from_utf8_lossy(&l).trim_end().to_owned();
        let words: Vec<&[u8]> = l.trim_ascii_end().split(|&b| b == b' ').collect();
        match words.as_slice() {
            [_, b"FLAGS", ..] => {
                self.keywords = flags_in(&l)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|f| !f.starts_with('\\'))
                    .map(|f| f.to_ascii_lowercase())
                    .collect();
            }
            [_, n, b"EXISTS"] => match number(n) {
                Some(n) if n >= self.exists => self.exists = n,
                _ => self.error(format!(
                    "{cmd}: EXISTS went down from {}: {text}",
                    self.exists
                )),
            },
            [_, n, b"RECENT"] if number(n).is_none_or(|n| n > self.exists) => {
                self.error(format!(
                    "{cmd}: RECENT above EXISTS {}: {text}",
                    self.exists
                ));
            }
            [_, n, b"EXPUNGE"] => match number(n) {
                Some(n) if n >= 1 && n <= self.exists => self.exists -= 1,
                _ => self.error(format!(
                    "{cmd}: EXPUNGE of no message (EXISTS {}): {text}",
                    self.exists
                )),
            },
            [_, n, fetch, ..] if fetch.eq_ignore_ascii_case(b"FETCH") => {
                if number(n).is_none_or(|n| n < 1 || n > self.exists) {
                    self.error(format!(
                        "{cmd}: FETCH of no message (EXISTS {}): {text}",
                        self.exists
                    ));
                }
                if let Some(flags) = flags_in(&l) {
                    for f in flags.iter().filter(|f| !f.starts_with('\\')) {
                        if !self.keywords.contains(&f.to_ascii_lowercase()) {
                            self.error(format!("{cmd}: keyword {f} not in FLAGS first: {text}"));
                        }
                    }
                }
            }
            [_, b"BYE", ..] => self.bye = true,
            _ => {}
        }
    }

    /// Send a command (and a literal, with LITERAL+) and check everything up to its tag.
    fn run(&mut self, cmd: &str, literal: Option<&[u8]>, may_race: bool) -> Result<Done> {
        self.tag += 1;
        let tag = format!("s{}", self.tag);
        let mut out = format!("{tag} {cmd}").into_bytes();
        if let Some(lit) = literal {
            out.extend_from_slice(format!(" {{{}+}}\r\n", lit.len()).as_bytes());
            out.extend_from_slice(lit);
        }
        out.extend_from_slice(b"\r\n");
        self.io.get_mut().write_all(&out)?;
        loop {
            self.read_line()?;
            if self.line.ends_with(b"}\r\n")
                && let Some(open) = self.line.iter().rposition(|&b| b == b'{')
                && let Some(len) = self
                    .line
                    .get(open + 1..self.line.len() - 3)
                    .and_then(number)
            {
                // The line continues after the literal: check the whole of it as one.
                let head = self.line.clone();
                self.literal.resize(len as usize, 0);
                self.io.read_exact(&mut self.literal)?;
                self.read_line()?;
                let mut whole = head;
                whole.extend_from_slice(b"\"\"");
                whole.extend_from_slice(&self.line);
                self.line = whole;
            }
            if self.line.starts_with(b"* ") {
                self.untagged(cmd);
                continue;
            }
            if self.line.starts_with(b"+ ") {
                bail!("{cmd}: unexpected continuation (LITERAL+ not honoured)");
            }
            if let Some(rest) = self.line.strip_prefix(tag.as_bytes()) {
                if rest.starts_with(b" OK") {
                    return Ok(Done::Ok);
                }
                if may_race && rest.starts_with(b" NO") {
                    return Ok(Done::Expunged);
                }
                let text = String::from_utf8_lossy(&self.line).trim_end().to_owned();
                self.error(format!("{cmd}: {text}"));
                return Ok(Done::Ok);
            }
            let text = String::from_utf8_lossy(&self.line).trim_end().to_owned();
            self.error(format!(
                "{cmd}: line that is neither untagged nor tagged: {text}"
            ));
        }
    }
}

fn message(k: u64, n: u64) -> Vec<u8> {
    format!(
        "From: stress{k}@example.net\r\nTo: stress@example.test\r\nSubject: stress {k}/{n}\r\n\
         Date: Mon, 30 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{k}.{n}@stress>\r\n\r\n{}\r\n",
        "Lorem ipsum dolor sit amet, consectetur adipiscing elit.\r\n".repeat(20)
    )
    .into_bytes()
}

/// One client's loop; returns LOGIN latencies.
fn client(
    a: &Account,
    k: u64,
    stop: &AtomicBool,
    totals: &Totals,
    errors: &std::sync::Mutex<Vec<String>>,
) -> Result<Vec<Duration>> {
    let mut rng = Rng(0x5EED_0000 + k * 7919);
    let mut logins = Vec::new();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let mut c = Conn::connect(&a.addr)?;
        let t = Instant::now();
        c.run(
            &format!("LOGIN \"{}\" \"{}\"", a.user, a.password),
            None,
            false,
        )?;
        logins.push(t.elapsed());
        totals.logins.fetch_add(1, Ordering::Relaxed);
        let mut cmds = 1;
        c.run(&format!("SELECT \"{}\"", a.mailbox), None, false)?;
        cmds += 1;
        if c.exists > 0 {
            let from = rng.below(c.exists) + 1;
            let to = (from + 10).min(c.exists);
            c.run(&format!("FETCH {from}:{to} (UID FLAGS)"), None, true)?;
            let m = rng.below(c.exists) + 1;
            let kw = rng.below(KEYWORDS);
            c.run(
                &format!("STORE {m} +FLAGS (\\Seen $stress{kw})"),
                None,
                true,
            )?;
            let m = rng.below(c.exists) + 1;
            let kw = rng.below(KEYWORDS);
            c.run(
                &format!("STORE {m} -FLAGS ($stress{kw} \\Flagged)"),
                None,
                true,
            )?;
            c.run(&format!("FETCH {m} (FLAGS)"), None, true)?;
            cmds += 4;
        }
        let kw = rng.below(KEYWORDS);
        c.run(
            &format!("APPEND \"{}\" ($stress{kw})", a.mailbox),
            Some(&message(k, n)),
            false,
        )?;
        cmds += 1;
        // Keep the mailbox near its size: remove about as much as was added.
        if c.exists > PREFILL as u64 {
            let m = rng.below(c.exists) + 1;
            c.run(&format!("STORE {m} +FLAGS.SILENT (\\Deleted)"), None, true)?;
            c.run("EXPUNGE", None, false)?;
            cmds += 2;
        }
        c.run("LOGOUT", None, false)?;
        cmds += 1;
        if !c.bye {
            c.error("LOGOUT: no * BYE before its OK".into());
        }
        totals.commands.fetch_add(cmds, Ordering::Relaxed);
        if !c.errors.is_empty() {
            totals
                .errors
                .fetch_add(c.errors.len() as u64, Ordering::Relaxed);
            let mut e = errors.lock().unwrap_or_else(|p| p.into_inner());
            if e.len() < 20 {
                e.extend(c.errors.drain(..));
            }
        }
    }
    Ok(logins)
}

/// Fill the mailbox to `PREFILL` messages (the same start on every server).
fn prefill(a: &Account) -> Result<()> {
    let mut c = Conn::connect(&a.addr)?;
    c.run(
        &format!("LOGIN \"{}\" \"{}\"", a.user, a.password),
        None,
        false,
    )?;
    c.run(&format!("SELECT \"{}\"", a.mailbox), None, false)?;
    if c.exists > 0 {
        c.run("STORE 1:* +FLAGS.SILENT (\\Deleted)", None, false)?;
        c.run("EXPUNGE", None, false)?;
    }
    for n in 0..PREFILL as u64 {
        c.run(
            &format!("APPEND \"{}\" ()", a.mailbox),
            Some(&message(0, n)),
            false,
        )?;
    }
    c.run("LOGOUT", None, false)?;
    Ok(())
}

/// Run `clients` loops for `seconds`; prints one line:
/// `stress<TAB>N cmd/s<TAB>logins L/s<TAB>login_p50 x ms<TAB>login_p99 y ms<TAB>errors E`.
pub fn stress(a: Account, clients: usize, seconds: u64) -> Result<()> {
    prefill(&a)?;
    let stop = Arc::new(AtomicBool::new(false));
    let totals = Arc::new(Totals::default());
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    let start = Instant::now();
    let mut threads = Vec::new();
    for k in 0..clients {
        let (a, stop, totals, errors) = (a.clone(), stop.clone(), totals.clone(), errors.clone());
        threads.push(std::thread::spawn(move || {
            client(&a, k as u64, &stop, &totals, &errors)
        }));
    }
    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    let mut logins = Vec::new();
    let mut failed = Vec::new();
    for t in threads {
        match t.join() {
            Ok(Ok(l)) => logins.extend(l),
            Ok(Err(e)) => failed.push(format!("{e:#}")),
            Err(_) => failed.push("a client thread panicked".into()),
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    logins.sort();
    let q = |q: f64| {
        logins
            .get(((logins.len().max(1) - 1) as f64 * q) as usize)
            .copied()
            .unwrap_or_default()
    };
    let errs = errors.lock().unwrap_or_else(|p| p.into_inner());
    for e in errs.iter().chain(failed.iter()) {
        eprintln!("stress error: {e}");
    }
    println!(
        "stress\t{:.0} cmd/s\tlogins {:.0}/s\tlogin_p50 {} ms\tlogin_p99 {} ms\terrors {}\t{clients} clients",
        totals.commands.load(Ordering::Relaxed) as f64 / elapsed,
        totals.logins.load(Ordering::Relaxed) as f64 / elapsed,
        ms(q(0.5)),
        ms(q(0.99)),
        totals.errors.load(Ordering::Relaxed) + failed.len() as u64,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_read_from_a_fetch() {
        assert_eq!(
            flags_in(b"* 3 FETCH (UID 7 FLAGS (\\Seen $a))\r\n").unwrap(),
            ["\\Seen", "$a"]
        );
        assert!(flags_in(b"* 3 FETCH (UID 7)\r\n").is_none());
    }
}
