"""Which members of a competition zip are read, and within what limits (untrusted input): each
is checked from the zip's directory before anything is inflated (file type, encryption,
compression, size, ratio), and again while it inflates, since a directory can lie."""

import stat
import zipfile
from pathlib import Path, PurePosixPath

from pipeline import config
from pipeline.common.errors import PipelineError
from pipeline.data.raw_csv import MAX_CSV_BYTES

ZIP_ENCRYPTED = 0x1  # general-purpose flag bit 0 of a zip member
MAX_RATIO = 100  # Kaggle's members inflate 3.8 to 8.9 times


def pick_members(archive: zipfile.ZipFile, zip_path: Path) -> tuple[dict, list[str]]:
    """Each of Kaggle's file names to one member (the top-level one, else the single copy in a
    folder; `__MACOSX/train.csv` is ignored), and notes on what was skipped."""
    chosen, notes = {}, []
    for name in config.COMPETITION_FILES:
        copies = [
            info
            for info in archive.infolist()
            if not info.is_dir() and PurePosixPath(info.filename).name == name
        ]
        top = [info for info in copies if info.filename == name]
        if len(top) > 1 or (not top and len(copies) > 1):
            listed = ", ".join(info.filename for info in copies[:4])
            raise PipelineError(
                f"{zip_path}: holds {len(copies)} files named {name} ({listed}) and cannot "
                f"tell which is Kaggle's; keep one, at the top level"
            )
        if not copies:
            continue
        chosen[name] = (top or copies)[0]
        if ignored := [info.filename for info in copies if info is not chosen[name]]:
            notes.append(f"took the top-level {name}, ignored {', '.join(ignored[:3])}")
    return chosen, notes


def check_member_size(info: zipfile.ZipInfo, zip_path: Path) -> None:
    """Refuse, from the zip's directory, a member past MAX_CSV_BYTES or MAX_RATIO (a zip bomb)."""
    if info.file_size > MAX_CSV_BYTES:
        raise PipelineError(
            f"{zip_path}: {info.filename} inflates to {info.file_size:,} bytes, more than the "
            f"{MAX_CSV_BYTES:,} allowed (Kaggle's train.csv is 77 MB)"
        )
    ratio = info.file_size / max(info.compress_size, 1)
    if ratio > MAX_RATIO and info.file_size > 1 << 20:  # tiny files may pack better: harmless
        raise PipelineError(
            f"{zip_path}: {info.filename} inflates {ratio:,.0f} times "
            f"({info.compress_size:,} to {info.file_size:,} bytes), more than the "
            f"{MAX_RATIO}x allowed: a zip bomb, not a CSV"
        )


def competition_members(
    archive: zipfile.ZipFile, zip_path: Path, raw_dir: Path
) -> tuple[dict[str, zipfile.ZipInfo], list[str]]:
    """The zip's three CSVs, each a readable plain file (no Unix mode, 0, counts as plain)."""
    members, notes = pick_members(archive, zip_path)
    missing = [name for name in config.COMPETITION_FILES if name not in members]
    if missing:
        raise PipelineError(
            f"{zip_path}: not the digit-recognizer zip, it lacks {', '.join(missing)}"
        )
    by_hand = f"unzip it yourself and put {', '.join(config.COMPETITION_FILES)} in {raw_dir}"
    for name in config.COMPETITION_FILES:
        info = members[name]
        kind = stat.S_IFMT(info.external_attr >> 16)
        if kind not in (0, stat.S_IFREG):
            what = {stat.S_IFLNK: "a symbolic link", stat.S_IFDIR: "a folder"}
            raise PipelineError(
                f"{zip_path}: {name} is {what.get(kind, 'a special file')}, not a plain file: "
                "not Kaggle's zip"
            )
        if info.flag_bits & ZIP_ENCRYPTED:
            raise PipelineError(
                f"{zip_path}: {name} is encrypted (password-protected zips are not "
                f"supported); {by_hand}"
            )
        check_member_size(info, zip_path)
        try:
            archive.open(info).close()  # checks the compression method and the local header
        except (NotImplementedError, RuntimeError) as exc:
            raise PipelineError(
                f"{zip_path}: {name} uses compression method {info.compress_type}, which "
                f"Python's zipfile cannot read ({exc}); {by_hand}"
            ) from None
    return members, notes


def copy_member(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, zip_path: Path, target: Path
) -> None:
    """Decompress one member into `target` within the limits, whatever the directory claimed."""
    limit = min(info.file_size, MAX_CSV_BYTES)
    written = 0
    with archive.open(info) as src, open(target, "wb") as dst:
        while True:
            try:
                chunk = src.read(1 << 20)
            except Exception as exc:  # zlib.error, lzma.LZMAError, bz2's OSError, a bad CRC
                raise PipelineError(
                    f"{zip_path}: {info.filename} is damaged ({type(exc).__name__}: {exc})"
                ) from None
            if not chunk:
                return
            written += len(chunk)
            if written > limit:
                raise PipelineError(
                    f"{zip_path}: {info.filename} inflates past {limit:,} bytes, more than "
                    "its directory declares or the limit allows"
                )
            dst.write(chunk)
