//! Pack files: bodies too large for the database, appended to a few shared files.
//!
//! Implementation notes:
//! - One file per body cost a quarter of the CPU of a 256 KiB SMTP load in the kernel's
//!   inode allocator (ext4 `find_inode_bit`/`recently_deleted`, worse after deletions) and
//!   an fsync of the new inode plus its directory per message. A pack is created once
//!   (file and directory fsynced), then each body is appended at its end and made durable
//!   with one `fdatasync`: no inode, no directory entry per message.
//! - A pack is used by one stager at a time (checked out of `free`), so appends never
//!   interleave; how many packs are open follows how many deliveries run at once. A pack
//!   is sealed at [`SEAL_AT`] bytes, after a failed write, and when the process stops:
//!   packs from an earlier run are never appended to again, so their length is final.
//! - Bodies are written with `O_DIRECT` where the filesystem allows it: from one reused,
//!   aligned buffer per pack straight to the disk, each record padded to 4 KiB. Buffered
//!   writes had to allocate and fill fresh page-cache pages for every body; on this
//!   benchmark's VM that copy took up to 43% of the CPU once the guest's free memory had
//!   been handed back to the host. Reads stay buffered.
//! - Each body is preceded by a 32-byte header (magic, the blob's random name, its size),
//!   and every read checks it: a read of a removed body (hole punched) or of a torn tail
//!   finds zeros, not someone else's mail, and reports the body gone.
//! - A removed body's range is freed with `FALLOC_FL_PUNCH_HOLE`, [`GRACE`] after the
//!   commit that dropped its row, so a reader that found the row a moment before still
//!   reads it whole. Ranges not freed before a crash (and bodies appended but never
//!   committed) are found by `sweep`, which punches every gap between live bodies,
//!   trims a tail nobody refers to and removes packs nobody refers to.
//! - `std` offers neither `openat` nor `fallocate`, hence libc (Linux; elsewhere bodies
//!   are read by path and space is reclaimed only when a whole pack is removed).
// Needs `unsafe`: O_DIRECT appends and SEEK_DATA through libc (each call has a SAFETY note).
#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A pack stops taking bodies once it is this long.
pub(super) const SEAL_AT: u64 = 64 << 20;
/// How long a removed body stays readable.
const GRACE: Duration = Duration::from_secs(10);
/// Bytes before each body.
pub(super) const HEADER: u64 = 32;
const MAGIC: &[u8; 8] = b"yubinpk1";

/// Where a body was appended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Packed {
    pub pack: u64,
    /// Where its header starts.
    pub off: u64,
}

/// Where bodies written without the page cache start, and what their length is padded to.
const ALIGN: usize = 4096;

struct Open {
    id: u64,
    file: File,
    /// The same file opened with `O_DIRECT`; `None` where the filesystem refuses it.
    direct: Option<File>,
    /// Reused for each body written through `direct` (which needs aligned memory).
    buf: Vec<u8>,
    end: u64,
}

#[derive(Default)]
struct Freeing {
    queue: Mutex<VecDeque<(Instant, u64, u64, u64)>>,
    wake: Condvar,
    closed: AtomicBool,
}

pub(super) struct Packs {
    dir: PathBuf,
    #[cfg(target_os = "linux")]
    dir_fd: File,
    free: Mutex<Vec<Open>>,
    next: AtomicU64,
    /// Packs numbered below this existed before this process opened the store.
    first_new: u64,
    freeing: Arc<Freeing>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing here can be left half-updated by a panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(super) fn file_name(id: u64) -> String {
    format!("{id:016x}")
}

fn header(key: &[u8; 16], size: u64) -> [u8; HEADER as usize] {
    let mut h = [0u8; HEADER as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..24].copy_from_slice(key);
    h[24..].copy_from_slice(&size.to_le_bytes());
    h
}

/// Packs in `dir` with their lengths, by number.
pub(super) fn list(dir: &Path) -> io::Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        let Some(id) = name
            .to_str()
            .filter(|n| n.len() == 16)
            .and_then(|n| u64::from_str_radix(n, 16).ok())
        else {
            continue;
        };
        out.push((id, e.metadata()?.len()));
    }
    out.sort_unstable();
    Ok(out)
}

impl Open {
    /// Write one record at `off` and make it durable; returns the bytes it takes.
    fn write(&mut self, off: u64, head: &[u8], parts: &[&[u8]], size: u64) -> io::Result<u64> {
        let len = HEADER as usize + size as usize;
        if let Some(direct) = &self.direct {
            // Through O_DIRECT the disk reads the body from this buffer: no page-cache
            // page to allocate and fill per body (see the notes above), no writeback.
            let padded = len.next_multiple_of(ALIGN);
            if self.buf.len() < padded + ALIGN {
                self.buf = vec![0; padded + ALIGN];
            }
            let start = self.buf.as_ptr().align_offset(ALIGN);
            let b = &mut self.buf[start..start + padded];
            b[..head.len()].copy_from_slice(head);
            let mut at = head.len();
            for part in parts {
                b[at..at + part.len()].copy_from_slice(part);
                at += part.len();
            }
            b[at..].fill(0);
            let written = direct.write_all_at(b, off);
            if self.buf.len() > 4 << 20 {
                self.buf = Vec::new();
            }
            match written {
                Ok(()) => {
                    // Also writes the inode: the file's length changed.
                    self.file.sync_data()?;
                    return Ok(padded as u64);
                }
                // Alignment this filesystem will not take (also for the unaligned rest of
                // a short write): the whole record again through the page cache, and
                // the page cache from now on.
                Err(e) if e.kind() == io::ErrorKind::InvalidInput => self.direct = None,
                Err(e) => return Err(e),
            }
        }
        self.file.write_all_at(head, off)?;
        let mut at = off + HEADER;
        for part in parts {
            self.file.write_all_at(part, at)?;
            at += part.len() as u64;
        }
        self.file.sync_data()?;
        Ok(len as u64)
    }
}

impl Packs {
    /// Open (creating if needed) `<root>/packs`.
    pub fn open(root: &Path) -> io::Result<Self> {
        Self::with_grace(root, GRACE)
    }

    pub(super) fn with_grace(root: &Path, grace: Duration) -> io::Result<Self> {
        let dir = root.join("packs");
        if !dir.exists() {
            fs::create_dir(&dir)?;
            File::open(root)?.sync_all()?;
        }
        let next = list(&dir)?.last().map_or(1, |(id, _)| id + 1);
        let freeing = Arc::new(Freeing::default());
        let f = freeing.clone();
        let fdir = dir.clone();
        std::thread::Builder::new()
            .name("store-packs".into())
            .spawn(move || free_loop(&fdir, &f, grace))?;
        Ok(Packs {
            #[cfg(target_os = "linux")]
            dir_fd: File::open(&dir)?,
            dir,
            free: Mutex::new(Vec::new()),
            next: AtomicU64::new(next),
            first_new: next,
            freeing,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Packs this process may still append to (the ones `sweep` leaves alone).
    pub fn is_current(&self, id: u64) -> bool {
        id >= self.first_new
    }

    /// A new, empty pack whose directory entry is durable.
    fn create(&self) -> io::Result<Open> {
        let (id, path, file) = loop {
            let id = self.next.fetch_add(1, Ordering::Relaxed);
            let path = self.dir.join(file_name(id));
            match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(f) => break (id, path, f),
                // Another process with this data directory open took the number.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        };
        file.sync_all()?;
        File::open(&self.dir)?.sync_all()?;
        #[cfg(target_os = "linux")]
        let direct = {
            use std::os::unix::fs::OpenOptionsExt;
            OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(&path)
                .ok()
        };
        #[cfg(not(target_os = "linux"))]
        let direct = None;
        Ok(Open {
            id,
            file,
            direct,
            buf: Vec::new(),
            end: 0,
        })
    }

    /// Append one body (the concatenation of `parts`, `size` bytes) and make it durable.
    pub fn append(&self, key: &[u8; 16], parts: &[&[u8]], size: u64) -> io::Result<Packed> {
        let taken = lock(&self.free).pop();
        let mut p = match taken {
            Some(p) => p,
            None => self.create()?,
        };
        let off = p.end;
        // On an error `p` is dropped: the pack is sealed, and what the write left behind
        // is freed by the next sweep.
        p.end = off + p.write(off, &header(key, size), parts, size)?;
        let at = Packed { pack: p.id, off };
        if p.end < SEAL_AT {
            lock(&self.free).push(p);
        }
        Ok(at)
    }

    fn open_pack(&self, id: u64) -> io::Result<File> {
        let name = file_name(id);
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::{AsRawFd, FromRawFd};
            let c = std::ffi::CString::new(name).map_err(io::Error::other)?;
            // SAFETY: `dir_fd` is an open directory and `c` a NUL-terminated name; on
            // success the new descriptor is ours alone and handed to File exactly once.
            let fd = unsafe {
                libc::openat(
                    self.dir_fd.as_raw_fd(),
                    c.as_ptr(),
                    libc::O_RDONLY | libc::O_CLOEXEC,
                )
            };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(unsafe { File::from_raw_fd(fd) })
        }
        #[cfg(not(target_os = "linux"))]
        File::open(self.dir.join(name))
    }

    /// The body `key` of `size` bytes at `at`; `None` when it is no longer there.
    pub fn read(&self, at: Packed, key: &[u8; 16], size: u64) -> io::Result<Option<Vec<u8>>> {
        let f = match self.open_pack(at.pack) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut buf = vec![0; size as usize];
        let mut h = [0u8; HEADER as usize];
        // The body first, then its header: a hole punched meanwhile zeroes the header too.
        for (b, off) in [(&mut buf[..], at.off + HEADER), (&mut h[..], at.off)] {
            match f.read_exact_at(b, off) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        Ok((h == header(key, size)).then_some(buf))
    }

    /// Free the ranges of bodies no longer referenced (where, and their size), after
    /// [`GRACE`].
    pub fn release(&self, dead: impl IntoIterator<Item = (Packed, u64)>) {
        let now = Instant::now();
        let mut q = lock(&self.freeing.queue);
        let before = q.len();
        q.extend(
            dead.into_iter()
                .map(|(at, size)| (now, at.pack, at.off, HEADER + size)),
        );
        if q.len() > before {
            self.freeing.wake.notify_one();
        }
    }

    /// At startup: remove the packs no body refers to, cut what follows the last body of
    /// each pack (appended but never committed) and free the space between bodies
    /// (removed before the crash, or never committed). `live` holds (pack, offset, size)
    /// of every body in a pack, sorted. Returns how many packs were removed or cut and
    /// how many gaps freed.
    pub fn sweep(&self, live: &[(u64, u64, u64)]) -> io::Result<usize> {
        let mut changed = 0;
        for (id, len) in list(&self.dir)? {
            if self.is_current(id) {
                continue;
            }
            let bodies =
                &live[live.partition_point(|r| r.0 < id)..live.partition_point(|r| r.0 <= id)];
            let path = self.dir.join(file_name(id));
            if bodies.is_empty() {
                fs::remove_file(&path)?;
                changed += 1;
                continue;
            }
            let f = OpenOptions::new().write(true).open(&path)?;
            let block = {
                use std::os::unix::fs::MetadataExt;
                f.metadata()?.blksize().max(512)
            };
            let mut at = 0u64;
            for &(_, off, size) in bodies {
                // Whole blocks only: a partial one is shared with a live body, and punching
                // it would rewrite it at every start.
                let (from, to) = (at.div_ceil(block) * block, off / block * block);
                if to > from && has_data(&f, from, to) {
                    punch(&f, from, to - from)?;
                    changed += 1;
                }
                at = at.max(off + HEADER + size);
            }
            // Up to the next 4 KiB is the last body's padding (O_DIRECT).
            if len > at.next_multiple_of(ALIGN as u64) {
                f.set_len(at)?;
                f.sync_all()?;
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// Wait until every released range is freed (tests).
    #[cfg(test)]
    pub fn drain(&self) {
        while !lock(&self.freeing.queue).is_empty() {
            std::thread::sleep(Duration::from_millis(5));
        }
        // The last one may still be in progress.
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Packs {
    fn drop(&mut self) {
        self.freeing.closed.store(true, Ordering::Relaxed);
        self.freeing.wake.notify_one();
    }
}

/// The thread that frees released ranges once their grace period is over.
fn free_loop(dir: &Path, f: &Freeing, grace: Duration) {
    let mut q = lock(&f.queue);
    loop {
        if f.closed.load(Ordering::Relaxed) {
            // Ranges still waiting are freed by the next sweep.
            return;
        }
        let Some(&(at, pack, off, len)) = q.front() else {
            q = f.wake.wait(q).unwrap_or_else(|e| e.into_inner());
            continue;
        };
        let due = at + grace;
        let now = Instant::now();
        if due > now {
            q = f
                .wake
                .wait_timeout(q, due - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            continue;
        }
        q.pop_front();
        drop(q);
        if let Err(e) = punch_path(&dir.join(file_name(pack)), off, len)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(pack, error = %e, "could not free a removed body's space");
        }
        q = lock(&f.queue);
    }
}

fn punch_path(path: &Path, off: u64, len: u64) -> io::Result<()> {
    punch(&OpenOptions::new().write(true).open(path)?, off, len)
}

/// Give `len` bytes at `off` back to the filesystem; they read as zeros afterwards.
pub(super) fn punch(file: &File, off: u64, len: u64) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let (Ok(o), Ok(l)) = (libc::off_t::try_from(off), libc::off_t::try_from(len)) else {
            return Err(io::Error::other("range too large"));
        };
        // SAFETY: a plain system call on a descriptor we own.
        let r = unsafe {
            libc::fallocate(
                file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                o,
                l,
            )
        };
        if r != 0 {
            let e = io::Error::last_os_error();
            // A filesystem without holes keeps the bytes until the pack goes.
            if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
                return Ok(());
            }
            return Err(e);
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (file, off, len);
        Ok(())
    }
}

/// Whether anything in `from..to` of `f` is allocated (not a hole).
fn has_data(f: &File, from: u64, to: u64) -> bool {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let Ok(o) = libc::off_t::try_from(from) else {
            return false;
        };
        // SAFETY: a plain system call on a descriptor we own.
        let next = unsafe { libc::lseek(f.as_raw_fd(), o, libc::SEEK_DATA) };
        // -1: no data after `from` (ENXIO) or no SEEK_DATA here; either way nothing to do.
        next >= 0 && (next as u64) < to
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (f, from, to);
        false
    }
}

/// Blocks a file really occupies (to test that holes were punched).
#[cfg(test)]
fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).map(|m| m.blocks() * 512).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(c: u8, n: usize) -> Vec<u8> {
        vec![c; n]
    }

    #[test]
    fn append_read_release() {
        let d = tempfile::tempdir().unwrap();
        let p = Packs::with_grace(d.path(), Duration::from_millis(20)).unwrap();
        let (a, b) = (body(b'a', 300_000), body(b'b', 200_000));
        let at_a = p
            .append(&[1; 16], &[&a[..10], &a[10..]], a.len() as u64)
            .unwrap();
        let at_b = p.append(&[2; 16], &[&b], b.len() as u64).unwrap();
        assert_eq!(at_a.pack, at_b.pack, "one stager at a time shares one pack");
        assert!(at_b.off >= HEADER + a.len() as u64);
        assert_eq!(
            p.read(at_a, &[1; 16], a.len() as u64).unwrap(),
            Some(a.clone())
        );
        assert_eq!(
            p.read(at_b, &[2; 16], b.len() as u64).unwrap(),
            Some(b.clone())
        );
        // A wrong name or size is not that body.
        assert_eq!(p.read(at_a, &[2; 16], a.len() as u64).unwrap(), None);
        assert_eq!(p.read(at_b, &[2; 16], 10).unwrap(), None);
        // Past the end: gone, not an error.
        let far = Packed {
            pack: at_a.pack,
            off: 10 << 20,
        };
        assert_eq!(p.read(far, &[1; 16], 5).unwrap(), None);
        let missing = Packed { pack: 999, off: 0 };
        assert_eq!(p.read(missing, &[1; 16], 5).unwrap(), None);

        let path = p.dir().join(file_name(at_a.pack));
        let before = allocated(&path);
        p.release([(at_a, a.len() as u64)]);
        // Still readable during the grace period.
        assert_eq!(
            p.read(at_a, &[1; 16], a.len() as u64).unwrap(),
            Some(a.clone())
        );
        p.drain();
        assert_eq!(p.read(at_a, &[1; 16], a.len() as u64).unwrap(), None);
        assert_eq!(p.read(at_b, &[2; 16], b.len() as u64).unwrap(), Some(b));
        assert!(
            allocated(&path) + 250_000 < before,
            "space given back: {} -> {}",
            before,
            allocated(&path)
        );
    }

    #[test]
    fn direct_and_page_cache_writes_mix() {
        let d = tempfile::tempdir().unwrap();
        let p = Packs::open(d.path()).unwrap();
        let a = body(b'a', 70_001);
        let at_a = p.append(&[1; 16], &[&a], a.len() as u64).unwrap();
        {
            let mut free = lock(&p.free);
            // (tmpfs before Linux 6.6 refuses O_DIRECT: then both writes use the cache.)
            if free[0].direct.is_some() {
                assert_eq!(free[0].end % ALIGN as u64, 0, "padded");
            }
            // As after a filesystem refused an O_DIRECT write.
            free[0].direct = None;
        }
        let b = body(b'b', 70_003);
        let at_b = p
            .append(&[2; 16], &[&b[..3], &b[3..]], b.len() as u64)
            .unwrap();
        assert_eq!(at_b.pack, at_a.pack);
        let c = body(b'c', 5);
        let at_c = p.append(&[3; 16], &[&c], 5).unwrap();
        assert_eq!(at_c.off, at_b.off + HEADER + b.len() as u64, "no padding");
        assert_eq!(p.read(at_a, &[1; 16], a.len() as u64).unwrap(), Some(a));
        assert_eq!(p.read(at_b, &[2; 16], b.len() as u64).unwrap(), Some(b));
        assert_eq!(p.read(at_c, &[3; 16], 5).unwrap(), Some(c));
    }

    #[test]
    fn sweep_removes_cuts_and_frees() {
        let d = tempfile::tempdir().unwrap();
        let p = Packs::open(d.path()).unwrap();
        let n = 100_000u64;
        let b = body(b'k', n as usize);
        let recs: Vec<Packed> = (0..4u8)
            .map(|i| p.append(&[i; 16], &[&b], n).unwrap())
            .collect();
        // A second pack, nobody's.
        let other = p.create().unwrap();
        other.file.write_all_at(b"junk", 0).unwrap();
        drop(p);
        let p = Packs::open(d.path()).unwrap();
        let pack = recs[0].pack;
        let path = p.dir().join(file_name(pack));
        let full = allocated(&path);
        // Bodies 0 and 2 live; 1 was removed before a crash, 3 was never committed.
        let live = [(pack, recs[0].off, n), (pack, recs[2].off, n)];
        assert_eq!(
            p.sweep(&live).unwrap(),
            3,
            "a gap freed, the tail cut, a pack removed"
        );
        assert_eq!(list(p.dir()).unwrap(), [(pack, recs[2].off + HEADER + n)]);
        assert!(
            allocated(&path) + 2 * n - 3 * 4096 < full,
            "body 1's space freed"
        );
        for i in [0, 2] {
            let got = p.read(recs[i], &[i as u8; 16], n).unwrap();
            assert_eq!(got.as_deref(), Some(&b[..]));
        }
        assert_eq!(p.sweep(&live).unwrap(), 0, "nothing left to do");
        assert_eq!(p.sweep(&[]).unwrap(), 1);
        assert!(list(p.dir()).unwrap().is_empty());
    }

    #[test]
    fn concurrent_stagers_use_separate_packs_and_restarts_start_new_ones() {
        let d = tempfile::tempdir().unwrap();
        let p = Arc::new(Packs::open(d.path()).unwrap());
        let threads: Vec<_> = (0..4u8)
            .map(|t| {
                let p = p.clone();
                std::thread::spawn(move || {
                    (0..20)
                        .map(|i| {
                            let b = body(t * 20 + i, 70_000 + usize::from(i));
                            let at = p.append(&[t; 16], &[&b], b.len() as u64).unwrap();
                            (at, t, b)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let all: Vec<_> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        for (at, t, b) in &all {
            assert_eq!(&p.read(*at, &[*t; 16], b.len() as u64).unwrap().unwrap(), b);
        }
        let used = list(p.dir()).unwrap();
        assert!((1..=4).contains(&used.len()), "{used:?}");
        assert!(p.is_current(used[0].0));
        drop(p);
        let again = Packs::open(d.path()).unwrap();
        assert!(!again.is_current(used.last().unwrap().0));
        let at = again.append(&[9; 16], &[b"x"], 1).unwrap();
        assert!(at.pack > used.last().unwrap().0 && at.off == 0);
        // A number taken meanwhile by another process is skipped.
        let third = Packs::open(d.path()).unwrap();
        let at3 = third.append(&[8; 16], &[b"y"], 1).unwrap();
        assert_eq!(at3.pack, at.pack + 1);
        lock(&again.free).clear(); // so `again` needs a new pack, numbered as at3's
        let at4 = again.append(&[7; 16], &[b"z"], 1).unwrap();
        assert!(at4.pack > at3.pack, "{at4:?} after {at3:?}");
        assert_eq!(
            again.read(at4, &[7; 16], 1).unwrap().as_deref(),
            Some(&b"z"[..])
        );
    }
}
