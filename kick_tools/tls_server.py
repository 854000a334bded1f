"""A certificate made on the spot and an HTTPS server on loopback, for the TLS tests and the TLS memory
bench (kick_monitor/tls.py): Kick's HTTPS endpoints are out of reach here, so both talk to this.

    cert, key = self_signed(directory, "trusted", "localhost")
    server = serve(cert, key)            # keep-alive HTTP/1.1 answering "ok", in a daemon thread
    python -m kick_tools.tls_server CERT KEY   # the same in a process of its own; prints its port
"""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import ssl
import sys
import threading
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def self_signed(directory: Path, name: str, dns: str) -> tuple[Path, Path]:
    """A certificate for `dns` (and 127.0.0.1) that is its own CA, and its key: `name`.pem, `name`.key."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName(dns), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class Hello(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a client's pooled connection (and its context) stays

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


def serve(cert: Path, key: Path) -> http.server.ThreadingHTTPServer:
    """An HTTPS server on 127.0.0.1 (a free port: `server.server_port`), serving in a daemon thread."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> int:
    if len(sys.argv) != 3:
        print("usage: python -m kick_tools.tls_server CERT KEY", file=sys.stderr)
        return 2
    server = serve(Path(sys.argv[1]), Path(sys.argv[2]))
    print(server.server_port, flush=True)
    try:
        sys.stdin.read()  # until the parent closes our stdin (or dies)
    finally:
        server.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
