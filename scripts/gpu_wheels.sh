#!/usr/bin/env bash
# Run HERE (a machine with PyPI access) before a GPU check: downloads, into .wheels/ (git-ignored),
# the wheels that hat needs and the lent GPU machine's image lacks (it has torch, triton,
# accelerate, safetensors, sentencepiece, pyarrow, pandas, ... but no network). Then:
#   device run  carry=[".wheels"]  command="bash scripts/gpu_checks.sh core bench"  (then "compile")
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .wheels && mkdir -p .wheels
# the GPU image's python is 3.12 (x86_64); versions are the ones CI tests with
python -m pip download -q --no-deps --only-binary=:all: -d .wheels \
    --python-version 3.12 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_28_x86_64 --platform any \
    hat-splitter==0.1.10 hydra-core==1.3.8 omegaconf==2.3.1 \
    datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
# omegaconf 2.3 needs antlr 4.9, published as an sdist only: build its (pure Python) wheel here
python -m pip wheel -q --no-deps -w .wheels antlr4-python3-runtime==4.9.3
du -sh .wheels
