"""``rc.explain(cell, algorithm="rtrl")``: the derived recursion of an online algorithm, printed.

RTRL's is the tangent step (:func:`rnncomp.forward_mode.tangent_step`) as equations; SnAp
adds its pattern (which parameter entries each state keeps) and its recursion per kept entry
as the native executor runs it (:mod:`.fold_text`); UORO shows the one-direction
tangent step it runs and its update; RBP the adjoint fixed point.  The same printer as the
BPTT step (:func:`rnncomp.equations.program_equations`).
"""
from __future__ import annotations

import sympy as sp

from ..errors import CellError
from ..forward_mode import tangent_step
from ..ir import display
from ..equations import program_equations, stored_values
from ..printing import Explanation
from ..show import TextShown

ALGORITHMS = ("bptt", "rtrl", "snap", "uoro", "rbp")


class AlgorithmExplanation(TextShown):
    """The cell's equations and the recursion ``algorithm`` derives from them."""

    def __init__(self, cell, algorithm: str, n: int = 1):
        self.cell, self.algorithm, self.n = cell, algorithm, n

    def _tangent_lines(self, ts) -> list:
        st = self.cell.step
        keep = [k for k in list(ts.out.values()) + [ts.loss] if k is not None]
        eqs, exprs = program_equations(ts.prog, keep, set(self.cell.decls))
        stored = stored_values(st.prog)
        eqs = [(lhs, rhs.xreplace(stored)) for lhs, rhs in eqs]
        lines = [f"  {lhs} = {sp.sstr(rhs)}" for lhs, rhs in eqs]
        used = Explanation(self.cell)._forward_values([r for _, r in eqs])
        if used:
            lines.append("  forward values read above (from the forward step t)")
            lines += [f"    {lhs} = {sp.sstr(rhs)}" for lhs, rhs in used]
        return lines

    def recursion_text(self) -> str:
        st, a = self.cell.step, self.algorithm
        sizes = ", ".join(f"∂{p}: {_size(s)}" for p, s in st.params.items())
        P = sum(_size(s) for s in st.params.values())
        N = sum(st.states.values())
        states = ", ".join(st.states)
        if a in ("rtrl", "snap"):
            ts = tangent_step(st)
            head = "RTRL" if a == "rtrl" else f"SnAp-{self.n}"
            lines = [f"{head} for {st.name!r}: the sensitivities ∂s[t] = ∂s[t]/∂θ of each state s ({states}) "
                     f"carried forward (t = 1 … T; ∂s[0] = 0, or I on a learned s₀)",
                     f"  one direction per parameter entry, P = {P} ({sizes}); per sample {N} × {P} values"]
            lines += self._tangent_lines(ts)
            lines.append("gradient: ∂L/∂θ = Σ_t Σ_batch w[t]·∂ℓ[t]")
            if a == "snap":
                from .pattern import pattern_classes
                m, index = pattern_classes(st, self.n, ts)   # per class of entries: no P × N table
                per_entry = {s: v.sum(axis=1)[index] for s, v in m.items()}   # units each entry reaches
                kept = sum(int(v.sum()) for v in per_entry.values())
                lines.append(f"kept: ∂s[t] ⊙ M{self.n} after every step, M{self.n} = the entries {self.n} step(s) of "
                             f"the cell reach: {kept} of {N * P}")
                for s, v in per_entry.items():
                    lines.append(f"  {s}: " + ", ".join(f"{p} {int(v[o:o + _size(sh)].sum())}"
                                                        for p, sh, o in _blocks(st)))
                from .fold_text import folded_lines
                lines += folded_lines(self.cell, self.n)
            return display("\n".join(lines))
        if a == "uoro":
            ts = tangent_step(st, params=())
            lines = [f"UORO for {st.name!r}: ∂s[t]/∂θ ≈ s̃[t]·θ̃[t]ᵀ per sample, unbiased "
                     f"(s̃: {N} values, θ̃: {P})",
                     "  s̃ moves by the tangent step along one direction (∂s[t-1] = s̃[t-1], no ∂θ):"]
            lines += self._tangent_lines(ts)
            lines += ["  ν = random signs (one per state unit);  ρ₀ = √(‖θ̃‖/‖∂s[t]‖), ρ₁ = √(‖νᵀ∂s[t]/∂θ‖/‖ν‖)",
                      "  s̃[t] = ρ₀·∂s[t] + ρ₁·ν;   θ̃[t] = θ̃[t-1]/ρ₀ + (νᵀ ∂s[t]/∂θ)/ρ₁   "
                      "(νᵀ ∂s[t]/∂θ: the backward step with δ⁺s[t] = ν, w[t] = 0)",
                      "gradient: ∂L/∂θ += (δs[t-1]·s̃[t-1])·θ̃[t-1] + ∂ℓ[t]/∂θ   "
                      "(δs[t-1], ∂ℓ/∂θ: the backward step with δ⁺s[t] = 0)"]
            return display("\n".join(lines))
        # rbp
        lines = [f"recurrent backprop for {st.name!r}: s* = f(s*, x; θ) by iteration, then the adjoint fixed point",
                 "  λ = δs[t-1] of the backward step below with δ⁺s[t] = λ, at s[t-1] = s* (iterated to tol)",
                 "  ∂L/∂θ = that step's parameter gradients at λ*"]
        return display("\n".join(lines)) + "\n" + Explanation(self.cell).backward_text()

    def __str__(self) -> str:
        return str(self.cell) + "\n" + self.recursion_text()

    def _text(self) -> str:
        return str(self)


def _size(shape) -> int:
    return shape[0] * shape[1] if isinstance(shape, tuple) else int(shape)


def _blocks(step):
    o = 0
    for p, sh in step.params.items():
        yield p, sh, o
        o += _size(sh)


def explain_algorithm(cell, algorithm: str):
    """``"bptt"`` (the BPTT step), ``"rtrl"``, ``"snap"`` / ``"snap2"`` ..., ``"uoro"``, ``"rbp"``."""
    from .online import check_single_cell
    check_single_cell(cell, f"explain(algorithm={algorithm!r})", CellError)
    a = str(algorithm).lower().replace("-", "")
    n = 1
    if a.startswith("snap") and a[4:].isdigit():
        from .snap import SnAp
        a, n = "snap", SnAp(int(a[4:])).n  # SnAp-0 is refused as rc.SnAp(0) is
    if a not in ALGORITHMS:
        raise CellError(f"cell {cell.name!r}: explain: unknown algorithm {algorithm!r}; "
                        f"choose one of {', '.join(ALGORITHMS)} (snap2, snap3 ... for SnAp-n)")
    if a == "bptt":
        return Explanation(cell)
    return AlgorithmExplanation(cell, a, n)

