# shellcheck shell=bash
# The project's one Python virtualenv, target/python-venv, built from the pinned
# scripts/requirements.txt (the Python client's checks, Agno's own client as the judge,
# schemathesis, the deployment files' schema validators), and built again when that file or the
# interpreter changes. Sourced by the scripts that run Python tools, from the root:
#
#   . scripts/python-venv.sh && ensure_python_venv
#
# PYTHON names the interpreter (default python3, 3.11+).

PYTHON=${PYTHON:-python3}
PYTHON_VENV=target/python-venv
PYTHON_REQUIREMENTS=scripts/requirements.txt

ensure_python_venv() {
  local want
  mkdir -p target
  want="$(sha256sum "$PYTHON_REQUIREMENTS" | cut -d' ' -f1) $("$PYTHON" -c 'import sys; print(sys.version)' | head -n 1)"
  if [ -x "$PYTHON_VENV/bin/python" ] && [ "$(cat "$PYTHON_VENV/.requirements" 2>/dev/null)" = "$want" ] &&
    "$PYTHON_VENV/bin/python" -c 'import pip' >/dev/null 2>&1; then
    return 0
  fi
  printf 'python-venv: creating %s from %s\n' "$PYTHON_VENV" "$PYTHON_REQUIREMENTS" >&2
  rm -rf "$PYTHON_VENV"
  if ! "$PYTHON" -m venv "$PYTHON_VENV" 2>/dev/null; then
    # Debian's python3 splits venv into its own package.
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
      rm -rf "$PYTHON_VENV"
      "$PYTHON" -m venv "$PYTHON_VENV"
    else
      printf 'python-venv: cannot create a virtualenv with %s (install python3-venv)\n' "$PYTHON" >&2
      return 1
    fi
  fi
  "$PYTHON_VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$PYTHON_REQUIREMENTS"
  printf '%s\n' "$want" >"$PYTHON_VENV/.requirements"
}
