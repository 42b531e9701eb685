"""Source strings: one name for a dataset everywhere (CLI, pages, run configs).

- `shapes` or `shapes:per_class=60,seed=0,size=160,classes=5`: the built-in set
- `path/to/folder`: one subfolder per class (or train/validation/test above them)
- `path/to/data.zip` (or .tar, .tar.gz, .tgz, ...): the same, inside an archive
- `tfds:NAME[:SPLIT]`: a TensorFlow Datasets image-classification set

Generated, extracted and exported data is materialised once under
`<cache>/datasets/<key>/` (built in a temporary folder, then renamed), so
every kind ends up as a folder going through the same ingest.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

from engine import settings
from engine.data import archive, corrections, shapes, tfds_source
from engine.data.ingest import Dataset, ingest
from engine.data.layout import Skipped, scan
from engine.errors import DatasetError

DEFAULT_SOURCE = "shapes"
# progress(stage, done, total), e.g. ("Checking images", 120, 300)
StageProgress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Source:
    kind: str  # shapes | folder | archive | tfds
    value: str  # the part after the kind: options, path or TFDS name


def parse(source: str) -> Source:
    """Classify a source string (no I/O)."""
    text = source.strip()
    if not text:
        raise DatasetError("empty dataset source; use shapes, a folder, a .zip or tfds:NAME")
    if text == "shapes" or text.startswith("shapes:"):
        return Source("shapes", text.partition(":")[2])
    if text.startswith("tfds:"):
        return Source("tfds", text[5:])
    if archive.is_archive(text):
        return Source("archive", text)
    return Source("folder", text)


def shapes_config(options: str) -> shapes.ShapesConfig:
    """`per_class=60,seed=0` -> ShapesConfig, with a precise message for typos."""
    known = {f.name for f in fields(shapes.ShapesConfig)}
    values: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in options.split(","))):
        key, sep, raw = part.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in known:
            raise DatasetError(f"shapes option {part!r}: use {', '.join(sorted(known))} as key=value")
        try:
            values[key] = int(raw)
        except ValueError as exc:
            raise DatasetError(f"shapes option {part!r}: the value must be a whole number") from exc
    try:
        return shapes.ShapesConfig(**values)
    except ValueError as exc:
        raise DatasetError(str(exc)) from exc


def shapes_source(config: shapes.ShapesConfig) -> str:
    """The canonical source string of a shapes configuration."""
    marked = f",mark={config.mark}" if config.mark >= 0 else ""
    return f"shapes:per_class={config.per_class},classes={config.classes},seed={config.seed},size={config.size}{marked}"


def _materialise(key: str, build: Callable[[Path], list[Skipped] | None]) -> tuple[Path, list[Skipped]]:
    """Build `<cache>/datasets/<key>` once; the skipped list is kept beside it."""
    base = settings.cache_dir() / "datasets"
    final, notes = base / key, base / f"{key}.skipped.json"
    if final.is_dir():
        saved = json.loads(notes.read_text()) if notes.is_file() else []
        return final, [Skipped(**s) for s in saved]
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=base))
    try:
        # build() may make `tmp` itself (archive extraction wants a new folder).
        tmp.rmdir()
        skipped = build(tmp) or []
        notes.write_text(json.dumps([s.__dict__ for s in skipped]))
        try:
            os.replace(tmp, final)
        except OSError:
            if not final.is_dir():  # someone else finished first: use theirs
                raise
        return final, skipped
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def resolve(source: str, progress: StageProgress | None = None) -> tuple[Path, list[Skipped]]:
    """Turn a source string into a local folder (materialising it if needed)."""
    src = parse(source)
    report = (lambda stage: lambda d, t: progress(stage, d, t)) if progress else (lambda stage: None)
    if src.kind == "shapes":
        config = shapes_config(src.value)

        def build_shapes(tmp: Path) -> None:
            shapes.generate(tmp, config, report("Drawing shapes"))

        return _materialise(config.key, build_shapes)
    if src.kind == "archive":
        path = Path(src.value).expanduser()
        if not path.is_file():
            raise DatasetError(f"{src.value}: no such archive file")
        key = f"archive-{_file_sha(path)[:20]}"
        return _materialise(key, lambda tmp: archive.extract(path, tmp, progress=report("Extracting")))
    if src.kind == "tfds":
        name, split = tfds_source.parse(src.value)
        data_key = hashlib.sha256(str(settings.tfds_dir().resolve()).encode()).hexdigest()[:8]
        key = f"tfds-{name.replace('/', '_')}-{split or 'all'}-{data_key}"
        key = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)

        def build_tfds(tmp: Path) -> None:
            tmp.mkdir()
            tfds_source.export(name, split, tmp, report("Exporting from TFDS"))

        return _materialise(key, build_tfds)
    path = Path(src.value).expanduser()
    if not path.exists():
        raise DatasetError(f"{src.value}: no such folder. Give a folder with one subfolder per class.")
    return path, []


def open_dataset(
    source: str = DEFAULT_SOURCE, progress: StageProgress | None = None, corrected: bool = True
) -> Dataset:
    """Resolve and ingest a source: every file decoded once, the rest reported.

    `corrected`: apply the dataset's corrections record (engine.data.corrections), as every
    loader does; False gives the data exactly as on disk.
    """
    root, skipped = resolve(source, progress)
    layout = scan(root)
    checking = (lambda d, t: progress("Checking images", d, t)) if progress else None
    dataset = ingest(layout, source, checking, extra_skipped=skipped)
    return corrections.apply(dataset) if corrected else dataset


def server_folders() -> list[Path]:
    """Folders under the operator's data roots that the dashboard may open.

    Each root and each of its immediate subfolders that has subfolders itself
    (a dataset needs class folders).
    """
    found = []
    for root in settings.data_roots():
        for folder in [root, *sorted(p for p in root.iterdir() if p.is_dir())]:
            if folder.name.startswith(".") or not folder.resolve().is_relative_to(root):
                continue  # hidden, or a link to a folder outside the operator's root
            try:
                if any(p.is_dir() and not p.name.startswith(".") for p in folder.iterdir()):
                    found.append(folder)
            except OSError:
                continue
    return found


def check_server_folder(path: str | Path) -> Path:
    """`path`, resolved, if it lies under an operator data root; else DatasetError."""
    real = Path(path).expanduser().resolve()
    for root in settings.data_roots():
        if real == root or real.is_relative_to(root):
            return real
    raise DatasetError(
        f"{path} is not under a data folder the operator allows (CONVSCOPE_DATA_ROOTS); "
        "upload a zip instead, or ask the operator to add the folder"
    )


def save_upload(name: str, data: bytes) -> Path:
    """Keep an uploaded archive in the cache, named by content; returns its path (the source).

    Raises:
        DatasetError: not an archive name, or over CONVSCOPE_MAX_ARCHIVE_MB.
    """
    if not archive.is_archive(name):
        raise DatasetError(f"{name}: upload a {' / '.join(archive.ARCHIVE_SUFFIXES)} archive of class folders")
    limit = settings.max_archive_bytes()
    if len(data) > limit:
        raise DatasetError(f"{name}: {len(data) / 2**20:.0f} MB is over the {limit / 2**20:.0f} MB archive limit")
    suffix = next(s for s in sorted(archive.ARCHIVE_SUFFIXES, key=len, reverse=True) if name.lower().endswith(s))
    folder = settings.cache_dir() / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{hashlib.sha256(data).hexdigest()[:20]}{suffix}"
    if not path.exists():
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".upload-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    shown = _upload_name_file(path)
    if not shown.exists():  # the name the user knows it by, for run tables and reports (the path is a hash)
        shown.write_text(Path(name).name, encoding="utf-8")
    return path


def _upload_name_file(path: Path) -> Path:
    return path.with_name(f".{path.name}.name")


def source_title(source: str) -> str:
    """A source as users know it, never a server path.

    An upload: its original file name; a folder under an allowed data root: the
    root's name and the path below it (`datasets/pets`); any other path: its last
    part; `shapes...` and `tfds:...` as they are.
    """
    if not source.strip() or parse(source).kind in ("shapes", "tfds"):
        return source
    path = Path(source).expanduser()
    if path.parent.name == "uploads":
        try:
            return _upload_name_file(path).read_text(encoding="utf-8").strip() or path.name
        except OSError:
            return path.name
    for root in settings.data_roots():
        if path == root or path.is_relative_to(root):
            return Path(root.name, path.relative_to(root)).as_posix()
    return path.name
