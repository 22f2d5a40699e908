"""Where weights come from: the embedded ``weights/`` folder, any local folder, or a Hub repo.

A *pipeline folder* (the layout of ``weights/`` and of a Hub repo made by ``push_to_hub``)::

    model_index.json          {"format": "metaportrait-pipeline-v1", "generator": "base", ...}
    base/                     MetaPortraitGenerator (config.json, model.safetensors, README.md)
    meta/                     optional meta-learned generator (same class), for personalization
    sr/                       optional TemporalSuperResolution
    mouth_interior/           optional MouthInteriorNetwork (drawn inside opening mouths)
    eye_interior/             optional EyeInteriorNetwork (lids drawn over closing eyes)
    fewshot/{embedder,generator,discriminator}/   optional few-shot family

``PyTorchModelHubMixin.from_pretrained`` has no ``subfolder``; a Hub repo is therefore fetched
with ``snapshot_download(allow_patterns=...)`` and the sub-models are loaded from the local
snapshot (strictly).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from metaportrait.errors import WeightsError

REPO_ROOT = Path(__file__).resolve().parents[1]
EMBEDDED_WEIGHTS = REPO_ROOT / "weights"
"""The pipeline folder beside the package in a source checkout. A package installed from a wheel
has no source tree beside it, so there this folder does not exist."""
MODEL_INDEX = "model_index.json"
FORMAT = "metaportrait-pipeline-v1"
WEIGHTS_ENV = "METAPORTRAIT_WEIGHTS"
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


def default_weights() -> str | Path:
    """The weights used when none are given: ``$METAPORTRAIT_WEIGHTS`` when set, else the embedded
    ``weights/`` folder of a source checkout.

    Raises :class:`WeightsError` when neither exists (e.g. the package was installed from a wheel),
    saying how to name the weights instead.
    """
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        return env
    if (EMBEDDED_WEIGHTS / MODEL_INDEX).is_file():
        return EMBEDDED_WEIGHTS
    raise WeightsError(
        f"no weights were given and there are no embedded weights ({EMBEDDED_WEIGHTS} holds no {MODEL_INDEX}; "
        "a package installed from a wheel has no source tree beside it): pass a pipeline folder "
        "(e.g. from_pretrained('path/to/weights'), or --weights DIR on the command line), "
        f"set ${WEIGHTS_ENV} to one, or give a Hugging Face Hub repo id ('org/name')"
    )


def resolve_pipeline_folder(source: str | Path | None, components: tuple[str, ...] = ("base",)) -> Path:
    """Return a local pipeline folder for ``source`` (None = :func:`default_weights`).

    ``source`` may be a local folder (a pipeline folder, or a single generator folder holding
    ``config.json`` + ``model.safetensors``, which is then treated as ``base``) or a Hub repo id.
    Only the listed ``components`` are downloaded from the Hub.
    """
    if source is None:
        source = default_weights()
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise WeightsError(f"{path} is a file; pass a folder that holds {MODEL_INDEX} or a Hub repo id")
    text = str(source)
    if not _REPO_ID.fullmatch(text):
        raise WeightsError(f"weights folder {text!r} does not exist (and it is not an 'org/name' Hub repo id)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    patterns = [MODEL_INDEX, "README.md"] + [f"{c}/*" for c in components]
    try:
        return Path(snapshot_download(repo_id=text, allow_patterns=patterns))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as exc:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        hint = " (HF_HUB_OFFLINE is set and the repo is not in the local cache)" if offline else ""
        raise WeightsError(f"could not fetch weights {text!r} from the Hugging Face Hub{hint}: {exc}") from exc


def read_model_index(folder: Path) -> dict:
    index_file = folder / MODEL_INDEX
    if not index_file.is_file():
        if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
            return {"format": FORMAT, "generator": "."}
        raise WeightsError(f"{folder} holds neither {MODEL_INDEX} nor a model (config.json + model.safetensors)")
    try:
        index = json.loads(index_file.read_text())
    except json.JSONDecodeError as exc:
        raise WeightsError(f"{index_file} is not valid JSON: {exc}") from exc
    if index.get("format") != FORMAT:
        raise WeightsError(f"{index_file}: unknown format {index.get('format')!r}, expected {FORMAT!r}")
    return index


def component_folder(folder: Path, index: dict, name: str) -> Path | None:
    """Folder of component ``name`` ("generator", "meta", "sr", "fewshot", "mouth_interior",
    "eye_interior"), or None
    if absent."""
    sub = index.get(name)
    if not sub:
        return None
    path = (folder / sub).resolve()
    if not path.is_dir():
        raise WeightsError(f"{MODEL_INDEX} names {name}={sub!r} but {path} does not exist")
    return path


def write_model_index(folder: Path, **components: str | None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    index = {"format": FORMAT, **{k: v for k, v in components.items() if v}}
    (folder / MODEL_INDEX).write_text(json.dumps(index, indent=2) + "\n")


def find_component(source: str | Path | None, name: str, components: tuple[str, ...] | None = None) -> Path | None:
    """Local folder of component ``name`` of the pipeline at ``source`` (None when it has none).

    ``source`` is as for :func:`resolve_pipeline_folder`; ``components`` are the sub-folders to
    fetch from the Hub (default: the one asked for, or ``base`` for the generator).
    """
    wanted = components or (("base",) if name == "generator" else (name,))
    folder = resolve_pipeline_folder(source, components=wanted)
    return component_folder(folder, read_model_index(folder), name)


# ------------------------------------------------------------------ personalized models as one file
PERSONAL_FILES = (".safetensors", ".json", ".md")
"""The only file types a personalization folder holds (no pickles, no code)."""
MAX_PERSONAL_BYTES = 1 << 30


def personalization_kind(folder: str | Path) -> str:
    """What a personalization folder holds: ``"adapter"`` (LoRA, ``metaportrait personalize``),
    ``"pipeline"`` (all weights, ``--adapter full``) or ``"fewshot"`` (Zakharov et al. 2019)."""
    folder = Path(folder)
    if (folder / "person.json").is_file():
        return "fewshot"
    if (folder / "adapter_config.json").is_file():
        return "adapter"
    if (folder / MODEL_INDEX).is_file():
        return "pipeline"
    raise WeightsError(f"{folder.name} is not a personalized model (no adapter_config.json, {MODEL_INDEX} or "
                       "person.json); use the .zip the personalization tab or `metaportrait personalize` made")


def pack_personalization(folder: str | Path, zip_path: str | Path) -> Path:
    """One ``.zip`` of a personalization folder (its safetensors, JSON and model cards), to download."""
    import zipfile

    folder, zip_path = Path(folder), Path(zip_path)
    personalization_kind(folder)  # refuse anything else
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file() and f.suffix in PERSONAL_FILES:
                zf.write(f, f.relative_to(folder).as_posix())
    return zip_path


def unpack_personalization(zip_path: str | Path, dest: str | Path, max_bytes: int = MAX_PERSONAL_BYTES) -> Path:
    """Unpack an uploaded personalization ``.zip`` into ``dest`` safely and return the folder.

    Only ``.safetensors``/``.json``/``.md`` members are accepted; absolute paths, ``..``, links and
    more than ``max_bytes`` uncompressed are refused (WeightsError), and nothing is left behind then.
    """
    import shutil
    import zipfile

    zip_path, dest = Path(zip_path), Path(dest)
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise WeightsError(f"{zip_path.name} is not a .zip of a personalized model ({exc})") from None
    with zf:
        members = [m for m in zf.infolist() if not m.is_dir()]
        total = sum(m.file_size for m in members)
        if total > max_bytes:
            raise WeightsError(f"{zip_path.name} unpacks to {total / 2**20:.0f} MiB; the limit is {max_bytes / 2**20:.0f} MiB")
        for m in members:
            name = m.filename
            parts = Path(name).parts
            if name.startswith(("/", "\\")) or ".." in parts or (m.external_attr >> 16) & 0o170000 == 0o120000:
                raise WeightsError(f"{zip_path.name}: refusing the member {name!r} (absolute path, '..' or a link)")
            if Path(name).suffix not in PERSONAL_FILES:
                raise WeightsError(f"{zip_path.name}: refusing the member {name!r}; a personalized model holds only "
                                   f"{', '.join(PERSONAL_FILES)} files")
        dest.mkdir(parents=True, exist_ok=True)
        try:
            for m in members:
                target = dest / m.filename
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(m) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
            personalization_kind(dest)
        except Exception:
            shutil.rmtree(dest, ignore_errors=True)
            raise
    return dest
