#!/usr/bin/env bash
# Install an MLflow tracking server (the full `mlflow` package: server, UI, SQLite
# backend) into its own virtual environment, for tests/integration's MLflow tests.
#
# Usage: install_mlflow.sh [DIR]
#   DIR defaults to $MLFLOW_SERVER_DIR, else ${XDG_CACHE_HOME:-$HOME/.cache}/tuner-mlflow.
#
# Why a virtual environment: tuner's client is `mlflow-skinny` (tuner[mlflow]), and the
# full package pins pyarrow below the version tuner runs on; the server runs apart, as
# a platform team's would. The environment sees this Python's packages
# (--system-site-packages), so only what the server adds is installed (~30 s, ~300 MB).
# Its version is the client's when the client is installed.
# Re-running is cheap: an intact install is detected and left alone.
set -euo pipefail

DIR=${1:-${MLFLOW_SERVER_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tuner-mlflow}}
PY=${PYTHON:-python3}
STAMP=$DIR/installed  # written last, so a half-done install is redone

log() { echo "install_mlflow: $*" >&2; }

version=$("$PY" -c 'import mlflow; print(mlflow.__version__)' 2>/dev/null || echo "3.17.2")
if [[ -f $STAMP && $(cat "$STAMP") == "mlflow $version" ]] && "$DIR/bin/mlflow" --version >/dev/null 2>&1; then
    log "already installed in $DIR ($(cat "$STAMP"))"
    exit 0
fi
rm -rf "$DIR"
"$PY" -m venv --system-site-packages "$DIR"
# The client's version, else the newest of the three releases before it that installs
# (a package index may lack one of a new release's dependencies for a while; pip does
# not fall back to an older release by itself then).
older=$("$DIR/bin/pip" index versions mlflow 2>/dev/null | sed -n 's/^Available versions: //p' | tr -d ',' |
        tr ' ' '\n' | grep -x '[0-9.]*' | sort -rV | awk -v v="$version" '$0 != v' |
        while read -r candidate; do [[ $(printf '%s\n%s\n' "$candidate" "$version" | sort -V | head -1) == "$candidate" ]] &&
        echo "$candidate"; done | head -3 || true)
for candidate in "$version" $older; do
    "$DIR/bin/pip" install -q --disable-pip-version-check "mlflow==$candidate" 2>&1 |
        grep -v "^WARNING: Location\|dependency resolver\|requires setuptools" >&2 || true
    "$DIR/bin/mlflow" --version >/dev/null 2>&1 && break
    log "mlflow $candidate did not install; trying an older release"
done
"$DIR/bin/mlflow" --version >/dev/null || { log "ERROR: mlflow did not install in $DIR"; exit 1; }
echo "mlflow $version" >"$STAMP"
log "installed $("$DIR/bin/mlflow" --version) in $DIR (client: mlflow $version)"
