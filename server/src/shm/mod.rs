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
//! client owns the concurrency of its regions: it must not change a segment while a request that
//! uses it is in flight. A client that shrinks its segment cannot crash the server: each use checks
//! the segment's size first, and a shrink in the middle of a use is absorbed by the fault guard
//! (see `fault_guard`), which fails the request and refuses the region from then on.
//!
//! Mapping a client-named key is a door into every `/dev/shm` object the server's user can open,
//! so a server built from the command line has it off unless `--allow-shared-memory` or
//! `--shm-key-prefix` turns it on ([`ShmPolicy`]); the number of regions is bounded too.

mod error;
mod fault_guard;
mod region;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::RwLock;

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

/// Who may register which keys, and how many regions at most.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShmPolicy {
    /// Whether `SystemSharedMemoryRegister` is served at all.
    pub enabled: bool,
    /// When set, only keys starting with it (after the leading `/`) may be registered.
    pub key_prefix: Option<String>,
    /// Regions registered at once, at most (each holds a mapping and a file descriptor).
    pub max_regions: usize,
}

/// The default bound on registered regions.
pub const DEFAULT_MAX_REGIONS: usize = 1024;
/// The largest `max_regions` the fault guard can watch.
pub const MAX_REGIONS_LIMIT: usize = fault_guard::MAX_WATCHED;

impl ShmPolicy {
    /// Shared memory off: what `tritium serve` does unless told otherwise.
    pub fn disabled() -> ShmPolicy {
        ShmPolicy { enabled: false, key_prefix: None, max_regions: DEFAULT_MAX_REGIONS }
    }

    /// Any key the server's user can open, up to the default number of regions.
    pub fn any_key() -> ShmPolicy {
        ShmPolicy { enabled: true, key_prefix: None, max_regions: DEFAULT_MAX_REGIONS }
    }

    fn admit(&self, key: &str) -> Result<(), ShmError> {
        if !self.enabled {
            return Err(ShmError::NotAllowed {
                reason: "system shared memory is disabled on this server (start it with --allow-shared-memory \
                         or --shm-key-prefix)"
                    .to_owned(),
            });
        }
        match &self.key_prefix {
            Some(prefix) if !key.trim_start_matches('/').starts_with(prefix.trim_start_matches('/')) => {
                Err(ShmError::NotAllowed {
                    reason: format!("shared memory key '{key}' is not allowed: keys must start with '{prefix}'"),
                })
            }
            _ => Ok(()),
        }
    }
}

impl Default for ShmPolicy {
    fn default() -> ShmPolicy {
        ShmPolicy::disabled()
    }
}

/// Registered system shared-memory regions by name. Cheap to share behind an `Arc`; lookups take a
/// read lock only long enough to clone the region's `Arc`.
#[derive(Debug)]
pub struct SharedMemoryRegistry {
    regions: RwLock<BTreeMap<String, Arc<Region>>>,
    policy: ShmPolicy,
}

impl Default for SharedMemoryRegistry {
    fn default() -> Self {
        SharedMemoryRegistry::new()
    }
}

/// A region an input was read from; [`RegionGuard::check`] tells whether a fault spoiled it while
/// the request used it (its size was checked when the view was taken).
#[derive(Debug, Clone)]
pub struct RegionGuard(Arc<Region>);

impl RegionGuard {
    pub fn check(&self) -> Result<(), ShmError> {
        self.0.check_unpoisoned()
    }
}

impl SharedMemoryRegistry {
    /// An empty registry that accepts any key (for embedding and tests; the server's own comes
    /// from [`SharedMemoryRegistry::with_policy`]).
    pub fn new() -> Self {
        SharedMemoryRegistry::with_policy(ShmPolicy::any_key())
    }

    pub fn with_policy(policy: ShmPolicy) -> Self {
        let policy = ShmPolicy { max_regions: policy.max_regions.min(MAX_REGIONS_LIMIT), ..policy };
        SharedMemoryRegistry { regions: RwLock::default(), policy }
    }

    /// `shm_open(key, O_RDWR)` + mmap of `[offset, offset + byte_size)` of the segment (MAP_SHARED,
    /// read+write), registered as `name`.
    pub fn register(&self, name: &str, key: &str, offset: u64, byte_size: u64) -> Result<(), ShmError> {
        self.policy.admit(key)?;
        if key.trim_start_matches('/').starts_with(RESERVED_KEY_PREFIX) {
            return Err(ShmError::ReservedKey { name: name.to_owned(), key: key.to_owned() });
        }
        let already = || ShmError::AlreadyExists { name: name.to_owned() };
        let too_many = || ShmError::TooManyRegions { name: name.to_owned(), limit: self.policy.max_regions };
        {
            let regions = self.regions.read();
            if regions.contains_key(name) {
                return Err(already());
            }
            if regions.len() >= self.policy.max_regions {
                return Err(too_many());
            }
        }
        // Open and map outside the lock; a racing register of the same name loses below.
        let region = Region::open(name, key, offset, byte_size)?;
        let mut regions = self.regions.write();
        if regions.len() >= self.policy.max_regions {
            return Err(too_many());
        }
        match regions.entry(name.to_owned()) {
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
            let mut regions = self.regions.write();
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
        let regions = self.regions.read();
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

    /// Like [`SharedMemoryRegistry::read`], with a guard to check before answering that the region
    /// was not truncated while the request used the view.
    pub fn read_guarded(&self, region: &str, offset: u64, byte_size: u64) -> Result<(Bytes, RegionGuard), ShmError> {
        let region = self.get(region)?;
        let view = region.read(offset, byte_size)?;
        Ok((view, RegionGuard(region)))
    }

    /// Copies `chunks` back to back into region `region` at `offset`. Fails with `OutOfBounds` if
    /// `[offset, offset + byte_size)` is outside the region and with `OutputTooSmall` if the chunks
    /// need more than `byte_size`, the space the client gave for this output.
    pub fn write(&self, region: &str, offset: u64, byte_size: u64, chunks: &[&[u8]]) -> Result<(), ShmError> {
        self.get(region)?.write(offset, byte_size, chunks)
    }

    /// The number of registered regions.
    pub fn len(&self) -> usize {
        self.regions.read().len()
    }

    /// Whether no region is registered.
    pub fn is_empty(&self) -> bool {
        self.regions.read().is_empty()
    }

    fn get(&self, name: &str) -> Result<Arc<Region>, ShmError> {
        self.regions.read().get(name).cloned().ok_or_else(|| not_found(name))
    }
}

fn not_found(name: &str) -> ShmError {
    ShmError::NotFound { name: name.to_owned() }
}
