"""Maps, plots and cube galleries the notebooks show."""

from __future__ import annotations

from .gallery import cluster_montage, cube_rows, depth_gif, gif_gallery, render_rows
from .markers import CubeMarker, PlaneMark, cube_markers, draw_marks, marker_note, plane_marks
from .maps import (
    analysis_frame,
    bic_figure,
    contingency_figure,
    default_hover,
    embedding_map,
    embedding_map_3d,
    explained_variance_figure,
    is_categorical,
    k_selection_figure,
    note_figure,
    selection_figure,
    size_distributions,
    size_map,
    stability_figure,
)
from .plots import (
    bbox_counts,
    cube_slices,
    descriptor_heatmap,
    descriptor_label,
    descriptor_unit,
    feature_overview,
    morphometrics,
    preview_rows,
    synapse_overview,
)
from .training import augmentation_figure, loss_curve

__all__ = [
    "CubeMarker",
    "PlaneMark",
    "cube_markers",
    "draw_marks",
    "marker_note",
    "plane_marks",
    "analysis_frame",
    "augmentation_figure",
    "loss_curve",
    "bbox_counts",
    "bic_figure",
    "cluster_montage",
    "contingency_figure",
    "cube_rows",
    "cube_slices",
    "default_hover",
    "descriptor_heatmap",
    "descriptor_label",
    "descriptor_unit",
    "depth_gif",
    "embedding_map",
    "embedding_map_3d",
    "explained_variance_figure",
    "feature_overview",
    "gif_gallery",
    "is_categorical",
    "k_selection_figure",
    "morphometrics",
    "note_figure",
    "preview_rows",
    "render_rows",
    "selection_figure",
    "size_distributions",
    "size_map",
    "stability_figure",
    "synapse_overview",
]
