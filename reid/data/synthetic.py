"""The embedded synthetic re-id dataset: procedurally rendered pedestrians with part masks.

Identities are combinations of shared attributes (see :mod:`reid.data.render`); cameras differ in
background, colour cast, blur and dominant viewpoint; every image has its own pose, placement,
illumination and possibly an occluder. The set is written once under
``<root>/synthetic/<variant>/`` (the variant name encodes the parameters and a hash of all of
them) in Market-1501 layout::

    bounding_box_train/0001_c1s1_000000_00.jpg   train identities (pid 1..N/2)
    query/0151_c3s1_000004_00.jpg                one image per test identity and camera
    bounding_box_test/0151_c1s1_000000_00.jpg    the other test images (+ distractors, pid 0)
    masks/<split dir>/<same stem>.png            uint8 part labels (render.PART_LABELS)
    attributes.json                              "0001" (distractors "d0001") -> attributes
    cameras.json                                 camera styles
    metadata.json                                image path -> pid, camid, viewpoint, occlusion, view
    config.json, COMPLETE                        parameters; marker written last

Generation happens in a temporary folder that is renamed when complete, so an interrupted run never
leaves a folder that looks complete. A run killed outright (``kill -9``, out of memory, power loss)
leaves its temporary folder behind; the next :func:`prepare_synthetic` under the same root removes
the stale ones (see :func:`remove_stale_temporaries`). Importing this module registers
:class:`SyntheticReID` with torchreid under the name ``synthetic``.

Any image can be re-rendered exactly, e.g. with one attribute changed::

    attrs, view, camera = render_params(dataset_dir, img_path)
    image, mask = render_person(attrs.with_attribute('bag_type', 'none'), view, camera, 128, 64)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import time
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

import cv2
import numpy as np
from tqdm import tqdm

from reid.io import names_file

from .base import SafeImageDataset, register_once
from .validation import prepare_splits, splits_in_use
from .render import (
    PART_LABELS,
    CameraStyle,
    Difficulty,
    PersonAttributes,
    PersonRenderer,
    ViewParams,
    bag_visible,
    make_cameras,
    sample_identities,
    sample_view,
)

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 1
"""Bumped whenever the rendering changes, so old caches are not reused."""

SPLIT_DIRS: Mapping[str, str] = MappingProxyType(
    {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
)
MARKET_PATTERN = re.compile(r"([-\d]+)_c(\d)s1_(\d{6})_00\.jpg$")
"""Matches the file names (groups: pid, 1-based camera, frame)."""

COMPLETE_MARKER = "COMPLETE"
TMP_PREFIX = ".tmp-"
"""Temporary generation folders are ``<root>/synthetic/.tmp-<variant>-<pid>@<host>``."""
STALE_AFTER_S = 10 * 60
"""A temporary folder in which nothing changed for this long is stale: a live generation creates a
file every few milliseconds."""
DEAD_OWNER_GRACE_S = 60
"""A temporary folder whose generating process is gone is stale once nothing in it changed for
this long (a guard against containers that share a host name but not their process ids)."""
_TMP_OWNER = re.compile(r"-(?P<pid>\d+)@(?P<host>[A-Za-z0-9._-]+)$")
_TORCHREID_DATASET_KWARGS = ("transform", "k_tfm", "mode", "combineall", "verbose")
_TORCHREID_IGNORED_KWARGS = ("split_id", "cuhk03_labeled", "cuhk03_classic_split", "market1501_500k")
# seed streams (each a separate SeedSequence)
_S_TRAIN_IDS, _S_TEST_IDS, _S_DISTRACTORS, _S_CAMERAS, _S_LAYOUT, _S_VIEWS = range(1, 7)


@dataclass(frozen=True)
class SyntheticConfig:
    """Everything that determines the generated files.

    Attributes:
        num_ids: identities, split in half into train and test (at least 8).
        num_cams: cameras (2..9; the Market file name has one camera digit).
        images_per_id: images per identity (at least 4); each identity is seen by 2 or more
            cameras with at least 2 images in each.
        height: image height.
        width: image width.
        seed: master seed.
        num_distractor_ids: extra identities whose images go to the gallery with pid 0.
        difficulty: nuisance and similarity knobs.
        supersample: drawing resolution factor of the renderer.
    """

    num_ids: int = 300
    num_cams: int = 6
    images_per_id: int = 20
    height: int = 128
    width: int = 64
    seed: int = 0
    num_distractor_ids: int = 0
    difficulty: Difficulty = field(default_factory=Difficulty)
    supersample: int = 2

    def __post_init__(self) -> None:
        if not 8 <= self.num_ids <= 9999:
            raise ValueError(f"num_ids must be in 8..9999 (4-digit pids, 4+ ids per split), "
                             f"got {self.num_ids}")
        if not 2 <= self.num_cams <= 9:
            raise ValueError(f"num_cams must be in 2..9, got {self.num_cams}")
        if self.images_per_id < 4:
            raise ValueError(f"images_per_id must be >= 4, got {self.images_per_id}")
        if self.num_distractor_ids and not 4 <= self.num_distractor_ids <= 9999:
            raise ValueError("num_distractor_ids must be 0 or in 4..9999")
        if self.height < 16 or self.width < 8:
            raise ValueError(f"image size {self.height}x{self.width} is too small")

    @property
    def num_train_ids(self) -> int:
        """Train identities (pids ``1..num_train_ids``); the rest are test identities."""
        return self.num_ids // 2

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-serialisable dict (difficulty nested)."""
        return dataclasses.asdict(self)

    def variant_name(self) -> str:
        """Folder name: readable main parameters plus a hash of everything (and the version)."""
        payload = json.dumps({"version": GENERATOR_VERSION, **self.to_dict()}, sort_keys=True)
        digest = hashlib.sha1(payload.encode()).hexdigest()[:8]
        return (f"n{self.num_ids}_c{self.num_cams}_i{self.images_per_id}_{self.height}x{self.width}"
                f"_s{self.seed}_{digest}")


@dataclass(frozen=True)
class _ImageJob:
    rel_path: str
    split: str
    pid: int
    camid: int
    frame: int
    identity: str
    view: ViewParams


def _rng(config: SyntheticConfig, *stream: int) -> np.random.Generator:
    return np.random.default_rng([config.seed, *stream])


def _identities(config: SyntheticConfig) -> dict[str, PersonAttributes]:
    d = config.difficulty
    n_train = config.num_train_ids
    n_test = config.num_ids - n_train
    groups = [(_S_TRAIN_IDS, n_train, 1, ""), (_S_TEST_IDS, n_test, n_train + 1, "")]
    if config.num_distractor_ids:
        groups.append((_S_DISTRACTORS, config.num_distractor_ids, 1, "d"))
    people: dict[str, PersonAttributes] = {}
    for stream, count, first, prefix in groups:
        sampled = sample_identities(count, _rng(config, stream), d.family_size, d.family_mutations)
        for offset, attrs in enumerate(sampled):
            people[f"{prefix}{first + offset:04d}"] = attrs
    return people


def _camera_layout(config: SyntheticConfig, index: int) -> list[int]:
    """Returns the 0-based camera of each of an identity's images (>= 2 cameras, >= 2 each)."""
    rng = _rng(config, _S_LAYOUT, index)
    max_cams = min(config.num_cams, config.images_per_id // 2)
    k = int(rng.integers(2, max_cams + 1))
    cams = sorted(int(c) for c in rng.choice(config.num_cams, size=k, replace=False))
    counts = 2 + rng.multinomial(config.images_per_id - 2 * k, np.full(k, 1.0 / k))
    return [cam for cam, n in zip(cams, counts) for _ in range(int(n))]


def _plan_images(config: SyntheticConfig, cameras: list[CameraStyle],
                identities: Mapping[str, PersonAttributes]) -> list[_ImageJob]:
    """Lists every image to render: split, pid, camera, frame and view parameters."""
    jobs = []
    for index, key in enumerate(identities):
        distractor = key.startswith("d")
        pid = 0 if distractor else int(key)
        train = not distractor and pid <= config.num_train_ids
        seen_cams: set[int] = set()
        for j, cam in enumerate(_camera_layout(config, index)):
            view = sample_view(_rng(config, _S_VIEWS, index, j), cameras[cam], config.difficulty)
            if train:
                split = "train"
            elif not distractor and cam not in seen_cams:
                split = "query"
            else:
                split = "gallery"
            seen_cams.add(cam)
            frame = (int(key[1:]) - 1) * config.images_per_id + j if distractor else j
            name = f"{pid:04d}_c{cam + 1}s1_{frame:06d}_00.jpg"
            jobs.append(_ImageJob(f"{SPLIT_DIRS[split]}/{name}", split, pid, cam, frame, key, view))
    return jobs


def _write(path: str, image: np.ndarray, params: list[int]) -> None:
    """Encodes with OpenCV (the bytes ``cv2.imwrite`` writes) and writes with Python, so that a
    full disk or a file-size limit raises ``OSError`` with its errno and the file's name."""
    ok, encoded = cv2.imencode(os.path.splitext(path)[1], image, params)
    if not ok:
        raise ValueError(f"OpenCV could not encode {path}")
    with names_file(path), open(path, "wb") as fh:
        fh.write(encoded.tobytes())


def _image_record(job: _ImageJob, attrs: PersonAttributes, mask: np.ndarray,
                  unoccluded: np.ndarray) -> dict[str, Any]:
    """The metadata entry of one rendered image."""
    person = int(np.count_nonzero(unoccluded))
    hidden = int(np.count_nonzero((unoccluded > 0) & (mask == 0)))
    return {
        "split": job.split, "pid": job.pid, "camid": job.camid, "frame": job.frame,
        "identity": job.identity, "viewpoint": job.view.viewpoint,
        "occluder": job.view.occluder, "occluded": hidden > 0,
        "occluded_fraction": round(hidden / max(1, person), 4),
        "bag_visible": bag_visible(attrs, job.view.viewpoint),
        "part_pixels": np.bincount(mask.ravel(), minlength=len(PART_LABELS)).tolist(),
        "view": job.view.to_dict(),
    }


def _generate(folder: str, config: SyntheticConfig, progress: bool) -> int:
    """Renders the whole set into ``folder`` (must not exist); returns the number of images."""
    identities = _identities(config)
    cameras = make_cameras(config.num_cams, _rng(config, _S_CAMERAS), config.difficulty)
    jobs = _plan_images(config, cameras, identities)
    for split_dir in SPLIT_DIRS.values():
        os.makedirs(os.path.join(folder, split_dir))
        os.makedirs(os.path.join(folder, "masks", split_dir))
    renderer = PersonRenderer(config.height, config.width, config.supersample)
    metadata: dict[str, dict[str, Any]] = {}
    for job in tqdm(jobs, desc="rendering synthetic re-id", unit="img", disable=not progress):
        camera, attrs = cameras[job.camid], identities[job.identity]
        image, mask, unoccluded = renderer.render_with_unoccluded(attrs, job.view, camera)
        path = os.path.join(folder, job.rel_path)
        _write(path, image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, camera.jpeg_quality])
        _write(mask_path(path), mask, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        metadata[job.rel_path] = _image_record(job, attrs, mask, unoccluded)
    _dump(os.path.join(folder, "attributes.json"), {k: a.to_dict() for k, a in identities.items()})
    _dump(os.path.join(folder, "cameras.json"), [c.to_dict() for c in cameras])
    _dump(os.path.join(folder, "metadata.json"), metadata)
    _dump(os.path.join(folder, "config.json"), {"version": GENERATOR_VERSION, **config.to_dict()})
    with open(os.path.join(folder, COMPLETE_MARKER), "w", encoding="utf-8") as fh:
        fh.write(f"{len(jobs)}\n")
    return len(jobs)


def _dump(path: str, obj: Any) -> None:
    with names_file(path), open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=None, separators=(",", ":"))


def _prepare_parent(parent: str) -> None:
    """Creates ``<root>/synthetic`` and checks it is writable; errors name the folder."""
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        raise OSError(f"cannot create the synthetic data folder {parent!r}: {exc}") from exc
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"the synthetic data folder {parent!r} is not writable; "
                              "choose another data root")


def is_complete(dataset_dir: str) -> bool:
    """Whether ``dataset_dir`` holds a completely generated set (its marker file exists)."""
    return os.path.isfile(os.path.join(dataset_dir, COMPLETE_MARKER))


def _host() -> str:
    """This machine's name as it may appear in a folder name."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "localhost"


def temporary_folder_name(variant: str, pid: int | None = None, host: str | None = None) -> str:
    """``.tmp-<variant>-<pid>@<host>``: where process ``pid`` (default: this one) of machine
    ``host`` (default: this one) generates ``variant``."""
    pid = os.getpid() if pid is None else pid
    return f"{TMP_PREFIX}{variant}-{pid}@{host or _host()}"


def _process_running(pid: int) -> bool:
    """Whether process ``pid`` of this machine is running (unsure: True)."""
    if pid == os.getpid() or os.name != "posix":  # os.kill(pid, 0) terminates it on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, under another user
        return True
    return True


def _last_change(folder: str) -> float:
    """Newest modification time of ``folder`` and its sub-folders (a new file changes its folder's)."""
    newest = os.stat(folder).st_mtime
    for dirpath, dirnames, _ in os.walk(folder):
        for name in dirnames:
            newest = max(newest, os.stat(os.path.join(dirpath, name)).st_mtime)
    return newest


def _stale_reason(path: str, name: str, stale_after: float, grace: float) -> str:
    """Why the temporary folder ``path`` is stale, or ``""`` when it may belong to a live run."""
    idle = time.time() - _last_change(path)
    if idle >= stale_after:
        return f"nothing in it changed for {idle / 60:.0f} min"
    owner = _TMP_OWNER.search(name)
    if (idle >= grace and owner and owner["host"] == _host()
            and not _process_running(int(owner["pid"]))):
        return f"its generating process {owner['pid']} on this machine is gone"
    return ""


def remove_stale_temporaries(parent: str, stale_after: float = STALE_AFTER_S,
                             grace: float = DEAD_OWNER_GRACE_S) -> list[str]:
    """Removes the temporary folders of killed generations from ``parent`` (``<root>/synthetic``).

    A ``.tmp-*`` folder is stale when nothing in it changed for ``stale_after`` seconds (a live
    generation writes files continuously; this covers other machines sharing the root and the
    folders named by older versions, ``.tmp-<variant>-<pid>``), or when its name records this
    machine and a process that is no longer running and nothing in it changed for ``grace``
    seconds. Any other is left alone: it may be a generation in progress. Each removal is logged;
    a folder that cannot be removed (a read-only root) is a warning, not an error.

    Returns:
        The removed folders.
    """
    try:
        names = sorted(os.listdir(parent))
    except OSError:
        return []
    removed = []
    for name in names:
        path = os.path.join(parent, name)
        if not name.startswith(TMP_PREFIX) or os.path.islink(path) or not os.path.isdir(path):
            continue
        try:
            reason = _stale_reason(path, name, stale_after, grace)
            if not reason:
                continue
            shutil.rmtree(path)
        except FileNotFoundError:  # removed meanwhile (another process cleaning up)
            continue
        except OSError as exc:
            logger.warning("could not remove the stale temporary folder %s: %s", path, exc)
            continue
        logger.warning("removed the stale temporary folder %s (%s): an interrupted generation",
                       path, reason)
        removed.append(path)
    return removed


def prepare_synthetic(root: str, config: SyntheticConfig | None = None, progress: bool = True) -> str:
    """Generates the set under ``<root>/synthetic/<variant>`` unless it is already complete.

    An existing folder without the completion marker (an interrupted older run) is deleted and
    generated again. Stale temporary folders of killed generations (of any variant) are removed
    first (:func:`remove_stale_temporaries`).

    Args:
        root: data root; created if missing.
        config: what to generate (defaults: 300 identities, 6 cameras, 20 images each).
        progress: show a tqdm progress bar while rendering.

    Returns:
        The absolute path of the dataset folder.

    Raises:
        OSError: the data root cannot be created or written (the message names the folder).
    """
    config = config or SyntheticConfig()
    parent = os.path.join(os.path.abspath(os.path.expanduser(root)), "synthetic")
    final = os.path.join(parent, config.variant_name())
    remove_stale_temporaries(parent)
    if is_complete(final):
        logger.debug("reusing synthetic set %s", final)
        return final
    _prepare_parent(parent)
    if os.path.exists(final):
        logger.warning("synthetic set %s is incomplete (no %s marker); generating it again",
                       final, COMPLETE_MARKER)
        shutil.rmtree(final)
    tmp = os.path.join(parent, temporary_folder_name(config.variant_name()))
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    logger.info("generating synthetic re-id set (%d ids, %d cameras, %d images/id, %dx%d, seed %d) in %s",
                config.num_ids, config.num_cams, config.images_per_id, config.height, config.width,
                config.seed, final)
    start = time.perf_counter()
    try:
        count = _generate(tmp, config, progress)
        try:
            os.rename(tmp, final)
        except OSError:
            if not is_complete(final):
                raise
            logger.info("another process completed %s first; using that one", final)
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("wrote %d images with masks to %s in %.1f s", count, final, time.perf_counter() - start)
    return final


# --------------------------------------------------------------------------------------------
# reading back


def mask_path(img_path: str) -> str:
    """Path of the part mask of an image of the set: ``<set>/masks/<split dir>/<stem>.png``."""
    split_dir = os.path.dirname(os.path.abspath(img_path))
    dataset_dir, split = os.path.split(split_dir)
    stem = os.path.splitext(os.path.basename(img_path))[0]
    return os.path.join(dataset_dir, "masks", split, stem + ".png")


def load_mask(img_path: str) -> np.ndarray:
    """Loads the ``(H, W)`` uint8 part-label mask of an image (labels in ``render.PART_LABELS``).

    Raises:
        FileNotFoundError: no readable mask beside the image (the message names the mask file).
    """
    path = mask_path(img_path)
    mask = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise FileNotFoundError(f"no part mask for {img_path} (expected {path})")
    return mask


def _load_json(dataset_dir: str, name: str) -> Any:
    path = os.path.join(dataset_dir, name)
    if not is_complete(dataset_dir):
        raise FileNotFoundError(f"{dataset_dir} is not a complete synthetic set (no {COMPLETE_MARKER})")
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def load_attributes(dataset_dir: str) -> dict[int, PersonAttributes]:
    """Loads the attributes of every (non-distractor) identity, keyed by pid."""
    raw = _load_json(dataset_dir, "attributes.json")
    return {int(k): PersonAttributes.from_dict(v) for k, v in raw.items() if not k.startswith("d")}


def load_metadata(dataset_dir: str) -> dict[str, dict[str, Any]]:
    """Loads per-image metadata keyed by the path relative to ``dataset_dir``.

    Each entry has ``split``, ``pid``, ``camid`` (0-based), ``frame``, ``identity`` (key in
    ``attributes.json``), ``viewpoint``, ``occluder``, ``occluded``, ``occluded_fraction``,
    ``bag_visible`` (from the viewpoint, ignoring occluders), ``part_pixels`` (pixel count of
    each part label in the mask) and ``view`` (the :class:`ViewParams` as a dict).
    """
    return _load_json(dataset_dir, "metadata.json")


def load_cameras(dataset_dir: str) -> list[CameraStyle]:
    """Loads the camera styles, indexed by 0-based camid."""
    return [CameraStyle.from_dict(c) for c in _load_json(dataset_dir, "cameras.json")]


def render_params(dataset_dir: str, img_path: str,
                  metadata: Mapping[str, Mapping[str, Any]] | None = None
                  ) -> tuple[PersonAttributes, ViewParams, CameraStyle]:
    """Returns what rendered an image, to render it again (e.g. with one attribute changed).

    Args:
        dataset_dir: the set's folder.
        img_path: an image of the set (absolute or relative to ``dataset_dir``).
        metadata: :func:`load_metadata` output, to avoid reading it again for many images.
    """
    rel = os.path.relpath(os.path.abspath(os.path.join(dataset_dir, img_path)), dataset_dir)
    entry = (metadata or load_metadata(dataset_dir))[rel.replace(os.sep, "/")]
    raw = _load_json(dataset_dir, "attributes.json")
    attrs = PersonAttributes.from_dict(raw[entry["identity"]])
    return attrs, ViewParams.from_dict(entry["view"]), load_cameras(dataset_dir)[entry["camid"]]


# --------------------------------------------------------------------------------------------
# torchreid dataset


def synthetic_config(owner: str, kwargs: dict[str, Any], difficulty: Difficulty | Mapping[str, Any] | None = None,
                     **sizes: Any) -> SyntheticConfig:
    """The :class:`SyntheticConfig` of a dataset built on the synthetic set, from its arguments.

    Takes the :class:`~reid.data.render.Difficulty` fields and the torchreid options the data
    manager passes to every dataset out of ``kwargs`` (in place), leaving torchreid's own dataset
    options there.

    Raises:
        TypeError: an unknown keyword argument (``owner`` names the dataset class).
        ValueError: generation options out of range.
    """
    knob_names = {f.name for f in dataclasses.fields(Difficulty)}
    knobs = {k: kwargs.pop(k) for k in list(kwargs) if k in knob_names}
    for name in _TORCHREID_IGNORED_KWARGS:
        kwargs.pop(name, None)
    unknown = set(kwargs) - set(_TORCHREID_DATASET_KWARGS)
    if unknown:
        raise TypeError(f"{owner} got unknown arguments {sorted(unknown)}")
    if difficulty is None:
        difficulty = Difficulty()
    elif not isinstance(difficulty, Difficulty):
        difficulty = Difficulty(**dict(difficulty))
    return SyntheticConfig(**sizes, difficulty=dataclasses.replace(difficulty, **knobs))


class SyntheticReID(SafeImageDataset):
    """torchreid image dataset over the generated synthetic set (generated on first use).

    Train pids are relabelled 0..N-1; query/gallery keep the file pids; camids are 0-based.
    Distractor gallery images have pid 0 (ignored by ``combineall``).

    Args:
        root: data root; the set goes to ``<root>/synthetic/<variant>``.
        num_ids: identities (half train, half test).
        num_cams: cameras (2..9).
        images_per_id: images per identity.
        height: image height.
        width: image width.
        seed: master seed; the same arguments always give byte-identical files.
        num_distractor_ids: extra gallery-only identities (pid 0).
        difficulty: a :class:`~reid.data.render.Difficulty` or a dict of its fields.
        progress: show a progress bar while generating.
        on_bad_image: ``error`` or ``skip`` an unreadable image. Every image of the splits that
            ``mode`` serves (all three with ``combineall``) is read at construction, as for every
            dataset (see :func:`reid.data.validation.prepare_splits`).
        **kwargs: fields of :class:`~reid.data.render.Difficulty` (override ``difficulty``),
            torchreid's dataset options (``transform``, ``mode``, ``combineall``, ``verbose``,
            ``k_tfm``), and the options torchreid's data manager passes to every dataset
            (``split_id``, ``cuhk03_labeled``, ...), which are ignored.

    Raises:
        TypeError: an unknown keyword argument.
        reid.data.base.ImageReadError: an unreadable image with ``on_bad_image="error"``.
    """

    dataset_dir = "synthetic"
    _junk_pids = [0]
    checks_images = True

    def __init__(self, root: str = "", num_ids: int = 300, num_cams: int = 6, images_per_id: int = 20,
                 height: int = 128, width: int = 64, seed: int = 0, num_distractor_ids: int = 0,
                 difficulty: Difficulty | Mapping[str, Any] | None = None, progress: bool = True,
                 on_bad_image: str = "error", **kwargs: Any) -> None:
        self.config = synthetic_config(
            "SyntheticReID", kwargs, num_ids=num_ids, num_cams=num_cams, images_per_id=images_per_id,
            height=height, width=width, seed=seed, num_distractor_ids=num_distractor_ids, difficulty=difficulty,
        )
        self.root = os.path.abspath(os.path.expanduser(root))
        self.dataset_dir = prepare_synthetic(self.root, self.config, progress)
        train, query, gallery = self._lists()
        self.skipped_images: list[str] = []
        splits = prepare_splits(
            "synthetic",
            {"train": train, "query": query, "gallery": gallery},
            num_cams=self.config.num_cams,
            published={},
            on_bad_image=on_bad_image,
            verify=splits_in_use(kwargs.get("mode", "train"), kwargs.get("combineall", False)),
            skipped=self.skipped_images,
        )
        super().__init__(splits["train"], splits["query"], splits["gallery"], **kwargs)

    def _lists(self) -> tuple[list[tuple[str, int, int]], list[tuple[str, int, int]],
                              list[tuple[str, int, int]]]:
        metadata = load_metadata(self.dataset_dir)
        by_split: dict[str, list[tuple[str, int, int]]] = {s: [] for s in SPLIT_DIRS}
        for rel in sorted(metadata):
            entry = metadata[rel]
            path = os.path.join(self.dataset_dir, *rel.split("/"))
            by_split[entry["split"]].append((path, int(entry["pid"]), int(entry["camid"])))
        label = {pid: i for i, pid in enumerate(sorted({pid for _, pid, _ in by_split["train"]}))}
        train = [(p, label[pid], cam) for p, pid, cam in by_split["train"]]
        return train, by_split["query"], by_split["gallery"]

    def show_summary(self) -> None:
        """Logs the split sizes (torchreid prints them)."""
        rows = []
        for name, data in (("train", self.train), ("query", self.query), ("gallery", self.gallery)):
            rows.append(f"  {name:8s} | {self.get_num_pids(data):5d} | {len(data):8d} | "
                        f"{self.get_num_cams(data):9d}")
        logger.info("=> Loaded %s from %s\n  subset   | # ids | # images | # cameras\n%s",
                    type(self).__name__, self.dataset_dir, "\n".join(rows))


def register() -> None:
    """Registers :class:`SyntheticReID` with torchreid as ``synthetic`` (again: no effect)."""
    register_once("synthetic", SyntheticReID)


register()
