#!/usr/bin/env bash
# The static checks CI runs before the tests (tests/run.sh calls this first):
# ruff's formatter and linter over the tree, then mypy over every redirgate
# package. Each runs; any finding fails. Configuration: pyproject.toml.
#
#   bash tests/lint.sh      # needs .venv with '.[test]' (tests/run.sh makes it)
#
# mypy reads the packages under their installed names (redirgate.proto, ...,
# py.typed in each): it cannot follow the import hook of an editable install,
# so build/typecheck/redirgate/ links each name of pyproject's package-dir map
# to its folder, the layout the wheel installs. A package added to that map is
# checked without changing this script. Errors print as redirgate/<pkg>/...
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
py=$root/.venv/bin/python

status=0
"$py" -m ruff format --check . || status=1
"$py" -m ruff check . || status=1
# ruff format lays code out. A table that reads better by hand goes between
# `# fmt: off` and `# fmt: on` under a comment saying why; `# fmt: skip`
# keeps a layout without a reason, so it is refused.
if git grep -n -E '#[[:space:]]*fmt:[[:space:]]*skip' -- '*.py'; then
    echo "tests/lint.sh: '# fmt: skip' above: let ruff format lay it out, or # fmt: off/on with a reason" >&2
    status=1
fi

tree=build/typecheck
packages=$("$py" - "$tree" <<'PY'
import os
import sys
import tomllib

tree = sys.argv[1]
with open("pyproject.toml", "rb") as f:
    folders = tomllib.load(f)["tool"]["setuptools"]["package-dir"]
os.makedirs(os.path.join(tree, "redirgate"), exist_ok=True)
for name, folder in sorted(folders.items()):
    link = os.path.join(tree, *name.split("."))
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink(os.path.abspath(folder), link)
    print("-p", name)
PY
)
# shellcheck disable=SC2086  # one word per -p and package name
(cd "$tree" && "$py" -m mypy --config-file "$root/pyproject.toml" $packages) || status=1
exit $status
