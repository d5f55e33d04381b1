"""Reading and writing the file types the datasets use, with one-line `DataError`s that name the file.

Images come back as uint8 [H, W, 3]; 16-bit PNGs as uint16 [H, W]; 8-bit masks as uint8 [H, W].
"""

from __future__ import annotations

import gzip
import json
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from ptq3d.errors import DataError


def require_file(path: str | Path, what: str = "file") -> Path:
    """Return `path` as a Path, or raise DataError if it is not an existing file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: missing {what}")
    return path


def _open_image(path: Path) -> Image.Image:
    require_file(path, "image")
    try:
        with warnings.catch_warnings():
            # PIL warns between MAX_IMAGE_PIXELS and twice that and raises above; both mean a header claiming a
            # size no dataset image has (a decompression bomb), so both are refused
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
            im.load()  # decode now, so a truncated file fails here and not later
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{path}: image refused as a possible decompression bomb ({exc})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: corrupt or unreadable image ({_first_line(exc)})") from None
    return im


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_rgb(path: str | Path) -> np.ndarray:
    """uint8 [H, W, 3] RGB (grey and RGBA inputs are converted)."""
    im = _open_image(Path(path))
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im, dtype=np.uint8).copy()


def read_png_u16(path: str | Path) -> np.ndarray:
    """uint16 [H, W] from a 16-bit single-channel PNG; any other pixel format is a DataError."""
    path = Path(path)
    im = _open_image(path)
    if im.mode not in ("I;16", "I;16B", "I;16L", "I"):
        raise DataError(f"{path}: expected a 16-bit single-channel PNG, got PIL mode {im.mode!r}")
    arr = np.asarray(im)
    if im.mode == "I" and (arr.min() < 0 or arr.max() > 65535):  # 'I' is int32; 16-bit data fits
        raise DataError(f"{path}: values outside the 16-bit range")
    return arr.astype(np.uint16)


def read_png_u8(path: str | Path) -> np.ndarray:
    """uint8 [H, W] from an 8-bit single-channel image (RGB is converted to luminance)."""
    path = Path(path)
    im = _open_image(path)
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        raise DataError(f"{path}: expected an 8-bit mask, got PIL mode {im.mode!r}")
    if im.mode != "L":
        im = im.convert("L")
    return np.asarray(im, dtype=np.uint8).copy()


def write_png_u16(path: str | Path, arr: np.ndarray) -> None:
    arr = np.ascontiguousarray(arr, dtype=np.uint16)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="PNG")


def write_png_u8(path: str | Path, arr: np.ndarray) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8)).save(path, format="PNG")


def write_rgb(path: str | Path, image: np.ndarray, quality: int = 95) -> None:
    """Write uint8 [H, W, 3]; JPEG or PNG chosen by the file extension."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), mode="RGB")
    if path.suffix.lower() in (".jpg", ".jpeg"):
        im.save(path, format="JPEG", quality=quality, subsampling=0)
    else:
        im.save(path, format="PNG")


def to_uint8(image: np.ndarray) -> np.ndarray:
    """float [H, W, 3] in [0, 1] -> uint8 (round to nearest)."""
    return np.clip(np.rint(np.asarray(image) * 255.0), 0, 255).astype(np.uint8)


def read_jgz(path: str | Path) -> Any:
    """A gzip-compressed JSON file (CO3D's *.jgz)."""
    path = require_file(path, "annotation file")
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return json.load(f)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: not a readable gzip file ({exc})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: invalid JSON inside the gzip ({exc})") from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply") from None


def write_jgz(path: str | Path, obj: Any) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        json.dump(obj, f)


def read_json(path: str | Path) -> Any:
    path = require_file(path, "JSON file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: invalid JSON ({exc})") from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply") from None


def read_matrix_txt(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Whitespace-separated numbers (tabs, CRLF and 'nan' allowed) as float64, optionally checked for shape."""
    path = require_file(path, "text file")
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        try:
            rows.append([float(p) for p in parts])
        except ValueError:
            raise DataError(f"{path}:{lineno}: not a row of numbers: {line.strip()[:60]!r}") from None
    if not rows:
        raise DataError(f"{path}: empty file, expected numbers")
    if len({len(r) for r in rows}) != 1:
        raise DataError(f"{path}: rows have different numbers of values")
    arr = np.asarray(rows, dtype=np.float64)
    if shape is not None and arr.shape != shape:
        raise DataError(f"{path}: expected a {shape[0]}x{shape[1]} matrix, got {arr.shape[0]}x{arr.shape[1]}")
    return arr
