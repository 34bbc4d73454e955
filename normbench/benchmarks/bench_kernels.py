"""asv: time, bandwidth fraction and peak memory of every kernel, per case of the quick matrix and backend.

Kernels are compiled in ``setup`` (never inside a timed region); GPU cases synchronise inside the timed region
and are skipped (``NotImplementedError``) on a machine without a GPU, as are variants or backends that the
installed commit lacks.  ``track_*`` report the achieved bandwidth as a fraction of a same-size copy measured in
the same process: a ratio that can be compared across commits and machines, unlike absolute times.
"""
from normbench import bandwidth

from . import _harness
from . import cases as _cases

CASES = _harness.case_names()
BACKENDS = ["cpu", "cuda"]
#: peak memory only where it is large enough to matter
BIG_CASES = [c.name for c in _cases.cases() if c.x_bytes() * 2 >= _cases.BIG_BYTES]


class _Kernel:
    params = (CASES, BACKENDS)
    param_names = ["case", "backend"]
    pass_ = "forward"
    # one call of a large case takes 5-50 ms: a few samples, one process (setup builds 100+ MiB of inputs)
    number = 1
    repeat = (3, 10, 5.0)
    rounds = 1
    warmup_time = 0.0
    timeout = 300

    def setup(self, case, backend):
        self.run = _harness.Pass(_cases.by_name(case), backend, self.pass_)
        self._fractions = {}  # (case, backend) -> the fraction of copy measured on this setup's working set

    def time_pass(self, case, backend):
        self.run()

    def _fraction_of_copy(self, case, backend):
        """One measurement per setup, shared by both track_ methods (the limit's is the copy's / the limit
        factor of the same timing, never a fresh one with its own noise)."""
        key = (case, backend)
        if key not in self._fractions:
            t = bandwidth.median_seconds(self.run, repeats=5, warmup=0)
            if backend == "cuda":
                from normbench.cuda import timing

                copy = timing.device_copy_gbps(self.run.nbytes, repeats=5)
            else:
                copy = bandwidth.copy_gbps(self.run.nbytes, repeats=5)
            self._fractions[key] = (self.run.nbytes / t) / (copy * 1e9)
        return self._fractions[key]

    def track_fraction_of_copy(self, case, backend):
        """Effective bandwidth / the copy's on the same working set (1.0 = copy speed); cuda: the device's copy."""
        return self._fraction_of_copy(case, backend)

    track_fraction_of_copy.unit = "fraction of copy"

    def track_fraction_of_limit(self, case, backend):
        """Fraction of the limit that applies (the copy, or 2/3 / 3/5 of it where x must be read twice)."""
        return self._fraction_of_copy(case, backend) / self.run.case.limit_factor(self.pass_)

    track_fraction_of_limit.unit = "fraction of limit"


class Forward(_Kernel):
    pass_ = "forward"


class Backward(_Kernel):
    pass_ = "backward"


class PeakMem:
    """Peak resident memory of a forward + backward on the large cases (inputs, outputs and statistics)."""

    params = (BIG_CASES, ["cpu"])
    param_names = ["case", "backend"]
    timeout = 300

    def setup(self, case, backend):
        _harness.require_backend(_cases.by_name(case).variant, backend)

    def peakmem_forward_backward(self, case, backend):
        _harness.Pass(_cases.by_name(case), backend, "backward")


def track_numba_threads():
    """The thread count the kernels ran with (machine profiles differ in it: e.g. NUMBA_NUM_THREADS=1)."""
    import numba

    return numba.get_num_threads()


track_numba_threads.unit = "threads"


def track_copy_gbps_256mib():
    """The copy baseline itself on a 256 MiB working set (GB/s, bytes read + written)."""
    return bandwidth.copy_gbps(256 * 2**20, repeats=5)


track_copy_gbps_256mib.unit = "GB/s"
