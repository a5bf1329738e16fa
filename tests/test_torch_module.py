"""rnncomp.torch.Recurrent as one module of a PyTorch model: mixed precision (torch.autocast),
packed sequences, and the checks that name what a call got wrong."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="rnncomp.torch needs PyTorch (pip install 'rnncomp[torch]')")

import rnncomp as rc  # noqa: E402
from rnncomp.torch import Recurrent  # noqa: E402


@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16])
def test_under_autocast_the_layer_takes_the_lower_precision_of_the_layer_before_it(low):
    """Under ``torch.autocast("cpu")`` a Linear before the layer returns bfloat16 (float16), which
    the layer refused ("has dtype torch.bfloat16, but the layer is torch.float32"): a model with
    the layer inside could not run under autocast (found by a probe).  The layer now casts such
    inputs and h0 up to its own dtype, as autocast does for the ops it runs in float32; its
    numbers are those of the layer called with the cast inputs, and the gradients reach the
    Linear's parameters."""
    torch.manual_seed(0)
    emb, layer = torch.nn.Linear(4, 3), Recurrent(rc.cells.lstm(3, 6, 2), output="y")
    x = torch.randn(5, 2, 4)
    with torch.autocast("cpu", dtype=low):
        u, h = emb(x), emb(torch.randn(2, 4)).repeat(1, 2)
        assert u.dtype == low
        y, final = layer(u, {"h": h})
    assert y.dtype == torch.float32 and final["c"].dtype == torch.float32
    want, want_final = layer(u.float(), {"h": h.float()})
    assert torch.equal(y, want) and torch.equal(final["c"], want_final["c"])
    (y.square().sum() + final["c"].sum()).backward()
    assert emb.weight.grad is not None and emb.weight.grad.abs().sum() > 0
    assert layer.Wi.grad.dtype == torch.float32
    with pytest.raises(rc.CallError, match=r"has dtype torch.bfloat16, but the layer is torch.float32"):
        layer(u.to(torch.bfloat16))  # outside autocast, still the named error


@pytest.mark.parametrize("dtype, back", [(torch.float32, r"\.float\(\)"), (torch.float64, r"\.double\(\)")])
def test_a_half_layer_called_with_half_inputs_names_its_parameters(dtype, back):
    """``layer.half()`` then a float16 input: the error named the input ("has dtype
    torch.float16, but the layer is torch.float32 ... convert it with .to(torch.float32)"),
    whose advice led to the parameters' error next; the parameters are now checked first, and
    the way back names the layer's own dtype (``.float()`` was given to a float64 layer too)."""
    cell = rc.cells.gru(3, 4, 2)
    for low in (torch.float16, torch.bfloat16):
        layer = Recurrent(cell, output="y", dtype=dtype).to(low)
        with pytest.raises(rc.CallError, match=rf"parameter 'Wz' is {low}, .* convert the layer back with {back}"):
            layer(torch.zeros(5, 2, 3, dtype=low))


def test_a_packed_sequence_is_refused_with_the_way_to_pass_it():
    """nn.LSTM takes a PackedSequence; the layer takes the padded tensor and ``lengths=``.  Its
    error said only "got PackedSequence"; it now says how, and that way gives the same numbers
    as one call per sequence."""
    layer = Recurrent(rc.cells.gru(3, 4, 2), output="y", dtype=torch.float64)
    seqs = [torch.randn(n, 3, dtype=torch.float64) for n in (5, 2, 4)]
    packed = torch.nn.utils.rnn.pack_sequence(seqs, enforce_sorted=False)
    with pytest.raises(rc.CallError, match=r"got PackedSequence; pass the padded tensor and lengths="):
        layer(packed)
    padded, lengths = torch.nn.utils.rnn.pad_packed_sequence(packed)
    y, final = layer(padded, lengths=lengths)
    for b, s in enumerate(seqs):
        alone, last = layer(s[:, None])
        assert torch.allclose(y[:len(s), b], alone[:, 0], rtol=1e-12, atol=1e-14)
        assert torch.allclose(final["h"][b], last["h"][0], rtol=1e-12, atol=1e-14)
