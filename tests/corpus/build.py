"""The bad-input corpus: malformed datasets, configurations and options, each built by code.

Every case starts from a valid tiny subject (``tests/tiny_data.py``) and a valid study
configuration, damages one thing, and names the ``cortexcl`` command that must refuse it with
a one-line ``error:`` message holding every fragment of ``expect``, and exit status 2. Inputs
that no command reads yet (the NOD dataset) are cases with a ``call`` instead: a library call
that must raise `InputError` with such a message.

In ``args`` and ``expect``, ``{case}`` stands for the case folder and ``{out}`` for the run
output folder (a sibling of the case folder, see `Case.out_dir`); paths in ``absent`` must not
exist after the command (a hostile file must not have run code).

Run as a script, ``python tests/corpus/build.py OUT_DIR [CASE ...]`` writes every case (or
the named ones) into ``OUT_DIR/<name>/``, with a ``case.json`` holding the arguments, the
expected fragments and the exit status.
"""

from __future__ import annotations

import builtins
import json
import pickle
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

if __package__ in (None, ""):  # run as a script: make tests/ importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cortexcl.data.rois import FSAVERAGE_N_VERTICES, ROI_CLASSES  # noqa: E402
from tiny_data import write_tiny_subject  # noqa: E402

N_IMAGES = 20
IMAGE_SIZE = 32
N_VERTICES = {"lh": 300, "rh": 260}
ENCODE = ("encode", "{case}/data", "--out", "{out}", "--subject", "1", "--hemisphere", "lh",
          "--roi", "V1v", "--weights", "none", "--image-size", "64", "--n-components", "4",
          "--min-vertices", "1", "--batch-size", "8", "--device", "cpu")
RUN = ("run", "{case}/study.yaml", "--out", "{out}")
SIMULATE = ("simulate", "{out}", "--n-images", "20", "--n-test-images", "0", "--image-size",
            "32", "--roi-scale", "0.02")
SUBJECT = "{case}/data/subj01"
FMRI = SUBJECT + "/training_split/training_fmri"
IMAGES = SUBJECT + "/training_split/training_images"
MASKS = SUBJECT + "/roi_masks"


@dataclass(frozen=True)
class Case:
    """One malformed input and how the command line must refuse it.

    Attributes
    ----------
    name : str
        Short id, e.g. ``"fmri-nan"``.
    problem : str
        What is wrong, in words.
    build : callable
        ``build(folder)`` damages the valid inputs already written into ``folder``.
    args : tuple of str
        The ``cortexcl`` arguments, with ``{case}`` and ``{out}`` placeholders.
    expect : tuple of str
        Fragments the error line must hold (the file or option, and the problem).
    absent : tuple of str
        Paths that must not exist after the command.
    call : callable, optional
        ``call(folder)`` for a case without a command (``args`` empty); its docstring says
        what it calls.
    """

    name: str
    problem: str
    build: Callable[[Path], None]
    args: tuple[str, ...]
    expect: tuple[str, ...]
    absent: tuple[str, ...] = ()
    call: Callable[[Path], object] | None = None

    @staticmethod
    def out_dir(folder: Path) -> Path:
        """The run output folder of the case built in ``folder``: a sibling, ``<folder>-out``."""
        return folder.with_name(f"{folder.name}-out")

    def _fill(self, texts: tuple[str, ...], folder: Path) -> list[str]:
        return [text.format(case=folder, out=self.out_dir(folder)) for text in texts]

    def arguments(self, folder: Path) -> list[str]:
        """The command-line arguments for the case built in ``folder``."""
        return self._fill(self.args, folder)

    def fragments(self, folder: Path) -> list[str]:
        """The fragments the error line must hold."""
        return self._fill(self.expect, folder)

    def forbidden(self, folder: Path) -> list[Path]:
        """Paths that must not exist after the command."""
        return [Path(path) for path in self._fill(self.absent, folder)]


CASES: dict[str, Case] = {}


def case(name: str, args: tuple[str, ...], *expect: str, absent: tuple[str, ...] = (),
         call: Callable[[Path], object] | None = None
         ) -> Callable[[Callable[[Path], None]], Callable]:
    """Register the decorated ``build(folder)`` as a case; its docstring is the problem."""

    def register(build: Callable[[Path], None]) -> Callable[[Path], None]:
        if name in CASES:
            raise ValueError(f"duplicate corpus case {name!r}")
        problem = " ".join((build.__doc__ or "").split())
        CASES[name] = Case(name, problem, build, tuple(args), tuple(expect), tuple(absent),
                           call)
        return build

    return register


def write_valid_inputs(folder: Path) -> None:
    """Write the valid inputs every case starts from: ``data/subj01`` and ``study.yaml``."""
    write_tiny_subject(folder / "data", n_images=N_IMAGES, image_size=IMAGE_SIZE,
                       n_vertices=(N_VERTICES["lh"], N_VERTICES["rh"]), n_test_images=1,
                       mask_dtype=np.uint8)  # the release's int64 would take 8 times the space
    write_config(folder)


def write_config(folder: Path, **changes: object) -> Path:
    """Write ``study.yaml``: one untuned encoding of lh V1v of ``data/subj01``, plus changes.

    A change names its key with the sections before it, joined by ``__``: for example
    ``tuning__cl__epochs="ten"``.
    """
    raw = {"name": "corpus", "backbone": {"weights": "none"}, "methods": ["untuned"],
           "data": {"root": str(folder / "data"), "subjects": [1], "image_size": 64},
           "selection": {"hemispheres": ["lh"], "rois": ["V1v"], "min_vertices": 1},
           "encoding": {"n_components": 4, "batch_size": 8},
           "evaluation": {"mutual_info": False}}
    for name, value in changes.items():
        *parents, key = name.split("__")
        section = raw
        for parent in parents:
            section = section.setdefault(parent, {})
        section[key] = value
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def build_case(name: str, folder: Path) -> Case:
    """Write the valid inputs into ``folder``, damage them as case ``name`` says, add case.json.

    Returns
    -------
    Case
    """
    spec = CASES[name]
    folder.mkdir(parents=True, exist_ok=True)
    write_valid_inputs(folder)
    spec.build(folder)
    description = {"name": spec.name, "problem": spec.problem, "command": "cortexcl",
                   "args": spec.arguments(folder), "expect": spec.fragments(folder),
                   "absent": [str(path) for path in spec.forbidden(folder)],
                   "exit_code": 2}
    if spec.call is not None:
        description.update(command=None, exit_code=None, raises="cortexcl.errors.InputError",
                           call=" ".join((spec.call.__doc__ or "").split()).format(case=folder))
    (folder / "case.json").write_text(json.dumps(description, indent=2) + "\n")
    return spec


# Helpers that damage the valid inputs ------------------------------------------------------

def _path(folder: Path, template: str) -> Path:
    return Path(template.format(case=folder))


def _fmri(folder: Path, hemisphere: str = "lh") -> Path:
    return _path(folder, f"{FMRI}/{hemisphere}_training_fmri.npy")


def _images(folder: Path) -> list[Path]:
    return sorted(_path(folder, IMAGES).glob("*.png"))


def _mask(folder: Path, name: str) -> Path:
    return _path(folder, f"{MASKS}/{name}.npy")


def _rename_image(path: Path, train: int | None = None, nsd: int | None = None) -> Path:
    old_train, old_nsd = (int(part.split("-")[1]) for part in path.stem.split("_"))
    train = old_train if train is None else train
    nsd = old_nsd if nsd is None else nsd
    return path.rename(path.with_name(f"train-{train:04d}_nsd-{nsd:05d}.png"))


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _save_mapping(path: Path, content: object) -> None:
    np.save(path, np.array(content, dtype=object), allow_pickle=True)


class _Exploit:
    """Pickles as a call of ``exec`` that creates a file: the unpickler must refuse it."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return builtins.exec, (f"open({str(self.sentinel)!r}, 'w').close()",)


# fMRI arrays -------------------------------------------------------------------------------

@case("fmri-missing", ENCODE, f"{FMRI}/lh_training_fmri.npy", "file not found")
def _(folder: Path) -> None:
    """The lh fMRI file is missing."""
    _fmri(folder).unlink()


@case("fmri-truncated", ENCODE, f"{FMRI}/lh_training_fmri.npy", "not a readable numeric .npy")
def _(folder: Path) -> None:
    """The lh fMRI file is cut in half."""
    _truncate(_fmri(folder))


@case("fmri-not-npy", ENCODE, f"{FMRI}/rh_training_fmri.npy", "not a readable numeric .npy")
def _(folder: Path) -> None:
    """The rh fMRI file holds text, not the .npy format."""
    _fmri(folder, "rh").write_text("1.0, 2.0, 3.0\n")


@case("fmri-pickled", ENCODE, f"{FMRI}/lh_training_fmri.npy", "not a readable numeric .npy",
      "Python objects")
def _(folder: Path) -> None:
    """The lh fMRI file is a pickled object array."""
    np.save(_fmri(folder), np.array([[object()]] * N_IMAGES, dtype=object), allow_pickle=True)


@case("fmri-1d", ENCODE, f"{FMRI}/lh_training_fmri.npy", "expected a 2-D", "shape (300,)")
def _(folder: Path) -> None:
    """The lh fMRI array is 1-D."""
    np.save(_fmri(folder), np.zeros(N_VERTICES["lh"], dtype=np.float32))


@case("fmri-3d", ENCODE, f"{FMRI}/rh_training_fmri.npy", "expected a 2-D", "shape (20, 260, 1)")
def _(folder: Path) -> None:
    """The rh fMRI array is 3-D."""
    np.save(_fmri(folder, "rh"), np.zeros((N_IMAGES, N_VERTICES["rh"], 1), dtype=np.float32))


@case("fmri-integer", ENCODE, f"{FMRI}/lh_training_fmri.npy", "expected floating-point",
      "dtype int32")
def _(folder: Path) -> None:
    """The lh fMRI array holds integers."""
    np.save(_fmri(folder), np.ones((N_IMAGES, N_VERTICES["lh"]), dtype=np.int32))


@case("fmri-complex", ENCODE, f"{FMRI}/lh_training_fmri.npy", "expected floating-point",
      "dtype complex64")
def _(folder: Path) -> None:
    """The lh fMRI array holds complex numbers."""
    np.save(_fmri(folder), np.ones((N_IMAGES, N_VERTICES["lh"]), dtype=np.complex64))


@case("fmri-nan", ENCODE, f"{FMRI}/lh_training_fmri.npy", "non-finite value nan at row 3, "
      "column 7")
def _(folder: Path) -> None:
    """One lh response is NaN."""
    fmri = np.load(_fmri(folder))
    fmri[3, 7] = np.nan
    np.save(_fmri(folder), fmri)


@case("fmri-inf", ENCODE, f"{FMRI}/rh_training_fmri.npy", "non-finite value -inf at row 19, "
      "column 0")
def _(folder: Path) -> None:
    """One rh response is -Inf."""
    fmri = np.load(_fmri(folder, "rh"))
    fmri[19, 0] = -np.inf
    np.save(_fmri(folder, "rh"), fmri)


@case("fmri-rows-vs-images", ENCODE, f"{FMRI}/lh_training_fmri.npy", "19 rows but 20 training "
      "images")
def _(folder: Path) -> None:
    """Both fMRI arrays have one row fewer than there are images."""
    for hemisphere in N_VERTICES:
        np.save(_fmri(folder, hemisphere), np.load(_fmri(folder, hemisphere))[:-1])


@case("fmri-lh-rh-rows", ENCODE, f"{FMRI}/rh_training_fmri.npy", "21 rows but 20 training")
def _(folder: Path) -> None:
    """The rh fMRI array has one row more than the lh one."""
    fmri = np.load(_fmri(folder, "rh"))
    np.save(_fmri(folder, "rh"), np.concatenate([fmri, fmri[:1]]))


@case("fmri-lh-short", ENCODE, f"{FMRI}/lh_training_fmri.npy", "19 rows but 20 training")
def _(folder: Path) -> None:
    """The lh fMRI array is one row short; rh is fine (the error names lh)."""
    np.save(_fmri(folder, "lh"), np.load(_fmri(folder, "lh"))[:-1])


def _ncsnr(folder: Path, values: list[float]) -> None:
    """Give the subject noise-ceiling files whose first lh entries are ``values``."""
    truth = _path(folder, SUBJECT) / "ground_truth"
    truth.mkdir(exist_ok=True)
    for hemisphere, n in N_VERTICES.items():
        ncsnr = np.full(n, 0.5, dtype=np.float32)
        if hemisphere == "lh":
            ncsnr[:len(values)] = values
        np.save(truth / f"{hemisphere}_ncsnr.npy", ncsnr)
    np.save(truth / "n_repeats.npy", np.full(N_IMAGES, 3))


@case("ncsnr-nan", ENCODE, f"{SUBJECT}/ground_truth/lh_ncsnr.npy", "2 entries are NaN or "
      "infinite")
def _(folder: Path) -> None:
    """Two lh noise-ceiling SNRs are NaN."""
    _ncsnr(folder, [np.nan, np.nan])


@case("ncsnr-negative", ENCODE, f"{SUBJECT}/ground_truth/lh_ncsnr.npy", "1 negative entry;")
def _(folder: Path) -> None:
    """One lh noise-ceiling SNR is negative."""
    _ncsnr(folder, [-0.2])


@case("image-float-out-of-range", ENCODE, IMAGES, "cannot decode image (float image outside")
def _(folder: Path) -> None:
    """A training image is a float TIFF renamed .png with values above 1."""
    path = _images(folder)[0]
    Image.fromarray(np.full((8, 8), 3.0, dtype=np.float32)).save(path, format="TIFF")


@case("subject-five-images", ENCODE, SUBJECT, "5 images give 3 train, 1 val and 1 test "
      "images; the clean protocol needs at least 2 in each")
def _(folder: Path) -> None:
    """A subject with 5 images: too few to fit, select and score."""
    shutil.rmtree(_path(folder, SUBJECT))
    write_tiny_subject(folder / "data", n_images=5, image_size=IMAGE_SIZE,
                       n_vertices=(N_VERTICES["lh"], N_VERTICES["rh"]), n_test_images=1,
                       mask_dtype=np.uint8)


@case("fmri-folder-missing", ENCODE, f"{FMRI}: training fMRI folder not found")
def _(folder: Path) -> None:
    """The training_fmri folder is missing."""
    shutil.rmtree(_path(folder, FMRI))


# Images --------------------------------------------------------------------------------------

@case("images-none", ENCODE, IMAGES, "no training images")
def _(folder: Path) -> None:
    """The training_images folder holds no PNG file."""
    for path in _images(folder):
        path.unlink()


@case("image-last-missing", ENCODE, f"{FMRI}/lh_training_fmri.npy", "20 rows but 19 training "
      "images")
def _(folder: Path) -> None:
    """The last training image is missing (the fMRI has a row for it)."""
    _images(folder)[-1].unlink()


@case("image-numbering-gap", ENCODE, IMAGES, "must run from 1 to 20", "train-0005 is missing")
def _(folder: Path) -> None:
    """Image train-0005 is renumbered train-0021: a gap in the numbering, same count."""
    _rename_image(_images(folder)[4], train=21)


@case("image-numbering-repeat", ENCODE, IMAGES, "train-0004 appears more than once")
def _(folder: Path) -> None:
    """Images train-0004 and train-0005 both carry the number 4."""
    _rename_image(_images(folder)[4], train=4)


@case("image-duplicate-nsd-id", ENCODE, IMAGES, "NSD id", "appears more than once")
def _(folder: Path) -> None:
    """Two training images carry the same NSD id."""
    first, second = _images(folder)[:2]
    _rename_image(second, nsd=int(first.stem.split("nsd-")[1]))


@case("image-bad-name", ENCODE, f"{IMAGES}/train-0003.png", "bad image file name")
def _(folder: Path) -> None:
    """A training image is named without its NSD id."""
    _images(folder)[2].rename(_path(folder, f"{IMAGES}/train-0003.png"))


@case("image-garbage", ENCODE, "train-0002_nsd-", "cannot decode image")
def _(folder: Path) -> None:
    """A training image holds random bytes."""
    _images(folder)[1].write_bytes(np.random.default_rng(0).bytes(2048))


@case("image-truncated", ENCODE, "train-0007_nsd-", "cannot decode image")
def _(folder: Path) -> None:
    """A training PNG is cut in half."""
    _truncate(_images(folder)[6])


@case("image-empty", ENCODE, "train-0020_nsd-", "cannot decode image")
def _(folder: Path) -> None:
    """A training image is a zero-byte file."""
    _images(folder)[-1].write_bytes(b"")


@case("image-is-folder", ENCODE, "train-0001_nsd-", "not a file")
def _(folder: Path) -> None:
    """A training image name is a folder."""
    path = _images(folder)[0]
    path.unlink()
    path.mkdir()


# ROI masks -----------------------------------------------------------------------------------

@case("roi-masks-missing", ENCODE, f"{MASKS}: ROI masks folder not found")
def _(folder: Path) -> None:
    """The roi_masks folder is missing."""
    shutil.rmtree(_path(folder, MASKS))


@case("roi-mask-file-missing", ENCODE, f"{MASKS}/rh.floc-places_challenge_space.npy",
      "file not found")
def _(folder: Path) -> None:
    """The rh floc-places mask is missing."""
    _mask(folder, "rh.floc-places_challenge_space").unlink()


@case("roi-mask-length", ENCODE, f"{MASKS}/lh.prf-visualrois_challenge_space.npy",
      "299 labels but the lh fMRI has 300 columns")
def _(folder: Path) -> None:
    """The lh pRF mask has one label fewer than the fMRI has columns."""
    path = _mask(folder, "lh.prf-visualrois_challenge_space")
    np.save(path, np.load(path)[:-1])


@case("roi-mask-2d", ENCODE, f"{MASKS}/lh.floc-faces_challenge_space.npy",
      "expected a 1-D label array")
def _(folder: Path) -> None:
    """The lh floc-faces mask is 2-D."""
    path = _mask(folder, "lh.floc-faces_challenge_space")
    np.save(path, np.load(path)[None, :])


@case("roi-mask-fractional", ENCODE, f"{MASKS}/rh.streams_challenge_space.npy",
      "labels must be whole numbers")
def _(folder: Path) -> None:
    """The rh streams mask holds a fractional label."""
    path = _mask(folder, "rh.streams_challenge_space")
    labels = np.load(path).astype(np.float64)
    labels[0] = 1.5
    np.save(path, labels)


@case("roi-mask-unknown-label", ENCODE, f"{MASKS}/lh.prf-visualrois_challenge_space.npy",
      "labels [9] are not in the prf-visualrois table")
def _(folder: Path) -> None:
    """The lh pRF mask holds label 9, which names no ROI."""
    path = _mask(folder, "lh.prf-visualrois_challenge_space")
    labels = np.load(path)
    labels[-1] = 9
    np.save(path, labels)


@case("all-vertices-count", ENCODE, f"{MASKS}/lh.all-vertices_fsaverage_space.npy",
      "marks 301 vertices but the lh fMRI has 300 columns")
def _(folder: Path) -> None:
    """The lh all-vertices mask marks one vertex more than the fMRI has columns."""
    path = _mask(folder, "lh.all-vertices_fsaverage_space")
    mask = np.load(path)
    mask[np.flatnonzero(mask == 0)[0]] = 1
    np.save(path, mask)


@case("all-vertices-length", ENCODE, f"{MASKS}/rh.all-vertices_fsaverage_space.npy",
      f"1000 entries but fsaverage has {FSAVERAGE_N_VERTICES} vertices")
def _(folder: Path) -> None:
    """The rh all-vertices mask is not on fsaverage (1000 entries)."""
    np.save(_mask(folder, "rh.all-vertices_fsaverage_space"), np.ones(1000, dtype=np.int64))


@case("all-vertices-not-binary", ENCODE, f"{MASKS}/lh.all-vertices_fsaverage_space.npy",
      "expected a 0/1 mask")
def _(folder: Path) -> None:
    """The lh all-vertices mask holds a 2."""
    path = _mask(folder, "lh.all-vertices_fsaverage_space")
    mask = np.load(path)
    mask[np.flatnonzero(mask)[0]] = 2
    np.save(path, mask)


@case("mapping-executes-code", ENCODE, f"{MASKS}/mapping_floc-faces.npy",
      "not a plain label mapping", "forbidden global builtins.exec",
      absent=("{case}/EXECUTED",))
def _(folder: Path) -> None:
    """A mapping pickle that runs code when unpickled (it would create {case}/EXECUTED)."""
    _save_mapping(_mask(folder, "mapping_floc-faces"),
                  {0: "Unknown", 1: _Exploit(folder / "EXECUTED")})


@case("mapping-executes-code-top", ENCODE, f"{MASKS}/mapping_streams.npy",
      "not a plain label mapping", "forbidden global", absent=("{case}/EXECUTED",))
def _(folder: Path) -> None:
    """A mapping file that is a bare pickle of a code-running object, numpy header included."""
    path = _mask(folder, "mapping_streams")
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(
            handle, {"descr": "|O", "fortran_order": False, "shape": ()})
        pickle.dump(_Exploit(folder / "EXECUTED"), handle, protocol=2)


@case("mapping-not-dict", ENCODE, f"{MASKS}/mapping_prf-visualrois.npy",
      "expected a dict, found list")
def _(folder: Path) -> None:
    """A mapping file holds a list of names, not a {label: name} dict."""
    mapping = np.empty((), dtype=object)
    mapping[()] = list(ROI_CLASSES["prf-visualrois"].values())
    np.save(_mask(folder, "mapping_prf-visualrois"), mapping, allow_pickle=True)


@case("mapping-not-pickled", ENCODE, f"{MASKS}/mapping_floc-words.npy",
      "expected a pickled object array, found dtype int64")
def _(folder: Path) -> None:
    """A mapping file holds a plain integer array."""
    np.save(_mask(folder, "mapping_floc-words"), np.arange(6, dtype=np.int64))


@case("mapping-wrong-names", ENCODE, f"{MASKS}/mapping_floc-bodies.npy",
      "differ from the floc-bodies table")
def _(folder: Path) -> None:
    """A mapping file names other ROIs than its class."""
    _save_mapping(_mask(folder, "mapping_floc-bodies"), {0: "Unknown", 1: "EBA", 2: "FBA"})


@case("mapping-truncated", ENCODE, f"{MASKS}/mapping_floc-places.npy",
      "not a plain label mapping")
def _(folder: Path) -> None:
    """A mapping file is cut short."""
    _truncate(_mask(folder, "mapping_floc-places"), keep=0.8)


@case("mapping-missing", ENCODE, f"{MASKS}/mapping_floc-places.npy", "file not found")
def _(folder: Path) -> None:
    """A mapping file is missing."""
    _mask(folder, "mapping_floc-places").unlink()


# Options of `cortexcl encode` ----------------------------------------------------------------

def _valid(folder: Path) -> None:
    """Nothing to damage: the option is the problem."""


def _option(name: str, value: str) -> tuple[str, ...]:
    """`ENCODE` with option ``name`` set to ``value``."""
    args = list(ENCODE)
    if name in args:
        args[args.index(name) + 1] = value
    else:
        args += [name, value]
    return tuple(args)


case("subject-missing", _option("--subject", "2"),
     "{case}/data/subj02: subject folder not found")(_valid)
case("subject-not-a-number", _option("--subject", "first"), "subject:",
     "expected a subject number", "'first'")(_valid)
case("data-root-missing", ("encode", "{case}/nowhere", *ENCODE[2:]),
     "{case}/nowhere/subj01: subject folder not found")(_valid)
case("data-root-is-file", ("encode", "{case}/study.yaml", *ENCODE[2:]),
     "{case}/study.yaml/subj01: subject folder not found")(_valid)
case("roi-unknown", _option("--roi", "V9"), "unknown ROI 'V9'")(_valid)
case("roi-unknown-class", _option("--roi", "faces:FFA-1"), "unknown ROI class 'faces'")(_valid)
case("roi-empty", _option("--roi", "mTL-faces"), f"{SUBJECT}: nothing to encode",
     "lh mTL-faces 0")(_valid)
case("roi-too-small", _option("--min-vertices", "500"), f"{SUBJECT}: nothing to encode",
     "lh V1v 5")(_valid)
case("hemisphere-unknown", _option("--hemisphere", "left"), "--hemisphere",
     "unknown hemisphere 'left'")(_valid)
case("n-components-zero", _option("--n-components", "0"), "--n-components",
     "greater than or equal to 1", "got 0")(_valid)
case("min-vertices-negative", _option("--min-vertices", "-3"), "--min-vertices",
     "at least 1", "got -3")(_valid)
case("batch-size-zero", _option("--batch-size", "0"), "--batch-size",
     "greater than or equal to 1", "got 0")(_valid)
case("image-size-too-small", _option("--image-size", "16"), "--image-size", "at least 64",
     "got 16")(_valid)
case("protocol-unknown", _option("--protocol", "dirty"), "--protocol",
     "'clean' or 'paper'", "got 'dirty'")(_valid)
case("refit-unknown", _option("--refit", "all"), "--refit", "got 'all'")(_valid)
case("alpha-grid-unknown", _option("--alpha-grid", "log"), "--alpha-grid",
     "'relative' or 'absolute'", "got 'log'")(_valid)
case("device-unknown", _option("--device", "abacus"), "--device",
     "unknown device 'abacus'")(_valid)
case("method-path", _option("--method", "../../escaped"), "--method",
     "'../../escaped' is not a backbone name")(_valid)
case("method-empty", _option("--method", ""), "--method", "'' is not a backbone name")(_valid)
case("method-missing-word", _option("--method", "NA"), "--method",
     "'NA' reads as a missing value")(_valid)
case("weights-missing", _option("--weights", "{case}/alexnet.pt"), "{case}/alexnet.pt",
     "weights file not found")(_valid)
case("backbone-unknown", _option("--backbone", "vgg"), "--backbone: backbone 'vgg': unknown",
     "torchvision:vgg11")(_valid)
case("layer-twice", _option("--layer", "features.2") + ("--layer", "features.2"),
     "--layer: layer 'features.2' given twice")(_valid)
case("layer-unknown", _option("--layer", "features.99"), "--layer: unknown module name",
     "cortexcl layers")(_valid)


@case("weights-corrupt", _option("--weights", "{case}/alexnet.pt"), "{case}/alexnet.pt",
      "not a readable state dict")
def _(folder: Path) -> None:
    """The weights file holds random bytes."""
    (folder / "alexnet.pt").write_bytes(np.random.default_rng(1).bytes(4096))


@case("weights-not-alexnet", _option("--weights", "{case}/alexnet.pt"), "{case}/alexnet.pt",
      "not an AlexNet state dict")
def _(folder: Path) -> None:
    """The weights file is a state dict of another network."""
    import torch

    torch.save({"layer.weight": torch.zeros(2, 2)}, folder / "alexnet.pt")


@case("encode-out-is-file", _option("--out", "{case}/taken"),
      "{case}/taken: output path exists and is not a directory")
def _(folder: Path) -> None:
    """The output path is an existing file."""
    (folder / "taken").write_text("a file\n")


@case("encode-out-under-file", _option("--out", "{case}/taken/run"),
      "{case}/taken: not a directory; cannot create {case}/taken/run under it")
def _(folder: Path) -> None:
    """The output path lies under an existing file."""
    (folder / "taken").write_text("a file\n")


# Study configurations (`cortexcl run`) -------------------------------------------------------

case("config-missing", ("run", "{case}/missing.yaml", *RUN[2:]),
     "{case}/missing.yaml: cannot read the configuration")(_valid)
case("config-is-folder", ("run", "{case}/data", *RUN[2:]),
     "{case}/data: cannot read the configuration")(_valid)


@case("config-invalid-yaml", RUN, "{case}/study.yaml: not valid YAML")
def _(folder: Path) -> None:
    """The configuration is not valid YAML."""
    (folder / "study.yaml").write_text("name: corpus\nmethods: [untuned\nweights: none\n")


@case("config-not-utf8", RUN, "{case}/study.yaml: not a UTF-8 text file")
def _(folder: Path) -> None:
    """The configuration is Latin-1 text."""
    (folder / "study.yaml").write_bytes("name: étude\n".encode("latin-1"))


@case("config-not-mapping", RUN, "{case}/study.yaml", "must be a mapping")
def _(folder: Path) -> None:
    """The configuration is a YAML list."""
    (folder / "study.yaml").write_text("- name: corpus\n- weights: none\n")


@case("config-scalar-section", RUN, "{case}/study.yaml: data:", "valid dictionary")
def _(folder: Path) -> None:
    """The data section is a string."""
    write_config(folder, data="somewhere")


@case("config-wrong-type", RUN, "{case}/study.yaml: tuning.cl.epochs:", "valid integer")
def _(folder: Path) -> None:
    """An epoch count is the word "ten"."""
    write_config(folder, tuning__cl__epochs="ten")


@case("config-unknown-key", RUN, "{case}/study.yaml: colour: unknown key")
def _(folder: Path) -> None:
    """The configuration has an unknown top-level key."""
    write_config(folder, colour="red")


@case("config-unknown-nested-key", RUN, "{case}/study.yaml: encoding.n_component: unknown key")
def _(folder: Path) -> None:
    """The encoding section has a misspelt key."""
    write_config(folder, encoding__n_component=10)


@case("config-zero-epochs", RUN, "{case}/study.yaml: tuning.rt.epochs:", "greater than or equal")
def _(folder: Path) -> None:
    """An epoch count is zero."""
    write_config(folder, tuning__rt__epochs=0)


@case("config-few-permutations", RUN,
      "{case}/study.yaml: evaluation.statistics.n_permutations:", "greater than or equal to 100")
def _(folder: Path) -> None:
    """The permutation test of the tables would draw 10 swap patterns."""
    write_config(folder, evaluation__statistics__n_permutations=10)


@case("config-unknown-method", RUN, "{case}/study.yaml: methods.0:", "'untuned'")
def _(folder: Path) -> None:
    """The configuration names an unknown method."""
    write_config(folder, methods=["finetuned"])


@case("config-unknown-roi", RUN, "{case}/study.yaml: selection.rois:", "unknown ROI 'V9'")
def _(folder: Path) -> None:
    """The configuration names an unknown ROI."""
    write_config(folder, selection__rois=["V9"])


@case("config-unknown-hemisphere", RUN, "{case}/study.yaml: selection.hemispheres.0:",
      "'lh' or 'rh'")
def _(folder: Path) -> None:
    """The configuration names an unknown hemisphere."""
    write_config(folder, selection__hemispheres=["left"])


@case("config-no-subjects", RUN, "{case}/study.yaml: data.subjects:", "at least 1 item")
def _(folder: Path) -> None:
    """The configuration lists no subject."""
    write_config(folder, data__subjects=[])


@case("config-data-root-missing", RUN, "{case}/nowhere/subj01: subject folder not found")
def _(folder: Path) -> None:
    """The configured data root does not exist."""
    write_config(folder, data__root=str(folder / "nowhere"))


@case("config-weights-missing", RUN, "{case}/alexnet.pt", "weights file not found")
def _(folder: Path) -> None:
    """The configured weights file does not exist."""
    write_config(folder, backbone__weights=str(folder / "alexnet.pt"))


@case("config-backbone-unknown", RUN, "backbone.name: backbone 'vgg': unknown")
def _(folder: Path) -> None:
    """The configured backbone is no network cortexcl knows."""
    write_config(folder, backbone__name="vgg")


@case("config-weights-top-level", RUN, "weights: moved to backbone.weights")
def _(folder: Path) -> None:
    """A configuration written before backbones had names (top-level weights)."""
    write_config(folder, weights="none")


@case("config-device-unknown", RUN, "unknown device 'abacus'")
def _(folder: Path) -> None:
    """The configured device is not a device."""
    write_config(folder, execution__device="abacus")


@case("run-fmri-nan", RUN, f"{FMRI}/rh_training_fmri.npy", "non-finite value nan")
def _(folder: Path) -> None:
    """A study whose data has a NaN response (in a hemisphere the study does not select)."""
    fmri = np.load(_fmri(folder, "rh"))
    fmri[0, 0] = np.nan
    np.save(_fmri(folder, "rh"), fmri)


@case("run-image-garbage", RUN, "train-0009_nsd-", "cannot decode image")
def _(folder: Path) -> None:
    """A study whose data has an undecodable image."""
    _images(folder)[8].write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))


@case("run-mapping-executes-code", RUN, f"{MASKS}/mapping_prf-visualrois.npy",
      "forbidden global builtins.exec", absent=("{case}/EXECUTED",))
def _(folder: Path) -> None:
    """A study whose data has a mapping pickle that runs code."""
    _save_mapping(_mask(folder, "mapping_prf-visualrois"),
                  {0: "Unknown", 1: _Exploit(folder / "EXECUTED")})


@case("run-roi-empty", RUN, "{case}/data: nothing to encode", "subj01 lh mTL-faces 0")
def _(folder: Path) -> None:
    """A study of an ROI without vertices."""
    write_config(folder, selection__rois=["mTL-faces"])


@case("run-out-is-file", (*RUN[:3], "{case}/taken", *RUN[4:]),
      "{case}/taken: output path exists and is not a directory")
def _(folder: Path) -> None:
    """The study's output path is an existing file."""
    (folder / "taken").write_text("a file\n")


# `cortexcl simulate` -------------------------------------------------------------------------

case("simulate-image-size", (*SIMULATE, "--image-size", "8"), "--image-size:",
     "expected 32-4096, got 8")(_valid)
case("simulate-no-images", (*SIMULATE, "--n-images", "0"), "--n-images:",
     "expected 2-9999, got 0")(_valid)
case("simulate-roi-scale", (*SIMULATE, "--roi-scale", "-1"), "--roi-scale:",
     "expected a positive factor")(_valid)
case("simulate-reference-subject", (*SIMULATE, "--reference-subject", "9"),
     "--reference-subject:", "got 9")(_valid)
case("simulate-roi-masks-missing", (*SIMULATE, "--roi-masks", "{case}/nowhere"),
     "--roi-masks: {case}/nowhere")(_valid)


@case("simulate-subject-exists", ("simulate", "{case}/data", *SIMULATE[2:]),
      "{case}/data/subj01: already exists")
def _(folder: Path) -> None:
    """The subject folder (the valid inputs' data/subj01) exists: it may be real data."""


@case("simulate-out-is-file", ("simulate", "{case}/taken", *SIMULATE[2:]),
      "{case}/taken: output path exists and is not a directory")
def _(folder: Path) -> None:
    """The simulation's data root is an existing file."""
    (folder / "taken").write_text("a file\n")


@case("simulate-out-under-file", ("simulate", "{case}/taken/data", *SIMULATE[2:]),
      "{case}/taken/data: cannot create the data root")
def _(folder: Path) -> None:
    """The simulation's data root lies under an existing file."""
    (folder / "taken").write_text("a file\n")


# The NOD reader (no command reads NOD yet: the cases call the loader) -------------------------

NOD_RESULTS = "{case}/nod/derivatives/ciftify/sub-01/results"
NOD_BETA = NOD_RESULTS + "/ses-imagenet01_task-imagenet_run-1/ses-imagenet01_task-imagenet_run-1"
NOD_PRF = NOD_RESULTS + "/ses-prf_task-prf/ses-prf_task-prf_params.dscalar.nii"


def load_nod(folder: Path) -> object:
    """cortexcl.data.nod.load_nod_subject("{case}/nod", 1, sessions=(1,), top_k=None)"""
    from cortexcl.data.nod import load_nod_subject

    return load_nod_subject(folder / "nod", 1, sessions=(1,), top_k=None, image_size=32,
                            progress=False)


def write_nod(folder: Path) -> None:
    """Write a valid simulated NOD subject (one run of 8 trials) into ``folder/nod``."""
    from cortexcl.data.simulate import simulate_nod_subject

    simulate_nod_subject(folder / "nod", 1, n_sessions=1, n_runs=1, trials_per_run=8,
                         image_size=32, vertices_per_roi=6, other_vertices=10,
                         unlabelled_vertices=4, seed=0, progress=False, workers=1)


def _resave_cifti(path: Path, transform: Callable[[np.ndarray, tuple], tuple]) -> None:
    """Rewrite a CIFTI-2 file with ``transform(data, axes) -> (data, axes)`` applied."""
    import nibabel as nib

    image = nib.load(path)
    data, axes = transform(np.asarray(image.get_fdata(), dtype=np.float32),
                           tuple(image.header.get_axis(i) for i in range(image.ndim)))
    image = nib.Cifti2Image(data, header=axes)
    image.nifti_header.set_intent("ConnDenseScalar")
    nib.save(image, path)


@case("nod-beta-axes-swapped", (), f"{NOD_BETA}_beta.dscalar.nii",
      "the brain-model axis is axis 0", call=load_nod)
def _(folder: Path) -> None:
    """A NOD beta file is stored grayordinates × maps (its CIFTI axes swapped)."""
    write_nod(folder)
    _resave_cifti(_path(folder, f"{NOD_BETA}_beta.dscalar.nii"),
                  lambda data, axes: (data.T, axes[::-1]))


@case("nod-beta-no-brain-model", (), f"{NOD_BETA}_beta.dscalar.nii",
      "the brain-model axis is missing", call=load_nod)
def _(folder: Path) -> None:
    """A NOD beta file has two scalar axes and no brain-model axis."""
    from nibabel.cifti2 import cifti2_axes

    write_nod(folder)
    _resave_cifti(_path(folder, f"{NOD_BETA}_beta.dscalar.nii"), lambda data, axes: (
        data, (axes[0], cifti2_axes.ScalarAxis([f"c{i}" for i in range(data.shape[1])]))))


@case("nod-prf-axes-swapped", (), NOD_PRF, "the brain-model axis is axis 0", call=load_nod)
def _(folder: Path) -> None:
    """The NOD pRF parameter file has its CIFTI axes swapped."""
    write_nod(folder)
    _resave_cifti(_path(folder, NOD_PRF), lambda data, axes: (data.T, axes[::-1]))


@case("nod-beta-garbage", (), f"{NOD_BETA}_beta.dscalar.nii", "not a readable CIFTI file",
      call=load_nod)
def _(folder: Path) -> None:
    """A NOD beta file holds random bytes."""
    write_nod(folder)
    _path(folder, f"{NOD_BETA}_beta.dscalar.nii").write_bytes(
        np.random.default_rng(2).bytes(4096))

# The native NSD reader (data.layout: nsd) ------------------------------------------------------

NSD_BETAS = ("{case}/nsd/nsddata_betas/ppdata/subj01/fsaverage/betas_fithrf_GLMdenoise_RR")
NSD_LABELS = "{case}/nsd/nsddata/freesurfer/subj01/label"
NSD_DESIGN = "{case}/nsd/nsddata/experiments/nsd/nsd_expdesign.mat"
NSD_STIMULI = "{case}/nsd/nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5"


def write_nsd(folder: Path) -> None:
    """A valid simulated NSD subject (30 images, 4 sessions) and a study reading it."""
    from cortexcl.data.simulate import simulate_nsd

    simulate_nsd(folder / "nsd", 1, n_images=30, n_sessions=4, image_size=32, roi_scale=0.03,
                 progress=False, workers=1)
    write_config(folder, data={"layout": "nsd", "root": str(folder / "nsd"), "subjects": [1],
                               "image_size": 64})


def load_nsd(folder: Path) -> object:
    """cortexcl.data.nsd.load_nsd_subject("{case}/nsd", 1)"""
    from cortexcl.data.nsd import load_nsd_subject

    return load_nsd_subject(folder / "nsd", 1, image_size=32, progress=False)


def _resave_mgh(path: Path, transform: Callable[[np.ndarray], np.ndarray]) -> None:
    import nibabel as nib

    data = transform(np.asarray(nib.load(path).dataobj))
    nib.MGHImage(data.astype(np.float32), np.eye(4)).to_filename(str(path))


@case("nsd-missing-session", RUN, f"{NSD_BETAS}/lh.betas_session03.mgh", "file not found",
      "session 3 of sessions 1-4")
def _(folder: Path) -> None:
    """The left-hemisphere betas of session 3 are missing (sessions 1, 2 and 4 are there)."""
    write_nsd(folder)
    _path(folder, f"{NSD_BETAS}/lh.betas_session03.mgh").unlink()


@case("nsd-trial-count", RUN, f"{NSD_BETAS}/rh.betas_session02.mgh", "trials but session 2 has")
def _(folder: Path) -> None:
    """A session file holds one trial fewer than the design's sessions."""
    write_nsd(folder)
    _resave_mgh(_path(folder, f"{NSD_BETAS}/rh.betas_session02.mgh"), lambda d: d[..., :-1])


@case("nsd-design-no-masterordering", RUN, NSD_DESIGN, "no variable 'masterordering'")
def _(folder: Path) -> None:
    """The NSD design file lacks ``masterordering``."""
    import scipy.io

    write_nsd(folder)
    path = _path(folder, NSD_DESIGN)
    content = {k: v for k, v in scipy.io.loadmat(path).items()
               if not k.startswith("__") and k != "masterordering"}
    scipy.io.savemat(path, content)


@case("nsd-design-garbage", RUN, NSD_DESIGN, "not a readable MATLAB file")
def _(folder: Path) -> None:
    """The NSD design file holds a line of text."""
    write_nsd(folder)
    _path(folder, NSD_DESIGN).write_text("hello\n")


@case("nsd-one-ncsnr-missing", RUN, f"{NSD_BETAS}/rh.ncsnr.mgh",
      "file not found (the other hemisphere has its ncsnr)")
def _(folder: Path) -> None:
    """The right hemisphere's ncsnr file is missing, the left one's is there."""
    write_nsd(folder)
    _path(folder, f"{NSD_BETAS}/rh.ncsnr.mgh").unlink()


@case("nsd-stimuli-no-imgbrick", RUN, NSD_STIMULI, "no dataset 'imgBrick'", "images")
def _(folder: Path) -> None:
    """The stimuli HDF5 file names its image array ``images`` instead of ``imgBrick``."""
    import h5py

    write_nsd(folder)
    path = _path(folder, NSD_STIMULI)
    with h5py.File(path, "r") as handle:
        images = handle["imgBrick"][()]
    with h5py.File(path, "w") as handle:
        handle["images"] = images


@case("nsd-label-length", RUN, f"{NSD_LABELS}/lh.prf-visualrois.mgz",
      "10000 vertices but the betas have 10242")
def _(folder: Path) -> None:
    """An ROI label file covers fewer vertices than the betas' surface."""
    write_nsd(folder)
    _resave_mgh(_path(folder, f"{NSD_LABELS}/lh.prf-visualrois.mgz"), lambda d: d[:10000])


@case("nsd-label-names", RUN, f"{NSD_LABELS}/lh.floc-faces.mgz", "label 2 is 'FFA1'",
      "expected 'FFA-1'")
def _(folder: Path) -> None:
    """The floc-faces colour table names label 2 ``FFA1``, not the challenge's ``FFA-1``."""
    write_nsd(folder)
    ctab = _path(folder, f"{NSD_LABELS}/floc-faces.mgz.ctab")
    ctab.write_text(ctab.read_text().replace("FFA-1", "FFA1"))


@case("nsd-all-vertices-nan", (), NSD_BETAS, "every selected rh vertex is NaN or infinite",
      call=load_nsd)
def _(folder: Path) -> None:
    """Every right-hemisphere vertex has NaN betas in session 1 (a NaN vertex alone is
    excluded and reported, not refused)."""
    write_nsd(folder)
    _resave_mgh(_path(folder, f"{NSD_BETAS}/rh.betas_session01.mgh"),
                lambda d: np.full_like(d, np.nan))


# The folder layout (data.layout: folder) -------------------------------------------------------

FOLDER = "{case}/own/subj01"


def write_folder(folder: Path) -> None:
    """A valid folder-layout subject (the tiny subject's images, lh responses, V1v as 'v1')
    and a study reading it."""
    import shutil

    source = folder / "data" / "subj01"
    target = folder / "own" / "subj01"
    (target / "images").mkdir(parents=True)
    (target / "rois").mkdir()
    for path in sorted((source / "training_split" / "training_images").glob("*.png")):
        shutil.copyfile(path, target / "images" / path.name)
    responses = np.load(source / "training_split" / "training_fmri" / "lh_training_fmri.npy")
    np.save(target / "responses.npy", responses)
    labels = np.load(source / "roi_masks" / "lh.prf-visualrois_challenge_space.npy")
    np.save(target / "rois" / "v1.npy", labels == 1)
    write_config(folder, data={"layout": "folder", "root": str(folder / "own"),
                               "subjects": [1], "image_size": 64},
                 selection={"hemispheres": ["units"], "rois": ["v1"], "min_vertices": 1})


@case("folder-fewer-rows", RUN, f"{FOLDER}/responses.npy", f"{N_IMAGES - 1} rows but "
      f"{N_IMAGES} images")
def _(folder: Path) -> None:
    """The responses have one row fewer than there are images."""
    write_folder(folder)
    path = _path(folder, f"{FOLDER}/responses.npy")
    np.save(path, np.load(path)[:-1])


@case("folder-mask-length", RUN, f"{FOLDER}/rois/v1.npy", "mask of 299 entries but the "
      "responses have 300 units")
def _(folder: Path) -> None:
    """An ROI mask is one entry shorter than the units."""
    write_folder(folder)
    path = _path(folder, f"{FOLDER}/rois/v1.npy")
    np.save(path, np.load(path)[:-1])


@case("folder-not-an-image", RUN, f"{FOLDER}/images/notes.txt",
      "not an image file (by its suffix)")
def _(folder: Path) -> None:
    """A text file sits among the images."""
    write_folder(folder)
    _path(folder, f"{FOLDER}/images/notes.txt").write_text("stimulus notes\n")


@case("folder-image-undecodable", RUN, f"{FOLDER}/images/aaa-broken.png", "cannot decode image")
def _(folder: Path) -> None:
    """An image file (the first by name) holds text."""
    write_folder(folder)
    path = sorted(_path(folder, f"{FOLDER}/images").glob("*.png"))[0]
    path.rename(path.with_name("aaa-broken.png"))
    path.with_name("aaa-broken.png").write_text("not a picture\n")


def main(argv: list[str] | None = None) -> int:
    """Build every case (or the cases named after OUT_DIR) into ``OUT_DIR/<name>/``."""
    args = sys.argv[1:] if argv is None else argv
    unknown = [name for name in args[1:] if name not in CASES]
    if not args or unknown:
        print(f"usage: python tests/corpus/build.py OUT_DIR [CASE ...]; unknown cases: {unknown}"
              if unknown else "usage: python tests/corpus/build.py OUT_DIR [CASE ...]",
              file=sys.stderr)
        return 2
    root, names = Path(args[0]), args[1:] or list(CASES)
    for name in names:
        spec = build_case(name, root / name)
        print(f"{name}: {spec.problem}")
    print(f"{len(names)} cases in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
