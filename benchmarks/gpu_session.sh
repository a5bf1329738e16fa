#!/bin/bash
# Every check that needs a GPU, in order of value, each bounded (about 8 minutes in all):
#   bash benchmarks/gpu_session.sh          # on the GPU machine; logs and JSON under $OUT
# 1. the persistent kernel against the oracle (float64); if it fails, step 2 leaves it out,
#    so that a kernel fault cannot poison the CUDA context of the timing run;
# 2. benchmarks/gpu_check.py: zoo correctness, strict float64, timings vs cuDNN (< 5 min);
# 3. the other GPU tests of the PTX backend; 4. a short GPU fuzz run (float64 + float32).
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

timeout 110 python3 -m pytest -q -x -p no:cacheprovider tests/test_ptx_persistent.py -k cuda 2>&1 \
  | tee "$OUT/pytest_persistent.log"
EXTRA=""
[ "${PIPESTATUS[0]}" = 0 ] || EXTRA="--no-persistent"
timeout 300 python3 benchmarks/gpu_check.py $EXTRA 2>&1 | tee "$OUT/gpu_check.log"
timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_ptx.py tests/test_ptx_stacking.py -k cuda 2>&1 \
  | tee "$OUT/pytest_cuda.log"
RNNCOMP_FUZZ_EXAMPLES=40 RNNCOMP_FUZZ_LOG="$OUT/fuzz_cuda.jsonl" HYPOTHESIS_PROFILE=long timeout 80 \
  python3 -m pytest -q -p no:cacheprovider -m fuzz tests/test_fuzz.py -k ptx_cuda 2>&1 | tee "$OUT/fuzz_cuda.log"
echo "gpu_session done"
