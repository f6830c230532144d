//! Request tracing: the per-request handle every layer stamps, shared by Triton's trace file
//! mode and OpenTelemetry export.
//!
//! A request the server's sampler picks carries a [`RequestTrace`] (`Option<RequestTrace>` on
//! [`InferenceRequest`](crate::InferenceRequest); `None` when it was not sampled, so tracing off
//! costs one branch per stamp site). The handle is a cheap clone (an `Arc`): the door that
//! received the request, the schedulers and the backends each stamp it with Triton's
//! [`TimestampKind`]s, and ensemble steps and BLS calls get a [`child`](RequestTrace::child)
//! trace of their own, with a new Triton id and span id and this one as parent.
//!
//! Every node of one request's tree shares one collector. When the last handle of the last node
//! is dropped (the root request and all its children are done), the collector hands a
//! [`FinishedTrace`] (every node's stamps, attributes, events and tensors) to the
//! [`TraceSink`] the sampler chose, exactly once. The sink is called on whatever thread dropped
//! the last handle, so it must not block: the server's dispatcher queues the trace on a bounded
//! channel to a writer task (a full channel drops the trace and counts it), where the Triton file
//! sink and the OTLP sink run.
//!
//! Ids: Triton's numeric trace ids (`id`, `parent_id`) count up from 1 in the process, children
//! included, as Triton numbers them; each node also has a random 64-bit span id, and the tree a
//! W3C 128-bit trace id, random or continued from a caller's `traceparent` (a
//! [`TraceContext`]). Timestamps are nanoseconds of `CLOCK_MONOTONIC`, the steady clock Triton
//! 2.51 writes in its trace file; [`FinishedTrace::unix_ns`] turns one into nanoseconds since the
//! Unix epoch for OpenTelemetry.
//!
//! ```
//! use std::sync::Arc;
//!
//! use parking_lot::Mutex;
//! use tritium_backend_api::trace::{FinishedTrace, RequestTrace, TimestampKind, TraceLevel, TraceSink};
//!
//! #[derive(Default)]
//! struct Keep(Mutex<Vec<FinishedTrace>>);
//! impl TraceSink for Keep {
//!     fn finished(&self, trace: FinishedTrace) {
//!         self.0.lock().push(trace);
//!     }
//! }
//!
//! let sink = Arc::new(Keep::default());
//! let root = RequestTrace::root(TraceLevel::TIMESTAMPS, "ens", Some(1), "req-7", None, sink.clone());
//! root.stamp(TimestampKind::RequestStart);
//! let step = root.child("step", Some(1));
//! step.stamp(TimestampKind::ComputeStart);
//! step.set_attribute("worker", "w-1");
//! drop(step);
//! root.stamp(TimestampKind::RequestEnd);
//! drop(root);
//! let traces = sink.0.lock();
//! assert_eq!(traces.len(), 1);
//! let (parent, child) = (&traces[0].nodes[0], &traces[0].nodes[1]);
//! assert_eq!(child.parent_id, Some(parent.id));
//! assert_eq!(child.request_id, "req-7");
//! ```

use std::borrow::Cow;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tritium_tensor::Tensor;

use crate::trace_context::TraceContext;

/// A point in a request's life, named as Triton 2.51 names it in its trace file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimestampKind {
    HttpRecvStart,
    HttpRecvEnd,
    HttpSendStart,
    HttpSendEnd,
    /// gRPC: when the server began waiting for the request message, and when it had it.
    GrpcWaitreadStart,
    GrpcWaitreadEnd,
    GrpcSendStart,
    GrpcSendEnd,
    RequestStart,
    QueueStart,
    ComputeStart,
    ComputeInputEnd,
    ComputeOutputStart,
    ComputeEnd,
    RequestEnd,
    /// The model's (last) response was complete, before the door sent it.
    InferResponseComplete,
}

impl TimestampKind {
    pub const fn name(self) -> &'static str {
        match self {
            TimestampKind::HttpRecvStart => "HTTP_RECV_START",
            TimestampKind::HttpRecvEnd => "HTTP_RECV_END",
            TimestampKind::HttpSendStart => "HTTP_SEND_START",
            TimestampKind::HttpSendEnd => "HTTP_SEND_END",
            TimestampKind::GrpcWaitreadStart => "GRPC_WAITREAD_START",
            TimestampKind::GrpcWaitreadEnd => "GRPC_WAITREAD_END",
            TimestampKind::GrpcSendStart => "GRPC_SEND_START",
            TimestampKind::GrpcSendEnd => "GRPC_SEND_END",
            TimestampKind::RequestStart => "REQUEST_START",
            TimestampKind::QueueStart => "QUEUE_START",
            TimestampKind::ComputeStart => "COMPUTE_START",
            TimestampKind::ComputeInputEnd => "COMPUTE_INPUT_END",
            TimestampKind::ComputeOutputStart => "COMPUTE_OUTPUT_START",
            TimestampKind::ComputeEnd => "COMPUTE_END",
            TimestampKind::RequestEnd => "REQUEST_END",
            TimestampKind::InferResponseComplete => "INFER_RESPONSE_COMPLETE",
        }
    }

    /// Whether a door (gRPC or HTTP) stamps this, rather than the core.
    pub const fn is_door(self) -> bool {
        matches!(
            self,
            TimestampKind::HttpRecvStart
                | TimestampKind::HttpRecvEnd
                | TimestampKind::HttpSendStart
                | TimestampKind::HttpSendEnd
                | TimestampKind::GrpcWaitreadStart
                | TimestampKind::GrpcWaitreadEnd
                | TimestampKind::GrpcSendStart
                | TimestampKind::GrpcSendEnd
                | TimestampKind::InferResponseComplete
        )
    }
}

/// What a sampled request records: Triton's `trace_level` list (`TIMESTAMPS`, `TENSORS`, both).
/// A level with neither is `OFF`, and then nothing is sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TraceLevel {
    pub timestamps: bool,
    pub tensors: bool,
}

impl TraceLevel {
    pub const OFF: TraceLevel = TraceLevel { timestamps: false, tensors: false };
    pub const TIMESTAMPS: TraceLevel = TraceLevel { timestamps: true, tensors: false };
    pub const TENSORS: TraceLevel = TraceLevel { timestamps: false, tensors: true };

    pub fn is_off(self) -> bool {
        !self.timestamps && !self.tensors
    }
}

/// Where a tensor record was taken, as Triton's trace file names the activity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorActivity {
    /// An input as the request entered the model's queue.
    QueueInput,
    /// An input as the backend received it.
    BackendInput,
    /// An output as the backend produced it.
    BackendOutput,
}

impl TensorActivity {
    pub const fn name(self) -> &'static str {
        match self {
            TensorActivity::QueueInput => "TENSOR_QUEUE_INPUT",
            TensorActivity::BackendInput => "TENSOR_BACKEND_INPUT",
            TensorActivity::BackendOutput => "TENSOR_BACKEND_OUTPUT",
        }
    }
}

/// A key/value attribute's value (OpenTelemetry's scalar kinds).
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    Str(String),
    I64(i64),
    F64(f64),
    Bool(bool),
}

impl From<&str> for AttrValue {
    fn from(value: &str) -> AttrValue {
        AttrValue::Str(value.to_string())
    }
}
impl From<String> for AttrValue {
    fn from(value: String) -> AttrValue {
        AttrValue::Str(value)
    }
}
impl From<i64> for AttrValue {
    fn from(value: i64) -> AttrValue {
        AttrValue::I64(value)
    }
}
impl From<u32> for AttrValue {
    fn from(value: u32) -> AttrValue {
        AttrValue::I64(i64::from(value))
    }
}
impl From<usize> for AttrValue {
    fn from(value: usize) -> AttrValue {
        AttrValue::I64(i64::try_from(value).unwrap_or(i64::MAX))
    }
}
impl From<f64> for AttrValue {
    fn from(value: f64) -> AttrValue {
        AttrValue::F64(value)
    }
}
impl From<f32> for AttrValue {
    fn from(value: f32) -> AttrValue {
        AttrValue::F64(f64::from(value))
    }
}
impl From<bool> for AttrValue {
    fn from(value: bool) -> AttrValue {
        AttrValue::Bool(value)
    }
}

/// Attributes in the order they were set (a later value for a key replaces the earlier one).
pub type Attributes = Vec<(Cow<'static, str>, AttrValue)>;

/// A named moment in a node's life (the first token of a generation, a migration).
#[derive(Debug, Clone, PartialEq)]
pub struct TraceEvent {
    pub name: Cow<'static, str>,
    pub ns: u64,
    pub attributes: Attributes,
}

/// A tensor recorded at level `TENSORS`.
#[derive(Debug, Clone)]
pub struct TensorRecord {
    pub activity: TensorActivity,
    pub tensor: Tensor,
}

/// One node of a finished trace: a request (the root), an ensemble step or a BLS call.
#[derive(Debug, Clone)]
pub struct TraceNode {
    /// Triton's numeric trace id.
    pub id: u64,
    /// The parent node's Triton id; `None` for the root.
    pub parent_id: Option<u64>,
    pub span_id: [u8; 8],
    /// The parent node's span id; for the root, the caller's span when it sent a `traceparent`.
    pub parent_span_id: Option<[u8; 8]>,
    pub model_name: String,
    /// The version that ran; `None` when the request failed before one was chosen.
    pub model_version: Option<i64>,
    pub request_id: String,
    /// In the order they were stamped.
    pub timestamps: Vec<(TimestampKind, u64)>,
    pub attributes: Attributes,
    pub events: Vec<TraceEvent>,
    pub tensors: Vec<TensorRecord>,
}

impl TraceNode {
    /// The first stamp of `kind`, if there is one.
    pub fn timestamp(&self, kind: TimestampKind) -> Option<u64> {
        self.timestamps.iter().find(|(k, _)| *k == kind).map(|(_, ns)| *ns)
    }
}

/// A request's trace once it and all its children are done, handed to a [`TraceSink`].
#[derive(Debug, Clone)]
pub struct FinishedTrace {
    pub trace_id: [u8; 16],
    pub level: TraceLevel,
    /// The caller's context when it sent a `traceparent` (its `tracestate` rides along).
    pub remote_parent: Option<TraceContext>,
    /// The root first, then its descendants in the order they were created.
    pub nodes: Vec<TraceNode>,
    /// `CLOCK_REALTIME - CLOCK_MONOTONIC` when the trace finished, in ns.
    epoch_offset_ns: i128,
}

impl FinishedTrace {
    pub fn root(&self) -> &TraceNode {
        &self.nodes[0]
    }

    /// A stamp of this trace (monotonic ns) as ns since the Unix epoch.
    pub fn unix_ns(&self, monotonic_ns: u64) -> u64 {
        u64::try_from(i128::from(monotonic_ns) + self.epoch_offset_ns).unwrap_or(0)
    }
}

/// Receives each finished trace once. Called on the thread that dropped the trace's last handle,
/// often a request's own: an implementation must not block (queue and return).
pub trait TraceSink: Send + Sync + 'static {
    fn finished(&self, trace: FinishedTrace);
}

/// The handle a sampled request carries. Clones share one node; [`child`](Self::child) makes a
/// new node in the same tree.
#[derive(Clone)]
pub struct RequestTrace {
    node: Arc<Node>,
    tree: Arc<Tree>,
}

impl std::fmt::Debug for RequestTrace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RequestTrace({})", self.node.id)
    }
}

struct Node {
    id: u64,
    parent_id: Option<u64>,
    span_id: [u8; 8],
    parent_span_id: Option<[u8; 8]>,
    data: Mutex<NodeData>,
}

struct NodeData {
    model_name: String,
    model_version: Option<i64>,
    request_id: String,
    timestamps: Vec<(TimestampKind, u64)>,
    attributes: Attributes,
    events: Vec<TraceEvent>,
    tensors: Vec<TensorRecord>,
}

struct Tree {
    trace_id: [u8; 16],
    level: TraceLevel,
    remote_parent: Option<TraceContext>,
    nodes: Mutex<Vec<Arc<Node>>>,
    sink: Arc<dyn TraceSink>,
}

impl Drop for Tree {
    fn drop(&mut self) {
        let nodes = std::mem::take(&mut *self.nodes.lock());
        let nodes = nodes
            .into_iter()
            .map(|node| {
                let data = std::mem::replace(&mut *node.data.lock(), NodeData::new(String::new(), None, String::new()));
                TraceNode {
                    id: node.id,
                    parent_id: node.parent_id,
                    span_id: node.span_id,
                    parent_span_id: node.parent_span_id,
                    model_name: data.model_name,
                    model_version: data.model_version,
                    request_id: data.request_id,
                    timestamps: data.timestamps,
                    attributes: data.attributes,
                    events: data.events,
                    tensors: data.tensors,
                }
            })
            .collect();
        self.sink.finished(FinishedTrace {
            trace_id: self.trace_id,
            level: self.level,
            remote_parent: self.remote_parent.take(),
            nodes,
            epoch_offset_ns: epoch_offset_ns(),
        });
    }
}

impl NodeData {
    fn new(model_name: String, model_version: Option<i64>, request_id: String) -> NodeData {
        NodeData {
            model_name,
            model_version,
            request_id,
            timestamps: Vec::with_capacity(12),
            attributes: Vec::new(),
            events: Vec::new(),
            tensors: Vec::new(),
        }
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl RequestTrace {
    /// A new trace for a sampled request (the sampler's job; `remote_parent` is the caller's
    /// context, whose trace id the trace continues). `model_version` is the version asked for;
    /// the core sets the one that ran with [`set_model_version`](Self::set_model_version).
    pub fn root(
        level: TraceLevel,
        model_name: impl Into<String>,
        model_version: Option<i64>,
        request_id: impl Into<String>,
        remote_parent: Option<TraceContext>,
        sink: Arc<dyn TraceSink>,
    ) -> RequestTrace {
        let trace_id = match &remote_parent {
            Some(parent) => parent.trace_id,
            None => {
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&random_nonzero().to_be_bytes());
                id[8..].copy_from_slice(&random_nonzero().to_be_bytes());
                id
            }
        };
        let parent_span_id = remote_parent.as_ref().map(|parent| parent.span_id);
        let node = Arc::new(Node {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            parent_id: None,
            span_id: random_nonzero().to_be_bytes(),
            parent_span_id,
            data: Mutex::new(NodeData::new(model_name.into(), model_version, request_id.into())),
        });
        let tree = Arc::new(Tree { trace_id, level, remote_parent, nodes: Mutex::new(vec![node.clone()]), sink });
        RequestTrace { node, tree }
    }

    /// A child trace (an ensemble step, a BLS call) in the same tree; it inherits the request id.
    pub fn child(&self, model_name: impl Into<String>, model_version: Option<i64>) -> RequestTrace {
        let request_id = self.node.data.lock().request_id.clone();
        let node = Arc::new(Node {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            parent_id: Some(self.node.id),
            span_id: random_nonzero().to_be_bytes(),
            parent_span_id: Some(self.node.span_id),
            data: Mutex::new(NodeData::new(model_name.into(), model_version, request_id)),
        });
        self.tree.nodes.lock().push(node.clone());
        RequestTrace { node, tree: self.tree.clone() }
    }

    /// Triton's numeric id of this node.
    pub fn id(&self) -> u64 {
        self.node.id
    }

    pub fn parent_id(&self) -> Option<u64> {
        self.node.parent_id
    }

    pub fn trace_id(&self) -> [u8; 16] {
        self.tree.trace_id
    }

    pub fn span_id(&self) -> [u8; 8] {
        self.node.span_id
    }

    pub fn level(&self) -> TraceLevel {
        self.tree.level
    }

    /// Whether tensors are to be recorded (level `TENSORS`).
    pub fn wants_tensors(&self) -> bool {
        self.tree.level.tensors
    }

    /// The W3C context of this node, for a hop this process makes (the worker plane).
    pub fn context(&self) -> TraceContext {
        let context = TraceContext::new(self.tree.trace_id, self.node.span_id, true);
        context.with_tracestate(self.tree.remote_parent.as_ref().and_then(TraceContext::tracestate))
    }

    pub fn model_name(&self) -> String {
        self.node.data.lock().model_name.clone()
    }

    pub fn set_model_version(&self, version: i64) {
        self.node.data.lock().model_version = Some(version);
    }

    pub fn set_request_id(&self, request_id: impl Into<String>) {
        self.node.data.lock().request_id = request_id.into();
    }

    /// Records `kind` now. Stamps are recorded at level `TIMESTAMPS` only.
    pub fn stamp(&self, kind: TimestampKind) {
        if self.tree.level.timestamps {
            self.stamp_at(kind, now_ns());
        }
    }

    /// Records `kind` at `ns` (monotonic, as [`now_ns`] and [`ns_of`] give).
    pub fn stamp_at(&self, kind: TimestampKind, ns: u64) {
        if self.tree.level.timestamps {
            self.node.data.lock().timestamps.push((kind, ns));
        }
    }

    /// Whether this node has a stamp of `kind`.
    pub fn has_stamp(&self, kind: TimestampKind) -> bool {
        self.node.data.lock().timestamps.iter().any(|(k, _)| *k == kind)
    }

    /// Sets an attribute (router, worker, GenAI): a later value for the same key replaces it.
    pub fn set_attribute(&self, key: impl Into<Cow<'static, str>>, value: impl Into<AttrValue>) {
        let (key, value) = (key.into(), value.into());
        let mut data = self.node.data.lock();
        match data.attributes.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => data.attributes.push((key, value)),
        }
    }

    /// Records a named event now.
    pub fn event(&self, name: impl Into<Cow<'static, str>>, attributes: Attributes) {
        let event = TraceEvent { name: name.into(), ns: now_ns(), attributes };
        self.node.data.lock().events.push(event);
    }

    /// Records a tensor at level `TENSORS` (a clone of its `Bytes`, no copy).
    pub fn tensor(&self, activity: TensorActivity, tensor: &Tensor) {
        if self.tree.level.tensors {
            self.node.data.lock().tensors.push(TensorRecord { activity, tensor: tensor.clone() });
        }
    }
}

tokio::task_local! {
    static CURRENT: Option<RequestTrace>;
}

/// Runs `future` with `trace` as the [`current`] trace: the layers between a door and a worker
/// (the router, the worker-plane client) annotate and carry it without every signature on the
/// way taking it.
pub async fn scoped<F: std::future::Future>(trace: Option<RequestTrace>, future: F) -> F::Output {
    match trace {
        None => future.await,
        Some(trace) => CURRENT.scope(Some(trace), future).await,
    }
}

/// The trace of the request the current task works for, inside [`scoped`].
pub fn current() -> Option<RequestTrace> {
    CURRENT.try_with(Clone::clone).ok().flatten()
}

/// `CLOCK_MONOTONIC` in ns: the clock of Triton's trace file.
pub fn now_ns() -> u64 {
    let (anchor, anchor_ns) = *anchor();
    anchor_ns + u64::try_from(anchor.elapsed().as_nanos()).unwrap_or(u64::MAX / 2)
}

/// An `Instant` (a request's arrival) on the trace clock.
pub fn ns_of(instant: Instant) -> u64 {
    let (anchor, anchor_ns) = *anchor();
    match instant.checked_duration_since(anchor) {
        Some(after) => anchor_ns + u64::try_from(after.as_nanos()).unwrap_or(u64::MAX / 2),
        None => anchor_ns.saturating_sub(u64::try_from(anchor.duration_since(instant).as_nanos()).unwrap_or(0)),
    }
}

/// One reading of `CLOCK_MONOTONIC` paired with the `Instant` read beside it: `Instant` is that
/// same clock on Linux, so later readings need no system call of their own.
fn anchor() -> &'static (Instant, u64) {
    static ANCHOR: OnceLock<(Instant, u64)> = OnceLock::new();
    ANCHOR.get_or_init(|| {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime writes one timespec through a valid pointer.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let ns = if rc == 0 {
            u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
        } else {
            0
        };
        (Instant::now(), ns)
    })
}

fn epoch_offset_ns() -> i128 {
    let unix = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i128);
    unix - i128::from(now_ns())
}

/// A random, non-zero 64-bit id (span ids, trace ids): SplitMix64 over a per-process seed and a
/// counter. Unique and well spread; not a secret.
fn random_nonzero() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| RandomState::new().hash_one(std::process::id()) | 1);
    let mut z = seed.wrapping_add(COUNTER.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    if z == 0 { 1 } else { z }
}

mod api_key;
#[cfg(test)]
mod tests;

pub use api_key::{API_KEY_ATTRIBUTE, ApiKeyName};
