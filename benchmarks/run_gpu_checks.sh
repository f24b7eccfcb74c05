#!/usr/bin/env bash
# The GPU checks in one command: the CUDA test tier (python -m pytest -m cuda), then benchmarks/gpu.py.
#
#   bash benchmarks/run_gpu_checks.sh [gpu.py arguments, e.g. --presets fcclip-large]
#
# Outputs (tier log, figures, benchmark table, nvidia-smi) go to $OUT when it is set, else to a new temporary
# folder; the last line names it. Time limits (seconds): TIER_TIMEOUT (default 330), BENCH_TIMEOUT (default 420).
# GPU_CHECKS=tier or GPU_CHECKS=bench runs one of the two (e.g. one per call where a call may last 10 minutes).
# Exit status: 0 when both passed, 1 when one failed, 2 without a visible GPU. To try the script itself on a
# machine without one: MASKADAPTER_TEST_DEVICE=cpu bash benchmarks/run_gpu_checks.sh --device cpu --tiny
set -u
cd "$(dirname "$0")/.."
out="${OUT:-$(mktemp -d -t maskadapter-gpu-checks.XXXXXX)}"
mkdir -p "$out"

if ! python -c "import maskadapter, pytest, pytest_timeout, segment_anything" 2>/dev/null; then
    pip install -q -e ".[dev]" || { echo "pip install -e '.[dev]' failed" >&2; exit 1; }
fi
if [ "${MASKADAPTER_TEST_DEVICE:-}" != cpu ] && \
        ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "no CUDA device visible: nothing to check (MASKADAPTER_TEST_DEVICE=cpu python -m pytest -m cuda runs" \
         "the tier CPU against CPU; python benchmarks/gpu.py --device cpu --tiny smoke-runs the benchmark)" >&2
    exit 2
fi
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true

status=0
checks="${GPU_CHECKS:-both}"
if [ "$checks" != bench ]; then
    MASKADAPTER_FIGURES_FILE="$out/figures.txt" timeout "${TIER_TIMEOUT:-330}" \
        python -m pytest -m cuda -q -rs -p no:cacheprovider --durations=10 2>&1 | tee "$out/tier.txt"
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi
if [ "$checks" != tier ]; then
    (cd benchmarks && timeout "${BENCH_TIMEOUT:-420}" python gpu.py "$@") 2>&1 | tee "$out/benchmark.txt"
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi
echo "GPU checks: $([ "$status" -eq 0 ] && echo passed || echo FAILED); outputs in $out"
exit "$status"
