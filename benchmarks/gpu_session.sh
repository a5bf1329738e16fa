#!/bin/bash
# Every check that needs a GPU, in order of value, each bounded (about 7 minutes in all):
#   bash benchmarks/gpu_session.sh          # on the GPU machine; logs and JSON under $OUT
# 1. the persistent kernel against the oracle (float64), without and then with thread-block
#    clusters; what fails is left out of step 2, so that a kernel fault or a hung barrier
#    cannot poison the CUDA context of the timing run;
# 2. benchmarks/gpu_check.py: zoo correctness, strict float64, timings vs cuDNN (< 5 min);
# 3. the other GPU tests of the PTX backend and of the PyTorch layer on CUDA tensors;
# 4. benchmarks/bench_layers.py --device cuda (issue #16's GPU goals); 5. a short GPU fuzz run.
# Uses the machine's python3 (PyTorch, cuda-python); llvmlite 0.50 is installed from .whl/
# (carried) when the machine has another version.
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv
V=$(python3 -c "import llvmlite; print(llvmlite.__version__)" 2>/dev/null)
echo "llvmlite on this machine: ${V:-none}"
if [ "$V" != "0.50.0" ] && ls .whl/llvmlite-0.50.0-*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/llvmlite-0.50.0-*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
python3 -c "import llvmlite; print('llvmlite used:', llvmlite.__version__)"
PT="python3 -m pytest -q -p no:cacheprovider"

timeout 90 $PT -x tests/test_ptx_persistent.py -k "cuda and nocluster" 2>&1 | tee "$OUT/pytest_persistent.log"
P0=${PIPESTATUS[0]}
timeout 90 $PT tests/test_ptx_persistent.py -k "cuda and not nocluster" 2>&1 | tee -a "$OUT/pytest_persistent.log"
P1=${PIPESTATUS[0]}
EXTRA=""
if [ "$P0" != 0 ]; then EXTRA="--no-persistent"; elif [ "$P1" != 0 ]; then EXTRA="--no-cluster"; fi
echo "persistent tests: $P0 (no clusters), $P1 (clusters); gpu_check $EXTRA"
timeout 250 python3 benchmarks/gpu_check.py --budget 190 $EXTRA 2>&1 | tee "$OUT/gpu_check.log"
timeout 60 $PT tests/test_ptx.py tests/test_ptx_stacking.py -k cuda 2>&1 | tee "$OUT/pytest_cuda.log"
timeout 60 $PT tests/test_ptx_memory.py -k cuda 2>&1 | tee -a "$OUT/pytest_cuda.log"   # memory= on the GPU
timeout 60 $PT tests/test_ptx_device.py tests/test_ptx_device_plan.py -k cuda 2>&1 | tee -a "$OUT/pytest_cuda.log"   # device arrays in and out
timeout 60 $PT tests/test_torch_device.py -k cuda 2>&1 | tee -a "$OUT/pytest_cuda.log"   # the PyTorch layer on CUDA tensors
timeout 90 python3 benchmarks/bench_layers.py --device cuda --compile none --steps 5 --out "$OUT/layers-cuda.json" \
  2>&1 | tee "$OUT/layers_cuda.log"   # issue #16's GPU goals: the PyTorch loop, nn.LSTM on cuDNN
RNNCOMP_FUZZ_EXAMPLES=12 RNNCOMP_FUZZ_LOG="$OUT/fuzz_cuda.jsonl" HYPOTHESIS_PROFILE=long timeout 70 \
  $PT -m fuzz tests/test_fuzz.py -k ptx_cuda 2>&1 | tee "$OUT/fuzz_cuda.log"
echo "gpu_session done"
