"""sin, cos, atan, erf for :mod:`vecmath` (branch-free Cephes-style kernels).

* sin/cos: ``q = rint(x*2/pi)``, ``r = x - q*pi/2``.  float: reduced in
  double with a 30-bit head of pi/2 (``q*head`` exact for ``|q| < 2^23``) and
  split back into float ``r + rl``.  double: pi/2 in three 33-bit parts and a
  53-bit tail (``q*part`` exact for ``|q| < 2^20``), the rounding errors of the
  inexact steps collected in ``rl``.  Either way ``r`` is exact where it is
  small, so results near multiples of pi keep their relative accuracy, and the
  polynomials take ``rl`` into account (fdlibm's ``__kernel_sin(x, y)`` idea).
  Quadrant by selects and a sign-bit flip.  Beyond that range the reduction
  degrades and far beyond it is meaningless; results are clamped to [-1, 1].
  inf and NaN give NaN.
* atan: Cephes argument reduction to |t| <= tan(pi/8) (float) / 0.66 (double)
  via ``-1/x`` or ``(x-1)/(x+1)`` (division compensated), minimax polynomial
  (float) / Cephes rational (double); pi/2, pi/4 added with their low parts.
* erf: |x| <= 1: ``x + x*S(x^2)``; above, ``1 - exp(-x^2)*R(x)`` with Cephes'
  erfc approximations, saturating to 1 where erf rounds to 1.
"""
from __future__ import annotations

from .vecmath_core import Ctx
from .vecmath_explog import emit_exp

TWO_OVER_PI = 0.6366197723675814
PIO2_D = [1.5707963267341256, 6.077100506303966e-11, 2.0222662487111665e-21, 8.4784276603689e-32]

SIN_F = [-1.9515295891E-4, 8.3321608736E-3, -1.6666654611E-1]
COS_F = [2.443315711809948E-005, -1.388731625493765E-003, 4.166664568298827E-002]
SIN_D = [1.58962301576546568060E-10, -2.50507477628578072866E-8, 2.75573136213857245213E-6,
         -1.98412698295895385996E-4, 8.33333333332211858878E-3, -1.66666666666666307295E-1]
COS_D = [-1.13585365213876817300E-11, 2.08757008419747316778E-9, -2.75573141792967388112E-7,
         2.48015872888517045348E-5, -1.38888888888730564116E-3, 4.16666666666665929218E-2]


def _two_sum(c: Ctx, a, b):
    s = c.xadd(a, b)
    bb = c.xsub(s, a)
    return s, c.xadd(c.xsub(a, c.xsub(s, bb)), c.xsub(b, bb))


def _reduce_pio2(c: Ctx, x):
    """(qi, r, rl): x = qi*pi/2 + r + rl, |r| <~ pi/4, r + rl accurate to ~2^-2p.

    double: the first step is exact; later steps are exact where the running
    remainder is small and otherwise their rounding errors go into rl.
    """
    if not c.f64:
        return _reduce_pio2_via_double(c, x)
    q, qi = c.rint(c.mul(x, c.c(TWO_OVER_PI)))
    r = c.fma(q, c.c(-PIO2_D[0]), x)
    lo = c.c(0.0)
    for part in PIO2_D[1:]:
        r, e = _two_sum(c, r, c.xmul(q, c.c(-part)))
        lo = c.xadd(lo, e)
    r, rl = _two_sum(c, r, lo)
    return qi, r, rl


PIO2_FD = [1.5707963276654482, -8.705515695504166e-10]   # 30-bit head: q*head exact, q < 2^23


def _reduce_pio2_via_double(c: Ctx, x):
    """float: reduce in double (exact head step, 2^-53 relative tail), split back to r + rl."""
    d = c.other()
    xd = c.to(x, d.ty)
    q, qi = d.rint(d.mul(xd, d.c(TWO_OVER_PI)))
    rd = d.fma(q, d.c(-PIO2_FD[0]), xd)
    rd = d.fma(q, d.c(-PIO2_FD[1]), rd)
    r = d.to(rd, c.ty)
    rl = d.to(d.xsub(rd, c.to(r, d.ty)), c.ty)
    return c.b.trunc(qi, c.ity), r, rl


def _sincos(c: Ctx, x, cos: bool):
    b = c.b
    qi, r, rl = _reduce_pio2(c, x)
    z = c.mul(r, r)
    hz = c.mul(z, c.c(0.5))
    # sin(r+rl) ~ r + r z S(z) + rl (1 - z/2);  cos(r+rl) ~ cos r - r rl, 1 - z/2 compensated
    s = c.add(r, c.fma(c.mul(r, z), c.poly(z, c.sel64(SIN_D, SIN_F)),
                       c.mul(rl, c.sub(c.c(1.0), hz))))
    w = c.sub(c.c(1.0), hz)
    tail = c.fma(c.mul(z, z), c.poly(z, c.sel64(COS_D, COS_F)), c.neg(c.mul(r, rl)))
    co = c.add(w, c.add(c.sub(c.sub(c.c(1.0), w), hz), tail))
    if cos:
        qi = b.add(qi, c.ci(1))
    use_cos = b.icmp_signed("!=", b.and_(qi, c.ci(1)), c.ci(0))
    v = c.sel(use_cos, co, s)
    flip = b.shl(b.and_(qi, c.ci(2)), c.ci(c.nbits - 2))   # bit 1 of the quadrant -> sign bit
    v = c.from_bits(b.xor(c.bits(v), flip))
    # far outside the accurate range the reduction is meaningless: keep results in [-1, 1]
    v = c.intrinsic("llvm.minnum", c.intrinsic("llvm.maxnum", v, c.c(-1.0)), c.c(1.0))
    inf_or_nan = c.xsub(x, x)                               # NaN exactly for inf and NaN
    return c.sel(c.isnan(inf_or_nan), inf_or_nan, v)


def emit_sin(c: Ctx, x):
    return c.sel(c.eq(x, c.c(0.0)), x, _sincos(c, x, cos=False))     # sin(-0) = -0


def emit_cos(c: Ctx, x):
    return _sincos(c, x, cos=True)


# ---------------------------------------------------------------- atan
# float: near-minimax fit of (atan(t)/t - 1)/t^2 in z = t^2 on |t| <= tan(pi/8) (mpmath
# chebyfit, 5 terms: 0.05 ulp; Cephes atanf's 4 terms give 0.34 ulp)
ATAN_F = [-0.06451927870512009, 0.10743731260299683, -0.14263956248760223, 0.19999539852142334,
          -0.3333333134651184]
ATAN_PD = [-8.750608600031904122785E-1, -1.615753718733365076637E1, -7.500855792314704667340E1,
           -1.228866684490136173410E2, -6.485021904942025371773E1]
ATAN_QD = [2.485846490142306297962E1, 1.650270098316988542046E2, 4.328810604912902668951E2,
           4.853903996359136964868E2, 1.945506571482613964425E2]
PIO2_HI, PIO4_HI = 1.5707963267948966, 0.7853981633974483
PIO2_LO_D, PIO2_LO_F = 6.123233995736765886130E-17, -4.3711390001862426e-08


def emit_atan(c: Ctx, x):
    ax = c.abs(x)
    ax = c.sel(c.gt(ax, c.c(2.0 ** 60)), c.c(2.0 ** 60), ax)   # atan rounds to pi/2; no inf*0
    one = c.c(1.0)
    big = c.gt(ax, c.c(2.414213562373095))
    mid = c.gt(ax, c.c(0.66 if c.f64 else 0.4142135623730950))
    # t = num/(d + err) with the division's and the sum's rounding kept in tl
    d, err = _two_sum(c, ax, one)
    num = c.sel(big, c.c(-1.0), c.sel(mid, c.xsub(ax, one), ax))
    d = c.sel(big, ax, c.sel(mid, d, one))
    err = c.sel(mid, c.sel(big, c.c(0.0), err), c.c(0.0))
    t = c.div(num, d)
    rho = c.fma(c.neg(t), d, num)                      # exact with FMA
    inv = c.sel(big, c.neg(t), c.sel(mid, c.mul(c.sub(one, t), c.c(0.5)), one))  # ~1/(d+err)
    tl = c.mul(c.sub(rho, c.mul(t, err)), inv)
    lo = c.sel64(PIO2_LO_D, PIO2_LO_F)
    base = c.sel(big, c.c(PIO2_HI), c.sel(mid, c.c(PIO4_HI), c.c(0.0)))
    more = c.sel(big, c.c(lo), c.sel(mid, c.c(lo / 2), c.c(0.0)))
    z = c.mul(t, t)
    if c.f64:
        p = c.div(c.mul(z, c.poly(z, ATAN_PD)), c.poly1(z, ATAN_QD))
    else:
        p = c.mul(z, c.poly(z, ATAN_F))
    small = c.fma(tl, c.sub(one, z), more)             # atan(t+tl) ~ atan t + tl/(1+t^2)
    hi = c.xadd(base, t)                               # base + t exactly as hi + e
    e = c.xsub(t, c.xsub(hi, base))                    # (|base| >= |t| or base = 0)
    y = c.add(hi, c.add(c.fma(t, p, e), small))
    return c.copysign(y, x)


# ---------------------------------------------------------------- erf
# erf(x) = x + x*S(z) for |x| <= 1: Cephes erff.c's polynomial with its constant term minus 1
ERF_F = [7.853861353153693E-5, -8.010193625184903E-4, 5.188327685732524E-3,
         -2.685381193529856E-2, 1.128358514861418E-1, -3.761262582423300E-1, 0.128379165726710]
ERFC_PF = [2.326819970068386E-2, -1.387039388740657E-1, 3.687424674597105E-1,
           -5.824733027278666E-1, 6.210004621745983E-1, -4.944515323274145E-1,
           3.404879937665872E-1, -2.741127028184656E-1, 5.638259427386472E-1]     # 1 <= x < 2
ERFC_RF = [-1.047766399936249E1, 1.297719955372516E1, -7.495518717768503E0,
           2.921019019210786E0, -1.015265279202700E0, 4.218463358204948E-1,
           -2.820767439740514E-1, 5.641895067754075E-1]                          # x >= 2
ERF_TD = [9.60497373987051638749E0, 9.00260197203842689217E1, 2.23200534594684319226E3,
          7.00332514112805075473E3, 5.55923013010394962768E4]
ERF_UD = [3.35617141647503099647E1, 5.21357949780152679795E2, 4.59432382970980127987E3,
          2.26290000613890934246E4, 4.92673942608635921086E4]
# T - U with U's implicit leading 1 (exact differences of the Cephes coefficients)
ERF_TMU = [-1.0] + [t - u for t, u in zip(ERF_TD, ERF_UD)]
ERFC_PD = [2.46196981473530512524E-10, 5.64189564831068821977E-1, 7.46321056442269912687E0,
           4.86371970985681366614E1, 1.96520832956077098242E2, 5.26445194995477358631E2,
           9.34528527171957607540E2, 1.02755188689515710272E3, 5.57535335369399327526E2]
ERFC_QD = [1.32281951154744992508E1, 8.67072140885989742329E1, 3.54937778887819891062E2,
           9.75708501743205489753E2, 1.82390916687909736289E3, 2.24633760818710981792E3,
           1.65666309194161350182E3, 5.57535340817727675546E2]


def emit_erf(c: Ctx, x):
    ax = c.abs(x)
    z = c.mul(x, x)
    if c.f64:
        # x*T(z)/U(z) = x + x*(T(z) - U(z))/U(z)
        u = c.poly1(z, ERF_UD)
        small = c.fma(x, c.div(c.poly(z, ERF_TMU), u), x)
    else:
        small = c.fma(x, c.poly(z, ERF_F), x)
    sat = 6.0 if c.f64 else 4.0                          # erf(x) rounds to 1 beyond
    a = c.sel(c.gt(ax, c.c(sat)), c.c(sat), ax)
    e = emit_exp(c, c.neg(c.mul(a, a)))
    if c.f64:
        erfc = c.div(c.mul(e, c.poly(a, ERFC_PD)), c.poly1(a, ERFC_QD))
    else:
        q = c.div(c.c(1.0), a)
        w = c.mul(q, q)
        p = c.sel(c.lt(a, c.c(2.0)), c.poly(w, ERFC_PF), c.poly(w, ERFC_RF))
        erfc = c.mul(c.mul(e, q), p)
    large = c.copysign(c.sub(c.c(1.0), erfc), x)
    return c.sel(c.le(ax, c.c(1.0)), small, large)
