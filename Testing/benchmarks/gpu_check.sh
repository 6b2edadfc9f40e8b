#!/usr/bin/env bash
# One short GPU session: the CUDA tests, then the GPU benchmarks of RESULTS.md (fp16 forward vs HF, end-to-end
# 1080p video vs the HF pipeline, GPU TSDF). Run from the repository root on a CUDA machine where the package
# and its test extras are installed (pip install -e .[test]); everything is written to ${OUT:-gpu_check}/.
# Usage: bash Testing/benchmarks/gpu_check.sh
set -uo pipefail
out="${OUT:-gpu_check}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python3 - <<'EOF' 2>&1 | tee "$out/device.txt"
import torch
assert torch.cuda.is_available(), "no CUDA device"
print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(), torch.cuda.is_bf16_supported())
EOF
[ "${PIPESTATUS[0]}" -eq 0 ] || exit 1
# CUDA paths: TSDF on the GPU, fp16/bf16 inference, training step with AMP
python3 -m pytest -q -x Testing/SurgicalDepthLib/test_tsdf.py Testing/SurgicalDepthLib/test_default_model.py \
    Testing/SurgicalDepthLib/test_cli_predict.py 2>&1 | tail -n 5 | tee "$out/tests.txt"
# forward pass vs HF transformers, fp16, batch 1 and 8
for batch in 1 8; do
  timeout 240 python3 Testing/benchmarks/bench_model.py --device cuda --precision fp16 --batch "$batch" \
      --repeats 20 --rounds 3 2>&1 | tail -n 3 | tee -a "$out/bench_model.txt"
done
# end to end: a generated 1080p clip, DA-S at 518, HF pipeline (fp32) vs predict fp16 and bf16 (target: 60 frames/s)
timeout 300 python3 Testing/benchmarks/bench_video.py --device cuda --synthetic 1080x1920 --frames 60 --rounds 2 \
    --precisions fp16 bf16 2>&1 | tail -n 8 | tee "$out/bench_video.txt"
# geometry: GPU TSDF vs Open3D (when open3d is installed)
timeout 120 python3 Testing/benchmarks/bench_geometry.py --device cuda 2>&1 | tail -n 8 | tee "$out/bench_geometry.txt"
