"""``normbench bandwidth``: the copy baseline at several working-set sizes and the limits that apply.

The copy is the faster of ``np.copyto`` (single-threaded) and a ``prange`` copy on all Numba threads
(:mod:`normbench.bandwidth`).  A kernel's limit is the copy's bandwidth on its working set, or 2/3 (forward) and
3/5 (backward) of it where x must be read twice (a reduction slab that cannot stay in cache).  The streaming
column is a copy with streaming stores: the headroom above the limit that kernels writing large outputs that way
can use (reported, not the limit).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from normbench import bandwidth
from normbench.cli import positive_float, positive_int

DEFAULT_MIB = (1, 4, 16, 32, 64, 128, 256, 512)


def measure(sizes_mib, repeats: int = 7) -> list[dict]:
    rows = []
    for mib in sizes_mib:
        nbytes = int(mib * 2**20)
        n = max(1, nbytes // 2 // 4)
        src = np.ones(n, np.float32)
        dst = np.zeros_like(src)
        moved = 2 * n * 4
        t_np = bandwidth.median_seconds(lambda: np.copyto(dst, src), repeats)
        t_par = bandwidth.median_seconds(lambda: bandwidth._parallel_copy(dst, src), repeats)
        best = moved / min(t_np, t_par) / 1e9
        rows.append({"working_set_mib": mib, "copyto_gbps": moved / t_np / 1e9, "prange_gbps": moved / t_par / 1e9,
                     "copy_gbps": best, "limit_fwd_two_read_gbps": best * bandwidth.TWO_READ_FORWARD,
                     "limit_bwd_two_read_gbps": best * bandwidth.TWO_READ_BACKWARD,
                     "streaming_copy_gbps": bandwidth.streaming_copy_gbps(nbytes, repeats)})
        del src, dst
    return rows


def peak_bytes(mib) -> int:
    """Memory one size needs at once: the copy's source and destination (the working set) plus the streaming
    copy's own pair, allocated while the first is alive."""
    return 2 * int(mib * 2**20)


def physical_memory_bytes():
    """This machine's physical memory, or None where the OS does not say (no ``os.sysconf``)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def main(argv=None) -> int:
    import numba
    import pandas as pd

    ap = argparse.ArgumentParser(prog="normbench bandwidth", description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=positive_float, action="append", help="working-set size in MiB (repeatable)")
    ap.add_argument("--repeats", type=positive_int, default=7)
    ap.add_argument("--json", action="store_true", help="print JSON records instead of a table")
    args = ap.parse_args(argv)
    sizes = args.mib or DEFAULT_MIB
    memory = physical_memory_bytes()
    too_big = [mib for mib in sizes if memory is not None and peak_bytes(mib) > memory]
    if too_big:
        ap.error(f"--mib {too_big[0]:g}: needs {peak_bytes(too_big[0]) / 2**20:.0f} MiB of memory (the working set "
                 f"twice); expected at most {memory // 2 // 2**20} MiB on this machine ({memory / 2**30:.1f} GiB)")
    df = pd.DataFrame(measure(sizes, args.repeats))
    if args.json:
        print(df.to_json(orient="records", indent=1))
        return 0
    print(f"copy baseline ({numba.get_num_threads()} Numba threads; GB/s counts bytes read + written)\n")
    print(df.to_markdown(index=False, floatfmt=".1f"))
    print("\nlimits: a kernel whose reduction slab stays in cache is judged against the copy; where x must be read "
          f"twice the limit is {bandwidth.TWO_READ_FORWARD:.3g} x copy forward and "
          f"{bandwidth.TWO_READ_BACKWARD:.3g} x copy backward. Headline figures use working sets >= 128 MiB. "
          "streaming_copy_gbps: a copy with streaming stores (no read of each destination line), the headroom "
          "that kernels writing large outputs that way use: they can exceed 100% of their limit.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
