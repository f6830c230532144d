"""Test certificates made with the `openssl` CLI (Debian's openssl package): a CA, and certificates it issues."""

from __future__ import annotations

import pathlib
import shutil
import subprocess

import pytest

# P-256 keys: quick to make, and what most deployments use.
EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def openssl(*args: str) -> None:
    if shutil.which("openssl") is None:
        pytest.fail("the `openssl` command is needed to make the test certificates (Debian package openssl)")
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def make_ca(d: pathlib.Path, name: str) -> None:
    """`d/name.pem` and `d/name.key`: a self-signed CA for two days."""
    openssl("req", "-x509", *EC, "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.pem"), "-days", "2", "-subj", f"/CN={name}")


def issue(d: pathlib.Path, who: str, ext: str, ca: str = "ca") -> None:
    """`d/who.pem` and `d/who.key`, issued by `d/ca.pem` with the extensions `ext` (openssl's extfile text)."""
    (d / f"{who}.ext").write_text(ext)
    openssl("req", *EC, "-keyout", str(d / f"{who}.key"), "-out", str(d / f"{who}.csr"), "-subj", f"/CN={who}")
    openssl("x509", "-req", "-in", str(d / f"{who}.csr"), "-CA", str(d / f"{ca}.pem"), "-CAkey", str(d / f"{ca}.key"),
            "-CAcreateserial", "-out", str(d / f"{who}.pem"), "-days", "2", "-extfile", str(d / f"{who}.ext"))  # fmt: skip


def plane_certificates(d: pathlib.Path) -> pathlib.Path:
    """ca.pem and other-ca.pem; worker (127.0.0.1), named (DNS worker.test only), renewed (127.0.0.1, a second
    certificate), frontend (a client certificate), all issued by ca. Returns `d`."""
    for ca in ("ca", "other-ca"):
        make_ca(d, ca)
    server = "extendedKeyUsage=serverAuth\nsubjectAltName="
    issue(d, "worker", server + "IP:127.0.0.1\n")
    issue(d, "renewed", server + "IP:127.0.0.1\n")
    issue(d, "named", server + "DNS:worker.test\n")
    issue(d, "frontend", "extendedKeyUsage=clientAuth\n")
    return d


def issue_expired(d: pathlib.Path, who: str, ext: str, ca: str = "ca") -> None:
    """`d/who.pem` and `d/who.key`, issued by `d/ca.pem` but valid only in January 2020 (`openssl ca` takes
    explicit dates, which `openssl x509` does not)."""
    (d / f"{who}.ext").write_text(ext)
    openssl("req", *EC, "-keyout", str(d / f"{who}.key"), "-out", str(d / f"{who}.csr"), "-subj", f"/CN={who}")
    book = d / f"{who}-ca"
    book.mkdir(exist_ok=True)
    (book / "index.txt").write_text("")
    (book / "serial").write_text("1000\n")
    (book / "ca.cnf").write_text(
        f"[ca]\ndefault_ca = past\n[past]\ndatabase = {book}/index.txt\nnew_certs_dir = {book}\nserial = {book}/serial\n"
        "default_md = sha256\npolicy = anything\n[anything]\ncommonName = supplied\n"
    )
    openssl("ca", "-batch", "-config", str(book / "ca.cnf"), "-cert", str(d / f"{ca}.pem"), "-keyfile", str(d / f"{ca}.key"),
            "-in", str(d / f"{who}.csr"), "-out", str(d / f"{who}.pem"), "-startdate", "20200101000000Z",
            "-enddate", "20200102000000Z", "-extfile", str(d / f"{who}.ext"), "-notext")  # fmt: skip
