#!/usr/bin/env bash
# One run on the lent GPU machine (Python 3.12, torch, numpy, scipy; no registry): the gpu tests, the relaxation
# benchmark on CUDA, and the QM7b-like training of examples/train_qm7b_like.yaml. Everything lands under $OUT as JSON lines
# and a checkpoint. Prepare here first (the wheels and the packed data travel with `carry: ["build/device"]`):
#   python scripts/pack_training_set.py examples/train_qm7b_like.yaml --out build/device
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#       --platform any -d build/device/wheels ase vesin pytest pluggy iniconfig packaging sqlalchemy \
#       typing_extensions pyyaml
#   python scripts/pack_qm9.py build/device/qm9.npz --float32      # for the denoiser (issue 15)
#   python -c "import yaml, json; print(json.dumps(yaml.safe_load(open('examples/train_diffusion_qm9_gpu.yaml'))))" \
#       > build/device/diffusion-qm9-gpu.json
# then on the device: SECTIONS="diffusion" bash scripts/gpu_check.sh  (SECTIONS: any of gpu relax rm diffusion
# morered guidance; default all; TRAIN_SECONDS sets the RM training budget, DIFFUSION_SECONDS the denoiser's)
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
TRAIN_SECONDS=${TRAIN_SECONDS:-330}
DIFFUSION_SECONDS=${DIFFUSION_SECONDS:-400}
SECTIONS=${SECTIONS:-"gpu relax morered guidance rm diffusion"}
has() { [[ " $SECTIONS " == *" $1 "* ]]; }
mkdir -p "$OUT"
python -m pip install --no-index --no-deps -q build/device/wheels/*.whl > "$OUT/pip.txt" 2>&1
export PYTHONPATH="$PWD/platform"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
python -c "import torch; print(torch.__version__, torch.cuda.get_device_name())" >> "$OUT/gpu.txt" 2>&1

if has gpu; then
echo "== gpu tests"
timeout 150 python -m pytest -p no:cacheprovider -q -o addopts="" -m gpu tests/test_gpu.py > "$OUT/gpu_tests.txt" 2>&1
echo "rc=$?" >> "$OUT/gpu_tests.txt"; tail -n 3 "$OUT/gpu_tests.txt"
fi

if has relax; then
echo "== bench_relax --device cuda"
timeout 150 python scripts/bench_relax.py --device cuda --dtype float32 --n 1024 --ase-subset 16 \
    > "$OUT/bench_relax_cuda.jsonl" 2> "$OUT/bench_relax_cuda.err"
echo "rc=$?"; tail -n 1 "$OUT/bench_relax_cuda.jsonl"
fi

if has morered; then
echo "== MoreRed relaxation throughput, 128 molecules, cpu baseline then cuda"
timeout 240 python scripts/bench_morered_throughput.py --devices cpu cuda --n 128 --max-steps 100 \
    --data build/device/qm9.npz > "$OUT/bench_morered_throughput.jsonl" 2> "$OUT/bench_morered_throughput.err"
echo "rc=$?"; tail -n 3 "$OUT/bench_morered_throughput.jsonl"
fi

if has guidance; then
echo "== energy-guided generation throughput, 128 molecules: unguided / batched RM / serial ASE RM, cpu then cuda"
for device in cpu cuda; do
  timeout 200 python scripts/bench_guidance.py --throughput 128 --device $device --data build/device/qm9.npz \
      --out "$OUT/bench_guidance_throughput.jsonl" > /dev/null 2> "$OUT/bench_guidance_throughput_$device.err"
  echo "rc=$?"
done
tail -n 6 "$OUT/bench_guidance_throughput.jsonl"
fi

if has rm; then
echo "== train qm7b-like on cuda ($TRAIN_SECONDS s)"
timeout $((TRAIN_SECONDS + 90)) python scripts/train_device.py build/device/qm7b-like.json --device cuda \
    --batch-size 256 --epochs 100000 --max-seconds "$TRAIN_SECONDS" --print-every 5 \
    --output "$OUT/qm7b_like.pt" > "$OUT/train_qm7b_like.jsonl" 2> "$OUT/train_qm7b_like.err"
echo "rc=$?"; tail -n 1 "$OUT/train_qm7b_like.jsonl"
fi

if has diffusion; then
echo "== train the paper-size denoiser on cuda ($DIFFUSION_SECONDS s)"
timeout $((DIFFUSION_SECONDS + 120)) python scripts/train_denoiser.py build/device/diffusion-qm9-gpu.json \
    --data build/device/qm9.npz --out "$OUT/diffusion_qm9_gpu.pt" --device cuda --max-seconds "$DIFFUSION_SECONDS" \
    > "$OUT/train_diffusion.jsonl" 2> "$OUT/train_diffusion.err"
echo "rc=$?"; tail -n 1 "$OUT/train_diffusion.jsonl"; rm -f "$OUT/diffusion_qm9_gpu.resume.pt"
for sampler in ddpm morered-jt; do
  echo "== sample 1000 molecules, $sampler, on cuda"
  timeout 100 python scripts/sample_denoiser.py "$OUT/diffusion_qm9_gpu.pt" --sampler $sampler --n 1000 \
      --batch 1000 --device cuda --out "$OUT/samples_$sampler.npz" > "$OUT/samples_$sampler.json" \
      2> "$OUT/samples_$sampler.err"
  echo "rc=$?"; cat "$OUT/samples_$sampler.json"
done
fi
