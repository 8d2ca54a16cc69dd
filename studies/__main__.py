"""``python -m studies``: list the studies, one line each."""
from __future__ import annotations

import sys

from studies._common import STUDIES

USAGE = "usage: python -m studies [--help]\n       python -m studies.<name> [--help] [options]"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    unknown = [a for a in argv if a not in ("-h", "--help")]
    print(USAGE)
    print("\nstudies (each takes --help, --quick, --backend cpu|gpu, --out DIR, --seed):")
    width = max(len(n) for n in STUDIES)
    for name, line in STUDIES.items():
        print(f"  {name:<{width}}  {line}")
    print("\nexample: python -m studies.convergence --quick --out results/convergence")
    if unknown:
        print(f"\nerror: unrecognised arguments: {' '.join(unknown)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
