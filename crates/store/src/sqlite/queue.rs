//! The outbound queue of the embedded backend.

use rusqlite::{OptionalExtension, TransactionBehavior, params};

use super::SqliteStore;
use crate::{Attempt, Error, Queue, QueuedRcpt, Result};

const COLUMNS: &str = "r.id, r.queue_id, q.mail_from, r.rcpt, r.domain, r.attempts, q.created,
    r.next_attempt, r.last_error, b.size, r.warned, r.notify, r.orcpt, q.envid, q.ret,
    q.require_tls";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<QueuedRcpt> {
    Ok(QueuedRcpt {
        id: r.get(0)?,
        queue_id: r.get(1)?,
        mail_from: r.get(2)?,
        rcpt: r.get(3)?,
        domain: r.get(4)?,
        attempts: r.get(5)?,
        created: r.get(6)?,
        next_attempt: r.get(7)?,
        last_error: r.get(8)?,
        size: r.get::<_, i64>(9)? as u64,
        warned: r.get(10)?,
        notify: r.get(11)?,
        orcpt: r.get(12)?,
        envid: r.get(13)?,
        ret: r.get(14)?,
        require_tls: r.get(15)?,
    })
}

impl Queue for SqliteStore {
    fn due_except(
        &self,
        now: i64,
        limit: usize,
        busy: &[String],
        in_flight: &[i64],
    ) -> Result<Vec<QueuedRcpt>> {
        let c = self.conn();
        // The busy domains as one JSON array parameter (SQLite's json_each).
        let busy = format!(
            "[{}]",
            busy.iter()
                .map(|d| format!("\"{}\"", d.replace(['"', '\\'], "")))
                .collect::<Vec<_>>()
                .join(",")
        );
        let mut st = c.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM queue_rcpts r JOIN queue q ON q.id = r.queue_id
             JOIN blobs b ON b.id = q.blob_id
             WHERE r.done = 0 AND r.next_attempt <= ?1
               AND r.domain NOT IN (SELECT value FROM json_each(?3))
               AND r.id NOT IN (SELECT value FROM json_each(?4))
             ORDER BY r.next_attempt, r.id LIMIT ?2"
        ))?;
        let in_flight = format!(
            "[{}]",
            in_flight
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(",")
        );
        let rows = st
            .query_map(params![now, limit as i64, busy, in_flight], row)?
            .collect::<std::result::Result<_, _>>()?;
        Ok(rows)
    }

    fn queued(&self) -> Result<Vec<QueuedRcpt>> {
        let c = self.conn();
        let mut st = c.prepare(&format!(
            "SELECT {COLUMNS} FROM queue_rcpts r JOIN queue q ON q.id = r.queue_id
             JOIN blobs b ON b.id = q.blob_id WHERE r.done = 0 ORDER BY r.queue_id, r.id"
        ))?;
        let rows = st
            .query_map([], row)?
            .collect::<std::result::Result<_, _>>()?;
        Ok(rows)
    }

    fn queued_message(&self, queue_id: i64) -> Result<Vec<u8>> {
        let c = self.reader();
        let blob: i64 = c
            .query_row("SELECT blob_id FROM queue WHERE id = ?1", [queue_id], |r| {
                r.get(0)
            })
            .optional()?
            .ok_or(Error::NoSuchMessage(queue_id as u32))?;
        self.load_body(&c, blob)?
            .ok_or(Error::NoSuchMessage(queue_id as u32))
    }

    fn record(&self, rcpt_id: i64, attempt: &Attempt) -> Result<()> {
        self.record_many(&[(rcpt_id, attempt.clone())])
    }

    fn record_many(&self, attempts: &[(i64, Attempt)]) -> Result<()> {
        let dead = {
            let mut c = self.conn();
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut messages = std::collections::BTreeSet::new();
            for (rcpt_id, attempt) in attempts {
                match attempt {
                    Attempt::Delivered => tx.execute(
                        "UPDATE queue_rcpts SET done = 1, attempts = attempts + 1, last_error = NULL
                         WHERE id = ?1",
                        [rcpt_id],
                    )?,
                    Attempt::Retry { at, error } => tx.execute(
                        "UPDATE queue_rcpts SET attempts = attempts + 1, next_attempt = ?2,
                         last_error = ?3 WHERE id = ?1",
                        params![rcpt_id, at, error],
                    )?,
                    Attempt::Failed { error } => tx.execute(
                        "UPDATE queue_rcpts SET done = 1, attempts = attempts + 1, last_error = ?2
                         WHERE id = ?1",
                        params![rcpt_id, error],
                    )?,
                };
                let qid: Option<i64> = tx
                    .query_row(
                        "SELECT queue_id FROM queue_rcpts WHERE id = ?1",
                        [rcpt_id],
                        |r| r.get(0),
                    )
                    .optional()?;
                messages.extend(qid);
            }
            // A message with every recipient done leaves the queue (and its body, if unused).
            let mut blobs = Vec::new();
            for qid in messages {
                let finished: Option<i64> = tx
                    .query_row(
                        "SELECT q.blob_id FROM queue q WHERE q.id = ?1
                           AND NOT EXISTS (SELECT 1 FROM queue_rcpts r WHERE r.queue_id = q.id AND r.done = 0)",
                        [qid],
                        |r| r.get(0),
                    )
                    .optional()?;
                if let Some(blob) = finished {
                    tx.execute("DELETE FROM queue WHERE id = ?1", [qid])?;
                    blobs.push(blob);
                }
            }
            let dead = Self::drop_unreferenced_blobs(&tx, blobs)?;
            tx.commit()?;
            dead
        };
        self.free_bodies(&dead);
        Ok(())
    }

    fn mark_warned(&self, rcpt_id: i64) -> Result<()> {
        self.conn()
            .execute("UPDATE queue_rcpts SET warned = 1 WHERE id = ?1", [rcpt_id])?;
        Ok(())
    }

    fn retry_now(&self, queue_id: Option<i64>, now: i64) -> Result<usize> {
        let n = self.conn().execute(
            "UPDATE queue_rcpts SET next_attempt = ?2 WHERE done = 0 AND (?1 IS NULL OR queue_id = ?1)",
            params![queue_id, now],
        )?;
        Ok(n)
    }

    fn delete_queued(&self, queue_id: i64) -> Result<usize> {
        let (n, dead) = {
            let mut c = self.conn();
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let blob: Option<i64> = tx
                .query_row("SELECT blob_id FROM queue WHERE id = ?1", [queue_id], |r| {
                    r.get(0)
                })
                .optional()?;
            let Some(blob) = blob else {
                return Ok(0);
            };
            let n = tx.execute(
                "DELETE FROM queue_rcpts WHERE queue_id = ?1 AND done = 0",
                [queue_id],
            )?;
            tx.execute("DELETE FROM queue WHERE id = ?1", [queue_id])?;
            let dead = Self::drop_unreferenced_blobs(&tx, [blob])?;
            tx.commit()?;
            (n, dead)
        };
        self.free_bodies(&dead);
        Ok(n)
    }
}
