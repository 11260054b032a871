"""Generated Numba modules: where they are written and how they are loaded.

Code generated at run time (the loops of compiled tapes, ``loops.py``; Hessian-vector
products of elementwise programs, ``elementwise_hvp.py``) is written as a module into a
cache directory (``JITGRAD_CACHE_DIR``, else ``~/.cache/jitgrad``; a temporary directory
when that cannot be written) and imported from there, so that Numba caches its functions
next to it. A module's name is a hash of its text salted with the sources it depends on.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path


def cache_dir() -> Path:
    """Where generated modules live: ``JITGRAD_CACHE_DIR``, else ``~/.cache/jitgrad`` (a
    temporary directory where that cannot be written)."""
    configured = os.environ.get("JITGRAD_CACHE_DIR")
    if configured:
        return Path(configured)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "jitgrad"


_SALT: list = []


def _salt() -> str:
    """The sources the generated code depends on (the kernels and the op registry): a change
    there is a new module (Numba's cache would not notice a change in an imported kernel)."""
    if not _SALT:
        here = Path(__file__).parent
        digest = hashlib.sha256()
        for path in sorted([*here.glob("*.py"), *(here.parent / "ops").glob("*.py")]):
            digest.update(path.read_bytes())
        _SALT.append(digest.hexdigest())
    return _SALT[0]


_LOADED: dict = {}


def generated_name(prefix: str, text: str) -> str:
    """A generated module's name: its source salted with the sources it depends on."""
    return prefix + "_" + hashlib.sha256((_salt() + text).encode()).hexdigest()[:20]


def load_generated(name: str, text: str, compile_now: bool = True):
    """The module ``name`` with source ``text`` from the cache directory, written there first
    if needed (None when it was never written and ``compile_now`` is False, or when no
    directory can be written)."""
    if name in _LOADED:
        return _LOADED[name]
    for directory in (cache_dir(), Path(tempfile.gettempdir()) / f"jitgrad-{os.getuid()}"):
        path = directory / f"{name}.py"
        try:
            if not path.exists():
                if not compile_now:
                    return None
                directory.mkdir(parents=True, exist_ok=True)
                partial = path.with_suffix(f".{os.getpid()}.tmp")
                partial.write_text(text)
                os.replace(partial, path)
            break
        except OSError:
            continue
    else:
        return None
    spec = importlib.util.spec_from_file_location(f"_jitgrad_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    _LOADED[name] = module
    return module
