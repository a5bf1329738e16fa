"""Every name the printed listing uses is defined in it, under a readable name (issue #18).

The listing is read back as a person reads it: the names at a time (``pre(o)[t]``,
``δ(Uo·h)[t]``, ``h[t-1]``) on every right-hand side must be declared (inputs, states,
parameters, targets), seeded (δ⁺h, w) or the left-hand side of a line: of the forward
equations, the backward step, or its ``where`` block.  No name is defined twice, and no
generated counter name (``a8``, ``sigmoid8``, ``Abs7``, ``Σ13``) shows that the cell did
not declare."""
import re

import pytest
import sympy as sp
from hypothesis import HealthCheck, given, settings

import rnncomp as rc

from fuzzgen import fuzz_cells

_PAREN = r"\((?:[^()\[\]]|\[\d+:\d+\]|\((?:[^()]|\[\d+:\d+\])*\))*\)"
NAME_AT = re.compile(rf"(?<![\w′])((?:δ⁺?)?(?:{_PAREN}|[^\W\d][\w′]*(?:{_PAREN})?)(?:\[\d+:\d+\])?)\[(t|t-1|T|0)\]")
GENERATED = re.compile(r"(sigmoid|tanh|Abs|Max|Min|Piecewise|softsign|softplus|gelu|exp|sin|atan|a|cat|lse|Σ)\d+(~\d+)?")


def parse(text, cell):
    """(defined [(name, time)], used {(name, time)}) of a printed explanation."""
    defined = [(n, "t") for n, d in cell.decls.items() if d.kind in ("input", "target")]
    defined += [(n, t) for n, d in cell.decls.items() if d.kind == "state" for t in ("t-1", "0")]
    used = set()
    for line in text.splitlines():
        body = line.strip()
        if body.startswith(("cell ", "inputs:", "states:", "params:", "targets:")):
            continue
        if body.startswith("backward step of"):
            defined += [(m.group(1), "T") for m in NAME_AT.finditer(body)]
            used |= {(m.group(1), m.group(2)) for m in NAME_AT.finditer(body.partition("= ")[2])
                     if "d_final" not in body}
            continue
        if body.startswith("parameter gradients"):
            defined.append(NAME_AT.search(body).groups())
            continue
        if body.startswith(("where", "initial-state")):
            continue
        if ": the cotangent of output" in body:
            defined.append(tuple(NAME_AT.match(body).groups()))
            continue
        m = re.fullmatch(r"\(carried: (\S+) = (\S+)\)", body)
        if m:
            lhs, rhs = NAME_AT.fullmatch(m.group(1)), NAME_AT.fullmatch(m.group(2))
            defined.append(lhs.groups())
            used.add(rhs.groups())
            continue
        lhs, eq, rhs = body.partition(" = ")
        assert eq, f"{cell.name}: a line that is not an equation: {line!r}"
        if lhs.startswith("∂L/∂"):
            rhs = rhs.removeprefix("Σ_t Σ_batch ")
        else:
            d = NAME_AT.fullmatch(lhs)
            assert d, f"{cell.name}: the left side {lhs!r} is not a name at a time\n{text}"
            defined.append(d.groups())
        rhs = rhs.split("   (carried:")[0]
        if "(carried: " in body:
            defined.append(NAME_AT.search(body.split("(carried: ")[1]).groups())
        used |= {m.groups() for m in NAME_AT.finditer(rhs)}
    for name, t in list(defined):  # δ⁺h[T] = 0 and δ⁺h[t-1] carried: δ⁺h[t] for every t
        if t == "T" and (name, "t-1") in defined:
            defined.append((name, "t"))
        if t == "t-1" and name.startswith("δ⁺") and (name, "0") not in defined:
            defined.append((name, "0"))  # ... and at t = 1, δ⁺h[0] (a learned h_0's gradient reads it)
    return defined, used


def check(cell, **explain_args):
    text = str(rc.explain(cell, **explain_args))
    defined, used = parse(text, cell)
    twice = {d for d in defined if defined.count(d) > 1}
    assert not twice, f"{cell.name}: defined twice: {sorted(twice)}\n{text}"
    missing = used - set(defined)
    assert not missing, f"{cell.name}: used, never defined: {sorted(missing)}\n{text}"
    declared = set(cell.decls)
    for name, _ in defined + sorted(used):
        base = name.removeprefix("δ⁺").removeprefix("δ")
        assert not (GENERATED.fullmatch(base) and base not in declared), \
            f"{cell.name}: generated name {name!r} printed\n{text}"
    return text


@pytest.mark.parametrize("name", sorted(rc.cells.ZOO))
def test_zoo_listings_define_every_name(name):
    cell = rc.cells.ZOO[name](3, 4, 2)
    check(cell)
    check(cell, wrt="inputs", d_outputs=True)


def test_lstm_intermediates_are_named_after_the_gates():
    text = check(rc.cells.lstm(3, 4, 2))
    for line in ("pre(o)[t] = bo + Uo·h[t-1] + Wo·x[t]", "o[t] = sigmoid(pre(o)[t])",
                 "tanh(c)[t] = tanh(c[t])", "∂L/∂Wo = Σ_t Σ_batch δpre(o)[t]·x[t]ᵀ"):
        assert f"  {line}\n" in text + "\n", line
    gru = check(rc.cells.gru(3, 4, 2))   # z = sigmoid(...) is the user's: its argument is pre(z)
    assert "  pre(z)[t]" not in gru and "δpre(z)[t] = z[t]*δz[t]*(1 - z[t])" in gru


def test_a_declared_name_never_meets_a_generated_one():
    """A user's a1, sigmoid2, o and pre: the generated values print under other names."""
    cell = rc.Cell("clash")
    x, h = cell.input("x", 2), cell.state("h", 3)
    Wo, Uo, bo = cell.param("Wo", (3, 2)), cell.param("Uo", (3, 3)), cell.param("bo", 3)
    a1 = cell.define("a1", sp.tanh(cell.param("sigmoid2", (3, 3)) @ h))
    cell.define("o", rc.vsum(h) * cell.param("pre", 1))
    cell.update(h, rc.sigmoid(Wo @ x + Uo @ h + bo) * a1)
    cell.loss(h.new ** 2)
    text = check(cell) + "\n"
    # the gate's parameters spell o, but o is the user's: the gate is named after h
    assert "  sigmoid(pre(h))[t] = sigmoid(pre(h)[t])\n" in text and "pre(o)" not in text
    assert "  δ(sigmoid2·h)[t] = δa1[t]*(1 - a1[t]**2)\n" in text  # the user's a1 and sigmoid2


def test_latex_and_markdown_show_the_aliases():
    e = rc.explain(rc.cells.lstm(3, 4, 2))
    assert r"{\delta \operatorname{pre}\left(o\right)}_{t}" in e.latex()
    assert r"\text{where}" in e.latex() and e.markdown().startswith("$$\n\\begin{aligned}")


@settings(max_examples=15, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(fuzz_cells())
def test_fuzzed_listings_define_every_name(cell):
    check(cell)


def test_derived_weight_chain_prints_no_counter_or_repeat_names():
    """The once-per-call chain of derived weights (weight norm): w1 and δV~2 were keys."""
    from test_weight_ops import weightnorm_gru
    text = str(rc.explain(weightnorm_gru()))
    chain = text[text.index("derived weights, computed once"):]
    assert "~" not in chain and not re.search(r"\bw\d", chain), chain
    assert "  w₁ = Vz*gz/‖Vz‖" in chain and "  δw₁ = δ(gz*Vz/‖Vz‖ᵣ)" in chain and "δVz′" in chain


@pytest.mark.parametrize("name", ["mlstm", "delta_rule", "gated_memory"])
def test_matrix_listings_name_a_row_gate_after_the_gate(name):
    """A gate that scales a matrix state's rows is broadcast (by_rows(...)): the broadcast was
    named after the gate's key, so the listing read ``by_rows(sigmoid1)[t]``, sigmoid1 a name
    it never defines; and mLSTM's second per-step term of a bias printed as the key ``δbq~2[t]``
    (found by a probe, s21)."""
    from rnncomp.zoo_matrix import MATRIX_ZOO
    if name == "gated_memory":
        cell = rc.Cell(name)
        x = cell.input("x", 3)
        S = cell.state("S", (2, 3))
        cell.update(S, rc.sigmoid(cell.param("Wg", (2, 3)) @ x) * S + rc.outer(cell.param("Wv", (2, 3)) @ x, x))
        cell.loss(rc.vsum(cell.output("y", S.new @ x) ** 2))
    else:
        cell = MATRIX_ZOO[name](3, 4, 2)
    text = check(cell)
    assert not re.search(rf"(?<![\w′])({GENERATED.pattern})(?![\w′])", text), text
    if name == "gated_memory":
        assert "  by_rows(sigmoid(Wg·x))[t] = by_rows(sigmoid(Wg·x)[t])\n" in text + "\n", text
