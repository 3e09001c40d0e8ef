"""Graph passes for PT2E int8 graphs of diffusers models.

diffusers' plain attention passes ``torch.empty(...)`` to ``baddbmm`` with ``beta=0``. PT2E's
``convert_pt2e`` constant-folds that into a frozen tensor of whatever the memory held, and the
decomposed ``beta * input`` is then ``0 * garbage``: NaN wherever the garbage was NaN or Inf, and a
different constant in every export. ``zero_uninitialised`` runs on every PT2E path (ExecuTorch,
LiteRT, QAT) before quantizing, so it folds to zeros every time; ``drop_zero_baddbmm_inputs``
runs on a converted graph that is written out as it is (ONNX QDQ), so the zeros are not stored.
"""

from __future__ import annotations

from typing import Any


def zero_uninitialised(graph_module: Any) -> Any:
    """``graph_module`` with every ``aten.empty`` made ``aten.zeros`` (same size, dtype, device)."""
    import torch

    changed = False
    for node in graph_module.graph.nodes:
        if node.op == "call_function" and node.target == torch.ops.aten.empty.memory_format:
            node.target = torch.ops.aten.zeros.default
            node.kwargs = {key: value for key, value in node.kwargs.items() if key != "memory_format"}
            changed = True
    if changed:
        graph_module.recompile()
    return graph_module


def drop_zero_baddbmm_inputs(graph_module: Any) -> Any:
    """Every ``baddbmm(input, a, b, beta=0, alpha=s)`` as ``bmm(a, b) * s``, in a converted graph.

    After ``convert_pt2e`` the attention's ``input`` is a frozen (heads, tokens, tokens) constant
    that torch.onnx keeps as an initializer and multiplies by zero: megabytes of zeros in the file.
    """
    import torch

    aten = torch.ops.aten
    graph = graph_module.graph
    changed = False
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target != aten.baddbmm.default or node.kwargs.get("beta", 1) != 0:
            continue
        batch1, batch2 = node.args[1], node.args[2]
        alpha = node.kwargs.get("alpha", 1)
        with graph.inserting_before(node):
            replacement = graph.call_function(aten.bmm.default, (batch1, batch2))
            replacement.meta = dict(node.meta)
            if alpha != 1:
                replacement = graph.call_function(aten.mul.Tensor, (replacement, alpha))
                replacement.meta = dict(node.meta)
        node.replace_all_uses_with(replacement)
        graph.erase_node(node)
        changed = True
    if changed:
        graph.eliminate_dead_code()
        graph_module.recompile()
    return graph_module
