//! `yubin-bench imap`: the IMAP load of the benchmark (bench/README.md), the same against
//! yubin and against a reference server. A plain IMAP client over TCP is enough here (it
//! only needs tagged commands and literals), and keeps the measured path free of library
//! overhead that would differ between servers. The IMAP client blocks (one thread per
//! client): a round trip then costs it a write and a read, where an async client adds a
//! failed read and an epoll wait — client cost that is in every row of both servers and
//! pulls every ratio towards 1.

use std::io::{BufRead, BufReader as StdBufReader, Read, Write};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

mod stress;

#[derive(Parser)]
#[command(name = "yubin-bench", about = "Load generators for yubin's benchmarks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Where the IMAP loads log in, and the mailbox they select.
#[derive(clap::Args, Clone)]
struct Account {
    /// Server address, host:port (plain IMAP).
    #[arg(long)]
    addr: String,
    #[arg(long)]
    user: String,
    #[arg(long)]
    password: String,
    #[arg(long, default_value = "INBOX")]
    mailbox: String,
}

#[derive(Subcommand)]
enum Cmd {
    /// Time single-client IMAP operations, then a mixed load from many clients.
    Imap {
        #[command(flatten)]
        account: Account,
        /// Clients of the mixed load.
        #[arg(long, default_value_t = 50)]
        clients: usize,
        /// Seconds of mixed load.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// A word present in some subjects and bodies, for the SEARCH rows.
        #[arg(long, default_value = "benchmark")]
        needle: String,
        /// Only these rows, comma-separated (e.g. `noop,select`; `mixed` for the mixed
        /// load); all of them when absent. For quick A/B comparisons of one row.
        #[arg(long, value_delimiter = ',')]
        rows: Vec<String>,
    },
    /// POP3: one session per user, in parallel, each RETRs every message of its maildrop;
    /// prints messages/second.
    Pop3 {
        /// Server address, host:port (plain POP3).
        #[arg(long)]
        addr: String,
        /// Users, comma-separated (one maildrop each, RFC 1939 §8 locks it to one session).
        #[arg(long, value_delimiter = ',')]
        users: Vec<String>,
        #[arg(long)]
        password: String,
    },
    /// The spam-filter accuracy replay (bench/spam.py): reads `LABEL PATH` lines (LABEL
    /// `spam` or `ham`) from stdin in order; each message is classified by yubin's
    /// classifier and content rules, then its true label learned. Prints one line per
    /// message: label, spam probability (or `-` while the classifier is silent), the
    /// content rules' score, microseconds to classify. With `--learn-first N`, learns only
    /// the first N labels of each kind and classifies the rest without learning.
    Spam {
        #[arg(long)]
        learn_first: Option<usize>,
    },
    /// imaptest-like stress: clients loop LOGIN, SELECT, FETCH, STORE flags and keywords,
    /// APPEND, EXPUNGE, LOGOUT on one mailbox, checking every reply (see stress.rs).
    Stress {
        #[command(flatten)]
        account: Account,
        #[arg(long, default_value_t = 10)]
        clients: usize,
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
    /// SMTP submission: `sessions` connections, each (after AUTH PLAIN when a user is
    /// given) sends its share of `count` messages of `size` bytes, one transaction at a
    /// time with MAIL/RCPT/DATA pipelined; prints the seconds it took. A client in Rust so
    /// that the sender under test, not the client, is what is measured.
    Smtp {
        #[arg(long)]
        addr: String,
        #[arg(long)]
        user: Option<String>,
        #[arg(long, default_value = "")]
        password: String,
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        #[arg(long, default_value_t = 20)]
        sessions: usize,
        #[arg(long, default_value_t = 1000)]
        count: usize,
        #[arg(long, default_value_t = 4096)]
        size: usize,
    },
    /// Open many connections that log in, select a mailbox and IDLE; print `ready N` and
    /// hold them until stdin closes (the caller measures the server's memory meanwhile).
    Idle {
        #[command(flatten)]
        account: Account,
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Connections being set up at once.
        #[arg(long, default_value_t = 32)]
        parallel: usize,
    },
}

struct Client {
    io: StdBufReader<std::net::TcpStream>,
    tag: u64,
    /// The last `* n EXISTS` seen, so ranges stay inside the mailbox on every server.
    exists: u64,
    /// Reused for every line and literal: the client's own cost per response line is in
    /// every row of both servers, so it is kept to a scan of the buffer (an allocation
    /// per line was ~10% of a 100,000-line FETCH and of a SELECT's round trip).
    line: Vec<u8>,
    literal: Vec<u8>,
}

impl Client {
    fn connect(addr: &str, user: &str, password: &str) -> Result<Client> {
        let tcp = std::net::TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
        tcp.set_nodelay(true)?;
        let mut c = Client {
            io: StdBufReader::with_capacity(64 * 1024, tcp),
            tag: 0,
            exists: 0,
            line: Vec::with_capacity(1024),
            literal: Vec::new(),
        };
        let mut greeting = String::new();
        c.io.read_line(&mut greeting)?;
        if !greeting.starts_with("* OK") {
            bail!("unexpected greeting: {greeting}");
        }
        c.run(&format!("LOGIN \"{user}\" \"{password}\""))?;
        Ok(c)
    }

    /// Log in and select the account's mailbox.
    fn open(a: &Account) -> Result<Client> {
        let mut c = Client::connect(&a.addr, &a.user, &a.password)?;
        c.run(&format!("SELECT \"{}\"", a.mailbox))?;
        Ok(c)
    }

    /// Send a command and read to its tagged completion; returns the bytes received.
    fn run(&mut self, cmd: &str) -> Result<usize> {
        self.tag += 1;
        let tag = format!("b{}", self.tag);
        let line = format!("{tag} {cmd}\r\n");
        self.io.get_mut().write_all(line.as_bytes())?;
        let mut total = 0;
        loop {
            self.line.clear();
            let n = self.io.read_until(b'\n', &mut self.line)?;
            if n == 0 {
                bail!("connection closed during {cmd}");
            }
            total += n;
            let l = &self.line;
            // A literal {n} at the end of a line: its bytes follow.
            if l.ends_with(b"}\r\n")
                && let Some(open) = l.iter().rposition(|&b| b == b'{')
                && let Ok(len) = std::str::from_utf8(&l[open + 1..l.len() - 3])
                    .unwrap_or("x")
                    .trim_end_matches('+')
                    .parse::<usize>()
            {
                self.literal.resize(len, 0);
                self.io.read_exact(&mut self.literal[..len])?;
                total += len;
                continue;
            }
            if let Some(n) = l
                .strip_prefix(b"* ")
                .and_then(|r| r.strip_suffix(b" EXISTS\r\n"))
                .and_then(|n| std::str::from_utf8(n).ok()?.parse().ok())
            {
                self.exists = n;
            }
            if l.starts_with(tag.as_bytes()) {
                if !l[tag.len()..].starts_with(b" OK") {
                    bail!("{cmd}: {}", String::from_utf8_lossy(l));
                }
                return Ok(total);
            }
        }
    }
}

/// Milliseconds to the microsecond: the fast rows are tens of microseconds, and a ratio of
/// values rounded to 0.01 ms could be off by a third.
fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

/// Runs of each timed row: at least `MIN_RUNS`, more while the row has taken under
/// `ROW_BUDGET` (up to `MAX_RUNS`); the median is reported. Fast rows (SELECT is ~0.1 ms)
/// get many runs, so one descheduling on a busy machine cannot decide them; a 3-second
/// SEARCH still runs only `MIN_RUNS` times.
const MIN_RUNS: usize = 5;
const MAX_RUNS: usize = 101;
const ROW_BUDGET: Duration = Duration::from_secs(1);

/// Median time of `cmds` run in turn (one command per run).
fn median_of(c: &mut Client, cmds: &[String]) -> Result<(Duration, usize)> {
    let mut times = Vec::new();
    let mut bytes = 0;
    let start = Instant::now();
    while times.len() < MIN_RUNS
        || (times.len() < MAX_RUNS && start.elapsed() < ROW_BUDGET)
        // Odd, so the median is one run.
        || times.len() % 2 == 0
    {
        let t = Instant::now();
        bytes = c.run(&cmds[times.len() % cmds.len()])?;
        times.push(t.elapsed());
    }
    times.sort();
    Ok((times[times.len() / 2], bytes))
}

/// Which rows to run (`--rows`; empty means all).
struct Rows(Vec<String>);
impl Rows {
    fn want(&self, name: &str) -> bool {
        self.0.is_empty() || self.0.iter().any(|r| r == name)
    }
}

fn timed(c: &mut Client, rows: &Rows, name: &str, cmd: &str) -> Result<()> {
    if !rows.want(name) {
        return Ok(());
    }
    let (t, bytes) = median_of(c, &[cmd.to_owned()])?;
    println!("{name}\t{} ms\t{bytes} bytes", ms(t));
    Ok(())
}

/// A small deterministic generator, so runs against different servers do the same work.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// The single-client rows, then the mixed load.
fn imap(account: Account, clients: usize, seconds: u64, needle: String, rows: Rows) -> Result<()> {
    let exists = single_rows(&account, &needle, &rows)?;
    if !rows.want("mixed") {
        return Ok(());
    }
    mixed(account, clients, seconds, needle, exists)
}

/// Each single-client row; returns the mailbox's message count.
fn single_rows(account: &Account, needle: &str, rows: &Rows) -> Result<u64> {
    let mailbox = &account.mailbox;
    let mut c = Client::connect(&account.addr, &account.user, &account.password)?;
    // The round trip every command pays: the floor under the SELECT row.
    timed(&mut c, rows, "noop", "NOOP")?;
    let select = format!("SELECT \"{mailbox}\"");
    c.run(&select)?;
    timed(&mut c, rows, "select", &select)?;
    let exists = c.exists;
    if exists == 0 {
        bail!("{mailbox} is empty: import messages first");
    }
    let (b, s) = (exists.min(1000), exists.min(10000));
    timed(
        &mut c,
        rows,
        "fetch_flags_all",
        "FETCH 1:* (FLAGS UID RFC822.SIZE)",
    )?;
    timed(
        &mut c,
        rows,
        "fetch_1000_bodies",
        &format!("FETCH 1:{b} (BODY.PEEK[])"),
    )?;
    timed(
        &mut c,
        rows,
        "search_header",
        &format!("UID SEARCH HEADER SUBJECT \"{needle}\""),
    )?;
    timed(
        &mut c,
        rows,
        "search_body",
        &format!("UID SEARCH BODY \"{needle}\""),
    )?;
    // Setting and clearing in turn, so every run changes all 10,000 messages.
    let (set, clear) = (
        format!("STORE 1:{s} +FLAGS.SILENT (\\Flagged)"),
        format!("STORE 1:{s} -FLAGS.SILENT (\\Flagged)"),
    );
    if rows.want("store_10000") {
        let (t, _) = median_of(&mut c, &[set, clear.clone()])?;
        println!("store_10000\t{} ms", ms(t));
        c.run(&clear)?;
    }
    c.run("LOGOUT").ok();
    Ok(exists)
}

/// Many clients, each doing a random realistic command in turn.
fn mixed(
    account: Account,
    clients: usize,
    seconds: u64,
    needle: String,
    exists: u64,
) -> Result<()> {
    let b = exists.min(1000);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for k in 0..clients {
        let (account, needle) = (account.clone(), needle.clone());
        tasks.push(std::thread::spawn(move || {
            let mut lat = Vec::new();
            let mut c = Client::open(&account)?;
            let mut rng = Rng(0x9E37_79B9 + k as u64 * 7919);
            while Instant::now() < deadline {
                let n = rng.below(b) + 1;
                let kind = rng.below(6);
                let cmd = match kind {
                    0 => format!("FETCH {n}:{} (FLAGS UID)", (n + 50).min(exists)),
                    1 => format!("FETCH {n} (BODY.PEEK[])"),
                    2 => format!("UID SEARCH SUBJECT \"{needle}\""),
                    3 => format!("STORE {n} +FLAGS.SILENT (\\Seen)"),
                    4 => format!("FETCH {n} (ENVELOPE BODYSTRUCTURE)"),
                    _ => "NOOP".to_owned(),
                };
                let t = Instant::now();
                c.run(&cmd)?;
                lat.push((t.elapsed(), kind));
            }
            c.run("LOGOUT").ok();
            anyhow::Ok(lat)
        }));
    }
    let mut all: Vec<(Duration, u64)> = Vec::new();
    for t in tasks {
        let lat = t
            .join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
        all.extend(lat);
    }
    all.sort();
    // Per command kind on stderr: where the latency comes from (diagnosis only).
    for (kind, name) in [
        "fetch_flags",
        "fetch_body",
        "search",
        "store",
        "fetch_env",
        "noop",
    ]
    .iter()
    .enumerate()
    {
        let of: Vec<Duration> = all
            .iter()
            .filter(|l| l.1 == kind as u64)
            .map(|l| l.0)
            .collect();
        let q = |q: f64| {
            ms(of
                .get(((of.len().max(1) - 1) as f64 * q) as usize)
                .copied()
                .unwrap_or_default())
        };
        eprintln!(
            "mixed {name}: n {} p50 {} ms p90 {} ms p99 {} ms",
            of.len(),
            q(0.5),
            q(0.9),
            q(0.99)
        );
    }
    let all: Vec<Duration> = all.into_iter().map(|l| l.0).collect();
    let p = |q: f64| {
        all.get(((all.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or_default()
    };
    println!(
        "mixed\t{:.0} ops/s\tp50 {} ms\tp99 {} ms\t{clients} clients",
        all.len() as f64 / start.elapsed().as_secs_f64(),
        ms(p(0.5)),
        ms(p(0.99))
    );
    Ok(())
}

/// One POP3 line; an error unless it starts with `+OK`.
async fn pop3_ok(io: &mut BufReader<TcpStream>, what: &str) -> Result<()> {
    let mut l = String::new();
    io.read_line(&mut l).await?;
    if !l.starts_with("+OK") {
        bail!("{what}: {l}");
    }
    Ok(())
}

/// RETR every message of one maildrop; returns how many.
async fn pop3_drain(addr: String, user: String, password: String) -> Result<u64> {
    let tcp = TcpStream::connect(&addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    tcp.set_nodelay(true)?;
    let mut io = BufReader::new(tcp);
    pop3_ok(&mut io, "greeting").await?;
    io.get_mut()
        .write_all(format!("USER {user}\r\n").as_bytes())
        .await?;
    pop3_ok(&mut io, "USER").await?;
    io.get_mut()
        .write_all(format!("PASS {password}\r\n").as_bytes())
        .await?;
    pop3_ok(&mut io, "PASS").await?;
    io.get_mut().write_all(b"STAT\r\n").await?;
    let mut l = String::new();
    io.read_line(&mut l).await?;
    let n: u64 = l
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("STAT: {l}"))?;
    let mut line = Vec::new();
    for i in 1..=n {
        io.get_mut()
            .write_all(format!("RETR {i}\r\n").as_bytes())
            .await?;
        pop3_ok(&mut io, "RETR").await?;
        // The message, up to the line holding a single dot (RFC 1939 §3).
        loop {
            line.clear();
            if io.read_until(b'\n', &mut line).await? == 0 {
                bail!("connection closed during RETR {i}");
            }
            if line == b".\r\n" {
                break;
            }
        }
    }
    io.get_mut().write_all(b"QUIT\r\n").await?;
    pop3_ok(&mut io, "QUIT").await?;
    Ok(n)
}

async fn pop3(addr: String, users: Vec<String>, password: String) -> Result<()> {
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for u in users {
        tasks.spawn(pop3_drain(addr.clone(), u, password.clone()));
    }
    let mut total = 0;
    while let Some(r) = tasks.join_next().await {
        total += r??;
    }
    println!(
        "pop3\t{:.0} msg/s\t{total} messages",
        total as f64 / start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Log in, select, enter IDLE (RFC 2177) and return the connection, idling.
fn idler(account: &Account) -> Result<Client> {
    let mut c = Client::open(account)?;
    c.io.get_mut().write_all(b"i IDLE\r\n")?;
    let mut l = String::new();
    c.io.read_line(&mut l)?;
    if !l.starts_with('+') {
        bail!("IDLE refused: {l}");
    }
    Ok(c)
}

/// `parallel` threads open the connections; they are then held (no thread needed).
fn idle(account: Account, connections: usize, parallel: usize) -> Result<()> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (next, done) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let started = Instant::now();
    let held = std::thread::scope(|s| {
        let workers: Vec<_> = (0..parallel.clamp(1, connections.max(1)))
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    while next.fetch_add(1, Ordering::Relaxed) < connections {
                        mine.push(idler(&account)?);
                        let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                        if n % 1000 == 0 {
                            eprintln!("{n} connections idle");
                        }
                    }
                    anyhow::Ok(mine)
                })
            })
            .collect();
        let mut held = Vec::with_capacity(connections);
        for w in workers {
            held.extend(
                w.join()
                    .map_err(|_| anyhow::anyhow!("a connecting thread panicked"))??,
            );
        }
        anyhow::Ok(held)
    })?;
    println!("ready\t{}\t{} ms", held.len(), ms(started.elapsed()));
    // Hold until the caller is done measuring.
    std::io::stdin().read_to_end(&mut Vec::new())?;
    drop(held);
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Imap {
            account,
            clients,
            seconds,
            needle,
            rows,
        } => imap(account, clients, seconds, needle, Rows(rows)),
        Cmd::Pop3 {
            addr,
            users,
            password,
        } => pop3(addr, users, password).await,
        Cmd::Idle {
            account,
            connections,
            parallel,
        } => idle(account, connections, parallel),
        Cmd::Stress {
            account,
            clients,
            seconds,
        } => stress::stress(account, clients, seconds),
        Cmd::Spam { learn_first } => spam_replay(learn_first),
        Cmd::Smtp {
            addr,
            user,
            password,
            from,
            to,
            sessions,
            count,
            size,
        } => {
            let t = Instant::now();
            let mut tasks = Vec::new();
            for k in 0..sessions {
                let n = count / sessions + usize::from(k < count % sessions);
                let job = SmtpJob {
                    addr: addr.clone(),
                    user: user.clone(),
                    password: password.clone(),
                    from: from.clone(),
                    to: to.clone(),
                };
                tasks.push(tokio::spawn(smtp_session(job, n, size, k)));
            }
            for t in tasks {
                t.await??;
            }
            println!("{:.3}", t.elapsed().as_secs_f64());
            Ok(())
        }
    }
}

struct SmtpJob {
    addr: String,
    user: Option<String>,
    password: String,
    from: String,
    to: String,
}

async fn smtp_reply(io: &mut BufReader<TcpStream>, want: u8) -> Result<()> {
    let mut line = String::new();
    loop {
        line.clear();
        if io.read_line(&mut line).await? == 0 {
            bail!("connection closed");
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            break;
        }
    }
    if line.as_bytes().first() != Some(&want) {
        bail!("unexpected reply: {}", line.trim_end());
    }
    Ok(())
}

/// One session's messages: a header naming the sender, then `size` bytes of text lines.
async fn smtp_session(job: SmtpJob, n: usize, size: usize, k: usize) -> Result<()> {
    let mut io = BufReader::new(TcpStream::connect(&job.addr).await?);
    io.get_ref().set_nodelay(true)?;
    smtp_reply(&mut io, b'2').await?;
    io.get_mut().write_all(b"EHLO bench.client\r\n").await?;
    smtp_reply(&mut io, b'2').await?;
    if let Some(u) = &job.user {
        let plain = format!("\0{u}\0{}", job.password);
        let b64 = base64_encode(plain.as_bytes());
        io.get_mut()
            .write_all(format!("AUTH PLAIN {b64}\r\n").as_bytes())
            .await?;
        smtp_reply(&mut io, b'2').await?;
    }
    let line = "delivery queue mailbox storage network latency index alpha delivery queue\r\n";
    for i in 0..n {
        let mut body = format!(
            "From: <{}>\r\nTo: <{}>\r\nSubject: bench {k}-{i}\r\nMessage-ID: <{k}.{i}@bench.client>\r\n\r\n",
            job.from, job.to
        )
        .into_bytes();
        while body.len() < size {
            body.extend_from_slice(line.as_bytes());
        }
        body.extend_from_slice(b".\r\n");
        let cmds = format!(
            "MAIL FROM:<{}>\r\nRCPT TO:<{}>\r\nDATA\r\n",
            job.from, job.to
        );
        io.get_mut().write_all(cmds.as_bytes()).await?;
        smtp_reply(&mut io, b'2').await?;
        smtp_reply(&mut io, b'2').await?;
        smtp_reply(&mut io, b'3').await?;
        io.get_mut().write_all(&body).await?;
        smtp_reply(&mut io, b'2').await?;
    }
    io.get_mut().write_all(b"QUIT\r\n").await?;
    Ok(())
}

fn base64_encode(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= c.len() {
                out.push(char::from(T[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// See `Cmd::Spam`.
fn spam_replay(learn_first: Option<usize>) -> Result<()> {
    use std::io::{BufRead, Write};
    use yubin_filter::{bayes, content};
    let mut model = bayes::Model::default();
    let (mut spams, mut hams) = (0usize, 0usize);
    let stdin = std::io::stdin();
    let mut out = std::io::BufWriter::new(std::io::stdout());
    let local = ["localhost.spamassassin.taint.org".to_owned()];
    for line in stdin.lock().lines() {
        let line = line?;
        let Some((label, path)) = line.split_once(' ') else {
            continue;
        };
        let spam = label == "spam";
        let raw = std::fs::read(path)?;
        let t = Instant::now();
        let c = content::inspect(
            &raw,
            &content::Envelope {
                mail_from: "",
                local_domains: &local,
                now: i64::MAX / 4,
            },
        );
        let f = c.features;
        let p = model.spamicity(&f, None);
        let ready = model.ready();
        let micros = t.elapsed().as_micros();
        // Date rules mean nothing for a corpus of 2002: left out of the rules' score.
        let rules: f32 = c
            .reasons
            .iter()
            .filter(|r| !r.rule.starts_with("DATE_"))
            .map(|r| r.score)
            .sum();
        writeln!(
            out,
            "{label}\t{}\t{rules:.1}\t{micros}\t{}",
            p.map_or("-".into(), |p| format!("{p:.12}")),
            u8::from(ready)
        )?;
        let learn = match learn_first {
            None => true,
            Some(n) if spam => spams < n,
            Some(n) => hams < n,
        };
        if learn {
            model.learn(&f, None, spam, 1);
            if spam {
                spams += 1;
            } else {
                hams += 1;
            }
        }
    }
    let _ = model.take_dirty();
    eprintln!(
        "model: {} features, about {} KiB",
        model.len(),
        model.len() * 13 / 1024
    );
    Ok(())
}
