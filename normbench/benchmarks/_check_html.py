"""``make check-html``: serve the published asv site (results/html) over HTTP, load a benchmark graph page in
headless Chromium, confirm that the graph rendered (asv draws with flot: a ``flot-base`` canvas and tick
labels appear once the data loaded) and save a screenshot under results/.

Outside ``make test``: it needs Debian's ``chromium`` package.  Usage:
``python -m normbench.benchmarks._check_html [--html results/html] [--bench NAME] [--out results/asv-html.png]``
"""
from __future__ import annotations

import argparse
import functools
import http.server
import shutil
import subprocess
import sys
import threading
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--html", default="results/html")
    ap.add_argument("--bench", default="bench_kernels.Forward.track_fraction_of_limit")
    ap.add_argument("--out", default="results/asv-html.png")
    args = ap.parse_args(argv)
    html = Path(args.html)
    if not (html / "index.html").exists():
        print(f"check-html: {html}/index.html missing: run `asv publish` first", file=sys.stderr)
        return 2
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        print("check-html: chromium not found (apt-get install chromium)", file=sys.stderr)
        return 2
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(html))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/#{args.bench}"
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=15000",
              "--window-size=1400,900"]
    try:
        dom = subprocess.run(common + ["--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
        subprocess.run(common + [f"--screenshot={Path(args.out).resolve()}", url], capture_output=True, timeout=120)
    finally:
        server.shutdown()
    rendered = "flot-base" in dom and "flot-tick-label" in dom
    shot = Path(args.out)
    print(f"check-html: {url}: graph {'rendered' if rendered else 'NOT rendered'}; screenshot "
          f"{shot if shot.exists() else '(none)'}")
    return 0 if rendered and shot.exists() else 1


if __name__ == "__main__":
    sys.exit(main())
