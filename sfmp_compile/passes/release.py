"""Free the float weights once their packed copies exist, without upsetting Dynamo.

Dynamo guards each parameter input on its metadata (shape, stride, dtype, device, requires_grad) and
keeps passing the same nn.Parameter object to the compiled graph. Replacing ``p.data`` changes that
metadata and triggers recompiles; resizing the parameter's *storage* to zero bytes keeps every
guarded property and frees the memory. The compiled graph no longer reads the parameter, and a
recompile (new sequence length) finds the packed weight in the backend's cache by identity.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from ..salience import is_linear


def storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes held by the distinct storages of ``tensors`` (released ones count 0)."""
    seen, total = set(), 0
    for t in tensors:
        st = t.untyped_storage()
        key = st.data_ptr()
        if key in seen or st.nbytes() == 0:
            continue
        seen.add(key)
        total += st.nbytes()
    return total


def can_release(p: torch.Tensor) -> str | None:
    """None if ``p``'s storage can be freed on its own, else why not."""
    st = p.untyped_storage()
    if st.nbytes() == 0:
        return "already released"
    if p.storage_offset() != 0 or st.nbytes() != p.numel() * p.element_size():
        return "its storage is shared with other tensors"
    return None


def release(params: Iterable[torch.Tensor]) -> int:
    """Resize each parameter's storage to 0 bytes (metadata untouched). Returns the bytes freed.

    Storage that cannot be resized (weights memory-mapped from a safetensors file) is swapped for a
    fresh, never-touched allocation of the same shape and strides first (``p.data = ...`` keeps the
    object and every guarded property), which drops the reference to the mapping; that allocation
    is then resized to 0, so nothing new ever becomes resident.
    """
    freed = 0
    with torch.no_grad():
        for p in params:
            if can_release(p) is not None:
                continue
            st = p.untyped_storage()
            freed += st.nbytes()
            if not st.resizable():
                p.data = torch.empty_strided(p.shape, p.stride(), dtype=p.dtype, device=p.device)
                st = p.untyped_storage()
            st.resize_(0)
    return freed


def is_released(p: torch.Tensor) -> bool:
    return p.untyped_storage().nbytes() == 0 and p.numel() > 0


def release_linear_weights(sites, keep_ids: set[int]) -> tuple[int, list[str]]:
    """Free the float weights of rewritten linear sites (``find_linears.LinearSite``) whose weight
    node has no users left in the graph and whose id is not in ``keep_ids`` (tied to a non-linear
    module). Returns (bytes freed, one note per weight kept and why)."""
    params, notes = {}, []
    for s in sites:
        if s.weight is None or s.form == "sfmp" or s.weight_node is None or not s.quantizable:
            continue
        if s.weight_node.users:
            notes.append(f"{s.name}: float weight kept (still used elsewhere in the graph)")
        elif id(s.weight) in keep_ids:
            notes.append(f"{s.name}: float weight kept (tied to a non-linear module)")
        elif (why := can_release(s.weight)) is not None:
            if why != "already released":
                notes.append(f"{s.name}: float weight kept ({why})")
        else:
            params[id(s.weight)] = s.weight
    return release(params.values()), notes


def params_of_non_linears(model: nn.Module) -> set[int]:
    """ids of parameters some non-linear module also holds (tied embeddings): never free them."""
    return {id(p) for m in model.modules() if not is_linear(m) for p in m.parameters(recurse=False)}
