#!/usr/bin/env python3
"""Checks the links of the built book (docs/book, from `mdbook build docs`): every relative `href` and `src`
in docs/book/**/*.html names a file that exists, and every `#fragment` an `id` in the page it points to.
External links (http, https, mailto) are listed, not fetched.

    python3 scripts/check-book-links.py [--fix-repo-links] [BOOK_DIR]

Links that leave the book for the repository (`../../SECURITY.md`, `../../bench/results/....md`) resolve
against the source tree the book is built in. mdBook turns every relative `.md` link into `.html`, which
breaks those; `--fix-repo-links` turns them back into `.md` in the built pages first (a link whose `.html`
exists is left alone), so the book read from disk opens the repository's files. A fragment of a link into a
repository `.md` file must name one of its headings (GitHub's ids).

Exit status: 0 when every link resolves, 1 otherwise (each broken link printed with its page).
"""

from __future__ import annotations

import argparse
import html.parser
import pathlib
import re
import sys
import urllib.parse

REPO = pathlib.Path(__file__).resolve().parents[1]
EXTERNAL = re.compile(r"^(?:[a-zA-Z][a-zA-Z0-9+.-]*:|//)")
LINK_ATTRS = {"href", "src"}


class Page(html.parser.HTMLParser):
    """The ids, the base and the links (tag, attribute, value) of one HTML page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.links: list[tuple[str, str, str]] = []
        self.base: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value is None:
                continue
            if name == "id" or (tag == "a" and name == "name"):
                self.ids.add(value)
            if tag == "base" and name == "href":
                self.base = value
            elif name in LINK_ATTRS:
                self.links.append((tag, name, value))


def parse(path: pathlib.Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8", errors="replace"))
    return page


def github_ids(markdown: str) -> set[str]:
    """The anchors GitHub (and mdBook, by nearly the same rule) gives the headings of a Markdown file."""
    ids: set[str] = set()
    fence = False
    for line in markdown.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fence = not fence
            continue
        match = None if fence else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", match.group(1))
        text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")
        slug = "".join(ch for ch in text.strip().lower() if ch.isalnum() or ch in "-_ ").replace(" ", "-")
        candidate, n = slug, 0
        while candidate in ids:
            n += 1
            candidate = f"{slug}-{n}"
        ids.add(candidate)
    return ids


def fix_repo_links(book: pathlib.Path, pages: list[pathlib.Path]) -> int:
    """Turns `X.html` links that leave the book, where `X.html` is missing and `X.md` exists, back into `X.md`."""
    fixed = 0
    pattern = re.compile(r'(href=")([^"#?]+)\.html((?:#[^"]*)?")')
    for path in pages:
        text = path.read_text(encoding="utf-8")

        def back_to_md(match: re.Match[str]) -> str:
            nonlocal fixed
            target = match.group(2)
            if EXTERNAL.match(target):
                return match.group(0)
            resolved = (path.parent / urllib.parse.unquote(target)).resolve()
            if resolved.is_relative_to(book.resolve()) or pathlib.Path(f"{resolved}.html").exists():
                return match.group(0)
            if not pathlib.Path(f"{resolved}.md").is_file():
                return match.group(0)
            fixed += 1
            return f"{match.group(1)}{target}.md{match.group(3)}"

        new = pattern.sub(back_to_md, text)
        if new != text:
            path.write_text(new, encoding="utf-8")
    return fixed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("book", nargs="?", type=pathlib.Path, default=REPO / "docs" / "book")
    parser.add_argument("--fix-repo-links", action="store_true", help="turn .html links out of the book back into .md first")
    args = parser.parse_args()
    book = args.book.resolve()
    pages = sorted(book.rglob("*.html"))
    if not pages:
        print(f"check-book-links: no HTML under {book}: run `mdbook build docs` first", file=sys.stderr)
        return 1
    if args.fix_repo_links:
        print(f"turned {fix_repo_links(book, pages)} links into the repository back into .md")

    parsed: dict[pathlib.Path, Page] = {}

    def page_of(path: pathlib.Path) -> Page:
        if path not in parsed:
            parsed[path] = parse(path)
        return parsed[path]

    md_ids: dict[pathlib.Path, set[str]] = {}
    broken: list[str] = []
    external: set[str] = set()
    into_repo: set[str] = set()
    checked = 0
    for path in pages:
        page = page_of(path)
        base_dir = book if page.base == "/" else path.parent
        for tag, attr, value in page.links:
            if EXTERNAL.match(value):
                if value.startswith(("http:", "https:", "mailto:", "//")):
                    external.add(value)
                continue
            checked += 1
            parts = urllib.parse.urlsplit(value)
            fragment = urllib.parse.unquote(parts.fragment)
            where = f"{path.relative_to(book)}: <{tag} {attr}=\"{value}\">"
            if not parts.path:
                target = path
            else:
                raw = urllib.parse.unquote(parts.path)
                target = (book / raw.lstrip("/")) if raw.startswith("/") else (base_dir / raw)
                target = target.resolve()
                if target.is_dir():
                    target = target / "index.html"
            if not target.exists():
                broken.append(f"{where}: no file {target}")
                continue
            if not target.is_relative_to(book):
                into_repo.add(str(target.relative_to(REPO)) if target.is_relative_to(REPO) else str(target))
                if not target.is_relative_to(REPO):
                    broken.append(f"{where}: {target} is outside the book and the repository")
                    continue
            if not fragment:
                continue
            if target.suffix == ".html":
                if fragment not in page_of(target).ids:
                    broken.append(f"{where}: no id \"{fragment}\" in {target.relative_to(book) if target.is_relative_to(book) else target}")
            elif target.suffix == ".md":
                if target not in md_ids:
                    md_ids[target] = github_ids(target.read_text(encoding="utf-8"))
                if fragment not in md_ids[target]:
                    broken.append(f"{where}: no heading \"#{fragment}\" in {target.relative_to(REPO)}")

    print(f"{len(pages)} pages, {checked} relative links checked, {len(into_repo)} repository files linked")
    if external:
        print(f"{len(external)} external links, not fetched:")
        for link in sorted(external):
            print(f"  {link}")
    if broken:
        print(f"\n{len(broken)} broken links:", file=sys.stderr)
        for line in broken:
            print(f"  {line}", file=sys.stderr)
        return 1
    print("every relative link resolves")
    return 0


if __name__ == "__main__":
    sys.exit(main())
