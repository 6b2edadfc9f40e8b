"""``load_model``: one entry point for every model source, resolving device and precision once."""
from __future__ import annotations

import dataclasses
import logging
import math
import numbers
import os
from pathlib import Path
from typing import Any

import torch

from .backends import GRAPH_SUFFIXES, CompiledDepthModel, choose_backend, load_backend
from .checkpoints import agreeing_config, check_state_dict, load_state_dict_file
from .configs import HEADS, MODEL_CONFIGS, VERSIONS, get_model_config
from .model import DepthModel
from .weights import WEIGHTS, cached_path, sha256_file

logger = logging.getLogger(__name__)

DEFAULT_MODEL_FILE = "surgical-depth-default.safetensors"
# SHA256 of the shipped default model (Resources/Models/MODEL_CARD.md); verified on every load of "default".
DEFAULT_MODEL_SHA256 = "d48ed14f5262a9de7343e64a22b292a4444decfc3abc47242e1703faa4579818"
# The pinhole field of view (across the width) whose z-depth the default model predicts from any lens, measured on
# its training scenes through 70-160° lenses (MODEL_CARD.md, "Lens correction"; SurgicalDepthLib.lens).
DEFAULT_MODEL_REFERENCE_FOV_DEG = 100.0
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")


def default_model_path() -> Path:
    """The shipped default model: package data of ``SurgicalDepthLib`` (``resources/``), the one copy in the
    repository, installed by pip (wheel and sdist) and by the Slicer extension's CMake alike."""
    from importlib.resources import files

    path = Path(str(files(__package__).joinpath("resources", DEFAULT_MODEL_FILE)))
    if not path.is_file():
        raise FileNotFoundError(f"the default model {DEFAULT_MODEL_FILE} is missing from {path.parent}: this "
                                "installation of SurgicalDepthLib is incomplete (reinstall the package)")
    return path


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> cuda, then mps, then cpu. An unavailable explicit device is an error; a ``torch.device`` is
    checked as its string form (``torch.device("cuda")`` as ``"cuda"``)."""
    if isinstance(device, torch.device):  # the index matters only for CUDA ("cpu:0" is "cpu")
        device = str(device) if device.type == "cuda" else device.type
    if device not in DEVICES and not str(device).startswith("cuda:"):
        raise ValueError(f"device={device!r} is not one of {DEVICES} (or cuda:N)")
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} requested but CUDA is not available")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device='mps' requested but MPS is not available")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> :func:`auto_precision` for ``device`` (a CUDA device's own compute capability, not the current
    device's); any other precision as given."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not one of {PRECISIONS}")
    if precision != "auto":
        return precision
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    return auto_precision(device.type, capability)


def auto_precision(device_type: str, cuda_capability: tuple[int, int] | None = None) -> str:
    """What ``precision="auto"`` means on a device: bf16 on CUDA GPUs of compute capability 8 or more (Ampere and
    later compute bf16 natively), fp16 on older ones (T4, V100, RTX 20xx: ``torch.cuda.is_bf16_supported()`` is
    True there too, but bf16 is emulated, slower and less precise) and on MPS; fp32 on the CPU."""
    if device_type == "cuda":
        return "bf16" if cuda_capability is not None and cuda_capability[0] >= 8 else "fp16"
    if device_type == "mps":
        return "fp16"
    return "fp32"


#: private torch.cpu probes (present in torch >= 2.3) of the instructions that make half precision fast on CPU
_CPU_HALF_PROBES = {"bf16": ("_is_avx512_bf16_supported", "_is_amx_tile_supported"),
                    "fp16": ("_is_amx_fp16_supported",)}


def cpu_computes_natively(precision: str) -> bool | None:
    """Whether this CPU has instructions for ``precision`` (bf16: AVX512-BF16 or AMX; fp16: AMX-FP16; fp32:
    always); None where this torch cannot tell. Without them, half precision is emulated and slower than fp32."""
    if precision == "fp32":
        return True
    probes = [getattr(torch.cpu, name, None) for name in _CPU_HALF_PROBES[precision]]
    if not any(probes):
        return None
    return any(bool(probe()) for probe in probes if probe is not None)


#: inference backends of ``load_model``: the PyTorch reference, the exported graph run by ONNX Runtime or OpenVINO
#: (:mod:`SurgicalDepthLib.backends`, optional extras), and ``auto`` (:func:`~SurgicalDepthLib.backends.choose_backend`)
BACKENDS = ("torch", "onnxruntime", "openvino", "auto")
#: keyword hints ``load_model`` understands (files that do not state their architecture fully)
HINTS = ("version", "head", "max_depth")


def check_hints(hints: dict[str, Any]) -> dict[str, Any]:
    """``hints`` of :func:`load_model` checked before any file is read (ValueError naming the bad one): ``version``
    one of ``VERSIONS``, ``head`` one of ``HEADS``, ``max_depth`` a positive finite number (returned as a float;
    a bool is no number here); None means not given."""
    for key, choices in (("version", VERSIONS), ("head", HEADS)):
        if hints.get(key) is not None and hints[key] not in choices:
            raise ValueError(f"{key}={hints[key]!r} is not one of {choices}")
    max_depth = hints.get("max_depth")
    if max_depth is None:
        return hints
    if isinstance(max_depth, bool) or not isinstance(max_depth, numbers.Real) or not 0 < max_depth < math.inf:
        raise ValueError(f"max_depth={max_depth!r} must be a positive finite number (the metric head's range)")
    return {**hints, "max_depth": float(max_depth)}


def load_model(source: str | os.PathLike = "default", *, device: str | torch.device = "auto",
               precision: str = "auto", backend: str = "torch", **hints: Any) -> DepthModel | CompiledDepthModel:
    """Load a Depth Anything model in eval mode on ``device``.

    Args:
        source: ``"default"`` (shipped model); a registry name (``depth-anything-v2-small|base|large``,
            ``depth-anything-v1-small|base|large``, ... read from the weight cache, see ``surgical-depth
            download``); ``"random:<registry name>"`` (random initialisation, for training from scratch and tests);
            a path to an official ``.pth``, a project checkpoint, or a Hugging Face folder; an ``.onnx`` or OpenVINO
            ``.xml`` file written by ``surgical-depth export`` (loads alone, with the backend its suffix names
            unless another is given).
        device: ``auto|cpu|cuda|cuda:N|mps`` (``auto`` or ``cpu`` for ONNX Runtime and OpenVINO).
        precision: ``auto|fp32|fp16|bf16`` (PyTorch: used by ``infer_*`` through autocast; OpenVINO: the inference
            precision; ONNX Runtime: the graph's precision).
        backend: ``"torch"`` (the reference implementation), ``"onnxruntime"``, ``"openvino"`` (the exported
            graph, with the same inference API: ``infer_image``, ``infer_batch``, ``iter_batches``), or ``"auto"``
            (OpenVINO bf16 on CPUs with AVX512-BF16 or AMX, PyTorch elsewhere; the choice and its reason are
            logged).
        hints: ``version="v1"|"v2"``, ``head="relative"|"metric"``, ``max_depth=`` for files that do not say.
    Returns:
        the model, its convolution weights in channels-last memory format (faster, see the end of this function):
        those tensors of ``model.state_dict()`` are not contiguous, which ``safetensors.torch.save_file`` refuses.
        Save with :func:`~SurgicalDepthLib.checkpoints.save_checkpoint` (or ``save_official``,
        ``save_huggingface``), which store contiguous copies, or pass
        ``{k: v.contiguous() for k, v in model.state_dict().items()}``.
    Raises:
        ValueError: an unknown backend or keyword (never silently ignored), a bad device, precision or hint
            (:func:`check_hints`); a backend whose runtime is not installed (``MissingBackendError``, naming
            the pip extra).
    """
    if backend not in BACKENDS:
        later = " (TensorRT is not built into this version)" if backend == "tensorrt" else ""
        raise ValueError(f"backend={backend!r} is not one of {BACKENDS}{later}")
    unknown = sorted(set(hints) - set(HINTS))
    if unknown:
        raise TypeError(f"load_model got unknown keyword argument(s) {unknown}; known: device, precision, backend, "
                        f"{', '.join(HINTS)}")
    hints = check_hints(hints)
    src = str(source)
    graph_backend = GRAPH_SUFFIXES.get(Path(src).suffix.lower()) if src not in MODEL_CONFIGS else None
    if backend == "auto":
        choice = choose_backend(resolve_device(device), precision)  # the CLI shows INFO: the choice and why
        logger.info("backend auto: %s%s (%s)", choice.backend, "" if choice.precision == "auto" else
                    f" {choice.precision}", choice.reason)
        backend, precision = choice.backend, choice.precision
    if graph_backend is not None and backend == "torch":
        backend = graph_backend  # an exported graph: run by the runtime its suffix names
    if backend != "torch":
        return load_backend(source, backend, device=device, precision=precision, **hints)
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    if src.startswith("random:"):  # a hint that contradicts the registry's architecture is an error, as for files
        config = agreeing_config(get_model_config(src[len("random:"):]), hints, src, "the registered model's")
        model = DepthModel(config)
        model.source = src
    else:
        if src == "default":
            path = default_model_path()
            digest = sha256_file(path)
            if digest != DEFAULT_MODEL_SHA256:
                raise ValueError(f"{path}: SHA256 {digest} is not the registered {DEFAULT_MODEL_SHA256} of the "
                                 "shipped default model (file modified or corrupt)")
        elif src in WEIGHTS:
            path = cached_path(src)
            known = agreeing_config(MODEL_CONFIGS[src], hints, src, "the registered model's")
            hints.update(version=known.version, head=known.head, max_depth=known.max_depth)
        elif src in MODEL_CONFIGS:
            raise FileNotFoundError(f"{src!r} has no downloadable weights; use 'random:{src}' for a random init")
        else:
            path = Path(src).expanduser()
        state, config = load_state_dict_file(path, **hints)
        if src == "default" and config.reference_fov_deg is None:
            config = dataclasses.replace(config, reference_fov_deg=DEFAULT_MODEL_REFERENCE_FOV_DEG)
        model = DepthModel(config)
        check_state_dict(model, state, str(path))
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True)
        model.source = str(path)
    model.precision = prec
    if dev.type == "cpu" and cpu_computes_natively(prec) is False:
        logger.warning("precision=%s: this CPU has no %s instructions, so it is emulated and slower than fp32", prec,
                    "AVX512-BF16/AMX" if prec == "bf16" else "AMX-FP16")
    logger.debug("loaded %s (%s %s) on %s, %s", model.source, model.config.encoder, model.config.version, dev, prec)
    # channels-last convolution weights: the DPT decoder's convolutions run ~10 % faster (oneDNN on CPU, cuDNN
    # on GPU); linear layers and the state-dict values are unaffected (checkpoints are saved contiguous)
    return model.to(dev).to(memory_format=torch.channels_last).eval()
