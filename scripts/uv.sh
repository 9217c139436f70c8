# Sourced by scripts/lock and scripts/test: puts uv (a pinned release, installed with pip
# into its own virtualenv, $KEV_LOCK_TOOLS or .venv-lock) in $uv. uv resolves the lock and
# the lowest-releases lane; installs use pip with hashes.
UV_VERSION=0.13.9
tools=${KEV_LOCK_TOOLS:-.venv-lock}
if [ ! -x "$tools/bin/uv" ] || [ "$("$tools/bin/uv" --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
  echo "installing uv $UV_VERSION into $tools" >&2
  "${PYTHON:-python3}" -m venv "$tools"
  PIP_DISABLE_PIP_VERSION_CHECK=1 "$tools/bin/python" -m pip install -qq "uv==$UV_VERSION"
fi
uv="$tools/bin/uv"
