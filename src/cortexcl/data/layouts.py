"""Open a subject of any dataset layout: one entry point for the study runner and the report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cortexcl.data.algonauts import load_subject
from cortexcl.data.nod import NODSubject
from cortexcl.data.subject import Subject, subject_name
from cortexcl.errors import InputError

LAYOUTS = ("algonauts", "nsd", "nod", "folder")


def open_subject(
    root: str | Path,
    subject: int | str,
    *,
    layout: str = "algonauts",
    image_size: int = 224,
    progress: bool = True,
    sessions: Sequence[int] | None = None,
    space: str = "challenge",
    rois: str | Path | None = None,
    ncsnr: str | Path | None = None,
    nod: Mapping[str, Any] | None = None,
    cache_dir: str | Path | None = None,
) -> Subject | NODSubject:
    """Open one subject of a dataset in ``layout``.

    Parameters
    ----------
    root : str or Path
        The dataset root.
    subject : int or str
        Subject number or name.
    layout : {"algonauts", "nsd", "nod", "folder"}
        `cortexcl.data.algonauts.load_subject`, `cortexcl.data.nsd.load_nsd_subject`,
        `cortexcl.data.nod.load_nod_subject` or `cortexcl.data.folder.load_folder_subject`.
    image_size, progress
        As for the readers.
    sessions : sequence of int, optional
        nsd: first and last session read (inclusive); None: every session present.
    space, rois
        nsd: as for `load_nsd_subject`; ``{subject}`` in ``rois`` stands for ``subjNN``.
    ncsnr : str or Path, optional
        algonauts: the native NSD release root, for noise ceilings.
    nod : mapping, optional
        nod: keyword arguments of `load_nod_subject` (sessions, top_k, normalization,
        image_fit). The subject keeps the study's name, ``subjNN``.
    cache_dir : str or Path, optional
        Image cache folder (see `ImageStore`).

    Raises
    ------
    InputError
        On an unknown layout, or whatever the reader refuses.
    """
    if layout == "nsd":
        from cortexcl.data.nsd import load_nsd_subject

        name = subject_name(subject)
        return load_nsd_subject(
            root, name, image_size=image_size, progress=progress, space=space,
            cache_dir=cache_dir,
            sessions=range(sessions[0], sessions[-1] + 1) if sessions else None,
            rois=str(rois).replace("{subject}", name) if rois else None)
    if layout == "nod":
        from cortexcl.data.nod import load_nod_subject

        name = subject_name(subject)
        data = load_nod_subject(root, int(name.removeprefix("subj")), image_size=image_size,
                                progress=progress, cache_dir=cache_dir, **(nod or {}))
        data.name = name  # results name subjects subjNN in every layout; data.root is sub-XX
        return data
    if layout == "folder":
        from cortexcl.data.folder import load_folder_subject

        return load_folder_subject(root, subject, image_size=image_size, progress=progress,
                                   cache_dir=cache_dir)
    if layout == "algonauts":
        return load_subject(root, subject, image_size=image_size, progress=progress,
                            ncsnr=ncsnr, cache_dir=cache_dir)
    raise InputError(f"layout: expected one of {', '.join(LAYOUTS)}, got {layout!r}")


def layout_options(data: Any) -> dict[str, Any]:
    """The reader options of a study's ``data`` section (a `cortexcl.config.DataConfig`), as
    JSON-ready keyword arguments of `open_subject` (recorded in the run's manifest)."""
    options = {"layout": data.layout}
    if data.layout == "nod":
        options["nod"] = data.nod.model_dump(mode="json")
    elif data.layout == "nsd":
        options.update(sessions=list(data.sessions) if data.sessions else None, space=data.space,
                       rois=str(data.rois) if data.rois else None)
    elif data.ncsnr is not None:
        options["ncsnr"] = str(data.ncsnr)
    return options
