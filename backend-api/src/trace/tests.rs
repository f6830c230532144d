use super::*;

#[derive(Default)]
struct Keep(Mutex<Vec<FinishedTrace>>);
impl TraceSink for Keep {
    fn finished(&self, trace: FinishedTrace) {
        self.0.lock().push(trace);
    }
}

#[test]
fn finishes_once_when_the_last_node_is_dropped() {
    let sink = Arc::new(Keep::default());
    let root = RequestTrace::root(TraceLevel::TIMESTAMPS, "m", None, "r", None, sink.clone());
    root.stamp(TimestampKind::RequestStart);
    let child = root.child("step", Some(2));
    let grandchild = child.child("bls", None);
    drop(root.clone());
    drop(root);
    assert!(sink.0.lock().is_empty(), "children still running");
    child.stamp(TimestampKind::ComputeStart);
    drop(child);
    assert!(sink.0.lock().is_empty());
    grandchild.set_model_version(3);
    drop(grandchild);
    let traces = sink.0.lock();
    assert_eq!(traces.len(), 1);
    let nodes = &traces[0].nodes;
    assert_eq!(nodes.len(), 3);
    assert_eq!(nodes[1].parent_id, Some(nodes[0].id));
    assert_eq!(nodes[2].parent_id, Some(nodes[1].id));
    assert_eq!(nodes[2].parent_span_id, Some(nodes[1].span_id));
    assert_eq!(nodes[2].model_version, Some(3));
    assert!(nodes[0].id < nodes[1].id && nodes[1].id < nodes[2].id);
    assert_eq!(nodes[0].timestamps.len(), 1);
    assert_eq!(nodes[1].timestamp(TimestampKind::ComputeStart).map(|_| ()), Some(()));
}

#[test]
fn level_decides_what_is_recorded() {
    let sink = Arc::new(Keep::default());
    let trace = RequestTrace::root(TraceLevel::TENSORS, "m", None, "", None, sink.clone());
    trace.stamp(TimestampKind::RequestStart);
    trace.tensor(TensorActivity::QueueInput, &Tensor::from_slice("IN", vec![2], &[1.0f32, 2.0]));
    drop(trace);
    let traces = sink.0.lock();
    assert!(traces[0].root().timestamps.is_empty());
    assert_eq!(traces[0].root().tensors.len(), 1);
}

#[test]
fn a_remote_parent_is_continued() {
    let sink = Arc::new(Keep::default());
    let parent = TraceContext::parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", Some("k=v"));
    let trace = RequestTrace::root(TraceLevel::TIMESTAMPS, "m", None, "", parent.clone(), sink.clone());
    let context = trace.context();
    assert_eq!(context.trace_id, parent.as_ref().map_or([0; 16], |p| p.trace_id));
    assert_eq!(context.tracestate(), Some("k=v"));
    drop(trace);
    let traces = sink.0.lock();
    assert_eq!(traces[0].root().parent_span_id, parent.map(|p| p.span_id));
}

#[test]
fn clocks_agree() {
    let before = now_ns();
    let at = ns_of(Instant::now());
    assert!(at >= before);
    let sink = Arc::new(Keep::default());
    drop(RequestTrace::root(TraceLevel::TIMESTAMPS, "m", None, "", None, sink.clone()));
    let unix = sink.0.lock()[0].unix_ns(now_ns());
    let real = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    assert!(unix.abs_diff(real) < 60_000_000_000);
    assert_ne!(random_nonzero(), random_nonzero());
}
