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
# TorchSim 0.6.2 does not travel: it imports warp-lang at import time, a 149 MB wheel (the carry limit is 64 MiB),
# so bench_relax's TorchSim line is measured on the CPU only (README).
# then on the device: SECTIONS="diffusion" bash scripts/gpu_check.sh  (SECTIONS: any of gpu relax scaling rm
# diffusion morered guidance; default all; TRAIN_SECONDS sets the RM training budget, DIFFUSION_SECONDS the
# denoiser's). Without CUDA every section runs its CPU fallback (small sizes, short budgets), so the script is known
# to work before device time is spent: `bash scripts/gpu_check.sh` here.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
SECTIONS=${SECTIONS:-"gpu relax scaling rm"}  # about 8 minutes on the GPU; add morered guidance diffusion by name
has() { [[ " $SECTIONS " == *" $1 "* ]]; }
mkdir -p "$OUT"
if ls build/device/wheels/*.whl > /dev/null 2>&1; then
  python -m pip install --no-index --no-deps -q build/device/wheels/*.whl > "$OUT/pip.txt" 2>&1
fi
export PYTHONPATH="$PWD/platform${PYTHONPATH:+:$PYTHONPATH}"
DEVICE=$(python -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
if [ "$DEVICE" = cuda ]; then
  TRAIN_SECONDS=${TRAIN_SECONDS:-60}; DIFFUSION_SECONDS=${DIFFUSION_SECONDS:-400}
  RELAX_N=4096; BATCHES="256 1024 4096 16384"; THROUGHPUT_N=128; DEVICES="cpu cuda"; SAMPLES=1000
else  # the CPU fallback: the same commands at sizes that finish in a few minutes on 2 cores
  TRAIN_SECONDS=${TRAIN_SECONDS:-20}; DIFFUSION_SECONDS=${DIFFUSION_SECONDS:-20}
  RELAX_N=64; BATCHES="16 64"; THROUGHPUT_N=8; DEVICES="cpu"; SAMPLES=16
fi
echo "device: $DEVICE" | tee "$OUT/gpu.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$OUT/gpu.txt" 2>&1
python -c "import torch; print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')" \
    >> "$OUT/gpu.txt" 2>&1

if has gpu; then
echo "== gpu tests"
timeout 100 python -m pytest -p no:cacheprovider -q -o addopts="" -m gpu tests/test_gpu.py > "$OUT/gpu_tests.txt" 2>&1
echo "rc=$?" >> "$OUT/gpu_tests.txt"; tail -n 3 "$OUT/gpu_tests.txt"
fi

if has relax; then
echo "== bench_relax --device $DEVICE: atomscreen (as shipped / before), serial ASE; $RELAX_N C8 cells, float32"
timeout 150 python scripts/bench_relax.py --device $DEVICE --dtype float32 --n $RELAX_N --ase-subset 16 \
    --out "$OUT/bench_relax_$DEVICE.jsonl" > /dev/null 2> "$OUT/bench_relax_$DEVICE.err"
echo "rc=$?"; tail -n 1 "$OUT/bench_relax_$DEVICE.jsonl"
fi

if has scaling; then
echo "== bench_relax --scaling --device $DEVICE: batch sizes $BATCHES, C8-C64 cells and C7H10O2 molecules"
timeout 100 python scripts/bench_relax.py --scaling --device $DEVICE --dtype float32 --steps 20 --batch-sizes $BATCHES \
    --out "$OUT/bench_relax_scaling_$DEVICE.jsonl" > /dev/null 2> "$OUT/bench_relax_scaling_$DEVICE.err"
echo "rc=$?"; python -c "
import json, sys
for l in open(sys.argv[1]):
    d = json.loads(l); print(d['kind'], d['atoms_per_structure'], d['n_structures'], d['atom_steps_per_s'])
" "$OUT/bench_relax_scaling_$DEVICE.jsonl"
fi

if has morered; then
echo "== MoreRed relaxation throughput, $THROUGHPUT_N molecules, on $DEVICES"
timeout 240 python scripts/bench_morered_throughput.py --devices $DEVICES --n $THROUGHPUT_N --max-steps 100 \
    --data build/device/qm9.npz > "$OUT/bench_morered_throughput.jsonl" 2> "$OUT/bench_morered_throughput.err"
echo "rc=$?"; tail -n 3 "$OUT/bench_morered_throughput.jsonl"
fi

if has guidance; then
echo "== energy-guided generation throughput, $THROUGHPUT_N molecules: unguided / batched RM / serial ASE RM, $DEVICES"
for device in $DEVICES; do
  timeout 200 python scripts/bench_guidance.py --throughput $THROUGHPUT_N --device $device --data build/device/qm9.npz \
      --out "$OUT/bench_guidance_throughput.jsonl" > /dev/null 2> "$OUT/bench_guidance_throughput_$device.err"
  echo "rc=$?"
done
tail -n 6 "$OUT/bench_guidance_throughput.jsonl"
fi

if has rm; then
echo "== train qm7b-like on $DEVICE ($TRAIN_SECONDS s)"
timeout $((TRAIN_SECONDS + 60)) python scripts/train_device.py build/device/qm7b-like.json --device $DEVICE \
    --batch-size 256 --epochs 100000 --max-seconds "$TRAIN_SECONDS" --print-every 5 \
    --output "$OUT/qm7b_like.pt" > "$OUT/train_qm7b_like.jsonl" 2> "$OUT/train_qm7b_like.err"
echo "rc=$?"; tail -n 1 "$OUT/train_qm7b_like.jsonl"
fi

if has diffusion; then
echo "== train the paper-size denoiser on $DEVICE ($DIFFUSION_SECONDS s)"
timeout $((DIFFUSION_SECONDS + 120)) python scripts/train_denoiser.py build/device/diffusion-qm9-gpu.json \
    --data build/device/qm9.npz --out "$OUT/diffusion_qm9_gpu.pt" --device $DEVICE --max-seconds "$DIFFUSION_SECONDS" \
    > "$OUT/train_diffusion.jsonl" 2> "$OUT/train_diffusion.err"
echo "rc=$?"; tail -n 1 "$OUT/train_diffusion.jsonl"; rm -f "$OUT/diffusion_qm9_gpu.resume.pt"
for sampler in ddpm morered-jt; do
  echo "== sample $SAMPLES molecules, $sampler, on $DEVICE"
  timeout 100 python scripts/sample_denoiser.py "$OUT/diffusion_qm9_gpu.pt" --sampler $sampler --n $SAMPLES \
      --batch $SAMPLES --device $DEVICE --out "$OUT/samples_$sampler.npz" > "$OUT/samples_$sampler.json" \
      2> "$OUT/samples_$sampler.err"
  echo "rc=$?"; cat "$OUT/samples_$sampler.json"
done
fi
