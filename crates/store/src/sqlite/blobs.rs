//! Reading bodies: from the database (small ones), pack files (packs.rs, larger ones) or,
//! in data directories from before packs, one file per body.
//!
//! Implementation notes: a FETCH of 1,000 bodies opens 1,000 files, and a profile showed
//! the kernel's path walk (`d_lookup`, one step per directory of `<data>/blobs/xx/name`) as
//! the largest cost. The 256 fan-out directories stay open and each body is opened relative
//! to its directory (`openat`, which std does not offer, hence libc); the size is known from
//! the message list, so neither `fstat` nor a probe for the end of the file. Elsewhere
//! plain paths are used.
// Needs `unsafe`: openat(2) on the bodies directory: one descriptor, no path walk per body.
#![allow(unsafe_code)]

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use rusqlite::{Connection, OptionalExtension};

use super::packs::{Packed, Packs};
use super::snapshot::blob_key;
use crate::{Error, Result};

pub(super) struct BlobDirs {
    #[cfg(target_os = "linux")]
    dirs: Vec<File>,
    root: std::path::PathBuf,
    pub packs: Packs,
}

impl BlobDirs {
    pub fn open(root: &Path) -> io::Result<Self> {
        let packs = Packs::open(root)?;
        #[cfg(target_os = "linux")]
        let dirs = (0..=255u8)
            .map(|i| File::open(root.join("blobs").join(format!("{i:02x}"))))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(BlobDirs {
            #[cfg(target_os = "linux")]
            dirs,
            root: root.to_owned(),
            packs,
        })
    }

    fn open_file(&self, name: &str) -> io::Result<File> {
        #[cfg(target_os = "linux")]
        if let Some(dir) = name
            .get(..2)
            .and_then(|p| u8::from_str_radix(p, 16).ok())
            .and_then(|i| self.dirs.get(usize::from(i)))
        {
            use std::os::fd::{AsRawFd, FromRawFd};
            let c = std::ffi::CString::new(name).map_err(io::Error::other)?;
            // SAFETY: `dir` is an open directory and `c` a NUL-terminated name; on success
            // the new descriptor is ours alone and handed to File exactly once.
            let fd = unsafe {
                libc::openat(
                    dir.as_raw_fd(),
                    c.as_ptr(),
                    libc::O_RDONLY | libc::O_CLOEXEC,
                )
            };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            return Ok(unsafe { File::from_raw_fd(fd) });
        }
        File::open(super::SqliteStore::blob_path(&self.root, name))
    }

    /// The whole body, `size` bytes (from the metadata: bodies never change after they
    /// are written, so one read suffices and a short file is an error).
    fn read(&self, name: &str, size: u64) -> io::Result<Vec<u8>> {
        let mut f = self.open_file(name)?;
        let mut buf = vec![0; size as usize];
        f.read_exact(&mut buf)?;
        Ok(buf)
    }

    /// A body file; `None` when it was removed (expunged meanwhile).
    pub fn read_file(&self, name: &str, size: u64) -> Result<Option<Vec<u8>>> {
        match self.read(name, size) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(
                "read",
                super::SqliteStore::blob_path(&self.root, name),
                e,
            )),
        }
    }

    /// A body by its id (`c` reads yubin.db): from the database when it is small, else
    /// from its pack or file; `None` when it is gone (removed since the caller looked it
    /// up). The one body loader of FETCH, the queue and the indexer.
    pub fn load(&self, c: &Connection, blob_id: i64) -> Result<Option<Vec<u8>>> {
        type Row = (String, i64, Option<Vec<u8>>, Option<i64>, Option<i64>);
        let row: Option<Row> = c
            .prepare_cached("SELECT name, size, data, pack, off FROM blobs WHERE id = ?1")?
            .query_row([blob_id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .optional()?;
        match row {
            None => Ok(None),
            Some((_, _, Some(data), _, _)) => Ok(Some(data)),
            Some((name, size, None, Some(pack), Some(off))) => {
                let at = Packed {
                    pack: pack as u64,
                    off: off as u64,
                };
                self.packs
                    .read(at, &blob_key(&name), size as u64)
                    .map_err(|e| {
                        let path = self.packs.dir().join(super::packs::file_name(at.pack));
                        Error::io("read", path, e)
                    })
            }
            Some((name, size, None, _, _)) => self.read_file(&name, size as u64),
        }
    }
}
