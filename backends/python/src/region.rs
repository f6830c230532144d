//! The shared-memory region of one stub: an anonymous memory file both processes map. The first
//! part is the server's (request inputs, freed when their request is done, in any order); the rest
//! is the stub's (outputs and BLS inputs, which the server copies out as it reads their frame).
//! Pages are only backed once touched, and a ring that empties starts again at its base, so a
//! model with small tensors keeps using the same few pages.

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};

use memmap2::MmapRaw;
use parking_lot::Mutex;

const ALIGN: usize = 64;

pub struct Region {
    file: File,
    map: MmapRaw,
    size: usize,
    input_size: usize,
    inputs: Mutex<Ring>,
}

/// Where a tensor's bytes are in the region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub offset: usize,
    pub size: usize,
}

impl Region {
    /// A region of `size` bytes whose first `input_size` are the server's.
    pub fn create(size: usize, input_size: usize) -> Result<Region, String> {
        let name = c"tritium-python-region";
        // SAFETY: memfd_create takes a NUL-terminated name and flags; it returns a new descriptor or -1.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(format!("cannot create the shared-memory region: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a descriptor we own and nothing else holds.
        let file = unsafe { File::from_raw_fd(fd) };
        let length = u64::try_from(size).map_err(|_| "the region size does not fit a file length".to_string())?;
        file.set_len(length).map_err(|e| format!("cannot size the shared-memory region to {size} bytes: {e}"))?;
        let map = MmapRaw::map_raw(&file).map_err(|e| format!("cannot map the shared-memory region: {e}"))?;
        Ok(Region { file, map, size, input_size, inputs: Mutex::new(Ring::new(0, input_size)) })
    }

    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    pub fn size(&self) -> usize {
        self.size
    }

    pub fn input_size(&self) -> usize {
        self.input_size
    }

    /// Copies `data` into a fresh input block; `None` when the input part has no room for it.
    pub fn write_input(&self, data: &[u8]) -> Option<Block> {
        if data.is_empty() {
            return Some(Block { offset: 0, size: 0 });
        }
        let offset = self.inputs.lock().alloc(data.len())?;
        // SAFETY: [offset, offset + len) lies in the input part (the ring's bounds) and is ours until
        // freed; the stub reads it only after the frame naming it is sent.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.map.as_mut_ptr().add(offset), data.len()) };
        Some(Block { offset, size: data.len() })
    }

    pub fn free_input(&self, block: Block) {
        if block.size > 0 {
            self.inputs.lock().free(block.offset);
        }
    }

    /// Copies a block of the stub's part out; `None` when it does not lie inside that part.
    pub fn read_output(&self, offset: usize, size: usize) -> Option<Vec<u8>> {
        let end = offset.checked_add(size)?;
        if offset < self.input_size || end > self.size {
            return None;
        }
        let mut copy = vec![0u8; size];
        // SAFETY: [offset, end) lies inside the mapping (checked above); the stub does not reuse it
        // before the server acknowledges the frame that named it.
        unsafe { std::ptr::copy_nonoverlapping(self.map.as_ptr().add(offset), copy.as_mut_ptr(), size) };
        Some(copy)
    }

    /// Writes into the stub's part, as a stub would.
    #[cfg(test)]
    pub fn write_output_for_tests(&self, offset: usize, data: &[u8]) {
        assert!(offset >= self.input_size && offset + data.len() <= self.size);
        // SAFETY: the range lies inside the mapping (asserted); tests have no stub writing it.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.map.as_mut_ptr().add(offset), data.len()) };
    }
}

/// Blocks allocated in order around [base, end), freed in any order: space comes back as the
/// oldest blocks are freed.
#[derive(Debug)]
struct Ring {
    base: usize,
    end: usize,
    /// (start, stop, freed), oldest first.
    blocks: VecDeque<(usize, usize, bool)>,
}

impl Ring {
    fn new(base: usize, end: usize) -> Ring {
        Ring { base, end, blocks: VecDeque::new() }
    }

    fn alloc(&mut self, size: usize) -> Option<usize> {
        let size = size.checked_add(ALIGN - 1)? & !(ALIGN - 1);
        let start = match (self.blocks.front(), self.blocks.back()) {
            (Some(&(head, _, _)), Some(&(_, tail, _))) if tail > head => {
                if self.end - tail >= size {
                    tail
                } else if head - self.base >= size {
                    self.base
                } else {
                    return None;
                }
            }
            (Some(&(head, _, _)), Some(&(_, tail, _))) => (head - tail >= size).then_some(tail)?,
            _ => (self.end - self.base >= size).then_some(self.base)?,
        };
        self.blocks.push_back((start, start + size, false));
        Some(start)
    }

    fn free(&mut self, offset: usize) {
        if let Some(block) = self.blocks.iter_mut().find(|(start, _, freed)| *start == offset && !freed) {
            block.2 = true;
        }
        while self.blocks.front().is_some_and(|&(_, _, freed)| freed) {
            self.blocks.pop_front();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_reuses_its_base_once_empty_and_wraps_around_live_blocks() {
        let mut ring = Ring::new(0, 256);
        let a = ring.alloc(100).unwrap();
        let b = ring.alloc(100).unwrap();
        assert_eq!((a, b), (0, 128));
        assert_eq!(ring.alloc(64), None, "full");
        ring.free(a);
        assert_eq!(ring.alloc(64), Some(0), "wraps to the freed front");
        assert_eq!(ring.alloc(64), Some(64));
        assert_eq!(ring.alloc(1), None);
        ring.free(b);
        ring.free(0);
        ring.free(64);
        assert!(ring.blocks.is_empty());
        assert_eq!(ring.alloc(200), Some(0));
    }

    #[test]
    fn a_block_freed_out_of_order_comes_back_with_the_oldest() {
        let mut ring = Ring::new(0, 192);
        let a = ring.alloc(64).unwrap();
        let b = ring.alloc(64).unwrap();
        let _c = ring.alloc(64).unwrap();
        ring.free(b);
        assert_eq!(ring.alloc(64), None, "b waits for a");
        ring.free(a);
        assert_eq!(ring.alloc(128), Some(0));
    }

    #[test]
    fn the_region_copies_inputs_in_and_outputs_out_within_their_parts() {
        let region = Region::create(4096, 1024).unwrap();
        let block = region.write_input(b"hello").unwrap();
        assert_eq!(block, Block { offset: 0, size: 5 });
        assert_eq!(region.read_output(0, 5), None, "the input part is not the stub's");
        assert_eq!(region.read_output(4000, 200), None, "past the end");
        assert_eq!(region.read_output(1024, 3), Some(vec![0, 0, 0]));
        assert!(region.write_input(&[0u8; 2000]).is_none(), "larger than the input part");
        region.free_input(block);
    }
}
