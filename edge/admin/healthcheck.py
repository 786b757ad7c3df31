"""
The container health check: ``python -m edge.admin.healthcheck [URL]``.

Exits 0 when edge's ``/healthz`` answers 200 within the timeout, 1
otherwise, printing one line either way (Docker keeps it in the health log).
The URL defaults to ``$EDGE_HEALTHCHECK_URL``, else the default admin address.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

DEFAULT_URL = "http://127.0.0.1:8081/healthz"


def check(url: str, timeout: float = 3.0) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200, f"{url}: {response.status}"
    except urllib.error.HTTPError as e:
        return False, f"{url}: {e.code}"
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        return False, f"{url}: {reason}"


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m edge.admin.healthcheck",
        description="Exit 0 when edge's /healthz answers 200, 1 otherwise (the image's HEALTHCHECK).",
    )
    parser.add_argument(
        "url", nargs="?",
        help=f"the /healthz URL (default: $EDGE_HEALTHCHECK_URL, else {DEFAULT_URL})",
    )
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait (default 3)")
    args = parser.parse_args(argv[1:])
    url = args.url or os.environ.get("EDGE_HEALTHCHECK_URL") or DEFAULT_URL
    if not url.startswith(("http://", "https://")):
        print(f"unhealthy: {url}: expected an http:// URL")
        return 1
    ok, message = check(url, args.timeout)
    print(("healthy: " if ok else "unhealthy: ") + message)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
