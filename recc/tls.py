"""Per-cluster TLS: a certificate authority and a certificate for the cluster's processes.

Every cluster gets its own CA, so a certificate from one cluster opens no other. The scheduler
requires client certificates (mutual TLS), so only holders of this cluster's files connect.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from distributed.security import Security

_VALIDITY = dt.timedelta(days=30)


@dataclass(frozen=True)
class TLSFiles:
    """Paths of a cluster's CA certificate, certificate and private key (PEM)."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    @classmethod
    def in_dir(cls, directory: Path) -> TLSFiles:
        """The conventional file names inside ``directory``."""
        return cls(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")

    def security(self) -> Security:
        """A distributed ``Security`` that requires TLS with this cluster's certificates."""
        return Security(
            tls_ca_file=str(self.ca_file),
            tls_client_cert=str(self.cert_file),
            tls_client_key=str(self.key_file),
            tls_scheduler_cert=str(self.cert_file),
            tls_scheduler_key=str(self.key_file),
            tls_worker_cert=str(self.cert_file),
            tls_worker_key=str(self.key_file),
            require_encryption=True,
        )

    def pem(self) -> tuple[str, str, str]:
        """(CA certificate, certificate, key) as PEM text, e.g. for a Kubernetes Secret."""
        return self.ca_file.read_text(), self.cert_file.read_text(), self.key_file.read_text()


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def new_ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new certificate authority: its private key and self-signed certificate."""
    now = dt.datetime.now(dt.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue(
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
    common_name: str,
    hostnames: tuple[str, ...] = (),
    organizations: tuple[str, ...] = (),
) -> tuple[bytes, bytes]:
    """A certificate signed by ``ca`` for server and client use: (certificate, key) as PEM.

    ``hostnames`` become subject alternative names (IP addresses are recognised);
    ``organizations`` are the subject's O= entries (Kubernetes reads them as groups).
    """
    ca_key, ca_cert = ca
    now = dt.datetime.now(dt.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
    subject.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(subject))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    alt_names: list[x509.GeneralName] = []
    for host in hostnames:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt_names.append(x509.DNSName(host))
    if alt_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def pem(cert: x509.Certificate) -> bytes:
    """A certificate as PEM."""
    return cert.public_bytes(serialization.Encoding.PEM)


def write_private(path: Path, data: bytes) -> None:
    """Write a private key (or any secret) created 0600 from the start: never readable by
    others, even briefly."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def create_cluster_tls(
    cluster: str, directory: Path, hostnames: tuple[str, ...] = ("localhost",)
) -> TLSFiles:
    """Make a CA and a certificate for ``cluster`` in ``directory`` (mode 0700, keys 0600).

    ``hostnames`` become subject alternative names (IP addresses are recognised), so clients
    that check host names accept the scheduler's address.
    """
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    ca = new_ca(f"{cluster} CA")
    cert, key = issue(ca, cluster, (*hostnames, "127.0.0.1"))
    files = TLSFiles.in_dir(directory)
    files.ca_file.write_bytes(pem(ca[1]))
    files.cert_file.write_bytes(cert)
    write_private(files.key_file, key)
    return files


def write_tls(directory: Path, ca_cert: str, cert: str, key: str) -> TLSFiles:
    """Store TLS material fetched from elsewhere (e.g. a Kubernetes Secret) for a client."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    files = TLSFiles.in_dir(directory)
    files.ca_file.write_text(ca_cert)
    files.cert_file.write_text(cert)
    write_private(files.key_file, key.encode())
    return files
