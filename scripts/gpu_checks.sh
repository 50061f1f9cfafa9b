#!/usr/bin/env bash
# Every check that needs a GPU, sized for a short device lease; not yet run on one. Four parts,
# each step with a time limit, so that one call fits a 10-minute command limit:
#   scripts/gpu_checks.sh core bench    # GPU tests, FSDP2 smoke, pooling, train + generate (<= 9 min)
#   scripts/gpu_checks.sh compile       # issue 14's compiled paths (CUDA graphs), waiting rows
#                                       # at 1b (<= 9 min; its steps in order of value)
#   scripts/gpu_checks.sh extra         # the hand-captured CUDA graph experiment (<= 2 min)
#   scripts/gpu_checks.sh               # all four (<= 20 min: more than one lease; run
#                                       # `core bench` first)
# Results: every log and JSON, packed into $OUT/gpu_results.tgz after each step (the device
# tool brings back at most 8 files from $OUT; a run killed part-way keeps the steps before),
# for BENCHMARKS.md with the device named. Without network, the wheels of scripts/gpu_wheels.sh
# in .wheels/ are installed with hat into a folder of their own (PYTHONPATH).
set -uo pipefail
cd "$(dirname "$0")/.."
BACK="${OUT:-gpu_out}"; mkdir -p "$BACK"  # what comes back: gpu_results.tgz
OUT="$(mktemp -d)"  # where the steps write their logs and JSON, packed into $BACK
export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
PY="${PYTHON:-python3}"
if [ -d .wheels ]; then  # no network: nothing may reach an index (build isolation would)
    SITE=/tmp/hat_site
    PIP_NO_INDEX=1 $PY -m pip install -q --no-deps --no-compile --no-cache-dir --upgrade \
        --no-build-isolation --target "$SITE" .wheels/*.whl . || exit 1
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
elif ! $PY -c "import hat, hat_kernels" 2>/dev/null; then
    $PY -m pip install -q -e . || exit 1
fi
pack() {  # the training runs' checkpoints stay out (they are deleted after their step)
    tar -C "$OUT" --exclude='./fsdp_*' -czf "$BACK/.gpu_results.part" . \
        && mv "$BACK/.gpu_results.part" "$BACK/gpu_results.tgz"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.txt"
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/device.txt"
pack

step() {  # step NAME SECONDS CMD...: run with a time limit, log to NAME.log, pack the results
    local name=$1 limit=$2; shift 2
    echo "== $name (limit ${limit}s)"
    # SIGINT first: Python stops with a traceback (pytest with its summary), then a kill
    timeout -s INT -k 15 "$limit" "$@" 2>&1 | tee "$OUT/$name.log" | tail -25
    pack
}
PARTS="${*:-core bench compile extra}"
want() { [[ " $PARTS " == *" $1 "* ]]; }

if want core; then
    # no -x: each GPU test reports, a failing one does not hide the others
    # eight workers (16 cores): the Triton kernels' autotuning compiles and times many
    # configurations per key on a cold cache (correctness only: timing noise does not matter)
    step gpu_tests 140 $PY -m pytest -q -m gpu -n 8 tests/test_kernels.py tests/test_model.py tests/test_generation.py
    # FSDP2 (accelerate disables it on CPU, so CI cannot run it): train, checkpoint, resume, export
    FSDP_ENV="NCCL_DEBUG=WARN ACCELERATE_USE_FSDP=true FSDP_VERSION=2 FSDP_AUTO_WRAP_POLICY=TRANSFORMER_BASED_WRAP FSDP_TRANSFORMER_CLS_TO_WRAP=Block FSDP_STATE_DICT_TYPE=SHARDED_STATE_DICT"
    FSDP_RUN="$PY -m torch.distributed.run --standalone --nproc_per_node 1 -m hat.cli.train model=tiny trainer.steps=20 trainer.row_bytes=1024 trainer.global_rows=8 trainer.checkpoint_interval=10 trainer.log_interval=5 trainer.eval_batches=2 trainer.sample_new_tokens=16 schedule.warmup_steps=2 trainer.output_dir=$OUT/fsdp_run"
    # ... and hat-continue from its export with the backbone frozen for 3 steps (FSDP replaces
    # the parameters it shards; the frozen ones' gradients are dropped before clipping)
    FSDP_CONTINUE="$PY -m torch.distributed.run --standalone --nproc_per_node 1 -m hat.cli.continue_ init_from=$OUT/fsdp_run/model freeze.modules=[backbone] freeze.steps=3 trainer.steps=6 trainer.row_bytes=1024 trainer.global_rows=8 trainer.checkpoint_interval=0 trainer.log_interval=1 trainer.eval_batches=2 trainer.eval_interval=0 schedule.warmup_steps=2 trainer.output_dir=$OUT/fsdp_continue"
    step fsdp_smoke 140 bash -c "env $FSDP_ENV $FSDP_RUN trainer.steps=10 && env $FSDP_ENV $FSDP_RUN && ls $OUT/fsdp_run/checkpoints/* && tail -3 $OUT/fsdp_run/metrics.jsonl && env $FSDP_ENV $FSDP_CONTINUE && grep -c '\"kind\": \"train\"' $OUT/fsdp_continue/metrics.jsonl"
    rm -rf "$OUT/fsdp_continue"
    rm -rf "$OUT/fsdp_run"
    step bench_pooling 80 $PY scripts/bench_pooling.py --out "$OUT/bench_pooling.json"
fi
if want bench; then
    step bench_train 90 $PY scripts/bench_train.py --pairs small:bpe_small 1b:bpe_1b --row-bytes 8192 --rows 8 --steps 5 --out "$OUT/bench_train.json"
    step bench_generate 90 $PY scripts/bench_generate.py --device cuda --dtype bfloat16 --output "$OUT/bench_generate.json"
fi
if want compile; then
    # issue 14's compiled paths, most telling first (a 15-minute lease that ran `core bench`
    # has ~4 minutes left: each step's results are packed as it finishes).
    # Cached generation with compile_step=True: CUDA graphs of the static-shape steps (four
    # compiles, HAT and twin at batch 1 and 32; warm-up apart, its JSON names the mode)
    step bench_generate_compile 170 $PY scripts/bench_generate.py --device cuda --dtype bfloat16 --new-bytes 256 --no-uncached --compile-step --output "$OUT/bench_generate_compile.json"
    # rows waiting for a shared backbone pass (generate(backbone_wait=24)) against K = 1 and
    # the twin at 1b, batch 32 (eager; CPU: 2.02x, HAT / twin 0.33 -> 0.66)
    step backbone_wait 80 $PY scripts/bench_generate.py --device cuda --dtype bfloat16 --hat 1b --bpe bpe_1b --batch-sizes 32 --new-bytes 64 --no-uncached --backbone-wait 24 --output "$OUT/backbone_wait.json"
    # the next id chosen inside the compiled step (CUDA graph) vs outside it, greedy text (a
    # forcing processor would keep the choice outside), HAT and twin at batch 1 and 32
    step choice_fused 90 $PY scripts/bench_generate.py --device cuda --dtype bfloat16 --new-bytes 256 --no-uncached --text greedy --compile-step --choice-outside --output "$OUT/choice_fused.json"
    # where a compiled HAT byte step's time goes on a GPU (graphs synchronised; host; wrapper)
    step time_split 70 $PY scripts/experiments/generation_time_split.py --device cuda --dtype bfloat16 --compile-step --sync
    # training steps compiled vs eager (interleaved, compile time apart) with the stage profile
    step bench_train_compile 120 $PY scripts/bench_train.py --pairs small:bpe_small --row-bytes 8192 --rows 8 --steps 4 --warmup 2 --compile --profile 2 --out "$OUT/bench_train_compile.json"
fi
if want extra; then
    # the next lever, an experiment: the compiled step captured in a CUDA graph by hand and
    # replayed without torch.compile's per-call wrapper, against CUDA graph trees
    step cuda_graph_capture 120 $PY scripts/experiments/cuda_graph_capture.py --batch-sizes 1,32 --new-bytes 256 --output "$OUT/cuda_graph_capture.json"
fi
ls -la "$OUT"
echo "results: $BACK/gpu_results.tgz"
