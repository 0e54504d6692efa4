# pipesim in a container. The working folder is a mount; pipesim runs as its owner, so outputs are yours:
#
#   docker build -t pipesim .                       # or: make docker
#   docker run --rm -v "$PWD:/work" -w /work pipesim trace --help   # runs as the owner of $PWD
#
# Build arguments (docs/backends.md, "pipesim in a container"):
#   BASE_IMAGE       a Python 3.11 image with pip and venv (default python:3.11-slim; python-local:3.11 offline)
#   WHEELHOUSE       a folder of the build context holding the pipesim wheel and every dependency's wheel
#                    (`make docker OFFLINE=1` writes build/wheelhouse): the build then needs no network. Empty
#                    (default): pip fetches the dependencies, which needs a network (`docker build --network=host`
#                    where the daemon's default network has no route out).
#   ASTRA_SIM_IMAGE  an image holding your ASTRA-Sim build; with ASTRA_SIM_BIN (its path in that image) the binary
#                    and the non-glibc shared libraries it links are copied in, and `pipesim replay --backend
#                    astra-sim` finds it with no flag ($ASTRA_SIM_BIN).
ARG BASE_IMAGE=python:3.11-slim
ARG ASTRA_SIM_IMAGE=${BASE_IMAGE}

# --- the user's ASTRA-Sim binary, if named: /pipesim-astra/{bin,lib} (both empty otherwise) ----------------------
FROM ${ASTRA_SIM_IMAGE} AS astra-sim
ARG ASTRA_SIM_BIN=
RUN set -eu; mkdir -p /pipesim-astra/bin /pipesim-astra/lib; \
    if [ -n "$ASTRA_SIM_BIN" ]; then \
      cp "$ASTRA_SIM_BIN" /pipesim-astra/bin/; \
      # Shared libraries it needs besides glibc's own (the base image brings those): protobuf, libstdc++, ...
      if ldd "$ASTRA_SIM_BIN" >/dev/null 2>&1; then \
        ldd "$ASTRA_SIM_BIN" | awk '$2 == "=>" && $3 ~ /^\// {print $3}' \
          | grep -Ev '/(libc|libm|libdl|librt|libpthread|ld-linux[^/]*)\.so' \
          | while read -r lib; do cp -L "$lib" /pipesim-astra/lib/; done; \
      fi; \
    fi

# --- wheels: pipesim and its dependencies ---------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS wheels
ARG WHEELHOUSE=
COPY . /src
RUN set -eu; \
    if [ -n "$WHEELHOUSE" ]; then \
      ls /src/"$WHEELHOUSE"/pipesim-*.whl >/dev/null || { echo "WHEELHOUSE=$WHEELHOUSE holds no pipesim wheel" >&2; exit 1; }; \
      cp -r /src/"$WHEELHOUSE" /wheels; \
    else \
      python -m pip wheel --no-cache-dir /src -w /wheels; \
    fi

# --- the image ------------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE}
ARG ASTRA_SIM_BIN=
COPY --from=wheels /wheels /tmp/wheels
# A virtual environment: the same on images whose system Python is "externally managed" (Debian's) and on others.
RUN python -m venv /opt/pipesim \
 && /opt/pipesim/bin/pip install --no-cache-dir --no-index --find-links /tmp/wheels pipesim \
 && rm -rf /tmp/wheels \
 && useradd --create-home --uid 1000 --user-group pipesim
COPY --from=astra-sim /pipesim-astra /opt/astra-sim
# The binary runs through a wrapper that points it (only it) at the libraries copied with it.
RUN set -eu; \
    if [ -n "$ASTRA_SIM_BIN" ]; then \
      name=$(basename "$ASTRA_SIM_BIN"); \
      printf '#!/bin/sh\nLD_LIBRARY_PATH=/opt/astra-sim/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} exec /opt/astra-sim/bin/%s "$@"\n' \
        "$name" > /usr/local/bin/"$name"; \
      chmod 755 /usr/local/bin/"$name"; \
      ln -s "$name" /usr/local/bin/astra-sim; \
    fi
# Any --user works: HOME and matplotlib's cache need a writable place, and /tmp is one for every uid.
ENV PATH=/opt/pipesim/bin:$PATH \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    PYTHONDONTWRITEBYTECODE=1 \
    ASTRA_SIM_BIN=${ASTRA_SIM_BIN:+/usr/local/bin/astra-sim}
# Started as root, the entrypoint runs pipesim as the owner of the working folder (docker/entrypoint.sh).
COPY docker/entrypoint.sh /usr/local/bin/pipesim-entrypoint
RUN mkdir -p /work && chown pipesim:pipesim /work && chmod 755 /usr/local/bin/pipesim-entrypoint
WORKDIR /work
ENTRYPOINT ["pipesim-entrypoint"]
CMD ["--help"]
