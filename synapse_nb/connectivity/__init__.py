"""Synapses that share a presynaptic neurite: groups, distance statistics, permutation test and the
summary page.
"""

from __future__ import annotations

from .groups import PresynapseAnalysis, analyze, assign_groups, group_name, group_table
from .stats import (
    PermutationResult,
    as_points,
    distance_pairs,
    finite_or_none,
    group_distances,
    pair_distances,
    permutation_test,
)
from .summary_page import (
    distance_distributions,
    distance_heatmap,
    distance_scale,
    figure_data_uri,
    figure_html,
    group_heatmaps,
    group_map,
    group_montage,
    markdown_to_html,
    null_figure,
    summary_html,
    table_html,
    write_summary,
)

__all__ = [
    "PermutationResult",
    "PresynapseAnalysis",
    "analyze",
    "as_points",
    "assign_groups",
    "distance_distributions",
    "distance_heatmap",
    "distance_pairs",
    "distance_scale",
    "figure_data_uri",
    "figure_html",
    "finite_or_none",
    "group_distances",
    "group_heatmaps",
    "group_map",
    "group_montage",
    "group_name",
    "group_table",
    "markdown_to_html",
    "null_figure",
    "pair_distances",
    "permutation_test",
    "summary_html",
    "table_html",
    "write_summary",
]
