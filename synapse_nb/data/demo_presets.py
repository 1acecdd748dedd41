"""Class tables and settings of the demo presets (``default``, ``hard``, ``brightness``).

The ``default`` demo (:data:`synapse_nb.data.demo.CLASS_NAMES`) separates its classes mostly by
volume, so even features that only follow brightness or size find them. The ``hard`` preset is
made to punish that:

* five classes; four share one size distribution (bouton, vesicle cloud, cleft, spine head) and
  differ only in texture or shape: clear vs dense-core vesicles, thin vs thick postsynaptic
  density, flat vs curved cleft; the fifth is the same synapse at about 0.6 x the size;
* nuisance a good method must ignore: brightness offset and contrast gain per bbox (drawn
  stratified, so the bboxes of one run really differ) plus a smooth brightness drift inside each
  bbox, cleft normals spread over the whole sphere, stronger noise;
* every class in every bbox (classes are balanced per bbox), so bbox != class.

The ``brightness`` preset is a small test volume: one shape class in every bbox and strongly
different brightness/contrast per bbox, so a clustering that follows brightness splits it by
bbox. This module holds data only; :func:`synapse_nb.data.demo.demo_spec` builds a spec from it.
"""
from __future__ import annotations

__all__ = ["DEMO_PRESETS", "HARD_CLASS_NAMES"]

#: Preset name -> what it is for.
DEMO_PRESETS: dict[str, str] = {
    "default": "three classes that differ mostly in volumes; quick (4 bboxes, ~63 synapses)",
    "hard": (
        "five classes, four of equal size that differ in vesicle type, density thickness or "
        "cleft curvature; per-bbox brightness/contrast, brightness drift, random cleft "
        "orientation, strong noise (4 bboxes, ~90 synapses)"
    ),
    "brightness": (
        "one shape class in every bbox, brightness and contrast varying strongly per bbox "
        "(3 small bboxes, ~8 synapses each; for tests)"
    ),
}

#: The classes of the ``hard`` and ``brightness`` presets (values of ``synapse_class``).
HARD_CLASS_NAMES: dict[int | str, str] = {
    "A_clear_flat": (
        "reference synapse: medium bouton with a cloud of small clear vesicles, flat cleft, "
        "thin postsynaptic density, spine head partner"
    ),
    "B_dense_core": (
        "as A (same bouton, cloud, cleft and spine sizes) but the cloud holds mostly larger "
        "dense-core vesicles (dark dots instead of light rings)"
    ),
    "C_thick_psd": (
        "as A (same sizes, clear vesicles, flat cleft) but with a thick postsynaptic density "
        "(~6 instead of ~2.5 voxels)"
    ),
    "D_curved_cleft": (
        "as A (same sizes, clear vesicles, thin density) but the cleft is curved: the spine "
        "head bulges into the bouton by 4-8 voxels at the centre"
    ),
    "E_small": (
        "as A in texture and shape, at about 0.6 x the size: small bouton, small cloud, short "
        "cleft, small spine head (the one class that differs in volumes)"
    ),
}

# Geometry per class, same keys as the default table in demo.py ((low, high) drawn per synapse).
_HARD_BASE: dict = {
    "post": "spine", "rb": (20.0, 23.0), "rc": (10.5, 13.0), "k": (0.0, 0.0), "post_r": (15.0, 18.0),
    "neck_len": (4.0, 7.0), "neck_r": 3.0, "den_r": (9.0, 12.0), "cloud_r": (12.0, 14.5),
    "mito_p": 0.3, "mito_semi": (0.55, 0.28), "n_perf": 0, "dense_core": 0.0, "psd": 1.5, "ves_spacing": 5.0,
}
HARD_CLASS_PARAMS: dict[str, dict] = {
    "A_clear_flat": dict(_HARD_BASE),
    "B_dense_core": {**_HARD_BASE, "dense_core": 0.85, "ves_spacing": 6.5},
    "C_thick_psd": {**_HARD_BASE, "psd": 5.0},
    "D_curved_cleft": {**_HARD_BASE, "k": (1 / 28, 1 / 22), "post_r": (16.0, 19.0)},
    "E_small": {
        **_HARD_BASE, "rb": (12.5, 14.5), "rc": (6.5, 8.0), "post_r": (9.0, 11.0),
        "neck_len": (3.0, 5.0), "neck_r": 2.5, "cloud_r": (7.5, 9.0), "mito_p": 0.0,
    },
}

#: Which classes a preset draws from when ``DemoSpec.classes`` is not set (default: all of its table).
PRESET_CLASSES: dict[str, tuple[str, ...]] = {
    "hard": tuple(str(c) for c in HARD_CLASS_NAMES),
    "brightness": ("E_small",),
}

#: ``DemoSpec`` values of each preset (anything not named keeps the ``DemoSpec`` default).
PRESET_SPECS: dict[str, dict] = {
    "default": {},
    "hard": {
        "n_bboxes": 4, "shape": (176, 224, 224), "synapses_per_bbox": 22, "min_spacing": 50.0,
        "noise_sigma": 15.0, "brightness_range": (-28.0, 28.0), "contrast_range": (0.7, 1.3),
        "brightness_drift": 8.0, "isotropic_normals": True, "max_axon_group": 3,
    },
    "brightness": {
        "n_bboxes": 3, "shape": (80, 112, 112), "synapses_per_bbox": 8, "min_spacing": 30.0,
        "brightness_range": (-45.0, 45.0), "contrast_range": (0.6, 1.4), "isotropic_normals": True,
        "max_axon_group": 2,
    },
}
