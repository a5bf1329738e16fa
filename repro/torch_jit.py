"""torch.jit.script and torch.jit.trace of a model with an rnncomp.torch.Recurrent.

Before: script -> torch.jit.frontend.NotSupportedError "Don't support conversion in JoinedStr"
pointing at an f-string inside rnncomp/torch.py; trace -> torch.jit TracingCheckError "Graphs
differed across invocations" (the op's keep flag was a constant True in the trace and False in
the check, which traces again under no_grad).  Expected: script a named rc.CallError; trace
works (and with check_trace=False it already gave the right numbers)."""
import torch
import rnncomp as rc
from rnncomp.torch import Recurrent

F64 = torch.float64
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(3, 4, dtype=F64),
                          Recurrent(rc.cells.gru(4, 5, 2), output="y", dtype=F64, return_final=False))
x = torch.randn(6, 2, 3, dtype=F64)
try:
    torch.jit.script(net)
    print("script: ran")
except Exception as e:
    print("script ->", type(e).__module__ + "." + type(e).__name__ + ":", str(e).splitlines()[0][:200])
try:
    tr = torch.jit.trace(net, (x,))
    x2 = torch.randn(9, 3, 3, dtype=F64)
    tr(x2).square().sum().backward()
    g = net[1].Wz.grad.clone(); net.zero_grad()
    net(x2).square().sum().backward()
    print("trace: ran; other shape, Wz grad diff vs eager", float((g - net[1].Wz.grad).abs().max()))
except Exception as e:
    print("trace ->", type(e).__module__ + "." + type(e).__name__ + ":", str(e).splitlines()[0][:200])
