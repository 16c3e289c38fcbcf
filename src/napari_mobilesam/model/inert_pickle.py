"""Reading a pickled torch checkpoint without running anything it names.

``torch.load`` is given an unpickler whose ``find_class`` resolves only tensor rebuilding and plain
containers (``OrderedDict``, ``set``, torch dtypes and sizes). Every other global the file names (a
model class, ``getattr``, ``os.system``, ...) becomes a :class:`Record`: an inert stand-in that keeps
the call's arguments and the pickled state as data and is never called or looked up again. So no
class of the file's choosing is constructed, and a model is only ever rebuilt by the caller, from a
schema the caller chose, with the tensors read here (:func:`module_tensors`).
"""

from __future__ import annotations

import _compat_pickle
import pickle
import types
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from ..engine.errors import SettingsError, UserError

__all__ = ["DamagedFileError", "Record", "load_inert", "module_tensors", "plain"]


class DamagedFileError(UserError):
    """The file is not a readable torch zip checkpoint: truncated, damaged or another format."""


class Record:
    """What a pickled global became: ``qualname`` (``module.Name`` as written in the file), the
    arguments it was called with (``args``) and the state the file gave it (``state``). Data only."""

    qualname = ""
    args: tuple[Any, ...]
    state: Any

    def __new__(cls, *args: Any, **kwargs: Any) -> Record:
        self = object.__new__(cls)
        self.args, self.state = args, None
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __call__(self, *args: Any, **kwargs: Any) -> Record:
        """A call of what a call returned (``getattr(os, 'system')(...)``): another record, nothing runs."""
        return type("Result", (Record,), {"qualname": f"{self.qualname}(...)"})(*args)

    @property
    def name(self) -> str:
        """The class name without its module (``Conv``, ``DetectionModel``)."""
        return self.qualname.rpartition(".")[2]

    def __repr__(self) -> str:
        return f"Record({self.qualname})"


def _allowed() -> dict[str, Any]:
    u = torch._utils
    real: dict[str, Any] = {
        "collections.OrderedDict": OrderedDict, "builtins.set": set, "builtins.frozenset": frozenset,
        "torch.Size": torch.Size, "torch._utils._rebuild_tensor": u._rebuild_tensor,
        "torch._utils._rebuild_tensor_v2": u._rebuild_tensor_v2, "torch._utils._rebuild_parameter": u._rebuild_parameter,
    }
    for name in dir(torch):
        if isinstance(getattr(torch, name, None), torch.dtype):
            real[f"torch.{name}"] = getattr(torch, name)
    return real


class _Unpickler(pickle.Unpickler):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._real = _allowed()
        self._records: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _compat_pickle.NAME_MAPPING:  # protocol 2 names (torch.save's default)
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        full = f"{module}.{name}"
        if full in self._real:
            return self._real[full]
        if full not in self._records:
            self._records[full] = type(name if name.isidentifier() else "Global", (Record,), {"qualname": full})
        return self._records[full]


def _unpickling_module() -> types.ModuleType:
    """A ``pickle_module`` for ``torch.load``: its Unpickler is the inert one (torch's storages stay torch's)."""
    mod = types.ModuleType("napari_mobilesam_inert_pickle")
    mod.Unpickler = _Unpickler  # type: ignore[attr-defined]
    mod.load = lambda fh, **kw: _Unpickler(fh, **kw).load()  # type: ignore[attr-defined]
    mod.UnpicklingError = pickle.UnpicklingError  # type: ignore[attr-defined]
    return mod


def load_inert(path: str | Path) -> Any:
    """The checkpoint at ``path`` as plain containers, tensors and :class:`Record` objects (on the CPU).

    Raises:
        DamagedFileError: not a torch zip archive, truncated, or its pickle is unreadable.
    """
    p = Path(path)
    if not zipfile.is_zipfile(p):
        raise DamagedFileError("not a zip archive as torch.save writes")
    try:
        return torch.load(p, map_location="cpu", weights_only=False, pickle_module=_unpickling_module())
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, KeyError, zipfile.BadZipFile, TypeError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise DamagedFileError(f"its contents cannot be read ({type(e).__name__}: {first[:160]})") from e


def module_tensors(rec: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """The state dict (parameters and persistent buffers, dotted names) of a pickled ``torch.nn.Module``.

    Raises:
        ValueError: ``rec`` or one of its children is not a pickled module (no module state).
    """
    if not isinstance(rec, Record) or not isinstance(rec.state, dict) or not isinstance(rec.state.get("_modules"), dict):
        raise SettingsError(f"{prefix.rstrip('.') or 'the model'} is not a pickled torch module")
    st = rec.state
    skip = st.get("_non_persistent_buffers_set") or set()
    out: dict[str, torch.Tensor] = {}
    for group in ("_parameters", "_buffers"):
        for key, value in (st.get(group) or {}).items():
            if value is None or (group == "_buffers" and key in skip):
                continue
            if type(value) not in (torch.Tensor, torch.nn.Parameter) or not isinstance(key, str):
                raise SettingsError(f"{prefix}{key} is not a tensor")
            out[prefix + key] = value.detach()
    for key, child in st["_modules"].items():
        if child is not None:
            out.update(module_tensors(child, f"{prefix}{key}."))
    return out


def plain(obj: Any, depth: int = 0) -> Any:
    """``obj`` reduced to plain data (str/int/float/bool/None, lists, dicts with such keys); anything
    else (records, tensors) becomes None. A pickled namespace's attributes count as a dict."""
    if depth > 8:
        return None
    if obj is None or type(obj) in (str, int, float, bool):
        return obj
    if isinstance(obj, Record) and isinstance(obj.state, dict):
        obj = obj.state
    if type(obj) in (dict, OrderedDict):
        return {k: plain(v, depth + 1) for k, v in obj.items() if type(k) in (str, int)}
    if type(obj) in (list, tuple):
        return [plain(v, depth + 1) for v in obj]
    return None
