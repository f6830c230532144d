//! A stub's connection as the server reads it: frames sent with their acknowledgements, every
//! frame the stub sends taken by one reader (a task on the server's runtime, or a thread), and
//! what is in flight settled by an answer, a deadline or the stub's death.

use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::{Value, json};
use tritium_backend_api::BackendError;
use tritium_proto::ErrorCode;

use super::{Conn, Deadline, Executed, StreamEvent, stub_failed};
use crate::binary::{self, ExecutedFrame, ResponseFrame};
use crate::frame::{Frame, read_raw, read_raw_async};
use crate::services::Services;
use crate::wire::Reply;

impl Conn {
    /// Sends a frame with a JSON header, acknowledging every frame read so far (the stub may
    /// reuse their blocks).
    pub(crate) fn send(&self, mut header: Value, payload: &[&[u8]]) -> std::io::Result<()> {
        let header = |buffer: &mut Vec<u8>, ack| {
            header["ack"] = json!(ack);
            serde_json::to_writer(buffer, &header).map_err(std::io::Error::other)
        };
        self.send_with(header, payload)
    }

    /// Sends a frame whose header `header` writes, given the acknowledgement to carry, in one write.
    pub(super) fn send_with(
        &self,
        header: impl FnOnce(&mut Vec<u8>, u64) -> std::io::Result<()>,
        payload: &[&[u8]],
    ) -> std::io::Result<()> {
        let mut writer = self.writer.lock();
        let ack = self.received.load(Ordering::Acquire);
        self.unacknowledged_bytes.store(0, Ordering::Release);
        writer.send(|buffer| header(buffer, ack), payload)
    }

    pub(super) fn death_or(&self, otherwise: &str) -> String {
        self.state.lock().death.clone().unwrap_or_else(|| otherwise.to_string())
    }

    /// Ends execute `id` with `deadline`'s error if it is still running: the stub is marked dead
    /// (its instance starts another for the next job) and the caller ends the process. False
    /// when the execute had already returned.
    pub(super) fn expire(&self, id: u64, deadline: Deadline) -> bool {
        let pending = {
            let mut state = self.state.lock();
            let Some(pending) = state.executes.remove(&id) else { return false };
            self.alive.store(false, Ordering::Release);
            state.death.get_or_insert_with(|| format!("ended: {}", deadline.message));
            pending
        };
        tracing::warn!(instance = %self.name, "{}; ending the stub", deadline.message);
        pending.inputs.into_iter().for_each(|b| self.region.free_input(b));
        for &key in &pending.streams {
            self.end_stream(key, Err(BackendError::refused(deadline.code, deadline.message.clone())));
        }
        if let Some(release) = pending.release {
            release();
        }
        let _ = pending.reply.send(Err(BackendError::refused(deadline.code, deadline.message)));
        true
    }

    /// Settles everything in flight with the stub's death (the first cause seen is kept).
    pub(super) fn die(&self, why: String) {
        self.alive.store(false, Ordering::Release);
        let (why, executes, streams) = {
            let mut state = self.state.lock();
            let why = state.death.get_or_insert(why).clone();
            state.op_reply = None;
            (why, std::mem::take(&mut state.executes), std::mem::take(&mut state.streams))
        };
        for (_, pending) in executes {
            pending.inputs.into_iter().for_each(|b| self.region.free_input(b));
            if let Some(release) = pending.release {
                release();
            }
            let _ = pending.reply.send(Err(stub_failed(&self.name, &why)));
        }
        for (_, stream) in streams {
            stream.inputs.into_iter().for_each(|b| self.region.free_input(b));
            let _ = stream.sender.send(StreamEvent { answer: Err(stub_failed(&self.name, &why)), last: true });
        }
    }

    pub(super) fn settle_executed(&self, frame: ExecutedFrame) {
        let Some(pending) = self.state.lock().executes.remove(&frame.id) else { return };
        pending.inputs.into_iter().for_each(|b| self.region.free_input(b));
        let result = match frame.outcome {
            Err(message) => Err(BackendError::refused(ErrorCode::Internal, message)),
            Ok(answers) => Ok(Executed { answers }),
        };
        if let Err(error) = &result {
            // A decoupled execute that raised: each of its requests ends with the error.
            for &key in &pending.streams {
                self.end_stream(key, Err(BackendError::refused(error.code(), error.to_string())));
            }
        }
        // The instance first: it takes the next waiting job now, so the stub works on it while
        // this answer makes its way back to the client.
        if let Some(release) = pending.release {
            release();
        }
        let _ = pending.reply.send(result);
    }

    pub(super) fn end_stream(&self, key: u64, answer: Result<Option<Reply>, BackendError>) {
        if let Some(stream) = self.state.lock().streams.remove(&key) {
            stream.inputs.into_iter().for_each(|b| self.region.free_input(b));
            let _ = stream.sender.send(StreamEvent { answer, last: true });
        }
    }

    pub(super) fn settle_response(&self, frame: ResponseFrame) {
        let answer = frame.answer.transpose();
        if frame.last {
            self.end_stream(frame.key, answer);
        } else if let Some(stream) = self.state.lock().streams.get(&frame.key) {
            let _ = stream.sender.send(StreamEvent { answer, last: false });
        }
    }

    pub(super) fn note_output_bytes(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let total = self.unacknowledged_bytes.fetch_add(bytes, Ordering::AcqRel).saturating_add(bytes);
        // Without frames going back, the stub's ring would fill: acknowledge once a quarter is used.
        if total > (self.region.size() - self.region.input_size()) / 4 {
            let _ = self.send(json!({"op": "ack"}), &[]);
        }
    }
}

/// Takes one frame the stub sent; `Err` says why the stub is of no further use.
pub(super) fn take_frame(conn: &Arc<Conn>, services: &Services, header: &[u8], payload: bytes::Bytes) -> Result<(), String> {
    let shm_bytes = match binary::op(header) {
        Some(binary::EXECUTED) => {
            let frame = binary::parse_executed(header, &conn.region, &payload)
                .map_err(|why| format!("the stub sent a malformed executed frame: {why}"))?;
            let bytes = frame.shm_bytes;
            conn.settle_executed(frame);
            bytes
        }
        Some(binary::RESPONSE) => {
            let frame = binary::parse_response(header, &conn.region, &payload)
                .map_err(|why| format!("the stub sent a malformed response frame: {why}"))?;
            let bytes = frame.shm_bytes;
            conn.settle_response(frame);
            bytes
        }
        Some(op) => return Err(format!("the stub sent a frame of unknown op {op}")),
        None => {
            let frame = Frame::json(header, payload).map_err(|e| format!("the stub's socket failed: {e}"))?;
            match frame.op() {
                "bls" => services.bls(conn, &frame),
                "control" => services.control(conn, &frame),
                "metric" => services.metric(conn.as_ref(), &frame.header),
                "log" => services.log(&conn.name, &frame.header),
                _ => {
                    if let Some(sender) = conn.state.lock().op_reply.take() {
                        let _ = sender.try_send(frame);
                        conn.received.fetch_add(1, Ordering::AcqRel);
                        return Ok(());
                    }
                }
            }
            crate::wire::shm_bytes(&frame.header)
        }
    };
    conn.received.fetch_add(1, Ordering::AcqRel);
    conn.note_output_bytes(shm_bytes);
    Ok(())
}

pub(super) fn read_loop(conn: Arc<Conn>, socket: UnixStream, services: Services, limit: usize) {
    // Buffered: a frame's prefix, header and small payload usually come in one read.
    let mut socket = std::io::BufReader::with_capacity(64 << 10, socket);
    let mut header = Vec::with_capacity(4 << 10);
    let why = loop {
        let payload = match read_raw(&mut socket, &mut header, limit) {
            Ok(Some(payload)) => payload,
            Ok(None) => break "the stub process exited".to_string(),
            Err(e) => break format!("the stub's socket failed: {e}"),
        };
        if let Err(why) = take_frame(&conn, &services, &header, payload) {
            break why;
        }
    };
    conn.die(why);
}

pub(super) async fn read_task(conn: Arc<Conn>, socket: UnixStream, services: Services, limit: usize) {
    let why = match tokio::net::UnixStream::from_std(socket) {
        Ok(socket) => {
            let mut socket = tokio::io::BufReader::with_capacity(64 << 10, socket);
            let mut header = Vec::with_capacity(4 << 10);
            loop {
                let payload = match read_raw_async(&mut socket, &mut header, limit).await {
                    Ok(Some(payload)) => payload,
                    Ok(None) => break "the stub process exited".to_string(),
                    Err(e) => break format!("the stub's socket failed: {e}"),
                };
                if let Err(why) = take_frame(&conn, &services, &header, payload) {
                    break why;
                }
            }
        }
        Err(e) => format!("cannot watch the stub's socket: {e}"),
    };
    conn.die(why);
}
