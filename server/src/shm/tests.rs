use std::ffi::CString;
use std::sync::atomic::{AtomicUsize, Ordering};

use tritium_proto::ErrorCode;

use super::*;

/// A real POSIX segment, unlinked on drop. Names carry the pid and a counter so parallel tests
/// and concurrent test runs never collide.
struct Segment {
    key: String,
}

impl Segment {
    fn new(len: usize) -> Segment {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let key = format!("/tritium_shm_test_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let c_key = CString::new(key.clone()).expect("no NUL in key");
        // SAFETY: c_key is NUL-terminated and outlives the call.
        let fd = unsafe { libc::shm_open(c_key.as_ptr(), libc::O_CREAT | libc::O_EXCL | libc::O_RDWR, 0o600) };
        assert!(fd >= 0, "shm_open {key}: {}", std::io::Error::last_os_error());
        // SAFETY: fd is the descriptor just opened; it is closed right after.
        let truncated = unsafe { libc::ftruncate(fd, len as libc::off_t) };
        // SAFETY: as above.
        unsafe { libc::close(fd) };
        assert_eq!(truncated, 0, "ftruncate {key}");
        Segment { key }
    }

    /// Fills the segment with 0, 1, 2, ... (mod 256) through an independent mapping.
    fn fill_with_counter(&self) {
        let file = open_segment(&self.key);
        let mut map = unsafe_map(&file);
        for (i, byte) in map.iter_mut().enumerate() {
            *byte = i as u8;
        }
    }

    fn contents(&self) -> Vec<u8> {
        let file = open_segment(&self.key);
        unsafe_map(&file).to_vec()
    }
}

fn open_segment(key: &str) -> std::fs::File {
    use std::os::fd::FromRawFd;
    let c_key = CString::new(key).expect("no NUL in key");
    // SAFETY: c_key is NUL-terminated and outlives the call.
    let fd = unsafe { libc::shm_open(c_key.as_ptr(), libc::O_RDWR, 0) };
    assert!(fd >= 0, "shm_open {key}: {}", std::io::Error::last_os_error());
    // SAFETY: fd was just opened and nothing else owns it.
    unsafe { std::fs::File::from_raw_fd(fd) }
}

fn unsafe_map(file: &std::fs::File) -> memmap2::MmapMut {
    // SAFETY: test segments are private to this test; nothing truncates them while mapped.
    unsafe { memmap2::MmapMut::map_mut(file) }.expect("map test segment")
}

impl Drop for Segment {
    fn drop(&mut self) {
        let c_key = CString::new(self.key.clone()).expect("no NUL in key");
        // SAFETY: c_key is NUL-terminated and outlives the call.
        unsafe { libc::shm_unlink(c_key.as_ptr()) };
    }
}

#[test]
fn register_read_write_status_unregister() {
    let seg = Segment::new(64);
    seg.fill_with_counter();
    let registry = SharedMemoryRegistry::new();
    registry.register("in", &seg.key, 8, 32).expect("register in");
    registry.register("out", &seg.key, 40, 24).expect("register out");
    assert_eq!(registry.len(), 2);

    // Offsets are relative to the region: region "in" starts at byte 8 of the segment.
    let view = registry.read("in", 4, 8).expect("read");
    assert_eq!(&view[..], &[12, 13, 14, 15, 16, 17, 18, 19]);
    assert!(registry.read("in", 32, 0).expect("empty read at the end").is_empty());

    registry.write("out", 2, 6, &[&[0xAA, 0xBB], &[], &[0xCC, 0xDD, 0xEE]]).expect("write");
    let contents = seg.contents();
    assert_eq!(&contents[40..48], &[40, 41, 0xAA, 0xBB, 0xCC, 0xDD, 0xEE, 47]);
    // The registry's own mapping sees the write too.
    assert_eq!(&registry.read("out", 0, 8).expect("read back")[..], &contents[40..48]);

    let all = registry.status("").expect("status all");
    let names: Vec<_> = all.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["in", "out"]);
    assert_eq!(
        registry.status("out").expect("status out"),
        vec![RegionStatus { name: "out".into(), key: seg.key.clone(), offset: 40, byte_size: 24 }]
    );

    registry.unregister("in").expect("unregister one");
    assert_eq!(registry.len(), 1);
    registry.unregister("never-registered").expect("unknown name is OK");
    registry.unregister("").expect("unregister all");
    assert!(registry.is_empty());
    assert!(registry.status("").expect("status of none").is_empty());
}

#[test]
fn identity_write_from_a_view_of_the_same_region() {
    let seg = Segment::new(16);
    seg.fill_with_counter();
    let registry = SharedMemoryRegistry::new();
    registry.register("r", &seg.key, 0, 16).expect("register");
    let input = registry.read("r", 0, 8).expect("read");
    // Overlapping source and destination: must behave like memmove.
    registry.write("r", 4, 8, &[&input[..]]).expect("write");
    assert_eq!(&seg.contents()[..12], &[0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6, 7]);
}

#[test]
fn duplicate_name_is_already_exists() {
    let seg = Segment::new(16);
    let registry = SharedMemoryRegistry::new();
    registry.register("r", &seg.key, 0, 16).expect("register");
    let err = registry.register("r", &seg.key, 0, 8).expect_err("duplicate");
    assert_eq!(err.code(), ErrorCode::AlreadyExists);
    assert_eq!(err.to_string(), "shared memory region 'r' already in manager");
    assert_eq!(registry.status("r").expect("status")[0].byte_size, 16, "first registration kept");
}

#[test]
fn bad_key_is_internal() {
    let registry = SharedMemoryRegistry::new();
    for key in ["/tritium_shm_test_no_such_segment", "", "bad\0key"] {
        let err = registry.register("r", key, 0, 8).expect_err("bad key");
        assert_eq!(err.code(), ErrorCode::Internal);
        assert_eq!(err.to_string(), format!("Unable to open shared memory region: '{key}'"));
    }
    assert!(registry.is_empty());
}

#[test]
fn reserved_key_prefix_is_invalid_arg() {
    let registry = SharedMemoryRegistry::new();
    let err = registry.register("r", "/triton_python_backend_shm_region_1", 0, 8).expect_err("reserved");
    assert_eq!(err.code(), ErrorCode::InvalidArg);
    assert!(err.to_string().contains("reserved prefix 'triton_python_backend_shm_region_'"), "{err}");
}

#[test]
fn region_larger_than_segment_is_invalid_args() {
    let seg = Segment::new(64);
    let registry = SharedMemoryRegistry::new();
    registry.register("exact", &seg.key, 32, 32).expect("region ending at the segment end");
    for (offset, byte_size) in [(0, 65), (64, 1), (u64::MAX, 1), (1, u64::MAX), (u64::MAX, u64::MAX)] {
        let err = registry.register("big", &seg.key, offset, byte_size).expect_err("too large");
        assert_eq!(err.code(), ErrorCode::InvalidArg);
        assert_eq!(
            err.to_string(),
            format!(
                "failed to register shared memory region 'big': invalid args (offset {offset} + byte_size {byte_size} \
                 exceeds the size of shared memory key '{}', 64 bytes)",
                seg.key
            )
        );
    }
    assert_eq!(registry.len(), 1);
}

#[test]
fn out_of_bounds_read_and_write_are_invalid_arg() {
    let seg = Segment::new(64);
    let registry = SharedMemoryRegistry::new();
    registry.register("r", &seg.key, 16, 32).expect("register");
    let cases = [(0, 33), (32, 1), (33, 0), (u64::MAX, 1), (1, u64::MAX), (u64::MAX, u64::MAX), (u64::MAX, 0)];
    for (offset, byte_size) in cases {
        let expected = format!(
            "Invalid offset + byte size for shared memory region: 'r' ({offset} + {byte_size} exceeds \
             the size of shared memory region 'r' (32 bytes))"
        );
        let err = registry.read("r", offset, byte_size).expect_err("read out of bounds");
        assert_eq!(err.code(), ErrorCode::InvalidArg);
        assert_eq!(err.to_string(), expected);
        let err = registry.write("r", offset, byte_size, &[b"x"]).expect_err("write out of bounds");
        assert_eq!(err.code(), ErrorCode::InvalidArg);
        assert_eq!(err.to_string(), expected);
    }
}

#[test]
fn output_larger_than_its_byte_size_is_internal() {
    let seg = Segment::new(64);
    let registry = SharedMemoryRegistry::new();
    registry.register("r", &seg.key, 0, 64).expect("register");
    // Fits the region but not the 4 bytes the client gave for this output.
    let err = registry.write("r", 0, 4, &[&[1, 2, 3], &[4, 5]]).expect_err("too small");
    assert_eq!(err, ShmError::OutputTooSmall { region: "r".into(), needed: 5, available: 4 });
    assert_eq!(err.code(), ErrorCode::Internal);
    assert_eq!(
        err.message_for_output("OUTPUT0"),
        "shared memory size specified with the request for output 'OUTPUT0' (4 bytes) should be at least \
         5 bytes to hold the results"
    );
    assert_eq!(seg.contents()[..5], [0; 5], "nothing written on error");
    registry.write("r", 60, 4, &[&[1, 2, 3, 4]]).expect("exact fit at the region end");
}

#[test]
fn unknown_region_is_not_found() {
    let registry = SharedMemoryRegistry::new();
    let expected = "Unable to find system shared memory region: 'nope'";
    let errors = [
        registry.read("nope", 0, 0).expect_err("read"),
        registry.write("nope", 0, 0, &[]).expect_err("write"),
        registry.status("nope").expect_err("status"),
    ];
    for err in errors {
        assert_eq!(err.code(), ErrorCode::NotFound);
        assert_eq!(err.to_string(), expected);
    }
}

#[test]
fn view_outlives_unregister_and_unlink() {
    let seg = Segment::new(4096 + 16);
    seg.fill_with_counter();
    let registry = SharedMemoryRegistry::new();
    // A non-page-aligned offset past the first page.
    registry.register("r", &seg.key, 4097, 8).expect("register");
    let view = registry.read("r", 1, 4).expect("read");
    registry.unregister("").expect("unregister all");
    let key = seg.key.clone();
    drop(seg); // shm_unlink: the name goes, the mapping stays
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let view = view.clone();
            std::thread::spawn(move || view.to_vec())
        })
        .collect();
    for thread in threads {
        assert_eq!(thread.join().expect("thread"), [2, 3, 4, 5]);
    }
    assert_eq!(&view[..], &[2, 3, 4, 5]);
    let err = registry.register("r", &key, 0, 1).expect_err("unlinked key");
    assert_eq!(err.code(), ErrorCode::Internal);
}

#[test]
fn zero_sized_region() {
    let seg = Segment::new(0);
    let registry = SharedMemoryRegistry::new();
    registry.register("empty", &seg.key, 0, 0).expect("register empty");
    assert!(registry.read("empty", 0, 0).expect("read").is_empty());
    registry.write("empty", 0, 0, &[&[]]).expect("write nothing");
    let err = registry.write("empty", 0, 0, &[&[1]]).expect_err("no room");
    assert_eq!(err.code(), ErrorCode::Internal);
}

#[test]
fn a_view_of_a_segment_shrunk_under_it_reads_zeros_and_the_region_is_refused_from_then_on() {
    let segment = Segment::new(1 << 16);
    segment.fill_with_counter();
    let registry = SharedMemoryRegistry::new();
    registry.register("r", &segment.key, 0, 1 << 16).expect("registers");
    let (view, guard) = registry.read_guarded("r", 0, 1 << 16).expect("reads");
    assert_eq!(view[1000], (1000 % 256) as u8);
    guard.check().expect("intact so far");

    // The client shrinks the segment while the view is in use: touching the view used to raise
    // SIGBUS and kill the process; the fault guard swaps in zero pages instead.
    let file = open_segment(&segment.key);
    file.set_len(0).expect("truncates");
    assert_eq!(view[40_000], 0);
    assert_eq!(guard.check().expect_err("poisoned").code(), ErrorCode::Internal);
    let refused = registry.read("r", 0, 16).expect_err("refused from then on");
    assert!(matches!(refused, ShmError::Truncated { .. }), "{refused:?}");
    let written = registry.write("r", 0, 16, &[&[1; 16]]).expect_err("writes refused too");
    assert!(matches!(written, ShmError::Truncated { .. }), "{written:?}");
    // Unregistering and registering again (after the client grows it back) works.
    registry.unregister("r").expect("unregisters");
    drop(view);
    file.set_len(1 << 16).expect("grows");
    registry.register("r", &segment.key, 0, 1 << 16).expect("registers again");
    registry.read("r", 0, 16).expect("reads again");
}

#[test]
fn a_region_is_refused_when_its_segment_shrank_between_requests() {
    let segment = Segment::new(8192);
    let registry = SharedMemoryRegistry::new();
    registry.register("r", &segment.key, 4096, 4096).expect("registers");
    open_segment(&segment.key).set_len(4096).expect("truncates");
    assert!(matches!(registry.read("r", 0, 16), Err(ShmError::Truncated { .. })));
    assert!(matches!(registry.write("r", 0, 16, &[&[0; 16]]), Err(ShmError::Truncated { .. })));
}

#[test]
fn a_policy_limits_keys_and_the_number_of_regions() {
    let segment = Segment::new(4096);
    let off = SharedMemoryRegistry::with_policy(ShmPolicy::disabled());
    assert!(matches!(off.register("r", &segment.key, 0, 64), Err(ShmError::NotAllowed { .. })));
    let prefixed =
        SharedMemoryRegistry::with_policy(ShmPolicy { key_prefix: Some("tritium_shm_test_".into()), ..ShmPolicy::any_key() });
    prefixed.register("r", &segment.key, 0, 64).expect("the prefix matches without the leading '/'");
    let elsewhere = SharedMemoryRegistry::with_policy(ShmPolicy { key_prefix: Some("other_".into()), ..ShmPolicy::any_key() });
    assert!(matches!(elsewhere.register("r", &segment.key, 0, 64), Err(ShmError::NotAllowed { .. })));
    let one = SharedMemoryRegistry::with_policy(ShmPolicy { max_regions: 1, ..ShmPolicy::any_key() });
    one.register("a", &segment.key, 0, 64).expect("first");
    assert!(matches!(one.register("b", &segment.key, 0, 64), Err(ShmError::TooManyRegions { limit: 1, .. })));
}
