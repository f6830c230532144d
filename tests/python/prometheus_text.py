"""A small parser of the Prometheus text format (0.0.4), for the metrics tests: families with their HELP, TYPE and
samples, strict about what the format allows."""

from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass
class Family:
    name: str
    help: str | None = None
    type: str | None = None
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)

    def value(self, **labels: str) -> float:
        """The one sample whose labels include `labels`."""
        found = [v for _, lbl, v in self.samples if all(lbl.get(k) == want for k, want in labels.items())]
        assert len(found) == 1, f"{self.name}{labels}: {len(found)} samples in {self.samples}"
        return found[0]


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)(\s+-?\d+)?$")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(,|$)')
_SUFFIXES = ("_total", "_count", "_sum", "_bucket", "_created")


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), text)


def _labels(text: str) -> dict[str, str]:
    body, labels, pos = text[1:-1], {}, 0
    while pos < len(body):
        m = _LABEL.match(body, pos)
        assert m, f"bad labels {text!r}"
        assert m.group(1) not in labels, f"label {m.group(1)} twice in {text!r}"
        labels[m.group(1)] = _unescape(m.group(2))
        pos = m.end()
    return labels


def parse(text: str) -> dict[str, Family]:
    """Families by name. A sample belongs to the family of its name, or of its name less a _total/_count/_sum/
    _bucket/_created suffix when that family was declared; a sample of no declared family fails the parse."""
    families: dict[str, Family] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                family = families.setdefault(parts[2], Family(parts[2]))
                rest = parts[3] if len(parts) > 3 else ""
                if parts[1] == "HELP":
                    assert family.help is None, f"line {number}: second HELP for {parts[2]}"
                    family.help = _unescape(rest)
                else:
                    assert family.type is None, f"line {number}: second TYPE for {parts[2]}"
                    assert not family.samples, f"line {number}: TYPE after samples of {parts[2]}"
                    family.type = rest.strip()
            continue
        m = _SAMPLE.match(line)
        assert m, f"line {number} is not a sample: {line!r}"
        name = m.group(1)
        owner = name if name in families else next(
            (name[: -len(s)] for s in _SUFFIXES if name.endswith(s) and name[: -len(s)] in families), None
        )
        assert owner is not None, f"line {number}: sample {name} of no declared family"
        families[owner].samples.append((name, _labels(m.group(2)) if m.group(2) else {}, float(m.group(3))))
    return families
