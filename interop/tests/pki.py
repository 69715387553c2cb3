"""Test certificates made with the openssl command line: a CA, the broker's certificate for
localhost and 127.0.0.1, a client certificate from the CA, and one from a stranger CA."""

import subprocess
from pathlib import Path

DAYS = "2"


def _openssl(*args, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _key(cwd: Path, name: str) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-out", f"{name}.key", cwd=cwd)


def _ca(cwd: Path, name: str, cn: str) -> None:
    _key(cwd, name)
    _openssl("req", "-x509", "-new", "-key", f"{name}.key", "-out", f"{name}.pem",
             "-days", DAYS, "-subj", f"/CN={cn}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=cwd)


def _signed(cwd: Path, name: str, cn: str, ca: str, extensions: str) -> None:
    _key(cwd, name)
    _openssl("req", "-new", "-key", f"{name}.key", "-out", f"{name}.csr",
             "-subj", f"/CN={cn}", cwd=cwd)
    (cwd / f"{name}.ext").write_text(extensions)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-out", f"{name}.pem", "-days", DAYS,
             "-extfile", f"{name}.ext", cwd=cwd)


def make(cwd: Path) -> dict:
    """Writes the certificates into ``cwd``; their paths by role."""
    cwd.mkdir(parents=True, exist_ok=True)
    _ca(cwd, "ca", "switchboard interop CA")
    _ca(cwd, "stranger-ca", "stranger CA")
    _signed(cwd, "server", "localhost", "ca",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    _signed(cwd, "client", "alice", "ca", "extendedKeyUsage=clientAuth\n")
    _signed(cwd, "stranger", "eve", "stranger-ca", "extendedKeyUsage=clientAuth\n")
    p = lambda name: str(cwd / name)  # noqa: E731
    return {
        "ca": p("ca.pem"),
        "server_cert": p("server.pem"),
        "server_key": p("server.key"),
        "client_cert": p("client.pem"),
        "client_key": p("client.key"),
        "stranger_cert": p("stranger.pem"),
        "stranger_key": p("stranger.key"),
    }
