"""A tiny worker for envkit's service examples: polls $API_URL/health and writes a heartbeat.

``worker.py --check`` is its health check: the heartbeat file in the working directory is
fresh (written within the last 5 seconds).
"""

from __future__ import annotations

import os
import sys
import time
import urllib.request

HEARTBEAT = "heartbeat"


def main() -> None:
    url = os.environ["API_URL"] + "/health"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    print(f"worker: polling {url}", flush=True)
    while True:
        try:
            with opener.open(url, timeout=2) as response:
                if response.status == 200:
                    with open(HEARTBEAT, "w", encoding="utf-8") as fh:
                        fh.write(str(time.time()))
        except OSError as exc:
            print(f"worker: api not reachable: {exc}", flush=True)
        time.sleep(0.2)


def check() -> int:
    try:
        age = time.time() - os.stat(HEARTBEAT).st_mtime
    except OSError:
        return 1
    return 0 if age < 5 else 1


if __name__ == "__main__":
    sys.exit(check() if sys.argv[1:] == ["--check"] else main())
