#!/usr/bin/env bash
# The recheck runs behind docs/reliability.md's mutation tables: each group of a target's functions
# against the few fast tests that check those functions against an independent reference.
#
#   tools/mutation.sh TARGET --generate-only && tools/mutation/groups.sh TARGET [GROUP ...]
#
# Logs go to .mutation/TARGET/recheck-GROUP.log (one line per mutant, then "K of N killed").
# SAMPLE=N (default: every mutant) checks a fixed sample of N per group (recheck.py --sample).
# RESUME=1 keeps the group's log and checks only the mutants it does not report yet (recheck.py --done).
set -uo pipefail
set -f  # the mutant globs are recheck.py's, not the shell's
root="$(cd "$(dirname "$0")/../.." && pwd)"
target="${1:?usage: tools/mutation/groups.sh autodiff|lower|emit|printers [GROUP ...]}"
shift
vjp="tests/test_vjp.py::test_vjp_numpy_every_seed tests/test_vjp.py::test_vjp_numpy_zoo"
declare -A glob tests kexpr
case "$target" in
  autodiff)
    m=rnncomp.autodiff
    glob[seeds]="$m.x_unrolled__* $m.x_carry_key__* $m.x_cotangent_key__*"
    tests[seeds]="$vjp tests/test_zoo.py::test_rolled_equals_unrolled"
    glob[step]="$m.x_backward_step__*"
    tests[step]="$vjp tests/test_hand_bptt.py tests/test_zoo.py::test_rolled_equals_unrolled"
    glob[walk]="$m.xǁ_Ctxǁ* $m.x_adjoint_name__* $m.x__active__* $m.x_reverse__*"
    tests[walk]="tests/test_vjp_rules.py $vjp tests/test_hand_bptt.py tests/test_custom_cells.py"
    glob[rules]="$m.x__ew_partials__* $m.x__vjp_* $m.x__transpose_terms__*"
    tests[rules]="tests/test_vjp_rules.py $vjp tests/test_custom_cells.py tests/test_weight_ops.py"
    glob[derivatives]="rnncomp.derivatives.*"
    tests[derivatives]="tests/test_kinks.py tests/test_custom_cells.py tests/test_vjp_rules.py tests/test_errors.py"
    ;;
  lower)  # a wrong forward passes finite differences: hand BPTT and the printed equations check it alone
    m=rnncomp.lower
    glob[lower]="$m.*"
    tests[lower]="tests/test_lower_paths.py tests/test_hand_bptt.py tests/test_printing.py tests/test_custom_cells.py
                  tests/test_zoo.py tests/test_errors.py tests/test_matrix_states.py tests/test_weight_ops.py"
    # every backend runs the one lowered program, so a backend against the NumPy oracle cannot see
    # a wrong lowering: those tests only cost a native compile each (a survivor: minutes, not 15 s)
    kexpr[lower]="not native and not ptx and not cuda"
    ;;
  emit)  # native against the NumPy oracle (each test compiles: a sample)
    glob[emit]="rnncomp.backends.native_emit.*"
    tests[emit]="tests/test_native_emit.py
                 tests/test_native.py::test_custom_cells_match_oracle tests/test_native.py::test_odd_sizes_masks_and_states
                 tests/test_native.py::test_zoo_matches_oracle tests/test_native.py::test_passes_on_and_off_agree
                 tests/test_matrix_states.py::test_native_matches_the_oracle"
    ;;
  printers)  # the NumPy printer and per-op code; the LLVM expression printer (native and PTX)
    m=rnncomp.backends.numpy
    glob[numpy]="$m.xǁ_Printerǁ* $m.x__erf__* $m.x__ew__* $m.x__matvec__* $m.x__pad__* $m.x__lse__* $m.x__smatvec__*
                 $m.x__mbcast__* $m.x_run_program__* $m.x_accumulate_grads__*"
    tests[numpy]="tests/test_hand_bptt.py tests/test_vjp_rules.py tests/test_custom_cells.py tests/test_kinks.py
                  tests/test_matrix_states.py"
    glob[llvm]="rnncomp.backends.llvm.exprgen.*"
    tests[llvm]="tests/llvm/test_exprgen.py tests/test_native.py::test_custom_cells_match_oracle
                 tests/test_native.py::test_integer_and_half_powers_match_oracle
                 tests/test_native.py::test_piecewise_on_equalities_matches_oracle
                 tests/test_native.py::test_a_product_of_reciprocals_matches_oracle tests/llvm/test_vecmath.py
                 tests/test_kinks.py"
    ;;
  *) echo "no groups for $target" >&2; exit 2 ;;
esac
groups=("$@")
[ ${#groups[@]} -eq 0 ] && groups=("${!glob[@]}")
for g in "${groups[@]}"; do
  log="$root/.mutation/$target/recheck-$g.log"
  # shellcheck disable=SC2086
  [ -n "${RESUME:-}" ] || rm -f "$log"
  nice -n 10 python "$root/tools/mutation/recheck.py" ${SAMPLE:+--sample "$SAMPLE"} ${RESUME:+--done "$log"} \
    "$target" "${glob[$g]}" ${tests[$g]} ${kexpr[$g]:+-k "${kexpr[$g]}"} \
    2>&1 | grep --line-buffered -E ': (killed|SURVIVED)|^a sample|already checked|killed$' >> "$log"
  echo "$g: $(grep -c ': killed' "$log") killed, $(grep -c SURVIVED "$log") survived"
done
