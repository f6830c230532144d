//! The sending side of a stub's socket. Frames are built in one buffer kept from frame to frame
//! and go out in one write. The socket may be non-blocking (its reading side is then watched by
//! the runtime, and the flag is the socket's, shared by both sides): a write that finds no room
//! waits for it, up to the stub's timeout, and on a runtime worker it first hands the worker's
//! other tasks to another thread, so that the reader of this very stub can still drain it.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use tokio::runtime::{Handle, RuntimeFlavor};

use crate::frame::build;

pub struct Writer {
    stream: UnixStream,
    buffer: Vec<u8>,
    timeout: Duration,
}

impl Writer {
    pub fn new(stream: UnixStream, timeout: Duration) -> Writer {
        Writer { stream, buffer: Vec::new(), timeout }
    }

    /// Sends one frame whose header `header` writes. A frame cut short (a timeout) leaves nothing
    /// sound to send after it: the socket is shut down, and the reader settles what was in flight.
    pub fn send(&mut self, header: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>, payload: &[&[u8]]) -> std::io::Result<()> {
        let written = build(&mut self.buffer, header, payload).and_then(|()| self.write_all());
        if self.buffer.capacity() > 1 << 20 {
            self.buffer = Vec::new();
        }
        if written.is_err() {
            let _ = self.stream.shutdown(std::net::Shutdown::Both);
        }
        written
    }

    fn write_all(&mut self) -> std::io::Result<()> {
        let deadline = Instant::now() + self.timeout;
        let mut left = self.buffer.as_slice();
        while !left.is_empty() {
            match self.stream.write(left) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => left = &left[n..],
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => wait_for_room(&self.stream, deadline)?,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

fn wait_for_room(stream: &UnixStream, deadline: Instant) -> std::io::Result<()> {
    let wait = || {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the Python stub read nothing in time"));
        }
        let mut poll = libc::pollfd { fd: stream.as_raw_fd(), events: libc::POLLOUT, revents: 0 };
        let millis = libc::c_int::try_from(left.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd for the duration of the call; poll only writes its `revents`.
        let ready = unsafe { libc::poll(&mut poll, 1, millis) };
        match ready {
            -1 if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => Ok(()),
            -1 => Err(std::io::Error::last_os_error()),
            _ => Ok(()),
        }
    };
    match Handle::try_current() {
        Ok(runtime) if runtime.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(wait),
        _ => wait(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn a_frame_larger_than_the_socket_waits_for_room_and_a_silent_peer_times_out() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let mut writer = Writer::new(ours.try_clone().unwrap(), Duration::from_secs(5));
        let json = |h: &mut Vec<u8>| {
            h.extend_from_slice(b"{}");
            Ok(())
        };
        let big = vec![7u8; 4 << 20];
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            theirs.read_to_end(&mut all).unwrap();
            all.len()
        });
        writer.send(json, &[&big]).unwrap();
        drop(writer);
        drop(ours);
        assert_eq!(reader.join().unwrap(), 8 + 2 + big.len());

        let (ours, _silent) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let mut writer = Writer::new(ours, Duration::from_millis(50));
        let error = writer.send(json, &[&big]).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
    }
}
