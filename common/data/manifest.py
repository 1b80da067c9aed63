"""Read the manifest.json a `prepare` recipe writes, and find its split files safely.

A manifest lists the files it wrote (`files`: {"train.jsonl": {"rows", "sha256"}, ...}), relative
to the manifest's own directory. `train --data path/to/manifest.json` uses its train (and valid)
files. A manifest is data, possibly from someone else: a file path that is absolute or climbs out
of the manifest's directory with `..` is refused, so a manifest cannot point training (and the
paths recorded in the adapter metadata) at arbitrary files on the machine.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from common.errors import DataError
from common.runs.io import read_json, sha256_file

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Manifest:
    path: Path
    data: dict

    @property
    def dir(self) -> Path:
        return self.path.parent


def is_manifest(path: str | Path) -> bool:
    """A .json file holding an object with a "files" mapping (a .json data file holds a list)."""
    p = Path(path)
    if p.suffix != ".json" or not p.is_file():
        return False
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        return False  # load_examples reports the syntax error with its line
    return isinstance(obj, dict) and isinstance(obj.get("files"), dict)


def load_manifest(path: str | Path) -> Manifest:
    path = Path(path)
    data = read_json(path, "manifest")
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        raise DataError('not a prepare manifest (expected an object with a "files" mapping)', where=str(path),
                        fix="point at the manifest.json written by `cli.py prepare`, or at a JSONL file")
    for name in data["files"]:
        _check_relative(name, path)
    return Manifest(path, data)


def _check_relative(name: str, manifest_path: Path) -> None:
    where = str(manifest_path)
    fix = "list files by their name inside the manifest's directory (as `prepare` writes them)"
    if not isinstance(name, str) or not name.strip():
        raise DataError("empty file name in the manifest", where=str(manifest_path), fix=fix)
    for pure in (PurePosixPath(name), PureWindowsPath(name)):
        if pure.is_absolute() or pure.anchor:
            raise DataError(f"file path {name!r} is absolute; a manifest may only name files in its own "
                            "directory", where=where, fix=fix)
        if ".." in pure.parts:
            raise DataError(f"file path {name!r} escapes the manifest's directory", where=where, fix=fix)


def resolve_split(manifest: Manifest, name: str, required: bool = True) -> Path | None:
    """The file of split `name` ("train", "valid", "test"); None for an absent or empty optional split."""
    for fname, info in manifest.data["files"].items():
        if PurePosixPath(fname).stem != name:
            continue
        _check_relative(fname, manifest.path)
        path = manifest.dir / fname
        rows = info.get("rows") if isinstance(info, dict) else None
        if rows == 0 and not required:
            return None
        if rows == 0:
            raise DataError(f"the {name} split of this manifest is empty", where=str(path),
                            fix="prepare the data again with other ratios, or pass a JSONL file")
        if not path.is_file():
            raise DataError(f"the manifest lists {fname} but the file is missing", where=str(path),
                            fix="run `cli.py prepare` again for this directory")
        digest = info.get("sha256") if isinstance(info, dict) else None
        if digest and sha256_file(path) != digest:  # a file replaced or cut after prepare wrote the manifest
            raise DataError(f"{fname} does not match the sha256 the manifest records for it", where=str(path),
                            fix="run `cli.py prepare` again for this directory, or train on the JSONL file directly")
        return path
    if required:
        raise DataError(f"the manifest lists no {name} split", where=str(manifest.path),
                        fix=f"a prepare manifest lists {name}.jsonl under \"files\"")
    return None


def resolve_folder(train: str | None, valid: str | None) -> tuple[str | None, str | None]:
    """data.train given as a folder (mlx-lm's --data habit): its manifest.json when `prepare` wrote
    one, else its train.jsonl (and valid.jsonl when present and no valid file is given)."""
    if not train or not Path(train).is_dir():
        return train, valid
    folder = Path(train)
    if (folder / MANIFEST).is_file():
        return str(folder / MANIFEST), valid
    if not (folder / "train.jsonl").is_file():
        raise DataError("this data folder has no train.jsonl (nor a manifest.json)", where=str(folder),
                        fix="put train.jsonl (and valid.jsonl) in the folder, as mlx-lm expects, or pass a JSONL file")
    if valid is None and (folder / "valid.jsonl").is_file():
        valid = str(folder / "valid.jsonl")
    return str(folder / "train.jsonl"), valid


def resolve_data(train: str | None, valid: str | None) -> tuple[str | None, str | None]:
    """data.train / data.valid as given, or, when data.train is a manifest (or a folder), its
    train/valid files."""
    train, valid = resolve_folder(train, valid)
    if not train or not is_manifest(train):
        return train, valid
    m = load_manifest(train)
    t = resolve_split(m, "train")
    v = valid or resolve_split(m, "valid", required=False)
    return str(t), (str(v) if v else None)
