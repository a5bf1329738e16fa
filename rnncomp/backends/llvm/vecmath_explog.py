"""exp/log family for :mod:`vecmath`: exp, expm1, log, log1p, tanh, sigmoid, softplus, pow.

Each ``emit_*`` takes a :class:`Ctx` and IR values and returns the result; all
are straight-line (selects, no branches) so the loop vectoriser can widen them.

Algorithms (after Cephes, S. L. Moshier, made branch-free):

* exp: ``x = q*ln2 + r``, ``|r| <= ln2/2`` (Cody-Waite with a short high part
  so ``q*C1`` is exact); ``e^r = 1 + r + r^2 P(r)`` with the Cephes expf
  polynomial (float) or a 12-term minimax fit (double); ``2^q`` applied as two
  power-of-two factors so overflow gives inf and gradual underflow rounds once.
* expm1: the same reduction, but q = 0 for |x| <= 1/2; ``em = r + r^2 P(r)``
  recombined as ``em*2^q + (2^q - 1)`` (exact ``2^q - 1``) or, for large q,
  ``2^q ((em - 2^-q) + 1)``: one rounding, relative accuracy near 0.
* log: ``x = 2^k*m``, ``m`` in [sqrt(1/2), sqrt 2) from the bits (denormals
  pre-scaled), Cephes ``log(1+f)`` polynomial (float) / rational (double).
* log1p: log of ``u = 1+x`` plus the rounding correction ``(x-(u-1))/u``.
* tanh: |x| < 0.625 Cephes ``x + x z P(z)`` (/ Q(z) for double), else
  ``1 - 2/(e^(2|x|) + 1)``; sigmoid = ``{1 or z}/(1+z)``, ``z = exp(-|x|)``;
  both divisions compensated for the rounding of the denominator.
  softplus = ``max(x,0) + log1p(exp(-|x|))``.
* pow: float computes ``exp(y*log|x|)`` in double; double uses a double-double
  ``log`` (atanh series, Dekker products) and ``exp(hi)*(1+lo)``.  C99 special
  cases (including negative x with integer y) by selects.
"""
from __future__ import annotations

from .vecmath_core import Ctx

LOG2E = 1.4426950408889634074

# float: Cephes expf.c
EXP_F = dict(lo=-104.0, hi=89.0, c1=0.693359375, c2=-2.12194440e-4,
             p=[1.9875691500E-4, 1.3981999507E-3, 8.3334519073E-3, 4.1665795894E-2,
                1.6666665459E-1, 5.0000001201E-1])
# double: near-minimax fit of (e^r - 1 - r)/r^2 on [-0.5, 0.5] (mpmath chebyfit, 12 terms;
# approximation error 0.04 ulp), Cody-Waite constants from Cephes exp.c
EXP_D = dict(lo=-746.0, hi=710.0, c1=6.93145751953125E-1, c2=1.42860682030941723212E-6,
             p=[1.6116496514371548e-10, 2.0962955815976076e-09, 2.505194670972162e-08,
                2.7557076636642725e-07, 2.755731943362024e-06, 2.4801587616145414e-05,
                0.00019841269841146993, 0.001388888888870455, 0.00833333333333336,
                0.04166666666666706, 0.16666666666666666, 0.5])

# float: Cephes logf.c;  double: Cephes log.c
LOG_PF = [7.0376836292E-2, -1.1514610310E-1, 1.1676998740E-1, -1.2420140846E-1,
          1.4249322787E-1, -1.6668057665E-1, 2.0000714765E-1, -2.4999993993E-1,
          3.3333331174E-1]
LOG_PD = [1.01875663804580931796E-4, 4.97494994976747001425E-1, 4.70579119878881725854E0,
          1.44989225341610930846E1, 1.79368678507819816313E1, 7.70838733755885391666E0]
LOG_QD = [1.12873587189167450590E1, 4.52279145837532221105E1, 8.29875266912776603211E1,
          7.11544750618563894466E1, 2.31251620126765340583E1]
LOG_C1, LOG_C2 = 0.693359375, 2.121944400546905827679e-4   # ln2 = C1 - C2

INF = float("inf")
NAN = float("nan")


# ---------------------------------------------------------------- exp / expm1
def _exp_reduce(c: Ctx, xc, keep_half=False):
    """(q, qi, r) with xc = q*ln2 + r; xc already clamped and finite (or NaN).

    ``keep_half``: q = 0 for |xc| <= 0.5 (expm1: avoids cancellation in 2^q*(1+em) - 1).
    """
    k = c.sel64(EXP_D, EXP_F)
    q, qi = c.rint(c.mul(xc, c.c(LOG2E)))
    if keep_half:
        half = c.le(c.abs(xc), c.c(0.5))
        q, qi = c.sel(half, c.c(0.0), q), c.sel(half, c.ci(0), qi)
    r = c.fma(q, c.c(-k["c1"]), xc)          # exact: q*c1 is exact, result is small
    return q, qi, c.fma(q, c.c(-k["c2"]), r)


def _expm1_small(c: Ctx, r):
    """expm1(r) = r + r^2 P(r) for |r| <= 0.5, relative accuracy < 1 ulp."""
    return c.fma(c.mul(r, r), c.poly(r, c.sel64(EXP_D, EXP_F)["p"]), r)


def _exp_core(c: Ctx, xc, split=True):
    """e^xc for clamped xc; ``split=False`` when 2^q is known to be normal."""
    _, qi, r = _exp_reduce(c, xc)
    p = c.add(_expm1_small(c, r), c.c(1.0))
    return c.ldexp(p, qi) if split else c.xmul(p, c.pow2i(qi))


def emit_exp(c: Ctx, x):
    k = c.sel64(EXP_D, EXP_F)
    return c.nan_through(x, _exp_core(c, c.clamp(x, k["lo"], k["hi"])))


def _expm1_core(c: Ctx, xc):
    """expm1 for xc in [-64, hi] (no NaN/-0 handling): 2^q (1 + em) - 1 rounded once."""
    _, qi, r = _exp_reduce(c, xc, keep_half=True)
    em = _expm1_small(c, r)
    b = c.b
    one = c.c(1.0)
    # q <= mant+1: 2^q - 1 is exact, so em*2^q + (2^q - 1) rounds once
    s = c.pow2i(qi)
    small_q = c.fma(em, s, c.sub(s, one))
    # larger q: 2^q ((em - 2^-q) + 1), with 2^q split off near overflow
    qb = b.select(b.icmp_signed(">", qi, c.ci(c.bias)), c.ci(c.bias), qi)
    sb = c.pow2i(qb)
    emq = c.sub(em, c.pow2i(b.select(b.icmp_signed(">", qi, c.ci(60)), c.ci(-60), b.neg(qi))))
    big_q = c.xmul(c.fma(emq, sb, sb), c.pow2i(b.sub(qi, qb)))
    return c.sel(b.icmp_signed(">", qi, c.ci(c.mant + 1)), big_q, small_q)


def emit_expm1(c: Ctx, x):
    k = c.sel64(EXP_D, EXP_F)
    res = _expm1_core(c, c.clamp(x, -64.0, k["hi"]))
    tiny = 2.0 ** (-54 if c.f64 else -25)
    res = c.sel(c.lt(c.abs(x), c.c(tiny)), x, res)     # keeps -0, exact for denormals
    return c.nan_through(x, res)


# ---------------------------------------------------------------- log / log1p
def _log_reduce(c: Ctx, x, denormals=True):
    """(f, k) with x = 2^k (1+f), 1+f in [sqrt(1/2), sqrt 2); x > 0 finite."""
    b = c.b
    one = 0x3FF0000000000000 if c.f64 else 0x3F800000
    sqrth = 0x3FE6A09E667F3BCD if c.f64 else 0x3F3504F3
    if denormals:
        shift = 54 if c.f64 else 24
        small = c.lt(x, c.c(2.0 ** (1 - c.bias)))
        x = c.sel(small, c.xmul(x, c.c(2.0 ** shift)), x)
    ix = b.add(c.bits(x), c.ci(one - sqrth))
    k = b.sub(b.ashr(ix, c.ci(c.mant)), c.ci(c.bias))
    if denormals:
        k = b.sub(k, b.select(small, c.ci(shift), c.ci(0)))
    m = c.from_bits(b.add(b.and_(ix, c.ci((1 << c.mant) - 1)), c.ci(sqrth)))
    return c.xsub(m, c.c(1.0)), c.sitofp(k)


def _log_core(c: Ctx, f, kf, extra=None):
    """log(2^k (1+f)) + extra for f in [sqrt(1/2)-1, sqrt 2-1] (extra: a small correction)."""
    z = c.mul(f, f)
    if c.f64:
        y = c.mul(f, c.div(c.mul(z, c.poly(f, LOG_PD)), c.poly1(f, LOG_QD)))
    else:
        y = c.mul(c.mul(f, z), c.poly(f, LOG_PF))
    y = c.fma(kf, c.c(-LOG_C2), y)
    y = c.fma(z, c.c(-0.5), y)
    if extra is not None:
        y = c.add(y, extra)
    return c.fma(kf, c.c(LOG_C1), c.add(f, y))


def emit_log(c: Ctx, x):
    f, kf = _log_reduce(c, x)
    res = _log_core(c, f, kf)
    res = c.sel(c.eq(x, c.c(0.0)), c.c(-INF), res)
    res = c.sel(c.lt(x, c.c(0.0)), c.c(NAN), res)
    res = c.sel(c.eq(x, c.c(INF)), x, res)
    return c.nan_through(x, res)


def _log1p_core(c: Ctx, x, nonneg=False):
    """log1p for finite x > -1 (no special cases); ``nonneg``: x in [0, 1] is known."""
    one = c.c(1.0)
    u = c.xadd(one, x)
    f, kf = _log_reduce(c, u, denormals=False)
    # rounding error of 1+x, exact in either form (Sterbenz), divided by u
    small = c.xsub(x, c.xsub(u, one))
    corr = small if nonneg else c.sel(c.ge(u, c.c(2.0)), c.xsub(one, c.xsub(u, x)), small)
    return _log_core(c, f, kf, extra=c.div(corr, u))


def emit_log1p(c: Ctx, x):
    res = _log1p_core(c, x)
    res = c.sel(c.eq(x, c.c(-1.0)), c.c(-INF), res)
    res = c.sel(c.lt(x, c.c(-1.0)), c.c(NAN), res)
    res = c.sel(c.eq(x, c.c(INF)), x, res)
    res = c.sel(c.lt(c.abs(x), c.c(2.0 ** (-55 if c.f64 else -26))), x, res)
    return c.nan_through(x, res)


# ---------------------------------------------------------------- activations
# Cephes tanhf.c / tanh.c: tanh x = x + x z P(z) (/ Q(z)), z = x^2, for |x| < 0.625
TANH_PF = [-5.70498872745E-3, 2.06390887954E-2, -5.37397155531E-2, 1.33314422036E-1,
           -3.33332819422E-1]
TANH_PD = [-9.64399179425052238628E-1, -9.92877231001918586564E1, -1.61468768441708447952E3]
TANH_QD = [1.12811678491632931402E2, 2.23548839060100448583E3, 4.84406305325125486048E3]


def _corrected_div(c: Ctx, num, big, small, inv):
    """num / (big + small) for |big| >= |small|, with the rounding of the sum compensated.

    ``inv`` is any approximation of 1/(big+small) good to a few bits.  The residual
    ``num - q*d`` is exact where the target fuses it into an FMA.
    """
    d, err = _fast_two_sum(c, big, small)
    q = c.div(num, d)
    rho = c.fma(c.neg(q), d, num)
    return c.fma(c.sub(rho, c.mul(q, err)), inv(q), q)


def emit_tanh(c: Ctx, x):
    ax = c.abs(x)
    hi = 20.0 if c.f64 else 10.0                       # tanh rounds to 1 beyond
    axc = c.sel(c.gt(ax, c.c(hi)), c.c(hi), ax)
    e = _exp_core(c, c.add(axc, axc), split=False)
    # |x| >= 0.625: tanh = 1 - t, t = 2/(e^2|x| + 1) in (0, 0.45]; t/2 approximates 1/(e+1)
    t = _corrected_div(c, c.c(2.0), e, c.c(1.0), lambda q: c.mul(q, c.c(0.5)))
    large = c.sub(c.c(1.0), t)
    z = c.mul(x, x)
    if c.f64:
        p = c.div(c.mul(z, c.poly(z, TANH_PD)), c.poly1(z, TANH_QD))
    else:
        p = c.mul(z, c.poly(z, TANH_PF))
    small = c.fma(ax, p, ax)
    res = c.sel(c.lt(ax, c.c(0.625)), small, large)
    return c.copysign(res, x)                         # NaN propagates through both branches


def emit_sigmoid(c: Ctx, x):
    z = emit_exp(c, c.neg(c.abs(x)))                    # in (0, 1]: never overflows
    neg = c.lt(x, c.c(0.0))
    num = c.sel(neg, z, c.c(1.0))
    # 1/(1+z) is q for x >= 0 and 1-q for x < 0
    return _corrected_div(c, num, c.c(1.0), z, lambda q: c.sel(neg, c.sub(c.c(1.0), q), q))


def emit_softplus(c: Ctx, x):
    z = emit_exp(c, c.neg(c.abs(x)))
    pos = c.sel(c.gt(x, c.c(0.0)), x, c.c(0.0))
    return c.nan_through(x, c.add(pos, _log1p_core(c, z, nonneg=True)))


# ---------------------------------------------------------------- pow
def _two_sum(c, a, b):
    s = c.xadd(a, b)
    bb = c.xsub(s, a)
    return s, c.xadd(c.xsub(a, c.xsub(s, bb)), c.xsub(b, bb))


def _fast_two_sum(c, a, b):
    s = c.xadd(a, b)
    return s, c.xsub(b, c.xsub(s, a))


def _split(c, a):
    t = c.xmul(a, c.c(134217729.0))                     # 2^27 + 1 (Veltkamp)
    hi = c.xsub(t, c.xsub(t, a))
    return hi, c.xsub(a, hi)


def _two_prod(c, a, b):
    """Dekker's exact product (no FMA needed; no flags so nothing gets fused)."""
    p = c.xmul(a, b)
    ah, al = _split(c, a)
    bh, bl = _split(c, b)
    e = c.xadd(c.xadd(c.xadd(c.xsub(c.xmul(ah, bh), p), c.xmul(ah, bl)), c.xmul(al, bh)),
               c.xmul(al, bl))
    return p, e


LN2_HI, LN2_LO = 0.6931471805598903, 5.497923018708371e-14   # LN2_HI has 42 bits
TWO_THIRDS_HI, TWO_THIRDS_LO = 0.6666666666666666, 3.700743415417188e-17


def _log_dd(c: Ctx, ax):
    """log(ax) as a double-double (hi, lo), relative error < 2^-63; ax > 0 finite.

    log m = 2 atanh(s), s = (m-1)/(m+1) in [-0.172, 0.172]: s, its cube term 2s^3/3 and
    the sums are carried as double-doubles; the rest (2s^5/5 + ...) is < 2e-4 of the
    total, so double precision suffices there.
    """
    f, kf = _log_reduce(c, ax)
    m = c.xadd(f, c.c(1.0))
    bh = c.xadd(m, c.c(1.0))
    bl = c.xsub(m, c.xsub(bh, c.c(1.0)))                # m + 1 = bh + bl exactly
    sh = c.div(f, bh)
    p, pe = _two_prod(c, sh, bh)
    sl = c.div(c.xsub(c.xsub(c.xsub(f, p), pe), c.xmul(sh, bl)), bh)   # s = sh + sl
    wh, wl = _two_prod(c, sh, sh)
    ch, cl = _two_prod(c, wh, sh)                        # s^3 = ch + cl
    cl = c.xadd(c.xadd(cl, c.xmul(wl, sh)), c.xmul(c.xmul(c.c(3.0), wh), sl))
    dh, de = _two_prod(c, ch, c.c(TWO_THIRDS_HI))       # 2s^3/3 = dh + dl
    dl = c.xadd(c.xadd(de, c.xmul(ch, c.c(TWO_THIRDS_LO))), c.xmul(cl, c.c(TWO_THIRDS_HI)))
    r = c.poly(wh, [1.0 / (2 * n + 1) for n in range(12, 1, -1)])
    rest = c.xadd(c.xmul(c.xmul(c.xadd(ch, ch), wh), r), c.xmul(c.xmul(c.xadd(wh, wh), wh), sl))
    h1, e = _fast_two_sum(c, c.xadd(sh, sh), dh)
    h, l = _fast_two_sum(c, h1, c.xadd(c.xadd(c.xadd(e, c.xadd(sl, sl)), dl), rest))
    H, e1 = _two_sum(c, c.xmul(kf, c.c(LN2_HI)), h)
    lo = c.xadd(c.xadd(e1, l), c.xmul(kf, c.c(LN2_LO)))
    return _fast_two_sum(c, H, lo)


def _pow_general(c: Ctx, x, y):
    """|x|**y for finite nonzero x and finite y (garbage elsewhere; fixed up by selects)."""
    ax = c.abs(x)
    if not c.f64:                       # float: double log/exp cores, 2^-45 relative error
        d = c.other()
        f, kf = _log_reduce(d, c.to(ax, d.ty), denormals=False)
        t = d.mul(c.to(y, d.ty), _log_core(d, f, kf))
        return d.to(_exp_core(d, d.clamp(t, EXP_D["lo"], EXP_D["hi"])), c.ty)
    big = 2.0 ** 900                                    # keep Dekker splitting finite
    yc = c.sel(c.gt(c.abs(y), c.c(big)), c.copysign(c.c(big), y), y)
    lh, ll = _log_dd(c, ax)
    p, pe = _two_prod(c, yc, lh)
    th, tl = _fast_two_sum(c, p, c.xadd(pe, c.xmul(yc, ll)))
    e = emit_exp(c, th)
    res = c.fma(e, tl, e)                               # exp(th) * (1 + tl)
    return c.sel(c.eq(e, c.c(INF)), e, res)


def emit_pow(c: Ctx, x, y):
    res = _pow_general(c, x, y)
    zero, one, inf = c.c(0.0), c.c(1.0), c.c(INF)
    ax, ay = c.abs(x), c.abs(y)
    fy = c.floor(y)
    yint = c.eq(fy, y)
    half = c.mul(y, c.c(0.5))
    yodd = c.and_(yint, c.ne(c.floor(half), half))
    ylt0 = c.lt(y, zero)
    res = c.sel(c.eq(ax, zero), c.sel(ylt0, inf, zero), res)
    res = c.sel(c.eq(ax, inf), c.sel(ylt0, zero, inf), res)
    yinf = c.sel(c.gt(y, zero), c.sel(c.gt(ax, one), inf, zero), c.sel(c.lt(ax, one), inf, zero))
    res = c.sel(c.eq(ay, inf), yinf, res)
    res = c.sel(c.and_(c.signbit(x), yodd), c.neg(res), res)
    xneg_finite = c.and_(c.lt(x, zero), c.ne(x, c.c(-INF)))
    res = c.sel(c.and_(xneg_finite, c.not_(yint)), c.c(NAN), res)
    res = c.sel(c.or_(c.isnan(x), c.isnan(y)), c.add(x, y), res)
    res = c.sel(c.and_(c.eq(ax, one), c.eq(ay, inf)), one, res)
    res = c.sel(c.eq(x, one), one, res)
    return c.sel(c.eq(y, zero), one, res)
