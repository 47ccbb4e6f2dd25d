"""The node's TLS context (serve --tls-cert, --tls-key): wss:// and https://
on the node's own port, for a deployment with no TLS-terminating proxy.

Read once at start, so a missing, unreadable or mismatched file stops the
node with one line that names it rather than at the first client.
"""

from __future__ import annotations

import ssl


class TLSConfigError(ValueError):
    """The certificate or key cannot be used; the message names the file."""


def from_settings(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """The context for --tls-cert and --tls-key, or None with neither."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        given, missing = ("--tls-cert", "--tls-key") if cert is not None else ("--tls-key", "--tls-cert")
        raise TLSConfigError(f"{given} needs {missing} too (both, or neither for plain ws:// and http://)")
    return server_context(cert, key)


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context with the certificate chain in `cert` and its private
    key in `key` (PEM). Raises TLSConfigError."""
    for flag, path in (("--tls-cert", cert), ("--tls-key", key)):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise TLSConfigError(f"{flag} {path}: cannot read it ({exc.strerror or exc})") from None
    # The defaults for a server: TLS 1.2 or later, no compression, the
    # library's current cipher choice.
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.set_alpn_protocols(["http/1.1"])

    def encrypted() -> str:
        # Without this OpenSSL would ask for a pass phrase on the terminal.
        raise TLSConfigError(f"--tls-key {key} is encrypted: give the node an unencrypted key (readable only by it)")

    try:
        ctx.load_cert_chain(cert, key, password=encrypted)
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise TLSConfigError(
                f"--tls-key {key} is not the private key of the certificate in --tls-cert {cert}"
            ) from None
        raise TLSConfigError(
            f"--tls-cert {cert} and --tls-key {key} must be a PEM certificate chain and its unencrypted PEM private "
            f"key ({exc.reason or exc})"
        ) from None
    return ctx
