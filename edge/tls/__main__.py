"""
``python -m edge.tls init-ca DIR``: create the internal CA once, for every instance.

edge runs as a global service on several managers; each instance must sign
with the same root, so the root and key are made here once and handed to all
instances (Docker secrets), instead of each instance making its own.
"""

from __future__ import annotations

import argparse
import os
import sys

from cryptography.hazmat.primitives import hashes

from edge.tls.ca import CA_CERT_FILE, CA_KEY_FILE, create_ca, write_ca


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge.tls")
    commands = parser.add_subparsers(dest="command", required=True)
    init = commands.add_parser(
        "init-ca",
        help="create the internal CA (root certificate and key) in DIR",
    )
    init.add_argument("directory", metavar="DIR")
    init.add_argument(
        "--name", default="edge internal CA", help="the root's common name"
    )
    args = parser.parse_args(argv)

    cert_path = os.path.join(args.directory, CA_CERT_FILE)
    key_path = os.path.join(args.directory, CA_KEY_FILE)
    for path in (cert_path, key_path):
        if os.path.exists(path):
            print(f"edge.tls: {path} exists; not overwriting a CA", file=sys.stderr)
            return 1
    ca = create_ca(args.name)
    try:
        write_ca(ca, cert_path, key_path)
    except OSError as e:
        print(f"edge.tls: cannot write {e.filename}: {e.strerror}", file=sys.stderr)
        return 1
    fingerprint = ca.certificate.fingerprint(hashes.SHA256()).hex(":")
    print(f"Created {cert_path} (give to clients to trust) and {key_path} (keep secret).")
    print(f"Root SHA-256 fingerprint: {fingerprint.upper()}")
    print("Store both as Docker secrets and set in every instance's config:")
    print(f'  [tls]\n  internal_ca = true\n  ca_certificate = "/run/secrets/{CA_CERT_FILE}"'
          f'\n  ca_key = "/run/secrets/{CA_KEY_FILE}"')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
