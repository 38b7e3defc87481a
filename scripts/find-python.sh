#!/usr/bin/env bash
# Prints the path of a working Python >= 3.12. pyenv shims such as python3.12 exist on PATH
# but fail unless that version is selected, so every candidate is run, not just looked up.
set -u
works() { "$1" -c 'import sys, venv; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; }
for candidate in python3.13 python3.12 python3; do
    path=$(command -v "$candidate" 2>/dev/null) || continue
    if works "$path"; then
        "$path" -c 'import sys; print(sys.executable)'
        exit 0
    fi
done
root=$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")
for path in $(ls -d "$root"/versions/*/bin/python3 2>/dev/null | sort -V -r); do
    if works "$path"; then
        echo "$path"
        exit 0
    fi
done
echo "find-python: no Python >= 3.12 found (tried python3.13, python3.12, python3 and $root/versions)" >&2
exit 1
