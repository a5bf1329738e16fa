"""UORO (Tallec & Ollivier 2017): an unbiased rank-one estimate of RTRL's sensitivity.

Per sample, J[t] ≈ s̃[t] θ̃[t]ᵀ with E[s̃ θ̃ᵀ] = J.  With ν[t] random signs over the state units,

    s̃[t] = ρ₀·(∂h[t]/∂h[t-1]·s̃[t-1]) + ρ₁·ν            (one forward direction of the tangent step)
    θ̃[t] = θ̃[t-1]/ρ₀ + (νᵀ ∂h[t]/∂θ|immediate)/ρ₁       (the backward step seeded with δ⁺h = ν, w = 0)
    ∂L/∂θ += w[t]·((∂ℓ[t]/∂h[t-1] · s̃[t-1]) θ̃[t-1] + ∂ℓ[t]/∂θ|immediate)

ρ₀ = √(‖θ̃‖/‖D s̃‖), ρ₁ = √(‖νᵀ∂h/∂θ‖/‖ν‖) balance the two factors' variances (any positive
values keep the estimate unbiased).  Cost: about one forward, one JVP and two backward steps
per step; memory n_s + P per sample.  A learned initial state starts from s̃ = ν₀, θ̃ = ν₀ on
its own entries (E[ν₀ν₀ᵀ] = I = ∂h[0]/∂h₀).
"""
from __future__ import annotations

import numpy as np

from ..autodiff import backward_step
from ..backends.numpy import run_program
from ..checks import count
from ..forward_mode import tangent_step
from .base import Algorithm, flat_layout, per_sample_grads
from .tangents import Directions, run_tangents

EPS = 1e-7


class UORO(Algorithm):
    """``rc.UORO(seed=0)``: unbiased online recurrent optimisation, rank one per sample."""

    name = "UORO"

    def __init__(self, seed: int = 0):
        self.seed = count("UORO", "seed", seed, at_least=0)

    def __repr__(self) -> str:
        return f"rc.UORO(seed={self.seed})"

    def prepare(self, step):
        return _Prepared(step, self.seed)


class _Prepared:
    def __init__(self, step, seed):
        self.st, self.seed = step, seed
        self.stream = 0  # set by fit_online for each new stream (algorithms/online.py)
        self.jvp = tangent_step(step, params=())
        self.bwd = backward_step(step)
        self.layout = flat_layout(step)
        self.P = sum(n for _, n, _ in self.layout.values())

    def begin(self, params, states, learned, B, dtype):
        # stream k of a trainer's fit_online calls draws from its own generator (stream 0, and
        # every sequence_grad call: from the seed alone), not each from the seed again, which
        # drew the same signs for every stream; a continued stream's carry holds its generator
        rng = np.random.default_rng(self.seed if not self.stream else [self.seed, self.stream])
        s = {k: np.zeros((B, n), dtype=dtype) for k, n in self.st.states.items()}
        theta = np.zeros((B, self.P), dtype=dtype)
        for k in learned:
            nu = rng.choice([-1.0, 1.0], size=(B, self.st.states[k])).astype(dtype)
            o, n, _ = self.layout[self.st.state_init[k]]
            s[k] += nu
            theta[:, o:o + n] += nu
        return rng, s, theta

    def _backward(self, env, carry, w, B, dt):
        """(per-sample ∂θ contributions (B, P), {state: δh[t-1]}) of the backward step."""
        bwd, e = self.bwd, dict(env)
        for k, n in self.st.states.items():
            e[bwd.carry_in[k]] = carry.get(k, np.zeros((B, n), dtype=dt))
        e[bwd.weight] = w[:, None]
        run_program(bwd.prog, e, B, dt)
        d = {k: (np.zeros((B, self.st.states[k]), dtype=dt) if key is None else np.broadcast_to(e[key], (B, self.st.states[k])))
             for k, key in bwd.carry_out.items()}
        return per_sample_grads(bwd, e, B, self.layout, dt), d

    def step(self, env, w, carry):
        rng, s, theta = carry
        B, dt = len(w), theta.dtype
        # the gradient from the estimate at t-1
        direct, dl = self._backward(env, {}, w, B, dt)
        c = sum((dl[k] * s[k]).sum(axis=1) for k in self.st.states)
        g = (c[:, None] * theta + direct).sum(axis=0)
        # the estimate at t
        ts = self.jvp
        tan = run_tangents(ts.prog, env, {ts.state_seeds[k]: s[k][:, None, :] for k in self.st.states},
                           Directions(1, {}, {}, {}), B, dt)
        ds = {k: np.zeros((B, n), dtype=dt) if ts.out[k] is None else np.broadcast_to(tan[ts.out[k]], (B, 1, n))[:, 0]
              for k, n in self.st.states.items()}
        nu = {k: rng.choice([-1.0, 1.0], size=(B, n)).astype(dt) for k, n in self.st.states.items()}
        nu_i, _ = self._backward(env, nu, np.zeros(B, dtype=dt), B, dt)
        norm = lambda d: np.sqrt(sum((v ** 2).sum(axis=1) for v in d.values()))  # noqa: E731
        rho0 = np.sqrt((np.linalg.norm(theta, axis=1) + EPS) / (norm(ds) + EPS))[:, None]
        rho1 = np.sqrt((np.linalg.norm(nu_i, axis=1) + EPS) / (norm(nu) + EPS))[:, None]
        s = {k: rho0 * ds[k] + rho1 * nu[k] for k in self.st.states}
        theta = theta / rho0 + nu_i / rho1
        return g, (rng, s, theta)

    @staticmethod
    def per_sample(carry):
        """Each sample's rank-one factors ``(s̃, θ̃)`` (for tests of the estimate's mean)."""
        return carry[1], carry[2]
