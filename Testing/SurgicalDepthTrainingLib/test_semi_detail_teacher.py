"""The detail-read teacher (``TrainConfig.teacher_detail_size``, :class:`SurgicalDepthTrainingLib.semi.
DetailReadTeacher`): pseudo-labels that are the detail read of inference, so a student learns to see in one read
what the teacher sees in two."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from SurgicalDepthLib.preprocess import preprocess
from SurgicalDepthTrainingLib.semi import DetailReadTeacher, build_semi_term
from SurgicalDepthTrainingLib.training import TrainConfig
from tiny_model import textured, tiny_model

FRAME_H, FRAME_W, READ, DETAIL = 42, 56, 42, 70  # a frame at the network size of a read at 42


def test_detail_read_teacher_labels_what_the_detail_read_infers():
    """Catches a teacher that skips the second read or merges the reads the wrong way round (layout of the fine
    read), one that enlarges the view to another size than inference does, or a merge against a prediction left
    at the enlarged size: its pseudo-labels must be ``infer_image(frame, detail_size=)`` of the same frame."""
    model = tiny_model(3)
    rgb = textured(FRAME_H, FRAME_W, 5)
    view = torch.from_numpy(preprocess(rgb, READ, model.config.mean, model.config.std))[None]
    assert view.shape[-2:] == (FRAME_H, FRAME_W)
    with torch.no_grad():
        label = DetailReadTeacher(model, DETAIL)(view)
    assert label.shape == (1, FRAME_H, FRAME_W) and label.dtype == torch.float32
    detailed = model.infer_image(rgb, READ, detail_size=DETAIL)
    one_read = model.infer_image(rgb, READ)
    scale = float(np.abs(detailed).mean())
    gap = float(np.abs(label[0].numpy() - detailed).max()) / scale
    assert gap < 1e-3, gap  # OpenCV's and PyTorch's bicubic kernels differ by rounding only
    assert float(np.abs(one_read - detailed).max()) / scale > 20 * max(gap, 1e-4)  # the second read matters here


def test_training_config_builds_the_detail_read_teacher(tmp_path):
    """Catches ``teacher_detail_size`` accepted but ignored (the one-read teacher used), and a detail teacher
    whose frozen feature encoder is no longer the start model's."""
    student = tiny_model(2)
    frames = [{"image": textured(48, 48, k)} for k in range(3)]
    cfg = TrainConfig(output=str(tmp_path / "o"), input_size=(28, 28), batch_size=2, unlabeled_root=str(tmp_path),
                      teacher_detail_size=42)
    term = build_semi_term(cfg, student, frames, (28, 28), torch.device("cpu"))
    assert isinstance(term.teacher, DetailReadTeacher) and term.teacher.detail_size == 42
    for mine, start in zip(term.frozen.state_dict().values(), student.pretrained.state_dict().values()):
        assert torch.equal(mine, start)
    plain = build_semi_term(TrainConfig(output=str(tmp_path / "p"), input_size=(28, 28), unlabeled_root=str(tmp_path)),
                            student, frames, (28, 28), torch.device("cpu"))
    assert not isinstance(plain.teacher, DetailReadTeacher)


@pytest.mark.parametrize("size, unlabeled", [(28, True), (20, True), (42.0, True), (True, True), (42, False)])
def test_detail_size_not_above_the_training_input_is_refused(tmp_path, size, unlabeled):
    """Catches a 'detail' read no larger than the training view (it would teach nothing, or shrink it), a
    non-integer size reaching the resize, and the option taken without unlabeled frames (it would do nothing)."""
    with pytest.raises(ValueError, match=r"^teacher_detail_size must be"):
        TrainConfig(output=str(tmp_path / "o"), input_size=(28, 34), teacher_detail_size=size,
                    unlabeled_root=str(tmp_path) if unlabeled else None)



@pytest.mark.parametrize("options, expected", [
    ({}, ("pseudo-labels", "feature-alignment")),
    ({"teacher": "default"}, ("feature-alignment",)),
    ({"teacher": "random:surgical-depth-tiny", "feature_weight": 0.0}, ("pseudo-labels",)),
    ({"teacher": "default", "feature_weight": 0.0}, ()),
    ({"model": "default"}, ())])
def test_targets_from_untrained_weights_are_warned(tmp_path, caplog, options, expected):
    """Catches the semi-supervised term quietly taking its targets from untrained weights: with the default
    ``random:`` start model the teacher (without ``--teacher``) and the frozen encoder are random networks, so the
    run learns noise on the real frames while its log looks like Depth Anything's recipe."""
    import logging

    from SurgicalDepthTrainingLib import semi

    frames = [{"image": textured(48, 48, k)} for k in range(2)]
    cfg = TrainConfig(output=str(tmp_path / "o"), input_size=(28, 28), unlabeled_root=str(tmp_path), **options)
    with caplog.at_level(logging.WARNING, logger=semi.__name__):
        build_semi_term(cfg, tiny_model(2), frames, (28, 28), torch.device("cpu"))
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == (1 if expected else 0), warned
    for needle in ("pseudo-labels", "feature-alignment"):
        assert (needle in "".join(warned)) == (needle in expected), warned
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=semi.__name__):  # DDP: said by rank 0 only, not once per process
        build_semi_term(cfg, tiny_model(2), frames, (28, 28), torch.device("cpu"), rank=1)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
