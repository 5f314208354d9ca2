"""Finding PostgreSQL server binaries: ENVKIT_PG_BINDIR, pg_config, PATH, the Debian layout."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from envkit.errors import PrerequisiteError
from envkit.state import write_atomic

_BINARIES = ("postgres", "initdb")


@dataclass(frozen=True)
class PgInstall:
    """A directory holding ``postgres`` and ``initdb``."""

    bindir: Path

    def binary(self, name: str) -> Path:
        return self.bindir / name

    def identity(self) -> str:
        """What distinguishes this install for caching: the binary's real path, size, mtime."""
        real = self.binary("postgres").resolve()
        st = real.stat()
        return f"{real}:{st.st_size}:{st.st_mtime_ns}"

    def version(self) -> str:
        """``postgres --version`` (spawns a process; not on the hot path)."""
        out = subprocess.run(
            [str(self.binary("postgres")), "--version"], capture_output=True, text=True, check=False
        )
        return out.stdout.strip()


def find_install(
    configured: Path | None, env: dict[str, str] | None = None, *, cache_dir: Path | None = None
) -> PgInstall:
    """Locate the server binaries: ENVKIT_PG_BINDIR, ``pg_config --bindir``, PATH, then
    ``/usr/lib/postgresql/*/bin`` (newest). Raise ``PrerequisiteError`` listing every place."""
    environ = os.environ if env is None else env
    tried: list[str] = []

    def usable(folder: Path, label: str) -> PgInstall | None:
        tried.append(f"{folder} ({label})")
        if all(os.access(folder / b, os.X_OK) for b in _BINARIES):
            return PgInstall(folder)
        return None

    if configured is not None:
        found = usable(configured, "ENVKIT_PG_BINDIR")
        if found:
            return found
        raise PrerequisiteError(
            f"ENVKIT_PG_BINDIR is {configured}, but it has no executable "
            f"{' and '.join(_BINARIES)}.",
            hint="Point it at the bin directory of a PostgreSQL server installation.",
        )
    search_path = environ.get("PATH", os.defpath)
    pg_config = shutil.which("pg_config", path=search_path)
    if pg_config:
        bindir = pg_config_bindir(pg_config, cache_dir)
        if bindir:
            found = usable(Path(bindir), "pg_config --bindir")
            if found:
                return found
    on_path = shutil.which("postgres", path=search_path)
    if on_path:
        found = usable(Path(on_path).parent, "PATH")
        if found:
            return found
    else:
        tried.append("postgres on PATH (not found)")
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: _version_key(Path(p).parent.name),
        reverse=True,
    )
    for folder in versions:
        found = usable(Path(folder), "Debian/Ubuntu layout")
        if found:
            return found
    if not versions:
        tried.append("/usr/lib/postgresql/*/bin (none)")
    raise PrerequisiteError(
        "PostgreSQL server binaries (postgres, initdb) were not found. Tried: "
        + "; ".join(tried)
        + ".",
        hint="Install them (Debian/Ubuntu: 'apt-get install postgresql'; Fedora: "
        "'dnf install postgresql-server'; macOS: 'brew install postgresql') or set "
        "ENVKIT_PG_BINDIR to their bin directory.",
    )


def pg_config_bindir(pg_config: str, cache_dir: Path | None) -> str | None:
    """``pg_config --bindir``, remembered per pg_config binary (spawning it costs ~13 ms)."""
    st = os.stat(pg_config)
    key = f"{os.path.realpath(pg_config)}:{st.st_size}:{st.st_mtime_ns}"
    cache = cache_dir / "pg_config.json" if cache_dir is not None else None
    if cache is not None:
        try:
            known = json.loads(cache.read_text())
            if known.get("key") == key:
                return str(known["bindir"])
        except (OSError, ValueError, KeyError, AttributeError):
            pass
    out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
    bindir = out.stdout.strip() if out.returncode == 0 else ""
    if cache is not None and bindir:
        cache.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(cache, json.dumps({"key": key, "bindir": bindir}).encode())
    return bindir or None


def _version_key(name: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in name.split("."))
    except ValueError:
        return (0,)
