"""AVSL attribution summaries and panels on hand-built arrays (AVSL paper eq. 8 and 11)."""

import re

import numpy as np
import pytest

from reid.vis import (
    PanelLayout,
    attribution_panel,
    attribution_text,
    summarize_attribution,
    top_contributions,
)

SMALL = PanelLayout(tile_height=32, tile_width=16, margin=4, header_height=30, caption_height=12, border=2)

# Two levels, R = 4. Contributions lambda x delta:
#   low:  [0.5*0.2, 1.0*0.1, 0.25*0.4, 2.0*0.3] = [0.10, 0.10, 0.10, 0.60]
#   high: [0.9*0.5, 0.2*1.0, 0.5*0.2, 0.1*0.3]  = [0.45, 0.20, 0.10, 0.03]
NODES = [np.array([0.2, 0.1, 0.4, 0.3]), np.array([0.5, 1.0, 0.2, 0.3])]
WEIGHTS = [np.array([0.5, 1.0, 0.25, 2.0]), np.array([0.9, 0.2, 0.5, 0.1])]
P_HIGH = np.array([0.9, 0.2, 0.5, 0.1])
# W~ of the high level (rows sum to one, at most k = 2 non-zero)
W = np.array([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.25, 0.75], [1.0, 0.0, 0.0, 0.0], [0.0, 0.6, 0.4, 0.0]])


def rectified_levels():
    """Eq. 8 by hand for the two levels: delta_hat^1 = delta^1, then row by row."""
    low = NODES[0]
    carried = np.array([0.5 * 0.2 + 0.5 * 0.1, 0.25 * 0.4 + 0.75 * 0.3, 1.0 * 0.2, 0.6 * 0.1 + 0.4 * 0.4])
    high = P_HIGH * NODES[1] + (1 - P_HIGH) * carried
    return [low, high], carried


def summary(top=2, feeders=2):
    rectified, _ = rectified_levels()
    distance = float(rectified[1].sum())
    return summarize_attribution(distance, ["layer3", "layer4"], NODES, WEIGHTS, [P_HIGH], rectified, [W],
                                 top=top, feeders=feeders)


def test_top_contributions_are_the_largest_weight_times_node():
    # ties (three 0.10) keep the lower index first
    chosen = top_contributions(WEIGHTS[0], NODES[0], 3)
    assert [c.node for c in chosen] == [3, 0, 1]
    assert [c.contribution for c in chosen] == pytest.approx([0.6, 0.1, 0.1])
    assert (chosen[0].weight, chosen[0].delta) == (2.0, 0.3)
    # the largest node or the largest weight alone would pick differently
    high = top_contributions(WEIGHTS[1], NODES[1], 2)
    assert [c.node for c in high] == [0, 1] and int(np.argmax(NODES[1])) == 1
    assert len(top_contributions(WEIGHTS[1], NODES[1], 10)) == 4


def test_top_contributions_checks_input():
    with pytest.raises(ValueError, match="differ in shape"):
        top_contributions(np.ones(3), np.ones(4), 1)
    with pytest.raises(ValueError, match="non-finite"):
        top_contributions(np.array([1.0, np.nan]), np.ones(2), 1)
    with pytest.raises(ValueError, match="positive"):
        top_contributions(np.ones(2), np.ones(2), 0)


def test_summary_levels_sum_to_the_distance_and_top_plus_rest_to_the_level():
    s = summary()
    # the weights here are hand-made, not eq. 11's: the levels sum to sum(lambda * delta)
    assert [level.total for level in s.levels] == pytest.approx([0.9, 0.78])
    for level in s.levels:
        assert sum(c.contribution for c in level.top) + level.rest == pytest.approx(level.total)
        assert sum(level.contributions) == pytest.approx(level.total)
    assert [n.node for n in s.levels[1].top] == [0, 1]


def test_rectified_node_is_the_least_reliable_large_term_with_eq8_breakdown():
    rectified, carried = rectified_levels()
    # carried = [0.15, 0.325, 0.2, 0.22], delta_hat^2 = [0.465, 0.46, 0.2, 0.228]: the top 2 are
    # nodes 0 (p 0.9) and 1 (p 0.2) -> node 1
    assert carried == pytest.approx([0.15, 0.325, 0.2, 0.22])
    assert rectified[1] == pytest.approx([0.465, 0.46, 0.2, 0.228])
    rect = summary(top=2).rectification
    assert (rect.level, rect.lower_level, rect.node) == ("layer4", "layer3", 1)
    assert (rect.delta, rect.reliability) == (1.0, 0.2)
    assert rect.carried == pytest.approx(carried[1])
    assert rect.rectified == pytest.approx(rect.reliability * rect.delta + (1 - rect.reliability) * rect.carried)
    # feeders by W~_ij delta_hat_j: node 3 (0.75 * 0.3) before node 2 (0.25 * 0.4); zero edges never
    assert [f.node for f in rect.feeders] == [3, 2]
    assert [f.fed for f in rect.feeders] == pytest.approx([0.225, 0.1])
    assert len(summary(top=2, feeders=4).rectification.feeders) == 2
    # with 4 candidates the least reliable is node 3 (p 0.1)
    assert summary(top=4).rectification.node == 3


def test_single_level_has_no_rectification_and_mismatches_are_errors():
    s = summarize_attribution(0.3, ["layer4"], [NODES[0]], [np.ones(4)], [], [NODES[0]], [])
    assert s.rectification is None and s.levels[0].total == pytest.approx(1.0)
    with pytest.raises(ValueError, match="reliabilities and edge weights"):
        summarize_attribution(1.0, ["a", "b"], NODES, WEIGHTS, [], rectified_levels()[0], [W])
    with pytest.raises(ValueError, match="edge weights must be"):
        summarize_attribution(1.0, ["a", "b"], NODES, WEIGHTS, [P_HIGH], rectified_levels()[0], [W[:, :3]])


def test_json_dict_carries_every_contribution():
    d = summary().to_dict()
    assert d["distance"] == pytest.approx(1.353)
    assert [level["level"] for level in d["levels"]] == ["layer3", "layer4"]
    assert d["levels"][0]["top"][0] == {"node": 3, "contribution": pytest.approx(0.6), "weight": 2.0, "delta": 0.3}
    assert d["levels"][1]["contributions"] == pytest.approx([0.45, 0.2, 0.1, 0.03])
    assert d["rectified_node"]["node"] == 1 and d["rectified_node"]["feeders"][0]["fed"] == pytest.approx(0.225)


def test_printed_numbers_add_up():
    s = summary()
    rows = attribution_text(s, rank=2, correct=True)
    assert len(rows) == 4 and rows[0][0].startswith("rank 2") and rows[0][0].endswith("correct")
    numbers = [float(x) for x in re.findall(r"\d+\.\d{4}", rows[0][1])]
    assert numbers == pytest.approx([0.9, 0.78], abs=5e-5)
    for row, level in zip(rows[1:3], s.levels):
        total, shown, rest = (float(x) for x in re.findall(r"-?\d+\.\d{4}", row[0]))
        assert total == pytest.approx(shown + rest, abs=2e-4) and total == pytest.approx(level.total, abs=5e-5)
        assert [int(n) for n in re.findall(r"#(\d+)", row[1])] == [n.node for n in level.top]
    assert "rectified layer4 #1" in rows[3][0] and "#3 0.75x0.3000, #2 0.25x0.4000" in rows[3][1]


def _cams(value_node, size):
    """(4, h, w) CAMs: all zeros except node ``value_node``, a constant 1."""
    cams = np.zeros((4, *size))
    cams[value_node] = 1.0
    return cams


def test_panel_size_and_content():
    s = summary(top=2, feeders=2)
    query = np.full((32, 16, 3), (10, 20, 30), dtype=np.uint8)
    gallery = np.full((64, 32, 3), (20, 40, 60), dtype=np.uint8)
    q_cams = [_cams(3, (4, 2)), _cams(0, (2, 1))]
    g_cams = [np.zeros((4, 4, 2)), np.zeros((4, 2, 1))]
    panel = attribution_panel(query, gallery, s, q_cams, g_cams, rank=1, correct=False, layout=SMALL)
    # rows: images (2 tiles), 2 levels x 2 nodes (4 tiles), rectified + 2 feeders (6 tiles)
    row_h = SMALL.size(1)[0]
    assert row_h == 30 + 32 + 12 + 4
    assert panel.shape == (4 * row_h, SMALL.size(6)[1], 3) and panel.dtype == np.uint8
    x0, y_mid = SMALL.margin, SMALL.header_height + SMALL.tile_height // 2
    step = SMALL.tile_width + SMALL.margin
    # row 0: the query and the gallery images; padding to the right stays white
    assert panel[y_mid, x0 + 8].tolist() == [10, 20, 30]
    assert panel[y_mid, x0 + step + 8].tolist() == [20, 40, 60]
    assert panel[y_mid, SMALL.size(2)[1] + 2].tolist() == [255, 255, 255]
    # ... but row 0's header text runs across the full width (not clipped to its two tiles)
    assert (panel[: SMALL.header_height, SMALL.size(2)[1] :] != 255).any()
    # row 1 (layer3): the first node is #3, whose query CAM is the constant 1 (jet red), the
    # gallery CAM of it is 0 (jet blue); the second node (#0) has a zero query CAM
    red = np.asarray(panel[row_h + y_mid, x0 + 8], dtype=int)
    blue = np.asarray(panel[row_h + y_mid, x0 + step + 8], dtype=int)
    zero = np.asarray(panel[row_h + y_mid, x0 + 2 * step + 8], dtype=int)
    assert red[0] > red[2] and blue[2] > blue[0] and zero[2] > zero[0]
    # row 2 (layer4): the first node is #0, constant 1 on the query
    top = np.asarray(panel[2 * row_h + y_mid, x0 + 8], dtype=int)
    assert top[0] > top[2]
    # row 3: rectified node #1 then feeders #3 (layer3, constant 1 on the query) and #2
    rect, feeder = (np.asarray(panel[3 * row_h + y_mid, x0 + k * step + 8], dtype=int) for k in (0, 2))
    assert rect[2] > rect[0] and feeder[0] > feeder[2]


def test_panel_without_rectification_and_bad_cams():
    s = summarize_attribution(0.3, ["layer4"], [NODES[0]], [np.ones(4)], [], [NODES[0]], [], top=1)
    image = np.zeros((8, 4, 3), dtype=np.uint8)
    panel = attribution_panel(image, image, s, [np.zeros((4, 2, 2))], [np.zeros((4, 2, 2))], layout=SMALL)
    assert panel.shape == (2 * SMALL.size(1)[0], SMALL.size(2)[1], 3)
    with pytest.raises(ValueError, match="CAM arrays"):
        attribution_panel(image, image, s, [], [], layout=SMALL)
    with pytest.raises(ValueError, match="covering the top nodes"):
        attribution_panel(image, image, s, [np.zeros((2, 2, 2))], [np.zeros((4, 2, 2))], layout=SMALL)
