//! Space kept back for a full disk.
//!
//! When the disk fills, SQLite cannot append to its WAL, so even the commands that would
//! free space (STORE \Deleted, EXPUNGE, DELETE of a mailbox) fail, and a user cannot dig
//! out. `data/reserve` holds `RESERVE_BYTES` of real blocks; a metadata write that fails
//! for lack of space deletes it and tries once more. While it is gone, deliveries are
//! refused with a temporary error (the sender keeps the mail) until there is room to
//! make it again.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::{Error, Result};

pub(super) const RESERVE_BYTES: u64 = 8 << 20;
const FILE: &str = "reserve";

pub(super) struct Reserve {
    path: PathBuf,
    present: AtomicBool,
}

impl Reserve {
    /// Make the reserve if it is missing and there is room for it (a failure to make it
    /// is not an error: the next delivery tries again).
    pub(super) fn open(root: &Path) -> Self {
        let r = Reserve {
            path: root.join(FILE),
            present: AtomicBool::new(false),
        };
        r.ensure();
        r
    }

    fn ensure(&self) -> bool {
        if self.present.load(Ordering::Acquire) {
            return true;
        }
        if fs::metadata(&self.path).is_ok_and(|m| m.len() >= RESERVE_BYTES) {
            self.present.store(true, Ordering::Release);
            return true;
        }
        // Zeros written, not a sparse file: the blocks must really be taken.
        let made = (|| -> std::io::Result<()> {
            let tmp = self.path.with_extension("tmp");
            let mut f = fs::File::create(&tmp)?;
            let zeros = vec![0u8; 1 << 20];
            for _ in 0..(RESERVE_BYTES >> 20) {
                f.write_all(&zeros)?;
            }
            f.sync_all()?;
            fs::rename(&tmp, &self.path)
        })();
        match made {
            Ok(()) => {
                self.present.store(true, Ordering::Release);
                true
            }
            Err(e) => {
                let _ = fs::remove_file(self.path.with_extension("tmp"));
                tracing::warn!(error = %e, "cannot keep space in reserve (disk full?)");
                false
            }
        }
    }

    /// Give the reserved space back to the file system; false when there was none.
    pub(super) fn release(&self) -> bool {
        if !self.present.swap(false, Ordering::AcqRel) {
            return false;
        }
        match fs::remove_file(&self.path) {
            Ok(()) => {
                tracing::warn!(
                    "disk full: released the reserve so that users can delete mail; \
                     deliveries wait until there is space again"
                );
                true
            }
            Err(_) => false,
        }
    }

    /// May a delivery take space? Only with the reserve in place (made again if room).
    pub(super) fn check_delivery(&self) -> Result<()> {
        if self.ensure() {
            return Ok(());
        }
        Err(Error::io(
            "no space left for mail in",
            self.path.parent().unwrap_or(Path::new(".")),
            std::io::Error::from(std::io::ErrorKind::StorageFull),
        ))
    }
}

/// A write failed for lack of disk space.
pub(super) fn is_disk_full(e: &Error) -> bool {
    match e {
        Error::Db(rusqlite::Error::SqliteFailure(f, _)) => f.code == rusqlite::ErrorCode::DiskFull,
        Error::Io { source, .. } => source.kind() == std::io::ErrorKind::StorageFull,
        _ => false,
    }
}
