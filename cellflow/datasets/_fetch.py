"""Checksum-verified downloads into a cache folder, with pooch."""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

from ._registry import RemoteFile, human_size

logger = logging.getLogger("cellflow")

#: Environment variable naming the download cache folder (used when ``cache_dir`` is not given).
CACHE_ENV = "CELLFLOW_DATA"
#: Default of the loaders' ``known_hash``: use the checksum cellflow's registry holds for the file.
PUBLISHED = "published"

_HASH = re.compile(r"^(md5:[0-9a-f]{32}|sha1:[0-9a-f]{40}|(sha256:)?[0-9a-f]{64})$", re.IGNORECASE)


def cache_path(cache_dir: str | Path | None = None) -> Path:
    """The folder downloads go to.

    Parameters
    ----------
    cache_dir
        An explicit folder. Without it, the environment variable ``CELLFLOW_DATA`` names the
        folder, and without that, the operating system's cache (``~/.cache/cellflow`` on Linux,
        ``pooch.os_cache("cellflow")``).

    Returns
    -------
    The folder, with ``~`` expanded (it is created on the first download, not here).
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    from_env = os.environ.get(CACHE_ENV, "").strip()
    if from_env:
        return Path(from_env).expanduser()
    import pooch

    return Path(pooch.os_cache("cellflow"))


def download(
    url: str,
    known_hash: str | None,
    *,
    fname: str | None = None,
    cache_dir: str | Path | None = None,
    progressbar: bool = False,
) -> Path:
    """Download a file into the cache once, verified against its checksum (pooch's ``retrieve``).

    A file already in the cache with the right checksum is returned without any network access;
    one with a wrong checksum is downloaded again. A download whose checksum does not match is
    deleted, so nothing unverified is ever kept.

    Parameters
    ----------
    url
        Where to fetch the file from: ``https://``, ``http://``, ``ftp://``, ``doi:`` (anything
        pooch downloads) or ``file://`` (a local file, copied; handy for mirrors on a shared disk).
    known_hash
        The expected checksum: ``"md5:<32 hex digits>"``, ``"sha1:<40 hex digits>"``,
        ``"sha256:<64 hex digits>"`` or 64 bare hex digits (SHA-256). ``None`` skips the check:
        then a truncated, corrupted or replaced file would be used silently, so pass ``None``
        only for a source you trust (pooch logs the SHA-256 of what it got, to pin it next time).
    fname
        The file name in the cache; by default the last part of the URL's path.
    cache_dir
        The cache folder; see :func:`cache_path` for the default.
    progressbar
        Show a progress bar (``tqdm``) while downloading over the network.

    Returns
    -------
    The path of the file in the cache.

    Raises
    ------
    ValueError
        ``known_hash`` is not a checksum, or the download does not match it (the download was
        deleted).
    FileNotFoundError
        A ``file://`` URL names a file that does not exist.
    """
    import pooch

    known_hash = _check_hash(known_hash)
    parsed = urlparse(url)
    if fname is None:
        fname = Path(unquote(parsed.path)).name
        if not fname:
            raise ValueError(f"Cannot tell a file name from the URL {url!r}; pass fname=.")
    downloader = _copy_local_file if parsed.scheme == "file" else None
    try:
        path = pooch.retrieve(
            url,
            known_hash=known_hash,
            fname=fname,
            path=cache_path(cache_dir),
            downloader=downloader,
            progressbar=progressbar and downloader is None,
        )
    except ValueError as err:
        if "does not match the known hash" not in str(err):
            raise
        raise ValueError(f"The download of {url} was refused and not kept: {err}") from None
    return Path(path)


def fetch_remote(
    remote: RemoteFile,
    *,
    known_hash: str | None = PUBLISHED,
    cache_dir: str | Path | None = None,
    progressbar: bool = True,
) -> Path:
    """Download one registered remote file into the cache (once), checked against its checksum.

    Parameters
    ----------
    remote
        The file and where it lives.
    known_hash
        ``"published"`` (the checksum the registry holds), an explicit checksum, or ``None`` to
        download without any check (see :func:`download` for the risk).
    cache_dir
        The cache folder; see :func:`cache_path`.
    progressbar
        Show a progress bar while downloading.

    Returns
    -------
    The path of the file in the cache.

    Raises
    ------
    ValueError
        ``known_hash="published"`` but no checksum was published for the file.
    """
    if known_hash == PUBLISHED:
        if remote.known_hash is None:
            raise ValueError(
                f"No published checksum is known for {remote.describe()}, so cellflow will not download it "
                "unchecked. Pass known_hash='md5:<hex>' (Zenodo lists it on the record's page), or "
                "known_hash=None to download it without verification at your own risk."
            )
        known_hash = remote.known_hash
    folder = cache_path(cache_dir)
    if not (folder / remote.name).exists():
        logger.info("Downloading %s into %s.", remote.describe(), folder)
    return download(remote.url, known_hash, fname=remote.name, cache_dir=folder, progressbar=progressbar)


def _check_hash(known_hash: str | None) -> str | None:
    """The checksum without surrounding spaces, or an error that says what a checksum looks like."""
    if known_hash is None:
        return None
    if not isinstance(known_hash, str) or not _HASH.match(known_hash.strip()):
        raise ValueError(
            f"known_hash={known_hash!r} is not a checksum. Give 'md5:<32 hex digits>', 'sha1:<40 hex digits>', "
            "'sha256:<64 hex digits>' (or 64 bare hex digits), or None to skip the check (not recommended)."
        )
    return known_hash.strip().lower()


def _copy_local_file(url: str, output_file, pooch=None, check_only: bool = False):
    """A pooch downloader for ``file://`` URLs: copy the local file (``pooch`` is part of pooch's signature)."""
    source = Path(unquote(urlparse(url).path))
    if check_only:
        return source.is_file()
    if not source.is_file():
        raise FileNotFoundError(f"{url} names no file ({source} does not exist).")
    logger.debug("Copying %s (%s).", source, human_size(source.stat().st_size))
    if hasattr(output_file, "write"):
        with open(source, "rb") as handle:
            shutil.copyfileobj(handle, output_file)
    else:
        shutil.copyfile(source, output_file)
    return None
