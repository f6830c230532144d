//! One registered region: the `shm_open`ed segment mapped read+write and shared, and the
//! bounds-checked reads and writes the registry does on it.

use std::ffi::CString;
use std::fs::File;
use std::ops::Range;
use std::os::fd::FromRawFd;
use std::sync::Arc;

use bytes::Bytes;
use memmap2::{MmapOptions, MmapRaw};

use super::fault_guard::Watch;
use super::{RegionStatus, ShmError};

/// A mapped region. The mapping covers `[0, offset + byte_size)` of the segment (mmap offsets must be
/// page aligned, client offsets need not be); only `[offset, offset + byte_size)` is ever exposed.
/// It is unmapped when the last `Arc<Region>` goes, registry entry and [`Bytes`] views alike.
pub(crate) struct Region {
    name: String,
    key: String,
    offset: u64,
    byte_size: u64,
    map: MmapRaw,
    /// The fault guard's watch on `map`; `Drop for Region` ends it before `map` unmaps.
    watch: Option<Watch>,
    /// The segment, kept open to check its size (`fstat`) before every use.
    file: File,
    /// `offset` and `byte_size` as `usize`; both fit since the mapping of their sum succeeded.
    start: usize,
    len: usize,
}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region")
            .field("name", &self.name)
            .field("key", &self.key)
            .field("offset", &self.offset)
            .field("byte_size", &self.byte_size)
            .finish_non_exhaustive()
    }
}

impl Region {
    /// Opens `key` with `shm_open(O_RDWR)`, checks the region fits in the segment and maps it.
    pub(crate) fn open(name: &str, key: &str, offset: u64, byte_size: u64) -> Result<Region, ShmError> {
        let file = shm_open(key)?;
        let segment_size = file.metadata().map_err(|_| ShmError::Stat { key: key.to_owned() })?.len();
        let exceeds = || ShmError::ExceedsSegment { name: name.to_owned(), key: key.to_owned(), offset, byte_size, segment_size };
        let end = offset.checked_add(byte_size).filter(|&end| end <= segment_size).ok_or_else(exceeds)?;
        let map_len = usize::try_from(end).map_err(|_| exceeds())?;
        let map = MmapOptions::new()
            .len(map_len)
            .map_raw(&file)
            .map_err(|e| ShmError::Map { name: name.to_owned(), reason: e.to_string() })?;
        let watch = Watch::new(map.as_ptr(), map.len());
        if watch.is_none() {
            tracing::warn!(name, "shared memory region mapped without the SIGBUS guard");
        }
        Ok(Region {
            name: name.to_owned(),
            key: key.to_owned(),
            offset,
            byte_size,
            map,
            watch,
            file,
            // Both are <= map_len, a usize.
            start: offset as usize,
            len: byte_size as usize,
        })
    }

    pub(crate) fn status(&self) -> RegionStatus {
        RegionStatus { name: self.name.clone(), key: self.key.clone(), offset: self.offset, byte_size: self.byte_size }
    }

    /// `[offset, offset + byte_size)` relative to the region start, or `OutOfBounds`.
    fn range(&self, offset: u64, byte_size: u64) -> Result<Range<usize>, ShmError> {
        match offset.checked_add(byte_size) {
            // end <= self.byte_size == self.len, so both casts are lossless.
            Some(end) if end <= self.byte_size => Ok(offset as usize..end as usize),
            _ => Err(ShmError::OutOfBounds { region: self.name.clone(), offset, byte_size, region_size: self.byte_size }),
        }
    }

    /// Before a use: refuses a region whose segment the client shrank below the mapping (touching
    /// it would fault) or whose mapping a fault already replaced with zero pages.
    pub(crate) fn check_intact(&self) -> Result<(), ShmError> {
        self.check_unpoisoned()?;
        let size = self.file.metadata().map_err(|_| ShmError::Stat { key: self.key.clone() })?.len();
        if size < self.offset.saturating_add(self.byte_size) {
            return Err(self.truncated());
        }
        Ok(())
    }

    /// After a use: only a fault during it can have spoiled it, and the fault guard records that,
    /// so no second `fstat` is needed.
    pub(crate) fn check_unpoisoned(&self) -> Result<(), ShmError> {
        match self.watch.as_ref().is_some_and(Watch::poisoned) {
            true => Err(self.truncated()),
            false => Ok(()),
        }
    }

    fn truncated(&self) -> ShmError {
        ShmError::Truncated { name: self.name.clone(), key: self.key.clone() }
    }

    /// Zero-copy view of `[offset, offset + byte_size)`; it keeps the mapping alive.
    pub(crate) fn read(self: &Arc<Self>, offset: u64, byte_size: u64) -> Result<Bytes, ShmError> {
        let range = self.range(offset, byte_size)?;
        self.check_intact()?;
        Ok(Bytes::from_owner(View(Arc::clone(self))).slice(range))
    }

    /// Copies `chunks` back to back to `[offset, ..)`, within the `byte_size` the client gave.
    pub(crate) fn write(&self, offset: u64, byte_size: u64, chunks: &[&[u8]]) -> Result<(), ShmError> {
        let range = self.range(offset, byte_size)?;
        let needed = chunks.iter().fold(0u64, |sum, chunk| sum.saturating_add(chunk.len() as u64));
        if needed > byte_size {
            return Err(ShmError::OutputTooSmall { region: self.name.clone(), needed, available: byte_size });
        }
        self.check_intact()?;
        let mut dst = range.start;
        for chunk in chunks {
            // SAFETY: dst + chunk.len() <= range.end <= self.len (checked above), so the destination is
            // inside the live mapping, which is PROT_WRITE. Writing through a raw pointer from &self is
            // the shared-memory contract Triton also has: the client owns its region and must not use
            // it while the request is in flight, and the server writes each output range once. `copy`
            // (memmove), not `copy_nonoverlapping`, because a chunk may itself be a view of this
            // region (an identity model echoing an input that lives in shared memory).
            unsafe { std::ptr::copy(chunk.as_ptr(), self.base().add(dst), chunk.len()) };
            dst += chunk.len();
        }
        // A shrink during the copy was absorbed by the fault guard; the output did not arrive.
        self.check_unpoisoned()
    }

    /// Start of the exposed part of the mapping.
    fn base(&self) -> *mut u8 {
        // SAFETY: start <= map.len(), so the result stays inside (or one past) the mapping.
        unsafe { self.map.as_mut_ptr().add(self.start) }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // Stop watching before `map` unmaps, so the fault handler never sees a range that is gone.
        self.watch.take();
    }
}

/// The owner behind every [`Bytes`] view: holding it keeps the region mapped.
struct View(Arc<Region>);

impl AsRef<[u8]> for View {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: base() .. base() + len is inside the mapping, which lives as long as self.0. The
        // bytes may be changed by the client process; like Triton we rely on the client not touching
        // a region while a request that uses it is in flight, and u8 has no invalid values.
        unsafe { std::slice::from_raw_parts(self.0.base(), self.0.len) }
    }
}

/// `shm_open(key, O_RDWR)` as a `File`, so the fd is closed on every path.
fn shm_open(key: &str) -> Result<File, ShmError> {
    let open_error = || ShmError::Open { key: key.to_owned() };
    let c_key = CString::new(key).map_err(|_| open_error())?;
    // SAFETY: c_key is a valid NUL-terminated string that outlives the call; without O_CREAT the
    // mode is ignored.
    let fd = unsafe { libc::shm_open(c_key.as_ptr(), libc::O_RDWR, 0) };
    if fd < 0 {
        tracing::debug!(key, error = %std::io::Error::last_os_error(), "shm_open failed");
        return Err(open_error());
    }
    // SAFETY: fd was just returned by shm_open and nothing else owns it.
    Ok(unsafe { File::from_raw_fd(fd) })
}
