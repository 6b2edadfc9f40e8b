#!/usr/bin/env bash
# One short GPU session: GPU correctness of inference, then the GPU benchmarks of RESULTS.md (fp16 forward vs HF,
# end-to-end 1080p video vs the HF pipeline, GPU TSDF vs Open3D when it is installed). Runs from the repository
# root with or without the package installed (PYTHONPATH points at the two library folders); output under
# ${OUT:-gpu_check}/ (at most 8 files, what the device tool brings back).
# Usage: bash Testing/benchmarks/gpu_check.sh [SECTION ...] — all sections when none is named, else only those:
#   parity tsdf model video geometry fusion live  (e.g. `gpu_check.sh tsdf fusion` for issue #19 alone, ~4 min;
#   all of them can take more than one 10-minute device command)
#   train: issue #15's training run (gpu_train.py; only when named, alone: `gpu_check.sh train`, ~8 min of one
#   command: render ~1.5 min on 16 cores, probe + train TRAIN_MINUTES (default 5), export; 6 files come back)
set -uo pipefail
out="${OUT:-gpu_check}"
mkdir -p "$out"
sections=" $* "
want() { [ "$sections" = "  " ] || [[ "$sections" == *" $1 "* ]]; }
named() { [[ "$sections" == *" $1 "* ]]; }
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/SurgicalDepth:$PWD/SurgicalDepthTraining${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__,
torch.cuda.get_device_name(), 'bf16' if torch.cuda.is_bf16_supported() else 'no bf16')" 2>&1 | tee "$out/device.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || exit 1
want parity && timeout 120 python3 Testing/benchmarks/gpu_parity.py 2>&1 | tee "$out/gpu_parity.txt"
# the fused Triton TSDF kernels compiled on this GPU against the torch path (issue #19)
want tsdf && timeout 180 python3 -m pytest -q -p no:cacheprovider Testing/SurgicalDepthLib/test_tsdf_triton.py \
    Testing/SurgicalDepthLib/test_tsdf.py 2>&1 | tail -n 15 | tee "$out/test_tsdf_gpu.txt"
# forward pass vs HF transformers, fp16, batch 1 and 8
for batch in 1 8; do
  want model && timeout 120 python3 Testing/benchmarks/bench_model.py --device cuda --precision fp16 \
      --batch "$batch" --repeats 20 --rounds 3 2>&1 | tail -n 3 | tee -a "$out/bench_model.txt"
done
# end to end: a generated 1080p clip, DA-S at 518, HF pipeline (fp32) vs predict fp16 and bf16 (target 60 frames/s)
want video && timeout 240 python3 Testing/benchmarks/bench_video.py --device cuda --synthetic 1080x1920 --frames 60 \
    --rounds 2 --precisions fp16 bf16 2>&1 | tail -n 8 | tee "$out/bench_video.txt"
if python3 -c "import open3d" 2>/dev/null; then
  want geometry && timeout 120 python3 Testing/benchmarks/bench_geometry.py --device cuda 2>&1 | tail -n 8 \
      | tee "$out/bench_geometry.txt"
  # issue #19: fusion of realistic clips on the GPU, ours vs VoxelBlockGrid on CUDA:0 (goal: <= 1 ms per 640x480 frame),
  # the fused Triton kernels (auto) and the torch ops they replace
  for kernel in auto torch; do
    want fusion && timeout 240 python3 Testing/benchmarks/bench_fusion.py --device cuda --modes sparse --rounds 3 \
        --kernel "$kernel" 2>&1 | tail -n 6 | tee -a "$out/bench_fusion.txt"
  done
elif want geometry || want fusion; then
  echo "bench_geometry / bench_fusion: open3d not installed" | tee "$out/bench_fusion.txt"
fi
# live OpenIGTLink service: 1080p sent at 30 frames/s, DA-V2-S fp16 (random weights, same computation);
# target >= 30 frames/s answered, p95 latency <= 100 ms. Needs pyigtl (+ crcmod's C extension) on the GPU image.
if ! want live; then
  :
elif python3 -c "import pyigtl" 2>/dev/null; then
  timeout 180 python3 Testing/benchmarks/bench_live.py --device cuda --model random:depth-anything-v2-small \
      --size 1920x1080 --fps 30 --seconds 30 2>&1 | tail -n 8 | tee "$out/bench_live.txt"
else
  echo "bench_live: pyigtl not installed" | tee "$out/bench_live.txt"
fi
# issue #15: the default recipe's clips rendered here, DA-V2-S (started from the default model widened to it)
# trained for TRAIN_MINUTES at 252x308, exported fp16 in <= 15 MiB parts ($out/train/model.safetensors.part*,
# summary.json with the SHA256, log.csv)
if named train; then
  timeout 570 python3 Testing/benchmarks/gpu_train.py --out "$out/train" --data /tmp/sd_train_data \
      --minutes "${TRAIN_MINUTES:-5}" ${TRAIN_ARGS:-} 2>&1 | grep -v "^train:" | tail -n 40
fi
