"""Time cellflow.datasets.simulate_perturbseq at 20,000 cells x 1,000 genes (best of 3).

Run: ``.venv/bin/python benchmarks/simulate_speed.py [--cells N] [--genes G] [--repeats R]``
"""

import argparse
import time

from cellflow.datasets import simulate_perturbseq


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=20_000)
    parser.add_argument("--genes", type=int, default=1_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    timings = []
    for repeat in range(args.repeats):
        start = time.perf_counter()
        adata = simulate_perturbseq(args.cells, n_genes=args.genes, seed=repeat)
        timings.append(time.perf_counter() - start)
    density = adata.X.nnz / (adata.n_obs * adata.n_vars)
    print(f"simulate_perturbseq {args.cells} cells x {args.genes} genes: best {min(timings):.2f} s of {args.repeats}")
    print(
        f"  all runs: {', '.join(f'{t:.2f}' for t in timings)} s; {adata.obs['perturbation'].nunique()} perturbations"
    )
    print(f"  non-zero fraction {density:.2f}; mean counts per cell {float(adata.X.sum(axis=1).mean()):.0f}")


if __name__ == "__main__":
    main()
