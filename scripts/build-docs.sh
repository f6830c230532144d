#!/usr/bin/env bash
# Builds the book (docs/book.toml, pages in docs/src) into docs/book with mdBook, then checks the links of the
# built HTML (scripts/check-book-links.py). mdBook is installed into .tools/mdbook on first use (cargo install,
# MDBOOK_JOBS jobs, 2 by default) and reused after. The markdown itself, and the generated
# command-line page against the binary, are checked by tests/python/docs/test_book.py.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

MDBOOK_VERSION="0.5.4"
root="$repo/.tools/mdbook"
mdbook="$root/bin/mdbook"

if [[ ! -x "$mdbook" || "$("$mdbook" --version 2>/dev/null)" != "mdbook v$MDBOOK_VERSION" ]]; then
    echo "installing mdbook $MDBOOK_VERSION into .tools/mdbook (cargo install -j1; a few minutes)"
    # Without the default `serve` and `watch` features: only `mdbook build` is needed, and they add tokio and axum.
    cargo install --locked mdbook --version "$MDBOOK_VERSION" --root "$root" -j "${MDBOOK_JOBS:-2}" --no-default-features --features search
fi

rm -rf docs/book
"$mdbook" build docs
# mdBook writes every relative .md link as .html; links out of the book into the repository get their .md back.
python3 scripts/check-book-links.py --fix-repo-links docs/book
