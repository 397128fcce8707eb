"""Pack QM9 (qm9pack's CSVs) into one compressed .npz of flat arrays for denoiser training (fast to load; carried to
the device machine, which has no qm9pack).

    python scripts/pack_qm9.py build/qm9.npz [--float32]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from atomscreen.data.qm9 import read_qm9
from atomscreen.diffusion.data import from_atoms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output")
    parser.add_argument("--float32", action="store_true", help="positions as float32 (half the size)")
    args = parser.parse_args()
    started = time.perf_counter()
    data = from_atoms(read_qm9())
    positions = data.positions.astype(np.float32 if args.float32 else np.float64)
    np.savez_compressed(args.output, numbers=data.numbers.astype(np.int8), positions=positions,
                        sizes=data.sizes.astype(np.int8), ids=data.ids.astype(np.int32))
    print(f"{len(data)} molecules, {len(data.numbers)} atoms -> {args.output} "
          f"({time.perf_counter() - started:.0f} s; sha256 {data.sha256()[:12]} as float64)")


if __name__ == "__main__":
    main()
