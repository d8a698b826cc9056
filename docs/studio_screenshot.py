"""Regenerate docs/studio.png: `generate.py studio` on a snapshot, photographed by headless Chromium.

    python docs/studio_screenshot.py --network training-runs/00000-smoke-.../network-snapshot-000002.000.pt

Serves the studio on a free localhost port (CPU, nothing saved: --outdir is a temporary folder), waits for the page,
takes a 1280 x 1100 screenshot with the same Chromium settings as tests/generation/test_studio.py (local traffic
only, a fresh profile, no background services) and stops the server. Needs the `studio` extra and Chromium
(Debian: apt-get install chromium). The page shows the snapshot path as given, so pass it relative to the repository.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def screenshot(url: str, path: str, width: int, height: int, timeout: float = 120) -> None:
    """Headless Chromium screenshot of url: local traffic only, a fresh profile, no background services."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("chromium is not installed (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={profile}", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                        "--hide-scrollbars", "--force-device-scale-factor=1", f"--window-size={width},{height}",
                        "--virtual-time-budget=15000", f"--screenshot={os.path.abspath(path)}", url],
                       check=True, capture_output=True, timeout=timeout)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", required=True, help="network snapshot shown in the page")
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "studio.png"), help="PNG to write")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1100)
    args = parser.parse_args()

    port = free_port()
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False")
    with tempfile.TemporaryDirectory() as outdir:
        server = subprocess.Popen([sys.executable, os.path.join(ROOT, "generate.py"), "studio", "--network",
                                   args.network, "--outdir", outdir, "--port", str(port), "--device", "cpu"],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
        try:
            deadline = time.time() + 180
            while True:
                if server.poll() is not None:
                    sys.exit(f"the studio exited: {server.stdout.read()}")
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1):
                        break
                except OSError:
                    if time.time() > deadline:
                        sys.exit("the studio did not start within 180 s")
                    time.sleep(0.5)
            screenshot(f"http://127.0.0.1:{port}/", args.out, args.width, args.height)
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
