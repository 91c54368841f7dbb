//! Reading a live stats page (`<dir>/ringshim.<pid>`) into a [`Snapshot`].
//!
//! The page is written while we read it: every thread of the shimmed process stores its
//! own counters with relaxed stores. We therefore map the file and load each 8-byte word
//! atomically (a `read()` copies with no per-word guarantee, and a torn counter would show
//! up as an absurd rate in `--watch`), then decode the copy with the layout constants of
//! `ringshim_common::stats`.

use ringshim_common::stats::{
    self, Header, Page, Slot, COUNTER_CAPACITY, COUNTER_NAMES, MAGIC, SLOTS, VERSION,
};
use std::mem::{offset_of, size_of};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// One thread's slot.
#[derive(Clone, Debug, PartialEq)]
pub struct Thread {
    pub tid: u32,
    pub ring_fd: i32,
    pub counters: Vec<u64>,
}

/// What a page said at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    pub pid: u32,
    pub backend: String,
    pub backend_active: bool,
    /// One name per counter the page carries (`counter_N` for any this build does not know).
    pub names: Vec<String>,
    /// Sum over the slots in use.
    pub totals: Vec<u64>,
    /// Slots with a non-zero tid.
    pub threads: Vec<Thread>,
}

#[derive(Debug)]
pub enum ReadError {
    Io(std::io::Error),
    /// The file exists but is not a page this build can read.
    Format(String),
}

impl From<std::io::Error> for ReadError {
    fn from(e: std::io::Error) -> Self {
        ReadError::Io(e)
    }
}

pub fn path(dir: &Path, pid: u32) -> std::path::PathBuf {
    dir.join(stats::file_name(pid))
}

/// Maps and decodes the page at `path`.
pub fn read(path: &Path) -> Result<Snapshot, ReadError> {
    let file = std::fs::File::open(path)?;
    let len = usize::try_from(file.metadata()?.len()).unwrap_or(usize::MAX);
    // Only the layout this build knows is mapped; a longer file is fine, a shorter one is
    // reported by `decode` without touching pages past its end (which would SIGBUS).
    let len = len.min(PAGE_LEN_LIMIT) & !7;
    if len == 0 {
        return decode(&[]).map_err(ReadError::Format);
    }
    // SAFETY: a fresh read-only shared mapping of `len` bytes of an open file; the kernel
    // picks the address, so it aliases nothing of ours.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(ReadError::Io(std::io::Error::last_os_error()));
    }
    // SAFETY: the mapping is page-aligned (so 8-aligned) and `len` is a multiple of 8 no
    // larger than the mapping; AtomicU64 has the size and alignment of u64, and atomic
    // loads are the right way to read words another process stores concurrently.
    let words = unsafe { std::slice::from_raw_parts(addr.cast::<AtomicU64>(), len / 8) };
    let bytes: Vec<u8> = words
        .iter()
        .flat_map(|w| w.load(Ordering::Relaxed).to_ne_bytes())
        .collect();
    // SAFETY: `addr`/`len` are exactly the mapping made above, and `words` is not used
    // after this point.
    unsafe { libc::munmap(addr, len) };
    decode(&bytes).map_err(ReadError::Format)
}

/// Far more than any version-1 page needs; bounds what a bogus file can make us copy.
const PAGE_LEN_LIMIT: usize = 4 * size_of::<Page>();

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// Decodes a page image laid out as `ringshim_common::stats::Page`.
pub fn decode(bytes: &[u8]) -> Result<Snapshot, String> {
    if bytes.len() < size_of::<Header>() {
        return Err(format!(
            "truncated stats page ({} bytes; the header alone is {})",
            bytes.len(),
            size_of::<Header>()
        ));
    }
    if u64_at(bytes, offset_of!(Header, magic)) != MAGIC {
        return Err("not a ringshim stats page (bad magic)".to_string());
    }
    let version = u32_at(bytes, offset_of!(Header, version));
    if version != VERSION {
        return Err(format!(
            "stats page version {version}; this ringshim reads version {VERSION}"
        ));
    }
    let slots = u32_at(bytes, offset_of!(Header, slots)) as usize;
    let counters = u32_at(bytes, offset_of!(Header, counters)) as usize;
    if slots > SLOTS || counters > COUNTER_CAPACITY {
        return Err(format!(
            "stats page claims {slots} slots of {counters} counters; version {VERSION} has at most {SLOTS} of {COUNTER_CAPACITY}"
        ));
    }
    let first_slot = offset_of!(Page, slots);
    let needed = first_slot + slots * size_of::<Slot>();
    if bytes.len() < needed {
        return Err(format!(
            "truncated stats page ({} bytes; {slots} slots need {needed})",
            bytes.len()
        ));
    }

    let at = offset_of!(Header, backend);
    let raw = &bytes[at..at + size_of::<[u8; 16]>()];
    let name_len = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    let backend = String::from_utf8_lossy(&raw[..name_len]).into_owned();

    let mut totals = vec![0u64; counters];
    let mut threads = Vec::new();
    for i in 0..slots {
        let base = first_slot + i * size_of::<Slot>();
        let tid = u32_at(bytes, base + offset_of!(Slot, tid));
        if tid == 0 {
            continue;
        }
        let values: Vec<u64> = (0..counters)
            .map(|c| u64_at(bytes, base + offset_of!(Slot, counters) + 8 * c))
            .collect();
        for (total, v) in totals.iter_mut().zip(&values) {
            *total = total.wrapping_add(*v);
        }
        threads.push(Thread {
            tid,
            ring_fd: u32_at(bytes, base + offset_of!(Slot, ring_fd)) as i32,
            counters: values,
        });
    }

    Ok(Snapshot {
        pid: u32_at(bytes, offset_of!(Header, pid)),
        backend,
        backend_active: u32_at(bytes, offset_of!(Header, backend_active)) != 0,
        names: (0..counters)
            .map(|c| {
                COUNTER_NAMES
                    .get(c)
                    .map_or_else(|| format!("counter_{c}"), |n| n.to_string())
            })
            .collect(),
        totals,
        threads,
    })
}

/// Builds page images for unit tests from the layout constants (the integration tests
/// carry their own builder: they cannot see this binary's modules).
#[cfg(test)]
pub mod fixture {
    use super::*;

    /// A slot in use: tid, ring fd, and (counter index, value) pairs.
    pub type SlotSpec<'a> = (u32, i32, &'a [(usize, u64)]);

    pub fn page(pid: u32, backend: &str, active: bool, slots: &[SlotSpec]) -> Vec<u8> {
        let mut bytes = vec![0u8; size_of::<Page>()];
        let put =
            |bytes: &mut Vec<u8>, at: usize, v: &[u8]| bytes[at..at + v.len()].copy_from_slice(v);
        put(&mut bytes, offset_of!(Header, magic), &MAGIC.to_ne_bytes());
        put(
            &mut bytes,
            offset_of!(Header, version),
            &VERSION.to_ne_bytes(),
        );
        put(&mut bytes, offset_of!(Header, pid), &pid.to_ne_bytes());
        put(
            &mut bytes,
            offset_of!(Header, slots),
            &(SLOTS as u32).to_ne_bytes(),
        );
        put(
            &mut bytes,
            offset_of!(Header, counters),
            &(stats::COUNTERS as u32).to_ne_bytes(),
        );
        put(&mut bytes, offset_of!(Header, backend), backend.as_bytes());
        put(
            &mut bytes,
            offset_of!(Header, backend_active),
            &u32::from(active).to_ne_bytes(),
        );
        for (i, (tid, ring_fd, counters)) in slots.iter().enumerate() {
            let base = offset_of!(Page, slots) + i * size_of::<Slot>();
            put(&mut bytes, base + offset_of!(Slot, tid), &tid.to_ne_bytes());
            put(
                &mut bytes,
                base + offset_of!(Slot, ring_fd),
                &ring_fd.to_ne_bytes(),
            );
            for (c, v) in counters.iter() {
                put(
                    &mut bytes,
                    base + offset_of!(Slot, counters) + 8 * c,
                    &v.to_ne_bytes(),
                );
            }
        }
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::fixture::page;
    use super::*;
    use ringshim_common::stats::Counter;

    #[test]
    fn totals_sum_only_slots_in_use() {
        let sent = Counter::BytesSent as usize;
        let mut bytes = page(
            42,
            "uring",
            true,
            &[(100, 5, &[(sent, 10), (0, 1)]), (101, -1, &[(sent, 32)])],
        );
        // A free slot with leftover counts (a thread that exited) must not be summed.
        let free =
            offset_of!(Page, slots) + 5 * size_of::<Slot>() + offset_of!(Slot, counters) + 8 * sent;
        bytes[free..free + 8].copy_from_slice(&1000u64.to_ne_bytes());
        let snap = decode(&bytes).unwrap();
        assert_eq!(snap.pid, 42);
        assert_eq!(snap.backend, "uring");
        assert!(snap.backend_active);
        assert_eq!(snap.totals[sent], 42);
        assert_eq!(snap.totals[0], 1);
        assert_eq!(snap.names[sent], "bytes_sent");
        assert_eq!(snap.threads.len(), 2);
        assert_eq!(
            snap.threads[1],
            Thread {
                tid: 101,
                ring_fd: -1,
                counters: snap.threads[1].counters.clone()
            }
        );
        assert_eq!(snap.threads[1].counters[sent], 32);
    }

    #[test]
    fn rejects_bad_magic_version_and_truncation() {
        let good = page(1, "kernel", false, &[]);
        assert!(decode(&good).is_ok());
        assert!(decode(&good[..10]).unwrap_err().contains("truncated"));
        assert!(decode(&good[..200]).unwrap_err().contains("truncated"));
        let mut bad = good.clone();
        bad[0] ^= 0xff;
        assert!(decode(&bad).unwrap_err().contains("magic"));
        let mut newer = good.clone();
        let at = offset_of!(Header, version);
        newer[at..at + 4].copy_from_slice(&(VERSION + 1).to_ne_bytes());
        assert!(decode(&newer).unwrap_err().contains("version"));
    }

    #[test]
    fn reads_a_page_file_through_the_mapping() {
        let path = std::env::temp_dir().join(format!("ringshim-page-test-{}", std::process::id()));
        std::fs::write(&path, page(7, "ustack", true, &[(7, 3, &[(2, 9)])])).unwrap();
        let snap = read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            (snap.pid, snap.backend.as_str(), snap.totals[2]),
            (7, "ustack", 9)
        );

        std::fs::write(&path, b"").unwrap();
        assert!(matches!(read(&path), Err(ReadError::Format(_))));
        std::fs::remove_file(&path).unwrap();
        assert!(
            matches!(read(&path), Err(ReadError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound)
        );
    }
}
