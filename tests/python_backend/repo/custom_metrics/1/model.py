"""Custom metrics (pb_utils.MetricFamily / Metric). initialize makes a counter, a gauge and a histogram family
(pb_custom_*) with metrics; MODE touch changes them and answers their values; errors tries what the API refuses
(errors:<key> one question); temporary makes, drops and makes again a metric; families makes other family objects of
a family. TEXT is JSON: each question's {"ok": value} or {"raised": type, "message": text}."""

import gc
import json

import numpy as np
import triton_python_backend_utils as pb_utils

LABELS = {"model": "custom_metrics", "version": "1"}


def ask(question):
    try:
        value = question()
        return {"ok": value if value is None or isinstance(value, (bool, int, float, str)) else type(value).__name__}
    except Exception as e:  # noqa: BLE001 - the answer is the exception
        return {"raised": type(e).__name__, "message": str(e)}


class TritonPythonModel:
    def initialize(self, args):
        family = pb_utils.MetricFamily
        self.counters = family(name="pb_custom_counter", description="a counter", kind=family.COUNTER)
        self.gauges = family(name="pb_custom_gauge", description="a gauge", kind=family.GAUGE)
        self.histograms = family(name="pb_custom_histogram", description="a histogram", kind=family.HISTOGRAM)
        self.counter = self.counters.Metric(labels=LABELS)
        self.gauge = self.gauges.Metric(labels={**LABELS, "extra": "g"})
        self.histogram = self.histograms.Metric(labels=LABELS, buckets=[1.0, 5.0])
        self.unlabelled = self.counters.Metric()

    def execute(self, requests):
        out = []
        for request in requests:
            mode = pb_utils.get_input_tensor_by_name(request, "MODE").as_numpy()[0].decode()
            group, _, only = mode.partition(":")
            answer = getattr(self, group)(only)
            text = np.array([json.dumps(answer, sort_keys=True).encode()], dtype=np.object_)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("TEXT", text)]))
        return out

    def touch(self, only):
        return {
            "increment": ask(lambda: self.counter.increment(2)),
            "increment_float": ask(lambda: self.counter.increment(0.5)),
            "unlabelled": ask(lambda: self.unlabelled.increment(1)),
            "set": ask(lambda: self.gauge.set(7.5)),
            "gauge_increment": ask(lambda: self.gauge.increment(-2)),
            "observe": [ask(lambda v=v: self.histogram.observe(v)) for v in (0.5, 3, 10)],
            "counter_value": ask(self.counter.value),
            "gauge_value": ask(self.gauge.value),
            "unlabelled_value": ask(self.unlabelled.value),
        }

    def errors(self, only):
        family = pb_utils.MetricFamily
        questions = {
            "counter_negative": lambda: ask(lambda: self.counter.increment(-1)),
            "counter_set": lambda: ask(lambda: self.counter.set(1)),
            "counter_observe": lambda: ask(lambda: self.counter.observe(1)),
            # gauge.observe(1) ends tritonserver 2.51 (an uncaught lock_exception): not asked.
            "histogram_set": lambda: ask(lambda: self.histogram.set(1)),
            "histogram_increment": lambda: ask(lambda: self.histogram.increment(1)),
            "histogram_value": lambda: ask(self.histogram.value),
            "histogram_no_buckets": lambda: ask(lambda: self.histograms.Metric(labels={"b": "none"})),
            "counter_with_buckets": lambda: ask(lambda: self.counters.Metric(labels={"b": "given"}, buckets=[1.0]).value()),
            "label_not_str": lambda: ask(lambda: self.counters.Metric(labels={"n": 1})),
            # Only the exception's type: its message is the binding's own signature dump.
            "bad_kind": lambda: {"raised": ask(lambda: family(name="pb_custom_bad", description="d", kind=7))["raised"]},
            "bad_name": lambda: ask(lambda: family(name="pb custom spaced", description="d", kind=family.COUNTER)),
            "other_kind": lambda: ask(lambda: family(name="pb_custom_counter", description="a counter",
                                                     kind=family.GAUGE)),  # fmt: skip
        }
        return {key: q() for key, q in questions.items() if not only or key == only}

    def families(self, only):
        """Other MetricFamily objects of a family (pbx_shared_counter, apart from the pb_custom_ families: in Triton
        2.51 deleting a second family object frees the series of the first, whose values then read as garbage)."""
        family = pb_utils.MetricFamily
        if not hasattr(self, "shared"):
            self.shared = family(name="pbx_shared_counter", description="shared", kind=family.COUNTER)
            self.shared_metric = self.shared.Metric(labels={"k": "v"})
            self.shared_metric.increment(4)
        questions = {
            # A metric of a second family object with the same labels: the same series, while that object lives.
            "second_family_object": lambda: ask(lambda: (lambda f: f.Metric(labels={"k": "v"}).value())(
                family(name="pbx_shared_counter", description="shared", kind=family.COUNTER))),
            "other_description": lambda: ask(lambda: type(family(name="pbx_shared_counter", description="another",
                                                                 kind=family.COUNTER)).__name__),  # fmt: skip
            "family_gone": lambda: ask(lambda: family(name="pbx_shared_counter", description="shared",
                                                      kind=family.COUNTER).Metric(labels={"gone": "yes"}).value()),
        }
        return {key: q() for key, q in questions.items() if not only or key == only}

    def temporary(self, only):
        first = self.gauges.Metric(labels={"temporary": "yes"})
        first.set(3)
        del first
        gc.collect()
        second = self.gauges.Metric(labels={"temporary": "yes"})
        value = second.value()
        self.kept = second
        return {"value_after_remake": value}
