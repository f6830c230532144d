#![allow(clippy::unwrap_used)]

use super::*;

/// One output as the stub writes it: name, datatype number, shape, location, size.
type Out<'a> = (&'a str, u8, &'a [i64], u64, u64);

fn response(outputs: &[Out<'_>], error: Option<(i32, &str)>) -> Vec<u8> {
    let (code, message) = error.unwrap_or((-1, ""));
    let mut out = Vec::new();
    out.extend_from_slice(&u32::try_from(outputs.len()).unwrap().to_le_bytes());
    out.extend_from_slice(&code.to_le_bytes());
    out.extend_from_slice(&u32::try_from(message.len()).unwrap().to_le_bytes());
    out.extend_from_slice(message.as_bytes());
    for (name, datatype, shape, location, size) in outputs {
        out.extend_from_slice(&u32::try_from(name.len()).unwrap().to_le_bytes());
        out.extend_from_slice(&u32::try_from(shape.len()).unwrap().to_le_bytes());
        out.extend_from_slice(&[*datatype, 0, 0, 0]);
        out.extend_from_slice(&location.to_le_bytes());
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        shape.iter().for_each(|d| out.extend_from_slice(&d.to_le_bytes()));
    }
    out
}

fn head(op: u8, flags: u8, count: u32, id: u64) -> Vec<u8> {
    let mut out = vec![op, flags, 0, 0];
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&id.to_le_bytes());
    out
}

fn region_with_output(bytes: &[u8]) -> Region {
    let region = Region::create(4096, 1024).unwrap();
    region.write_output_for_tests(1024, bytes);
    region
}

#[test]
fn an_executed_frame_gives_each_request_its_outputs_or_its_error() {
    let region = region_with_output(&[1, 0, 0, 0, 2, 0, 0, 0]);
    let payload = Bytes::from_static(b"xxabcd");
    let mut frame = head(EXECUTED, 0, 3, 42);
    frame.extend(response(&[("OUT", 8, &[2], 1024, 8), ("INL", 2, &[1, 4], INLINE | 2, 4)], None));
    frame.extend(response(&[], Some((3, "bad input"))));
    frame.extend(response(&[("ODD", 99, &[1], INLINE, 1)], None));
    let parsed = parse_executed(&frame, &region, &payload).unwrap();
    assert_eq!((parsed.id, parsed.shm_bytes), (42, 8));
    let answers = parsed.outcome.unwrap();
    let outputs = &answers[0].as_ref().unwrap().outputs;
    assert_eq!(outputs[0], Tensor::from_slice("OUT", vec![2], &[1i32, 2]));
    assert_eq!(
        (outputs[1].datatype, outputs[1].shape.as_slice(), outputs[1].data.as_ref()),
        (DataType::Uint8, &[1, 4][..], &b"abcd"[..])
    );
    let error = answers[1].as_ref().unwrap_err();
    assert_eq!((error.code(), error.to_string().contains("bad input")), (tritium_proto::ErrorCode::InvalidArg, true));
    assert!(answers[2].as_ref().unwrap_err().to_string().contains("unknown datatype 99"));
}

#[test]
fn a_failed_execute_carries_its_message() {
    let mut frame = head(EXECUTED, FAILED, 0, 7);
    frame.extend_from_slice(&5u32.to_le_bytes());
    frame.extend_from_slice(b"boom!");
    let parsed = parse_executed(&frame, &Region::create(4096, 1024).unwrap(), &Bytes::new()).unwrap();
    assert_eq!((parsed.id, parsed.outcome.unwrap_err()), (7, "boom!".to_string()));
}

#[test]
fn a_response_frame_is_final_empty_or_carries_one_response() {
    let region = Region::create(4096, 1024).unwrap();
    let empty = parse_response(&head(RESPONSE, FINAL | EMPTY, 0, 9), &region, &Bytes::new()).unwrap();
    assert!(empty.last && empty.answer.is_none() && empty.key == 9);
    let mut frame = head(RESPONSE, 0, 1, 9);
    frame.extend(response(&[("OUT", 11, &[0], INLINE, 0)], None));
    let one = parse_response(&frame, &region, &Bytes::new()).unwrap();
    assert!(!one.last);
    assert_eq!(one.answer.unwrap().unwrap().outputs[0].shape, vec![0]);
}

#[test]
fn tensors_outside_the_stubs_part_or_the_payload_fail_their_response_only() {
    let region = Region::create(4096, 1024).unwrap();
    for (location, size) in [(0, 4), (4000, 200), (u64::MAX >> 1, 8), (INLINE | 2, 4), (INLINE | (u64::MAX >> 2), 8)] {
        let mut frame = head(EXECUTED, 0, 1, 1);
        frame.extend(response(&[("OUT", 2, &[4], location, size)], None));
        let answers = parse_executed(&frame, &region, &Bytes::from_static(b"abc")).unwrap().outcome.unwrap();
        assert!(answers[0].as_ref().unwrap_err().to_string().contains("lies outside"), "{location:#x}");
    }
}

#[test]
fn only_region_bytes_actually_read_count_as_unacknowledged() {
    let region = region_with_output(&[0; 8]);
    let mut frame = head(EXECUTED, 0, 2, 1);
    frame.extend(response(&[("OUT", 8, &[2], 1024, 8)], None));
    frame.extend(response(&[("HUGE", 8, &[2], 0, u64::MAX)], None));
    let parsed = parse_executed(&frame, &region, &Bytes::new()).unwrap();
    assert_eq!(parsed.shm_bytes, 8, "a size the stub made up adds nothing");
    assert!(parsed.outcome.unwrap()[1].is_err());
}

#[test]
fn a_response_frames_count_must_agree_with_its_empty_flag() {
    let region = Region::create(4096, 1024).unwrap();
    assert!(parse_response(&head(RESPONSE, EMPTY, 1, 9), &region, &Bytes::new()).is_err());
    let mut two = head(RESPONSE, 0, 2, 9);
    two.extend(response(&[], None));
    let Err(why) = parse_response(&two, &region, &Bytes::new()) else { panic!("two responses in one response frame") };
    assert!(why.contains("a response frame of 2 responses"), "{why}");
}

#[test]
fn every_cut_short_or_garbled_header_is_an_error_never_a_panic() {
    let region = region_with_output(&[0; 8]);
    let mut frame = head(EXECUTED, 0, 2, 1);
    frame.extend(response(&[("OUT", 8, &[2], 1024, 8)], Some((-1, "msg"))));
    frame.extend(response(&[("A", 2, &[1, 2, 3], INLINE, 0)], None));
    assert!(parse_executed(&frame, &region, &Bytes::new()).is_ok());
    for cut in 0..frame.len() {
        assert!(parse_executed(&frame[..cut], &region, &Bytes::new()).is_err(), "cut at {cut}");
    }
    let mut longer = frame.clone();
    longer.push(0);
    assert!(parse_executed(&longer, &region, &Bytes::new()).is_err(), "trailing bytes");
    assert!(parse_response(&frame, &region, &Bytes::new()).is_err(), "another op");
    // Counts, lengths and ranks far beyond the header: refused before anything that large is allocated.
    for (at, value) in [(4, u32::MAX), (16, u32::MAX), (24, u32::MAX), (31, u32::MAX), (35, u32::MAX), (35, 1 << 29)] {
        let mut hostile = frame.clone();
        hostile[at..at + 4].copy_from_slice(&value.to_le_bytes());
        assert!(parse_executed(&hostile, &region, &Bytes::new()).is_err(), "field at {at}");
    }
}

#[test]
fn an_execute_header_lays_out_requests_as_the_stub_reads_them() {
    let mut buffer = Vec::new();
    execute_head(&mut buffer, 1, 5, 6);
    let outputs = encode_names(["OUT"]);
    let input = Tensor::from_slice("IN", vec![1, 2], &[1.0f32, 2.0]);
    request(&mut buffer, 77, 3, &outputs, b"{}", &[(input, INLINE | 16)]);
    let mut expected = vec![EXECUTE, 0, 0, 0, 1, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0];
    expected.extend_from_slice(&77u64.to_le_bytes());
    expected.extend_from_slice(&3u32.to_le_bytes());
    expected.extend_from_slice(&7u32.to_le_bytes());
    expected.extend_from_slice(&(4u32 + 4 + 1 + 2 + 16).to_le_bytes());
    expected.extend_from_slice(&2u32.to_le_bytes());
    expected.extend_from_slice(&[3, 0, 0, 0, b'O', b'U', b'T']);
    expected.extend_from_slice(&[2, 0, 0, 0, 2, 0, 0, 0, 11, b'I', b'N']);
    expected.extend_from_slice(&1i64.to_le_bytes());
    expected.extend_from_slice(&2i64.to_le_bytes());
    expected.extend_from_slice(b"{}");
    expected.extend_from_slice(&(INLINE | 16).to_le_bytes());
    expected.extend_from_slice(&8u64.to_le_bytes());
    assert_eq!(buffer, expected);
    assert_eq!(op(&buffer), Some(EXECUTE));
    assert_eq!(op(b"{\"op\":\"x\"}"), None);
}
