"""The panoptic-map image MoAI feeds to its vision encoder (paper §3, Verbalization; docs/verbalization.md §5).

MoAI (arXiv 2403.07508) encodes the panoptic segmentation twice: as a sentence (``official.py``) and as a
colour map image passed through the frozen CLIP encoder and the projector, giving "locality-preserving"
map tokens. The official ``make_seg_prompt`` colours each pixel by its **segment id** (not its class) with
a PASCAL-VOC colormap of ``1 + 133`` entries; unlabelled pixels (id <= 0) are black.

Quirk (docs/verbalization.md §5): the official map is ``colormap / 255`` in [0, 1],
but the CLIP image processor then normalises it as if it were 0..255 (``(x - 255*mean) / (255*std)``), so
what reaches CLIP is nearly constant (about -1.8, each channel varying by ~0.01). ``official_panoptic_map``
reproduces that input for checkpoint parity; ``corrected_panoptic_map`` returns real 0..255 colours.
"""

from __future__ import annotations

import functools

import numpy as np

#: 133 COCO-panoptic classes + 1 background entry, as the official ``create_pascal_label_colormap(1+133)``.
PANOPTIC_NUM_COLORS = 134
#: Bits per channel of the PASCAL colormap.
_COLOR_BITS = 8
_CHANNELS = 3
_MAX_COLOR = 255.0


@functools.lru_cache(maxsize=8)
def pascal_colormap(n: int = PANOPTIC_NUM_COLORS) -> np.ndarray:
    """The standard PASCAL-VOC label colormap, (n, 3) uint8 (read-only: one array per ``n`` is shared).

    Entry ``i`` spreads the bits of ``i`` over the channels: bit ``3*j + c`` of ``i`` becomes bit
    ``7 - j`` of channel ``c`` (so 1 -> (128, 0, 0), 2 -> (0, 128, 0), 8 -> (64, 0, 0), ...).
    """
    index = np.arange(n, dtype=np.int64)
    colors = np.zeros((n, _CHANNELS), dtype=np.int64)
    for level in range(_COLOR_BITS):
        shift = _COLOR_BITS - 1 - level
        for channel in range(_CHANNELS):
            bit = (index >> (_CHANNELS * level + channel)) & 1
            colors[:, channel] |= bit << shift
    colors = colors.astype(np.uint8)
    colors.flags.writeable = False
    return colors


def _segment_indices(segment_id_map: np.ndarray, num_colors: int) -> np.ndarray:
    """Segment ids clamped like the official (``ids <= 0 -> 0``), checked against the colormap size."""
    ids = np.asarray(segment_id_map).astype(np.int64)
    if ids.ndim != 2:
        raise ValueError(f"segment_id_map must be 2-D (H, W), got shape {ids.shape}")
    ids = np.where(ids > 0, ids, 0)
    if ids.size and int(ids.max()) >= num_colors:
        # The official indexing would raise IndexError here as well (outside its try block).
        raise IndexError(f"segment id {int(ids.max())} does not fit a {num_colors}-colour map")
    return ids


def official_panoptic_map(
    segment_id_map: np.ndarray,
    num_colors: int = PANOPTIC_NUM_COLORS,
    dtype: np.dtype | type = np.float64,
) -> np.ndarray:
    """The panoptic map exactly as the official ``make_seg_prompt`` builds it: (H, W, 3) in [0, 1].

    Colour = ``pascal_colormap(num_colors)[segment_id] / 255`` with ids ``<= 0`` mapped to 0 (black).
    The official array is float64 (``int colormap / 255``), which is the default here; the official
    pipeline then casts it to float16 before the CLIP processor, so float32 gives identical results.
    Note the quirk in the module docstring: normalised with pixel-scale CLIP statistics this map is
    nearly constant.
    """
    ids = _segment_indices(segment_id_map, num_colors)
    cmap = pascal_colormap(num_colors).astype(np.float64) / _MAX_COLOR
    return cmap[ids].astype(dtype)


def corrected_panoptic_map(segment_id_map: np.ndarray, num_colors: int = PANOPTIC_NUM_COLORS) -> np.ndarray:
    """The same colours as (H, W, 3) uint8 in 0..255, so a standard CLIP normalisation sees real contrast.

    Not the official behaviour (see the module docstring); use it only for models trained with it.
    """
    ids = _segment_indices(segment_id_map, num_colors)
    return pascal_colormap(num_colors)[ids]
