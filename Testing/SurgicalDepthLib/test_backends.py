"""Deployment backends (:mod:`SurgicalDepthLib.backends`, ``surgical-depth export``): the traced graph, ONNX Runtime and
OpenVINO against the PyTorch reference, exported files that load alone, ``depth_stream`` on each backend, and the
errors. Tests that need ``onnx``/``onnxruntime``/``openvino`` skip when the extra is not installed."""
from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_model import perturb_weights, textured, tiny_model

import SurgicalDepthLib as sd
from SurgicalDepthLib import backends, loading
from SurgicalDepthLib.backends import MissingBackendError, choose_backend, export_model, load_backend
from SurgicalDepthLib.cli import main as cli_main
from SurgicalDepthLib.configs import get_model_config
from SurgicalDepthLib.encoder import interpolate_pos_embed_official, interpolate_pos_embed_traceable
from SurgicalDepthLib.model import DepthModel

SIZE = 70  # network input lower bound for frames (multiple of 14): keeps the tiny model fast
#: network inputs (batch, h, w): the 37×37 pretraining grid (the official early return), non-square both ways
SHAPES = [(1, 518, 518), (1, 364, 518), (2, 98, 70)]
TOL = 1e-4  # of the reference output's range


def _close(out, ref, tol=TOL) -> float:
    out, ref = np.asarray(out), np.asarray(ref)
    assert out.shape == ref.shape
    err = float(np.abs(out - ref).max() / (ref.max() - ref.min()))
    assert err <= tol, err
    return err


@pytest.fixture(scope="module")
def model():
    return tiny_model().eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, model):
    from SurgicalDepthLib.checkpoints import save_checkpoint

    return save_checkpoint(tmp_path_factory.mktemp("model") / "tiny.safetensors", model)


@pytest.fixture(scope="module")
def onnx_file(checkpoint):
    pytest.importorskip("onnx")
    return export_model(checkpoint, checkpoint.with_name("tiny.onnx"), format="onnx")


@pytest.fixture(scope="module")
def xml_file(checkpoint):
    pytest.importorskip("onnx")
    pytest.importorskip("openvino")
    return export_model(checkpoint, checkpoint.with_name("tiny.xml"), format="openvino")


@pytest.fixture(scope="module")
def ort_model(model):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    return load_backend(model, "onnxruntime")


@pytest.fixture(scope="module")
def ov_model(model):
    pytest.importorskip("onnx")
    pytest.importorskip("openvino")
    return load_backend(model, "openvino", precision="fp32")


def _reference(model, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(x).numpy()


@pytest.fixture(scope="module")
def references(model) -> list[tuple[torch.Tensor, np.ndarray]]:
    """``(input, torch output)`` per entry of :data:`SHAPES` (computed once: the 518×518 forward takes ~1 s)."""
    torch.manual_seed(1)
    inputs = [torch.randn(n, 3, h, w) for n, h, w in SHAPES]
    return [(x, _reference(model, x)) for x in inputs]


# -- the traced graph ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("grid", [(37, 37), (26, 37), (37, 66), (38, 38), (1, 1), (74, 131)])
def test_pos_embed_in_graph_equals_official(grid):
    """Bug: ONNX export failed at non-square sizes (``upsample_bicubic2d`` got tensor scale factors); the traced
    replacement must be the official formula (scale (grid + 0.1) / 37, identity at 37×37), not a size-based one."""
    torch.manual_seed(0)
    pe = torch.randn(1, 1 + 37 * 37, 32)
    ref = interpolate_pos_embed_official(pe, *grid)
    for gh, gw in (grid, tuple(torch.tensor(g) for g in grid)):  # ints, and 0-d tensors as while tracing
        out = interpolate_pos_embed_traceable(pe, gh, gw, 37, 0.1)
        assert out.shape == ref.shape
        assert float((out - ref).abs().max()) <= 1e-5 * float(ref.abs().max())
    if grid == (37, 37):
        assert torch.equal(interpolate_pos_embed_traceable(pe, 37, 37, 37, 0.1), pe)


def test_traced_model_generalises_to_other_sizes(model, references):
    """Bug: the traced graph baked the example's patch grid (or its square/non-square branch) into the position
    embedding, so other input sizes gave wrong depth. Traced at 5×7 patches, run at 37×37 and 7×5."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, torch.randn(1, 3, 70, 98), check_trace=False)
    for x, ref in (references[0], references[2]):
        with torch.no_grad():
            _close(traced(x).numpy(), ref)


# -- ONNX Runtime and OpenVINO against PyTorch ------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["ort_model", "ov_model"])
def test_fp32_backends_match_torch(which, model, references, request):
    """Bug: an exported graph that differs from ``DepthModel.forward`` (wrong pos-embed formula, size baked in,
    weights compressed to fp16 by OpenVINO's default) at square or non-square sizes, batch > 1."""
    compiled = request.getfixturevalue(which)
    assert compiled.precision == "fp32" and compiled.config == model.config
    for x, ref in references:
        _close(compiled(x).numpy(), ref)


def test_openvino_by_name_at_auto_precision_is_fp32_even_on_a_bf16_cpu(checkpoint, model, references, monkeypatch):
    """Bug caught: ``load_model(src, backend="openvino")`` at the default ``precision="auto"`` computing in bf16 on
    a CPU with AVX512-BF16/AMX (1e-2 off PyTorch), where the contract says auto means fp32 on the CPU; bf16 is for
    ``precision="bf16"`` or ``backend="auto"``, which says so."""
    pytest.importorskip("onnx")
    pytest.importorskip("openvino")
    monkeypatch.setattr(loading, "cpu_computes_natively", lambda precision: True)
    compiled = sd.load_model(checkpoint, backend="openvino", device="cpu")
    assert compiled.precision == "fp32"
    x, ref = references[0]
    _close(compiled(x).numpy(), ref)


def test_openvino_compiles_once_per_shape(ov_model):
    """Bug: recompiling for every frame (seconds each), or an unbounded cache of compiled shapes."""
    ov_model.cache_size = 2
    for shape in [(1, 3, 70, 98), (1, 3, 70, 98), (1, 3, 98, 70), (1, 3, 84, 84)]:
        ov_model(np.zeros(shape, np.float32))
    assert ov_model.compiled_shapes == [(1, 3, 98, 70), (1, 3, 84, 84)]


def test_frame_api_matches_torch(ort_model, ov_model, model):
    """Bugs: a backend with its own preprocessing or output resize (the official ones are shared with
    ``DepthModel``): ``infer_image``/``infer_batch`` must give the torch numbers at the frame size; a compiled graph
    fixed to one input shape, so that the detail read's second, larger read fails."""
    frames = [textured(60, 90, i) for i in range(3)]
    ref = model.infer_batch(frames, SIZE)
    detailed = model.infer_image(frames[0], SIZE, detail_size=SIZE + 28)
    for compiled in (ort_model, ov_model):
        _close(compiled.infer_image(frames[0], SIZE, detail_size=SIZE + 28), detailed)
        _close(compiled.infer_image(frames[0], SIZE), ref[0])
        _close(compiled.infer_batch(frames, SIZE, batch_size=2), ref)
        assert compiled.output_kind == "disparity" and compiled.depth_unit == "relative"
        assert compiled.device.type == "cpu" and compiled.default_batch_size == 1


def test_backend_resizes_a_v1_prediction_as_torch_does():
    """Bug: a backend resizing every prediction to the frame the V2 way (``align_corners=True``), while V1 models
    (V1's ``run.py``: ``False``) are resized otherwise in torch: the ONNX graph of a V1 model must give torch's
    ``infer_image`` numbers at the frame size."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    config = dataclasses.replace(get_model_config("surgical-depth-tiny"), version="v1",
                                 intermediate_layers=(8, 9, 10, 11))
    torch.manual_seed(3)
    v1 = perturb_weights(DepthModel(config).eval())
    frame = textured(45, 100, 0)
    _close(load_backend(v1, "onnxruntime").infer_image(frame, SIZE), v1.infer_image(frame, SIZE))


def test_depth_stream_on_each_backend_equals_torch(ort_model, ov_model, model):
    """Bug: ``depth_stream`` relying on torch-only attributes of the model, or a backend's predictions drifting
    from the reference: the stream's predictions and depth maps must match the torch stream."""
    frames = [textured(48, 64, i) for i in range(4)]
    ref = list(sd.depth_stream(model, frames, input_size=SIZE, stride=2))
    for compiled in (ort_model, ov_model):
        out = list(sd.depth_stream(compiled, frames, input_size=SIZE, stride=2))
        assert [f.index for f in out] == [f.index for f in ref] == [0, 2]
        for a, b in zip(out, ref, strict=True):
            _close(a.prediction, b.prediction)
            np.testing.assert_allclose(a.depth_mm, b.depth_mm, rtol=1e-3, atol=1e-3, equal_nan=True)


# -- exported files ---------------------------------------------------------------------------------------------------
def test_onnx_file_round_trip(onnx_file, checkpoint, model, references):
    """Bug: an exported file that does not load alone (metadata missing or unread) or loads as another model, or
    that names as its source the weights it was exported from (a path on the exporting machine: predict and
    predictions.json named a file that did not run) instead of itself."""
    import onnx

    props = {p.key: p.value for p in onnx.load(str(onnx_file)).metadata_props}
    assert props["surgical_depth.output_kind"] == "disparity" and props["surgical_depth.depth_unit"] == "relative"
    assert props["surgical_depth.input_size"] == "518" and props["surgical_depth.precision"] == "fp32"
    assert props["surgical_depth.source"] == str(checkpoint)
    assert props["surgical_depth.output_resize"].endswith("align_corners=true")
    assert sd.ModelConfig.from_dict(json.loads(props["surgical_depth.config"])) == model.config
    pytest.importorskip("onnxruntime")
    loaded = sd.load_model(onnx_file)  # backend from the suffix
    assert loaded.backend == "onnxruntime" and loaded.config == model.config and loaded.source == str(onnx_file)
    assert loaded.exported_from == str(checkpoint)
    x, ref = references[1]
    _close(loaded(x).numpy(), ref)


@pytest.mark.parametrize("version, corners", [("v2", "true"), ("v1", "false")])
def test_metadata_says_how_the_output_is_resized(version, corners):
    """Catches a graph whose metadata gave a program deploying it without this project no way to resize the output
    to the frame as ``infer_image`` does: V1 and V2 differ (``align_corners``), and only the input side was
    described."""
    from SurgicalDepthLib.backends._metadata import graph_metadata

    config = dataclasses.replace(get_model_config("surgical-depth-tiny"), version=version)
    assert graph_metadata(config, "x", "fp32")["output_resize"] == (
        f"bilinear to the frame's H x W, align_corners={corners}")


def test_openvino_file_round_trip(xml_file, checkpoint, model, references):
    """Bug: OpenVINO IR written without the metadata, with fp16-compressed weights in fp32, or an .xml whose .bin
    is not found after the atomic rename."""
    import openvino as ov

    ir = ov.Core().read_model(str(xml_file))
    assert ir.get_rt_info(["surgical_depth", "output_kind"]).astype(str) == "disparity"
    assert ir.get_rt_info(["surgical_depth", "source"]).astype(str) == str(checkpoint)
    assert xml_file.with_suffix(".bin").is_file()
    assert not [p for p in xml_file.parent.iterdir() if p.name.startswith(".")]  # no temporary files left
    loaded = sd.load_model(xml_file)
    assert loaded.backend == "openvino" and loaded.config == model.config and loaded.precision == "fp32"
    assert loaded.source == str(xml_file) and loaded.exported_from == str(checkpoint)
    x, ref = references[2]
    _close(loaded(x).numpy(), ref)
    if loading.cpu_computes_natively("bf16"):
        fast = sd.load_model(xml_file, precision="bf16")
        _close(fast(x).numpy(), ref, 0.05)
        assert fast.precision == "bf16"


def test_export_refuses_overwrite_and_cleans_up(onnx_file, tmp_path, monkeypatch):
    """Bug: an existing file replaced without --overwrite, an input overwritten, or a half-written file left
    behind by a failed export."""
    ov = pytest.importorskip("openvino")
    out = tmp_path / "m.xml"
    export_model(onnx_file, out, format="openvino")
    with pytest.raises(FileExistsError, match="exists; pass --overwrite"):
        export_model(onnx_file, out, format="openvino")
    export_model(onnx_file, out, format="openvino", precision="bf16", overwrite=True)
    assert sd.load_model(out, precision="fp32").precision == "fp32"
    with pytest.raises(FileExistsError, match="is the input"):
        export_model(onnx_file, onnx_file, format="onnx", overwrite=True)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ov, "save_model", broken)
    with pytest.raises(OSError, match="disk full"):
        export_model(onnx_file, tmp_path / "new.xml", format="openvino")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.xml"]


def test_openvino_pair_is_written_whole_or_not_at_all(onnx_file, checkpoint, tmp_path, monkeypatch):
    """Catches an upper-case ``.XML`` output that crashed OpenVINO's writer (a traceback: its temporary file kept
    the caller's suffix), a failed ``.xml`` rename that left a new ``.bin`` beside the old ``.xml`` (a mismatched
    pair) or alone, and an output name that is a folder found only after the conversion."""
    pytest.importorskip("openvino")
    from SurgicalDepthLib import atomic_io

    upper = export_model(onnx_file, tmp_path / "UP.XML", format="openvino")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["UP.XML", "UP.bin"]
    x = np.full((42, 56, 3), 120, np.uint8)
    np.testing.assert_allclose(sd.load_model(upper).infer_image(x), sd.load_model(onnx_file).infer_image(x),
                               rtol=1e-4, atol=1e-5)
    old = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real_replace, calls = atomic_io.os.replace, []

    def second_rename_fails(src, dst):  # the .bin goes in, then the .xml rename fails
        calls.append(Path(dst).name)
        if Path(dst).name == "UP.XML" and Path(src).name.endswith(".xml"):
            raise OSError("rename failed")
        return real_replace(src, dst)

    monkeypatch.setattr(atomic_io.os, "replace", second_rename_fails)
    with pytest.raises(OSError, match="rename failed"):
        export_model(onnx_file, upper, format="openvino", precision="fp16", overwrite=True)
    monkeypatch.undo()
    assert "UP.bin" in calls and {p.name: p.read_bytes() for p in tmp_path.iterdir()} == old  # the old pair
    (tmp_path / "dir.xml").mkdir()
    with pytest.raises(FileExistsError, match="is not a file"):
        export_model(checkpoint, tmp_path / "dir.xml", format="openvino", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["UP.XML", "UP.bin", "dir.xml"]


def test_a_graph_keeps_its_precision_when_converted(checkpoint, tmp_path):
    """Catches an fp16 ONNX graph converted to OpenVINO and recorded as fp32 (its fp16 weights and casts stay: it
    computed in fp16 while its metadata, the CLI and ``load_model`` said fp32), and a precision ONNX Runtime
    cannot give answered with advice that cannot work (re-export in bf16) or none at all (int8)."""
    pytest.importorskip("openvino")
    pytest.importorskip("onnxruntime")
    half = export_model(checkpoint, tmp_path / "half.onnx", format="onnx", precision="fp16")
    with pytest.raises(ValueError, match="is an fp16 graph: converted, it computes in fp16"):
        export_model(half, tmp_path / "half.xml", format="openvino")
    assert export_model(half, tmp_path / "half.xml", format="openvino", precision="fp16").is_file()
    assert sd.load_model(tmp_path / "half.xml").precision == "fp16"
    with pytest.raises(ValueError, match=r"precision='int8' is not one of"):
        sd.load_model(half, backend="onnxruntime", precision="int8")
    with pytest.raises(ValueError, match=r"cannot be given \(use backend='openvino'") as bf16:
        sd.load_model(half, backend="onnxruntime", precision="bf16")
    assert "--precision bf16" not in str(bf16.value)


def test_cli_export_subprocess(checkpoint, model, references, tmp_path, capsys):
    """Bug: the ``export`` command not registered, or failing outside the test process (imports, entry point)."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    out = tmp_path / "cli.onnx"
    command = [sys.executable, "-m", "SurgicalDepthLib.cli", "export", str(checkpoint), "--format", "onnx",
               "--precision", "fp16", "--output", str(out), "--progress", "jsonl"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1].startswith('{"event": "done"')
    loaded = sd.load_model(out)
    assert loaded.precision == "fp16" and loaded.config == model.config
    x, ref = references[2]
    _close(loaded(x).numpy(), ref, 1e-2)  # fp16 weights and computation
    assert cli_main(command[3:]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err


# -- bad inputs -----------------------------------------------------------------------------------------------------
def test_bad_inputs(checkpoint, tmp_path, capsys):
    """Bug: unknown formats, backends, precisions, devices or suffixes accepted or failing with a traceback."""
    with pytest.raises(ValueError, match=r"format='tflite' is not one of \('onnx', 'openvino'\)"):
        export_model(checkpoint, tmp_path / "m.tflite", format="tflite")
    with pytest.raises(ValueError, match=r"written to a \.xml file, got 'm\.onnx'"):
        export_model(checkpoint, tmp_path / "m.onnx", format="openvino")
    with pytest.raises(ValueError, match="bf16: use --format openvino"):
        export_model(checkpoint, tmp_path / "m.onnx", format="onnx", precision="bf16")
    with pytest.raises(ValueError, match="TensorRT is not built into this version"):
        sd.load_model(checkpoint, backend="tensorrt")
    with pytest.raises(ValueError, match="runs on the CPU in this version"):
        sd.load_model(checkpoint, backend="onnxruntime", device="cuda")
    assert cli_main(["export", str(checkpoint), "--format", "tflite", "--output", str(tmp_path / "x")]) == 2
    assert "invalid choice: 'tflite'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_export_never_replaces_a_weight_file_of_the_input_folder(model, tmp_path):
    """Catches ``export HF_FOLDER --format openvino --output HF_FOLDER/pytorch_model.xml --overwrite`` writing the
    IR's weights over the folder's own ``pytorch_model.bin`` (the input; only the source path itself was compared),
    leaving a Hugging Face folder that no longer loads."""
    pytest.importorskip("openvino")
    from safetensors.torch import load_file

    folder = sd.save_huggingface(tmp_path / "hf", model)
    torch.save(load_file(str(folder / "model.safetensors")), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    weights = (folder / "pytorch_model.bin").read_bytes()
    with pytest.raises(FileExistsError, match=r"pytorch_model\.bin is a file in the input folder .*never overwrite"):
        export_model(folder, folder / "pytorch_model.xml", format="openvino", overwrite=True)
    assert (folder / "pytorch_model.bin").read_bytes() == weights
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "pytorch_model.bin"]


def test_hints_with_a_model_object_are_refused(model, tmp_path):
    """Catches ``export_model(model, ..., version="v1")`` and ``load_backend(model, ..., max_depth=5)`` ignoring the
    hints silently (the graph stayed V2 / relative, its metadata said so, and nothing told the caller)."""
    pytest.importorskip("onnx")
    with pytest.raises(ValueError, match=r"hints \['version'\] apply to weight files, not to a model object"):
        export_model(model, tmp_path / "m.onnx", format="onnx", version="v1")
    pytest.importorskip("onnxruntime")
    with pytest.raises(ValueError, match=r"hints \['max_depth'\] apply to weight files"):
        load_backend(model, "onnxruntime", max_depth=5.0)
    assert not list(tmp_path.iterdir())


def test_graph_file_errors(onnx_file, tmp_path):
    """Bug: a foreign ONNX file (no metadata) run with guessed preprocessing, hints silently ignored, or a graph
    asked for a precision ONNX Runtime cannot give it."""
    import onnx
    from onnx import TensorProto, helper

    pytest.importorskip("onnxruntime")
    node = helper.make_node("Relu", ["image"], ["depth"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("depth", TensorProto.FLOAT, [1])])
    foreign = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph), str(foreign))
    with pytest.raises(ValueError, match="has no SurgicalDepth metadata"):
        sd.load_model(foreign)
    with pytest.raises(ValueError, match="hints"):
        sd.load_model(onnx_file, version="v1")
    with pytest.raises(ValueError, match="is an fp32 graph"):
        sd.load_model(onnx_file, precision="fp16")
    with pytest.raises(ValueError, match="reads .onnx files"):
        sd.load_model(tmp_path / "m.xml", backend="onnxruntime")


@pytest.mark.parametrize("runtime, model, command", [
    ("onnxruntime", "fake.onnx", "predict"), ("openvino", "fake.xml", "predict"), ("openvino", "fake.onnx", "export")])
def test_cli_unreadable_graph_file_is_one_line(runtime, model, command, tmp_path):
    """Catches: a text file given as an .onnx / OpenVINO .xml model (or converted by ``export``) ending in the
    runtime's traceback with exit code 1 instead of one line naming the file."""
    pytest.importorskip(runtime)
    import cv2

    (tmp_path / model).write_text("not a model\n")
    (tmp_path / "fake.bin").write_text("not weights\n")
    cv2.imwrite(str(tmp_path / "good.png"), textured(42, 56, 0))
    out = tmp_path / ("out.xml" if command == "export" else "out")
    if command == "export":
        args = ["export", model, "--format", "openvino"]
    else:
        args = ["predict", "good.png", "--model", model]
    run = subprocess.run([sys.executable, "-m", "SurgicalDepthLib.cli", *args, "--output", str(out),
                          "--progress", "none"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr  # nor parse errors logged by other frontends
    assert f"error: {model}: not a readable" in run.stderr
    assert not out.exists() and not out.with_suffix(".bin").exists()


def test_truncated_openvino_ir_names_the_file_and_reason(tmp_path):
    """Catches: an IR file that OpenVINO recognises but cannot parse raising OpenVINO's multi-line RuntimeError (a
    traceback in the CLI) instead of a ValueError naming the file and OpenVINO's reason."""
    ov = pytest.importorskip("openvino")
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from SurgicalDepthLib.backends.openvino_model import ov_from_onnx

    node = helper.make_node("Relu", ["image"], ["depth"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("depth", TensorProto.FLOAT, [1])])
    xml = tmp_path / "cut.xml"
    ov.save_model(ov_from_onnx(helper.make_model(graph).SerializeToString()), str(xml))
    xml.write_bytes(xml.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"cut\.xml: not a readable OpenVINO IR model: [^\n]* at offset") as info:
        sd.load_model(xml)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("module, extra", [("openvino", "openvino"), ("onnxruntime", "onnx")])
def test_missing_extra_names_the_pip_extra(module, extra, checkpoint, tmp_path, monkeypatch, capsys):
    """Bug: a missing optional runtime surfacing as a bare ImportError traceback instead of one line naming the
    extra to install."""
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(MissingBackendError, match=rf"pip install 'surgical-depth\[{extra}\]'"):
        sd.load_model(checkpoint, backend=module)
    if module == "openvino":
        assert cli_main(["export", str(checkpoint), "--format", "openvino", "--output", str(tmp_path / "m.xml"),
                         "--progress", "none"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "surgical-depth[openvino]" in err[0]


def test_auto_backend_choice_and_reason(checkpoint, monkeypatch, caplog):
    """Bug: ``backend="auto"`` picking OpenVINO where it is slower (no AVX512-BF16/AMX, a GPU, fp32 asked) or not
    installed, or not saying why."""
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(loading, "cpu_computes_natively", lambda precision: False)
    assert choose_backend(cpu).backend == "torch" and "no AVX512-BF16 or AMX" in choose_backend(cpu).reason
    with caplog.at_level(logging.INFO, logger="SurgicalDepthLib.loading"):
        chosen = sd.load_model(checkpoint, backend="auto", device="cpu")
    assert isinstance(chosen, sd.DepthModel) and "backend auto: torch" in caplog.text
    monkeypatch.setattr(loading, "cpu_computes_natively", lambda precision: True)
    assert choose_backend(gpu).backend == "torch"
    assert choose_backend(cpu, "fp32").backend == "torch"
    monkeypatch.setattr(backends, "available", lambda module: False)
    assert "openvino and onnx are not installed" in choose_backend(cpu).reason
    monkeypatch.setattr(backends, "available", lambda module: module != "onnx")  # OpenVINO exports through onnx
    assert choose_backend(cpu).backend == "torch" and "but onnx is not installed" in choose_backend(cpu).reason
    monkeypatch.setattr(backends, "available", lambda module: True)
    assert choose_backend(cpu) == backends.BackendChoice("openvino", "bf16", choose_backend(cpu).reason)


AUTO_CASES = [  # device type, precision, AVX512-BF16/AMX, missing packages -> backend, precision, reason
    ("cuda", "auto", True, (), "torch", "auto", "runs on the CUDA GPU"),
    ("mps", "fp16", None, (), "torch", "fp16", "runs on the Apple MPS GPU"),
    ("cpu", "auto", None, (), "torch", "auto", "cannot tell whether the CPU has AVX512-BF16 or AMX"),
    ("cpu", "auto", False, (), "torch", "auto", "this CPU has no AVX512-BF16 or AMX"),
    ("cpu", "fp32", True, (), "torch", "fp32", "precision fp32 was asked for; OpenVINO is faster only in bf16"),
    ("cpu", "auto", True, ("openvino", "onnx"), "torch", "auto",
     "this CPU has AVX512-BF16 or AMX, but openvino and onnx are not installed (pip install "
     "'surgical-depth[openvino]')"),
    ("cpu", "bf16", True, ("onnx",), "torch", "bf16", "but onnx is not installed"),
    ("cpu", "auto", True, (), "openvino", "bf16", "this CPU has AVX512-BF16 or AMX and OpenVINO is installed"),
    ("cpu", "bf16", True, (), "openvino", "bf16", "and OpenVINO is installed"),
]


@pytest.mark.parametrize("device,precision,cpu_bf16,missing,backend,chosen_precision,reason", AUTO_CASES)
def test_decide_backend_says_why(device, precision, cpu_bf16, missing, backend, chosen_precision, reason):
    """Bug: ``auto`` picking OpenVINO on a GPU, on a CPU without AVX512-BF16/AMX (or that cannot tell), for fp32, or
    without openvino/onnx installed; or a reason that does not name the fact (and the package to install)."""
    choice = backends.decide_backend(device, precision, cpu_bf16=cpu_bf16, openvino_missing=missing)
    assert (choice.backend, choice.precision) == (backend, chosen_precision)
    assert reason in choice.reason and not choice.reason.startswith(("PyTorch", "OpenVINO"))  # the name is shown apart


@pytest.mark.parametrize("command", ["predict", "reconstruct"])
def test_cli_logs_the_auto_choice_and_reason(command, checkpoint, tmp_path, monkeypatch, caplog):
    """Bug: ``--backend auto`` choosing silently: predict and reconstruct log the backend and why at INFO (shown by
    the CLI)."""
    import cv2

    monkeypatch.setattr(loading, "cpu_computes_natively", lambda precision: False)  # this CPU: no AVX512-BF16/AMX
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "0.png"), textured(42, 56, 0))
    extra = ["--intrinsics", "50,50,27.5,20.5"] if command == "reconstruct" else []
    with caplog.at_level(logging.INFO, logger="SurgicalDepthLib.loading"):
        assert cli_main([command, str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--model", str(checkpoint),
                         "--input-size", str(SIZE), "--backend", "auto", "--progress", "none", *extra]) == 0
    assert "backend auto: torch (this CPU has no AVX512-BF16 or AMX" in caplog.text


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_predict_and_reconstruct_cli_backend(backend, checkpoint, tmp_path):
    """Bug: ``--backend`` not passed from predict/reconstruct to ``load_model`` (silently PyTorch), or the
    backend's maps differing from the reference run's."""
    pytest.importorskip("onnx")
    pytest.importorskip(backend)
    import cv2
    from tiny_model import textured

    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(2):
        cv2.imwrite(str(folder / f"{i}.png"), textured(42, 56, i))
    common = ["--model", str(checkpoint), "--input-size", str(SIZE), "--fov-mask", "none", "--progress", "none"]
    assert cli_main(["predict", str(folder), "--output", str(tmp_path / "torch"), *common]) == 0
    assert cli_main(["predict", str(folder), "--output", str(tmp_path / backend), "--backend", backend,
                     "--precision", "fp32", *common]) == 0  # OpenVINO's own default on this CPU would be bf16
    for i in range(2):
        ref = sd.load_depth(tmp_path / "torch" / f"{i}_depth.npy")
        _close(sd.load_depth(tmp_path / backend / f"{i}_depth.npy"), ref, 1e-3)
    assert cli_main(["reconstruct", str(folder), "--output", str(tmp_path / "rec"), "--backend", backend,
                     "--intrinsics", "50,50,27.5,20.5", *common]) == 0
    assert sd.load_mesh(tmp_path / "rec" / "points_000001.ply").GetNumberOfPoints() == 42 * 56


def test_an_interrupt_openvino_rethrows_as_runtime_error_is_an_interrupt_again():
    """OpenVINO's C++ frontend catches the KeyboardInterrupt that Ctrl-C / SIGTERM raises in its Python callback
    during ``convert_model`` and throws a RuntimeError naming it. Catches: ``export --format openvino`` (and
    ``--backend openvino``) interrupted there ending with exit 1 and a 61-line traceback instead of exit 130."""
    from SurgicalDepthLib.backends.openvino_model import _reraise_interrupt

    wrapped = RuntimeError("Check 'false' failed at src/frontends/common/src/frontend.cpp:53:\n"
                           "Converting input model\nKeyboardInterrupt: ")
    with pytest.raises(KeyboardInterrupt):
        _reraise_interrupt(wrapped)
    assert _reraise_interrupt(RuntimeError("Converting input model\nunsupported operation")) is None


# -- edge inputs, messages, the shipped default model -----------------------------------------------------------------
def test_empty_batch_and_empty_sides_as_torch(onnx_file, xml_file, model):
    """Catches ``forward`` on an empty batch ``[0, 3, h, w]`` crashing the process in OpenVINO (segfault) and
    raising ONNX Runtime's own ``Fail``, where ``DepthModel.forward`` returns ``[0, h, w]``; and a 0-pixel side
    ending in each runtime's kernel error instead of a ValueError. In a subprocess: a crash would end pytest."""
    with torch.no_grad():
        assert tuple(model(torch.zeros(0, 3, 28, 42)).shape) == (0, 28, 42)
    code = ("import sys, torch, SurgicalDepthLib as sd\n"
            "for path in sys.argv[1:]:\n"
            "    m = sd.load_model(path)\n"
            "    print(m.backend, tuple(m(torch.zeros(0, 3, 28, 42)).shape), flush=True)\n"
            "    try:\n"
            "        m(torch.zeros(1, 3, 28, 0))\n"
            "    except ValueError as exc:\n"
            "        print(m.backend, exc, flush=True)\n")
    pytest.importorskip("onnxruntime")
    run = subprocess.run([sys.executable, "-c", code, str(onnx_file), str(xml_file)], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.splitlines() == [
        "onnxruntime (0, 28, 42)", "onnxruntime input height and width must be positive, got 28x0",
        "openvino (0, 28, 42)", "openvino input height and width must be positive, got 28x0"]


#: OpenVINO's RuntimeError for a KeyboardInterrupt raised in its Python callback during ``convert_model`` (seen
#: with SIGINT during ``export --format openvino``): the interrupt's line, then the Python stack
_WRAPPED = ("Check 'false' failed at src/frontends/common/src/frontend.cpp:53:\nConverting input model\n"
            "KeyboardInterrupt: {}\n\nAt:\n  /usr/lib/python3.11/concurrent/futures/thread.py(162): submit\n"
            "  <frozen runpy>(198): _run_module_as_main\n\n")


@pytest.mark.parametrize("message, expected", [("<EMPTY MESSAGE>", ""), ("SIGTERM", "SIGTERM")])
def test_an_interrupt_openvino_rethrows_keeps_its_own_message(message, expected):
    """Catches ``export --format openvino`` stopped by SIGTERM during the conversion printing ``surgical-depth:
    interrupted (  <frozen runpy>(198): _run_module_as_main)``: the last line of OpenVINO's message (its Python
    stack) was taken as the interrupt's message, instead of the text after ``KeyboardInterrupt:``."""
    from SurgicalDepthLib.backends.openvino_model import _reraise_interrupt

    with pytest.raises(KeyboardInterrupt) as info:
        _reraise_interrupt(RuntimeError(_WRAPPED.format(message)))
    assert str(info.value) == expected


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "SurgicalDepthLib.cli", *args, "--progress", "none"],
                          capture_output=True, text=True, timeout=120, cwd=cwd)


def test_export_onto_a_folder_says_so_without_overwrite(checkpoint, tmp_path):
    """Catches ``export ... --output NAME.onnx`` where NAME.onnx is a folder answering "exists; pass --overwrite",
    advice that cannot work (with it the export then refused the folder): the one line names the folder."""
    (tmp_path / "dir.onnx").mkdir()
    run = _cli("export", str(checkpoint), "--format", "onnx", "--output", str(tmp_path / "dir.onnx"))
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert "dir.onnx exists and is not a file" in run.stderr and "--overwrite" not in run.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["dir.onnx"] and not list((tmp_path / "dir.onnx").iterdir())


def test_onnxruntime_in_bf16_names_the_backend_that_has_it(checkpoint, tmp_path):
    """Catches ``predict --backend onnxruntime --precision bf16`` (and ``load_model(..., backend="onnxruntime",
    precision="bf16")``) answered with the exporter's advice ``use --format openvino``, a flag predict does not
    have: the line names ``backend='openvino'``."""
    pytest.importorskip("onnxruntime")
    import cv2

    cv2.imwrite(str(tmp_path / "a.png"), textured(42, 56, 0))
    run = _cli("predict", "a.png", "--model", str(checkpoint), "--backend", "onnxruntime", "--precision", "bf16",
               "--output", "out", cwd=tmp_path)
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert "precision='bf16' (bf16: use backend='openvino')" in run.stderr and "--format" not in run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_shipped_default_model_through_each_format(tmp_path):
    """Guards the shipped default model (the others here are random): its reference lens (100°, added at load, not
    in its weight file) and input size (182) must survive export so that ``depth_stream`` with intrinsics gives
    torch's depth_mm; frames not multiples of 14, portrait, one pixel high agree with torch (fp32 to 1e-5, fp16 to
    the documented 2e-3 of the output range) and a grey frame is refused with torch's message."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    torch_model = sd.load_model("default", device="cpu")
    files = {"onnx": export_model("default", tmp_path / "d.onnx", format="onnx"),
             "openvino": export_model("default", tmp_path / "d.xml", format="openvino"),
             "fp16": export_model("default", tmp_path / "h.onnx", format="onnx", precision="fp16")}
    frames = [textured(45, 70, 0), textured(97, 41, 1), textured(1, 6, 2)]
    intrinsics = sd.Intrinsics(20.0, 20.0, 34.5, 22.0, 70, 45)  # 120° across: wider than the reference, corrected
    ref = list(sd.depth_stream(torch_model, frames[:1] * 2, intrinsics=intrinsics, fov_mask=None))
    raw = next(sd.depth_stream(torch_model, frames[:1], fov_mask=None))
    assert np.nanmax(np.abs(ref[0].depth_mm / raw.depth_mm - 1)) > 0.1  # the lens correction is in effect
    for name, path in files.items():
        loaded = sd.load_model(path)
        assert loaded.config == torch_model.config and loaded.config.reference_fov_deg == 100.0
        assert loaded.config.input_size == 182 and loaded.exported_from == torch_model.source
        tol = 2e-3 if name == "fp16" else 1e-5
        for rgb in frames:
            _close(loaded.infer_image(rgb), torch_model.infer_image(rgb), tol)
        out = list(sd.depth_stream(loaded, frames[:1] * 2, intrinsics=intrinsics, fov_mask=None))
        for a, b in zip(out, ref, strict=True):
            np.testing.assert_allclose(a.depth_mm, b.depth_mm, rtol=5 * tol, equal_nan=True)
        with pytest.raises(ValueError, match=r"rgb must be an RGB image \[H, W, 3\], got shape \(8, 8\)"):
            loaded.infer_image(np.zeros((8, 8), np.uint8))
