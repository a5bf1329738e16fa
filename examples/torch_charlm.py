"""A character-level language model in PyTorch whose recurrent layer is an rnncomp cell:
Embedding → softsign peephole LSTM (rnncomp.torch.Recurrent) → Linear, trained with
torch.optim.AdamW on the shipped corpus, measured in held-out bits per character; then the
time per training step against the same cell as a PyTorch Python loop, that loop under
``torch.compile``, and ``nn.LSTM`` (fused, but a different cell) as a yardstick.

The cell is declared in rnncomp's DSL in examples/charlm_common.py.  Training is stateful
truncated BPTT: 32 parallel streams of the text, windows of 100 characters, each window
starting from the state the previous one ended in.

    python examples/torch_charlm.py                       # ≈ 1 min on 2 loaded cores: ≈ 2.15 bpc
    python examples/torch_charlm.py --epochs 1 --compile none
    python examples/torch_charlm.py --quick               # a few seconds (the smoke test)
"""
import math
import os
import sys
import time

# Run as a script, set before torch loads its OpenMP runtime: torch's threads otherwise spin
# after each parallel op and, on a busy machine, take the cores from what runs next (here the
# rnncomp layer, but every torch model was 2–4x slower on this project's shared 2-core
# machine; see benchmarks/bench_layers.py).  An OMP_WAIT_POLICY already set is kept.
if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from charlm_common import GATES, CharStreams, arguments, bits, peephole_cell, time_steps  # noqa: E402

from rnncomp.torch import Recurrent  # noqa: E402


def softsign_gate(z):
    return (1 + F.softsign(z)) / 2


def cell_step(wx, h, c, U, pi, pf, po):
    """One step of the cell, given the hoisted input products ``wx`` (B, 4H)."""
    zi, zf, zg, zo = (wx + h @ U.T).chunk(4, dim=1)
    c = softsign_gate(zf + pf * c) * c + softsign_gate(zi + pi * c) * F.softsign(zg)
    return softsign_gate(zo + po * c) * F.softsign(c), c


class LoopLSTM(nn.Module):
    """The same cell as a PyTorch loop over time, written as a careful user would: the gate
    weights stacked and the input products hoisted out of the loop (one matrix product for
    all T steps).  Parameters of the same names and shapes as the rnncomp layer's; ``step``
    is :func:`cell_step` or a compiled version of it."""

    def __init__(self, n_in, n_hidden, step=cell_step):
        super().__init__()
        self.step = step
        H = n_hidden
        for g in GATES:
            self.register_parameter(f"W{g}", nn.Parameter(torch.empty(H, n_in)))
            self.register_parameter(f"U{g}", nn.Parameter(torch.empty(H, H)))
            self.register_parameter(f"b{g}", nn.Parameter(torch.zeros(H)))
        for g in "ifo":
            self.register_parameter(f"p{g}", nn.Parameter(torch.zeros(H)))
        for g in GATES:
            nn.init.xavier_uniform_(getattr(self, f"W{g}"))
            nn.init.xavier_uniform_(getattr(self, f"U{g}"))
        nn.init.ones_(self.bf)

    def forward(self, x, h0=None):
        T, B, _ = x.shape
        H = self.Ui.shape[0]
        W = torch.cat([getattr(self, f"W{g}") for g in GATES])
        U = torch.cat([getattr(self, f"U{g}") for g in GATES])
        b = torch.cat([getattr(self, f"b{g}") for g in GATES])
        h = x.new_zeros(B, H) if h0 is None else h0["h"]
        c = x.new_zeros(B, H) if h0 is None else h0["c"]
        wx = (x.reshape(T * B, -1) @ W.T + b).reshape(T, B, 4 * H)
        hs = []
        for t in range(T):
            h, c = self.step(wx[t], h, c, U, self.pi, self.pf, self.po)
            hs.append(h)
        return torch.stack(hs), {"h": h, "c": c}


class FusedLSTM(nn.Module):
    """``nn.LSTM`` (sigmoid/tanh, no peepholes: a different cell) with the same interface."""

    def __init__(self, n_in, n_hidden):
        super().__init__()
        self.lstm = nn.LSTM(n_in, n_hidden)

    def forward(self, x, h0=None):
        state = None if h0 is None else (h0["h"][None], h0["c"][None])
        y, (h, c) = self.lstm(x, state)
        return y, {"h": h[0], "c": c[0]}


class CharLM(nn.Module):
    """Embedding → a recurrent layer ``rnn(x, h0) -> (h per step, final states)`` → Linear."""

    def __init__(self, rnn, vocab, embed, hidden):
        super().__init__()
        self.embed, self.rnn, self.head = nn.Embedding(vocab, embed), rnn, nn.Linear(hidden, vocab)

    def forward(self, tokens, state=None):
        h, final = self.rnn(self.embed(tokens), state)
        return self.head(h), final


def make_model(kind, vocab, embed, hidden, device="cpu"):
    """``kind``: "rnncomp", "loop", "compiled step" (the loop calling ``torch.compile(cell_step)``),
    "compiled loop" (``torch.compile`` of the whole loop, unrolled over T) or "nn.LSTM";
    ``device``: "cpu" (rnncomp's native backend) or "cuda" (its PTX backend on CUDA tensors)."""
    torch.manual_seed(0)
    if kind == "rnncomp":
        rnn = Recurrent(peephole_cell(embed, hidden), output="y", backend="native" if device == "cpu" else "ptx")
    elif kind == "nn.LSTM":
        rnn = FusedLSTM(embed, hidden)
    elif kind == "compiled step":
        rnn = LoopLSTM(embed, hidden, step=torch.compile(cell_step, fullgraph=True))
    else:
        rnn = LoopLSTM(embed, hidden)
        if kind == "compiled loop":
            rnn = torch.compile(rnn, fullgraph=True)
    return CharLM(rnn, vocab, embed, hidden).to(device)


def train_step(model, opt, x, y, state):
    """One AdamW step on a window; returns (loss in nats, the final state, detached)."""
    logits, final = model(x, state)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    opt.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss.item(), {k: v.detach() for k, v in final.items()}


@torch.no_grad()
def held_out_bpc(model, data, T):
    total, n, state = 0.0, 0, None
    for x, y in data.windows("test", T):
        logits, state = model(torch.from_numpy(x), state)
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.from_numpy(y).reshape(-1),
                                 reduction="sum").item()
        n += y.size
    return bits(total / n)


def check_loop(embed=8, hidden=16, T=7, B=3):
    """The PyTorch loop computes the rnncomp cell: largest differences of the outputs and of
    the parameters' gradients, float32, on the rnncomp layer's parameters."""
    torch.manual_seed(1)
    layer, loop = Recurrent(peephole_cell(embed, hidden), output="y"), LoopLSTM(embed, hidden)
    loop.load_state_dict(layer.state_dict())
    x = torch.randn(T, B, embed)
    h0 = {"h": torch.randn(B, hidden), "c": torch.randn(B, hidden)}
    ya, fa = layer(x, h0)
    yb, fb = loop(x, h0)
    (ya.square().sum() + fa["c"].sum()).backward()
    (yb.square().sum() + fb["c"].sum()).backward()
    d_out = (ya - yb).abs().max().item()
    theirs = dict(loop.named_parameters())
    d_grad = max((t.grad - theirs[n].grad).abs().max().item() for n, t in layer.named_parameters())
    return d_out, d_grad


def step_times(kinds, vocab, embed, hidden, T, batch, steps=5, warmup=1, device="cpu"):
    """Seconds per training step (median and best of ``steps``) of each model kind on one random
    window, and the seconds of its first step (for torch.compile: the compile).  A step ends with
    ``loss.item()``, so a CUDA step's time includes its kernels."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, vocab, (T, batch), generator=g), torch.randint(0, vocab, (T, batch), generator=g)
    x, y = x.to(device), y.to(device)
    out = {}
    for kind in kinds:
        model = make_model(kind, vocab, embed, hidden, device)
        opt = torch.optim.AdamW(model.parameters(), 1e-3)
        t0 = time.perf_counter()
        train_step(model, opt, x, y, None)
        first = time.perf_counter() - t0
        out[kind] = dict(time_steps(lambda: train_step(model, opt, x, y, None), steps, warmup),
                         first_step_s=first)
    return out


def main(argv=None):
    p = arguments(" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--compile", default="step", choices=["step", "loop", "none"],
                   help="time torch.compile of the cell's step, of the whole loop (its compile "
                        "unrolls T steps: minutes) or neither")
    p.add_argument("--quick", action="store_true", help="a small run for the smoke test")
    a = p.parse_args(argv)
    limit = None
    if a.quick:
        limit, a.epochs, a.hidden, a.embed, a.T, a.batch, a.time_steps, a.compile = 6000, 1, 24, 8, 20, 8, 1, "none"

    d_out, d_grad = check_loop(a.embed, a.hidden)
    print(f"the PyTorch loop against the rnncomp layer (float32): outputs differ by {d_out:.1e}, "
          f"gradients by {d_grad:.1e}")
    data = CharStreams(batch=a.batch, limit=limit)
    V = len(data.vocab)
    model = make_model("rnncomp", V, a.embed, a.hidden)
    opt = torch.optim.AdamW(model.parameters(), a.lr)
    n_params = sum(t.numel() for t in model.parameters())
    print(f"{data.n_chars} characters, {V} distinct; model: Embedding({V}, {a.embed}) → softsign peephole "
          f"LSTM (H = {a.hidden}) → Linear; {n_params} parameters")
    before = held_out_bpc(model, data, a.T)
    print(f"held-out: {before:.3f} bits per character before training (uniform: {math.log2(V):.3f})")
    t0, curve = time.perf_counter(), []
    for epoch in range(a.epochs):
        state, losses = None, []
        for x, y in data.windows("train", a.T):
            loss, state = train_step(model, opt, torch.from_numpy(x), torch.from_numpy(y), state)
            losses.append(loss)
        curve.append(held_out_bpc(model, data, a.T))
        print(f"  epoch {epoch + 1}: train {bits(sum(losses) / len(losses)):.3f} bpc, held-out {curve[-1]:.3f} bpc "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    seconds = time.perf_counter() - t0
    result = {"bpc_before": before, "bpc": curve[-1] if curve else before, "curve": curve,
              "uniform_bpc": math.log2(V), "seconds": seconds, "loop_difference": (d_out, d_grad)}
    print(f"held-out: {result['bpc']:.3f} bits per character after {a.epochs} epoch{'s' if a.epochs != 1 else ''} ({seconds:.0f} s)")

    if a.time_steps:
        kinds = ["rnncomp", "loop"] + ([] if a.compile == "none" else [f"compiled {a.compile}"]) + ["nn.LSTM"]
        print(f"\ntime per training step (T = {a.T}, B = {a.batch}, H = {a.hidden}, median of {a.time_steps}; "
              f"torch on {torch.get_num_threads()} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
              f"load average {os.getloadavg()[0]:.1f}):")
        times = step_times(kinds, V, a.embed, a.hidden, a.T, a.batch, a.time_steps)
        ours = times["rnncomp"]["step_s"]
        for kind, t in times.items():
            note = "  (a different cell: sigmoid/tanh, no peepholes)" if kind == "nn.LSTM" else ""
            first = f", first step (the compile) {t['first_step_s']:.1f} s" if "compiled" in kind else ""
            print(f"  {kind:<14} {1e3 * t['step_s']:8.1f} ms   {t['step_s'] / ours:5.2f}× rnncomp's time"
                  f"{first}{note}")
        result["step_times"] = times
    return result


if __name__ == "__main__":
    main()
