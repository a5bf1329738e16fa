"""LaTeX of node names: user names with '_', generated names with ·, ᵀ, Σ, δ, and a time.

KaTeX and TeX read the result (tests/test_latex_render.py renders every zoo cell and
fuzzed cells):

    >>> node_latex("h_1", "t-1"), node_latex("δ(Uz·h)", "t"), node_latex("Σ13", None)
    ('h_{1,t-1}', '{\\\\delta \\\\left(Uz\\\\,h\\\\right)}_{t}', '\\\\Sigma_{13}')
"""
from __future__ import annotations

import re

_SYMBOLS = [("δ⁺", r"\delta^{+} "), ("δ", r"\delta "), ("ᵀ", r"^{\top}"), ("·", r"\,"), ("ℓ", r"\ell "),
            ("∂", r"\partial "), ("Σ", r"\Sigma_"), ("~", r"{\sim}"), ("%", ""),
            ("ᵉˣᵗ", r"^{\mathrm{ext}}"), ("‖", r"\|"), ("ᵣ", "_{r}"), ("ᶜ", "_{c}"), ("*", r"\odot ")]


def ident_latex(name: str) -> str:
    """``W`` → ``W``, ``W_in`` → ``W_{in}``, ``h_1_b`` → ``h_{1\\_b}``."""
    head, sep, tail = name.partition("_")
    return head if not sep else f"{head}_{{{tail.replace('_', chr(92) + '_')}}}"


_FUNCS = {**{f: "\\" + f for f in ("tanh", "exp", "sin", "cos", "tan", "cot", "sec", "csc", "sinh", "cosh", "log")},
          "sigmoid": r"\sigma"}   # as sympy's LaTeX printer writes them (asin: \operatorname{asin})
_SUB_DIGITS = str.maketrans("₀₁₂₃₄₅₆₇₈₉", "0123456789")


def _ident_or_call(m) -> str:
    name, call = m.group(1), m.group(2)
    if call:  # a function in an alias: tanh(c), pre(o), Min(0,d)
        return _FUNCS.get(name, f"\\operatorname{{{name.replace('_', chr(92) + '_')}}}") + "("
    return ident_latex(name)


def name_latex(name: str) -> str:
    """A node's name (user, generated or an alias of :mod:`rnncomp.aliases`) as LaTeX,
    without a time index."""
    name = re.sub(r"Abs(\((?:[^()]|\([^()]*\))*\))", lambda m: "|" + m.group(1)[1:-1] + "|", name)
    name = re.sub(r"([A-Za-z]+)([₀-₉]+)", lambda m: f"\\mathsf{{{m.group(1)}}}_{{{m.group(2)}}}", name)
    name = name.translate(_SUB_DIGITS)  # Σ₁ -> Σ1 -> \Sigma_{1} below
    out = re.sub(r"(?<![\\{A-Za-z0-9_])([A-Za-z][A-Za-z0-9_]*)(\()?", _ident_or_call, name)
    out = out.replace("′", "'")
    for raw, tex in _SYMBOLS:
        out = out.replace(raw, tex)
    out = re.sub(r"\\Sigma_(?!\{)", r"\\Sigma ", re.sub(r"\\Sigma_(\d+)", r"\\Sigma_{\1}", out))
    out = out.replace("(", r"\left(").replace(")", r"\right)")
    return out.strip()


def node_latex(name: str, t) -> str:
    """``name`` at time ``t`` (None: no time): ``h_{t-1}``, ``h_{1,t}``, ``{\\delta h}_{t}``."""
    base = name_latex(name)
    if t is None:
        return base
    if re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", base):
        return f"{base}_{{{t}}}"
    m = re.fullmatch(r"([A-Za-z]+|\\mathsf\{[^{}]*\})_\{([^{}]*)\}", base)
    if m:
        return f"{m.group(1)}_{{{m.group(2)},{t}}}"
    return f"{{{base}}}_{{{t}}}"
