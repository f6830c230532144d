//! POSIX system shared memory, as Triton's `SystemSharedMemory*` RPCs and the
//! `shared_memory_region` tensor parameters use it.
//!
//! A client creates a segment (`shm_open` + `ftruncate`), registers `[offset, offset + byte_size)` of
//! it under a name, and then points input and output tensors at `(region, offset, byte_size)` triples
//! relative to that region. The registry maps each region once at registration; inputs are read as
//! zero-copy [`Bytes`] views of the mapping and outputs are copied straight into it.
//!
//! Errors carry Triton 2.51's codes and texts (see [`ShmError`]). Every bound is checked with
//! overflow-safe arithmetic, so client values near `u64::MAX` give an error, never a panic.
//! A region unregistered while a request still holds a view of it stays mapped until the view drops.
//!
//! ```no_run
//! use tritium_server::shm::SharedMemoryRegistry;
//!
//! let registry = SharedMemoryRegistry::new();
//! // The client created "/input_data" with shm_open and made it at least 64 bytes long.
//! registry.register("input", "/input_data", 0, 64)?;
//! let tensor = registry.read("input", 16, 16)?; // bytes 16..32 of the region, no copy
//! registry.write("input", 32, 32, &[&tensor[..]])?; // Triton writes outputs back the same way
//! # Ok::<(), tritium_server::shm::ShmError>(())
//! ```
//!
//! The server must share the client's host and IPC namespace to open its keys. As in Triton, the
//! client owns the concurrency of its regions: it must not change or shrink a segment while a
//! request that uses it is in flight (shrinking it makes the server's accesses fault).

mod error;
mod region;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};

use bytes::Bytes;

pub use error::{RESERVED_KEY_PREFIX, ShmError};
use region::Region;

/// What `SystemSharedMemoryStatus` reports for one region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionStatus {
    pub name: String,
    pub key: String,
    pub offset: u64,
    pub byte_size: u64,
}

/// Registered system shared-memory regions by name. Cheap to share behind an `Arc`; lookups take a
/// read lock only long enough to clone the region's `Arc`.
#[derive(Debug, Default)]
pub struct SharedMemoryRegistry {
    regions: RwLock<BTreeMap<String, Arc<Region>>>,
}

impl SharedMemoryRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// `shm_open(key, O_RDWR)` + mmap of `[offset, offset + byte_size)` of the segment (MAP_SHARED,
    /// read+write), registered as `name`.
    pub fn register(&self, name: &str, key: &str, offset: u64, byte_size: u64) -> Result<(), ShmError> {
        if key.trim_start_matches('/').starts_with(RESERVED_KEY_PREFIX) {
            return Err(ShmError::ReservedKey { name: name.to_owned(), key: key.to_owned() });
        }
        let already = || ShmError::AlreadyExists { name: name.to_owned() };
        if self.lock_read().contains_key(name) {
            return Err(already());
        }
        // Open and map outside the lock; a racing register of the same name loses below.
        let region = Region::open(name, key, offset, byte_size)?;
        match self.lock_write().entry(name.to_owned()) {
            std::collections::btree_map::Entry::Occupied(_) => Err(already()),
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(Arc::new(region));
                tracing::debug!(name, key, offset, byte_size, "registered system shared memory region");
                Ok(())
            }
        }
    }

    /// Unregisters `name`; `""` unregisters all. An unknown name is OK, as in Triton. Views already
    /// handed out keep their mapping until they drop.
    pub fn unregister(&self, name: &str) -> Result<(), ShmError> {
        // Drop the regions after releasing the lock: the last drop runs munmap.
        let removed: Vec<Arc<Region>> = {
            let mut regions = self.lock_write();
            if name.is_empty() {
                std::mem::take(&mut *regions).into_values().collect()
            } else {
                regions.remove(name).into_iter().collect()
            }
        };
        tracing::debug!(name, count = removed.len(), "unregistered system shared memory regions");
        Ok(())
    }

    /// The status of `name`, or of every region (sorted by name) for `""`.
    pub fn status(&self, name: &str) -> Result<Vec<RegionStatus>, ShmError> {
        let regions = self.lock_read();
        if name.is_empty() {
            return Ok(regions.values().map(|region| region.status()).collect());
        }
        regions.get(name).map(|region| vec![region.status()]).ok_or_else(|| not_found(name))
    }

    /// Zero-copy view of `[offset, offset + byte_size)` of region `region`; the view keeps the
    /// mapping alive even if the region is unregistered meanwhile.
    pub fn read(&self, region: &str, offset: u64, byte_size: u64) -> Result<Bytes, ShmError> {
        self.get(region)?.read(offset, byte_size)
    }

    /// Copies `chunks` back to back into region `region` at `offset`. Fails with `OutOfBounds` if
    /// `[offset, offset + byte_size)` is outside the region and with `OutputTooSmall` if the chunks
    /// need more than `byte_size`, the space the client gave for this output.
    pub fn write(&self, region: &str, offset: u64, byte_size: u64, chunks: &[&[u8]]) -> Result<(), ShmError> {
        self.get(region)?.write(offset, byte_size, chunks)
    }

    /// The number of registered regions.
    pub fn len(&self) -> usize {
        self.lock_read().len()
    }

    /// Whether no region is registered.
    pub fn is_empty(&self) -> bool {
        self.lock_read().is_empty()
    }

    fn get(&self, name: &str) -> Result<Arc<Region>, ShmError> {
        self.lock_read().get(name).cloned().ok_or_else(|| not_found(name))
    }

    // A panic while holding the lock cannot leave the map half-updated (every change is one
    // insert, remove or take), so a poisoned lock is still safe to use.
    fn lock_read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Region>>> {
        self.regions.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<Region>>> {
        self.regions.write().unwrap_or_else(PoisonError::into_inner)
    }
}

fn not_found(name: &str) -> ShmError {
    ShmError::NotFound { name: name.to_owned() }
}
