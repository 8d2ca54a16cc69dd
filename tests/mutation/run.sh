#!/usr/bin/env bash
# Mutation testing of the solvers, the grid solves and kernels, and the input checks (on demand,
# not in CI).  See docs/mutation.md.
#
#   bash tests/mutation/run.sh                 # every target below
#   bash tests/mutation/run.sh cg potts        # some targets (names of tests/mutation/*.toml)
#   MUTATION_SURVIVORS=1 bash tests/mutation/run.sh cg
#                                              # only the survivors of the last run of cg, again
#   MUTATION_RESUME=1 bash tests/mutation/run.sh cg    # the mutants an interrupted run left
#
# Needs `pip install cosmic-ray` (8.x).  Each target is a Cosmic Ray config: the module, the
# functions in scope and the fast test selection that must kill its mutants.  The run works on a
# copy of the checkout (the mutants are written into files; the checkout is never touched), with
# Numba's JIT off: a mutant of a compiled kernel runs as Python source, so no kernel is
# recompiled per mutant (the compiled kernels are checked against the same tests by the suite).
# Results: $MUTATION_OUT (default build/mutation/): one session database and one report per target.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
OUT="${MUTATION_OUT:-$ROOT/build/mutation}"
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
    TARGETS=(options validation cg operator potts kernel redblack)
fi
mkdir -p "$OUT"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gcrflinalg-mutation.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
trap 'exit 143' INT TERM  # the copy is removed on an interrupted run too
# the checkout as git sees it (tracked and untracked, not ignored), uncommitted changes included
(cd "$ROOT" && git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$WORK")
cd "$WORK"
export PYTHONPATH="$WORK" NUMBA_DISABLE_JIT=1 PYTHONDONTWRITEBYTECODE=1 HYPOTHESIS_PROFILE=ci MPLBACKEND=Agg
for target in "${TARGETS[@]}"; do
    config="tests/mutation/$target.toml"
    [ -f "$config" ] || { echo "no target $target ($config)" >&2; exit 2; }
    session="$OUT/$target.sqlite"
    start=$(date +%s)
    if [ -n "${MUTATION_SURVIVORS:-}" ] && [ -f "$session" ]; then
        python tests/mutation/cr.py survivors "$session"
    elif [ -n "${MUTATION_RESUME:-}" ] && [ -f "$session" ]; then
        echo "$session: resumed"
    else
        python tests/mutation/cr.py init "$config" "$session"
    fi
    # the unmutated code must pass the selection, or every mutant would count as killed
    eval "$(python -c "import tomllib,sys; print(tomllib.load(open(sys.argv[1],'rb'))['cosmic-ray']['test-command'])" "$config")" >/dev/null \
        || { echo "$target: the test selection fails on the unmutated code" >&2; exit 1; }
    python tests/mutation/cr.py exec "$config" "$session"
    python tests/mutation/cr.py report "$session" | tee "$OUT/$target.txt"
    echo "$target: $(( $(date +%s) - start )) s" | tee -a "$OUT/$target.txt"
done
