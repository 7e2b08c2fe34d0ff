"""Adapters for face-parsing datasets (LaPa, CelebAMask-HQ, LFW Part Labels) in their published layouts.

Each adapter lists the usable images of a dataset as `PartsRecord`s (with a `Reject`, file and reason, for
every name that cannot be used: nothing is dropped silently) and turns one image's annotation into a
single (H, W) uint8 label mask in the project's lip classes: 0 background, 1 upper lip, 2 inner mouth,
3 lower lip, 255 ignore. Which source class becomes which lip class is a *class table* that the caller
passes (it comes from params.yaml); `DEFAULT_CLASS_TABLES` documents the defaults that params.yaml mirrors,
and a source class left out of a table maps to 0.

Layouts:

* ``lapa``: ``<root>/<split>/images/<name>.jpg``, ``<root>/<split>/labels/<name>.png`` (single-channel
  label ids 0..10, same size as the image), ``<root>/<split>/landmarks/<name>.txt`` (106 points).
  Splits: train, val, test; ``split=None`` reads every split folder present.
* ``celebamask_hq``: ``<root>/CelebA-HQ-img/<id>.jpg`` and binary part masks
  ``<root>/CelebAMask-HQ-mask-anno/<id // 2000>/<id:05d>_<part>.png`` (white = part; 512x512 in the
  real set, resized with nearest neighbour to the image size). There is no standard split: ``split=None``
  takes every image, otherwise ``split`` names a text file of ids (see `list_records`).
* ``lfw_parts``: ``<root>/lfw_funneled/<Person>/<Person>_<NNNN>.jpg`` and RGB labels
  ``<root>/parts_lfw_funneled_gt_images/<Person>_<NNNN>.ppm`` (red hair, green face, blue background),
  split files ``<root>/parts_{train,validation,test}.txt`` with lines ``Person N``. ``split=None`` takes
  every label file. This set has **no lip classes**: it cannot supervise lips by itself. Its default
  table maps everything to background; mapping ``face`` to 255 instead keeps its faces out of the loss
  while its hair and background still count as negatives.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lipseg.data.helen import IMAGE_EXTENSIONS, is_safe_name
from lipseg.data.labels import (
    BACKGROUND,
    INNER_MOUTH,
    LIP_CLASS_IDS,
    LOWER_LIP,
    UPPER_LIP,
)
from lipseg.data.rejects import DatasetError, Reject

ADAPTERS = ("lapa", "celebamask_hq", "lfw_parts")

# LaPa: the position is the label id stored in the label PNG.
LAPA_CLASSES = (
    "background",
    "skin",
    "left_eyebrow",
    "right_eyebrow",
    "left_eye",
    "right_eye",
    "nose",
    "upper_lip",
    "inner_mouth",
    "lower_lip",
    "hair",
)
# CelebAMask-HQ: also the painting order, lowest precedence first (see `CELEBAMASK_PRECEDENCE`).
CELEBAMASK_PARTS = (
    "skin",
    "nose",
    "eye_g",
    "l_eye",
    "r_eye",
    "l_brow",
    "r_brow",
    "l_ear",
    "r_ear",
    "mouth",
    "u_lip",
    "l_lip",
    "hair",
    "hat",
    "ear_r",
    "neck_l",
    "neck",
    "cloth",
)
# LFW Part Labels: the order is the label's colour channels R, G, B (argmax ties go to the first).
LFW_CLASSES = ("hair", "face", "background")

SOURCE_CLASSES: dict[str, tuple[str, ...]] = {
    "lapa": LAPA_CLASSES,
    "celebamask_hq": CELEBAMASK_PARTS,
    "lfw_parts": LFW_CLASSES,
}

DEFAULT_CLASS_TABLES: dict[str, dict[str, int]] = {
    "lapa": {"upper_lip": UPPER_LIP, "inner_mouth": INNER_MOUTH, "lower_lip": LOWER_LIP},
    "celebamask_hq": {"u_lip": UPPER_LIP, "mouth": INNER_MOUTH, "l_lip": LOWER_LIP},
    "lfw_parts": {"hair": BACKGROUND, "face": BACKGROUND, "background": BACKGROUND},
}

# Overlapping CelebAMask-HQ parts: masks are painted in this order and a later part wins. It is the order
# of the dataset's own g_mask.py, so the label maps match the ones everybody else derives: every face part
# (lips included) wins over skin, lips win over the inner mouth, and occluders painted last (hair, hat,
# earring, necklace, neck, cloth) win over the face parts they cover.
CELEBAMASK_PRECEDENCE = CELEBAMASK_PARTS

LAPA_SPLITS = ("train", "val", "test")
LAPA_NUM_POINTS = 106
LFW_SPLIT_FILES = {"train": "parts_train.txt", "validation": "parts_validation.txt", "test": "parts_test.txt"}
LFW_SPLIT_ALIASES = {"val": "validation"}

CELEBA_IMAGE_DIR = "CelebA-HQ-img"
CELEBA_MASK_DIR = "CelebAMask-HQ-mask-anno"
CELEBA_FOLDER_SIZE = 2000  # ids per mask folder in the published set
LFW_IMAGE_DIR = "lfw_funneled"
LFW_LABEL_DIR = "parts_lfw_funneled_gt_images"

MASK_NAME = re.compile(r"^(\d+)_(.+)\.png$", re.IGNORECASE)
_LFW_NAME = re.compile(r"^(.+)_(\d{4})$")


@dataclass(frozen=True)
class PartsRecord:
    """One face-parsing image and the label file(s) that annotate it."""

    name: str
    image_path: Path
    label_paths: tuple[Path, ...]  # one label file (LaPa, LFW) or the per-part masks found (CelebAMask-HQ)
    format: str


def _check_format(format: str) -> None:
    if format not in ADAPTERS:
        raise ValueError(f"unknown face-parsing format {format!r}; expected one of {', '.join(ADAPTERS)}")


def validate_class_table(format: str, class_table: Mapping[str, int]) -> dict[str, int]:
    """The complete table (every source class of `format`, in its order); unlisted classes map to 0.

    ValueError on class names the format does not have and on ids outside {0, 1, 2, 3, 255}.
    """
    _check_format(format)
    if not isinstance(class_table, Mapping):
        raise ValueError(
            f"{format} class table must be a mapping of class name -> id, got {type(class_table).__name__}"
        )
    known = SOURCE_CLASSES[format]
    unknown = [str(name) for name in class_table if name not in known]
    if unknown:
        raise ValueError(
            f"{format} class table: unknown class name(s) {', '.join(map(repr, unknown))}; "
            f"known classes: {', '.join(known)}"
        )
    table = dict.fromkeys(known, BACKGROUND)
    for name, value in class_table.items():
        # bool is an int subclass; `true` in a YAML table is a typo, not class 1.
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) not in LIP_CLASS_IDS:
            raise ValueError(
                f"{format} class table: {name!r} -> {value!r} is not a lip class id; "
                f"expected one of {', '.join(map(str, LIP_CLASS_IDS))}"
            )
        table[name] = int(value)
    return table


# ---------------------------------------------------------------------------------------------- listing


def list_records(format: str, root: Path, split: str | None = None) -> tuple[list[PartsRecord], list[Reject]]:
    """Records of one dataset (and split) and the rejects, each with file and reason.

    `split`: LaPa ``train``/``val``/``test`` (None: every split folder present); LFW ``train``/
    ``validation`` (or ``val``)/``test`` (None: every label file); CelebAMask-HQ a text file of ids, one
    per line (first whitespace-separated token; blank lines and ``#`` comments skipped), given as a path
    (relative paths are taken from `root`) or as a bare name ``X`` for ``<root>/X.txt``; None takes every
    image. The shipped ``CelebA-HQ-to-CelebA-mapping.txt`` works as an id list (its header is skipped).
    """
    _check_format(format)
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{format} dataset folder not found: {root}")
    if format == "lapa":
        return _list_lapa(root, split)
    if format == "celebamask_hq":
        return _list_celebamask(root, split)
    return _list_lfw(root, split)


def _images_by_stem(folder: Path) -> tuple[dict[str, Path], list[Reject]]:
    """Image files of a folder keyed by stem; a stem with two images is a duplicate, not a guess."""
    images: dict[str, Path] = {}
    rejects = []
    duplicated: set[str] = set()
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix not in IMAGE_EXTENSIONS:
            continue
        name = path.stem
        if name in images or name in duplicated:
            rejects.append(Reject(name, str(path), f"duplicate image name ({images.get(name, path).name} also exists)"))
            images.pop(name, None)
            duplicated.add(name)
            continue
        images[name] = path
    return images, rejects


def _usable_file(name: str, path: Path, what: str) -> Reject | None:
    if not path.is_file():
        return Reject(name, str(path), f"{what} missing")
    if path.stat().st_size == 0:
        return Reject(name, str(path), f"{what} is empty (0 bytes)")
    return None


def _list_lapa(root: Path, split: str | None) -> tuple[list[PartsRecord], list[Reject]]:
    if split is not None and split not in LAPA_SPLITS:
        raise ValueError(f"unknown LaPa split {split!r}; expected one of {', '.join(LAPA_SPLITS)}")
    if split is None:
        splits = [name for name in LAPA_SPLITS if (root / name).is_dir()]
        if not splits:
            raise DatasetError(
                f"{root}: LaPa split folders not found (expected train/, val/ or test/ with images/ and labels/)"
            )
    else:
        splits = [split]
    records: list[PartsRecord] = []
    rejects: list[Reject] = []
    seen: set[str] = set()
    for name in splits:
        split_records, split_rejects = _list_lapa_split(root / name)
        rejects.extend(split_rejects)
        for record in split_records:
            # LaPa names are unique across splits; a repeat would make the name ambiguous downstream.
            if record.name in seen:
                rejects.append(Reject(record.name, str(record.image_path), "duplicate name in another split"))
                continue
            seen.add(record.name)
            records.append(record)
    return records, rejects


def _list_lapa_split(folder: Path) -> tuple[list[PartsRecord], list[Reject]]:
    image_dir, label_dir = folder / "images", folder / "labels"
    if not folder.is_dir():
        raise DatasetError(f"LaPa split folder not found: {folder} (expected {folder}/images and {folder}/labels)")
    for required in (image_dir, label_dir):
        if not required.is_dir():
            raise DatasetError(f"LaPa split {folder.name!r}: {required} not found (expected images/ and labels/)")
    images, rejects = _images_by_stem(image_dir)
    records = []
    for name, image_path in images.items():
        if not is_safe_name(name):
            rejects.append(Reject(name, str(image_path), "unsafe image name"))
            continue
        label_path = label_dir / f"{name}.png"
        problem = _usable_file(name, label_path, "label file")
        if problem is not None:
            rejects.append(problem)
            continue
        records.append(PartsRecord(name, image_path, (label_path,), "lapa"))
    for label_path in sorted(label_dir.glob("*.png")):
        if label_path.stem not in images and not any(r.name == label_path.stem for r in rejects):
            rejects.append(Reject(label_path.stem, str(label_path), "label file without an image"))
    return records, rejects


def lapa_landmarks_path(record: PartsRecord) -> Path:
    """Where a LaPa record's 106-point landmark file lives (it need not exist)."""
    if record.format != "lapa":
        raise ValueError(f"{record.name}: landmarks are a LaPa file, record is {record.format}")
    return record.image_path.parent.parent / "landmarks" / f"{record.name}.txt"


def _read_id_list(path: Path) -> tuple[list[int], list[Reject]]:
    ids: dict[int, None] = {}
    rejects = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        token = text.split()[0]
        if number == 1 and token == "idx":  # header of CelebA-HQ-to-CelebA-mapping.txt
            continue
        if not token.isdigit():
            rejects.append(
                Reject(token[:40], f"{path}:{number}", "not a CelebA-HQ id (expected a non-negative integer)")
            )
            continue
        value = int(token)
        if value in ids:
            rejects.append(Reject(str(value), f"{path}:{number}", "duplicate id in list"))
            continue
        ids[value] = None
    return list(ids), rejects


def _resolve_id_list(root: Path, split: str) -> Path:
    given = Path(split)
    candidates = [given if given.is_absolute() else root / given]
    if given.suffix == "" and not given.is_absolute():
        candidates.append(root / f"{split}.txt")
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DatasetError(f"CelebAMask-HQ id list not found: {' or '.join(map(str, candidates))}")


def _index_celebamask_masks(mask_root: Path) -> tuple[dict[int, dict[str, Path]], list[Reject]]:
    """Part masks by id and part; masks with unknown parts or in the wrong folder become rejects."""
    masks: dict[int, dict[str, Path]] = {}
    rejects = []
    for folder in sorted(mask_root.iterdir()):
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            match = MASK_NAME.match(path.name)
            if not path.is_file() or match is None:
                continue
            number, part = int(match.group(1)), match.group(2)
            if part not in CELEBAMASK_PARTS:
                rejects.append(Reject(str(number), str(path), f"unknown CelebAMask-HQ part {part!r}"))
                continue
            if folder.name != str(number // CELEBA_FOLDER_SIZE):
                rejects.append(
                    Reject(
                        str(number),
                        str(path),
                        f"mask in folder {folder.name}/, expected "
                        f"{number // CELEBA_FOLDER_SIZE}/ (id // {CELEBA_FOLDER_SIZE})",
                    )
                )
                continue
            masks.setdefault(number, {})[part] = path
    return masks, rejects


def _list_celebamask(root: Path, split: str | None) -> tuple[list[PartsRecord], list[Reject]]:
    image_dir, mask_root = root / CELEBA_IMAGE_DIR, root / CELEBA_MASK_DIR
    for required in (image_dir, mask_root):
        if not required.is_dir():
            raise DatasetError(
                f"CelebAMask-HQ: {required} not found (expected {CELEBA_IMAGE_DIR}/ and {CELEBA_MASK_DIR}/)"
            )
    by_stem, image_rejects = _images_by_stem(image_dir)
    images: dict[int, Path] = {}
    for stem, path in by_stem.items():
        if not stem.isdigit():
            image_rejects.append(Reject(stem, str(path), "image name is not a CelebA-HQ id (expected <integer>.jpg)"))
            continue
        if int(stem) in images:  # "7.jpg" and "007.jpg" are the same id
            image_rejects.append(
                Reject(str(int(stem)), str(path), f"duplicate id ({images[int(stem)].name} also exists)")
            )
            continue
        images[int(stem)] = path
    masks, mask_rejects = _index_celebamask_masks(mask_root)
    rejects: list[Reject] = []
    if split is None:
        ids = sorted(images)
        rejects.extend(image_rejects)
        rejects.extend(mask_rejects)
        rejects.extend(
            Reject(str(number), str(next(iter(masks[number].values()))), "part masks without an image")
            for number in sorted(set(masks) - set(images))
        )
    else:
        id_file = _resolve_id_list(root, split)
        ids, list_rejects = _read_id_list(id_file)
        rejects.extend(list_rejects)
        # With a list, report only the files of listed ids: the rest of the folder is not asked for.
        wanted = {str(number) for number in ids}
        rejects.extend(reject for reject in image_rejects + mask_rejects if reject.name in wanted)
    records = []
    for number in ids:
        if number not in images:
            rejects.append(Reject(str(number), str(image_dir / f"{number}.jpg"), "image file missing"))
            continue
        found = masks.get(number, {})
        if not found:
            rejects.append(
                Reject(
                    str(number),
                    str(mask_root / str(number // CELEBA_FOLDER_SIZE) / f"{number:05d}_*.png"),
                    "no part masks found",
                )
            )
            continue
        label_paths = tuple(found[part] for part in CELEBAMASK_PRECEDENCE if part in found)
        records.append(PartsRecord(str(number), images[number], label_paths, "celebamask_hq"))
    return records, rejects


def _lfw_image_path(root: Path, name: str) -> Path | None:
    match = _LFW_NAME.match(name)
    if match is None:
        return None
    return root / LFW_IMAGE_DIR / match.group(1) / f"{name}.jpg"


def _read_lfw_split(path: Path) -> tuple[list[str], list[Reject]]:
    names: dict[str, None] = {}
    rejects = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        if len(parts) != 2 or not parts[1].isdigit():
            rejects.append(Reject(line.strip()[:40], f"{path}:{number}", "expected 'Person_Name N'"))
            continue
        name = f"{parts[0]}_{int(parts[1]):04d}"
        if name in names:
            rejects.append(Reject(name, f"{path}:{number}", "duplicate name in list"))
            continue
        names[name] = None
    return list(names), rejects


def _list_lfw(root: Path, split: str | None) -> tuple[list[PartsRecord], list[Reject]]:
    image_dir, label_dir = root / LFW_IMAGE_DIR, root / LFW_LABEL_DIR
    for required in (image_dir, label_dir):
        if not required.is_dir():
            raise DatasetError(
                f"LFW Part Labels: {required} not found (expected {LFW_IMAGE_DIR}/ and {LFW_LABEL_DIR}/)"
            )
    rejects: list[Reject] = []
    if split is None:
        names = sorted(path.stem for path in label_dir.glob("*.ppm"))
    else:
        split = LFW_SPLIT_ALIASES.get(split, split)
        if split not in LFW_SPLIT_FILES:
            raise ValueError(f"unknown LFW Part Labels split {split!r}; expected one of {', '.join(LFW_SPLIT_FILES)}")
        split_file = root / LFW_SPLIT_FILES[split]
        if not split_file.is_file():
            raise DatasetError(f"LFW Part Labels split file not found: {split_file}")
        names, rejects = _read_lfw_split(split_file)
    records = []
    for name in names:
        image_path = _lfw_image_path(root, name)
        if not is_safe_name(name) or image_path is None or not is_safe_name(image_path.parent.name):
            rejects.append(Reject(name, str(label_dir / f"{name}.ppm"), "name is not a safe 'Person_Name_NNNN'"))
            continue
        problem = _usable_file(name, label_dir / f"{name}.ppm", "label file") or _usable_file(
            name, image_path, "image file"
        )
        if problem is not None:
            rejects.append(problem)
            continue
        records.append(PartsRecord(name, image_path, (label_dir / f"{name}.ppm",), "lfw_parts"))
    return records, rejects
