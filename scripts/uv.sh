# Sourced by scripts/lock and scripts/test: puts uv (the release requirements/uv.txt pins,
# installed with pip, its hash checked, into its own virtualenv, $KEV_LOCK_TOOLS or
# .venv-lock) in $uv. uv resolves the lock and the lowest-releases lane; installs use pip.
UV_VERSION=$(sed -n 's/^uv==\([0-9.]*\).*/\1/p' requirements/uv.txt)
tools=${KEV_LOCK_TOOLS:-.venv-lock}
if [ ! -x "$tools/bin/uv" ] || [ "$("$tools/bin/uv" --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
  echo "installing uv $UV_VERSION into $tools" >&2
  "${PYTHON:-python3}" -m venv "$tools"
  PIP_DISABLE_PIP_VERSION_CHECK=1 "$tools/bin/python" -m pip install -qq --require-hashes \
    -r requirements/uv.txt
fi
uv="$tools/bin/uv"
