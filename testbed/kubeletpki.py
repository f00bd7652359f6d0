"""The certificates between the real node's API server and its kubelet, so that
``kubectl logs`` and ``kubectl exec`` are verified both ways, as on a real cluster.

The API server reaches the kubelet (port 10250) for logs, exec and port-forward. Left to
their defaults, the kubelet serves a self-signed certificate nobody checks and answers
anyone on loopback (anonymous auth). With this module:

* `make(directory)` writes one throwaway CA (``ca.crt``), the kubelet's serving pair
  (``kubelet.crt``/``.key``, for ``localhost`` and 127.0.0.1, the address the API server
  dials: the node is registered as ``localhost``) and the API server's kubelet client pair
  (``apiserver-kubelet-client.crt``/``.key``). Keys are private to the owner (0600).
* `KubeletPki.apiserver_args()` are the kube-apiserver flags that make it present the
  client pair and verify the kubelet against the CA; `KubeletPki.kubelet_settings()` the
  KubeletConfiguration fields that make the kubelet serve its pair and accept only clients
  whose certificate the CA signed (anonymous off).
* Both sides must be configured from the same `make`; the CA's key never leaves this
  process (it is not written), so nothing else can ever be signed by it.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=2)
"""Long enough for any test session; a testbed's PKI is made per start."""


@dataclass(frozen=True)
class KubeletPki:
    """Paths of the files `make` wrote."""

    ca: Path
    kubelet_cert: Path
    kubelet_key: Path
    client_cert: Path
    client_key: Path

    def apiserver_args(self) -> tuple[str, ...]:
        """kube-apiserver flags: verify the kubelet, present the client pair."""
        return (f"--kubelet-certificate-authority={self.ca}",
                f"--kubelet-client-certificate={self.client_cert}",
                f"--kubelet-client-key={self.client_key}")

    def kubelet_settings(self) -> dict[str, Any]:
        """KubeletConfiguration fields: serve the pair, accept only the CA's clients."""
        return {"tlsCertFile": str(self.kubelet_cert), "tlsPrivateKeyFile": str(self.kubelet_key),
                "authentication": {"anonymous": {"enabled": False},
                                   "webhook": {"enabled": False},
                                   "x509": {"clientCAFile": str(self.ca)}}}


def _name(common_name: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def _issue(ca_key: ec.EllipticCurvePrivateKey, ca_name: x509.Name, subject: x509.Name,
           usage: x509.ObjectIdentifier, sans: list[x509.GeneralName] | None = None,
           ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + VALIDITY)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(
                   digital_signature=True, key_encipherment=False, content_commitment=False,
                   data_encipherment=False, key_agreement=False, key_cert_sign=False,
                   crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def make(directory: Path) -> KubeletPki:
    """Write a fresh CA certificate and the two pairs into ``directory`` (see the contract)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("sniffer-testbed-kubelet-ca")
    now = datetime.datetime.now(datetime.UTC)
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + VALIDITY)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(
              digital_signature=True, key_encipherment=False, content_commitment=False,
              data_encipherment=False, key_agreement=False, key_cert_sign=True,
              crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    pki = KubeletPki(ca=directory / "ca.crt", kubelet_cert=directory / "kubelet.crt",
                     kubelet_key=directory / "kubelet.key",
                     client_cert=directory / "apiserver-kubelet-client.crt",
                     client_key=directory / "apiserver-kubelet-client.key")
    pki.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    serving, serving_key = _issue(
        ca_key, ca_name, _name("localhost"), ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    pki.kubelet_cert.write_bytes(serving.public_bytes(serialization.Encoding.PEM))
    _write_key(pki.kubelet_key, serving_key)
    # The kubelet authorizes AlwaysAllow once a client is authenticated: the CA, whose
    # only client certificate is this one, is the access control. The name and group are
    # the conventional ones, for a kubelet that would ask the API server (Webhook mode).
    client, client_key = _issue(ca_key, ca_name,
                                _name("kube-apiserver-kubelet-client", "system:masters"),
                                ExtendedKeyUsageOID.CLIENT_AUTH)
    pki.client_cert.write_bytes(client.public_bytes(serialization.Encoding.PEM))
    _write_key(pki.client_key, client_key)
    return pki
