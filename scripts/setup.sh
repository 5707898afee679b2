# Sourced by scripts/serve and scripts/test: make .venv and install syncengine into it, with
# the extras given ("" or "test"), only when .venv is new or pyproject.toml changed since the
# last install (a stamp in .venv holds pyproject.toml's SHA-256 and the extras installed).
# Run from the project folder.

ensure_installed() {
  local extras=$1 stamp=.venv/syncengine-installed digest
  if [ ! -x .venv/bin/python ]; then
    echo "creating .venv ..." >&2
    python3 -m venv .venv
  fi
  digest=$(sha256sum pyproject.toml | cut -d' ' -f1)
  # The plain install is part of every install: any stamp of this pyproject.toml will do for it.
  if [ -f "$stamp" ] && { grep -qx "$digest $extras" "$stamp" || { [ -z "$extras" ] && grep -q "^$digest " "$stamp"; }; }; then
    return 0
  fi
  echo "installing syncengine${extras:+ and its $extras dependencies} into .venv (pyproject.toml is new or changed) ..." >&2
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${extras:+[$extras]}"
  # Keep the other installs of this pyproject.toml: "test" after "" still counts for "".
  { grep -s "^$digest " "$stamp" || true; echo "$digest $extras"; } | sort -u > "$stamp.new"
  mv "$stamp.new" "$stamp"
}
