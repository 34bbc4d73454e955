"""asv ``timeraw_*``: the cost of a first call, in a fresh process, for the smallest case of each variant:

* ``cold``: ``import normbench`` + the first forward and backward with an empty Numba cache (JIT compile);
* ``warm``: the same with the on-disk cache populated (what every later session pays).
"""
import os
import shutil
import subprocess
import sys
import tempfile

from normbench import registry

from . import _harness
from . import cases as _cases

VARIANTS = list(registry.VARIANTS)

_CALL = """
import numpy as np
from normbench import registry
spec = registry.VARIANTS[{variant!r}]
inputs = spec.make_inputs({shape!r}, np.dtype("float32"), np.random.default_rng(0), **{params!r})
out = spec.run_forward(inputs, backend="cpu")
spec.run_backward(inputs, out, np.ones_like(inputs["x"]), backend="cpu")
"""


def _code(variant):
    case = min((c for c in _cases.cases(variants=[variant])), key=lambda c: c.x_bytes())
    return _CALL.format(variant=variant, shape=case.shape, params=dict(case.params))


class FirstCall:
    params = [VARIANTS]
    param_names = ["variant"]
    number = 1
    repeat = 1
    timeout = 600

    def setup(self, variant):
        _harness.require_backend(variant, "cpu")
        self.warm_dir = os.path.join(tempfile.gettempdir(), f"normbench-asv-numba-cache-{os.getpid()}")
        # populate the cache the warm benchmark reads (outside any timing)
        env = dict(os.environ, NUMBA_CACHE_DIR=self.warm_dir)
        subprocess.run([sys.executable, "-c", "import normbench\n" + _code(variant)], env=env, check=True)

    def teardown(self, variant):
        shutil.rmtree(self.warm_dir, ignore_errors=True)

    def timeraw_cold(self, variant):
        # an empty cache of the timed process's own, removed when that process exits (after the timing)
        setup = ("import atexit, os, shutil, tempfile\n"
                 "os.environ['NUMBA_CACHE_DIR'] = tempfile.mkdtemp(prefix='normbench-cold-')\n"
                 "atexit.register(shutil.rmtree, os.environ['NUMBA_CACHE_DIR'], True)\n")
        return "import normbench\n" + _code(variant), setup

    def timeraw_warm(self, variant):
        setup = f"import os\nos.environ['NUMBA_CACHE_DIR'] = {self.warm_dir!r}\n"
        return "import normbench\n" + _code(variant), setup
