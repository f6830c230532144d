//! Follows the frames of one direction of an HTTP/2 connection as its bytes pass, reading only
//! the 9-byte frame headers: payloads are skipped, never buffered or copied. The gRPC port uses it
//! to police the pings a client sends and to find the frame boundaries where the server may
//! write a frame of its own between hyper's (see `grpc::keepalive`).

/// The connection preface a client sends before its first frame.
pub(crate) const CLIENT_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub(crate) const DATA: u8 = 0x0;
pub(crate) const HEADERS: u8 = 0x1;
pub(crate) const RST_STREAM: u8 = 0x3;
pub(crate) const PING: u8 = 0x6;
pub(crate) const GOAWAY: u8 = 0x7;
pub(crate) const WINDOW_UPDATE: u8 = 0x8;

pub(crate) const END_STREAM: u8 = 0x1;
pub(crate) const ACK: u8 = 0x1;

/// HTTP/2's ENHANCE_YOUR_CALM error code.
pub(crate) const ENHANCE_YOUR_CALM: u32 = 0xb;

/// One frame's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    pub(crate) length: u32,
    pub(crate) kind: u8,
    pub(crate) flags: u8,
    pub(crate) stream: u32,
}

/// Where a stream of bytes stands in its frames.
#[derive(Debug)]
pub(crate) struct FrameCursor {
    /// Preface bytes still to pass before the first frame.
    preface_left: usize,
    header: [u8; 9],
    /// Bytes of the next header seen so far.
    header_seen: usize,
    /// Payload bytes of the current frame still to pass.
    payload_left: usize,
}

impl FrameCursor {
    /// The client's side of a connection: the preface, then frames.
    pub(crate) fn client() -> FrameCursor {
        FrameCursor { preface_left: CLIENT_PREFACE.len(), header: [0; 9], header_seen: 0, payload_left: 0 }
    }

    /// The server's side: frames from the first byte.
    pub(crate) fn server() -> FrameCursor {
        FrameCursor { preface_left: 0, header: [0; 9], header_seen: 0, payload_left: 0 }
    }

    /// Whether the bytes passed so far end exactly at a frame's end, so that another frame may
    /// be written next without cutting one in two.
    pub(crate) fn at_boundary(&self) -> bool {
        self.preface_left == 0 && self.header_seen == 0 && self.payload_left == 0
    }

    /// Bytes still to pass before the current frame ends, or before its header does when it
    /// is only partly passed (0 between frames).
    pub(crate) fn bytes_to_boundary(&self) -> usize {
        if self.header_seen > 0 { 9 - self.header_seen } else { self.payload_left }
    }

    /// Moves past `bytes`, calling `on_header` with each frame header completed in them and
    /// the index in `bytes` of that header's type byte (`None` when it passed in an earlier
    /// call).
    pub(crate) fn advance(&mut self, bytes: &[u8], mut on_header: impl FnMut(FrameHeader, Option<usize>)) {
        let mut at = 0;
        while at < bytes.len() {
            if self.preface_left > 0 {
                let skip = self.preface_left.min(bytes.len() - at);
                self.preface_left -= skip;
                at += skip;
            } else if self.payload_left > 0 {
                let skip = self.payload_left.min(bytes.len() - at);
                self.payload_left -= skip;
                at += skip;
            } else {
                let take = (9 - self.header_seen).min(bytes.len() - at);
                let start = self.header_seen;
                self.header[start..start + take].copy_from_slice(&bytes[at..at + take]);
                // The type byte is the header's fourth.
                let kind_at = (start <= 3 && 3 < start + take).then(|| at + 3 - start);
                self.header_seen += take;
                at += take;
                if self.header_seen == 9 {
                    self.header_seen = 0;
                    let h = &self.header;
                    let header = FrameHeader {
                        length: u32::from_be_bytes([0, h[0], h[1], h[2]]),
                        kind: h[3],
                        flags: h[4],
                        stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
                    };
                    self.payload_left = header.length as usize;
                    on_header(header, kind_at);
                }
            }
        }
    }
}

/// A frame's 9-byte header followed by its payload.
pub(crate) fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length = u32::try_from(payload.len()).unwrap_or(u32::MAX).min(0x00ff_ffff);
    let mut bytes = Vec::with_capacity(9 + payload.len());
    bytes.extend_from_slice(&length.to_be_bytes()[1..]);
    bytes.push(kind);
    bytes.push(flags);
    bytes.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    bytes.extend_from_slice(&payload[..length as usize]);
    bytes
}

/// A GOAWAY frame naming the last stream the server processed, an error code and debug data.
pub(crate) fn goaway(last_stream: u32, code: u32, debug: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(8 + debug.len());
    payload.extend_from_slice(&(last_stream & 0x7fff_ffff).to_be_bytes());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(debug);
    frame(GOAWAY, 0, 0, &payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers_in(cursor: &mut FrameCursor, chunks: &[&[u8]]) -> Vec<(FrameHeader, Option<usize>)> {
        let mut seen = Vec::new();
        for chunk in chunks {
            cursor.advance(chunk, |header, kind_at| seen.push((header, kind_at)));
        }
        seen
    }

    #[test]
    fn frames_are_found_whatever_the_chunks() {
        let mut bytes = CLIENT_PREFACE.to_vec();
        bytes.extend(frame(HEADERS, 0x4, 1, &[7; 30]));
        bytes.extend(frame(PING, 0, 0, &[1; 8]));
        bytes.extend(frame(DATA, END_STREAM, 1, &[]));
        let expected = [
            FrameHeader { length: 30, kind: HEADERS, flags: 0x4, stream: 1 },
            FrameHeader { length: 8, kind: PING, flags: 0, stream: 0 },
            FrameHeader { length: 0, kind: DATA, flags: END_STREAM, stream: 1 },
        ];
        for split in 1..=bytes.len() {
            let chunks: Vec<&[u8]> = bytes.chunks(split).collect();
            let mut cursor = FrameCursor::client();
            let seen = headers_in(&mut cursor, &chunks);
            let found: Vec<FrameHeader> = seen.iter().map(|(h, _)| *h).collect();
            assert_eq!(found, expected, "chunks of {split}");
            assert!(cursor.at_boundary(), "chunks of {split}");
        }
    }

    #[test]
    fn the_type_byte_is_located_in_the_chunk_that_holds_it() {
        let bytes = frame(PING, ACK, 0, &[9; 8]);
        let mut cursor = FrameCursor::server();
        let seen = headers_in(&mut cursor, &[&bytes]);
        assert_eq!(seen[0].1, Some(3));
        let mut cursor = FrameCursor::server();
        let seen = headers_in(&mut cursor, &[&bytes[..2], &bytes[2..]]);
        assert_eq!(seen[0].1, Some(1));
        let mut cursor = FrameCursor::server();
        let seen = headers_in(&mut cursor, &[&bytes[..4], &bytes[4..]]);
        assert_eq!(seen[0].1, None, "the type byte passed with the first chunk");
    }

    #[test]
    fn a_boundary_is_only_between_frames() {
        let bytes = frame(DATA, 0, 1, &[0; 20]);
        let mut cursor = FrameCursor::server();
        cursor.advance(&bytes[..5], |_, _| {});
        assert!(!cursor.at_boundary());
        assert_eq!(cursor.bytes_to_boundary(), 4, "the rest of the header");
        cursor.advance(&bytes[5..12], |_, _| {});
        assert_eq!(cursor.bytes_to_boundary(), 17);
        cursor.advance(&bytes[12..], |_, _| {});
        assert!(cursor.at_boundary());
        assert!(!FrameCursor::client().at_boundary(), "the preface is still to come");
    }

    #[test]
    fn goaway_carries_its_fields() {
        let bytes = goaway(5, ENHANCE_YOUR_CALM, b"too_many_pings");
        assert_eq!(bytes.len(), 9 + 8 + 14);
        assert_eq!(&bytes[..9], &[0, 0, 22, GOAWAY, 0, 0, 0, 0, 0]);
        assert_eq!(&bytes[9..17], &[0, 0, 0, 5, 0, 0, 0, 0xb]);
        assert_eq!(&bytes[17..], b"too_many_pings");
    }
}
