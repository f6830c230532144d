"""The book (docs/, an mdBook) and README.md against what they describe: the generated command-line
reference equals the binary's `--help` (scripts/gen-cli-reference.py --check), every relative link in
README.md and docs/src/**/*.md names a file that exists (and, with a `#fragment` into a Markdown file, one of
its headings), every repository path they name in backticks exists, and SUMMARY.md lists every page. `bash scripts/build-docs.sh` checks the built HTML the same
way (scripts/check-book-links.py)."""

from __future__ import annotations

import importlib.util
import pathlib
import re
import subprocess
import sys

from helpers import REPO, tritium_bin

SRC = REPO / "docs" / "src"


def markdown_files() -> list[pathlib.Path]:
    return [REPO / "README.md", *sorted(SRC.rglob("*.md"))]


def without_code(markdown: str) -> str:
    """The text outside fenced blocks and inline code spans, lines kept in place."""
    lines, fence = [], False
    for line in markdown.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fence = not fence
            lines.append("")
            continue
        lines.append("" if fence else re.sub(r"(`+)(?:(?!\1).)+\1", "", line))
    return "\n".join(lines)


def links(markdown: str) -> list[tuple[int, str]]:
    """(line number, destination) of every inline link or image and every reference definition."""
    found = []
    for number, line in enumerate(without_code(markdown).splitlines(), 1):
        found += [(number, m.group(1)) for m in re.finditer(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", line)]
        definition = re.match(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", line)
        if definition:
            found.append((number, definition.group(1)))
    return found


def _script(name: str):
    """A module of scripts/ by its file name (which has dashes, so it cannot be imported by name)."""
    spec = importlib.util.spec_from_file_location(name.replace("-", "_"), REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The ids mdBook (and GitHub, by the same rule) gives a page's headings: the link checker's rule.
heading_ids = _script("check-book-links").github_ids


def test_the_generated_cli_reference_matches_the_binary():
    """docs/src/reference/cli.md is what scripts/gen-cli-reference.py writes from this binary's `--help`."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen-cli-reference.py"), "--check", "--bin", str(tritium_bin())],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_relative_link_in_the_readme_and_the_book_resolves():
    broken = []
    count = 0
    for page in markdown_files():
        for number, target in links(page.read_text()):
            if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):
                continue  # https:, mailto:: not fetched
            count += 1
            path, _, fragment = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(REPO)}:{number}: ({target})"
            if not resolved.exists():
                broken.append(f"{where}: no file {resolved}")
            elif not resolved.is_relative_to(REPO):
                broken.append(f"{where}: outside the repository")
            elif fragment and resolved.suffix == ".md" and fragment not in heading_ids(resolved.read_text()):
                broken.append(f"{where}: no heading #{fragment} in {resolved.relative_to(REPO)}")
    assert count > 100, f"only {count} relative links found: is the link parser broken?"
    assert not broken, "\n".join(broken)


# Paths the pages name on purpose although they are not in the tree: the built book, a script since removed.
NAMED_BUT_ABSENT = {"docs/book/", "bench/tls.py"}


def test_every_repository_path_the_pages_name_exists():
    """A path in backticks that starts with one of the repository's top folders (`tests/python/...`,
    `server/src/...`, `bench/results/...`) names something that exists: files move, and the pages follow."""
    tops = {entry.name for entry in REPO.iterdir() if not entry.name.startswith(".")}
    stale = []
    for page in markdown_files():
        for number, line in enumerate(page.read_text().splitlines(), 1):
            for path in re.findall(r"`([A-Za-z0-9_.-]+/[A-Za-z0-9_./-]*)`", line):
                if path.split("/")[0] in tops and path not in NAMED_BUT_ABSENT and not (REPO / path).exists():
                    stale.append(f"{page.relative_to(REPO)}:{number}: {path}")
    assert not stale, "\n".join(stale)


def test_the_summary_lists_every_page_and_only_pages_that_exist():
    summary = (SRC / "SUMMARY.md").read_text()
    listed = {(SRC / target).resolve() for _, target in links(summary)}
    pages = {page.resolve() for page in SRC.rglob("*.md") if page.name != "SUMMARY.md"}
    assert sorted(map(str, listed - pages)) == [], "listed in SUMMARY.md but missing"
    assert sorted(map(str, pages - listed)) == [], "pages that SUMMARY.md does not list (mdBook would not build them)"


def test_the_readme_stays_short_and_starts_with_the_two_commands():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 220, "README.md is the front page; put the detail in the book (docs/src)"
    first_block = readme.split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    assert first_block[0].startswith("cargo run --release -p tritium-server --bin tritium -- serve")
    assert first_block[1].startswith("bash scripts/test.sh")
