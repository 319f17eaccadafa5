"""Certificates and kubeconfigs for a throwaway control plane on 127.0.0.1.

One CA signs the apiserver's serving certificate and every client certificate (the apiserver
trusts it through --client-ca-file), so a client's identity is its certificate's CN (user) and
O (groups). A second, front-proxy CA vouches for the apiserver when it forwards requests to
aggregated or delegating servers (--requestheader-client-ca-file). A separate RSA key pair
signs and verifies ServiceAccount tokens.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# The in-cluster names of the `kubernetes` Service: pods (and kwok-simulated ones) reach the
# apiserver through them, so the serving certificate must cover them as well as 127.0.0.1.
APISERVER_DNS_NAMES = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
_VALIDITY = datetime.timedelta(days=2)


@dataclass(frozen=True)
class ClientCredentials:
    """PEM files of one client certificate (user `user`, groups `groups`)."""

    user: str
    groups: tuple[str, ...]
    cert_file: Path
    key_file: Path


def _write(path: Path, data: bytes, private: bool = False) -> Path:
    path.write_bytes(data)
    if private:
        path.chmod(0o600)
    return path


def _key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


class CertificateAuthority:
    """A self-signed CA (`<stem>.crt`, `<stem>.key`) issuing certificates into `directory`."""

    def __init__(self, directory: Path, common_name: str = "forkrl-test-ca", stem: str = "ca") -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = datetime.datetime.now(datetime.UTC)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.cert_file = _write(directory / f"{stem}.crt", _cert_pem(self._cert))
        self.key_file = _write(directory / f"{stem}.key", _key_pem(self._key), private=True)

    @property
    def cert_pem(self) -> bytes:
        return _cert_pem(self._cert)

    def _issue(
        self,
        stem: str,
        subject: x509.Name,
        usage: x509.ObjectIdentifier,
        sans: list[x509.GeneralName] | None = None,
    ) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_encipherment=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    content_commitment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        cert_file = _write(self.directory / f"{stem}.crt", _cert_pem(cert))
        key_file = _write(self.directory / f"{stem}.key", _key_pem(key), private=True)
        return cert_file, key_file

    def issue_serving(self, stem: str, ips: list[str], dns_names: tuple[str, ...] = ()) -> tuple[Path, Path]:
        """A TLS server certificate valid for `ips` and `dns_names`; returns (cert, key) paths."""
        sans: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        sans += [x509.DNSName(name) for name in dns_names]
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, stem)])
        return self._issue(stem, subject, ExtendedKeyUsageOID.SERVER_AUTH, sans)

    def issue_client(self, stem: str, user: str, groups: tuple[str, ...] = ()) -> ClientCredentials:
        """A client certificate the apiserver maps to `user` in `groups` (CN and O attributes)."""
        attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, group) for group in groups]
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, user))
        cert_file, key_file = self._issue(stem, x509.Name(attributes), ExtendedKeyUsageOID.CLIENT_AUTH)
        return ClientCredentials(user=user, groups=groups, cert_file=cert_file, key_file=key_file)


def write_service_account_keys(directory: Path) -> tuple[Path, Path]:
    """An RSA key pair for ServiceAccount tokens; returns (private key, public key) paths."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = _write(directory / "sa.key", _key_pem(key), private=True)
    public = _write(
        directory / "sa.pub",
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
    )
    return private, public


def write_kubeconfig(
    path: Path,
    server: str,
    ca_file: Path,
    client: ClientCredentials | None = None,
    token: str | None = None,
    user: str = "",
    context: str = "forkrl-test",
) -> Path:
    """A kubeconfig with one cluster, one user (a client certificate or a bearer token) and one context.

    File references (not embedded data) keep it short; the files live beside it in the tmp dir.
    """
    if (client is None) == (token is None):
        raise ValueError("write_kubeconfig needs exactly one of client (certificate) or token")
    if client is not None:
        user = client.user
        credentials = {"client-certificate": str(client.cert_file), "client-key": str(client.key_file)}
    else:
        credentials = {"token": token}
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": context, "cluster": {"server": server, "certificate-authority": str(ca_file)}}],
        "users": [{"name": user or "token-user", "user": credentials}],
        "contexts": [{"name": context, "context": {"cluster": context, "user": user or "token-user"}}],
        "current-context": context,
        "preferences": {},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path
