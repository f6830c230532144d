"""Compare a reply (http_replay.normalize form) with the one recorded from Triton.

What must match:
- the status code, exactly;
- the Content-Type and Content-Encoding headers, exactly (absent on one side = a difference);
- whether Inference-Header-Content-Length is present (its value is checked through the split body);
- the body, exactly and type-strict (1 vs 1.0 vs true differ; dict key order does not matter; NaN equals NaN),
  except where a case's `allow` list says otherwise: (path, rule, why), path segments joined by "/", "*" matching
  any key or index; rules: "ignore" (must be present, value free), "subset" (a list whose items all appear in Triton's),
  ("prefix", text) (a string starting with text).
Not compared: Content-Length (chunked vs fixed framing, compressed sizes).

Error messages that list names in a set order (Triton iterates a hash set: "Got input(s) ['X','INPUT0']") are
compared with the names of each ['...'] list sorted.
"""

from __future__ import annotations

import json
import math
import re

_NAME_LIST = re.compile(r"\[('[^']*'(?:,\s*'[^']*')*)\]")


def normalize_error(message: str) -> str:
    def sort_items(m: re.Match) -> str:
        items = re.findall(r"'[^']*'", m.group(1))
        return "[" + ",".join(sorted(items)) + "]"

    return _NAME_LIST.sub(sort_items, message)


def _matches(pattern: str, path: tuple) -> bool:
    parts = pattern.split("/") if pattern else []
    return len(parts) == len(path) and all(p == "*" or p == str(k) for p, k in zip(parts, path))


def _rule_for(allow, path: tuple):
    for pattern, rule, _why in allow or []:
        if _matches(pattern, path):
            return rule
    return None


def _kind(v):
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "list"
    if isinstance(v, dict):
        return "object"
    return "null"


def _fmt_path(path: tuple) -> str:
    return "body" + "".join(f"[{k!r}]" for k in path)


def compare_json(expected, actual, allow=None, path: tuple = ()) -> list[str]:
    """Differences between two parsed JSON values, as readable lines (empty when they match)."""
    rule = _rule_for(allow, path)
    where = _fmt_path(path)
    if rule == "ignore":
        return []
    if rule == "subset":
        if not isinstance(actual, list) or any(item not in expected for item in actual):
            return [f"{where}: {actual!r} is not a subset of Triton's {expected!r}"]
        return []
    if isinstance(rule, tuple) and rule[0] == "prefix":
        if not isinstance(actual, str) or not actual.startswith(rule[1]):
            return [f"{where}: {actual!r} does not start with {rule[1]!r}"]
        return []
    if _kind(expected) != _kind(actual):
        return [f"{where}: Triton has {_kind(expected)} {_short(expected)}, got {_kind(actual)} {_short(actual)}"]
    if isinstance(expected, dict):
        diffs = []
        for key in expected:
            if key not in actual:
                diffs.append(f"{where}: missing key {key!r} (Triton: {_short(expected[key])})")
            else:
                diffs += compare_json(expected[key], actual[key], allow, path + (key,))
        for key in actual:
            if key not in expected:
                diffs.append(f"{where}: unexpected key {key!r} = {_short(actual[key])}")
        return diffs
    if isinstance(expected, list):
        if len(expected) != len(actual):
            return [f"{where}: Triton has {len(expected)} items {_short(expected)}, got {len(actual)} {_short(actual)}"]
        diffs = []
        for i, (e, a) in enumerate(zip(expected, actual)):
            diffs += compare_json(e, a, allow, path + (i,))
        return diffs
    if expected != actual and not (_kind(expected) == "float" and math.isnan(expected) and math.isnan(actual)):
        return [f"{where}: Triton has {expected!r}, got {actual!r}"]
    return []


def _short(value, limit: int = 300) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit] + "..."


def _error_text(body):
    if isinstance(body, dict) and set(body) == {"error"} and isinstance(body["error"], str):
        return normalize_error(body["error"])
    return None


def compare_reply(expected: dict, actual: dict, allow=None) -> list[str]:
    """Differences between Triton's recorded reply and another server's reply (both http_replay form)."""
    if actual.get("transport_error"):
        return [f"no HTTP reply: {actual['transport_error']}"]
    diffs = []
    if expected["status"] != actual["status"]:
        diffs.append(f"status: Triton {expected['status']}, got {actual['status']}")
    eh, ah = expected.get("headers", {}), actual.get("headers", {})
    for name in ("content-type", "content-encoding"):
        if eh.get(name) != ah.get(name):
            diffs.append(f"header {name}: Triton {eh.get(name)!r}, got {ah.get(name)!r}")
    if ("inference-header-content-length" in eh) != ("inference-header-content-length" in ah):
        diffs.append(
            "header inference-header-content-length: Triton "
            f"{eh.get('inference-header-content-length')!r}, got {ah.get('inference-header-content-length')!r}"
        )
    eb, ab = expected.get("body"), actual.get("body")
    ee, ae = _error_text(eb), _error_text(ab)
    if ee is not None and ae is not None:
        rule = _rule_for(allow, ("error",))
        if isinstance(rule, tuple) and rule[0] == "prefix":
            if not ab["error"].startswith(rule[1]):
                diffs.append(f"error: {ab['error']!r} does not start with {rule[1]!r} (Triton: {eb['error']!r})")
        elif ee != ae:
            diffs.append(f"error message:\n    Triton: {eb['error']!r}\n    got:    {ab['error']!r}")
    else:
        diffs += compare_json(eb, ab, allow)
    return diffs


def describe(case: dict, expected: dict, actual: dict, diffs: list[str]) -> str:
    """An assertion message: the case, the differences, both replies."""
    return (
        f"{case['method']} {case['path']} differs from Triton 2.51:\n  - "
        + "\n  - ".join(diffs)
        + f"\nTriton: {_short(expected, 2000)}\ngot:    {_short(actual, 2000)}"
    )
