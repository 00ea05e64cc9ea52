"""Shared fixtures: a tiny Algonauts-layout subject, the real ROI masks, an isolated cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from tiny_data import TinySubject, write_tiny_subject

SHARED_ROI_MASKS = Path(__file__).resolve().parents[2] / "shared" / "data" / "algonauts_roi_masks"

# Vertices per ROI of the real Algonauts 2023 masks ("all" = every challenge vertex),
# columns 1L 1R … 8L 8R.
APPENDIX_A = """
all 19004 20544 19004 20544 19004 20544 19004 20544 19004 20544 18978 20220 19004 20544 18981 20530
V1v 710 444 599 616 853 676 585 633 538 589 299 572 491 444 444 590
V1d 828 991 845 677 523 624 557 553 1117 706 944 712 917 709 569 815
V2v 632 887 653 883 930 704 734 647 531 629 482 610 685 575 646 744
V2d 692 725 620 623 575 782 498 595 663 796 557 559 616 523 503 719
V3v 567 682 553 732 656 433 537 563 457 487 422 532 489 570 509 527
V3d 669 535 574 756 653 676 468 578 725 714 622 527 651 550 489 766
hV4 531 765 606 656 457 430 547 643 584 336 439 376 540 381 538 538
EBA 2837 3400 3059 3650 3017 3568 3538 4562 3618 5741 3605 4060 3873 3381 3349 3425
FBA-1 574 206 0 0 524 1176 0 395 512 556 615 1065 0 0 188 923
FBA-2 0 856 1058 748 92 415 787 473 984 200 387 219 422 522 519 569
mTL-bodies 0 0 0 0 0 0 0 0 0 0 0 112 0 0 0 164
OFA 432 305 493 795 607 836 623 774 778 883 419 475 434 302 452 231
FFA-1 552 330 244 594 549 1067 599 526 542 658 435 167 484 601 776 577
FFA-2 0 629 401 527 125 11 434 467 335 650 320 523 39 18 678 914
mTL-faces 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
aTL-faces 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
OPA 1863 2806 1494 2434 1797 1421 1707 1998 2203 2025 1706 1720 1611 1474 2647 1979
PPA 1311 891 1272 1490 1787 1976 1551 1314 1585 1586 1256 1512 1323 1466 1277 1326
RSC 401 660 481 683 515 890 482 755 358 726 323 687 429 719 339 740
OWFA 317 590 580 717 539 727 454 683 579 412 519 467 1036 752 995 624
VWFA-1 1381 397 499 300 1211 502 800 644 654 313 441 456 492 416 1406 639
VWFA-2 461 431 189 155 36 0 46 0 329 338 678 186 632 1107 126 0
mfs-words 490 0 366 400 79 0 146 106 257 340 432 431 182 298 146 222
mTL-words 0 0 0 0 0 0 0 0 0 0 4 0 0 63 0 0
early 5169 5304 5171 5300 5168 5302 5170 5304 5169 5302 5141 4978 5169 5302 5146 5286
midventral 867 1050 862 1051 867 1049 868 1050 863 1050 868 1049 867 1049 862 1049
midlateral 1091 1191 1100 1194 1095 1192 1096 1190 1098 1188 1097 1190 1098 1190 1093 1188
midparietal 853 1133 852 1131 852 1134 853 1130 854 1138 853 1134 857 1132 851 1133
ventral 4974 4852 4974 4854 4975 4853 4972 4855 4972 4852 4973 4852 4972 4852 4980 4854
lateral 3129 3578 3127 3573 3128 3577 3126 3576 3136 3574 3128 3577 3124 3574 3129 3578
parietal 2346 2314 2343 2319 2345 2315 2344 2318 2336 2318 2343 2316 2340 2319 2345 2317
"""


def _parse_appendix_a() -> dict[tuple[int, str, str], int]:
    """{(subject, hemisphere, roi or "all"): n_vertices} of the real masks (table above)."""
    table = {}
    for line in APPENDIX_A.strip().splitlines():
        name, *counts = line.split()
        for column, count in enumerate(counts):
            table[column // 2 + 1, ("lh", "rh")[column % 2], name] = int(count)
    return table


@pytest.fixture(autouse=True)
def _isolated_cache(monkeypatch, tmp_path_factory):
    """Point ``$CORTEXCL_CACHE`` at a fresh folder so no test touches the user's cache."""
    monkeypatch.setenv("CORTEXCL_CACHE", str(tmp_path_factory.mktemp("cortexcl-cache")))


@pytest.fixture
def make_tiny_subject():
    """Return `write_tiny_subject`, to write tiny subjects with other settings."""
    return write_tiny_subject


@pytest.fixture
def tiny_subject(tmp_path) -> TinySubject:
    """A tiny subject (40 images of 32 px, 300 / 260 vertices) under ``tmp_path / "data"``."""
    return write_tiny_subject(tmp_path / "data")


@pytest.fixture
def real_roi_masks() -> Path:
    """The real Algonauts ROI masks of subjects 01-08 (the test is skipped where absent)."""
    if not SHARED_ROI_MASKS.is_dir():
        pytest.skip(f"real ROI masks not found at {SHARED_ROI_MASKS}")
    return SHARED_ROI_MASKS


@pytest.fixture(scope="session")
def appendix_a() -> dict[tuple[int, str, str], int]:
    """ROI sizes of the real subjects: {(subject, hemisphere, roi or "all"): n_vertices}."""
    return _parse_appendix_a()


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Test batches are tiny: on a small shared CPU, extra threads cost more than they save."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
