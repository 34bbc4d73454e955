"""``make check-html``: serve the published asv site (results/html) over HTTP, load a benchmark graph page in
headless Chromium, confirm that the graph rendered (asv draws with flot: a ``flot-base`` canvas and tick
labels appear once the data loaded) and save a screenshot under results/.

asv's pages load jQuery, flot, bootstrap, md5 and stupidtable from CDNs; machines here reach no CDN, so the check
serves a copy of the site whose ``<script>`` tags point at Debian's packaged copies (``libjs-jquery``,
``libjs-jquery-flot``, ``libjs-bootstrap``, ``node-blueimp-md5``, ``libjs-jquery-stupidtable``); results/html itself
is left as asv wrote it.  Outside ``make test``: it needs Debian's ``chromium`` and those packages.  Usage:
``python -m normbench.benchmarks._check_html [--html results/html] [--bench NAME] [--out results/asv-html.png]``
"""
from __future__ import annotations

import argparse
import functools
import http.server
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

JS = Path("/usr/share/javascript")
#: CDN script (matched by a fragment of its URL) -> local files from Debian's packages, in load order
LOCAL_JS = {
    "jquery-3.3.1": ["jquery/jquery.min.js"],
    "flot/0.8.3/jquery.flot.min.js": ["jquery-flot/jquery.flot.js"],
    "jquery.flot.time": ["jquery-flot/jquery.flot.time.js"],
    "jquery.flot.selection": ["jquery-flot/jquery.flot.selection.js"],
    "jquery.flot.categories": ["jquery-flot/jquery.flot.categories.js"],
    "orderBars": [],  # bar charts only; not packaged
    "stupidtable": ["jquery-stupidtable/stupidtable.min.js"],
    "blueimp-md5": ["blueimp-md5/md5.min.js"],
    "bootstrap.min.js": ["bootstrap/js/bootstrap.min.js"],
}


def localize(html: Path, dest: Path) -> list[str]:
    """Copy the site to ``dest`` with CDN scripts replaced by local copies; return what is missing."""
    shutil.copytree(html, dest, dirs_exist_ok=True)
    missing = []

    def swap(match):
        tag = match.group(0)
        for key, files in LOCAL_JS.items():
            if key in tag:
                out = []
                for f in files:
                    if not (JS / f).exists():
                        missing.append(str(JS / f))
                        continue
                    shutil.copy(JS / f, dest / Path(f).name)
                    out.append(f'<script type="text/javascript" src="{Path(f).name}"></script>')
                return "".join(out)
        return tag

    for page in dest.glob("*.html"):
        text = re.sub(r'<script src="https://[^"]+"[^>]*>\s*</script>', swap, page.read_text())
        css = JS / "bootstrap/css/bootstrap.min.css"
        if css.exists():
            shutil.copy(css, dest / "bootstrap.min.css")
        text = re.sub(r'<link[^>]+href="https://[^"]*bootstrap[^"]*"[^>]*>',
                      '<link rel="stylesheet" href="bootstrap.min.css">' if css.exists() else "", text)
        page.write_text(text)
    return missing


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
    with tempfile.TemporaryDirectory(prefix="normbench-asv-html-") as site:  # the served copy, removed after
        return _check(html, Path(site), browser, args)


def _check(html: Path, site: Path, browser: str, args) -> int:
    missing = localize(html, site)
    if missing:
        print(f"check-html: missing local scripts {missing} (apt-get install libjs-jquery libjs-jquery-flot "
              "libjs-bootstrap node-blueimp-md5 libjs-jquery-stupidtable)", file=sys.stderr)
        return 2

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(site))
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
