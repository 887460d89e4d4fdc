//! `yubin`: the whole post office in one binary.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use yubin_server::{Config, FirstRun};
use yubin_store::{Directory, MailStore, Queue, SqliteStore};

#[derive(Parser)]
#[command(
    name = "yubin",
    version,
    about = "yubin (郵便): a complete mail server in one binary"
)]
struct Cli {
    /// Configuration file (created with documented defaults on first run).
    #[arg(
        long,
        global = true,
        default_value = "yubin.toml",
        env = "YUBIN_CONFIG"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the first run creates config, data, certificate, domain and admin).
    Serve {
        /// First domain to host (default: the host name); added if missing.
        #[arg(long)]
        domain: Option<String>,
        /// Try yubin without root: listen on 127.0.0.1 only, at 10000 + each standard port
        /// (SMTP 10025, IMAP 10143/10993, POP3 10110/10995, submission 10587/10465).
        #[arg(long)]
        dev: bool,
    },
    /// Create config, data directory, certificate, first domain and admin without serving.
    Init {
        /// First domain to host (default: the host name).
        #[arg(long)]
        domain: Option<String>,
    },
    /// Manage the domains this server receives mail for.
    #[command(subcommand)]
    Domain(DomainCmd),
    /// Manage accounts (mailbox users).
    #[command(subcommand)]
    User(UserCmd),
    /// Manage aliases: addresses that deliver to one or more accounts.
    #[command(subcommand)]
    Alias(AliasCmd),
    /// Look at stored mail.
    #[command(subcommand)]
    Mail(MailCmd),
    /// The outbound queue: mail waiting for other domains' servers.
    #[command(subcommand)]
    Queue(QueueCmd),
    /// Messages the filter held back (`[filter] attachments = "quarantine"`): list, read,
    /// deliver or drop them.
    #[command(subcommand)]
    Quarantine(QuarantineCmd),
    /// The judgement of inbound mail: the allow and block lists (read by the running
    /// server for every message), explanations of verdicts, the classifier.
    #[command(subcommand)]
    Filter(FilterCmd),
}

#[derive(Subcommand)]
enum QuarantineCmd {
    /// Held messages: id, recipient, age, size, sender, reason.
    List,
    /// A held message exactly as it arrived.
    Show {
        /// The message's id (first column of `quarantine list`).
        id: i64,
    },
    /// Deliver a held message to its recipient's INBOX.
    Release {
        /// The message's id (first column of `quarantine list`).
        id: i64,
    },
    /// Drop a held message for good.
    Delete {
        /// The message's id (first column of `quarantine list`).
        id: i64,
    },
    /// Drop every message held longer than DAYS (the running server does this by itself
    /// after `[filter] quarantine_days`).
    Expire {
        /// Age in days; 0 drops everything held.
        #[arg(long)]
        days: u32,
    },
}

#[derive(Subcommand)]
enum FilterCmd {
    /// Never refuse or score mail from this client IP or network, or from this sender
    /// domain or address once it is authenticated (SPF, DKIM or DMARC pass).
    #[command(subcommand)]
    Allow(ListCmd),
    /// Refuse (554 5.7.1) mail from this client IP or network, MAIL FROM or From:
    /// domain or address.
    #[command(subcommand)]
    Block(ListCmd),
    /// Both lists: one entry per line, list and value.
    List,
    /// Why a stored message was filed where it is: its score, each rule's part and what
    /// it means, and the authentication results.
    Explain {
        /// The account's address.
        address: String,
        /// The message's UID (first column of `mail list`).
        uid: u32,
        /// The mailbox, e.g. INBOX or Junk.
        #[arg(long, default_value = "INBOX")]
        mailbox: String,
    },
    /// Teach the classifier from files: message files, Maildir folders (cur/ and new/),
    /// directories of message files, or mbox files. The running server learns them
    /// within seconds (a stopped one when it starts).
    Train {
        /// The messages are spam.
        #[arg(long, conflicts_with = "ham", required_unless_present = "ham")]
        spam: bool,
        /// The messages are legitimate.
        #[arg(long)]
        ham: bool,
        /// Teach this account's own features too (default: the server's only).
        #[arg(long, value_name = "ADDRESS")]
        user: Option<String>,
        /// Files or directories to read.
        #[arg(required = true)]
        paths: Vec<std::path::PathBuf>,
    },
    /// What the classifier has learned: messages of each kind and features kept.
    Status,
}

#[derive(Subcommand)]
enum ListCmd {
    /// Add an entry.
    Add {
        /// An IP (192.0.2.1, 2001:db8::1), a network (192.0.2.0/24), a domain
        /// (example.com, its subdomains too) or an address (someone@example.com).
        value: String,
    },
    /// Remove an entry.
    Remove {
        /// The entry as `yubin filter list` shows it.
        value: String,
    },
}

#[derive(Subcommand)]
enum QueueCmd {
    /// Queued recipients: id, recipient, attempts, next attempt, last error.
    List,
    /// A queued message exactly as it will be sent.
    Show {
        /// The message's queue id (first column of `queue list`).
        id: i64,
    },
    /// Try a message (or, without an id, everything) now.
    Retry {
        /// The message's queue id; all messages when left out.
        id: Option<i64>,
    },
    /// Try everything now (the same as `retry` without an id).
    Flush,
    /// Drop a message from the queue without delivering it (no bounce is sent).
    Delete {
        /// The message's queue id (first column of `queue list`).
        id: i64,
    },
}

#[derive(Subcommand)]
enum DomainCmd {
    /// Start receiving mail for a domain.
    Add {
        /// The domain, e.g. example.com (its MX record must point at this server).
        name: String,
    },
    /// List domains and how many accounts each has.
    List,
    /// Create the domain's DKIM key (if it has none) and print the DNS records to publish:
    /// DKIM, and SPF and DMARC suggestions.
    Dkim {
        /// A domain hosted here.
        name: String,
    },
    /// Stop hosting a domain.
    Remove {
        /// A domain hosted here.
        name: String,
        /// Also remove its accounts and all their mail.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum UserCmd {
    /// Create an account with the standard folders.
    Add {
        /// The account's address, e.g. alice@example.com (its domain must be hosted here).
        address: String,
        /// Read the password from the first line of standard input.
        #[arg(long, conflicts_with = "password")]
        password_stdin: bool,
        /// The password itself (visible to other users of this machine; prefer the prompt).
        #[arg(long)]
        password: Option<String>,
        /// Make the account an administrator (receives postmaster@ mail).
        #[arg(long)]
        admin: bool,
    },
    /// List accounts.
    List {
        /// Only accounts of this domain.
        #[arg(long)]
        domain: Option<String>,
    },
    /// Change an account's password (its open sessions end).
    Passwd {
        /// The account's address.
        address: String,
        /// Read the new password from the first line of standard input.
        #[arg(long, conflicts_with = "password")]
        password_stdin: bool,
        /// The new password itself (visible to other users of this machine).
        #[arg(long)]
        password: Option<String>,
    },
    /// Refuse logins and incoming mail (550 5.2.1); stored mail is kept; open sessions end.
    Disable {
        /// The account's address.
        address: String,
    },
    /// Undo `disable`.
    Enable {
        /// The account's address.
        address: String,
    },
    /// Limit an account's storage, e.g. `2G`, `500M`; `none` removes the limit.
    Quota {
        /// The account's address.
        address: String,
        /// Bytes, with K, M, G or T (powers of 1024), or `none`.
        limit: String,
    },
    /// The account's own spam thresholds (the server's `[filter] junk_score` and
    /// `reject_score` otherwise); without options, shows them.
    Spam {
        /// The account's address.
        address: String,
        /// Score from which its mail goes to Junk, or `default`.
        #[arg(long)]
        junk: Option<String>,
        /// Score from which its mail is refused at SMTP time, or `default`.
        #[arg(long)]
        reject: Option<String>,
    },
    /// Take an account away (asks first unless --yes): logins and mail to it stop at
    /// once, its open sessions end; its mail is kept until `purge` (`restore` undoes it).
    Remove {
        /// The account's address.
        address: String,
        /// Do not ask: needed when standard input is not a terminal.
        #[arg(long)]
        yes: bool,
    },
    /// Removed accounts still kept (restorable): address and when it was removed.
    Removed,
    /// Give a removed account back, with its mail, under its address.
    Restore {
        /// The address the account had.
        address: String,
    },
    /// Delete removed accounts with this address and all their mail, for good.
    Purge {
        /// The address the account had.
        address: String,
        /// Do not ask: needed when standard input is not a terminal.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand)]
enum AliasCmd {
    /// Deliver mail for ALIAS to the accounts TARGETS; `*@domain` is the domain's catch-all.
    Add {
        /// The alias address, or `*@domain` for the domain's catch-all.
        alias: String,
        /// Accounts that receive its mail.
        #[arg(required = true)]
        targets: Vec<String>,
    },
    /// List aliases and their targets.
    List,
    /// Remove an alias, or only one of its targets.
    Remove {
        /// The alias address.
        alias: String,
        /// Remove only this target (the alias stays for the others).
        target: Option<String>,
    },
}

#[derive(Subcommand)]
enum MailCmd {
    /// List an account's mailboxes.
    Mailboxes {
        /// The account's address.
        address: String,
    },
    /// List the messages in a mailbox: UID, size, date received, flags.
    List {
        /// The account's address.
        address: String,
        /// The mailbox, e.g. INBOX, Sent, Archive/2026.
        #[arg(long, default_value = "INBOX")]
        mailbox: String,
    },
    /// Write one message, exactly as stored, to standard output.
    Cat {
        /// The account's address.
        address: String,
        /// The message's UID (first column of `mail list`).
        uid: u32,
        /// The mailbox, e.g. INBOX, Sent, Archive/2026.
        #[arg(long, default_value = "INBOX")]
        mailbox: String,
    },
    /// Messages the server could not process (not indexed for SEARCH): account, mailbox,
    /// UID and why. Such a message is still stored and readable.
    Unprocessable {
        /// Expunge every listed message (after printing it).
        #[arg(long)]
        remove: bool,
    },
}

#[allow(unsafe_code)] // umask through libc, once at start
fn main() {
    // Everything yubin creates (the data directory, databases, packs, keys, certificates)
    // is for its own user only: it holds password hashes and everyone's mail.
    #[cfg(unix)]
    // SAFETY: umask only sets the process's file creation mask.
    unsafe {
        libc::umask(0o077);
    }
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("yubin: error: {e:#}");
        std::process::exit(1);
    }
}

fn init_logging(level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("YUBIN_LOG")
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve { domain, dev } => {
            // Every port first: nothing is written if the server could not listen anyway.
            yubin_server::check_listen(&yubin_server::planned_config(&cli.config, dev)?)?;
            let (mut cfg, first) = yubin_server::init(&cli.config, domain.as_deref())?;
            if dev {
                cfg.dev_listen();
            }
            init_logging(&cfg.log.level);
            if let Some(f) = first {
                print_first_run(&f, &cfg);
            }
            if dev {
                println!(
                    "yubin: --dev: listening on 127.0.0.1 only: SMTP 10025, submission 10587 \
                     and 10465, IMAP 10143 and 10993, POP3 10110 and 10995"
                );
            }
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("yubin")
                .build()
                .context("cannot start the async runtime")?;
            rt.block_on(yubin_server::serve(cfg))
        }
        Command::Init { domain } => {
            let (cfg, first) = yubin_server::init(&cli.config, domain.as_deref())?;
            match first {
                Some(f) => print_first_run(&f, &cfg),
                None => println!(
                    "yubin: already initialized ({} and {})",
                    cli.config.display(),
                    cfg.data_dir.display()
                ),
            }
            Ok(())
        }
        Command::Domain(cmd) => domain_cmd(&cli.config, cmd),
        Command::User(cmd) => user_cmd(&open(&cli.config)?, cmd),
        Command::Alias(cmd) => alias_cmd(&open(&cli.config)?, cmd),
        Command::Mail(cmd) => mail_cmd(&open(&cli.config)?, cmd),
        Command::Queue(cmd) => queue_cmd(&open(&cli.config)?, cmd),
        Command::Filter(cmd) => filter_cmd(&open(&cli.config)?, cmd),
        Command::Quarantine(cmd) => quarantine_cmd(&open(&cli.config)?, cmd),
    }
}

fn quarantine_cmd(store: &SqliteStore, cmd: QuarantineCmd) -> Result<()> {
    match cmd {
        QuarantineCmd::List => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            let q = store.quarantine_list()?;
            if q.is_empty() {
                println!("quarantine is empty");
            }
            for m in q {
                println!(
                    "{}\t{}\t{}s ago\t{} bytes\tfrom <{}>\t{}",
                    m.id,
                    m.address,
                    (now - m.created).max(0),
                    m.size,
                    m.mail_from,
                    m.reason
                );
            }
        }
        QuarantineCmd::Show { id } => std::io::stdout().write_all(&store.quarantine_read(id)?)?,
        QuarantineCmd::Release { id } => {
            let d = store.quarantine_release(id)?;
            println!("#{id} delivered to INBOX (UID {})", d.uid);
        }
        QuarantineCmd::Delete { id } => {
            store.quarantine_delete(id)?;
            println!("#{id} deleted");
        }
        QuarantineCmd::Expire { days } => {
            let before = if days == 0 {
                i64::MAX
            } else {
                yubin_server::quarantine_cutoff(days)
            };
            let mut n = 0;
            loop {
                let k = store.quarantine_expire(before, 1000)?;
                n += k;
                if k < 1000 {
                    break;
                }
            }
            println!("{n} held messages older than {days} days dropped");
        }
    }
    Ok(())
}

fn print_first_run(f: &FirstRun, cfg: &Config) {
    println!("yubin: first run");
    if let Some(c) = &f.config_created {
        println!("  config:       {} (every key documented)", c.display());
    }
    println!("  data:         {}", f.data_dir.display());
    if let Some(c) = &f.generated_cert {
        println!(
            "  certificate:  {} (self-signed, for this host's name, localhost and its addresses)",
            c.display()
        );
        if let Some(fp) = yubin_server::tls::fingerprint(c) {
            println!("  SHA-256:      {fp}");
        }
        println!(
            "                clients warn until they trust it: compare this fingerprint, or import the file;"
        );
        println!(
            "                for a real one, set `cert` and `key` under [tls] in the config (e.g. Let's Encrypt)"
        );
    }
    println!("  domain:       {}", f.domain);
    if !f.domain.contains('.') {
        println!(
            "  warning:      {:?} has no dot: no other server can send mail to it. Add your real \n\
             \x20               domain with `yubin domain add example.com` (or start with --domain).",
            f.domain
        );
    }
    println!("  admin login:  {}", f.admin);
    println!("  password:     {}", f.password);
    println!(
        "  (shown once; change it with `yubin user passwd {}`)",
        f.admin
    );
    let list = |addrs: &[std::net::SocketAddr]| -> String {
        let ports: std::collections::BTreeSet<u16> = addrs.iter().map(|a| a.port()).collect();
        let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
        if ports.is_empty() {
            "off".into()
        } else {
            ports.join(", ")
        }
    };
    let l = &cfg.listen;
    println!("  log in with the admin address and password:");
    println!(
        "    IMAP        port {} (STARTTLS), {} (TLS)",
        list(&l.imap),
        list(&l.imaps)
    );
    println!(
        "    POP3        port {} (STLS), {} (TLS)",
        list(&l.pop3),
        list(&l.pop3s)
    );
    println!(
        "    sending     port {} (STARTTLS), {} (TLS), SMTP AUTH",
        list(&l.submission),
        list(&l.submissions)
    );
    println!(
        "    incoming    port {} (SMTP from other servers)",
        list(&l.smtp)
    );
    println!("  add a user:   yubin user add someone@{}", f.domain);
    let _ = std::io::stdout().flush();
}

/// The store of an existing installation, for management commands.
fn open(config: &Path) -> Result<SqliteStore> {
    if !config.exists() {
        bail!(
            "no config file at {}; run `yubin init` (or `yubin serve`) first, or pass --config",
            config.display()
        );
    }
    let cfg = Config::load(config)?;
    Ok(SqliteStore::open(&cfg.data_dir)?)
}

/// Ask on the terminal; the user confirms by typing `expected` (an address).
fn confirm(question: &str, expected: &str) -> Result<()> {
    if !std::io::stdin().is_terminal() {
        bail!("{question} Pass --yes to confirm (standard input is not a terminal)");
    }
    print!("{question} Type the address to confirm: ");
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    if !line.trim().eq_ignore_ascii_case(expected.trim()) {
        bail!("not confirmed; nothing changed");
    }
    Ok(())
}

/// Shortest password `user add` and `user passwd` accept (NIST SP 800-63B asks for at
/// least 8; mail passwords are guessed over the network all day).
const MIN_PASSWORD_CHARS: usize = 10;

/// Frequently used passwords of at least MIN_PASSWORD_CHARS (shorter ones fail anyway),
/// from the public breach lists' top entries.
const COMMON_PASSWORDS: &[&str] = &[
    "1234567890",
    "0987654321",
    "1111111111",
    "0000000000",
    "123456789a",
    "a123456789",
    "1234567890a",
    "12345678910",
    "123123123123",
    "qwertyuiop",
    "qwertyuiop123",
    "qwerty1234",
    "qwerty12345",
    "qwerty123456",
    "1q2w3e4r5t",
    "1q2w3e4r5t6y",
    "1qaz2wsx3edc",
    "zaq12wsxcde3",
    "zaq1zaq1zaq1",
    "qazwsxedcrfv",
    "asdfghjkl1",
    "asdfghjkl;",
    "asdfghjkl123",
    "zxcvbnm123",
    "abcdefghij",
    "abcd123456",
    "abc1234567",
    "password12",
    "password123",
    "password1234",
    "password12345",
    "passw0rd123",
    "p@ssw0rd123",
    "p@ssword123",
    "password1!",
    "password123!",
    "mypassword",
    "mypassword1",
    "iloveyou123",
    "iloveyou12",
    "princess123",
    "football123",
    "baseball123",
    "superman123",
    "sunshine123",
    "trustno1234",
    "letmein123",
    "welcome123",
    "welcome1234",
    "welcome2024",
    "welcome2025",
    "welcome2026",
    "changeme123",
    "changeme12",
    "administrator",
    "administrator1",
    "admin12345",
    "admin123456",
    "adminadmin",
    "rootroot12",
    "secret1234",
    "secret12345",
    "summer2024",
    "summer2025",
    "summer2026",
    "winter2024",
    "winter2025",
    "winter2026",
    "spring2025",
    "spring2026",
    "autumn2025",
    "football1",
    "michael123",
    "charlie123",
    "jennifer123",
    "1234512345",
    "1122334455",
    "5555555555",
    "9999999999",
    "7777777777",
    "aaaaaaaaaa",
];

/// A password good enough for an account that the whole network can try to log into.
fn check_password(password: &str, address: &str) -> Result<()> {
    let lower = password.to_lowercase();
    let chars = password.chars().count();
    if chars < MIN_PASSWORD_CHARS {
        bail!(
            "the password is too short: use at least {MIN_PASSWORD_CHARS} characters (a few random words work well)"
        );
    }
    let first = lower.chars().next();
    if lower.chars().all(|c| Some(c) == first) || lower.chars().all(|c| c.is_ascii_digit()) {
        bail!("the password is too easy to guess (one repeated character, or only digits)");
    }
    if COMMON_PASSWORDS.contains(&lower.as_str()) {
        bail!("that password is on every list of common passwords; choose another");
    }
    let local = address.split('@').next().unwrap_or("").to_lowercase();
    if local.chars().count() >= 3 && lower.contains(&local) {
        bail!("the password contains the account's name; choose another");
    }
    Ok(())
}

fn read_password(stdin: bool, given: Option<String>) -> Result<String> {
    if let Some(p) = given {
        return Ok(p);
    }
    if stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from standard input")?;
        let p = line.trim_end_matches(['\r', '\n']).to_owned();
        if p.is_empty() {
            bail!("the password on standard input is empty");
        }
        return Ok(p);
    }
    if !std::io::stdin().is_terminal() {
        bail!("no terminal to ask for a password; use --password-stdin");
    }
    let p = rpassword::prompt_password("Password: ")?;
    let again = rpassword::prompt_password("Again: ")?;
    if p != again {
        bail!("the passwords differ");
    }
    if p.is_empty() {
        bail!("the password is empty");
    }
    Ok(p)
}

fn domain_cmd(config: &Path, cmd: DomainCmd) -> Result<()> {
    let store = &open(config)?;
    match cmd {
        DomainCmd::Add { name } => {
            let d = store.add_domain(&name)?;
            println!("domain {} added", d.name);
        }
        DomainCmd::List => {
            for d in store.list_domains()? {
                println!("{}\t{} account(s)", d.name, d.accounts);
            }
        }
        DomainCmd::Dkim { name } => {
            let cfg = Config::load(config)?;
            if !store.is_local_domain(&name)? {
                bail!("{name} is not hosted here; add it with `yubin domain add {name}`");
            }
            let name = name.to_lowercase();
            let (public, created) = yubin_server::dkim::ensure_key(&cfg.dkim_dir(), &name)?;
            if created {
                eprintln!(
                    "yubin: created a DKIM key for {name}; mail from it is signed from now on"
                );
            }
            print!(
                "{}",
                yubin_server::dkim::records(
                    &name,
                    &public,
                    &cfg.hostname,
                    &yubin_server::https::policy_id(&cfg)
                )
            );
        }
        DomainCmd::Remove { name, force } => {
            store.remove_domain(&name, force)?;
            println!("domain {name} removed");
        }
    }
    Ok(())
}

fn user_cmd(store: &SqliteStore, cmd: UserCmd) -> Result<()> {
    match cmd {
        UserCmd::Add {
            address,
            password_stdin,
            password,
            admin,
        } => {
            let pw = read_password(password_stdin, password)?;
            check_password(&pw, &address)?;
            let a = store.add_account(&address, &pw, admin)?;
            println!("account {} created", a.address);
        }
        UserCmd::List { domain } => {
            for a in store.list_accounts(domain.as_deref())? {
                let mut tags = Vec::new();
                let quota = a.quota.map(|q| format!("quota={q}"));
                if let Some(q) = &quota {
                    tags.push(q.as_str());
                }
                if a.admin {
                    tags.push("admin");
                }
                if a.disabled {
                    tags.push("disabled");
                }
                println!("{}\t{}", a.address, tags.join(","));
            }
        }
        UserCmd::Passwd {
            address,
            password_stdin,
            password,
        } => {
            store.account(&address)?;
            let pw = read_password(password_stdin, password)?;
            check_password(&pw, &address)?;
            store.set_password(&address, &pw)?;
            println!("password of {address} changed");
        }
        UserCmd::Disable { address } => {
            store.set_disabled(&address, true)?;
            println!("account {address} disabled (mail is kept; `yubin user enable` undoes this)");
        }
        UserCmd::Spam {
            address,
            junk,
            reject,
        } => {
            let a = store.account(&address)?;
            let (mut j, mut r) = store.filter_scores(a.id)?;
            let parse = |v: &str| -> Result<Option<f32>> {
                if v == "default" {
                    return Ok(None);
                }
                let n: f32 = v
                    .parse()
                    .ok()
                    .filter(|n: &f32| n.is_finite())
                    .with_context(|| {
                        format!("{v:?}: give a score such as 5 or 7.5, or `default`")
                    })?;
                Ok(Some(n))
            };
            if let Some(v) = &junk {
                j = parse(v)?;
            }
            if let Some(v) = &reject {
                r = parse(v)?;
            }
            if let (Some(j), Some(r)) = (j, r)
                && j > r
            {
                bail!("the junk score ({j}) must not be above the reject score ({r})");
            }
            if junk.is_some() || reject.is_some() {
                store.set_filter_scores(&a.address, j, r)?;
            }
            let show = |v: Option<f32>| v.map_or("server default".to_owned(), |v| v.to_string());
            println!("{}: junk at {}, reject at {}", a.address, show(j), show(r));
        }
        UserCmd::Quota { address, limit } => {
            let bytes = parse_size(&limit)?;
            store.set_quota(&address, bytes)?;
            match bytes {
                Some(b) => println!("quota of {address} set to {b} bytes"),
                None => println!("quota of {address} removed"),
            }
        }
        UserCmd::Enable { address } => {
            store.set_disabled(&address, false)?;
            println!("account {address} enabled");
        }
        UserCmd::Remove { address, yes } => {
            let a = store.account(&address)?;
            if !yes {
                confirm(
                    &format!(
                        "Remove {} (logins and mail to it stop now; its mail is kept until `yubin user purge`)?",
                        a.address
                    ),
                    &a.address,
                )?;
            }
            store.remove_account(&address)?;
            println!(
                "account {} removed; its mail is kept: `yubin user restore {0}` gives it back, \
                 `yubin user purge {0}` deletes it for good",
                a.address
            );
        }
        UserCmd::Removed => {
            for r in store.removed_accounts()? {
                println!("{r}");
            }
        }
        UserCmd::Restore { address } => {
            let a = store.restore_account(&address)?;
            println!("account {} restored with its mail", a.address);
        }
        UserCmd::Purge { address, yes } => {
            if !yes {
                confirm(
                    &format!("Delete the removed account {address} and all its mail for good?"),
                    &address,
                )?;
            }
            match store.purge_account(&address)? {
                0 => bail!("no removed account {address}; see `yubin user removed`"),
                n => println!("{n} removed account(s) {address} deleted with their mail"),
            }
        }
    }
    Ok(())
}

/// A stored message by account, mailbox and UID (`mail cat`, `filter explain`).
fn read_message(store: &SqliteStore, address: &str, mailbox: &str, uid: u32) -> Result<Vec<u8>> {
    let a = store.account(address)?;
    let mb = store.mailbox(a.id, mailbox)?;
    Ok(store.read(mb.id, uid)?)
}

fn filter_cmd(store: &SqliteStore, cmd: FilterCmd) -> Result<()> {
    let (list, cmd) = match cmd {
        FilterCmd::List => {
            for (list, value) in store.filter_list()? {
                println!("{list}\t{value}");
            }
            return Ok(());
        }
        FilterCmd::Explain {
            address,
            uid,
            mailbox,
        } => {
            let data = read_message(store, &address, &mailbox, uid)?;
            print!("{}", yubin_filter::explain(&data));
            return Ok(());
        }
        FilterCmd::Train {
            spam,
            ham: _,
            user,
            paths,
        } => return train(store, spam, user.as_deref(), &paths),
        FilterCmd::Status => {
            let (cursor, rows) = store.bayes_load()?;
            let model = yubin_filter::bayes::Model::from_counts(rows);
            let (s, h) = model.totals(None);
            println!("learned: {s} spam, {h} legitimate (through label #{cursor})");
            println!("features: {}", model.len());
            let need = yubin_filter::bayes::MIN_LABELS;
            if s < need || h < need {
                println!(
                    "the classifier gives no opinion until it has {need} of each; \
                     move mail into and out of Junk, or use `yubin filter train`"
                );
            }
            return Ok(());
        }
        FilterCmd::Allow(c) => ("allow", c),
        FilterCmd::Block(c) => ("block", c),
    };
    match cmd {
        ListCmd::Add { value } => {
            let entry = yubin_filter::lists::Entry::parse(&value).map_err(anyhow::Error::msg)?;
            let text = entry.text();
            if store.filter_list_add(list, &text)? {
                println!("{list}: added {text}");
            } else {
                println!("{list}: {text} was there already");
            }
        }
        ListCmd::Remove { value } => {
            let text = yubin_filter::lists::Entry::parse(&value)
                .map(|e| e.text())
                .unwrap_or(value);
            if !store.filter_list_remove(list, &text)? {
                bail!("{list}: no entry {text} (see `yubin filter list`)");
            }
            println!("{list}: removed {text}");
        }
    }
    Ok(())
}

/// `yubin filter train`: every message under `paths` as one label (its words' hashes),
/// for the server's classifier to learn.
fn train(
    store: &SqliteStore,
    spam: bool,
    user: Option<&str>,
    paths: &[std::path::PathBuf],
) -> Result<()> {
    let account = user.map(|u| store.account(u)).transpose()?.map(|a| a.id);
    let kind = if spam { "spam" } else { "legitimate" };
    let mut n = 0usize;
    // Written 500 at a time, one transaction each (a row per transaction would make a
    // 100,000-message mbox take minutes of fsyncs).
    let mut batch: Vec<Vec<u32>> = Vec::new();
    let flush = |batch: &mut Vec<Vec<u32>>| -> Result<()> {
        let rows: Vec<&[u32]> = batch.iter().map(Vec::as_slice).collect();
        store.training_add_many(account, spam, &rows)?;
        batch.clear();
        Ok(())
    };
    let mut learn = |raw: &[u8]| -> Result<()> {
        let c = yubin_filter::content::inspect(
            raw,
            &yubin_filter::content::Envelope {
                mail_from: "",
                local_domains: &[],
                now: 0,
            },
        );
        batch.push(c.features);
        n += 1;
        if n.is_multiple_of(500) {
            flush(&mut batch)?;
            eprintln!("{n} messages read");
        }
        Ok(())
    };
    for path in paths {
        for file in message_files(path)? {
            let is_mbox = {
                use std::io::Read;
                let mut head = [0u8; 5];
                std::fs::File::open(&file)
                    .and_then(|mut f| f.read_exact(&mut head))
                    .is_ok()
                    && &head == b"From "
            };
            if is_mbox {
                for_each_mbox_message(&file, &mut learn)?;
            } else if std::fs::metadata(&file).is_ok_and(|m| m.len() > MAX_TRAIN_MESSAGE as u64) {
                eprintln!("{}: skipped, larger than 64 MiB", file.display());
            } else {
                let raw = std::fs::read(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?;
                learn(&raw)?;
            }
        }
    }
    flush(&mut batch)?;
    println!(
        "{n} messages recorded as {kind}; the running server learns them within seconds \
         (see `yubin filter status`)"
    );
    Ok(())
}

/// The files of a path: itself, the messages of a Maildir (cur/, new/), or every
/// regular file of a directory (dot files and Dovecot's index files skipped).
fn message_files(path: &std::path::Path) -> Result<Vec<std::path::PathBuf>> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let dirs: Vec<std::path::PathBuf> = if path.join("cur").is_dir() || path.join("new").is_dir() {
        vec![path.join("cur"), path.join("new")]
    } else {
        vec![path.to_owned()]
    };
    let mut out = Vec::new();
    for d in dirs.iter().filter(|d| d.is_dir()) {
        let mut files: Vec<_> = std::fs::read_dir(d)
            .with_context(|| format!("cannot list {}", d.display()))?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                !name.starts_with('.') && !name.starts_with("dovecot")
            })
            .map(|e| e.path())
            .collect();
        files.sort();
        out.extend(files);
    }
    Ok(out)
}

/// Larger messages are not read for training (nor kept whole in memory).
const MAX_TRAIN_MESSAGE: usize = 64 << 20;

/// The messages of an mbox file (mboxo and mboxrd: `>From ` lines unquoted once), read
/// line by line so that a large file does not fill memory; a message past
/// [`MAX_TRAIN_MESSAGE`] is skipped.
fn for_each_mbox_message(
    path: &std::path::Path,
    each: &mut dyn FnMut(&[u8]) -> Result<()>,
) -> Result<()> {
    use std::io::BufRead;
    let f = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut r = std::io::BufReader::new(f);
    let (mut msg, mut line, mut started) = (Vec::new(), Vec::new(), false);
    loop {
        line.clear();
        // A line is read to its end or to the bound, whichever comes first.
        let n = std::io::Read::take(&mut r, MAX_TRAIN_MESSAGE as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if n == 0 || line.starts_with(b"From ") {
            if started && msg.len() <= MAX_TRAIN_MESSAGE {
                each(&msg)?;
            } else if started {
                eprintln!("{}: a message larger than 64 MiB skipped", path.display());
            }
            msg.clear();
            started = true;
            if n == 0 {
                return Ok(());
            }
            continue;
        }
        let unquoted = line
            .iter()
            .position(|&c| c != b'>')
            .filter(|&i| i > 0 && line.get(i..).is_some_and(|l| l.starts_with(b"From ")))
            .map_or(line.as_slice(), |_| line.get(1..).unwrap_or_default());
        if msg.len() <= MAX_TRAIN_MESSAGE {
            msg.extend_from_slice(unquoted);
        }
    }
}

fn alias_cmd(store: &SqliteStore, cmd: AliasCmd) -> Result<()> {
    match cmd {
        AliasCmd::Add { alias, targets } => {
            store.add_alias(&alias, &targets)?;
            println!("alias {alias} -> {}", targets.join(", "));
        }
        AliasCmd::List => {
            for a in store.list_aliases()? {
                println!("{}\t{}", a.alias, a.targets.join(", "));
            }
        }
        AliasCmd::Remove { alias, target } => {
            let n = store.remove_alias(&alias, target.as_deref())?;
            println!("alias {alias}: {n} target(s) removed");
        }
    }
    Ok(())
}

fn mail_cmd(store: &SqliteStore, cmd: MailCmd) -> Result<()> {
    match cmd {
        MailCmd::Mailboxes { address } => {
            let a = store.account(&address)?;
            for m in store.list_mailboxes(a.id)? {
                println!(
                    "{}\t{} message(s)\t{} unseen\t{} bytes\tuidvalidity {}\tuidnext {}\t{}",
                    m.name,
                    m.messages,
                    m.unseen,
                    m.size,
                    m.uidvalidity,
                    m.uid_next,
                    m.special_use.unwrap_or_default()
                );
            }
        }
        MailCmd::List { address, mailbox } => {
            let a = store.account(&address)?;
            let mb = store.mailbox(a.id, &mailbox)?;
            for m in store.messages(mb.id)?.iter() {
                println!(
                    "{}\t{}\t{}\t{}",
                    m.uid,
                    m.size,
                    yubin_server::rfc5322_date(m.internal_date),
                    flag_names(&m.flags).join(" ")
                );
            }
        }
        MailCmd::Cat {
            address,
            uid,
            mailbox,
        } => {
            let data = read_message(store, &address, &mailbox, uid)?;
            std::io::stdout().write_all(&data)?;
        }
        MailCmd::Unprocessable { remove } => {
            let items = store.unprocessable()?;
            if items.is_empty() {
                println!("no unprocessable messages");
            }
            for u in &items {
                println!("{}\t{}\t{}\t{}", u.account, u.mailbox, u.uid, u.reason);
                if remove {
                    store.remove_unprocessable(u)?;
                }
            }
            if remove && !items.is_empty() {
                println!("removed {} message(s)", items.len());
            }
        }
    }
    Ok(())
}

fn flag_names(f: &yubin_store::Flags) -> Vec<String> {
    use yubin_store::flags::*;
    let mut out: Vec<String> = [
        (SEEN, "\\Seen"),
        (ANSWERED, "\\Answered"),
        (FLAGGED, "\\Flagged"),
        (DELETED, "\\Deleted"),
        (DRAFT, "\\Draft"),
    ]
    .iter()
    .filter(|(bit, _)| f.system & bit != 0)
    .map(|(_, name)| name.to_string())
    .collect();
    out.extend(f.keywords.iter().cloned());
    out
}

/// `1024`, `500K`, `20M`, `2G`, or `none`.
fn parse_size(s: &str) -> Result<Option<u64>> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let (num, mult) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        Some('T') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .with_context(|| format!("invalid size {s:?}; use e.g. 500M, 2G or none"))?;
    Ok(Some(n.saturating_mul(mult)))
}

fn queue_cmd(store: &SqliteStore, cmd: QueueCmd) -> Result<()> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    match cmd {
        QueueCmd::List => {
            let q = store.queued()?;
            if q.is_empty() {
                println!("queue is empty");
            }
            for r in q {
                println!(
                    "{}\t{}\tfrom <{}>\t{} attempt(s)\tnext in {}s\t{}",
                    r.queue_id,
                    r.rcpt,
                    r.mail_from,
                    r.attempts,
                    (r.next_attempt - now).max(0),
                    r.last_error.unwrap_or_default()
                );
            }
        }
        QueueCmd::Show { id } => std::io::stdout().write_all(&store.queued_message(id)?)?,
        QueueCmd::Retry { id } => {
            let n = store.retry_now(id, now)?;
            println!("{n} recipient(s) due now (a running server picks them up within seconds)");
        }
        QueueCmd::Flush => {
            let n = store.retry_now(None, now)?;
            println!("{n} recipient(s) due now (a running server picks them up within seconds)");
        }
        QueueCmd::Delete { id } => {
            let n = store.delete_queued(id)?;
            if n == 0 {
                bail!("no queued message {id}; see `yubin queue list`");
            }
            println!("message {id} removed from the queue ({n} recipient(s))");
        }
    }
    Ok(())
}
