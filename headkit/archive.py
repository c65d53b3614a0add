"""Safe zip extraction: nothing lands outside the target folder, links and unwanted files are skipped, bombs stop early."""

from __future__ import annotations

import logging
import shutil
import stat
import zipfile
import zlib
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from .disk import BLOCK, DiskBudget, blocks

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20
_JUNK = {"__MACOSX", "Thumbs.db", "desktop.ini"}


class ArchiveError(ValueError):
    """An archive that is refused: unsafe paths, too big, too many entries, corrupt or encrypted."""


@dataclass(frozen=True)
class ZipLimits:
    """Upper bounds for one uploaded zip.

    Attributes:
        max_total_bytes: Uncompressed bytes over all entries.
        max_entries: Entries, folders included.
        max_ratio: Uncompressed / compressed size, of each entry and of the whole zip; checked above
            `ratio_floor_bytes`, because small text files (labels) legitimately compress far better than images.
        ratio_floor_bytes: Uncompressed size (of an entry, or of the whole zip) below which no ratio is checked.
        disk: the server's shared disk budget (`max_server_mb`): what the kept entries declare is reserved in it
            before the first byte is written (see `reserved_bytes`); None: no server budget (a local user).
    """

    max_total_bytes: int = 2 * 1024**3
    max_entries: int = 20_000
    max_ratio: float = 100.0
    ratio_floor_bytes: int = 1 << 20
    disk: DiskBudget | None = None


def reserved_bytes(sizes: list[int]) -> int:
    """Disk reserved for extracting files of `sizes` and rebuilding them as a dataset: each file in whole blocks, and
    one block more per file for what the rebuild adds beside it (its label file, its folder's entry); the rebuild
    moves the extracted files, so nothing is written twice."""
    return sum(blocks(size) + BLOCK for size in sizes)


def extract_zip(
    archive: str | Path,
    dest: str | Path,
    *,
    limits: ZipLimits = ZipLimits(),  # noqa: B008 (frozen dataclass, immutable)
    keep: Callable[[PurePosixPath], bool] | None = None,
    kept: str = "",
) -> list[str]:
    """Extract `archive` into `dest` (created), refusing anything unsafe.

    Declared sizes are checked before anything is written, and actual bytes again while streaming, so a zip whose
    headers lie is stopped as well. With `limits.disk`, the kept files' declared sizes are reserved against the
    server's disk before the first is written. On refusal `dest` is removed, so no partial extraction is left behind.

    Args:
        archive: The zip.
        dest: Folder to extract into.
        limits: Bounds on entries and bytes; all entries count, skipped ones included.
        keep: Which files (relative paths inside the zip) to write; the rest are never written and are listed in
            one warning, except the junk zip tools add (hidden files, `__MACOSX/`), which is skipped silently.
            None keeps every file.
        kept: What `keep` accepts, in words, for that warning.

    Returns:
        Warnings, e.g. for skipped symlinks and skipped files.

    Raises:
        ArchiveError: The zip is unreadable, unsafe or over `limits`.
        LimitExceeded: what it would write does not fit in `limits.disk` (`max_server_mb`).
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        return _extract(archive, dest.resolve(), limits, keep, kept)
    except ValueError:  # ArchiveError, or LimitExceeded from the disk budget
        shutil.rmtree(dest, ignore_errors=True)
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError, NotImplementedError) as e:
        shutil.rmtree(dest, ignore_errors=True)
        raise ArchiveError(
            f"{archive.name}: could not be extracted ({e}); expected a plain, unencrypted zip; re-create it "
            "with a standard zip tool"
        ) from e


def _extract(
    archive: Path, dest: Path, limits: ZipLimits, keep: Callable[[PurePosixPath], bool] | None, kept: str
) -> list[str]:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        _check_declared(archive.name, infos, limits)
        warnings, skipped, files, folders = [], [], [], []
        for info in infos:  # what will be written, decided before anything is
            name = _safe_name(archive.name, info.filename)
            if name is None:
                continue
            file_type = stat.S_IFMT(info.external_attr >> 16)
            if file_type not in (0, stat.S_IFREG, stat.S_IFDIR):
                what = "symlink" if file_type == stat.S_IFLNK else "special file"
                warnings.append(f"{archive.name}: ignored {what} '{info.filename}' (links are never extracted)")
                logger.warning(warnings[-1])
                continue
            target = dest / name
            if not target.resolve().is_relative_to(dest):
                raise ArchiveError(f"{archive.name}: entry '{info.filename}' resolves outside the extraction folder")
            if info.is_dir() or file_type == stat.S_IFDIR:
                if keep is None:
                    folders.append(target)
                continue  # with `keep`, only the folders of kept files exist
            if keep is not None and not keep(name):
                if not _is_junk(name):
                    skipped.append(name.as_posix())
                continue
            files.append((info, target))
        need = reserved_bytes([info.file_size for info, _ in files] + [0] * len(folders))
        what = f"{archive.name} ({need / 2**20:.1f} MiB once extracted)"
        total = 0
        with limits.disk.reserve(need, what) if limits.disk is not None else nullcontext():
            for folder in folders:
                folder.mkdir(parents=True, exist_ok=True)
            for info, target in files:
                target.parent.mkdir(parents=True, exist_ok=True)
                total = _stream(zf, info, target, total, archive.name, limits)
    if skipped:
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        warnings.append(
            f"{archive.name}: skipped {len(skipped)} file(s) that are not part of a dataset, never extracted: "
            f"{', '.join(skipped[:5])}{more}; only {kept or 'the files asked for'} are extracted"
        )
        logger.warning(warnings[-1])
    return warnings


def _is_junk(name: PurePosixPath) -> bool:
    """Hidden files and the metadata zip tools add (macOS `__MACOSX/`, `.DS_Store`, Windows `Thumbs.db`)."""
    return any(part.startswith(".") or part in _JUNK for part in name.parts)


def _check_declared(archive: str, infos: list[zipfile.ZipInfo], limits: ZipLimits) -> None:
    if len(infos) > limits.max_entries:
        raise ArchiveError(
            f"{archive}: {len(infos)} entries, but at most {limits.max_entries} are accepted; upload fewer files"
        )
    declared = sum(i.file_size for i in infos)
    if declared > limits.max_total_bytes:
        raise ArchiveError(
            f"{archive}: {declared} bytes uncompressed, but at most {limits.max_total_bytes} are accepted; "
            "upload a smaller dataset"
        )
    for info in infos:
        if info.file_size > limits.ratio_floor_bytes and info.file_size > limits.max_ratio * max(info.compress_size, 1):
            raise ArchiveError(
                f"{archive}: entry '{info.filename}' expands {info.file_size / max(info.compress_size, 1):.0f}x "
                f"(limit {limits.max_ratio:.0f}x); this looks like a zip bomb, so the zip is refused"
            )
    packed = sum(i.compress_size for i in infos)
    if declared > limits.ratio_floor_bytes and declared > limits.max_ratio * max(packed, 1):
        raise ArchiveError(
            f"{archive}: expands {declared / max(packed, 1):.0f}x overall (limit {limits.max_ratio:.0f}x); this "
            "looks like a zip bomb (many small, highly compressed entries), so the zip is refused"
        )


def _safe_name(archive: str, name: str) -> PurePosixPath | None:
    """Entry name as a relative path, or None for the root; refuses absolute paths and `..`."""
    name = name.replace("\\", "/")
    path = PurePosixPath(name)
    if name.startswith("/") or PureWindowsPath(name).drive or ".." in path.parts or "\x00" in name:
        raise ArchiveError(
            f"{archive}: entry '{name}' points outside the dataset folder (absolute path or '..'); "
            "expected relative paths only; re-create the zip from inside the dataset folder"
        )
    parts = [p for p in path.parts if p not in ("", ".")]
    return PurePosixPath(*parts) if parts else None


def _stream(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, total: int, archive: str, limits: ZipLimits
) -> int:
    """Copy one entry in chunks, enforcing the limits on the bytes actually produced; returns the new total."""
    written = 0
    with zf.open(info) as src, open(target, "wb") as dst:
        while chunk := src.read(_CHUNK):
            written += len(chunk)
            total += len(chunk)
            over_ratio = written > limits.ratio_floor_bytes and written > limits.max_ratio * max(info.compress_size, 1)
            if written > info.file_size or total > limits.max_total_bytes or over_ratio:
                raise ArchiveError(
                    f"{archive}: entry '{info.filename}' produced more data than allowed (declared "
                    f"{info.file_size} bytes, limits {limits}); the zip is refused as a possible zip bomb"
                )
            dst.write(chunk)
    return total
