"""Read or write the residual stream at a hidden-state index: the one home of the placement rule.

Indices follow transformers' ``output_hidden_states``: index 0 is the embeddings, index ``i`` the
output of block ``i - 1`` (= the input of block ``i``), and the last index ``n`` the output of
the last block **after the final norm**. So:

* ``i < n``: a forward *pre*-hook on block ``i`` sees (and may replace) its input;
* ``i == n``: a forward hook on block ``n - 1`` sees its output; a reader gets it through the final
  norm (as ``output_hidden_states`` reports it), a writer changes the pre-norm output.

Every hook returns its own ``RemovableHandle``; callers remove exactly the handles they added.

Example:
    >>> seen = {}
    >>> h = residual_hook(lm, 3, lambda hidden, kw: seen.setdefault(3, hidden))  # doctest: +SKIP
    >>> h.remove()                                                                 # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from latentguard.models import find_final_norm

if TYPE_CHECKING:
    from latentguard.models import LoadedModel

#: ``fn(hidden, kwargs)``: the hidden state ``[batch, seq, d]`` and the block call's keyword
#: arguments (cache, positions). Return a tensor to replace the hidden state, or ``None``.
HiddenFn = Callable[[torch.Tensor, Mapping[str, Any]], "torch.Tensor | None"]


def residual_hook(lm: LoadedModel, index: int, fn: HiddenFn, *, normed: bool = True) -> RemovableHandle:
    """Call ``fn`` on the hidden state at ``index`` during every forward.

    Args:
        lm: The model.
        index: Hidden-state index, ``0..lm.n_layers``.
        fn: Reader or writer (see :data:`HiddenFn`).
        normed: At ``index == n``, pass the state through the final norm first, as
            ``output_hidden_states`` does. Only for readers: a writer at ``n`` must pass
            ``normed=False`` (it changes the pre-norm block output).

    Returns:
        The handle of the one hook added.

    Raises:
        ValueError: ``index`` is outside ``0..n``, or a normed hook returned a tensor.
    """
    n = lm.n_layers
    if not 0 <= index <= n:
        raise ValueError(f"layer index {index} outside 0..{n}")
    if index < n:

        def pre_hook(_mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            hidden = args[0] if args else kwargs["hidden_states"]
            new = fn(hidden, kwargs)
            if new is None:
                return None
            if args:
                return (new, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": new}

        return lm.layers[index].register_forward_pre_hook(pre_hook, with_kwargs=True)
    norm = find_final_norm(lm.model) if normed else None

    def post_hook(_mod: nn.Module, _args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        hidden = output[0] if isinstance(output, tuple) else output
        if norm is not None:
            if fn(norm(hidden), kwargs) is not None:
                raise ValueError("a normed hook reads the final hidden state; write with normed=False")
            return None
        new = fn(hidden, kwargs)
        if new is None:
            return None
        return (new, *output[1:]) if isinstance(output, tuple) else new

    return lm.layers[n - 1].register_forward_hook(post_hook, with_kwargs=True)
