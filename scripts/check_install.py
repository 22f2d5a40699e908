"""Check that the package works when installed, not only from its source tree.

Builds the package from a copy of what it ships (``pyproject.toml``, ``README.md``, ``LICENSE``,
``metaportrait/``), ``pip install``s it into a fresh virtual environment in a temporary folder, and
from outside the source tree, with that environment's Python:

* ``import metaportrait`` resolves to the installed copy, and the ``metaportrait`` console script runs;
* ``MetaPortraitPipeline.from_pretrained(<repo>/weights)`` loads the repository's weights folder and
  edits a real portrait (``examples/astronaut.jpg``);
* ``from_pretrained()`` with no weights named fails with one clear ``WeightsError`` (an installed
  package has no embedded weights beside it), not a path into a source tree.

``--deps-from PYTHON_SITE_PACKAGES`` (default: the site-packages of the Python running this script)
lets the fresh environment see already installed dependencies, so only the package itself is
installed (``--no-deps``) and the check needs no network; ``--full`` installs the declared
dependencies from the package index instead (slow: torch, mediapipe, gradio...).

    python scripts/check_install.py            # about 30 s; exit status 0 when every check passes
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHIPPED = ("pyproject.toml", "README.md", "LICENSE", "metaportrait")

CHECK = r'''
import sys
from pathlib import Path

import metaportrait
from metaportrait.errors import WeightsError
from metaportrait.pipeline import EditOptions, MetaPortraitPipeline

repo, env = Path(sys.argv[1]), Path(sys.argv[2])
where = Path(metaportrait.__file__).resolve()
assert env in where.parents, f"metaportrait imported from {where}, not from the installed copy under {env}"
assert repo not in where.parents, f"metaportrait imported from the source tree: {where}"
pipe = MetaPortraitPipeline.from_pretrained(repo / "weights", device="cpu")
source = pipe.prepare_source(repo / "examples" / "astronaut.jpg")
out = pipe.edit(source, EditOptions(smile=0.5, size=256))
assert out.shape == (256, 256, 3) and out.dtype.name == "uint8", out.shape
try:
    MetaPortraitPipeline.from_pretrained()
except WeightsError as exc:
    message = str(exc)
    assert "from_pretrained('path/to/weights')" in message and "METAPORTRAIT_WEIGHTS" in message, message
else:
    raise AssertionError("from_pretrained() found weights although an installed package has none beside it")
print(f"ok: installed at {where.parent}; edited a {out.shape[1]}x{out.shape[0]} face; no-weights error: {message[:80]}...")
'''


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if res.returncode != 0:
        sys.stderr.write(f"$ {' '.join(map(str, cmd))}\n{res.stdout}\n{res.stderr}\n")
        raise SystemExit(1)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--deps-from", default=sysconfig.get_paths()["purelib"],
                    help="site-packages folder holding the dependencies (default: this Python's)")
    ap.add_argument("--full", action="store_true", help="install the declared dependencies from the index instead")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder and print its path")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="metaportrait-install-"))
    try:
        src = tmp / "src"
        src.mkdir()
        for name in SHIPPED:
            item = REPO / name
            if item.is_dir():
                shutil.copytree(item, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(item, src / name)
        env_dir = tmp / "venv"
        venv.EnvBuilder(with_pip=args.full).create(env_dir)
        python = env_dir / "bin" / "python"
        purelib = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
        if args.full:
            run([str(python), "-m", "pip", "install", "-q", str(src)], cwd=tmp)
        else:
            # the dependencies (and pip, setuptools) are seen through a path file, after the
            # environment's own site-packages, so the installed package comes first
            (purelib / "zz_dependencies.pth").write_text(str(Path(args.deps_from).resolve()) + "\n")
            run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(src)], cwd=tmp)
        environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "METAPORTRAIT_WEIGHTS")}
        environ["HF_HUB_OFFLINE"] = "1"
        run([str(env_dir / "bin" / "metaportrait"), "--version"], cwd=tmp, env=environ)
        res = run([str(python), "-c", CHECK, str(REPO), str(env_dir.resolve())], cwd=tmp, env=environ)
        print(res.stdout.strip().splitlines()[-1])
        print(f"install check passed in {time.perf_counter() - t0:.1f} s")
        return 0
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
