"""Container HEALTHCHECK for the api role: GET /healthz on the local gunicorn (standard library only).

Django answers 400 to a Host header it does not allow, so the request sends `Host: localhost` when
ALLOWED_HOSTS allows it (keep it there: the Kubernetes probes send it too), else its first entry.
"""

import os
import sys
import urllib.request


def probe_host() -> str:
    """`localhost` when ALLOWED_HOSTS allows it, else its first concrete entry."""
    entries = [entry.strip() for entry in os.environ.get("ALLOWED_HOSTS", "localhost").split(",")]
    if "localhost" in entries or "*" in entries:
        return "localhost"
    for entry in entries:
        if entry:
            return "healthcheck" + entry if entry.startswith(".") else entry
    return "localhost"


def main() -> int:
    url = f"http://127.0.0.1:{os.environ.get('PORT', '8000')}/healthz"
    request = urllib.request.Request(url, headers={"Host": probe_host()})
    try:
        with urllib.request.urlopen(request, timeout=4) as response:
            return 0 if response.status == 200 else 1
    except Exception as error:  # any failure is "unhealthy"
        print(f"healthcheck failed: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
