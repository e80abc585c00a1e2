# syntax=docker/dockerfile:1
# Production image for every node of a Ray cluster that runs tuner: the official Ray GPU
# image plus this package and TensorFlow with its CUDA libraries.
#   docker build -t tuner:0.1.0 --build-arg SOURCE_URL=<repository URL> .
# Ray and Python must match pyproject.toml (the Ray pin is 2.60.x; the project is tested
# on Python 3.11); tests/test_dockerfile.py checks both against this tag.
ARG RAY_IMAGE_TAG=2.60.0-py311-gpu
FROM rayproject/ray:${RAY_IMAGE_TAG}

# The repository has no fixed public address yet, so the build passes it in.
ARG SOURCE_URL=
LABEL org.opencontainers.image.title="tuner" \
      org.opencontainers.image.description="Distributed hyperparameter tuning: Ray Tune ASHA over multi-worker TensorFlow trials" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="Apache-2.0"

# For every process from its start, drivers included, not only the trials' workers
# (tuner/tune.py sets these for those): training uses tf_keras, and set before
# `import tensorflow` this keeps TensorFlow from also importing Keras 3; level 2 drops
# TensorFlow's C++ INFO and WARNING chatter (CUDA probing, oneDNN notes).
ENV TF_USE_LEGACY_KERAS=1 \
    TF_CPP_MIN_LOG_LEVEL=2

# The image's non-root user (uid 1000, group users) owns its Python in
# /home/ray/anaconda3, so pip needs no root. Only what the install reads is copied;
# .dockerignore keeps the rest of the context, and anything secret-like, out.
USER ray
WORKDIR /home/ray
# Made by ray, so pip (as ray) can write its build files there.
RUN mkdir -p /home/ray/tuner-src
COPY --chown=ray:users pyproject.toml README.md /home/ray/tuner-src/
COPY --chown=ray:users tuner/ /home/ray/tuner-src/tuner/

# [and-cuda] brings the CUDA and cuDNN wheels this TensorFlow is built against, whatever
# CUDA the base image has. tf-keras and the rest come from the package's dependencies.
# The image's Ray already satisfies the pin, so pip keeps it (no --upgrade). A regular,
# not editable, install: the source is not needed afterwards. [tpe] adds Optuna for
# `search.algorithm: tpe` (`bayesian` also needs PyTorch, left out of this image);
# [mlflow], MLflow's client for `tracking.mlflow`.
RUN pip install --no-cache-dir "tensorflow[and-cuda]>=2.21,<2.22" "/home/ray/tuner-src[tpe,mlflow]" \
    && rm -rf /home/ray/tuner-src
