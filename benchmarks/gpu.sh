#!/usr/bin/env bash
# The CNN recipes on a machine with an NVIDIA GPU, beside the CPU figures in the README.
#
#   pip install 'fashionlab[cuda]'           # JAX with CUDA
#   benchmarks/gpu.sh [OUT] [VARIANT ...]    # OUT defaults to runs/gpu; ~4 minutes on one H100
#
# 1. best-cnn and wide-cnn over 3 seeds (`fashionlab compare`, one run at a time): test accuracy
#    and the whole train call's seconds; each recipe's first seed compiles, the others read XLA's
#    compile cache.
# 2. How the convolutions are computed there: Keras Conv2D against PatchConv2D (im2col), in the
#    compiled loop and one step per dispatch (benchmarks/cpu_conv.py --sections base).
# 3. Any further VARIANTs (recipes or NAME:key=value,...), 2 seeds each, until GPU_SECONDS (default
#    600) have passed since the start.
# Every finished run's figures go to OUT/runs.jsonl, also those of a stage cut short.
set -euo pipefail
out=${1:-runs/gpu}
shift || true
python=${PYTHON:-python3}
budget=${GPU_SECONDS:-600}
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # the convolution benchmark's worker shares the GPU
mkdir -p "$out"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$python" -c 'import fashionlab, jax, keras; print("jax", jax.__version__, "keras", keras.__version__, jax.devices())'

"$python" -m fashionlab compare --out "$out/recipes" --seeds 3 --jobs 1 --variants best-cnn wide-cnn
"$python" benchmarks/cpu_conv.py --sections base --match small --repeats 2 --target 1 --tf-python "" \
    --out "$out/conv" || echo "the convolution benchmark failed"
if [ $# -gt 0 ] && [ "$SECONDS" -lt "$budget" ]; then
    timeout $((budget - SECONDS)) "$python" -m fashionlab compare --out "$out/variants" --seeds 2 --jobs 1 \
        --variants "$@" || echo "the variants stopped after ${SECONDS} s"
fi

"$python" - "$out" <<'EOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
with open(out / "runs.jsonl", "w") as lines:
    for path in sorted(out.glob("*/*/seed-*/metrics.json")):
        metrics, config = json.loads(path.read_text()), json.loads((path.parent / "config.json").read_text())
        keep = ("test_accuracy", "wall_seconds", "train_seconds", "median_seconds_per_epoch",
                "seconds_to_val_accuracy", "best_epoch", "machine", "versions")
        lines.write(json.dumps({"run": str(path.parent.relative_to(out)), "config": config,
                                **{key: metrics[key] for key in keep}}) + "\n")
        print(f"{path.parent.relative_to(out)}: test accuracy {metrics['test_accuracy']:.4f}, "
              f"{metrics['wall_seconds']:.1f} s in all, {metrics['median_seconds_per_epoch']:.2f} s/epoch")
EOF
