#!/usr/bin/env bash
# Mutation testing (issue #22): mutmut over one target's source with a fast subset of the CI tests.
#
#   tools/mutation.sh TARGET [MUTANT_GLOB ...]     TARGET: autodiff | emit | lower | printers
#   tools/mutation.sh TARGET --generate-only        write the mutants, run no test (then recheck.py)
#
# Needs `pip install '.[mutation]'` (mutmut 3).  Works in .mutation/TARGET/ (a copy of rnncomp/
# and tests/ plus the generated setup.cfg): the repository's own pytest and CI never see
# mutmut's configuration.  Runs niced with one worker (the machine is shared).  Prints the
# counts per status and the surviving mutants; `cd .mutation/TARGET && mutmut show NAME`
# shows one as a diff.  A second run reuses mutmut's results (delete .mutation/TARGET to start over).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
target="${1:?usage: tools/mutation.sh autodiff|emit|lower|printers [MUTANT_GLOB ...]}"
shift

# the fast subsets: tests that exercise the target against an independent reference
# (hand-written BPTT, central differences, the NumPy oracle), without the slow long profiles
numpy_only='not teacher_forcing and not native and not ptx and not cuda'
grad_tests="tests/test_hand_bptt.py tests/test_zoo.py tests/test_custom_cells.py tests/test_random_cells.py
            tests/test_graph.py tests/test_names.py"
case "$target" in
  autodiff)
    files="rnncomp/autodiff.py rnncomp/derivatives.py"
    tests="$grad_tests tests/test_kinks.py tests/test_weight_ops.py tests/test_vjp_rules.py"
    kexpr="$numpy_only" ;;
  emit)
    files="rnncomp/backends/native_emit.py"
    tests="tests/test_native.py tests/llvm/test_vecmath.py"
    kexpr="not thread and not cache" ;;
  lower)
    files="rnncomp/lower.py"
    tests="$grad_tests tests/test_errors.py tests/test_printing.py"
    kexpr="$numpy_only" ;;
  printers)
    files="rnncomp/backends/llvm/exprgen.py rnncomp/backends/numpy.py"
    tests="tests/test_custom_cells.py tests/test_kinks.py tests/test_native.py tests/llvm/test_vecmath.py"
    kexpr="not thread and not cache and not ptx and not cuda" ;;
  *) echo "unknown target $target" >&2; exit 2 ;;
esac

work="$root/.mutation/$target"
mkdir -p "$work"
# a fresh copy of the sources and tests (mutmut keeps its results in $work/mutants)
rm -rf "$work/rnncomp" "$work/tests"
(cd "$root" && git ls-files -z rnncomp tests | xargs -0 cp --parents -t "$work")
cp "$root/tools/mutation/cache_plugin.py" "$work/mutation_cache_plugin.py"
{
  echo "[mutmut]"
  echo "source_paths = rnncomp"
  echo "only_mutate ="; for f in $files; do echo "    $f"; done
  echo "also_copy ="; echo "    mutation_cache_plugin.py"
  echo "pytest_add_cli_args ="; echo "    -p"; echo "    mutation_cache_plugin"; echo "    -p"; echo "    no:cacheprovider"
  echo "    -p"; echo "    no:xdist"
  echo "pytest_add_cli_args_test_selection ="; for t in $tests; do echo "    $t"; done
  echo "    -k"; echo "    $kexpr"
  # each mutant runs in a fresh fork of a server that only collected the tests (no test ran): no
  # lru_cache (autodiff.partials, numpy.ew_function) holds an unmutated result (checked: empty after collection)
  echo "process_isolation = forkserver"
  echo "forkserver_warmup = collect"
  echo "timeout_multiplier = 5.0"
  echo "timeout_constant = 30.0"
} > "$work/setup.cfg"

cd "$work"
if [ "${1:-}" = "--generate-only" ]; then
  nice -n 10 python "$root/tools/mutation/generate.py"
  python - <<'PY'
import json, pathlib
n = sum(len(json.loads(m.read_text())["exit_code_by_key"]) for m in pathlib.Path("mutants").rglob("*.py.meta"))
print(f"{n} mutants in mutants/")
PY
  exit 0
fi
nice -n 10 mutmut run --max-children 1 "$@" || true
mutmut results --all true > results.txt 2>&1 || true
echo "== $target: $files"
awk -F': ' 'NF == 2 {n[$2]++} END {for (s in n) printf "  %-12s %d\n", s, n[s]}' results.txt | sort
grep -E ': (survived|no tests|timeout|suspicious)$' results.txt || true
