//! NOTIFY (RFC 5465): which events of which mailboxes a session is told of without
//! asking. This module reads the NOTIFY command's arguments (the grammar of §8) and says
//! which events apply to a mailbox; the session compares mailbox states and sends
//! STATUS, LIST and FETCH responses (§5).

use crate::extcmd::Arg;

/// §6: the mailboxes an event group covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// The selected mailbox; `delayed`: expunges wait for a command that allows them.
    Selected {
        delayed: bool,
    },
    Inboxes,
    Personal,
    Subscribed,
    Subtree(Vec<String>),
    Mailboxes(Vec<String>),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Events {
    /// MessageNew and MessageExpunge (§5.2, §5.3: one needs the other).
    pub message: bool,
    /// FlagChange (§5.4).
    pub flags: bool,
    /// MailboxName (§5.5).
    pub names: bool,
    /// SubscriptionChange (§5.6).
    pub subscriptions: bool,
    /// MessageNew's fetch attributes (selected mailbox only), as FETCH items.
    pub fetch: Option<String>,
}

impl Events {
    fn union(&mut self, o: &Events) {
        self.message |= o.message;
        self.flags |= o.flags;
        self.names |= o.names;
        self.subscriptions |= o.subscriptions;
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// `NOTIFY SET STATUS`: a STATUS of each covered mailbox at once (§3.1).
    pub status: bool,
    pub groups: Vec<(Filter, Events)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyError {
    Bad(&'static str),
    /// §3.1 `NO [BADEVENT (...)]`: an event this server does not report.
    BadEvent,
}

/// What `[BADEVENT (...)]` lists.
pub const SUPPORTED: &str = "MessageNew MessageExpunge FlagChange MailboxName SubscriptionChange";

/// Most event groups, and mailboxes named in one filter.
const MAX_GROUPS: usize = 16;
const MAX_NAMES: usize = 100;

/// `NOTIFY NONE` (`Ok(None)`) or `NOTIFY SET [STATUS] groups...`; `mailbox` turns a
/// mailbox argument into a name.
pub fn parse(
    args: &[Arg],
    mailbox: impl Fn(&Arg) -> Result<String, &'static str>,
) -> Result<Option<Spec>, NotifyError> {
    use NotifyError::Bad;
    let word = |a: Option<&Arg>| match a {
        Some(Arg::Atom(w)) => Some(w.to_ascii_uppercase()),
        _ => None,
    };
    let mut it = args.iter().peekable();
    match word(it.next()).as_deref() {
        Some("NONE") if it.peek().is_none() => return Ok(None),
        Some("SET") => {}
        _ => return Err(Bad("NOTIFY SET ... or NOTIFY NONE")),
    }
    let status = word(it.peek().copied()).as_deref() == Some("STATUS");
    if status {
        it.next();
    }
    let mut groups = Vec::new();
    let mut selected_seen = false;
    for g in it {
        let Arg::List(parts) = g else {
            return Err(Bad("an event group is a list: (filter events)"));
        };
        if groups.len() >= MAX_GROUPS {
            return Err(Bad("too many event groups"));
        }
        let mut p = parts.iter();
        let filter = match word(p.next()).as_deref() {
            Some("SELECTED") => Filter::Selected { delayed: false },
            Some("SELECTED-DELAYED") => Filter::Selected { delayed: true },
            Some("INBOXES") => Filter::Inboxes,
            Some("PERSONAL") => Filter::Personal,
            Some("SUBSCRIBED") => Filter::Subscribed,
            Some(w @ ("SUBTREE" | "MAILBOXES")) => {
                let names = match p.next() {
                    Some(Arg::List(l)) if !l.is_empty() && l.len() <= MAX_NAMES => l
                        .iter()
                        .map(&mailbox)
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(Bad)?,
                    Some(a @ (Arg::Atom(_) | Arg::Str(_))) => vec![mailbox(a).map_err(Bad)?],
                    _ => return Err(Bad("mailbox names expected")),
                };
                if w == "SUBTREE" {
                    Filter::Subtree(names)
                } else {
                    Filter::Mailboxes(names)
                }
            }
            _ => return Err(Bad("unknown filter")),
        };
        let is_selected = matches!(filter, Filter::Selected { .. });
        if is_selected {
            if selected_seen {
                return Err(Bad("the selected mailbox is named twice"));
            }
            selected_seen = true;
        }
        let events = match (p.next(), p.next()) {
            (Some(a), None) if word(Some(a)).as_deref() == Some("NONE") => Events::default(),
            (Some(Arg::List(list)), None) if !list.is_empty() => events(list, is_selected)?,
            _ => return Err(Bad("events expected: (event ...) or NONE")),
        };
        groups.push((filter, events));
    }
    if groups.is_empty() {
        return Err(Bad("NOTIFY SET needs an event group"));
    }
    Ok(Some(Spec { status, groups }))
}

fn events(list: &[Arg], selected: bool) -> Result<Events, NotifyError> {
    use NotifyError::{Bad, BadEvent};
    let mut e = Events::default();
    let (mut new, mut expunge) = (false, false);
    let mut it = list.iter().peekable();
    while let Some(a) = it.next() {
        let Arg::Atom(w) = a else {
            return Err(Bad("an event name expected"));
        };
        match w.to_ascii_uppercase().as_str() {
            "MESSAGENEW" => {
                new = true;
                if let Some(Arg::List(atts)) = it.peek() {
                    if !selected {
                        // §5.2: fetch attributes only for the selected mailbox.
                        return Err(Bad(
                            "MessageNew fetch attributes are for the selected mailbox",
                        ));
                    }
                    let text: Option<Vec<String>> = atts
                        .iter()
                        .map(|a| match a {
                            Arg::Atom(x) => Some(x.clone()),
                            _ => None,
                        })
                        .collect();
                    let text = text.ok_or(Bad("fetch attributes expected"))?;
                    e.fetch = Some(format!("({})", text.join(" ")));
                    it.next();
                }
            }
            "MESSAGEEXPUNGE" => expunge = true,
            "FLAGCHANGE" => e.flags = true,
            "MAILBOXNAME" | "SUBSCRIPTIONCHANGE" if selected => {
                return Err(Bad("mailbox events are not for the selected mailbox"));
            }
            "MAILBOXNAME" => e.names = true,
            "SUBSCRIPTIONCHANGE" => e.subscriptions = true,
            "ANNOTATIONCHANGE" | "MAILBOXMETADATACHANGE" | "SERVERMETADATACHANGE" => {
                return Err(BadEvent);
            }
            _ => return Err(BadEvent),
        }
    }
    // §5: MessageNew and MessageExpunge go together; FlagChange needs them.
    if new != expunge {
        return Err(Bad("MessageNew and MessageExpunge go together"));
    }
    if e.flags && !new {
        return Err(Bad("FlagChange needs MessageNew and MessageExpunge"));
    }
    e.message = new;
    Ok(e)
}

impl Spec {
    /// The events the groups other than `selected` give a mailbox (union).
    pub fn for_mailbox(&self, name: &str, subscribed: bool) -> Events {
        let mut out = Events::default();
        for (f, e) in &self.groups {
            let covers = match f {
                Filter::Selected { .. } => false,
                Filter::Inboxes => name == "INBOX",
                Filter::Personal => true,
                Filter::Subscribed => subscribed,
                Filter::Subtree(roots) => roots.iter().any(|r| {
                    name == r
                        || name
                            .strip_prefix(r.as_str())
                            .is_some_and(|rest| rest.starts_with('/'))
                }),
                Filter::Mailboxes(list) => list.iter().any(|m| m == name),
            };
            if covers {
                out.union(e);
            }
        }
        out
    }

    /// The selected mailbox's events, if a group names it.
    pub fn selected(&self) -> Option<(bool, &Events)> {
        self.groups.iter().find_map(|(f, e)| match f {
            Filter::Selected { delayed } => Some((*delayed, e)),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extcmd;

    fn spec(cmd: &str) -> Result<Option<Spec>, NotifyError> {
        let c = extcmd::parse(format!("t NOTIFY {cmd}\r\n").as_bytes()).expect("parses");
        parse(&c.args, |a| a.text().ok_or("bad name"))
    }

    #[test]
    fn grammar() {
        assert_eq!(spec("NONE"), Ok(None));
        let s = spec("SET STATUS (selected (MessageNew (UID FLAGS) MessageExpunge FlagChange)) (personal (MessageNew MessageExpunge MailboxName SubscriptionChange))")
            .unwrap()
            .unwrap();
        assert!(s.status);
        let (delayed, sel) = s.selected().unwrap();
        assert!(!delayed && sel.message && sel.flags);
        assert_eq!(sel.fetch.as_deref(), Some("(UID FLAGS)"));
        let e = s.for_mailbox("Archive", false);
        assert!(e.message && e.names && e.subscriptions && !e.flags);
        let s = spec("SET (subtree (Lists) (MessageNew MessageExpunge)) (mailboxes Work NONE) (inboxes (MailboxName))")
            .unwrap()
            .unwrap();
        assert!(s.for_mailbox("Lists/rust", false).message);
        assert!(!s.for_mailbox("Listsx", false).message);
        assert!(s.for_mailbox("INBOX", false).names);
        assert_eq!(s.for_mailbox("Work", false), Events::default());
        for bad in [
            "SET",
            "SET STATUS",
            "SET (selected (MessageNew))",
            "SET (selected (FlagChange))",
            "SET (selected (MailboxName))",
            "SET (personal (MessageNew (UID) MessageExpunge))",
            "SET (selected NONE) (selected-delayed NONE)",
            "SET (nowhere (MessageNew MessageExpunge))",
            "SET (mailboxes (MessageNew MessageExpunge))",
            "SET (personal ())",
            "NONE x",
        ] {
            assert!(matches!(spec(bad), Err(NotifyError::Bad(_))), "{bad}");
        }
        assert_eq!(
            spec("SET (personal (MessageNew MessageExpunge AnnotationChange))"),
            Err(NotifyError::BadEvent)
        );
        assert_eq!(spec("SET (personal (Bogus))"), Err(NotifyError::BadEvent));
        let many = format!("SET {}", "(personal NONE) ".repeat(20));
        assert!(spec(many.trim_end()).is_err());
    }
}
